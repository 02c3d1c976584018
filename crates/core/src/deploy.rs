//! Deployment files derived from the mappings, so that one mapping change updates everything
//! that depends on it: the DMS task's table selection, the loader's S3 read access and the
//! bucket notifications that feed its queue.

use serde_json::{Value, json};

use crate::mapping::{Catalog, Source};

/// The column each table's `add-column` rule adds, holding DMS's `$AR_H_CHANGE_SEQ` header.
pub const CHANGE_SEQ_COLUMN: &str = "AR_H_CHANGE_SEQ";

/// The DMS task table-mapping document of a source: one `include` selection rule per enabled
/// mapped table, in schema/table order, with stable rule ids and names, then one `add-column`
/// transformation rule per table giving every row its `AR_H_CHANGE_SEQ` (the change's place in
/// the task's stream; DMS User Guide, "Transformation rules and actions", header columns). The
/// names are escaped ([`crate::names::dms_literal`]): unescaped, `poker_game.hand_actions`
/// would also select `pokerXgame.hand1actions`.
pub fn dms_table_mappings(source: &Source) -> Value {
    let mut tables: Vec<(&str, &str)> = source
        .tables
        .iter()
        .filter(|t| t.enabled)
        .map(|t| (t.schema.as_str(), t.table.as_str()))
        .collect();
    tables.sort_unstable();
    let rules: Vec<Value> = tables
        .iter()
        .enumerate()
        .map(|(i, (schema, table))| {
            json!({
                "rule-type": "selection",
                "rule-id": (i + 1).to_string(),
                "rule-name": format!("ferry-{schema}-{table}"),
                "object-locator": {
                    "schema-name": crate::names::dms_literal(schema),
                    "table-name": crate::names::dms_literal(table),
                },
                "rule-action": "include",
            })
        })
        .chain(tables.iter().enumerate().map(|(i, (schema, table))| {
            json!({
                "rule-type": "transformation",
                "rule-id": (tables.len() + i + 1).to_string(),
                "rule-name": format!("ferry-change-seq-{schema}-{table}"),
                "rule-target": "column",
                "object-locator": {
                    "schema-name": crate::names::dms_literal(schema),
                    "table-name": crate::names::dms_literal(table),
                },
                "rule-action": "add-column",
                "value": CHANGE_SEQ_COLUMN,
                "expression": "$AR_H_CHANGE_SEQ",
                "data-type": { "type": "string", "length": 50 },
            })
        }))
        .collect();
    // Excluded columns are removed by DMS itself: their values never reach S3.
    let mut removed: Vec<(&str, &str, &str)> = source
        .tables
        .iter()
        .filter(|t| t.enabled)
        .flat_map(|t| {
            t.exclude
                .iter()
                .map(move |c| (t.schema.as_str(), t.table.as_str(), c.as_str()))
        })
        .collect();
    removed.sort_unstable();
    let first = rules.len();
    let rules: Vec<Value> = rules
        .into_iter()
        .chain(
            removed
                .iter()
                .enumerate()
                .map(|(i, (schema, table, column))| {
                    json!({
                        "rule-type": "transformation",
                        "rule-id": (first + i + 1).to_string(),
                        "rule-name": format!("ferry-exclude-{schema}-{table}-{column}"),
                        "rule-target": "column",
                        "object-locator": {
                            "schema-name": crate::names::dms_literal(schema),
                            "table-name": crate::names::dms_literal(table),
                            "column-name": crate::names::dms_literal(column),
                        },
                        "rule-action": "remove-column",
                    })
                }),
        )
        .collect();
    json!({ "rules": rules })
}

