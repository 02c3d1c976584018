//! Scheduled integrity: the same `bootstrap`, started with `FERRY_FUNCTION=reconcile`, compares
//! every enabled replica with its source on a schedule (an EventBridge rule), from inside a VPC
//! that reaches the sources' read replicas.
//!
//! - `FERRY_RECONCILE_SOURCES`: a JSON object, source name -> Secrets Manager secret holding the
//!   read-only user's RDS-style JSON (`username`, `password`, `host`, `port`). Sources not named
//!   are not checked; empty, the function does nothing.
//! - `FERRY_RECONCILE_SETTLE`: the wait before differing keys are read again (default `2m`).
//! - Results: one row per table and run in `<dataset>.ferry_reconcile` (which `ferry status`
//!   and the status views read for `verified_through`), and EMF metrics per table:
//!   `ReconcileMismatches` (missing + extra + different keys) and `ReconcileErrors`, which the
//!   stack's alarm watches. It never repairs: `ferry reconcile --repair` is a person's decision.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::mapping::Catalog;
use ferry_source::conn::{ConnectOptions, MySql, SourceUrl};
use ferry_source::table::{self, TableReport};

/// What one scheduled run did, per source.
#[derive(Debug, Default)]
pub struct Summary {
    /// Reports, by source.
    pub reports: BTreeMap<String, Vec<TableReport>>,
    /// Sources that could not be read (secret, connection), with the reason.
    pub failed_sources: Vec<(String, String)>,
}

/// Reads `FERRY_RECONCILE_SOURCES`.
pub fn sources_from_env() -> Result<BTreeMap<String, String>, String> {
    match std::env::var("FERRY_RECONCILE_SOURCES") {
        Ok(v) if !v.trim().is_empty() => serde_json::from_str(&v).map_err(|e| {
            format!("FERRY_RECONCILE_SOURCES is not a JSON object of source name to secret: {e}")
        }),
        _ => Ok(BTreeMap::new()),
    }
}

/// Runs every named source's tables. Blocking: call it outside async code (the MySQL side
/// drives its own runtime, the BigQuery side blocks on `rt`).
pub fn run(
    catalog: &Catalog,
    sources: &BTreeMap<String, String>,
    secrets: &dyn Fn(&str) -> Result<String, String>,
    client: &ferry_bigquery::Client,
    rt: &tokio::runtime::Handle,
    settle: Duration,
) -> Summary {
    let mut summary = Summary::default();
    for (name, secret) in sources {
        let Some(source) = catalog.source(name) else {
            summary
                .failed_sources
                .push((name.clone(), "not a source of the mappings".into()));
            continue;
        };
        let connected = secrets(secret)
            .and_then(|s| SourceUrl::from_rds_secret(&s).map_err(|e| e.to_string()))
            .and_then(|u| MySql::connect(&u, ConnectOptions::default()).map_err(|e| e.to_string()));
        let mut db = match connected {
            Ok(db) => db,
            Err(e) => {
                summary.failed_sources.push((name.clone(), e));
                continue;
            }
        };
        let mut schemas: Vec<String> = source.tables.iter().map(|t| t.schema.clone()).collect();
        schemas.sort();
        schemas.dedup();
        let tables = match ferry_source::catalog::read_tables(&mut db, &schemas) {
            Ok(t) => t,
            Err(e) => {
                summary.failed_sources.push((name.clone(), e.to_string()));
                continue;
            }
        };
        let mut reports = Vec::new();
        for t in &source.tables {
            let report = match (
                table::eligible(t),
                tables
                    .iter()
                    .find(|s| s.schema == t.schema && s.name == t.table),
            ) {
                (Err(why), _) => TableReport::skipped(t, why),
                (Ok(()), None) => TableReport::failed(t, "the table does not exist in the source"),
                (Ok(()), Some(st)) => table::reconcile_bigquery(
                    &mut db,
                    client,
                    rt,
                    source,
                    t,
                    st,
                    ferry_source::reconcile::Options::default(),
                    &mut || std::thread::sleep(settle),
                ),
            };
            tracing::info!(
                source = %name,
                table = %report.table,
                status = report.status,
                missing = report.outcome.missing.len(),
                extra = report.outcome.extra.len(),
                different = report.outcome.different.len(),
                reason = report.reason.as_deref().unwrap_or_default(),
                "reconciled"
            );
            reports.push(report);
        }
        let recorded = table::ensure_results_bigquery(client, rt, source)
            .and_then(|()| table::record_bigquery(client, rt, source, &reports, now_micros()));
        if let Err(e) = recorded {
            tracing::error!(source = %name, error = %e, "could not record the reconcile results");
        }
        summary.reports.insert(name.clone(), reports);
    }
    summary
}

