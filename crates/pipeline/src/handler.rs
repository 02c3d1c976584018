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
    Deferral, ObjectEvent, SqsBatchResponse, SqsEvent, SqsMessage, Wake, WakeFor, parse_body,
    s3_event_body,
};
use ferry_core::key::{self, DmsObject, FileKind};
use ferry_core::mapping::{OnTruncate, Source, TableMapping};
use ferry_core::plan_object;
use ferry_core::sql::ApplyWindow;

use crate::ports::{DeadLetters, ObjectStore, Warehouse};
use crate::process::{ObjectResult, Pipeline};
use crate::schedule::{Decision, QUOTA_DELAY};
use crate::waiting::{Scheduler, apply_set, load_set};

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
    /// Tables (`schema.table`) whose loaded files wait for a later apply slot.
    pub apply_deferred: Vec<String>,
}

/// A message's fate so far.
#[derive(Debug, Default)]
struct MessageState {
    retry: Vec<String>,
    permanent: Vec<String>,
}

/// One object to process, with its message in the batch (`None`: from the pending set).
struct Task {
    message: Option<usize>,
    event: ObjectEvent,
    order: Option<DmsObject>,
    deferral: Option<Deferral>,
}

/// One table's work in a batch: its objects (in apply order) and wake-ups.
#[derive(Default)]
struct Group {
    tasks: Vec<Task>,
    wakes: Vec<(usize, WakeFor)>,
    /// Wake-ups that came before they were due (SQS delays at most 15 minutes).
    early: Vec<(usize, Wake)>,
}