/// What `serverless.yml` reads from the mappings (`infra/generated/deploy.json`): the S3
/// object ARNs the loader may read, the prefixes it may list, and the bucket notifications
/// (one per source folder) that must send `ObjectCreated` events to the loader's queue.
pub fn deploy_config(catalog: &Catalog) -> Value {
    let mut read = Vec::new();
    let mut buckets: Vec<String> = Vec::new();
    let mut list_prefixes = Vec::new();
    let mut notifications: Vec<Value> = Vec::new();
    for s in catalog.sources() {
        read.push(format!("arn:aws:s3:::{}/{}*", s.bucket, s.prefix()));
        if !buckets.contains(&s.bucket) {
            buckets.push(s.bucket.clone());
        }
        list_prefixes.push(format!("{}*", s.prefix()));
        notifications.push(json!({
            "Id": format!("ferry-{{stage}}-{}", s.name),
            "Bucket": s.bucket,
            "Prefix": s.prefix(),
            "Suffix": ".parquet",
            "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
        }));
    }
    // The EventBridge variant's rule pattern: the buckets, and one key prefix per source folder
    // (EventBridge's `prefix` matching, S3 User Guide "Using EventBridge", content filtering).
    let key_prefixes: Vec<Value> = catalog
        .sources()
        .iter()
        .map(|s| json!({ "prefix": s.prefix() }))
        .collect();
    json!({
        "comment": "Generated by `ferry deploy config` from mappings/; do not edit.",
        "eventBridgeBuckets": buckets.clone(),
        "eventBridgeKeyPrefixes": key_prefixes,
        "s3ReadObjectArns": read,
        "s3BucketArns": buckets.iter().map(|b| format!("arn:aws:s3:::{b}")).collect::<Vec<_>>(),
        "s3ListPrefixes": list_prefixes,
        "notifications": notifications,
        "alarms": { "Resources": table_alarms(catalog) },
    })
}

/// A table's freshness alarm fires when its newest loaded change stays older than this.
pub const FRESHNESS_ALARM_SECONDS: u64 = 900;

/// A source's heartbeat alarm fires when no heartbeat change was loaded for this long.
pub const HEARTBEAT_ALARM_SECONDS: u64 = 600;

/// The per-table alarms serverless.yml adds to the stack (`alarms` in deploy.json), each
/// notifying the stage's alarm topic:
/// - one freshness alarm per enabled table, on the loader's `LagMs` (age of the newest change
///   loaded, per table). Its *minimum* over 5 minutes, three periods running, above
///   [`FRESHNESS_ALARM_SECONDS`]: changes arrive late. A table with no files sends no data
///   point and stays OK (idle is not stale); a backfill of old files does not fire it while
///   fresh files keep arriving.
/// - one heartbeat alarm per source that names a `heartbeat` table: missing data breaches, so
///   a pipeline that stopped (DMS task, bucket events, loader) fires it even when every other
///   table is idle.
pub fn table_alarms(catalog: &Catalog) -> Value {
    let mut resources = serde_json::Map::new();
    let id = |kind: &str, i: usize, parts: &[&str]| {
        let words: String = parts
            .iter()
            .flat_map(|p| p.split(|c: char| !c.is_ascii_alphanumeric()))
            .filter(|w| !w.is_empty())
            .map(|w| {
                let mut cs = w.chars();
                cs.next()
                    .map(|c| c.to_ascii_uppercase().to_string() + cs.as_str())
                    .unwrap_or_default()
            })
            .collect();
        let mut id = format!("{kind}{i:03}{words}");
        id.truncate(200);
        id
    };
    let alarm = |name: String,
                 description: String,
                 table: &str,
                 seconds: u64,
                 periods: u32,
                 missing: &str| {
        json!({
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmName": { "Fn::Sub": format!("${{AWS::StackName}}-{name}") },
                "AlarmDescription": description,
                "Namespace": "ferry",
                "MetricName": "LagMs",
                "Dimensions": [{ "Name": "Table", "Value": table }],
                "Statistic": "Minimum",
                "Period": 300,
                "EvaluationPeriods": periods,
                "DatapointsToAlarm": periods,
                "Threshold": seconds * 1000,
                "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": missing,
                "AlarmActions": [{ "Ref": "AlarmTopic" }],
                "OKActions": [{ "Ref": "AlarmTopic" }],
            }
        })
    };
    let mut i = 0;
    for s in catalog.sources() {
        for t in s.tables.iter().filter(|t| t.enabled) {
            i += 1;
            let table = t.source_table();
            resources.insert(
                id("Freshness", i, &[&s.name, &table]),
                alarm(
                    format!("stale-{}-{table}", s.name),
                    format!(
                        "{table} ({}): the newest change loaded has been older than {} minutes for 15 minutes. Idle tables do not fire it. See: ferry status --table {table}; the runbook's \"A stale table\".",
                        s.name,
                        FRESHNESS_ALARM_SECONDS / 60
                    ),
                    &table,
                    FRESHNESS_ALARM_SECONDS,
                    3,
                    "notBreaching",
                ),
            );
        }
        if let Some(beat) = &s.heartbeat {
            i += 1;
            resources.insert(
                id("Heartbeat", i, &[&s.name]),
                alarm(
                    format!("heartbeat-{}", s.name),
                    format!(
                        "Source {}: no heartbeat change ({beat}) was loaded for {} minutes: the DMS task, the bucket events or the loader stopped. See the runbook's \"No heartbeat\".",
                        s.name,
                        HEARTBEAT_ALARM_SECONDS / 60
                    ),
                    beat,
                    HEARTBEAT_ALARM_SECONDS,
                    2,
                    "breaching",
                ),
            );
        }
    }
    Value::Object(resources)
}

