//! The `ferry_status` dataset: views over what BigQuery already holds, for analysts and Looker
//! Studio. No write path is added for status: the views read the load jobs' labels in
//! `INFORMATION_SCHEMA.JOBS`, the change logs (partition-pruned to the last day) and the
//! reconcile results (`<dataset>.ferry_reconcile`).
//!
//! - `load_jobs_hourly`: per table and hour of the last day, successful and failed load jobs,
//!   bytes, and the newest job id (job ids name the object's table and file stamp).
//! - `changes_hourly`: per table and hour of the last day, change-log rows and the newest commit.
//! - `table_status`: one row per mapped table: state, last load job, last commit, freshness,
//!   loads, rows and failed loads in the last 24 h, the last reconcile and `verified_through`.
//! - `table_status_hourly`: per table and hour, rows, newest commit, loads and failed loads.
//!
//! A table idle for more than a day shows no last commit (its freshness is NULL): the views
//! read one day of change log so that a dashboard refresh costs one column of one day.

use ferry_core::mapping::{Catalog, TableRef};
use ferry_core::schema::meta;
use ferry_core::sql::{ident, string_literal, table_path};

use crate::warehouse::label;

/// The status dataset's name.
pub const DATASET: &str = "ferry_status";

/// The table in each source's dataset that `ferry reconcile` appends its results to.
pub const RESULTS_TABLE: &str = "ferry_reconcile";

/// `INFORMATION_SCHEMA.JOBS_BY_PROJECT` of the region the datasets live in.
pub fn jobs_source(project: &str, location: Option<&str>) -> String {
    let region = format!("region-{}", location.unwrap_or("us").to_ascii_lowercase());
    format!(
        "{}.{}.INFORMATION_SCHEMA.JOBS_BY_PROJECT",
        ident(project),
        ident(&region)
    )
}

fn view(project: &str, name: &str) -> String {
    table_path(&TableRef {
        project: project.to_owned(),
        dataset: DATASET.to_owned(),
        table: name.to_owned(),
    })
}

