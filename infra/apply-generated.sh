#!/usr/bin/env bash
# Applies what the mappings generate to AWS for one stage, after `serverless deploy`:
#  1. the bucket notifications: every mapped source folder sends `.parquet` creations to the
#     stage's loader queue (entries with ids `ferry-*` are replaced; others are kept);
#  2. each DMS task's table mappings (infra/dms/<source>.table-mappings.json): the task is
#     stopped, modified and resumed; tables new to the selection are reloaded (full load).
# DMS_TASK_ARNS: JSON object, source name -> replication task ARN, for this stage.
set -euo pipefail
stage="${1:?usage: infra/apply-generated.sh STAGE}"
cd "$(dirname "$0")/.."
ferry() { cargo run --locked --quiet -p ferry-cli -- "$@"; }

queue_arn="$(aws cloudformation describe-stacks --stack-name "ferry-${stage}" \
  --query "Stacks[0].Outputs[?OutputKey=='LoaderQueueArn'].OutputValue" --output text)"
for bucket in $(python3 -c 'import json; print(" ".join(sorted({n["Bucket"] for n in json.load(open("infra/generated/deploy.json"))["notifications"]})))'); do
  ferry deploy bucket-notification --mappings mappings --bucket "$bucket" --queue-arn "$queue_arn" > /tmp/ferry-notification.json
  aws s3api get-bucket-notification-configuration --bucket "$bucket" --output json > /tmp/current-notification.json
  python3 - <<'PY'
import json
current = json.load(open("/tmp/current-notification.json") ) if open("/tmp/current-notification.json").read().strip() else {}
ours = json.load(open("/tmp/ferry-notification.json"))
kept = [q for q in current.get("QueueConfigurations", []) if not q.get("Id", "").startswith("ferry-")]
current["QueueConfigurations"] = kept + ours["QueueConfigurations"]
current.pop("ResponseMetadata", None)
json.dump(current, open("/tmp/merged-notification.json", "w"))
PY
  aws s3api put-bucket-notification-configuration --bucket "$bucket" \
    --notification-configuration file:///tmp/merged-notification.json
  echo "bucket notifications of $bucket -> $queue_arn"
done

for source in $(python3 -c 'import json,os; print(" ".join(json.loads(os.environ.get("DMS_TASK_ARNS") or "{}")))'); do
  task="$(python3 -c 'import json,os,sys; print(json.loads(os.environ["DMS_TASK_ARNS"])[sys.argv[1]])' "$source")"
  file="infra/dms/${source}.table-mappings.json"
  aws dms describe-replication-tasks --filters "Name=replication-task-arn,Values=${task}" \
    --query 'ReplicationTasks[0].TableMappings' --output text > /tmp/old-mappings.json
  if python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])) == json.load(open(sys.argv[2])) else 1)' /tmp/old-mappings.json "$file"; then
    echo "$source: table mappings unchanged"
    continue
  fi
  aws dms stop-replication-task --replication-task-arn "$task" || true
  aws dms wait replication-task-stopped --filters "Name=replication-task-arn,Values=${task}"
  aws dms modify-replication-task --replication-task-arn "$task" --table-mappings "file://${file}"
  aws dms wait replication-task-ready --filters "Name=replication-task-arn,Values=${task}"
  aws dms start-replication-task --replication-task-arn "$task" --start-replication-task-type resume-processing
  added="$(python3 - /tmp/old-mappings.json "$file" <<'PY'
import json, sys
def tables(path):
    return {(r["object-locator"]["schema-name"], r["object-locator"]["table-name"]) for r in json.load(open(path)).get("rules", []) if r.get("rule-action") == "include"}
new = sorted(tables(sys.argv[2]) - tables(sys.argv[1]))
print(" ".join(f"SchemaName={s},TableName={t}" for s, t in new))
PY
)"
  if [[ -n "$added" ]]; then
    aws dms wait replication-task-running --filters "Name=replication-task-arn,Values=${task}"
    # shellcheck disable=SC2086
    aws dms reload-tables --replication-task-arn "$task" --tables-to-reload $added
  fi
  echo "$source: table mappings applied${added:+, reloading $added}"
done