/// The notification id of a source's folder for a stage: `ferry-<stage>-<source>`.
pub fn notification_id(stage: &str, source: &str) -> String {
    format!("ferry-{stage}-{source}")
}

/// The `put-bucket-notification-configuration` queue entries for one bucket and stage: every
/// source folder in it sends `.parquet` creations to `queue_arn`, under ids naming the stage.
pub fn bucket_notification(catalog: &Catalog, bucket: &str, stage: &str, queue_arn: &str) -> Value {
    let queues: Vec<Value> = catalog
        .sources()
        .iter()
        .filter(|s| s.bucket == bucket)
        .map(|s| {
            let mut rules = vec![json!({"Name": "suffix", "Value": ".parquet"})];
            if !s.prefix().is_empty() {
                rules.insert(0, json!({"Name": "prefix", "Value": s.prefix()}));
            }
            json!({
                "Id": notification_id(stage, &s.name),
                "QueueArn": queue_arn,
                "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                "Filter": { "Key": { "FilterRules": rules } },
            })
        })
        .collect();
    json!({ "QueueConfigurations": queues })
}

/// Why a stage may not write a bucket's notifications.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotificationConflict(pub String);

fn prefix_of(entry: &Value) -> String {
    entry
        .pointer("/Filter/Key/FilterRules")
        .and_then(Value::as_array)
        .and_then(|rules| {
            rules.iter().find(|r| {
                r.get("Name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.eq_ignore_ascii_case("prefix"))
            })
        })
        .and_then(|r| r.get("Value").and_then(Value::as_str))
        .unwrap_or("")
        .to_owned()
}

fn creates_objects(entry: &Value) -> bool {
    entry
        .get("Events")
        .and_then(Value::as_array)
        .is_some_and(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .any(|e| e == "s3:ObjectCreated:*" || e.starts_with("s3:ObjectCreated:"))
        })
}

