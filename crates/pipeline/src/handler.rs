//! The loader's handler: an SQS batch of S3 notifications in, the partial-batch response out.
//!
//! Each message is parsed on its own. Objects of one table are processed in apply order; tables
//! run in parallel, at most `max_parallel` at a time. A retryable failure leaves the message for
//! SQS to deliver again (and, after `maxReceiveCount`, to move to the dead-letter queue); a
//! permanent one sends it to the dead-letter queue at once with its reason. Near the deadline no
//! new object is started.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_core::event::{SqsBatchResponse, SqsEvent, SqsMessage, parse_body};
use ferry_core::key::{self, DmsObject, FileKind};
use ferry_core::mapping::OnTruncate;
use ferry_core::plan_object;

use crate::ports::{DeadLetters, ObjectStore, Warehouse};
use crate::process::{ObjectResult, Pipeline};

/// Handler settings.
#[derive(Debug, Clone, Copy)]
pub struct HandlerOptions {
    /// Tables processed at the same time.
    pub max_parallel: usize,
    /// When the invocation must have answered; `None` for no limit.
    pub deadline: Option<Instant>,
    /// No object is started with less time than this left.
    pub safety_margin: Duration,
    /// Bring replicas up to date at the end of the batch (else the caller applies on its own
    /// schedule, as local mode does once per run).
    pub apply_replicas: bool,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            max_parallel: 4,
            deadline: None,
            safety_margin: Duration::from_secs(20),
            apply_replicas: true,
        }
    }
}

/// What happened to a batch, message by message.
#[derive(Debug, Default)]
pub struct BatchReport {
    /// The response for SQS.
    pub response: SqsBatchResponse,
    /// Every object's result, with its message id and key.
    pub objects: Vec<(String, String, ObjectResult)>,
    /// Messages sent to the dead-letter queue, with the reason.
    pub dead_lettered: Vec<(String, String)>,
    /// Objects of mapped tables that were removed from the bucket: (`schema.table`, key).
    pub removed: Vec<(String, String)>,
}

/// A message's fate so far.
#[derive(Debug, Default)]
struct MessageState {
    retry: Vec<String>,
    permanent: Vec<String>,
}

/// One object to process, with its place in the batch.
struct Task {
    message: usize,
    bucket: String,
    key: String,
    order: Option<DmsObject>,
}