/// The function's cold start and one scheduled run, as `bootstrap` runs them with
/// `FERRY_FUNCTION=reconcile`.
pub struct Reconciler {
    catalog: Catalog,
    sources: BTreeMap<String, String>,
    aws: ferry_aws::config::SdkConfig,
    client: ferry_bigquery::Client,
    settle: Duration,
}

impl Reconciler {
    /// Mappings, AWS and BigQuery clients, and the sources to check, from the environment.
    pub async fn from_env() -> Result<Reconciler, String> {
        let catalog = crate::load_catalog(&crate::mappings_dir())?;
        let sources = sources_from_env()?;
        let aws = ferry_aws::config::load().await;
        let auth = crate::auth_from_env(&aws).await?;
        let project = catalog
            .sources()
            .first()
            .map(|s| s.project.clone())
            .ok_or("the mappings are empty")?;
        let mut config = ferry_bigquery::ClientConfig::default();
        if let Ok(url) = std::env::var("FERRY_BQ_BASE_URL") {
            config.base_url = url;
        }
        let client =
            ferry_bigquery::Client::new(config, auth, &project).map_err(|e| e.to_string())?;
        let settle = std::env::var("FERRY_RECONCILE_SETTLE")
            .ok()
            .map_or(Some(Duration::from_secs(120)), |v| {
                ferry_core::mapping::parse_interval(&v)
            })
            .ok_or("FERRY_RECONCILE_SETTLE is not a duration such as 2m")?;
        Ok(Reconciler {
            catalog,
            sources,
            aws,
            client,
            settle,
        })
    }

    /// One run: every named source, every enabled replica. Prints the EMF lines and returns a
    /// short JSON summary.
    pub async fn run_once(&self) -> serde_json::Value {
        let handle = tokio::runtime::Handle::current();
        let secrets_client = ferry_aws::config::secrets(&self.aws);
        let secrets = |id: &str| -> Result<String, String> {
            handle.block_on(ferry_aws::config::secret_string(&secrets_client, id))
        };
        let summary = tokio::task::block_in_place(|| {
            run(
                &self.catalog,
                &self.sources,
                &secrets,
                &self.client,
                &handle,
                self.settle,
            )
        });
        let now_millis = now_micros() / 1000;
        for line in metric_lines(&summary, now_millis) {
            println!("{line}");
        }
        let tables: Vec<serde_json::Value> = summary
            .reports
            .values()
            .flatten()
            .map(|r| serde_json::json!({"table": r.table, "status": r.status}))
            .collect();
        serde_json::json!({"tables": tables, "failed_sources": summary.failed_sources})
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The EMF lines of a run: per table `ReconcileMismatches` and `ReconcileErrors`, and the run's
/// totals without a dimension (what the alarm watches).
pub fn metric_lines(summary: &Summary, now_millis: i64) -> Vec<String> {
    let mut out = Vec::new();
    let (mut mismatches, mut errors) = (0u64, summary.failed_sources.len() as u64);
    for reports in summary.reports.values() {
        for r in reports {
            if r.status == "skipped" {
                continue;
            }
            let m = (r.outcome.missing.len() + r.outcome.extra.len() + r.outcome.different.len())
                as u64;
            let e = u64::from(r.status == "error");
            mismatches += m;
            errors += e;
            out.push(crate::metrics::emf(
                now_millis,
                Some(("Table", &r.table)),
                &[
                    ("ReconcileMismatches", "Count", m),
                    ("ReconcileErrors", "Count", e),
                ],
            ));
        }
    }
    out.push(crate::metrics::emf(
        now_millis,
        None,
        &[
            ("ReconcileMismatches", "Count", mismatches),
            ("ReconcileErrors", "Count", errors),
        ],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_is_counted_per_table_and_in_total() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mappings");
        let catalog = Catalog::load_dir(&dir).ok();
        let table = catalog
            .as_ref()
            .and_then(|c| c.sources().first())
            .map(|s| s.tables[0].clone());
        let Some(table) = table else {
            panic!("the committed mappings load");
        };
        let mut differ = TableReport::skipped(&table, "");
        differ.status = "differ";
        differ.outcome.missing.push(BTreeMap::new());
        differ.outcome.extra.push(BTreeMap::new());
        let failed = TableReport::failed(&table, "timeout");
        let summary = Summary {
            reports: BTreeMap::from([("s".into(), vec![differ, failed])]),
            failed_sources: vec![("t".into(), "no secret".into())],
        };
        let lines = metric_lines(&summary, 1_000);
        let total: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(total["ReconcileMismatches"], 2);
        assert_eq!(
            total["ReconcileErrors"], 2,
            "the failed table and the unreadable source"
        );
        let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["Table"], table.source_table());
        assert_eq!(first["_aws"]["CloudWatchMetrics"][0]["Namespace"], "ferry");
    }
}
