//! CloudWatch Embedded Metric Format: one JSON log line per table per batch, which CloudWatch
//! turns into metrics (namespace `ferry`, dimension `Table`) at no extra API cost.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_pipeline::{BatchReport, ObjectResult};
use serde_json::json;

/// Counts for one table in one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableCounts {
    /// Objects loaded now.
    pub files: u64,
    /// Rows loaded now.
    pub rows: u64,
    /// Objects found loaded already (redeliveries).
    pub already_loaded: u64,
    /// Objects skipped (unmapped, disabled, not data).
    pub skipped: u64,
    /// Objects that failed (retryable or permanent).
    pub failures: u64,
    /// Objects deferred to a later load slot or past a used-up quota (sent again with a delay).
    pub deferred: u64,
    /// Objects removed from the table's folder (a DMS truncate or reload).
    pub removed: u64,
    /// Objects loaded with a warning (LOB values at DMS's cut, a missing timestamp column).
    pub warned: u64,
    /// The newest source commit time loaded, µs since the epoch.
    pub newest_commit_micros: Option<i64>,
}

/// Per-table counts of a batch. Objects whose table is unknown (skipped, failed before the
/// key parsed) count under `-`.
pub fn per_table(report: &BatchReport) -> BTreeMap<String, TableCounts> {
    let mut out: BTreeMap<String, TableCounts> = BTreeMap::new();
    for (_, _, result) in &report.objects {
        let (table, f): (&str, fn(&mut TableCounts, &ObjectResult)) = match result {
            ObjectResult::Loaded { table, .. } => (table, |c, r| {
                c.files += 1;
                if let ObjectResult::Loaded {
                    rows,
                    commit_ts_max,
                    warnings,
                    ..
                } = r
                {
                    c.rows += rows;
                    c.warned += u64::from(!warnings.is_empty());
                    c.newest_commit_micros = c.newest_commit_micros.max(*commit_ts_max);
                }
            }),
            ObjectResult::AlreadyLoaded { table, .. } => (table, |c, _| c.already_loaded += 1),
            ObjectResult::Skipped { .. } => ("-", |c, _| c.skipped += 1),
            ObjectResult::Failed { .. } => ("-", |c, _| c.failures += 1),
            ObjectResult::Deferred { .. } => ("-", |c, _| c.deferred += 1),
        };
        f(out.entry(table.to_owned()).or_default(), result);
    }
    for (table, _) in &report.deferred {
        out.entry(table.clone()).or_default().deferred += 1;
    }
    for (table, _) in &report.removed {
        out.entry(table.clone()).or_default().removed += 1;
    }
    out
}

/// One EMF line: `values` are (name, unit, value); `dimension` an optional (name, value).
pub(crate) fn emf(
    now_millis: i64,
    dimension: Option<(&str, &str)>,
    values: &[(&str, &str, u64)],
) -> String {
    let mut line = serde_json::Map::new();
    let dims: Vec<&str> = dimension.iter().map(|(name, _)| *name).collect();
    let metrics: Vec<serde_json::Value> = values
        .iter()
        .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
        .collect();
    line.insert(
        "_aws".into(),
        json!({
            "Timestamp": now_millis,
            "CloudWatchMetrics": [{"Namespace": "ferry", "Dimensions": [dims], "Metrics": metrics}],
        }),
    );
    if let Some((name, value)) = dimension {
        line.insert(name.into(), json!(value));
    }
    for (name, _, value) in values {
        line.insert((*name).into(), json!(value));
    }
    serde_json::Value::Object(line).to_string()
}