/// Handles one SQS batch.
pub fn handle_batch<S, W>(
    pipeline: &Pipeline<S, W>,
    dead_letters: &dyn DeadLetters,
    event: &SqsEvent,
    options: HandlerOptions,
) -> BatchReport
where
    S: ObjectStore,
    W: Warehouse,
{
    pipeline.warehouse.set_deadline(options.deadline);
    // (message index, bucket, key, event time).
    let mut removed_objects: Vec<(usize, String, String, Option<String>)> = Vec::new();
    let mut states: Vec<MessageState> = event
        .records
        .iter()
        .map(|_| MessageState::default())
        .collect();
    let mut groups: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for (i, message) in event.records.iter().enumerate() {
        match parse_body(&message.body) {
            Ok(notification) => {
                for ignored in &notification.ignored {
                    tracing::info!(message_id = %message.message_id, reason = %ignored, "record ignored");
                }
                for gone in &notification.removed {
                    removed_objects.push((
                        i,
                        gone.bucket.clone(),
                        gone.key.clone(),
                        gone.event_time.clone(),
                    ));
                }
                for object in notification.objects {
                    let plan =
                        plan_object(&pipeline.catalog, Some(&object.bucket), &object.key, None);
                    let group = match (&plan.source, &plan.object) {
                        (Some(s), Some(o)) => format!("{}/{}", s.name, o.source_table()),
                        _ => String::new(),
                    };
                    groups.entry(group).or_default().push(Task {
                        message: i,
                        bucket: object.bucket,
                        key: object.key,
                        order: plan.object,
                    });
                }
            }
            Err(e) => states[i]
                .permanent
                .push(format!("message {}: {e}", message.message_id)),
        }
    }

    // Each table's objects in apply order; tables in parallel.
    let mut work: Vec<Vec<Task>> = groups.into_values().collect();
    for tasks in &mut work {
        tasks.sort_by(|a, b| match (&a.order, &b.order) {
            (Some(x), Some(y)) => x.apply_order(y),
            _ => a.key.cmp(&b.key),
        });
    }
    let results: Mutex<Vec<(usize, String, ObjectResult)>> = Mutex::new(Vec::new());
    let queue = Mutex::new(work);
    let threads = options.max_parallel.max(1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                    let Some(tasks) = next else { break };
                    let mut loaded_tables = BTreeSet::new();
                    let mut group_results = Vec::new();
                    // Objects not started near the deadline fail (retryable); a table's
                    // objects are processed together, in apply order.
                    let late = || {
                        options
                            .deadline
                            .is_some_and(|d| Instant::now() + options.safety_margin >= d)
                    };
                    let started = tasks;
                    // One bucket per call (tasks without a parsed key may come from several).
                    let mut rest = started.as_slice();
                    while let Some(first) = rest.first() {
                        let n = if first.order.is_some() {
                            rest.iter().take_while(|t| t.bucket == first.bucket && t.order.is_some()).count()
                        } else {
                            1
                        };
                        let (run, tail) = rest.split_at(n);
                        rest = tail;
                        let keys: Vec<String> = run.iter().map(|t| t.key.clone()).collect();
                        let results = pipeline.process_objects_until(&first.bucket, &keys, &late);
                        for (task, result) in run.iter().zip(results) {
                            if let ObjectResult::Loaded { table, source, .. }
                            | ObjectResult::AlreadyLoaded { table, source, .. } = &result
                            {
                                // Already-loaded objects apply too: an earlier delivery may
                                // have loaded them and then failed to apply.
                                loaded_tables.insert((source.clone(), table.clone()));
                            }
                            group_results.push((task.message, task.key.clone(), result));
                        }
                    }
                    // The replica catches up once per table per batch.
                    if !options.apply_replicas {
                        loaded_tables.clear();
                    }
                    for (source, table) in &loaded_tables {
                        if let Some(mapping) = pipeline.catalog.source(source).and_then(|s| s.tables.iter().find(|t| t.source_table() == *table))
                            && mapping.replica.is_some()
                            && let Err(e) = pipeline.warehouse.apply(mapping)
                        {
                            for (_, key, result) in &mut group_results {
                                if matches!(result, ObjectResult::Loaded { .. } | ObjectResult::AlreadyLoaded { .. }) {
                                    *result = ObjectResult::Failed {
                                        reason: format!("{key}: loaded, but applying {table} to its replica failed: {}", e.message),
                                        retryable: true,
                                    };
                                }
                            }
                        }
                    }
                    if let Ok(mut all) = results.lock() {
                        all.extend(group_results);
                    }
                }
            });
        }
    });

    let mut report = BatchReport::default();
    // Removed objects of mapped tables: a removal under a mapped folder is how a DMS truncate
    // (or a reload that drops the folder) shows. It is recorded and counted; a full-load file
    // removed from a table with `on_truncate: empty` empties its replica as of the removal.
    for (i, bucket, key, event_time) in removed_objects {
        let message_id = &event.records[i].message_id;
        let plan = plan_object(&pipeline.catalog, Some(&bucket), &key, None);
        let (Some(source), Some(table), Some(object)) = (plan.source, plan.table, plan.object)
        else {
            continue;
        };
        let empties = table.on_truncate == OnTruncate::Empty
            && table.replica.is_some()
            && table.enabled
            && object.kind() == FileKind::FullLoad;
        let at = event_time
            .as_deref()
            .and_then(ferry_convert::timefmt::event_time_micros)
            .unwrap_or_else(crate::process::now_micros);
        let message = if empties {
            match pipeline
                .warehouse
                .empty_replica(source, table, &key::removal_run_seq(at))
            {
                Ok(()) => {
                    tracing::warn!(
                        message_id = %message_id, bucket = %bucket, key = %key, table = %table.source_table(),
                        "full-load file removed (a source TRUNCATE); the replica was emptied as of the removal (on_truncate: empty)"
                    );
                    "removed from the bucket; the replica was emptied as of the removal (on_truncate: empty)"
                }
                Err(e) => {
                    states[i].retry.push(format!(
                        "s3://{bucket}/{key}: removed; emptying the replica of {} failed: {}",
                        table.source_table(),
                        e.message
                    ));
                    continue;
                }
            }
        } else {
            tracing::warn!(
                message_id = %message_id, bucket = %bucket, key = %key, table = %table.source_table(),
                "object removed from a mapped table's folder (a DMS truncate or reload?); the replica is unchanged"
            );
            "removed from the bucket; nothing was changed in the warehouse"
        };
        let event = crate::ports::StatusEvent {
            at_micros: crate::process::now_micros(),
            kind: "removed".into(),
            source: Some(source.name.clone()),
            table: Some(table.source_table()),
            bucket,
            key: key.clone(),
            code: Some(
                if empties {
                    "replica_emptied"
                } else {
                    "object_removed"
                }
                .into(),
            ),
            job_id: None,
            rows: 0,
            bytes: 0,
            commit_ts_max: None,
            message: Some(message.into()),
            warnings: Vec::new(),
        };
        if let Err(e) = pipeline.warehouse.record(&event) {
            tracing::warn!(error = %e.message, "could not record the removal");
        }
        report.removed.push((table.source_table(), key));
    }
    for (message, key, result) in results.into_inner().unwrap_or_default() {
        match &result {
            ObjectResult::Failed {
                reason,
                retryable: true,
            } => states[message].retry.push(reason.clone()),
            ObjectResult::Failed {
                reason,
                retryable: false,
            } => states[message].permanent.push(reason.clone()),
            _ => {}
        }
        report
            .objects
            .push((event.records[message].message_id.clone(), key, result));
    }
    for (message, state) in event.records.iter().zip(&states) {
        settle(message, state, dead_letters, &mut report);
    }
    report
}

/// Acknowledges, retries or dead-letters one message.
fn settle(
    message: &SqsMessage,
    state: &MessageState,
    dead_letters: &dyn DeadLetters,
    report: &mut BatchReport,
) {
    if !state.retry.is_empty() {
        // Something may still succeed: SQS delivers the whole message again (loaded objects are
        // recognised by their job ids then).
        tracing::warn!(message_id = %message.message_id, reasons = ?state.retry, "retryable failure");
        report.response.add_failure(&message.message_id);
        return;
    }
    if state.permanent.is_empty() {
        return;
    }
    let reason = state.permanent.join("; ");
    match dead_letters.send(message, &reason) {
        Ok(()) => {
            tracing::error!(message_id = %message.message_id, reason = %reason, "sent to the dead-letter queue");
            report
                .dead_lettered
                .push((message.message_id.clone(), reason));
        }
        Err(e) => {
            // Never acknowledge what could not be kept: SQS delivers it again.
            tracing::error!(message_id = %message.message_id, error = %e, "dead-letter queue unavailable");
            report.response.add_failure(&message.message_id);
        }
    }
}