/// The `CREATE OR REPLACE VIEW` statements, in order. `exists` says which change logs and
/// reconcile tables exist (a view may only name existing tables); `jobs` is
/// [`jobs_source`] in production.
pub fn statements(
    catalog: &Catalog,
    project: &str,
    jobs: &str,
    exists: &dyn Fn(&TableRef) -> bool,
) -> Vec<String> {
    let ts = ident(meta::COMMIT_TS);
    let mut mapped = Vec::new();
    let mut changes = Vec::new();
    // Sources sharing a dataset share its results table.
    let mut results_tables = std::collections::BTreeSet::new();
    for source in catalog.sources() {
        let results = TableRef {
            project: source.project.clone(),
            dataset: source.dataset.clone(),
            table: RESULTS_TABLE.into(),
        };
        if exists(&results) {
            results_tables.insert(results);
        }
        for t in &source.tables {
            mapped.push(format!(
                "SELECT {} AS source, {} AS table_name, {} AS source_label, {} AS table_label, {} AS state, {} AS target",
                string_literal(&source.name),
                string_literal(&t.source_table()),
                string_literal(&label(&source.name)),
                string_literal(&label(&t.source_table())),
                string_literal(if t.enabled { "enabled" } else { "disabled" }),
                string_literal(&t.primary_target().to_string()),
            ));
            if exists(&t.changelog) {
                changes.push(format!(
                    "SELECT {} AS source, {} AS table_name, TIMESTAMP_TRUNC({ts}, HOUR) AS hour, COUNT(*) AS row_count, MAX({ts}) AS newest_commit FROM {} WHERE {ts} >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 DAY) GROUP BY hour",
                    string_literal(&source.name),
                    string_literal(&t.source_table()),
                    table_path(&t.changelog)
                ));
            }
        }
    }
    let empty_changes = "SELECT CAST(NULL AS STRING) AS source, CAST(NULL AS STRING) AS table_name, CAST(NULL AS TIMESTAMP) AS hour, 0 AS row_count, CAST(NULL AS TIMESTAMP) AS newest_commit LIMIT 0";
    let empty_reconcile = "SELECT CAST(NULL AS STRING) AS source, CAST(NULL AS STRING) AS table_name, CAST(NULL AS STRING) AS status, CAST(NULL AS TIMESTAMP) AS checked_at, CAST(NULL AS TIMESTAMP) AS verified_through LIMIT 0";
    let mapped = if mapped.is_empty() {
        "SELECT CAST(NULL AS STRING) AS source, CAST(NULL AS STRING) AS table_name, CAST(NULL AS STRING) AS source_label, CAST(NULL AS STRING) AS table_label, CAST(NULL AS STRING) AS state, CAST(NULL AS STRING) AS target LIMIT 0".to_owned()
    } else {
        mapped.join("\nUNION ALL\n")
    };
    let changes = if changes.is_empty() {
        empty_changes.to_owned()
    } else {
        changes.join("\nUNION ALL\n")
    };
    let reconciles = if results_tables.is_empty() {
        empty_reconcile.to_owned()
    } else {
        results_tables
            .iter()
            .map(|t| {
                format!(
                    "SELECT source, table_name, status, checked_at, verified_through FROM {}",
                    table_path(t)
                )
            })
            .collect::<Vec<_>>()
            .join("\nUNION ALL\n")
    };
    let (jobs_hourly, changes_hourly) = (
        view(project, "load_jobs_hourly"),
        view(project, "changes_hourly"),
    );
    vec![
        format!(
            "CREATE OR REPLACE VIEW {jobs_hourly} AS
SELECT source_label, table_label, TIMESTAMP_TRUNC(creation_time, HOUR) AS hour,
  COUNTIF(error_result IS NULL) AS loads, COUNTIF(error_result IS NOT NULL) AS failed_loads,
  SUM(total_bytes_processed) AS bytes,
  MAX(IF(error_result IS NULL, creation_time, NULL)) AS last_load,
  MAX_BY(IF(error_result IS NULL, job_id, NULL), IF(error_result IS NULL, creation_time, NULL)) AS last_job
FROM (
  SELECT creation_time, job_id, error_result, total_bytes_processed,
    (SELECT l.value FROM UNNEST(labels) AS l WHERE l.key = 'ferry_source') AS source_label,
    (SELECT l.value FROM UNNEST(labels) AS l WHERE l.key = 'ferry_table') AS table_label
  FROM {jobs}
  WHERE job_type = 'LOAD' AND state = 'DONE'
    AND creation_time >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 DAY)
) AS j
WHERE table_label IS NOT NULL
GROUP BY source_label, table_label, hour"
        ),
        format!("CREATE OR REPLACE VIEW {changes_hourly} AS\n{changes}"),
        format!(
            "CREATE OR REPLACE VIEW {} AS
WITH mapped AS ({mapped}),
recent AS (SELECT source, table_name, MAX(newest_commit) AS newest_commit, SUM(row_count) AS rows_24h FROM {changes_hourly} GROUP BY source, table_name),
loads AS (SELECT source_label, table_label, SUM(loads) AS loads_24h, SUM(failed_loads) AS failed_24h,
  MAX_BY(last_job, last_load) AS last_job
  FROM {jobs_hourly} GROUP BY source_label, table_label),
checks AS (SELECT source, table_name, MAX(verified_through) AS verified_through,
  MAX_BY(status, checked_at) AS reconcile
  FROM ({reconciles}) AS r GROUP BY source, table_name)
SELECT m.source, m.table_name, m.target, m.state, l.last_job, r.newest_commit AS last_commit,
  TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), r.newest_commit, SECOND) AS freshness_seconds,
  IFNULL(l.loads_24h, 0) AS loads_24h, IFNULL(r.rows_24h, 0) AS rows_24h,
  IFNULL(l.failed_24h, 0) AS failed_loads_24h, c.reconcile, c.verified_through
FROM mapped AS m
LEFT JOIN recent AS r ON r.source = m.source AND r.table_name = m.table_name
LEFT JOIN loads AS l ON l.source_label = m.source_label AND l.table_label = m.table_label
LEFT JOIN checks AS c ON c.source = m.source AND c.table_name = m.table_name",
            view(project, "table_status")
        ),
        format!(
            "CREATE OR REPLACE VIEW {} AS
WITH mapped AS ({mapped})
SELECT c.source, c.table_name, c.hour, c.row_count, c.newest_commit,
  IFNULL(l.loads, 0) AS loads, IFNULL(l.failed_loads, 0) AS failed_loads
FROM {changes_hourly} AS c
JOIN mapped AS m ON m.source = c.source AND m.table_name = c.table_name
LEFT JOIN {jobs_hourly} AS l
  ON l.source_label = m.source_label AND l.table_label = m.table_label AND l.hour = c.hour
UNION ALL
SELECT m.source, m.table_name, l.hour, 0 AS row_count, CAST(NULL AS TIMESTAMP) AS newest_commit,
  l.loads, l.failed_loads
FROM {jobs_hourly} AS l
JOIN mapped AS m ON l.source_label = m.source_label AND l.table_label = m.table_label
WHERE NOT EXISTS (SELECT 1 FROM {changes_hourly} AS c
  WHERE c.source = m.source AND c.table_name = m.table_name AND c.hour = l.hour)",
            view(project, "table_status_hourly")
        ),
    ]
}

