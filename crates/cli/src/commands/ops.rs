//! `ferry dlq inspect|redrive` and `ferry backfill`: the tools ops use when something went
//! wrong, over the same adapters and use cases as the Lambda.

use std::io::Write;

use std::time::Instant;

use anyhow::{Context, bail};
use ferry_core::event::s3_event_body;
use ferry_core::{DmsFile, plan_object};
use ferry_pipeline::{ObjectResult, ObjectStore, Warehouse};

use crate::{EXIT_OK, EXIT_PROBLEMS, MappingsDir};

/// `ferry dlq ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DlqCommand {
    /// Lists dead-lettered messages with their reasons and object keys (they stay in the queue).
    Inspect {
        /// The dead-letter queue's URL.
        #[arg(long, env = "FERRY_DLQ_URL")]
        dlq_url: String,
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        max: usize,
        /// One JSON object per message.
        #[arg(long)]
        json: bool,
    },
    /// Moves dead-lettered messages back to the loader's queue.
    Redrive {
        /// The dead-letter queue's URL.
        #[arg(long, env = "FERRY_DLQ_URL")]
        dlq_url: String,
        /// The loader's queue URL.
        #[arg(long, env = "FERRY_QUEUE_URL")]
        queue_url: String,
        /// At most this many messages (always uses the copy path).
        #[arg(long)]
        max: Option<usize>,
        /// Skip SQS's StartMessageMoveTask and copy (receive, send, delete).
        #[arg(long)]
        copy: bool,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub(crate) fn dlq(cmd: DlqCommand, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let rt = runtime()?;
    let config = rt.block_on(ferry_aws::config::load());
    let sqs = ferry_aws::config::sqs(&config);
    match cmd {
        DlqCommand::Inspect { dlq_url, max, json } => {
            let letters = rt
                .block_on(ferry_aws::sqs::inspect(&sqs, &dlq_url, max, 0))
                .map_err(anyhow::Error::msg)?;
            for d in &letters {
                if json {
                    writeln!(out, "{}", serde_json::to_string(d)?)?;
                } else {
                    writeln!(
                        out,
                        "{}  received {}x  {}\n    {}",
                        d.message_id,
                        d.receive_count,
                        if d.objects.is_empty() {
                            "(no S3 object in the body)".to_owned()
                        } else {
                            d.objects.join(" ")
                        },
                        d.reason
                    )?;
                }
            }
            writeln!(err, "{} message(s) in the dead-letter queue", letters.len())?;
            Ok(EXIT_OK)
        }
        DlqCommand::Redrive {
            dlq_url,
            queue_url,
            max,
            copy,
        } => {
            let r = rt
                .block_on(ferry_aws::sqs::redrive(
                    &sqs, &dlq_url, &queue_url, max, !copy,
                ))
                .map_err(anyhow::Error::msg)?;
            match r.method.as_str() {
                "native" => writeln!(
                    out,
                    "redrive started with StartMessageMoveTask (task {})",
                    r.task.unwrap_or_default()
                )?,
                _ => writeln!(
                    out,
                    "redrove {} message(s) (receive, send, delete)",
                    r.moved
                )?,
            }
            Ok(EXIT_OK)
        }
    }
}

/// `ferry backfill`.
#[derive(Debug, clap::Args)]
pub(crate) struct BackfillArgs {
    #[command(flatten)]
    mappings: MappingsDir,
    /// The source (mapping file name).
    #[arg(long)]
    source: String,
    /// Only this table (`schema.table`).
    #[arg(long)]
    table: Option<String>,
    /// CDC files from this time on (`2026-11-26`, `2026-11-26T09:30`, ...; UTC). Without it,
    /// full-load files are included.
    #[arg(long)]
    since: Option<String>,
    /// CDC files before this time.
    #[arg(long)]
    until: Option<String>,
    /// Load through this process (same code path as the Lambda).
    #[arg(long, conflicts_with = "enqueue")]
    direct: bool,
    /// Send S3-shaped events to the loader's queue.
    #[arg(long)]
    enqueue: bool,
    /// The loader's queue URL (with --enqueue).
    #[arg(long, env = "FERRY_QUEUE_URL")]
    queue_url: Option<String>,
    /// List what would be replayed, and stop.
    #[arg(long)]
    dry_run: bool,
}

/// `2026-11-26T09:30` -> `20261126T093000000000000`, comparable with `CdcTimestamp::compact(9)`.
fn compact_time(s: &str) -> anyhow::Result<String> {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 8 || digits.len() > 23 {
        bail!("{s:?} is not a time: use 2026-11-26, 2026-11-26T09:30 or 2026-11-26T09:30:00 (UTC)");
    }
    let padded = format!("{digits:0<23}");
    Ok(format!("{}T{}", &padded[..8], &padded[8..]))
}

pub(crate) fn backfill(
    args: BackfillArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let Some(catalog) = super::load_catalog(&args.mappings, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    let Some(source) = catalog.source(&args.source) else {
        bail!(
            "no source {:?} in {}; sources: {}",
            args.source,
            args.mappings.dir.display(),
            catalog
                .sources()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    if let Some(t) = &args.table
        && !source.tables.iter().any(|m| m.source_table() == *t)
    {
        bail!("source {} maps no table {t}", source.name);
    }
    if !args.dry_run && args.direct == args.enqueue {
        bail!("say how to replay: --direct (load here) or --enqueue (send to the loader's queue)");
    }
    let since = args.since.as_deref().map(compact_time).transpose()?;
    let until = args.until.as_deref().map(compact_time).transpose()?;
    let rt = runtime()?;
    let config = rt.block_on(ferry_aws::config::load());
    let store = ferry_aws::S3Store::new(ferry_aws::config::s3(&config), rt.handle().clone());
    let prefix = match &args.table {
        Some(t) => format!("{}{}/", source.prefix(), t.replace('.', "/")),
        None => source.prefix(),
    };
    let listed = store
        .list(&source.bucket, &prefix)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let mut objects = Vec::new();
    for meta in listed {
        let plan = plan_object(&catalog, Some(&source.bucket), &meta.key, Some(&meta.etag));
        let (Some(object), Some(table)) = (plan.object, plan.table) else {
            continue;
        };
        if args
            .table
            .as_ref()
            .is_some_and(|t| *t != table.source_table())
            || plan.skip.is_some()
        {
            continue;
        }
        let keep = match &object.file {
            DmsFile::FullLoad { .. } => since.is_none(),
            DmsFile::Cdc { timestamp, .. } => {
                let t = timestamp.compact(9);
                since.as_ref().is_none_or(|s| t >= *s) && until.as_ref().is_none_or(|u| t < *u)
            }
        };
        if keep {
            objects.push((object, meta));
        }
    }
    objects.sort_by(|a, b| a.0.apply_order(&b.0));
    let bytes: u64 = objects.iter().map(|(_, m)| m.size).sum();
    writeln!(
        err,
        "{} object(s), {} bytes under s3://{}/{prefix}",
        objects.len(),
        bytes,
        source.bucket
    )?;
    if args.dry_run {
        for (_, m) in &objects {
            writeln!(out, "s3://{}/{}", source.bucket, m.key)?;
        }
        return Ok(EXIT_OK);
    }
    if args.enqueue {
        let queue = args
            .queue_url
            .context("--enqueue needs --queue-url (or FERRY_QUEUE_URL)")?;
        let bodies: Vec<String> = objects
            .iter()
            .map(|(_, m)| {
                s3_event_body(
                    &source.bucket,
                    &m.key,
                    m.size,
                    &m.etag,
                    "1970-01-01T00:00:00.000Z",
                )
            })
            .collect();
        let sqs = ferry_aws::config::sqs(&config);
        let sent = rt
            .block_on(ferry_aws::sqs::enqueue(&sqs, &queue, &bodies))
            .map_err(anyhow::Error::msg)?;
        writeln!(out, "enqueued {sent} object(s) to {queue}")?;
        return Ok(EXIT_OK);
    }
    // --direct: the Lambda's pipeline, in this process.
    let auth = rt
        .block_on(ferry_lambda::auth_from_env(&config))
        .map_err(anyhow::Error::msg)?;
    let mut bq = ferry_bigquery::ClientConfig::default();
    if let Ok(url) = std::env::var("FERRY_BQ_BASE_URL") {
        bq.base_url = url;
    }
    let client =
        ferry_bigquery::Client::new(bq, auth, &source.project).map_err(|e| anyhow::anyhow!(e))?;
    let warehouse =
        ferry_bigquery::BigQueryWarehouse::new(client, rt.handle().clone(), Default::default());
    let pipeline = ferry_pipeline::Pipeline {
        catalog: std::sync::Arc::new(catalog.clone()),
        store,
        warehouse,
        work_dir: std::env::temp_dir().join("ferry-backfill"),
    };
    let started = Instant::now();
    let (mut loaded, mut already, mut failed, mut rows, mut done_bytes) = (0, 0, 0, 0u64, 0u64);
    let mut tables = std::collections::BTreeSet::new();
    for (i, (object, meta)) in objects.iter().enumerate() {
        match pipeline.process_object(&source.bucket, &meta.key) {
            ObjectResult::Loaded { rows: r, .. } => {
                loaded += 1;
                rows += r;
                tables.insert(object.source_table());
            }
            ObjectResult::AlreadyLoaded { .. } => {
                already += 1;
                tables.insert(object.source_table());
            }
            ObjectResult::Skipped { .. } => {}
            ObjectResult::Failed { reason, .. } => {
                failed += 1;
                writeln!(err, "failed: {reason}")?;
            }
        }
        done_bytes += meta.size;
        let elapsed = started.elapsed().as_secs_f64();
        let eta = if done_bytes > 0 {
            elapsed * (bytes.saturating_sub(done_bytes)) as f64 / done_bytes as f64
        } else {
            0.0
        };
        write!(
            err,
            "\r[{}/{}] {loaded} loaded, {already} already loaded, {failed} failed, {rows} rows, ETA {eta:.0}s   ",
            i + 1,
            objects.len()
        )?;
    }
    writeln!(err)?;
    for t in &tables {
        if let Some(m) = source.tables.iter().find(|m| m.source_table() == *t)
            && m.replica.is_some()
            && let Err(e) = pipeline.warehouse.apply(m)
        {
            failed += 1;
            writeln!(err, "applying {t} to its replica failed: {}", e.message)?;
        }
    }
    writeln!(
        out,
        "backfill {}: {loaded} loaded, {already} already loaded, {failed} failed, {rows} rows in {:.1}s",
        source.name,
        started.elapsed().as_secs_f64()
    )?;
    Ok(if failed > 0 { EXIT_PROBLEMS } else { EXIT_OK })
}

#[cfg(test)]
mod tests {
    use super::compact_time;

    #[test]
    fn times_compare_with_file_timestamps() {
        assert_eq!(
            compact_time("2026-11-26").unwrap(),
            "20261126T000000000000000"
        );
        assert_eq!(
            compact_time("2026-11-26T09:30").unwrap(),
            "20261126T093000000000000"
        );
        assert!(compact_time("yesterday").is_err());
    }
}
