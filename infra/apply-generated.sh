#!/usr/bin/env bash
# Applies what the mappings generate to AWS for one stage, after `serverless deploy`:
#  1. the bucket notifications: every mapped source folder sends `.parquet` creations to the
#     stage's loader queue (entries with ids `ferry-*` are replaced; others are kept);
#  2. each DMS task's table mappings (infra/dms/<source>.table-mappings.json): the task is
#     stopped, modified and resumed; tables new to the selection are reloaded (full load).
# DMS_TASK_ARNS: JSON object, source name -> replication task ARN, for this stage.
# EVENT_SOURCE: `notifications` (default) or `eventbridge`, as the stack was deployed.
set -euo pipefail
stage="${1:?usage: infra/apply-generated.sh STAGE}"
cd "$(dirname "$0")/.."
ferry() { cargo run --locked --quiet -p ferry-cli -- "$@"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

queue_arn="$(aws cloudformation describe-stacks --stack-name "ferry-${stage}" \
  --query "Stacks[0].Outputs[?OutputKey=='LoaderQueueArn'].OutputValue" --output text)"
# Each bucket's notifications: this stage's entries replace its own only. `ferry deploy
# bucket-notification` exits 1, changing nothing, if another stage (or anything not ferry's)
# receives an overlapping prefix's events: a dev deploy never redirects production's.
mapfile -t buckets < <(python3 -c 'import json; print("\n".join(sorted({n["Bucket"] for n in json.load(open("infra/generated/deploy.json"))["notifications"]})))')
# EVENT_SOURCE=eventbridge (the stack deployed with --param=eventSource=eventbridge): the buckets
# send every event to EventBridge, where the stack's rule picks the mapped folders'; the bucket's
# other notifications are kept.
if [[ "${EVENT_SOURCE:-notifications}" == eventbridge ]]; then
  for bucket in "${buckets[@]}"; do
    aws s3api get-bucket-notification-configuration --bucket "$bucket" --output json > "$work/current.json"
    python3 - "$work/current.json" > "$work/merged.json" <<'PY'
import json, sys
text = open(sys.argv[1]).read().strip()
current = json.loads(text) if text else {}
current.pop("ResponseMetadata", None)
current["EventBridgeConfiguration"] = {}
json.dump(current, sys.stdout)
PY
    aws s3api put-bucket-notification-configuration --bucket "$bucket" \
      --notification-configuration "file://$work/merged.json"
    echo "bucket $bucket sends its events to EventBridge"
  done
  buckets=()
fi
for bucket in "${buckets[@]}"; do
  aws s3api get-bucket-notification-configuration --bucket "$bucket" --output json > "$work/current.json"
  ferry deploy bucket-notification --mappings mappings --bucket "$bucket" --stage "$stage" \
    --queue-arn "$queue_arn" --current "$work/current.json" > "$work/merged.json"
  aws s3api put-bucket-notification-configuration --bucket "$bucket" \
    --notification-configuration "file://$work/merged.json"
  echo "bucket notifications of $bucket -> $queue_arn"
done

for source in $(python3 -c 'import json,os; print(" ".join(json.loads(os.environ.get("DMS_TASK_ARNS") or "{}")))'); do
  task="$(python3 -c 'import json,os,sys; print(json.loads(os.environ["DMS_TASK_ARNS"])[sys.argv[1]])' "$source")"
  file="infra/dms/${source}.table-mappings.json"
  aws dms describe-replication-tasks --filters "Name=replication-task-arn,Values=${task}" \
    --query 'ReplicationTasks[0].TableMappings' --output text > "$work/old-mappings.json"
  if python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])) == json.load(open(sys.argv[2])) else 1)' "$work/old-mappings.json" "$file"; then
    echo "$source: table mappings unchanged"
    continue
  fi
  aws dms stop-replication-task --replication-task-arn "$task" || true
  aws dms wait replication-task-stopped --filters "Name=replication-task-arn,Values=${task}"
  aws dms modify-replication-task --replication-task-arn "$task" --table-mappings "file://${file}"
  aws dms wait replication-task-ready --filters "Name=replication-task-arn,Values=${task}"
  aws dms start-replication-task --replication-task-arn "$task" --start-replication-task-type resume-processing
  # Tables new to the selection, as the JSON `reload-tables` takes (names unescaped: DMS's
  # selection rules escape _ % [ as [_] [%] [[]).
  python3 - "$work/old-mappings.json" "$file" > "$work/reload.json" <<'PY'
import json, re, sys
def literal(p):
    return re.sub(r"\[(.)\]", r"\1", p)
def tables(path):
    return {(literal(r["object-locator"]["schema-name"]), literal(r["object-locator"]["table-name"])) for r in json.load(open(path)).get("rules", []) if r.get("rule-action") == "include"}
new = sorted(tables(sys.argv[2]) - tables(sys.argv[1]))
json.dump([{"SchemaName": s, "TableName": t} for s, t in new], sys.stdout)
PY
  if [[ "$(cat "$work/reload.json")" != "[]" ]]; then
    aws dms wait replication-task-running --filters "Name=replication-task-arn,Values=${task}"
    aws dms reload-tables --replication-task-arn "$task" --tables-to-reload "file://$work/reload.json"
  fi
  echo "$source: table mappings applied; reloaded: $(cat "$work/reload.json")"
done
