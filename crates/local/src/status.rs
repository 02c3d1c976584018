//! `ferry status`: per table, what the loader recorded: the last file and commit time, the lag,
//! files, rows and failures in the last 24 hours, and objects seen for unmapped or disabled
//! tables. The same records exist in BigQuery, so the same view serves dashboards there.

use ferry_core::mapping::Catalog;
use ferry_pipeline::PortError;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::warehouse::SqliteWarehouse;

const DAY_MICROS: i64 = 86_400_000_000;

/// One table's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TableStatus {
    /// Source.
    pub source: String,
    /// `schema.table`.
    pub table: String,
    /// `mapped`, `disabled` or `unmapped`.
    pub state: String,
    /// The last file loaded (in apply order).
    pub last_file: Option<String>,
    /// The latest commit time loaded, µs since the epoch.
    pub last_commit_micros: Option<i64>,
    /// Now minus the latest commit time, in seconds.
    pub lag_seconds: Option<f64>,
    /// Files loaded in the last 24 hours.
    pub files_24h: u64,
    /// Rows loaded in the last 24 hours.
    pub rows_24h: u64,
    /// Failed attempts in the last 24 hours.
    pub failures_24h: u64,
    /// Objects skipped in the last 24 hours (an unmapped or disabled table's files).
    pub skipped_24h: u64,
    /// Warnings in the last 24 hours: objects loaded with one (LOB values at DMS's cut, a
    /// missing timestamp column, commit times clamped) and applies that updated keys the
    /// replica did not hold (a primary-key update at the source?).
    pub warnings_24h: u64,
    /// Objects removed from the table's folder in the last 24 hours (a DMS truncate).
    pub removed_24h: u64,
    /// The newest warning, if any in the last 24 hours.
    pub last_warning: Option<String>,
    /// The last `ferry reconcile` result: `match` or `differ`.
    pub reconcile: Option<String>,
    /// The newest commit time up to which the replica was found equal to the source.
    pub verified_through_micros: Option<i64>,
}

/// The whole picture.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    /// Per table, mapped ones first.
    pub tables: Vec<TableStatus>,
    /// Messages in the dead-letter queue.
    pub dead_letters: u64,
}

/// Computes the status at `now` (µs since the epoch).
pub fn status(
    warehouse: &SqliteWarehouse,
    catalog: &Catalog,
    now: i64,
) -> Result<Status, PortError> {
    let err = |e: rusqlite::Error| PortError::retryable(format!("status: {e}"));
    warehouse.with_conn(|c| {
        let mut tables = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let since = now - DAY_MICROS;
        let mut counts = c
            .prepare(
                "SELECT source, table_name,
                        sum(kind = 'loaded'), coalesce(sum(CASE WHEN kind = 'loaded' THEN rows END), 0),
                        sum(kind LIKE 'failed_%'), sum(kind = 'skipped'),
                        sum((kind = 'loaded' AND warnings IS NOT NULL) OR kind = 'warning'), sum(kind = 'removed')
                 FROM _ferry_events WHERE at >= ?1 AND source IS NOT NULL AND table_name IS NOT NULL
                 GROUP BY source, table_name",
            )
            .map_err(err)?;
        let rows = counts
            .query_map([since], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let mut last = c
            .prepare("SELECT key, commit_ts_max FROM _ferry_loads WHERE source = ?1 AND table_name = ?2 ORDER BY file_seq DESC LIMIT 1")
            .map_err(err)?;
        let mut last_commit =
            c.prepare("SELECT max(commit_ts_max) FROM _ferry_loads WHERE source = ?1 AND table_name = ?2").map_err(err)?;
        let mut last_warning = c
            .prepare("SELECT warnings FROM _ferry_events WHERE source = ?1 AND table_name = ?2 AND at >= ?3 AND warnings IS NOT NULL ORDER BY at DESC LIMIT 1")
            .map_err(err)?;
        let mut reconciled = c
            .prepare("SELECT status, verified_through FROM _ferry_reconcile WHERE source = ?1 AND table_name = ?2")
            .map_err(err)?;
        let mut fill = |t: &mut TableStatus| -> Result<(), PortError> {
            if let Some((state, verified)) = reconciled
                .query_row(params![t.source, t.table], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?)))
                .optional()
                .map_err(err)?
            {
                (t.reconcile, t.verified_through_micros) = (Some(state), verified);
            }
            if let Some(r) = rows.iter().find(|r| r.0 == t.source && r.1 == t.table) {
                (t.files_24h, t.rows_24h, t.failures_24h, t.skipped_24h) = (r.2 as u64, r.3 as u64, r.4 as u64, r.5 as u64);
                (t.warnings_24h, t.removed_24h) = (r.6 as u64, r.7 as u64);
            }
            t.last_warning = last_warning
                .query_row(params![t.source, t.table, since], |r| r.get::<_, String>(0))
                .optional()
                .map_err(err)?;
            t.last_file = last
                .query_row(params![t.source, t.table], |r| r.get::<_, String>(0))
                .optional()
                .map_err(err)?;
            t.last_commit_micros = last_commit.query_row(params![t.source, t.table], |r| r.get(0)).map_err(err)?;
            t.lag_seconds = t.last_commit_micros.map(|m| (now - m) as f64 / 1e6);
            Ok(())
        };
        for source in catalog.sources() {
            for table in &source.tables {
                let mut t = TableStatus {
                    source: source.name.clone(),
                    table: table.source_table(),
                    state: if table.enabled { "mapped" } else { "disabled" }.into(),
                    ..TableStatus::default()
                };
                fill(&mut t)?;
                seen.insert((t.source.clone(), t.table.clone()));
                tables.push(t);
            }
        }
        for r in &rows {
            if !seen.contains(&(r.0.clone(), r.1.clone())) {
                let mut t = TableStatus { source: r.0.clone(), table: r.1.clone(), state: "unmapped".into(), ..TableStatus::default() };
                fill(&mut t)?;
                tables.push(t);
            }
        }
        let dead_letters: i64 = c.query_row("SELECT count(*) FROM _ferry_dlq", [], |r| r.get(0)).map_err(err)?;
        Ok(Status { tables, dead_letters: dead_letters as u64 })
    })
}
