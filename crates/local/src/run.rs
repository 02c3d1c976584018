//! `ferry local run` and `ferry local invoke`: the Lambda's handler over the local stand-ins.

use std::collections::BTreeSet;
use std::sync::Arc;

use ferry_core::event::{SqsBatchResponse, SqsEvent, s3_event_body};
use ferry_core::key::DmsObject;
use ferry_core::{JobId, plan_object};
use ferry_pipeline::{
    HandlerOptions, ObjectResult, ObjectStore, Pipeline, PortError, Warehouse, handle_batch,
};

use crate::queue::LocalQueue;
use crate::store::DirStore;
use crate::warehouse::SqliteWarehouse;

/// The local pipeline: a directory bucket and the SQLite warehouse.
pub type LocalPipeline = Pipeline<DirStore, Arc<SqliteWarehouse>>;

/// Settings of a local run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop after this many objects have been processed (to try things, or to test resuming).
    pub limit: Option<u64>,
    /// Deliveries before a failing message goes to the dead-letter queue.
    pub max_receives: u32,
    /// Tables processed in parallel.
    pub max_parallel: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            limit: None,
            max_receives: 3,
            max_parallel: 2,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    /// Objects under the folder.
    pub objects: u64,
    /// Objects loaded by an earlier run (not sent again).
    pub loaded_before: u64,
    /// Objects sent through the queue.
    pub queued: u64,
    /// Objects loaded now.
    pub loaded: u64,
    /// Objects whose version a job had loaded (a repeated event).
    pub already_loaded: u64,
    /// Objects skipped by design (not DMS data, unmapped, disabled).
    pub skipped: u64,
    /// Failed deliveries (retried, or dead-lettered).
    pub failures: u64,
    /// Messages in the dead-letter queue now.
    pub dead_lettered: u64,
    /// Rows loaded now.
    pub rows: u64,
}

/// Progress, after each batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Objects processed so far.
    pub done: u64,
    /// Objects queued.
    pub total: u64,
    /// Rows loaded so far.
    pub rows: u64,
}

