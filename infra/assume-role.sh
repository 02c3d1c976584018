#!/usr/bin/env bash
# GitHub Actions -> AWS with OIDC: exchanges the job's identity token for short-lived role
# credentials (no stored AWS keys). Needs `permissions: id-token: write`, AWS_ROLE_ARN and
# AWS_REGION; writes the credentials, masked, to the job's environment.
set -euo pipefail
: "${AWS_ROLE_ARN:?set AWS_ROLE_ARN (the stage's deploy role)}"
: "${ACTIONS_ID_TOKEN_REQUEST_URL:?the job needs permissions: id-token: write}"
token="$(curl -sSf -H "Authorization: bearer ${ACTIONS_ID_TOKEN_REQUEST_TOKEN}" \
  "${ACTIONS_ID_TOKEN_REQUEST_URL}&audience=sts.amazonaws.com" | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"])')"
creds="$(aws sts assume-role-with-web-identity --role-arn "$AWS_ROLE_ARN" \
  --role-session-name "ferry-deploy-${GITHUB_RUN_ID:-local}" --web-identity-token "$token" \
  --duration-seconds 3600 --output json)"
python3 - "$creds" <<'PY' >> "$GITHUB_ENV"
import json, sys
c = json.loads(sys.argv[1])["Credentials"]
for name, key in (("AWS_ACCESS_KEY_ID", "AccessKeyId"), ("AWS_SECRET_ACCESS_KEY", "SecretAccessKey"), ("AWS_SESSION_TOKEN", "SessionToken")):
    print(f"::add-mask::{c[key]}", file=sys.stderr)
    print(f"{name}={c[key]}")
PY
