"""Offline checks of the deployment: serverless.yml rendered by the real Serverless Framework
(v3, `serverless package`), the CloudFormation template linted by cfn-lint, the GitHub workflows
audited by zizmor, and ferry's own invariants asserted on the rendered template and the
workflows. Each invariant check is also run once against a template or workflow broken on
purpose, so a check that cannot fail is caught here.

Usage: check_deploy.py SERVERLESS_BIN  (run by scripts/test)
"""

import copy
import glob
import json
import re
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)


def mapped_prefixes():
    """(bucket, prefix) of every mapping file, read directly (not through ferry)."""
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "mappings", "*.json"))):
        with open(path) as f:
            source = json.load(f)["source"]
        folder = source.get("folder", "").strip("/")
        out.append((source["bucket"], folder + "/" if folder else ""))
    return out


def enabled_tables():
    """{source name: ([enabled schema.table], heartbeat table or None)}, from the mapping files."""
    out = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "mappings", "*.json"))):
        with open(path) as f:
            doc = json.load(f)
        enabled = [t for t, m in doc["tables"].items() if m.get("enabled", True)]
        out[doc["source"]["name"]] = (enabled, doc["source"].get("heartbeat"))
    return out


def alarm_problems(t):
    """Alarms that reach someone: one SNS topic, every alarm notifying it, a freshness alarm per
    enabled table (idle tables stay OK), a heartbeat alarm per source that names one."""
    problems = []
    topics = resources_of(t, "AWS::SNS::Topic")
    if len(topics) != 1:
        return [f"no alarm topic: expected one SNS topic, found {sorted(topics)}"]
    topic = next(iter(topics))
    alarms = resources_of(t, "AWS::CloudWatch::Alarm")
    for name, a in sorted(alarms.items()):
        actions = [ref_name(x) for x in as_list(a["Properties"].get("AlarmActions", []))]
        if topic not in actions:
            problems.append(f"alarm {name} notifies no one (its AlarmActions lack {topic})")
    lag = [a["Properties"] for a in alarms.values()
           if a["Properties"].get("MetricName") == "LagMs" and a["Properties"].get("Namespace") == "ferry"]
    fresh = {p["Dimensions"][0]["Value"] for p in lag if p.get("TreatMissingData") == "notBreaching"}
    beats = {p["Dimensions"][0]["Value"] for p in lag if p.get("TreatMissingData") == "breaching"}
    for source, (tables, heartbeat) in enabled_tables().items():
        missing = sorted(set(tables) - fresh)
        if missing:
            problems.append(f"no freshness alarm for {source}: {missing[:3]}")
        if heartbeat and heartbeat not in beats:
            problems.append(f"no heartbeat alarm for {source} ({heartbeat})")
    for s in active_subscriptions(t):
        if ref_name(s.get("TopicArn")) != topic:
            problems.append("an alarm subscription is not on the alarm topic")
    return problems


def active_subscriptions(t):
    """The SNS subscriptions the stack creates: those without a condition, and those whose
    condition `!Not [!Equals [!Ref P, ""]]` holds for parameter P's default."""
    out = []
    for s in resources_of(t, "AWS::SNS::Subscription").values():
        cond = s.get("Condition")
        if cond is not None:
            expr = t.get("Conditions", {}).get(cond, {})
            try:
                param = expr["Fn::Not"][0]["Fn::Equals"][0]["Ref"]
            except (KeyError, IndexError, TypeError):
                out.append(s["Properties"])
                continue
            if t.get("Parameters", {}).get(param, {}).get("Default", "") == "":
                continue
        props = dict(s["Properties"])
        endpoint = props.get("Endpoint")
        if ref_name(endpoint):
            props["Endpoint"] = t.get("Parameters", {}).get(ref_name(endpoint), {}).get("Default")
        out.append(props)
    return out