/// What a table's work in a batch came to.
#[derive(Default)]
struct GroupOutcome {
    results: Vec<(usize, String, ObjectResult)>,
    /// Results of objects taken from the pending set (no message of this batch).
    pending_results: Vec<(String, ObjectResult)>,
    retry: Vec<(usize, String)>,
    deferred: Vec<(String, String)>,
    apply_deferred: Vec<String>,
}

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
/// slot and applies once per apply slot; what waits is parked for its slot (see
/// [`crate::waiting`]).
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
                if let Some(wake) = notification.wake {
                    let group = groups
                        .entry(format!("{}/{}", wake.source, wake.table))
                        .or_default();
                    match scheduler {
                        Some(s) if wake.at_micros > s.now() => group.early.push((i, wake)),
                        _ => group.wakes.push((i, wake.work)),
                    }
                }
                for object in notification.objects {
                    let plan =
                        plan_object(&pipeline.catalog, Some(&object.bucket), &object.key, None);
                    let group = match (&plan.source, &plan.object) {
                        (Some(s), Some(o)) => format!("{}/{}", s.name, o.source_table()),
                        _ => String::new(),
                    };
                    groups.entry(group).or_default().tasks.push(Task {
                        message: Some(i),
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
                    let outcome = run_group(
                        pipeline,
                        dead_letters,
                        scheduler,
                        &options,
                        &owner,
                        &name,
                        group,
                    );
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
        report.deferred.extend(outcome.deferred);
        report.objects.extend(
            outcome
                .pending_results
                .into_iter()
                .map(|(key, result)| (PENDING_SET.to_owned(), key, result)),
        );
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

/// The message id under which objects of the pending set appear in the report.
pub const PENDING_SET: &str = "pending-set";

/// One table's work in a batch: load (now, or parked for the next load slot), then apply (now,
/// or parked for the next apply slot).
fn run_group<S, W>(
    pipeline: &Pipeline<S, W>,
    dead_letters: &dyn DeadLetters,
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
    if let Some(s) = scheduler {
        for (i, wake) in &group.early {
            if let Err(e) = s.forward(wake) {
                out.retry.push((
                    *i,
                    format!(
                        "{table_name}: a wake-up could not be sent on: {}",
                        e.message
                    ),
                ));
            }
        }
    }
    let mut tasks = group.tasks;
    let wakes_load = group.wakes.iter().any(|(_, w)| *w == WakeFor::Load);
    // Items taken from the load set, and its items to drop.
    let mut taken: Vec<(String, ObjectEvent)> = Vec::new();
    let mut spare: Vec<String> = Vec::new();
    // 1. The load slot: its claimer loads its files and the table's load set; the others park
    // theirs there and wake the next slot.
    if let (Some(s), Some((source, m))) = (scheduler, mapping)
        && m.enabled
        && (!tasks.is_empty() || wakes_load)
    {
        match s.schedule.decide_load(m, s.now(), s.slots, owner) {
            Ok(Decision::Now) => match s.waiting_objects(m) {
                Ok((objects, extra)) => {
                    spare = extra;
                    for (item, o) in objects {
                        if !tasks
                            .iter()
                            .any(|t| t.event.bucket == o.bucket && t.event.key == o.key)
                        {
                            let plan =
                                plan_object(&pipeline.catalog, Some(&o.bucket), &o.key, None);
                            tasks.push(Task {
                                message: None,
                                event: o.clone(),
                                order: plan.object,
                                deferral: None,
                            });
                        }
                        taken.push((item, o));
                    }
                }
                Err(e) => {
                    tracing::warn!(table = %table_name, error = %e.message, "pending set not read; the next slot loads it");
                }
            },
            Ok(Decision::Later { at_micros }) => {
                if !tasks.is_empty() {
                    park(s, source, m, &tasks, at_micros, owner, &mut out);
                } else {
                    // A wake-up that lost its slot (another claimer, or it came early): the set
                    // still waiting gets the next slot's wake-up.
                    rewake(
                        s,
                        source,
                        m,
                        (WakeFor::Load, at_micros),
                        owner,
                        &group.wakes,
                        &mut out,
                    );
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
    tasks.sort_by(|a, b| match (&a.order, &b.order) {
        (Some(x), Some(y)) => x.apply_order(y),
        _ => a.event.key.cmp(&b.event.key),
    });
    // 2. Loads.
    let (loaded, done) = load_tasks(
        pipeline,
        dead_letters,
        scheduler,
        options,
        &tasks,
        &table_name,
        &mut out,
    );
    // The load set loses what is done with; what is not waits for the next slot.
    if let (Some(s), Some((source, m))) = (scheduler, mapping)
        && !(taken.is_empty() && spare.is_empty())
    {
        let (settled, waiting): (Vec<_>, Vec<_>) = taken
            .into_iter()
            .partition(|(_, o)| done.iter().any(|(b, k)| *b == o.bucket && *k == o.key));
        let mut gone: Vec<String> = settled.into_iter().map(|(item, _)| item).collect();
        gone.extend(spare);
        if let Err(e) = s.pending.remove(&load_set(m), &gone) {
            tracing::warn!(table = %table_name, error = %e.message, "pending set not trimmed; the next slot finds its objects loaded");
        }
        if !waiting.is_empty()
            && let Err(e) = s.wake(
                source,
                m,
                WakeFor::Load,
                s.schedule.load_slot(m, s.now()).end_micros,
                owner,
            )
        {
            // Nothing wakes the set: this batch's messages come back and claim a slot.
            let why = format!(
                "{table_name}: objects wait in the pending set, and the next slot's wake-up could not be sent: {}",
                e.message
            );
            out.retry
                .extend(group.wakes.iter().map(|(i, _)| (*i, why.clone())));
            out.retry.extend(
                tasks
                    .iter()
                    .filter_map(|t| t.message.map(|i| (i, why.clone()))),
            );
        }
    }
    // 3. The apply.
    let Some((source, m)) = mapping.filter(|(_, m)| m.replica.is_some()) else {
        return out;
    };
    if !options.apply_replicas {
        return out;
    }
    match scheduler {
        None => {
            // Unscheduled: the replica catches up once per table per batch.
            if loaded && let Err(e) = pipeline.warehouse.apply(m) {
                fail_loaded(&mut out, &table_name, &e.message);
            }
        }
        Some(s) => {
            let wakes_apply = group.wakes.iter().any(|(_, w)| *w == WakeFor::Apply);
            let mine = pipeline
                .warehouse
                .take_pending(m)
                .unwrap_or_else(ApplyWindow::empty);
            if !mine.is_empty() || wakes_apply {
                apply_scheduled(pipeline, s, source, m, mine, owner, &group.wakes, &mut out);
            }
        }
    }
    out
}

/// Parks a group's files in the table's load set and wakes its next slot; without the set,
/// they go back to the queue in one message for that slot.
fn park(
    s: &Scheduler<'_>,
    source: &Source,
    m: &TableMapping,
    tasks: &[Task],
    at_micros: i64,
    owner: &str,
    out: &mut GroupOutcome,
) {
    let objects: Vec<ObjectEvent> = tasks.iter().map(|t| t.event.clone()).collect();
    let table = m.source_table();
    let parked = s.park_objects(source, m, &objects, at_micros, owner).or_else(|e| {
        tracing::warn!(table = %table, error = %e.message, "pending set unavailable; the files go back to the queue for the next slot");
        let bundle: Vec<(Option<Deferral>, ObjectEvent)> =
            tasks.iter().map(|t| (t.deferral, t.event.clone())).collect();
        s.send_back(&bundle, at_micros)
    });
    match parked {
        Ok(()) => out
            .deferred
            .extend(tasks.iter().map(|t| (table.clone(), t.event.key.clone()))),
        Err(e) => out.retry.extend(tasks.iter().filter_map(|t| {
            t.message.map(|i| {
                (i, format!("s3://{}/{}: waiting for the table's next load slot, but it could not be parked: {}", t.event.bucket, t.event.key, e.message))
            })
        })),
    }
}

/// Loads a group's tasks (in apply order, one bucket per call; objects not started near the
/// deadline fail, retryable). Returns whether anything is in the change log now, and the
/// objects done with (loaded, skipped, dead-lettered, or sent back past a used-up quota).
fn load_tasks<S, W>(
    pipeline: &Pipeline<S, W>,
    dead_letters: &dyn DeadLetters,
    scheduler: Option<&Scheduler<'_>>,
    options: &HandlerOptions,
    tasks: &[Task],
    table_name: &str,
    out: &mut GroupOutcome,
) -> (bool, Vec<(String, String)>)
where
    S: ObjectStore,
    W: Warehouse,
{
    let late = || {
        options
            .deadline
            .is_some_and(|d| Instant::now() + options.safety_margin >= d)
    };
    let mut loaded = false;
    let mut done: Vec<(String, String)> = Vec::new();
    let mut quota: Vec<&Task> = Vec::new();
    let mut rest = tasks;
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
            let id = (task.event.bucket.clone(), task.event.key.clone());
            let retry = matches!(
                result,
                ObjectResult::Failed {
                    retryable: true,
                    ..
                } | ObjectResult::Deferred { .. }
            );
            match task.message {
                Some(message) => {
                    if !retry {
                        done.push(id);
                    }
                    out.results.push((message, task.event.key.clone(), result));
                }
                None => {
                    if let ObjectResult::Failed {
                        reason,
                        retryable: false,
                    } = &result
                    {
                        // Kept in the dead-letter queue as its own S3-shaped message.
                        match dead_letters.send(&pending_message(&task.event), reason) {
                            Ok(()) => done.push(id),
                            Err(e) => {
                                tracing::error!(key = %task.event.key, error = %e.message, "dead-letter queue unavailable; the object stays pending")
                            }
                        }
                    } else if !retry {
                        done.push(id);
                    }
                    out.pending_results.push((task.event.key.clone(), result));
                }
            }
        }
    }
    // Objects past a used-up quota go back to the queue for later, not to SQS's retries.
    if let Some(s) = scheduler
        && !quota.is_empty()
    {
        let at = s.now() + i64::try_from(QUOTA_DELAY.as_micros()).unwrap_or(0);
        let bundle: Vec<(Option<Deferral>, ObjectEvent)> = quota
            .iter()
            .map(|t| (t.deferral, t.event.clone()))
            .collect();
        match s.send_back(&bundle, at) {
            Ok(()) => {
                for t in &quota {
                    out.deferred.push((table_name.to_owned(), t.event.key.clone()));
                    done.push((t.event.bucket.clone(), t.event.key.clone()));
                }
            }
            Err(e) => out.retry.extend(quota.iter().filter_map(|t| {
                t.message.map(|i| {
                    (i, format!("s3://{}/{}: a load quota is used up, and the object could not be sent back to the queue: {}", t.event.bucket, t.event.key, e.message))
                })
            })),
        }
    }
    (loaded, done)
}

/// An object of the pending set as a message of its own (for the dead-letter queue, where
/// `dlq redrive` sends it back as S3 would).
fn pending_message(o: &ObjectEvent) -> SqsMessage {
    SqsMessage {
        message_id: format!("{PENDING_SET}:{}", o.key),
        receipt_handle: String::new(),
        body: s3_event_body(
            &o.bucket,
            &o.key,
            o.size.unwrap_or(0),
            o.etag.as_deref().unwrap_or(""),
            o.event_time.as_deref().unwrap_or(""),
        ),
        attributes: serde_json::Map::new(),
        event_source_arn: String::new(),
    }
}

/// The scheduled apply: the apply slot's claimer applies this batch's files and the table's
/// apply set; the others park this batch's window there and wake the next apply slot. A failed
/// apply keeps everything for the next slot (its files are in the change log, and the live view
/// shows them).
#[allow(clippy::too_many_arguments)]
fn apply_scheduled<S, W>(
    pipeline: &Pipeline<S, W>,
    s: &Scheduler<'_>,
    source: &Source,
    m: &TableMapping,
    mine: ApplyWindow,
    owner: &str,
    wakes: &[(usize, WakeFor)],
    out: &mut GroupOutcome,
) where
    S: ObjectStore,
    W: Warehouse,
{
    let table = m.source_table();
    let now = s.now();
    let decision = s.schedule.decide_apply(m, now, s.slots, owner).unwrap_or_else(|e| {
        tracing::warn!(table = %table, error = %e.message, "apply slot not claimed; applying now");
        Decision::Now
    });
    let at_micros = match decision {
        Decision::Later { at_micros } => at_micros,
        Decision::Now => {
            let applied = s.waiting_window(m).and_then(|(mut window, items)| {
                window.merge(&mine);
                if !window.is_empty() {
                    pipeline.warehouse.apply_window(source, m, &window)?;
                }
                s.pending.remove(&apply_set(m), &items)
            });
            match applied {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(table = %table, error = %e.message, "apply failed; it waits for the next apply slot");
                    s.schedule.apply_slot(m, now).end_micros
                }
            }
        }
    };
    if mine.is_empty() {
        rewake(s, source, m, (WakeFor::Apply, at_micros), owner, wakes, out);
        return;
    }
    match s.park_window(source, m, &mine, at_micros, owner) {
        Ok(()) => out.apply_deferred.push(table),
        Err(e) => {
            // Nothing holds the window: the loaded objects and the wake-ups come back.
            let why = format!(
                "{table}: loaded, but the apply could not wait for its slot: {}",
                e.message
            );
            fail_loaded(out, &table, &why);
            out.retry.extend(
                wakes
                    .iter()
                    .filter(|(_, w)| *w == WakeFor::Apply)
                    .map(|(i, _)| (*i, why.clone())),
            );
        }
    }
}

/// A wake-up that did not run its slot: the next slot gets one if the set still holds work.
fn rewake(
    s: &Scheduler<'_>,
    source: &Source,
    m: &TableMapping,
    (work, at_micros): (WakeFor, i64),
    owner: &str,
    wakes: &[(usize, WakeFor)],
    out: &mut GroupOutcome,
) {
    let set = match work {
        WakeFor::Load => load_set(m),
        WakeFor::Apply => apply_set(m),
    };
    let result = s.pending.read(&set).and_then(|items| {
        if items.is_empty() {
            Ok(())
        } else {
            s.wake(source, m, work, at_micros, owner)
        }
    });
    if let Err(e) = result {
        let why = format!(
            "{}: the pending set could not be checked or woken: {}",
            m.source_table(),
            e.message
        );
        out.retry.extend(
            wakes
                .iter()
                .filter(|(_, w)| *w == work)
                .map(|(i, _)| (*i, why.clone())),
        );
    }
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
