//! `ferry dlq inspect|redrive` and `ferry backfill`: the tools ops use when something went
//! wrong, over the same adapters and use cases as the Lambda.

use std::io::Write;

use std::time::Instant;

use anyhow::Context;
use ferry_core::event::s3_event_body;
use ferry_pipeline::backfill::{Selection, compact_time, run_direct, select};

use crate::{AwsArgs, EXIT_OK, EXIT_PROBLEMS, MappingsDir};

/// `ferry dlq ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DlqCommand {
    /// Lists dead-lettered messages with their reasons and object keys (they stay in the queue).
    Inspect(InspectArgs),
    /// Moves dead-lettered messages back to the loader's queue.
    Redrive(RedriveArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// The dead-letter queue's URL (production).
    #[arg(long, env = "FERRY_DLQ_URL", required_unless_present = "warehouse")]
    dlq_url: Option<String>,
    /// The local warehouse, whose `_ferry_dlq` table is local mode's dead-letter queue.
    #[arg(long, value_name = "FILE", conflicts_with = "dlq_url")]
    warehouse: Option<std::path::PathBuf>,
    /// At most this many messages.
    #[arg(long, default_value_t = 100)]
    max: usize,
    /// One JSON object per message: message_id, sent_at, receive_count, objects, reason.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    aws: AwsArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RedriveArgs {
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
    /// One JSON object: method, moved, task.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    aws: AwsArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// One dead letter as `ferry dlq inspect` shows it, from SQS or from local mode's table.
#[derive(Debug, serde::Serialize)]
struct Letter {
    message_id: String,
    /// UTC, `YYYY-MM-DD HH:MM:SS`.
    sent_at: Option<String>,
    receive_count: u32,
    objects: Vec<String>,
    reason: String,
}

fn local_letters(path: &std::path::Path, max: usize) -> anyhow::Result<Vec<Letter>> {
    let warehouse = super::local::open_existing(path)?;
    let rows = warehouse
        .query(&format!(
            "SELECT message_id, at, receive_count, body, reason FROM _ferry_dlq ORDER BY at LIMIT {max}"
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .rows;
    Ok(rows
        .iter()
        .map(|r| {
            let text = |i: usize| r[i].as_str().unwrap_or_default().to_owned();
            Letter {
                message_id: text(0),
                sent_at: r[1].as_i64().map(super::local::iso),
                receive_count: r[2]
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                objects: ferry_aws::sqs::objects_of(&text(3)),
                reason: text(4),
            }
        })
        .collect())
}

pub(crate) fn dlq(cmd: DlqCommand, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    match cmd {
        DlqCommand::Inspect(args) => {
            let letters = match (&args.warehouse, &args.dlq_url) {
                (Some(path), _) => local_letters(path, args.max)?,
                (None, url) => {
                    let url = url.as_deref().unwrap_or_default();
                    let rt = runtime()?;
                    let sqs = ferry_aws::config::sqs(&rt.block_on(args.aws.load()));
                    rt.block_on(ferry_aws::sqs::inspect(&sqs, url, args.max, 0))
                        .map_err(anyhow::Error::msg)?
                        .into_iter()
                        .map(|d| Letter {
                            message_id: d.message_id,
                            sent_at: d.sent_at_millis.map(|m| super::local::iso(m * 1000)),
                            receive_count: d.receive_count,
                            objects: d.objects,
                            reason: d.reason,
                        })
                        .collect()
                }
            };
            for d in &letters {
                if args.json {
                    writeln!(out, "{}", serde_json::to_string(d)?)?;
                } else {
                    // Keys and reasons come from whoever wrote to the bucket: escaped, so that
                    // they cannot drive the terminal.
                    let safe = ferry_core::text::escape_controls;
                    writeln!(
                        out,
                        "{}  sent {}  received {}x  {}\n    {}",
                        safe(&d.message_id),
                        d.sent_at.as_deref().unwrap_or("-"),
                        d.receive_count,
                        if d.objects.is_empty() {
                            "(no S3 object in the body)".to_owned()
                        } else {
                            safe(&d.objects.join(" "))
                        },
                        safe(&d.reason)
                    )?;
                }
            }
            writeln!(err, "{} message(s) in the dead-letter queue", letters.len())?;
            Ok(EXIT_OK)
        }
        DlqCommand::Redrive(args) => {
            let rt = runtime()?;
            let sqs = ferry_aws::config::sqs(&rt.block_on(args.aws.load()));
            let r = rt
                .block_on(ferry_aws::sqs::redrive(
                    &sqs,
                    &args.dlq_url,
                    &args.queue_url,
                    args.max,
                    !args.copy,
                ))
                .map_err(anyhow::Error::msg)?;
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"method": r.method, "moved": r.moved, "task": r.task})
                )?;
                return Ok(EXIT_OK);
            }
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
    /// One JSON object per line: each object with --dry-run, else the summary (loaded,
    /// already_loaded, failed, rows, seconds, failures).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    aws: AwsArgs,
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
        usage_bail!(
            "no source {:?} in {}; sources: {}",
            args.source,
            args.mappings.dir.display(),
            super::source_names(&catalog)
        );
    };
    if let Some(t) = &args.table
        && !source.tables.iter().any(|m| m.source_table() == *t)
    {
        usage_bail!("source {} maps no table {t}", source.name);
    }
    if !args.dry_run && args.direct == args.enqueue {
        usage_bail!(
            "say how to replay: --direct (load here) or --enqueue (send to the loader's queue)"
        );
    }
    let selection = Selection {
        table: args.table.clone(),
        since: args
            .since
            .as_deref()
            .map(compact_time)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        until: args
            .until
            .as_deref()
            .map(compact_time)
            .transpose()
            .map_err(anyhow::Error::msg)?,
    };
    let rt = runtime()?;
    let config = rt.block_on(args.aws.load());
    let store = ferry_aws::S3Store::new(ferry_aws::config::s3(&config), rt.handle().clone());
    let objects =
        select(&catalog, &store, source, &selection).map_err(|e| anyhow::anyhow!(e.message))?;
    let bytes: u64 = objects.iter().map(|(_, m)| m.size).sum();
    writeln!(
        err,
        "{} object(s), {bytes} bytes in s3://{}/{}",
        objects.len(),
        source.bucket,
        source.prefix()
    )?;
    if args.dry_run {
        for (_, m) in &objects {
            let url = format!("s3://{}/{}", source.bucket, m.key);
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"object": url, "bytes": m.size})
                )?;
            } else {
                writeln!(out, "{url}")?;
            }
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
        if args.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"enqueued": sent, "queue": queue})
            )?;
        } else {
            writeln!(out, "enqueued {sent} object(s) to {queue}")?;
        }
        return Ok(EXIT_OK);
    }
    // --direct: the Lambda's pipeline, in this process.
    let client = rt
        .block_on(ferry_lambda::bigquery_client_from_env(
            &config,
            &source.project,
        ))
        .map_err(anyhow::Error::msg)?;
    let pipeline = ferry_pipeline::Pipeline {
        catalog: std::sync::Arc::new(catalog.clone()),
        store,
        warehouse: ferry_bigquery::BigQueryWarehouse::new(
            client,
            rt.handle().clone(),
            Default::default(),
        ),
        work_dir: std::env::temp_dir().join("ferry-backfill"),
    };
    let started = Instant::now();
    let mut reported = 0;
    let summary = run_direct(&pipeline, source, &objects, &mut |s| {
        for reason in &s.failures[reported..] {
            let _ = writeln!(err, "\nfailed: {reason}");
        }
        reported = s.failures.len();
        let elapsed = started.elapsed().as_secs_f64();
        let eta = if s.bytes_done > 0 {
            elapsed * s.bytes_total.saturating_sub(s.bytes_done) as f64 / s.bytes_done as f64
        } else {
            0.0
        };
        let _ = write!(
            err,
            "\r[{}/{}] {} loaded, {} already loaded, {} failed, {} rows, ETA {eta:.0}s   ",
            s.done, s.total, s.loaded, s.already_loaded, s.failed, s.rows
        );
    });
    writeln!(err)?;
    for reason in &summary.failures[reported.min(summary.failures.len())..] {
        writeln!(err, "failed: {reason}")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"source": source.name, "loaded": summary.loaded,
                "already_loaded": summary.already_loaded, "failed": summary.failed,
                "rows": summary.rows, "seconds": seconds, "failures": summary.failures})
        )?;
    } else {
        writeln!(
            out,
            "backfill {}: {} loaded, {} already loaded, {} failed, {} rows in {seconds:.1}s",
            source.name, summary.loaded, summary.already_loaded, summary.failed, summary.rows,
        )?;
    }
    Ok(if summary.failed > 0 {
        EXIT_PROBLEMS
    } else {
        EXIT_OK
    })
}
