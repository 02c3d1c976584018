# Shared by scripts/test and scripts/bench.

# Build output outside the clone survives between local runs and CI on the same machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
venv="$HOME/.cache/ferry/venv"

step() { printf '\n== %s\n' "$*"; }

# Python tools, pinned in a requirements file (default tests/requirements.txt), in a cached
# virtualenv; installed again only when the file changes.
ensure_venv() {
  local requirements="${1:-tests/requirements.txt}"
  local stamp="$venv/installed-$(echo "$requirements" | tr '/' '_')"
  if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$requirements" "$stamp"; then
    step "python tools ($requirements)"
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
  fi
}

# The Serverless Framework (v3, pinned in infra/package-lock.json) for the offline packaging
# check, in a cached folder; installed again only when the lock file changes.
deploy_tools="$HOME/.cache/ferry/deploy-tools"
ensure_node_tools() {
  if [[ ! -x "$deploy_tools/node_modules/.bin/serverless" ]] || ! cmp -s infra/package-lock.json "$deploy_tools/package-lock.json"; then
    step "node tools (infra/package-lock.json)"
    mkdir -p "$deploy_tools"
    cp infra/package.json infra/package-lock.json "$deploy_tools/"
    (cd "$deploy_tools" && npm ci --no-audit --no-fund --silent)
  fi
}

# Debian packages the tests run for real (MariaDB as the MySQL source, Chromium for the status
# page), installed when missing.
ensure_debian_packages() {
  local missing=()
  command -v mariadbd >/dev/null 2>&1 || [[ -x /usr/sbin/mariadbd ]] || missing+=(mariadb-server mariadb-client)
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  ((${#missing[@]} == 0)) && return 0
  step "debian packages (${missing[*]})"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
    { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
}
