# Shared by scripts/test and scripts/bench.

# Build output outside the clone survives between local runs and CI on the same machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
venv="$HOME/.cache/ferry/venv"

step() { printf '\n== %s\n' "$*"; }

# Python tools, pinned in tests/requirements.txt, in a cached virtualenv.
ensure_venv() {
  if [[ ! -x "$venv/bin/python" ]] || ! cmp -s tests/requirements.txt "$venv/requirements.txt"; then
    step "python tools"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt "$venv/requirements.txt"
  fi
}
