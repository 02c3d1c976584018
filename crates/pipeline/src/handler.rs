//! The loader's handler: an SQS batch of S3 notifications in, the partial-batch response out.
//!
//! Each message is parsed on its own. Objects of one table are processed in apply order; tables
//! run in parallel, at most `max_parallel` at a time. A retryable failure leaves the message for
//! SQS to deliver again (and, after `maxReceiveCount`, to move to the dead-letter queue); a
//! permanent one sends it to the dead-letter queue at once with its reason. Near the deadline no
//! new object is started.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_core::event::{
    ApplyMarker, Deferral, ObjectEvent, SqsBatchResponse, SqsEvent, SqsMessage, apply_body,
    deferred_body, parse_body,
};
use ferry_core::key::{self, DmsObject, FileKind};
use ferry_core::mapping::{OnTruncate, Source, TableMapping};
use ferry_core::plan_object;
use ferry_core::sql::ApplyWindow;

use crate::ports::{ApplyLock, DeadLetters, ObjectStore, Requeue, Warehouse};
use crate::process::{ObjectResult, Pipeline};
use crate::schedule::{Decision, QUOTA_DELAY, Schedule, delay_until};

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
    /// Objects sent back to the queue for a later load slot, or past a used-up quota:
    /// (`schema.table`, key).
    pub deferred: Vec<(String, String)>,
    /// Tables (`schema.table`) whose loaded files travel to a later apply slot.
    pub apply_deferred: Vec<String>,
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
    event: ObjectEvent,
    order: Option<DmsObject>,
    deferral: Option<Deferral>,
}

/// One table's work in a batch: its objects (in apply order) and apply markers.
#[derive(Default)]
struct Group {
    tasks: Vec<Task>,
    markers: Vec<(usize, ApplyMarker)>,
}

/// What a table's work in a batch came to.
#[derive(Default)]
struct GroupOutcome {
    results: Vec<(usize, String, ObjectResult)>,
    retry: Vec<(usize, String)>,
    permanent: Vec<(usize, String)>,
    deferred: Vec<(String, String)>,
    apply_deferred: Vec<String>,
}

/// What the scheduled handler needs besides the pipeline (see [`crate::schedule`]).
pub struct Scheduler<'a> {
    /// Every table's load and apply slots.
    pub schedule: &'a Schedule,
    /// Where slots are claimed (the lock table in production).
    pub slots: &'a dyn ApplyLock,
    /// The loader's own queue, for work sent back to a later slot.
    pub requeue: &'a dyn Requeue,
    /// Now, µs since the epoch.
    pub clock: &'a (dyn Fn() -> i64 + Sync),
}

/// Failed applies an apply marker survives before it goes to the dead-letter queue.
pub const MAX_APPLY_FAILURES: u32 = 5;

/// Handles one SQS batch: every object loaded now, each loaded replica applied at the end.
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
    run_batch(pipeline, dead_letters, None, event, options)
}

/// Handles one SQS batch on a schedule (see [`crate::schedule`]): a table loads once per load
/// slot and applies once per apply slot; what waits is sent back to the queue for its slot.
pub fn handle_batch_scheduled<S, W>(
    pipeline: &Pipeline<S, W>,
    dead_letters: &dyn DeadLetters,
    scheduler: &Scheduler<'_>,
    event: &SqsEvent,
    options: HandlerOptions,
) -> BatchReport
where
    S: ObjectStore,
    W: Warehouse,
{
    run_batch(pipeline, dead_letters, Some(scheduler), event, options)
}

static BATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn run_batch<S, W>(
    pipeline: &Pipeline<S, W>,
    dead_letters: &dyn DeadLetters,
    scheduler: Option<&Scheduler<'_>>,
    event: &SqsEvent,
    options: HandlerOptions,
) -> BatchReport
where
    S: ObjectStore,
    W: Warehouse,
{
    pipeline.warehouse.set_deadline(options.deadline);
    // Who claims this batch's slots.
    let owner = format!(
        "{}-{}-{}",
        std::process::id(),
        BATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        crate::process::now_micros()
    );
    // (message index, bucket, key, event time).
    let mut removed_objects: Vec<(usize, String, String, Option<String>)> = Vec::new();
    let mut states: Vec<MessageState> = event
        .records
        .iter()
        .map(|_| MessageState::default())
        .collect();
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
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
                if let Some(marker) = notification.apply {
                    groups
                        .entry(format!("{}/{}", marker.source, marker.table))
                        .or_default()
                        .markers
                        .push((i, marker));
                }
                for object in notification.objects {
                    let plan =
                        plan_object(&pipeline.catalog, Some(&object.bucket), &object.key, None);
                    let group = match (&plan.source, &plan.object) {
                        (Some(s), Some(o)) => format!("{}/{}", s.name, o.source_table()),
                        _ => String::new(),
                    };
                    groups.entry(group).or_default().tasks.push(Task {
                        message: i,
                        event: object,
                        order: plan.object,
                        deferral: notification.deferred,
                    });
                }
            }
            Err(e) => states[i]
                .permanent
                .push(format!("message {}: {e}", message.message_id)),
        }
    }

    // Each table's objects in apply order; tables in parallel.
    let mut work: Vec<(String, Group)> = groups.into_iter().collect();
    for (_, group) in &mut work {
        group.tasks.sort_by(|a, b| match (&a.order, &b.order) {
            (Some(x), Some(y)) => x.apply_order(y),
            _ => a.event.key.cmp(&b.event.key),
        });
    }
    let outcomes: Mutex<Vec<GroupOutcome>> = Mutex::new(Vec::new());
    let queue = Mutex::new(work);
    let threads = options.max_parallel.max(1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                    let Some((name, group)) = next else { break };
                    let outcome = run_group(pipeline, scheduler, &options, &owner, &name, group);
                    if let Ok(mut all) = outcomes.lock() {
                        all.push(outcome);
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
    for outcome in outcomes.into_inner().unwrap_or_default() {
        for (message, reason) in outcome.retry {
            states[message].retry.push(reason);
        }
        for (message, reason) in outcome.permanent {
            states[message].permanent.push(reason);
        }
        report.deferred.extend(outcome.deferred);
        report.apply_deferred.extend(outcome.apply_deferred);
        for (message, key, result) in outcome.results {
            match &result {
                ObjectResult::Failed {
                    reason,
                    retryable: true,
                }
                | ObjectResult::Deferred { reason } => states[message].retry.push(reason.clone()),
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
    }
    for (message, state) in event.records.iter().zip(&states) {
        settle(message, state, dead_letters, &mut report);
    }
    report
}

/// The table a group names (`source/schema.table`), with its source.
fn mapping_of<'c>(
    catalog: &'c ferry_core::Catalog,
    group: &str,
) -> Option<(&'c Source, &'c TableMapping)> {
    let (source, table) = group.split_once('/')?;
    let source = catalog.source(source)?;
    let mapping = source.tables.iter().find(|t| t.source_table() == table)?;
    Some((source, mapping))
}

/// Sends tasks back to the queue in one message, to be delivered at `at_micros`.
fn send_back(s: &Scheduler<'_>, tasks: &[&Task], now: i64, at_micros: i64) -> Result<(), String> {
    let since = tasks
        .iter()
        .filter_map(|t| t.deferral.map(|d| d.since_micros))
        .min()
        .unwrap_or(now);
    let times = tasks
        .iter()
        .filter_map(|t| t.deferral.map(|d| d.times))
        .max()
        .unwrap_or(0)
        + 1;
    let objects: Vec<ObjectEvent> = tasks.iter().map(|t| t.event.clone()).collect();
    let body = deferred_body(
        Deferral {
            since_micros: since,
            until_micros: at_micros,
            times,
        },
        &objects,
    );
    s.requeue
        .send_later(&body, delay_until(now, at_micros))
        .map_err(|e| e.message)
}

/// One table's work in a batch: load (now, or back to the queue for its slot), then apply
/// (now, or carried to its apply slot).
fn run_group<S, W>(
    pipeline: &Pipeline<S, W>,
    scheduler: Option<&Scheduler<'_>>,
    options: &HandlerOptions,
    owner: &str,
    name: &str,
    group: Group,
) -> GroupOutcome
where
    S: ObjectStore,
    W: Warehouse,
{
    let mut out = GroupOutcome::default();
    let mapping = mapping_of(&pipeline.catalog, name);
    let table_name = mapping.map(|(_, m)| m.source_table()).unwrap_or_default();
    let mut tasks: Vec<&Task> = group.tasks.iter().collect();
    // 1. The load slot: files that wait go back to the queue together.
    if let (Some(s), Some((_, m))) = (scheduler, mapping)
        && m.enabled
        && !tasks.is_empty()
    {
        let now = (s.clock)();
        let deferral = tasks
            .iter()
            .filter_map(|t| t.deferral)
            .min_by_key(|d| (d.until_micros > now, d.since_micros));
        match s.schedule.decide_load(m, now, deferral, s.slots, owner) {
            Ok(Decision::Now) => {}
            Ok(Decision::Later { at_micros }) => {
                match send_back(s, &tasks, now, at_micros) {
                    Ok(()) => out.deferred.extend(
                        tasks.iter().map(|t| (table_name.clone(), t.event.key.clone())),
                    ),
                    Err(e) => out.retry.extend(tasks.iter().map(|t| {
                        (t.message, format!("s3://{}/{}: waiting for the table's next load slot, but it could not be sent back to the queue: {e}", t.event.bucket, t.event.key))
                    })),
                }
                tasks.clear();
            }
            Err(e) => {
                // Without the lock table the slot is unknown: load now (the warehouse's own
                // budget still bounds the jobs).
                tracing::warn!(table = %table_name, error = %e.message, "load slot not claimed; loading now");
            }
        }
    }
    // 2. Loads. Objects not started near the deadline fail (retryable); one bucket per call.
    let late = || {
        options
            .deadline
            .is_some_and(|d| Instant::now() + options.safety_margin >= d)
    };
    let mut loaded = false;
    let mut rest = tasks.as_slice();
    let mut quota: Vec<&Task> = Vec::new();
    while let Some(first) = rest.first() {
        let n = if first.order.is_some() {
            rest.iter()
                .take_while(|t| t.event.bucket == first.event.bucket && t.order.is_some())
                .count()
        } else {
            1
        };
        let (run, tail) = rest.split_at(n);
        rest = tail;
        let keys: Vec<String> = run.iter().map(|t| t.event.key.clone()).collect();
        let results = pipeline.process_objects_until(&first.event.bucket, &keys, &late);
        for (task, result) in run.iter().zip(results) {
            // Already-loaded objects apply too: an earlier delivery may have loaded them and
            // then failed to apply.
            loaded |= matches!(
                result,
                ObjectResult::Loaded { .. } | ObjectResult::AlreadyLoaded { .. }
            );
            if scheduler.is_some() && matches!(result, ObjectResult::Deferred { .. }) {
                quota.push(task);
                continue;
            }
            out.results
                .push((task.message, task.event.key.clone(), result));
        }
    }
    // Objects past a used-up quota go back to the queue for later, not to SQS's retries.
    if let Some(s) = scheduler
        && !quota.is_empty()
    {
        let now = (s.clock)();
        let at = now + i64::try_from(QUOTA_DELAY.as_micros()).unwrap_or(0);
        match send_back(s, &quota, now, at) {
            Ok(()) => out.deferred.extend(
                quota.iter().map(|t| (table_name.clone(), t.event.key.clone())),
            ),
            Err(e) => out.retry.extend(quota.iter().map(|t| {
                (t.message, format!("s3://{}/{}: a load quota is used up, and the object could not be sent back to the queue: {e}", t.event.bucket, t.event.key))
            })),
        }
    }
    // 3. The apply.
    let Some((source, m)) = mapping.filter(|(_, m)| m.replica.is_some()) else {
        for (_, marker) in &group.markers {
            tracing::warn!(source = %marker.source, table = %marker.table, "apply marker for a table that is not a mapped replica (any more); dropped");
        }
        return out;
    };
    if !options.apply_replicas {
        return out;
    }
    let mut window = ApplyWindow::empty();
    let mut failures = 0;
    for (_, marker) in &group.markers {
        window.merge(&marker.window);
        failures = failures.max(marker.failures);
    }
    let Some(s) = scheduler else {
        // Unscheduled: the replica catches up once per table per batch.
        if !loaded && group.markers.is_empty() {
            return out;
        }
        let applied = if group.markers.is_empty() {
            pipeline.warehouse.apply(m)
        } else {
            if let Some(pending) = pipeline.warehouse.take_pending(m) {
                window.merge(&pending);
            }
            pipeline.warehouse.apply_window(source, m, &window)
        };
        if let Err(e) = applied {
            fail_loaded(&mut out, &table_name, &e.message);
            for (message, _) in &group.markers {
                out.retry.push((
                    *message,
                    format!("applying {table_name} to its replica failed: {}", e.message),
                ));
            }
        }
        return out;
    };
    if let Some(pending) = pipeline.warehouse.take_pending(m) {
        window.merge(&pending);
    }
    if window.is_empty() {
        return out;
    }
    let now = (s.clock)();
    let decision = s
        .schedule
        .decide_apply(m, now, s.slots, owner)
        .unwrap_or_else(|e| {
            tracing::warn!(table = %table_name, error = %e.message, "apply slot not claimed; applying now");
            Decision::Now
        });
    let (at_micros, failures, why) = match decision {
        Decision::Now => match pipeline.warehouse.apply_window(source, m, &window) {
            Ok(_) => return out,
            Err(e) => {
                tracing::warn!(table = %table_name, error = %e.message, "apply failed; it moves to the next apply slot");
                (
                    s.schedule.apply_slot(m, now).end_micros,
                    failures + 1,
                    Some(e.message),
                )
            }
        },
        Decision::Later { at_micros } => (at_micros, failures, None),
    };
    let marker = ApplyMarker {
        source: source.name.clone(),
        table: table_name.clone(),
        window,
        failures,
    };
    if failures >= MAX_APPLY_FAILURES {
        // The apply keeps failing: the marker goes to the dead-letter queue with the reason,
        // where ops see it and redrive it after a fix (its files are loaded and safe).
        let reason = format!(
            "applying {table_name} to its replica failed {failures} times: {}",
            why.unwrap_or_default()
        );
        out.permanent
            .extend(group.markers.iter().map(|(i, _)| (*i, reason.clone())));
        if group.markers.is_empty() {
            fail_loaded(&mut out, &table_name, &reason);
        }
        return out;
    }
    match s
        .requeue
        .send_later(&apply_body(&marker), delay_until(now, at_micros))
    {
        Ok(()) => out.apply_deferred.push(table_name),
        Err(e) => {
            // Nothing carries the window on: the loaded objects and the markers come back.
            let reason = format!(
                "{table_name}: loaded, but the apply could not be carried to its slot: {}",
                e.message
            );
            fail_loaded(&mut out, &table_name, &reason);
            out.retry
                .extend(group.markers.iter().map(|(i, _)| (*i, reason.clone())));
        }
    }
    out
}

/// The loaded objects of a group fail (retryable): their messages come back and apply again.
fn fail_loaded(out: &mut GroupOutcome, table: &str, why: &str) {
    for (_, key, result) in &mut out.results {
        if matches!(
            result,
            ObjectResult::Loaded { .. } | ObjectResult::AlreadyLoaded { .. }
        ) {
            *result = ObjectResult::Failed {
                reason: format!("{key}: loaded, but applying {table} to its replica failed: {why}"),
                retryable: true,
            };
        }
    }
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