/// The bucket's notification configuration after `stage` writes its entries into `current`
/// (as `get-bucket-notification-configuration` returns it).
///
/// S3 delivers an event to one destination only: two entries whose prefixes overlap for the same
/// event type are refused, so whoever writes the entry for a folder takes that folder's events
/// from everyone else. A stage therefore replaces only its own entries (`ferry-<stage>-…`) and
/// refuses, naming the owner, when another entry covers an overlapping prefix: another stage's
/// (a dev deploy must never redirect production's events), or anything not ferry's. Entries
/// without a stage (`ferry-<source>`, written before ids named the stage) belong to `prod`.
/// `take_over` replaces every overlapping entry instead (moving a bucket from one stage to
/// another, on purpose). Other configurations of the bucket are kept.
pub fn merge_bucket_notification(
    catalog: &Catalog,
    current: &Value,
    bucket: &str,
    stage: &str,
    queue_arn: &str,
    take_over: bool,
) -> Result<Value, NotificationConflict> {
    let ours = bucket_notification(catalog, bucket, stage, queue_arn);
    let ours = ours["QueueConfigurations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let legacy: Vec<String> = catalog
        .sources()
        .iter()
        .map(|s| format!("ferry-{}", s.name))
        .collect();
    let mine = |id: &str| {
        id.starts_with(&format!("ferry-{stage}-"))
            || (stage == "prod" && legacy.iter().any(|l| l == id))
    };
    let overlaps = |a: &str, b: &str| a.starts_with(b) || b.starts_with(a);
    let mut merged = current.clone();
    if let Some(o) = merged.as_object_mut() {
        o.remove("ResponseMetadata");
    }
    let mut kept = Vec::new();
    let existing = current
        .get("QueueConfigurations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let others = ["TopicConfigurations", "LambdaFunctionConfigurations"]
        .iter()
        .flat_map(|k| {
            current
                .get(*k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        });
    for entry in existing.iter().cloned().chain(others) {
        let id = entry
            .get("Id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let is_queue = existing.contains(&entry);
        if is_queue && mine(&id) {
            continue;
        }
        let clash = creates_objects(&entry)
            && ours
                .iter()
                .any(|o| overlaps(&prefix_of(o), &prefix_of(&entry)));
        if clash && !take_over {
            let owner = match id.strip_prefix("ferry-") {
                Some(rest) if legacy.contains(&id) => {
                    format!("stage prod ({rest}, written before ids named the stage)")
                }
                Some(rest) => format!("stage {}", rest.split('-').next().unwrap_or(rest)),
                None => "a configuration that is not ferry's".to_owned(),
            };
            return Err(NotificationConflict(format!(
                "bucket {bucket}: the events of prefix {:?} go to {owner} (notification {id:?}); stage {stage} does not take them. Give {stage} its own bucket or route events through EventBridge, or pass --take-over to move them on purpose",
                prefix_of(&entry)
            )));
        }
        if clash {
            continue;
        }
        if is_queue {
            kept.push(entry);
        }
    }
    kept.extend(ours);
    merged["QueueConfigurations"] = Value::Array(kept);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::MappingFile;

    fn catalog(source: &str) -> Catalog {
        Catalog::from_files(&[MappingFile {
            path: "mappings/arcade.json".into(),
            text: format!(
                r#"{{"source": {source}, "bigquery": {{"project": "arcade-analytics", "dataset": "arcade"}},
                   "tables": {{"arcade.beat": {{"primary_key": ["id"]}}, "arcade.spins": {{"primary_key": ["id"]}},
                              "arcade.old": {{"primary_key": ["id"], "enabled": false}}}}}}"#
            ),
        }])
        .unwrap()
    }

    #[test]
    fn a_freshness_alarm_per_enabled_table_and_a_heartbeat_that_breaches_when_missing() {
        let plain = table_alarms(&catalog(
            r#"{"name": "arcade", "bucket": "arcade-dms", "folder": "f"}"#,
        ));
        let alarms = plain.as_object().unwrap();
        assert_eq!(alarms.len(), 2, "no alarm for the disabled table: {plain}");
        for a in alarms.values() {
            let p = &a["Properties"];
            assert_eq!(p["MetricName"], "LagMs");
            assert_eq!(p["TreatMissingData"], "notBreaching", "idle is not stale");
            assert_eq!(
                p["Statistic"], "Minimum",
                "a backfill's old files do not fire it"
            );
            assert_eq!(p["Threshold"], FRESHNESS_ALARM_SECONDS * 1000);
            assert_eq!(p["AlarmActions"], json!([{"Ref": "AlarmTopic"}]));
        }
        let ids: Vec<&String> = alarms.keys().collect();
        assert!(
            ids.iter()
                .all(|k| k.chars().all(|c| c.is_ascii_alphanumeric())),
            "CloudFormation logical ids: {ids:?}"
        );
        let with_beat = table_alarms(&catalog(
            r#"{"name": "arcade", "bucket": "arcade-dms", "folder": "f", "heartbeat": "arcade.beat"}"#,
        ));
        let beats: Vec<&Value> = with_beat
            .as_object()
            .unwrap()
            .values()
            .filter(|a| a["Properties"]["TreatMissingData"] == "breaching")
            .collect();
        assert_eq!(beats.len(), 1, "{with_beat}");
        assert_eq!(
            beats[0]["Properties"]["Dimensions"],
            json!([{"Name": "Table", "Value": "arcade.beat"}])
        );
        assert_eq!(
            beats[0]["Properties"]["Threshold"],
            HEARTBEAT_ALARM_SECONDS * 1000
        );
    }
}
