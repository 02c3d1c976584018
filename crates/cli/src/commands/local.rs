//! `ferry local run|invoke|query|verify` and `ferry status`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use ferry_core::Catalog;
use ferry_core::event::SqsEvent;
use ferry_local::{
    DirStore, LocalPipeline, Progress, RunOptions, SqliteWarehouse, Status, TableCheck,
};
use ferry_pipeline::Pipeline;
use serde_json::Value;

use super::load_catalog;
use crate::{EXIT_OK, EXIT_PROBLEMS, MappingsDir};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum LocalCommand {
    /// Load every object under the bucket folder not loaded yet, in file order, through the
    /// Lambda's handler; rerunning loads nothing twice.
    Run(RunArgs),
    /// Run the Lambda handler on a captured SQS event and print its SqsBatchResponse.
    Invoke(InvokeArgs),
    /// Run SQL on the local warehouse (tables are "dataset.table", quoted).
    Query(QueryArgs),
    /// Check every table against a `ferry sim` manifest; exit 1 on any difference.
    Verify(VerifyArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Stand {
    #[command(flatten)]
    mappings: MappingsDir,
    /// The folder standing for the bucket: object keys are paths below it.
    #[arg(long, value_name = "DIR")]
    bucket_dir: PathBuf,
    /// The SQLite warehouse file (created if missing).
    #[arg(long, value_name = "FILE")]
    warehouse: PathBuf,
    /// The key for the mappings' `hash` columns: a file holding it (at least 16 bytes; a
    /// trailing newline is ignored). The Lambda reads it from Secrets Manager instead
    /// (FERRY_HASH_KEY_SECRET).
    #[arg(long, value_name = "FILE", env = "FERRY_HASH_KEY_FILE")]
    hash_key_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    stand: Stand,
    /// Stop after this many objects.
    #[arg(long)]
    limit: Option<u64>,
    /// Deliveries before a failing message goes to the dead-letter queue (SQS maxReceiveCount).
    #[arg(long, default_value_t = 3)]
    max_receives: u32,
    /// One JSON object: objects, loaded_before, queued, loaded, rows, already_loaded, skipped,
    /// failures, dead_lettered.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct InvokeArgs {
    #[command(flatten)]
    stand: Stand,
    /// The SQS event JSON.
    #[arg(long, value_name = "FILE")]
    event: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    /// The SQLite warehouse file.
    #[arg(long, value_name = "FILE")]
    warehouse: PathBuf,
    /// One JSON object per row per line.
    #[arg(long)]
    json: bool,
    /// The SQL.
    sql: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The manifest `ferry sim` wrote.
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,
    /// The SQLite warehouse file.
    #[arg(long, value_name = "FILE")]
    warehouse: PathBuf,
    /// One JSON object per table and line: table, target, ok, detail.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    mappings: MappingsDir,
    /// The SQLite warehouse file (local mode). Without it, the status is read from BigQuery's
    /// `ferry_status.table_status` view (see `ferry bigquery status-views`) with the Lambda's
    /// credentials, and from the dead-letter queue.
    #[arg(long, value_name = "FILE")]
    warehouse: Option<PathBuf>,
    /// The loader's dead-letter queue (production): its depth and oldest message.
    #[arg(long, env = "FERRY_DLQ_URL", value_name = "URL")]
    dlq_url: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Only this source's tables.
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Only this table (`schema.table`).
    #[arg(long, value_name = "SCHEMA.TABLE")]
    table: Option<String>,
    #[command(flatten)]
    aws: crate::AwsArgs,
    /// Exit 1 when an enabled table's newest loaded change is older than this (`15m`, `1h`,
    /// `2d`), or it has none: for cron jobs and CI.
    #[arg(long, value_name = "DURATION", value_parser = super::parse_duration)]
    stale_after: Option<std::time::Duration>,
    /// Also write the status as one self-contained HTML page (no server, no external assets).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

/// Enabled tables whose newest loaded change is older than `limit` (or that have none).
pub(crate) fn stale(status: &Status, limit: std::time::Duration) -> Vec<&ferry_local::TableStatus> {
    status
        .tables
        .iter()
        .filter(|t| t.state == "mapped")
        .filter(|t| t.lag_seconds.is_none_or(|lag| lag > limit.as_secs_f64()))
        .collect()
}

pub(crate) fn run(
    cmd: LocalCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    match cmd {
        LocalCommand::Run(args) => {
            let Some(pipeline) = pipeline(&args.stand, err)? else {
                return Ok(EXIT_PROBLEMS);
            };
            let options = RunOptions {
                limit: args.limit,
                max_receives: args.max_receives,
                ..RunOptions::default()
            };
            let summary = run_with_progress(&pipeline, &options, err)?;
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&summary)?)?;
            } else {
                writeln!(
                    out,
                    "{} objects: {} loaded before, {} queued; loaded {} ({} rows), already loaded {}, skipped {}, failed deliveries {}, dead-lettered {}",
                    summary.objects,
                    summary.loaded_before,
                    summary.queued,
                    summary.loaded,
                    summary.rows,
                    summary.already_loaded,
                    summary.skipped,
                    summary.failures,
                    summary.dead_lettered
                )?;
            }
            if summary.dead_lettered > 0 {
                writeln!(
                    err,
                    "{} object(s) dead-lettered: see ferry dlq inspect --warehouse {}",
                    summary.dead_lettered,
                    args.stand.warehouse.display()
                )?;
                return Ok(EXIT_PROBLEMS);
            }
            Ok(EXIT_OK)
        }
        LocalCommand::Invoke(args) => {
            let Some(pipeline) = pipeline(&args.stand, err)? else {
                return Ok(EXIT_PROBLEMS);
            };
            let text = std::fs::read_to_string(&args.event)
                .with_context(|| format!("reading {}", args.event.display()))?;
            let event: SqsEvent = serde_json::from_str(&text)
                .with_context(|| format!("{} is not an SQS event", args.event.display()))?;
            let (response, dead_lettered) = ferry_local::invoke(&pipeline, &event);
            writeln!(out, "{}", serde_json::to_string(&response)?)?;
            if dead_lettered > 0 {
                writeln!(
                    err,
                    "{dead_lettered} message(s) dead-lettered: ferry status shows why"
                )?;
            }
            Ok(
                if dead_lettered > 0 || !response.batch_item_failures.is_empty() {
                    EXIT_PROBLEMS
                } else {
                    EXIT_OK
                },
            )
        }
        LocalCommand::Query(args) => {
            let warehouse = open_existing(&args.warehouse)?;
            let result = warehouse
                .query(&args.sql)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if args.json {
                for row in &result.rows {
                    let object: serde_json::Map<String, Value> = result
                        .columns
                        .iter()
                        .cloned()
                        .zip(row.iter().cloned())
                        .collect();
                    writeln!(out, "{}", Value::Object(object))?;
                }
            } else {
                let cells: Vec<Vec<String>> = result
                    .rows
                    .iter()
                    .map(|r| r.iter().map(cell).collect())
                    .collect();
                print_table(out, &result.columns, &cells)?;
            }
            Ok(EXIT_OK)
        }
        LocalCommand::Verify(args) => {
            let warehouse = open_existing(&args.warehouse)?;
            let checks = verify(&warehouse, &args.manifest)?;
            let bad: Vec<&TableCheck> = checks.iter().filter(|c| !c.ok).collect();
            if args.json {
                for c in &checks {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"table": c.table, "target": c.target, "ok": c.ok, "detail": c.detail})
                    )?;
                }
                return Ok(if bad.is_empty() {
                    EXIT_OK
                } else {
                    EXIT_PROBLEMS
                });
            }
            for c in &bad {
                writeln!(err, "{} ({}): {}", c.table, c.target, c.detail)?;
            }
            writeln!(
                out,
                "{} of {} tables match",
                checks.len() - bad.len(),
                checks.len()
            )?;
            Ok(if bad.is_empty() {
                EXIT_OK
            } else {
                EXIT_PROBLEMS
            })
        }
    }
}