/// The EMF lines of a batch: one per table, plus one for the batch.
pub fn lines(report: &BatchReport, elapsed: Duration, now_millis: i64) -> Vec<String> {
    let count = "Count";
    let mut out: Vec<String> = per_table(report)
        .into_iter()
        .map(|(table, c)| {
            let mut values = vec![
                ("Files", count, c.files),
                ("Rows", count, c.rows),
                ("AlreadyLoaded", count, c.already_loaded),
                ("Skipped", count, c.skipped),
                ("Failures", count, c.failures),
                ("Deferred", count, c.deferred),
                ("ObjectsRemoved", count, c.removed),
                ("LoadedWithWarnings", count, c.warned),
            ];
            // Lag: how old the newest change loaded for the table is, from source commit to
            // BigQuery (the whole path: DMS, S3, SQS, ferry).
            if let Some(newest) = c.newest_commit_micros {
                let lag_ms = (now_millis.saturating_mul(1000) - newest).max(0) / 1000;
                values.push(("LagMs", "Milliseconds", u64::try_from(lag_ms).unwrap_or(0)));
            }
            emf(now_millis, Some(("Table", &table)), &values)
        })
        .collect();
    out.push(emf(
        now_millis,
        None,
        &[
            (
                "BatchMs",
                "Milliseconds",
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            ),
            ("DeadLettered", count, report.dead_lettered.len() as u64),
            // The batch totals the stack's alarms watch (no dimension).
            (
                "LoadedWithWarnings",
                count,
                report
                    .objects
                    .iter()
                    .filter(|(_, _, r)| matches!(r, ObjectResult::Loaded { warnings, .. } if !warnings.is_empty()))
                    .count() as u64,
            ),
            (
                "TypeChangeStops",
                count,
                report
                    .objects
                    .iter()
                    .filter(|(_, _, r)| matches!(r, ObjectResult::Skipped { code, .. } if code == ferry_pipeline::TYPE_CHANGED))
                    .count() as u64,
            ),
            ("ObjectsRemoved", count, report.removed.len() as u64),
            (
                "RetriedMessages",
                count,
                report.response.batch_item_failures.len() as u64,
            ),
        ],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_count_per_table_and_for_the_alarm() {
        let mut report = BatchReport::default();
        report.removed.push((
            "casino.bets".into(),
            "cdc/casino/bets/LOAD00000001.parquet".into(),
        ));
        assert_eq!(per_table(&report)["casino.bets"].removed, 1);
        let values: Vec<serde_json::Value> = lines(&report, Duration::from_millis(5), 61_000)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let table = values.iter().find(|v| v["Table"] == "casino.bets").unwrap();
        assert_eq!(table["ObjectsRemoved"], 1);
        // The batch line (no dimension) carries the total the stack's alarm watches.
        let batch = values.iter().find(|v| v.get("BatchMs").is_some()).unwrap();
        assert_eq!(batch["ObjectsRemoved"], 1);
        assert_eq!(
            batch["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[]])
        );
    }

    #[test]
    fn counts_by_table_and_emits_valid_emf() {
        let mut report = BatchReport::default();
        report.objects.push((
            "m1".into(),
            "k1".into(),
            ObjectResult::Loaded {
                job_id: "j".into(),
                rows: 7,
                table: "casino.bets".into(),
                source: "s".into(),
                commit_ts_max: Some(1_000_000),
                warnings: vec!["lob_at_limit: 1 values of doc".into()],
            },
        ));
        report.objects.push((
            "m2".into(),
            "k2".into(),
            ObjectResult::Failed {
                reason: "x".into(),
                retryable: false,
            },
        ));
        let t = per_table(&report);
        assert_eq!(t["casino.bets"].rows, 7);
        assert_eq!(t["-"].failures, 1);
        let lines = lines(&report, Duration::from_millis(5), 61_000);
        assert_eq!(lines.len(), 3);
        let v: serde_json::Value = lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["Table"] == "casino.bets")
            .unwrap();
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Table"]])
        );
        assert_eq!(v["Table"], "casino.bets");
        assert_eq!(v["Rows"], 7);
        assert_eq!(v["LagMs"], 60_000, "committed at 1 s, loaded at 61 s");
        assert_eq!(v["LoadedWithWarnings"], 1);
        let batch: serde_json::Value = lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v.get("BatchMs").is_some())
            .unwrap();
        assert_eq!(
            (
                batch["LoadedWithWarnings"].as_u64(),
                batch["TypeChangeStops"].as_u64()
            ),
            (Some(1), Some(0))
        );
        let metrics = v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap();
        for m in metrics {
            let name = m["Name"].as_str().unwrap();
            assert!(v.get(name).is_some(), "EMF needs a value for {name}");
        }
    }
}