def kms_problems(t, key=None):
    """With a KMS key for the DMS bucket, the loader (only) may decrypt with exactly that key,
    only through S3; without one, no KMS access at all."""
    problems = []
    policies = [(name, r) for name, r in resources_of(t, "AWS::IAM::Policy").items()]
    active = [(n, r) for n, r in policies
              if r.get("Condition") is None
              or t["Parameters"].get(ref_name({"Ref": "DmsKmsKeyArn"}), {}).get("Default", "") != ""]
    if key is None:
        if active:
            problems.append(f"KMS access although no bucket key is set: {[n for n, _ in active]}")
        return problems
    if len(active) != 1:
        return [f"expected one KMS decrypt policy for the bucket key, found {[n for n, _ in active]}"]
    p = active[0][1]["Properties"]
    if [ref_name(r) for r in p["Roles"]] != ["IamRoleLambdaExecution"]:
        problems.append(f"the KMS decrypt policy is attached to {p['Roles']}, not the loader's role")
    for st in p["PolicyDocument"]["Statement"]:
        if as_list(st["Action"]) != ["kms:Decrypt"]:
            problems.append(f"KMS access beyond kms:Decrypt: {st['Action']}")
        if ref_name(st["Resource"]) != "DmsKmsKeyArn" or t["Parameters"]["DmsKmsKeyArn"]["Default"] != key:
            problems.append(f"KMS access not limited to the bucket's key: {st['Resource']}")
        if "kms:ViaService" not in json.dumps(st.get("Condition", {})):
            problems.append("KMS decrypt not limited to requests through S3 (kms:ViaService)")
    return problems