pub(crate) fn status(
    args: StatusArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let Some(catalog) = load_catalog(&args.mappings, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    let now = ferry_pipeline::now_micros();
    let (mut status, warehouse, dlq_oldest, hourly) = match &args.warehouse {
        Some(path) => {
            let warehouse = open_existing(path)?;
            let status = ferry_local::status(&warehouse, &catalog, now)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            (status, Some(warehouse), None, Vec::new())
        }
        None => {
            let p = production_status(
                &catalog,
                args.dlq_url.as_deref(),
                args.html.is_some(),
                &args.aws,
                err,
            )?;
            (p.status, None, p.dlq_oldest, p.hourly)
        }
    };
    if let Some(name) = &args.source {
        usage_ensure!(
            catalog.source(name).is_some(),
            "no source {name:?} in the mappings; sources: {}",
            super::source_names(&catalog)
        );
        status.tables.retain(|s| s.source == *name);
    }
    if let Some(t) = &args.table {
        status.tables.retain(|s| s.table == *t);
        usage_ensure!(
            !status.tables.is_empty(),
            "no table {t} in the mappings or the warehouse"
        );
    }
    if args.json {
        let mut doc = serde_json::to_value(&status)?;
        if let (Some((at, reason)), Some(map)) = (&dlq_oldest, doc.as_object_mut()) {
            map.insert(
                "dead_letter_oldest".into(),
                serde_json::json!({"sent_at": iso(*at), "reason": reason}),
            );
        }
        writeln!(out, "{doc}")?;
    } else {
        print_status(out, &status)?;
        if let Some((at, reason)) = &dlq_oldest {
            writeln!(out, "oldest dead letter: {} {reason}", iso(*at))?;
        }
    }
    if let Some(path) = &args.html {
        let stale_after = args
            .stale_after
            .unwrap_or(std::time::Duration::from_secs(900));
        std::fs::write(
            path,
            super::html::page(
                &status,
                &match &warehouse {
                    Some(w) => super::html::History::Local(w),
                    None => super::html::History::Production(&hourly),
                },
                dlq_oldest.clone(),
                now,
                stale_after,
            ),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        if !args.json {
            writeln!(out, "status page: {}", path.display())?;
        }
    }
    if let Some(limit) = args.stale_after {
        let late = stale(&status, limit);
        for t in &late {
            writeln!(
                err,
                "stale: {} ({})",
                t.table,
                t.lag_seconds.map_or_else(
                    || "nothing loaded".to_owned(),
                    |l| format!("newest change {} old", human_seconds(l))
                )
            )?;
        }
        if !late.is_empty() {
            return Ok(EXIT_PROBLEMS);
        }
    }
    Ok(EXIT_OK)
}

/// What production status reads.
struct ProductionStatus {
    status: Status,
    /// The dead-letter queue's oldest message: µs, reason.
    dlq_oldest: Option<(i64, String)>,
    /// `table_status_hourly`, when asked for (the page's charts).
    hourly: Vec<ferry_bigquery::status::HourRow>,
}

/// The status in production: BigQuery's `ferry_status.table_status` (and, with `hourly`,
/// `table_status_hourly`) and the dead-letter queue.
fn production_status(
    catalog: &Catalog,
    dlq_url: Option<&str>,
    hourly: bool,
    aws: &crate::AwsArgs,
    err: &mut dyn Write,
) -> anyhow::Result<ProductionStatus> {
    let first = catalog
        .sources()
        .first()
        .context("the mappings are empty")?;
    let rt = tokio::runtime::Runtime::new()?;
    let aws = rt.block_on(aws.load());
    let client = rt
        .block_on(ferry_lambda::bigquery_client_from_env(&aws, &first.project))
        .map_err(anyhow::Error::msg)?;
    let id = format!(
        "ferry-status-{}-{}",
        std::process::id(),
        ferry_pipeline::now_micros() % 1_000_000_000
    );
    let rows = rt
        .block_on(ferry_bigquery::status::read(
            &client,
            &first.project,
            first.location.as_deref(),
            &id,
        ))
        .map_err(|e| {
            anyhow::anyhow!("{e} (create the views with: ferry bigquery status-views --apply)")
        })?;
    let mut status = status_of(&rows);
    let mut oldest = None;
    match dlq_url {
        Some(url) => {
            let sqs = ferry_aws::config::sqs(&aws);
            let summary = rt
                .block_on(ferry_aws::sqs::dlq_summary(&sqs, url))
                .map_err(anyhow::Error::msg)?;
            status.dead_letters = summary.depth;
            oldest = summary
                .oldest
                .map(|d| (d.sent_at_millis.unwrap_or(0) * 1000, d.reason));
        }
        None => writeln!(
            err,
            "dead-letter queue not read: pass --dlq-url or set FERRY_DLQ_URL"
        )?,
    }
    let hourly = if hourly {
        rt.block_on(ferry_bigquery::status::read_hourly(
            &client,
            &first.project,
            first.location.as_deref(),
            &format!("{id}-hourly"),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?
    } else {
        Vec::new()
    };
    Ok(ProductionStatus {
        status,
        dlq_oldest: oldest,
        hourly,
    })
}

/// The production rows in the local status's shape (an enabled table is `mapped`).
pub(crate) fn status_of(rows: &[ferry_bigquery::status::StatusRow]) -> Status {
    Status {
        tables: rows
            .iter()
            .map(|r| ferry_local::TableStatus {
                source: r.source.clone(),
                table: r.table.clone(),
                state: if r.state == "enabled" {
                    "mapped"
                } else {
                    "disabled"
                }
                .into(),
                last_file: r.last_job.clone(),
                last_commit_micros: r.last_commit_micros,
                lag_seconds: r.freshness_seconds,
                files_24h: r.loads_24h,
                rows_24h: r.rows_24h,
                failures_24h: r.failed_loads_24h,
                reconcile: r.reconcile.clone(),
                verified_through_micros: r.verified_through_micros,
                ..ferry_local::TableStatus::default()
            })
            .collect(),
        dead_letters: 0,
    }
}

/// The local pipeline for a bucket folder and warehouse file.
pub(crate) fn pipeline(
    stand: &Stand,
    err: &mut dyn Write,
) -> anyhow::Result<Option<LocalPipeline>> {
    let Some(mut catalog) = load_catalog(&stand.mappings, err)? else {
        return Ok(None);
    };
    if let Some(path) = &stand.hash_key_file {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let key = ferry_core::hashkey::HashKey::new(trimmed)
            .map_err(|e| crate::Usage(format!("--hash-key-file {}: {e}", path.display())))?;
        catalog = catalog.with_hash_key(key);
    }
    Ok(Some(local_pipeline(
        catalog,
        &stand.bucket_dir,
        &stand.warehouse,
    )?))
}

pub(crate) fn local_pipeline(
    catalog: Catalog,
    bucket_dir: &Path,
    warehouse: &Path,
) -> anyhow::Result<LocalPipeline> {
    usage_ensure!(
        bucket_dir.is_dir(),
        "bucket folder {} does not exist",
        bucket_dir.display()
    );
    let warehouse_db = SqliteWarehouse::open(warehouse)
        .map_err(|e| anyhow::anyhow!("{}: {e}", warehouse.display()))?;
    let work_dir = std::env::temp_dir().join(format!("ferry-work-{}", std::process::id()));
    Ok(Pipeline {
        catalog: Arc::new(catalog),
        store: DirStore::new(bucket_dir),
        warehouse: Arc::new(warehouse_db),
        work_dir,
    })
}

pub(crate) fn open_existing(path: &Path) -> anyhow::Result<SqliteWarehouse> {
    usage_ensure!(
        path.is_file(),
        "warehouse {} does not exist (ferry local run creates it)",
        path.display()
    );
    SqliteWarehouse::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub(crate) fn verify(
    warehouse: &SqliteWarehouse,
    manifest: &Path,
) -> anyhow::Result<Vec<TableCheck>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let manifest: ferry_sim::Manifest =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    ferry_local::verify(warehouse, &manifest).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs, drawing a progress bar on a terminal.
pub(crate) fn run_with_progress(
    pipeline: &LocalPipeline,
    options: &RunOptions,
    err: &mut dyn Write,
) -> anyhow::Result<ferry_local::RunSummary> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let summary = ferry_local::run(pipeline, options, |p: Progress| {
        if tty {
            let _ = write!(
                err,
                "\r{}",
                progress_line(p, started.elapsed().as_secs_f64())
            );
            let _ = err.flush();
        }
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if tty {
        writeln!(err)?;
    }
    let _ = std::fs::remove_dir_all(&pipeline.work_dir);
    Ok(summary)
}

fn progress_line(p: Progress, seconds: f64) -> String {
    let width = 30;
    let frac = if p.total == 0 {
        1.0
    } else {
        p.done as f64 / p.total as f64
    };
    let filled = (frac * width as f64) as usize;
    let eta = if p.done == 0 {
        0.0
    } else {
        seconds / p.done as f64 * (p.total - p.done.min(p.total)) as f64
    };
    format!(
        "[{}{}] {}/{} objects, {} rows, {:.0} rows/s, ETA {:.0}s ",
        "#".repeat(filled),
        "-".repeat(width - filled),
        p.done,
        p.total,
        p.rows,
        p.rows as f64 / seconds.max(1e-9),
        eta
    )
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn print_table(
    out: &mut dyn Write,
    header: &[String],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header))?;
    writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ")
    )?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}

pub(crate) fn print_status(out: &mut dyn Write, status: &Status) -> std::io::Result<()> {
    let header: Vec<String> = [
        "source",
        "table",
        "state",
        "files 24h",
        "rows 24h",
        "failures",
        "skipped",
        "warnings",
        "removed",
        "last commit (UTC)",
        "lag",
        "verified through (UTC)",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = status
        .tables
        .iter()
        .map(|t| {
            vec![
                t.source.clone(),
                t.table.clone(),
                t.state.clone(),
                t.files_24h.to_string(),
                t.rows_24h.to_string(),
                t.failures_24h.to_string(),
                t.skipped_24h.to_string(),
                t.warnings_24h.to_string(),
                t.removed_24h.to_string(),
                t.last_commit_micros.map(iso).unwrap_or_else(|| "-".into()),
                t.lag_seconds
                    .map(human_seconds)
                    .unwrap_or_else(|| "-".into()),
                match (t.reconcile.as_deref(), t.verified_through_micros) {
                    (Some("differ"), Some(v)) => format!("{} (now differs)", iso(v)),
                    (Some("differ"), None) => "differs".into(),
                    (_, Some(v)) => iso(v),
                    _ => "-".into(),
                },
            ]
        })
        .collect();
    print_table(out, &header, &rows)?;
    for t in &status.tables {
        if let Some(w) = &t.last_warning {
            let first = w.lines().next().unwrap_or_default();
            writeln!(out, "warning {}: {first}", t.table)?;
        }
    }
    writeln!(out, "dead-letter queue: {} messages", status.dead_letters)
}

pub(crate) fn iso(micros: i64) -> String {
    // `YYYY-MM-DDTHH:MM:SS.ffffff` to the second, with a space.
    ferry_sim::values::datetime_text(micros)[..19].replace('T', " ")
}

pub(crate) fn human_seconds(s: f64) -> String {
    match s {
        s if s < 120.0 => format!("{s:.0}s"),
        s if s < 7200.0 => format!("{:.0}m", s / 60.0),
        s if s < 172_800.0 => format!("{:.1}h", s / 3600.0),
        s => format!("{:.1}d", s / 86_400.0),
    }
}