/// Processes every object under the bucket folder not loaded yet, in file order, through the
/// Lambda's handler, with SQS's retry and dead-letter semantics.
pub fn run(
    pipeline: &LocalPipeline,
    options: &RunOptions,
    mut progress: impl FnMut(Progress),
) -> Result<RunSummary, PortError> {
    let mut summary = RunSummary::default();
    let default_bucket = pipeline
        .catalog
        .sources()
        .first()
        .map_or_else(|| "local".to_owned(), |s| s.bucket.clone());
    let mut todo: Vec<(String, Option<DmsObject>, String, u64, String)> = Vec::new();
    for meta in pipeline.store.list(&default_bucket, "")? {
        summary.objects += 1;
        let plan = plan_object(&pipeline.catalog, None, &meta.key, None);
        let bucket = plan
            .bucket
            .clone()
            .unwrap_or_else(|| default_bucket.clone());
        let group = match (&plan.source, &plan.object) {
            (Some(s), Some(o)) => format!("{}/{}", s.name, o.source_table()),
            _ => String::new(),
        };
        let done = match (&plan.skip, plan.table, &plan.object) {
            (None, Some(table), Some(object)) => {
                let base =
                    JobId::for_object(&bucket, object, Some(&meta.etag), &table.changelog, 0);
                pipeline.warehouse.is_loaded(base.base())?
            }
            _ => pipeline.warehouse.was_skipped(&meta.key)?,
        };
        if done {
            summary.loaded_before += 1;
            continue;
        }
        todo.push((group, plan.object, bucket, meta.size, meta.key));
    }
    // Table by table, each in apply order.
    todo.sort_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| match (&a.1, &b.1) {
            (Some(x), Some(y)) => x.apply_order(y),
            _ => a.4.cmp(&b.4),
        })
    });
    summary.queued = todo.len() as u64;
    // Replicas catch up every APPLY_EVERY batches and at the end, not after every batch: a hot
    // key changed in many files is then written to its replica once per round, not per file.
    let handler_options = HandlerOptions {
        max_parallel: options.max_parallel,
        apply_replicas: false,
        ..HandlerOptions::default()
    };
    let touched: std::cell::RefCell<BTreeSet<(String, String)>> =
        std::cell::RefCell::new(BTreeSet::new());
    let batches = std::cell::Cell::new(0u64);
    let processed = std::cell::Cell::new(0u64);
    let limit = options.limit;
    let total = summary.queued;
    let dead = Arc::clone(&pipeline.warehouse);
    // Messages are queued a chunk at a time, so memory does not grow with the number of objects.
    for chunk in todo.chunks(QUEUE_CHUNK) {
        if limit.is_some_and(|l| processed.get() >= l) {
            break;
        }
        let mut queue = LocalQueue::new(options.max_receives);
        // With a limit, only as many as are left are queued: the limit is exact, not rounded
        // up to a batch.
        let left = limit.map_or(usize::MAX, |l| {
            usize::try_from(l.saturating_sub(processed.get())).unwrap_or(usize::MAX)
        });
        for (_, _, bucket, size, key) in chunk.iter().take(left) {
            queue.send(s3_event_body(
                bucket,
                key,
                *size,
                "",
                "1970-01-01T00:00:00.000Z",
            ));
        }
        let drained = queue.drain(
            dead.as_ref(),
            || limit.is_some_and(|l| processed.get() >= l),
            |event| {
                let report = handle_batch(pipeline, dead.as_ref(), event, handler_options);
                for (_, _, result) in &report.objects {
                    match result {
                        ObjectResult::Loaded {
                            rows,
                            source,
                            table,
                            ..
                        } => {
                            summary.loaded += 1;
                            summary.rows += rows;
                            touched.borrow_mut().insert((source.clone(), table.clone()));
                        }
                        ObjectResult::AlreadyLoaded { .. } => summary.already_loaded += 1,
                        ObjectResult::Skipped { .. } => summary.skipped += 1,
                        ObjectResult::Failed { .. } | ObjectResult::Deferred { .. } => {
                            summary.failures += 1
                        }
                    }
                }
                summary.dead_lettered += report.dead_lettered.len() as u64;
                processed.set(
                    processed.get() + event.records.len() as u64
                        - report.response.batch_item_failures.len() as u64,
                );
                progress(Progress {
                    done: processed.get(),
                    total,
                    rows: summary.rows,
                });
                batches.set(batches.get() + 1);
                if batches.get().is_multiple_of(APPLY_EVERY) {
                    apply_touched(pipeline, &mut touched.borrow_mut());
                }
                report
            },
        );
        // Every replica catches up at the end, also those whose rows an interrupted earlier run
        // loaded but did not apply (applying is idempotent and cheap when nothing is new).
        let mut all: BTreeSet<(String, String)> = pipeline
            .catalog
            .sources()
            .iter()
            .flat_map(|s| {
                s.tables
                    .iter()
                    .filter(|t| t.replica.is_some())
                    .map(|t| (s.name.clone(), t.source_table()))
            })
            .collect();
        if !apply_touched(pipeline, &mut all) {
            summary.failures += 1;
        }
        summary.dead_lettered += drained.dead_lettered;
    }
    Ok(summary)
}

/// Objects queued at a time in a local run.
const QUEUE_CHUNK: usize = 1_000;

/// Batches between replica catch-ups in a local run.
const APPLY_EVERY: u64 = 200;

/// Applies the change logs of the tables loaded since the last call to their replicas; false
/// when one failed (it is tried again at the next call: applying is idempotent).
fn apply_touched(pipeline: &LocalPipeline, touched: &mut BTreeSet<(String, String)>) -> bool {
    let mut ok = true;
    for (source, table) in std::mem::take(touched) {
        let mapping = pipeline
            .catalog
            .source(&source)
            .and_then(|s| s.tables.iter().find(|t| t.source_table() == table));
        if let Some(mapping) = mapping
            && let Err(e) = pipeline.warehouse.apply(mapping)
        {
            tracing::error!(table = %table, error = %e, "replica not applied");
            touched.insert((source, table));
            ok = false;
        }
    }
    ok
}

/// Runs the handler on one captured SQS event; returns its response and the number of
/// messages it dead-lettered.
pub fn invoke(pipeline: &LocalPipeline, event: &SqsEvent) -> (SqsBatchResponse, usize) {
    let options = HandlerOptions {
        max_parallel: 2,
        ..HandlerOptions::default()
    };
    let report = handle_batch(pipeline, pipeline.warehouse.as_ref(), event, options);
    (report.response, report.dead_lettered.len())
}