def resources_of(template, kind):
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def ref_name(value):
    """The logical id a Ref / GetAtt points to."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            return value["Fn::GetAtt"][0]
    return None


def as_list(v):
    return v if isinstance(v, list) else [v]


def template_problems(t, reconcile_enabled=False):
    """Every broken invariant of a rendered template, as messages."""
    problems = []
    functions = resources_of(t, "AWS::Lambda::Function")
    if set(functions) != {"LoaderLambdaFunction", "ReconcileLambdaFunction"}:
        return [f"expected the loader and reconcile functions, found {sorted(functions)}"]
    problems += reconcile_problems(t, reconcile_enabled)
    problems += alarm_problems(t)
    fn = functions["LoaderLambdaFunction"]
    p = fn["Properties"]
    if p.get("Runtime") != "provided.al2023":
        problems.append(f"runtime is {p.get('Runtime')}, not provided.al2023")
    if p.get("Architectures") != ["arm64"]:
        problems.append(f"architectures {p.get('Architectures')}, not arm64")
    if "ReservedConcurrentExecutions" not in p:
        problems.append("no reserved concurrency")
    if p.get("LoggingConfig", {}).get("LogFormat") != "JSON":
        problems.append("the function's log format is not JSON (structured logs, EMF metrics)")
    timeout = p.get("Timeout", 3)
    env = p.get("Environment", {}).get("Variables", {})
    if "FERRY_DLQ_URL" not in env:
        problems.append("FERRY_DLQ_URL is not set")
    locks = resources_of(t, "AWS::DynamoDB::Table")
    lock_id = ref_name(env.get("FERRY_LOCK_TABLE"))
    if lock_id not in locks:
        problems.append("FERRY_LOCK_TABLE is not a DynamoDB table of this stack (apply lock)")
    else:
        lp = locks[lock_id]["Properties"]
        if lp.get("KeySchema") != [{"AttributeName": "name", "KeyType": "HASH"}]:
            problems.append("the apply lock table is not keyed by name")
        if lp.get("TimeToLiveSpecification", {}).get("AttributeName") != "expires_at":
            problems.append("the apply lock table has no TTL on expires_at")
    for k in ("FERRY_PROJECT_LOAD_JOBS_PER_DAY", "FERRY_APPLY_EVERY"):
        if k not in env:
            problems.append(f"{k} is not set (the schedule)")
    for k, v in env.items():
        if isinstance(v, str) and any(s in k for s in ("KEY", "TOKEN", "PASSWORD")) and not k.endswith("_SECRET"):
            problems.append(f"environment variable {k} looks like a credential")

    queues = resources_of(t, "AWS::SQS::Queue")
    mappings = resources_of(t, "AWS::Lambda::EventSourceMapping")
    if len(mappings) != 1:
        problems.append(f"expected one SQS event source mapping, found {len(mappings)}")
    queue_id = None
    for m in mappings.values():
        mp = m["Properties"]
        if "ReportBatchItemFailures" not in mp.get("FunctionResponseTypes", []):
            problems.append("the event source mapping lacks ReportBatchItemFailures")
        if mp.get("BatchSize", 10) > 10:
            problems.append("batch size over 10")
        queue_id = ref_name(mp.get("EventSourceArn"))
    queue = queues.get(queue_id)
    if queue is None:
        problems.append("the event source is not a queue of this stack")
        return problems
    qp = queue["Properties"]
    if qp.get("VisibilityTimeout", 30) < 6 * timeout:
        problems.append(f"queue visibility {qp.get('VisibilityTimeout', 30)} s < 6 x function timeout {timeout} s")
    redrive = qp.get("RedrivePolicy")
    if not redrive:
        problems.append("the queue has no dead-letter queue")
    else:
        dlq_id = ref_name(redrive.get("deadLetterTargetArn"))
        if dlq_id not in queues or dlq_id == queue_id:
            problems.append("the redrive policy does not point to a dead-letter queue of this stack")
        if int(redrive.get("maxReceiveCount", 0)) < 1:
            problems.append("maxReceiveCount missing")
        if ref_name(env.get("FERRY_DLQ_URL")) != dlq_id:
            problems.append("FERRY_DLQ_URL is not the queue's dead-letter queue")
        if ref_name(env.get("FERRY_QUEUE_URL")) != queue_id:
            problems.append("FERRY_QUEUE_URL is not the loader's own queue (the schedule's wake-ups)")
        alarms = resources_of(t, "AWS::CloudWatch::Alarm").values()
        watched = {(a["Properties"]["MetricName"], ref_name((a["Properties"].get("Dimensions") or [{}])[0].get("Value"))) for a in alarms}
        if ("ApproximateNumberOfMessagesVisible", dlq_id) not in watched:
            problems.append("no alarm on the dead-letter queue's depth")
        if ("ApproximateAgeOfOldestMessage", queue_id) not in watched:
            problems.append("no alarm on the oldest message's age")
        if not any(a["Properties"].get("MetricName") == "ObjectsRemoved" and a["Properties"].get("Namespace") == "ferry"
                   for a in alarms):
            problems.append("no alarm on objects removed from mapped folders (truncates)")
        for metric, what in (("TypeChangeStops", "tables stopped by a type change"),
                             ("LoadedWithWarnings", "files loaded with a warning")):
            if not any(a["Properties"].get("MetricName") == metric and a["Properties"].get("Namespace") == "ferry"
                       and "Dimensions" not in a["Properties"] for a in alarms):
                problems.append(f"no alarm on {what}")

    bodies = []
    for d in resources_of(t, "AWS::CloudWatch::Dashboard").values():
        body = d["Properties"]["DashboardBody"]
        bodies.append(body.get("Fn::Sub", "") if isinstance(body, dict) else body)
    for metric in ("LagMs", "Rows", "Files", "Failures"):
        if not any(f'MetricName=\\"{metric}\\"' in b for b in bodies):
            problems.append(f"no table-status dashboard showing {metric} per table")

    logs = resources_of(t, "AWS::Logs::LogGroup")
    if not logs or any("RetentionInDays" not in g["Properties"] for g in logs.values()):
        problems.append("log group without retention")

    # IAM: no wildcard actions or resources; S3 reads only under the mapped prefixes.
    reads = set()
    for role in resources_of(t, "AWS::IAM::Role").values():
        for policy in role["Properties"].get("Policies", []):
            for st in policy["PolicyDocument"]["Statement"]:
                for a in as_list(st["Action"]):
                    if "*" in a:
                        problems.append(f"wildcard action {a}")
                for r in as_list(st["Resource"]):
                    if r == "*" or (isinstance(r, str) and r.endswith(":*")) or r == "arn:aws:s3:::*":
                        problems.append(f"wildcard resource {r} for {st['Action']}")
                    # A generated ARN is a literal prefix and one trailing '*': a mapping value
                    # carrying '*', '?' or '${' would widen or rewrite the policy.
                    if isinstance(r, str) and ("${" in r or "?" in r or "*" in r[:-1]):
                        problems.append(f"injected or widened ARN {r} for {st['Action']}")
                if "s3:GetObject" in as_list(st["Action"]):
                    reads.update(r for r in as_list(st["Resource"]) if isinstance(r, str))
                if any(a.startswith("dynamodb:") for a in as_list(st["Action"])):
                    allowed = {"dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:UpdateItem"}
                    if set(as_list(st["Action"])) - allowed:
                        problems.append(f"apply lock access beyond single items: {st['Action']}")
                    if [ref_name(r) for r in as_list(st["Resource"])] != [lock_id]:
                        problems.append(f"apply lock access is not limited to the lock table: {st['Resource']}")
    sends = {ref_name(r) for role in resources_of(t, "AWS::IAM::Role").values()
             for policy in role["Properties"].get("Policies", [])
             for st in policy["PolicyDocument"]["Statement"] if "sqs:SendMessage" in as_list(st["Action"])
             for r in as_list(st["Resource"])}
    if queue_id not in sends:
        problems.append("the loader may not send wake-ups to its own queue")
    wanted = {f"arn:aws:s3:::{b}/{p}*" for b, p in mapped_prefixes()}
    if reads != wanted:
        problems.append(f"S3 read access {sorted(reads)} is not exactly the mapped prefixes {sorted(wanted)}")

    policies = resources_of(t, "AWS::SQS::QueuePolicy").values()
    allows_s3 = any(
        st.get("Principal", {}).get("Service") == "s3.amazonaws.com"
        and "sqs:SendMessage" in as_list(st["Action"])
        and ref_name(st["Resource"]) == queue_id
        and "aws:SourceArn" in json.dumps(st.get("Condition", {}))
        for qpol in policies
        for st in qpol["Properties"]["PolicyDocument"]["Statement"]
    )
    allows_rule = any(
        st.get("Principal", {}).get("Service") == "events.amazonaws.com"
        for qpol in policies
        for st in qpol["Properties"]["PolicyDocument"]["Statement"]
    )
    if not allows_s3 and not allows_rule:
        problems.append("no queue policy lets the DMS bucket (and only it) send notifications")
    return problems


def bucket_event_rules(t):
    """EventBridge rules other than the reconcile schedule."""
    return {k: v for k, v in resources_of(t, "AWS::Events::Rule").items()
            if not any(ref_name(tg.get("Arn")) == "ReconcileLambdaFunction" for tg in v["Properties"].get("Targets", []))}


def eventbridge_problems(t):
    """The EventBridge variant: a rule for the mapped prefixes' Object Created events of the DMS
    buckets, targeting the loader's queue, and a queue policy letting only that rule send."""
    problems = []
    rules = bucket_event_rules(t)
    if len(rules) != 1:
        return [f"eventbridge: expected one EventBridge rule, found {len(rules)}"]
    (rule_id, rule), = rules.items()
    p = rule["Properties"]
    pattern = p.get("EventPattern", {})
    if pattern.get("source") != ["aws.s3"] or pattern.get("detail-type") != ["Object Created", "Object Deleted"]:
        problems.append("eventbridge: the rule does not match S3 Object Created and Object Deleted events only")
    prefixes = {k.get("prefix") for k in pattern.get("detail", {}).get("object", {}).get("key", [])}
    wanted = {pfx for _, pfx in mapped_prefixes()}
    if prefixes != wanted or "" in prefixes:
        problems.append(f"eventbridge: the rule's key prefixes {sorted(prefixes)} are not exactly the mapped folders {sorted(wanted)}")
    buckets = set(pattern.get("detail", {}).get("bucket", {}).get("name", []))
    if buckets != {b for b, _ in mapped_prefixes()}:
        problems.append(f"eventbridge: the rule's buckets {sorted(buckets)} are not the mapped buckets")
    targets = p.get("Targets", [])
    if [ref_name(x.get("Arn")) for x in targets] != ["LoaderQueue"]:
        problems.append("eventbridge: the rule does not target the loader's queue (only)")
    allowed = [
        st for qpol in resources_of(t, "AWS::SQS::QueuePolicy").values()
        for st in qpol["Properties"]["PolicyDocument"]["Statement"]
        if isinstance(st, dict) and st.get("Principal", {}).get("Service") == "events.amazonaws.com"
    ]
    if not any(ref_name(st.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn")) == rule_id for st in allowed):
        problems.append("eventbridge: no queue policy lets the rule (and only it) send")
    return problems


def notification_problems(deploy_config):
    """Every mapped source folder must have a notification to the loader's queue."""
    problems = []
    have = {(n["Bucket"], n["Prefix"]) for n in deploy_config["notifications"] if "s3:ObjectCreated:*" in n["Events"]}
    for bucket, prefix in mapped_prefixes():
        if (bucket, prefix) not in have:
            problems.append(f"no notification for s3://{bucket}/{prefix}")
    return problems


def on_of(workflow):
    """The `on:` block (YAML 1.1 reads the key `on` as true)."""
    return workflow.get("on", workflow.get(True))


def workflow_problems(ci, deploy):
    problems = []
    ci_on = on_of(ci)
    if "mappings/**" not in ci_on.get("pull_request", {}).get("paths", []):
        problems.append("ci does not run on pull requests touching mappings/**")
    ci_runs = "\n".join(s.get("run", "") for j in ci["jobs"].values() for s in j["steps"])
    for needed in ("mappings check --github", "dms table-mappings", "--check", "deploy config", "scripts/test"):
        if needed not in ci_runs:
            problems.append(f"ci never runs `{needed}`")
    deploy_on = on_of(deploy)
    if deploy_on.get("push", {}).get("branches") != ["main"]:
        problems.append("deploy does not run on merges to main")
    runs = "\n".join(s.get("run", "") for j in deploy["jobs"].values() for s in j["steps"])
    for needed in ("cargo lambda build", "--arm64", "zip -r target/lambda/bootstrap/bootstrap.zip mappings", "serverless deploy", "apply-generated.sh"):
        if needed not in runs:
            problems.append(f"deploy never runs `{needed}`")
    for wf in (ci, deploy):
        for job in wf["jobs"].values():
            for step in job["steps"]:
                uses = step.get("uses")
                if uses and len(uses.split("@")[-1]) != 40:
                    problems.append(f"action {uses} is not pinned to a commit")
        text = json.dumps(wf)
        for bad in ("AKIA", "aws_secret_access_key:", "BEGIN PRIVATE KEY"):
            if bad in text:
                problems.append(f"a credential ({bad}...) is written in a workflow")
    dj = deploy["jobs"]["deploy"]
    if dj.get("permissions", {}).get("id-token") != "write" or "secrets.AWS_DEPLOY_ROLE_ARN" not in json.dumps(dj):
        problems.append("deploy does not take AWS access from OIDC and the secret store")
    for name, job in deploy["jobs"].items():
        if "github.ref == 'refs/heads/main'" not in str(job.get("if", "")):
            problems.append(f"deploy job {name} is not restricted to main (a manual run could deploy any branch)")
    steps = [s.get("run", "") for s in dj["steps"]]
    creds = next((i for i, r in enumerate(steps) if "assume-role.sh" in r), len(steps))
    for i, r in enumerate(steps):
        if "npm ci" in r and ("--ignore-scripts" not in r or i > creds):
            problems.append("npm ci runs install scripts, or runs after the deploy credentials exist")
    if "pip install" in runs and "--require-hashes" not in runs:
        problems.append("cargo-lambda is installed without --require-hashes")
    with open(os.path.join(ROOT, "infra/github-oidc-trust.json")) as f:
        trust = json.load(f)
    subs = [st.get("Condition", {}).get("StringEquals", {}).get("token.actions.githubusercontent.com:sub", "")
            for st in trust["Statement"]]
    if not subs or not all(s.startswith("repo:") and ":environment:" in s and "*" not in s for s in subs):
        problems.append("the OIDC trust policy does not pin sub to this repository's environment")
    return problems


def reconcile_problems(t, enabled=False):
    """The scheduled reconcile function: its own least-privilege role, its schedule (off unless
    configured), its alarms."""
    problems = []
    r = t["Resources"]
    fn = r["ReconcileLambdaFunction"]["Properties"]
    env = fn.get("Environment", {}).get("Variables", {})
    if env.get("FERRY_FUNCTION") != "reconcile":
        problems.append("the reconcile function does not run as FERRY_FUNCTION=reconcile")
    if fn.get("Runtime") != "provided.al2023" or fn.get("Architectures") != ["arm64"]:
        problems.append("the reconcile function is not provided.al2023 on arm64")
    if fn.get("LoggingConfig", {}).get("LogFormat") != "JSON":
        problems.append("the reconcile function's log format is not JSON (EMF metrics)")
    if fn.get("ReservedConcurrentExecutions") != 1:
        problems.append("reconcile runs may overlap (reserved concurrency is not 1)")
    role = r.get("ReconcileRole", {}).get("Properties", {})
    role_name = role.get("RoleName")
    if not role_name or role_name not in json.dumps(fn.get("Role")):
        problems.append("the reconcile function's role is not ReconcileRole")
    for policy in role.get("Policies", []):
        for st in policy["PolicyDocument"]["Statement"]:
            if as_list(st["Action"]) != ["secretsmanager:GetSecretValue"]:
                problems.append(f"the reconcile role may do more than read secrets: {st['Action']}")
            for res in as_list(st["Resource"]):
                text = json.dumps(res)
                if not re.search(r"secret:ferry/[a-z0-9-]+/source/\*\"", text) and "gcp-credentials-??????" not in text:
                    problems.append(f"the reconcile role reads secrets beyond the source and GCP ones: {text}")
    rules = [x["Properties"] for x in resources_of(t, "AWS::Events::Rule").values()
             if any(ref_name(tg.get("Arn")) == "ReconcileLambdaFunction" for tg in x["Properties"].get("Targets", []))]
    if len(rules) != 1:
        problems.append("no schedule runs the reconcile function")
    elif rules[0].get("State") != ("ENABLED" if enabled else "DISABLED"):
        problems.append(f"the reconcile schedule is {rules[0].get('State')} (it must be off until configured)")
    alarms = resources_of(t, "AWS::CloudWatch::Alarm").values()
    for metric in ("ReconcileMismatches", "ReconcileErrors"):
        if not any(a["Properties"].get("MetricName") == metric and a["Properties"].get("Namespace") == "ferry" for a in alarms):
            problems.append(f"no alarm on {metric}")
    return problems


def mutations(t):
    """Templates each broken in one invariant, with the message the break must produce."""
    def fn(x):
        return x["Resources"]["LoaderLambdaFunction"]["Properties"]

    def reconcile_statement(x):
        return x["Resources"]["ReconcileRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]

    def queue(x):
        return x["Resources"]["LoaderQueue"]["Properties"]

    def esm(x):
        return next(iter(resources_of(x, "AWS::Lambda::EventSourceMapping").values()))["Properties"]

    def first_statement(x, action):
        for role in resources_of(x, "AWS::IAM::Role").values():
            for policy in role["Properties"]["Policies"]:
                for st in policy["PolicyDocument"]["Statement"]:
                    if action in as_list(st["Action"]):
                        return st
        raise KeyError(action)

    cases = [
        ("visibility", lambda x: queue(x).update(VisibilityTimeout=fn(x)["Timeout"] * 6 - 1)),
        ("dead-letter", lambda x: queue(x).pop("RedrivePolicy")),
        ("ReportBatchItemFailures", lambda x: esm(x).pop("FunctionResponseTypes")),
        ("wildcard action", lambda x: first_statement(x, "sqs:SendMessage").update(Action=["sqs:*"])),
        ("wildcard resource", lambda x: first_statement(x, "secretsmanager:GetSecretValue").update(Resource="*")),
        ("S3 read access", lambda x: first_statement(x, "s3:GetObject").update(Resource=["arn:aws:s3:::acme-casino-dms-cdc/*"])),
        ("runtime", lambda x: fn(x).update(Runtime="python3.12")),
        ("reserved concurrency", lambda x: fn(x).pop("ReservedConcurrentExecutions")),
        ("log format", lambda x: fn(x).pop("LoggingConfig")),
        ("alarm on the dead-letter", lambda x: x["Resources"].pop("DeadLetterQueueNotEmptyAlarm")),
        ("oldest message", lambda x: x["Resources"].pop("OldestMessageAgeAlarm")),
        ("queue policy", lambda x: x["Resources"].pop("LoaderQueuePolicy")),
        ("dashboard", lambda x: x["Resources"].pop("LoaderDashboard")),
        ("objects removed", lambda x: x["Resources"].pop("ObjectsRemovedAlarm")),
        ("tables stopped", lambda x: x["Resources"].pop("TypeChangeStopAlarm")),
        ("loaded with a warning", lambda x: x["Resources"].pop("LoadWarningsAlarm")),
        ("injected or widened ARN", lambda x: first_statement(x, "s3:GetObject").update(Resource=["arn:aws:s3:::acme-casino-dms-cdc/x${env:HOME}*"])),
        ("FERRY_LOCK_TABLE", lambda x: fn(x)["Environment"]["Variables"].pop("FERRY_LOCK_TABLE")),
        ("apply lock access", lambda x: first_statement(x, "dynamodb:PutItem").update(Action=["dynamodb:PutItem", "dynamodb:Scan"])),
        ("TTL", lambda x: x["Resources"]["ApplyLockTable"]["Properties"].pop("TimeToLiveSpecification")),
        ("FERRY_QUEUE_URL", lambda x: fn(x)["Environment"]["Variables"].pop("FERRY_QUEUE_URL")),
        ("more than read secrets", lambda x: reconcile_statement(x).update(Action=["secretsmanager:GetSecretValue", "s3:GetObject"])),
        ("secrets beyond", lambda x: reconcile_statement(x)["Resource"].append({"Fn::Sub": "arn:aws:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:*"})),
        ("reconcile schedule", lambda x: [r["Properties"].update(State="ENABLED") for r in resources_of(x, "AWS::Events::Rule").values()]),
        ("alarm on ReconcileMismatches", lambda x: x["Resources"].pop("ReconcileMismatchAlarm")),
        ("role is not ReconcileRole", lambda x: x["Resources"]["ReconcileLambdaFunction"]["Properties"].update(Role={"Fn::GetAtt": ["IamRoleLambdaExecution", "Arn"]})),
        ("reconcile runs may overlap", lambda x: x["Resources"]["ReconcileLambdaFunction"]["Properties"].pop("ReservedConcurrentExecutions")),
        ("FERRY_APPLY_EVERY", lambda x: fn(x)["Environment"]["Variables"].pop("FERRY_APPLY_EVERY")),
        ("notifies no one", lambda x: x["Resources"]["DeadLetterQueueNotEmptyAlarm"]["Properties"].pop("AlarmActions")),
        ("no alarm topic", lambda x: x["Resources"].pop("AlarmTopic")),
        ("no freshness alarm", lambda x: x["Resources"].pop(next(k for k in x["Resources"] if k.startswith("Freshness")))),
        ("wake-ups to its own queue", lambda x: [st.update(Resource=[r for r in as_list(st["Resource"]) if ref_name(r) != "LoaderQueue"] or ["arn:aws:sqs:us-east-1:0:other"])
                                                for role in resources_of(x, "AWS::IAM::Role").values()
                                                for policy in role["Properties"]["Policies"]
                                                for st in policy["PolicyDocument"]["Statement"]
                                                if "sqs:SendMessage" in as_list(st["Action"])]),
    ]
    for name, breaker in cases:
        broken = copy.deepcopy(t)
        breaker(broken)
        yield name, broken


def main():
    serverless = sys.argv[1]
    failures = []
    with tempfile.TemporaryDirectory(prefix="ferry-deploy-") as work:
        for rel in ("serverless.yml", "infra/generated/deploy.json", "infra/events-notifications.yml",
                    "infra/events-eventbridge.yml"):
            os.makedirs(os.path.dirname(os.path.join(work, rel)) or work, exist_ok=True)
            shutil.copy(os.path.join(ROOT, rel), os.path.join(work, rel))
        artifact = os.path.join(work, "target/lambda/bootstrap/bootstrap.zip")
        os.makedirs(os.path.dirname(artifact))
        with zipfile.ZipFile(artifact, "w") as z:
            z.writestr("bootstrap", "placeholder: packaging only")
        env = dict(os.environ, AWS_ACCESS_KEY_ID="offline", AWS_SECRET_ACCESS_KEY="offline",
                   SLS_TELEMETRY_DISABLED="1", SLS_NOTIFICATIONS_MODE="off", SLS_DEPRECATION_DISABLE="*")
        def package(label, *args, reconcile_enabled=False):
            """Renders the stack with `serverless package ARGS` and lints it: the template, or
            None after recording why it could not be made."""
            out = subprocess.run([serverless, "package", *args], cwd=work, env=env,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                failures.append(f"serverless package ({label}) failed:\n{out.stdout}\n{out.stderr}")
                return None
            path = os.path.join(work, ".serverless", "cloudformation-template-update-stack.json")
            lint = subprocess.run([os.path.join(VENV_BIN, "cfn-lint"), path], capture_output=True, text=True)
            if lint.returncode != 0:
                failures.append(f"cfn-lint ({label}):\n{lint.stdout}{lint.stderr}")
            with open(path) as f:
                template = json.load(f)
            failures.extend(f"{label}: {p}" for p in template_problems(template, reconcile_enabled))
            return template

        for stage in ("dev", "prod"):
            template = package(stage, "--stage", stage)
            if template is None:
                continue
            failures.extend(f"{stage}: {p}" for p in kms_problems(template))
            if active_subscriptions(template):
                failures.append(f"{stage}: an alarm subscription exists although alarmEmail is empty")
            if stage == "dev":
                for name, broken in mutations(template):
                    found = template_problems(broken)
                    if not any(name.lower() in p.lower() for p in found):
                        failures.append(f"breaking '{name}' went unnoticed (found: {found})")
            if stage == "dev" and bucket_event_rules(template):
                failures.append("dev: an EventBridge rule exists although eventSource is notifications")
            print(f"ok: serverless package --stage {stage}, cfn-lint, invariants")
        # An SSE-KMS bucket: the loader may decrypt with its key, through S3 only.
        key = "arn:aws:kms:ap-northeast-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        template = package("bucket KMS key", "--stage", "dev", f"--param=dmsKmsKeyArn={key}")
        if template is not None:
            failures.extend(f"bucket KMS key: {p}" for p in kms_problems(template, key))
            for name, breaker in [
                ("beyond kms:Decrypt", lambda x: x["Resources"]["LoaderKmsDecryptPolicy"]["Properties"]["PolicyDocument"]["Statement"][0].update(Action=["kms:Decrypt", "kms:Encrypt"])),
                ("through S3", lambda x: x["Resources"]["LoaderKmsDecryptPolicy"]["Properties"]["PolicyDocument"]["Statement"][0].pop("Condition")),
                ("not the loader", lambda x: x["Resources"]["LoaderKmsDecryptPolicy"]["Properties"].update(Roles=[{"Ref": "ReconcileRole"}])),
            ]:
                broken = copy.deepcopy(template)
                breaker(broken)
                if not any(name.lower() in p.lower() for p in kms_problems(broken, key)):
                    failures.append(f"bucket KMS key: breaking '{name}' went unnoticed")
            print("ok: serverless package --param dmsKmsKeyArn=... (decrypt with the bucket's key only)")
        # An e-mail subscription, when an address is given (none by default).
        template = package("alarm e-mail", "--stage", "dev", "--param=alarmEmail=oncall@example.com")
        if template is not None:
            subs = active_subscriptions(template)
            if [(s.get("Protocol"), s.get("Endpoint")) for s in subs] != [("email", "oncall@example.com")]:
                failures.append(f"alarm e-mail: expected one e-mail subscription, found {subs}")
            print("ok: serverless package --param alarmEmail=... (alarms reach the address)")
        # The reconcile schedule, turned on.
        template = package("reconcile on", "--stage", "dev", "--param=reconcileEnabled=true", reconcile_enabled=True)
        if template is not None:
            print("ok: serverless package --param reconcileEnabled=true (the schedule runs)")
        # The EventBridge variant of the same stack.
        template = package("eventbridge", "--stage", "dev", "--param=eventSource=eventbridge")
        if template is not None:
            failures += eventbridge_problems(template)
            for name, breaker in [
                ("key prefixes", lambda x: x["Resources"]["LoaderEventRule"]["Properties"]["EventPattern"]["detail"]["object"]["key"].append({"prefix": ""})),
                ("target the loader", lambda x: x["Resources"]["LoaderEventRule"]["Properties"]["Targets"].append({"Id": "x", "Arn": "arn:aws:sqs:us-east-1:1:other"})),
                ("lets the rule", lambda x: x["Resources"]["LoaderQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"].pop()),
            ]:
                broken = copy.deepcopy(template)
                breaker(broken)
                if not any(name.lower() in p.lower() for p in eventbridge_problems(broken)):
                    failures.append(f"eventbridge: breaking '{name}' went unnoticed")
            print("ok: serverless package --param eventSource=eventbridge, cfn-lint, invariants")

    with open(os.path.join(ROOT, "infra/generated/deploy.json")) as f:
        deploy_config = json.load(f)
    failures += notification_problems(deploy_config)
    broken = copy.deepcopy(deploy_config)
    broken["notifications"].pop()
    if not notification_problems(broken):
        failures.append("removing a notification went unnoticed")

    wf = {}
    for name in ("ci", "deploy"):
        with open(os.path.join(ROOT, ".github/workflows", f"{name}.yml")) as f:
            wf[name] = yaml.safe_load(f)
    failures += workflow_problems(wf["ci"], wf["deploy"])
    for desc, breaker in [
        ("not pinned", lambda c, d: d["jobs"]["build"]["steps"][0].update(uses="actions/checkout@v4")),
        ("mappings/**", lambda c, d: on_of(c)["pull_request"]["paths"].remove("mappings/**")),
        ("OIDC", lambda c, d: d["jobs"]["deploy"]["permissions"].pop("id-token")),
        ("serverless deploy", lambda c, d: d["jobs"]["deploy"]["steps"].pop(4)),
        ("restricted to main", lambda c, d: d["jobs"]["deploy"].pop("if")),
        ("install scripts", lambda c, d: d["jobs"]["deploy"]["steps"][2].update(run="npm ci --prefix infra")),
        ("require-hashes", lambda c, d: next(s for s in d["jobs"]["build"]["steps"] if "cargo lambda build" in s.get("run", "")).update(run="python3 -m pip install cargo-lambda==1.9.1\ncargo lambda build --release --arm64")),
    ]:
        c, d = copy.deepcopy(wf["ci"]), copy.deepcopy(wf["deploy"])
        breaker(c, d)
        if not any(desc.lower() in p.lower() for p in workflow_problems(c, d)):
            failures.append(f"breaking '{desc}' in the workflows went unnoticed")
    audit = subprocess.run([os.path.join(VENV_BIN, "zizmor"), "--offline", os.path.join(ROOT, ".github/workflows")],
                           capture_output=True, text=True)
    if audit.returncode != 0:
        failures.append(f"zizmor --offline:\n{audit.stdout}{audit.stderr}")
    else:
        print("ok: workflows (zizmor --offline, invariants)")

    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
