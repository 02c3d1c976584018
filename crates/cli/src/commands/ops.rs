//! `ferry dlq inspect|redrive` and `ferry backfill`: the tools ops use when something went
//! wrong, over the same adapters and use cases as the Lambda.

use std::io::Write;

use std::time::Instant;

use anyhow::{Context, bail};
use ferry_core::event::s3_event_body;
use ferry_pipeline::backfill::{Selection, compact_time, run_direct, select};

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
                    // Keys and reasons come from whoever wrote to the bucket: escaped, so that
                    // they cannot drive the terminal.
                    let safe = ferry_core::text::escape_controls;
                    writeln!(
                        out,
                        "{}  received {}x  {}\n    {}",
                        safe(&d.message_id),
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
            super::source_names(&catalog)
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
    let config = rt.block_on(ferry_aws::config::load());
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
    writeln!(
        out,
        "backfill {}: {} loaded, {} already loaded, {} failed, {} rows in {:.1}s",
        source.name,
        summary.loaded,
        summary.already_loaded,
        summary.failed,
        summary.rows,
        started.elapsed().as_secs_f64()
    )?;
    Ok(if summary.failed > 0 {
        EXIT_PROBLEMS
    } else {
        EXIT_OK
    })
}