/// One row of `table_status`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StatusRow {
    /// Source.
    pub source: String,
    /// `schema.table`.
    pub table: String,
    /// `enabled` or `disabled`.
    pub state: String,
    /// The newest successful load job (its id names the table and the file's stamp).
    pub last_job: Option<String>,
    /// The newest commit time in the change log's last day, µs.
    pub last_commit_micros: Option<i64>,
    /// Now minus that, seconds.
    pub freshness_seconds: Option<f64>,
    /// Successful load jobs in the last 24 h.
    pub loads_24h: u64,
    /// Change-log rows committed in the last 24 h.
    pub rows_24h: u64,
    /// Failed load jobs in the last 24 h.
    pub failed_loads_24h: u64,
    /// The last reconcile's status.
    pub reconcile: Option<String>,
    /// The newest time a reconcile verified the replica through, µs.
    pub verified_through_micros: Option<i64>,
}

/// The rows of a status query (a view is read within two minutes or not at all).
async fn rows(
    client: &crate::Client,
    sql: &str,
    location: Option<&str>,
    request_id: &str,
) -> Result<Vec<Vec<serde_json::Value>>, crate::BqError> {
    let result = client
        .query(
            sql,
            location,
            request_id,
            std::time::Duration::from_secs(120),
        )
        .await?;
    Ok(result.rows)
}

/// Cells as the REST API returns them (every value a string or null).
fn text(v: Option<&serde_json::Value>) -> Option<String> {
    v.and_then(serde_json::Value::as_str).map(str::to_owned)
}

fn int(v: Option<&serde_json::Value>) -> Option<i64> {
    v.and_then(serde_json::Value::as_str)
        .and_then(|s| s.parse::<i64>().ok())
}

fn count(v: Option<&serde_json::Value>) -> u64 {
    int(v).and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

/// Reads `ferry_status.table_status` (one row per mapped table).
pub async fn read(
    client: &crate::Client,
    project: &str,
    location: Option<&str>,
    request_id: &str,
) -> Result<Vec<StatusRow>, crate::BqError> {
    let sql = format!(
        "SELECT source, table_name, state, last_job, UNIX_MICROS(last_commit), freshness_seconds, loads_24h, rows_24h, failed_loads_24h, reconcile, UNIX_MICROS(verified_through) FROM {} ORDER BY source, table_name",
        view(project, "table_status")
    );
    Ok(rows(client, &sql, location, request_id)
        .await?
        .iter()
        .map(|r| StatusRow {
            source: text(r.first()).unwrap_or_default(),
            table: text(r.get(1)).unwrap_or_default(),
            state: text(r.get(2)).unwrap_or_default(),
            last_job: text(r.get(3)),
            last_commit_micros: int(r.get(4)),
            freshness_seconds: text(r.get(5)).and_then(|s| s.parse().ok()),
            loads_24h: count(r.get(6)),
            rows_24h: count(r.get(7)),
            failed_loads_24h: count(r.get(8)),
            reconcile: text(r.get(9)),
            verified_through_micros: int(r.get(10)),
        })
        .collect())
}

/// One row of `table_status_hourly`.
#[derive(Debug, Clone, PartialEq)]
pub struct HourRow {
    /// Source.
    pub source: String,
    /// `schema.table`.
    pub table: String,
    /// The hour's start, µs.
    pub hour_micros: i64,
    /// Change-log rows committed in the hour.
    pub rows: u64,
    /// The newest commit time in the hour, µs.
    pub newest_commit_micros: Option<i64>,
    /// Successful load jobs.
    pub loads: u64,
    /// Failed load jobs.
    pub failed_loads: u64,
}

/// Reads `ferry_status.table_status_hourly` (the last day, per table and hour).
pub async fn read_hourly(
    client: &crate::Client,
    project: &str,
    location: Option<&str>,
    request_id: &str,
) -> Result<Vec<HourRow>, crate::BqError> {
    let sql = format!(
        "SELECT source, table_name, UNIX_MICROS(hour), row_count, UNIX_MICROS(newest_commit), loads, failed_loads FROM {} ORDER BY source, table_name, hour",
        view(project, "table_status_hourly")
    );
    Ok(rows(client, &sql, location, request_id)
        .await?
        .iter()
        .filter_map(|r| {
            Some(HourRow {
                source: text(r.first()).unwrap_or_default(),
                table: text(r.get(1)).unwrap_or_default(),
                hour_micros: int(r.get(2))?,
                rows: count(r.get(3)),
                newest_commit_micros: int(r.get(4)),
                loads: count(r.get(5)),
                failed_loads: count(r.get(6)),
            })
        })
        .collect())
}
