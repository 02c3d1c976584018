//! The scheduled handler (`handle_batch_scheduled`) over local mode's real parts (a directory
//! bucket, the SQLite warehouse): files of a table that arrive within one load slot load as one
//! job; files that wait are parked and loaded by whoever claims the next slot; work refused
//! for a used-up quota goes back to the queue and never reaches the dead-letter queue.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use ferry_core::event::{SqsEvent, SqsMessage, parse_body, s3_event_body};
use ferry_core::mapping::{Catalog, MappingFile, Source, TableMapping};
use ferry_core::schema::TableSchema;
use ferry_core::sql::ApplyWindow;
use ferry_local::{DirStore, SqliteWarehouse};
use ferry_pipeline::ports::{
    LoadOutcome, LoadRequest, PendingSets, PortError, ProcessLock, ProcessPending, StatusEvent,
    Warehouse,
};
use ferry_pipeline::schedule::{Schedule, ScheduleSettings};
use ferry_pipeline::{BatchReport, HandlerOptions, ObjectResult, Pipeline, Scheduler};
use ferry_sim::{SimOptions, simulate};
use ferry_tests::{TempDir, repo_root};

const S: i64 = 1_000_000;

/// The SQLite warehouse, counting load jobs as BigQuery's writer makes them (a group is one),
/// and refusing the first `refuse` of them for a used-up quota.
struct Counted {
    inner: SqliteWarehouse,
    jobs: AtomicU32,
    refuse: AtomicU32,
}

impl Counted {
    fn job(&self) -> Result<(), PortError> {
        if self
            .refuse
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(PortError::later(
                "HTTP 403 quotaExceeded: Quota exceeded: Your table exceeded quota for imports or query appends per table",
            ));
        }
        self.jobs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Warehouse for Counted {
    fn table_schema(&self, table: &TableMapping) -> Result<Option<TableSchema>, PortError> {
        self.inner.table_schema(table)
    }
    fn load(&self, request: &LoadRequest<'_>) -> Result<LoadOutcome, PortError> {
        self.job()?;
        self.inner.load(request)
    }
    fn load_group(&self, requests: &[LoadRequest<'_>]) -> Vec<Result<LoadOutcome, PortError>> {
        match self.job() {
            Ok(()) => requests.iter().map(|r| self.inner.load(r)).collect(),
            Err(e) => requests.iter().map(|_| Err(e.clone())).collect(),
        }
    }
    fn apply(&self, table: &TableMapping) -> Result<u64, PortError> {
        self.inner.apply(table)
    }
    fn apply_window(
        &self,
        source: &Source,
        table: &TableMapping,
        window: &ApplyWindow,
    ) -> Result<u64, PortError> {
        self.inner.apply_window(source, table, window)
    }
    fn record(&self, event: &StatusEvent) -> Result<(), PortError> {
        self.inner.record(event)
    }
    fn empty_replica(
        &self,
        source: &Source,
        table: &TableMapping,
        run_seq: &str,
    ) -> Result<(), PortError> {
        self.inner.empty_replica(source, table, run_seq)
    }
}

use ferry_tests::recorded::{Dlq, Sent};

struct Lab {
    _dir: TempDir,
    pipeline: Pipeline<DirStore, Counted>,
    schedule: Schedule,
    slots: ProcessLock,
    pending: ProcessPending,
    sent: Sent,
    dlq: Dlq,
    clock: Arc<AtomicI64>,
    /// The CDC files of `lab.accounts`, in write order.
    files: Vec<String>,
    table: TableMapping,
}

impl Lab {
    fn new(label: &str) -> Lab {
        let dir = TempDir::new(label);
        let text =
            std::fs::read_to_string(repo_root().join("tests/fixtures/convert/types-lab.json"))
                .unwrap();
        let catalog = Catalog::from_files(&[MappingFile {
            path: "types-lab.json".into(),
            text,
        }])
        .unwrap();
        let opts = SimOptions {
            rows: 30,
            minutes: 6,
            changes_per_minute: 10,
            hard_cases: false,
            // One schema for every file (files with new columns load on their own).
            add_column: false,
            ..SimOptions::default()
        };
        let manifest = simulate(&catalog, &opts, &dir.path().join("bucket")).unwrap();
        let files: Vec<String> = manifest
            .tables
            .iter()
            .find(|t| t.table == "lab.accounts")
            .unwrap()
            .files
            .iter()
            .filter(|k| !k.contains("LOAD"))
            .cloned()
            .collect();
        assert!(files.len() >= 4, "{files:?}");
        let table = catalog.sources()[0]
            .tables
            .iter()
            .find(|t| t.table == "accounts")
            .unwrap()
            .clone();
        let schedule = Schedule::new(&catalog, ScheduleSettings::default());
        let warehouse = Counted {
            inner: SqliteWarehouse::open(&dir.path().join("w.sqlite")).unwrap(),
            jobs: AtomicU32::new(0),
            refuse: AtomicU32::new(0),
        };
        let pipeline = Pipeline {
            catalog: Arc::new(catalog),
            store: DirStore::new(dir.path().join("bucket")),
            warehouse,
            work_dir: dir.path().join("work"),
        };
        // Just after one of the table's load slots starts.
        let slot = schedule.load_slot(&table, 1_796_100_000 * S);
        Lab {
            _dir: dir,
            pipeline,
            schedule,
            slots: ProcessLock::default(),
            pending: ProcessPending::default(),
            sent: Sent::default(),
            dlq: Dlq::default(),
            clock: Arc::new(AtomicI64::new(slot.start_micros + S)),
            files,
            table,
        }
    }

    fn at(&self, micros: i64) {
        self.clock.store(micros, Ordering::Relaxed);
    }

    fn now(&self) -> i64 {
        self.clock.load(Ordering::Relaxed)
    }

    fn deliver(&self, bodies: &[String]) -> BatchReport {
        let event = SqsEvent {
            records: bodies
                .iter()
                .enumerate()
                .map(|(i, b)| SqsMessage {
                    message_id: format!("m{i}"),
                    receipt_handle: String::new(),
                    body: b.clone(),
                    attributes: serde_json::Map::new(),
                    event_source_arn: String::new(),
                })
                .collect(),
        };
        let clock = {
            let c = self.clock.clone();
            move || c.load(Ordering::Relaxed)
        };
        let scheduler = Scheduler {
            schedule: &self.schedule,
            slots: &self.slots,
            requeue: &self.sent,
            pending: &self.pending,
            clock: &clock,
        };
        ferry_pipeline::handle_batch_scheduled(
            &self.pipeline,
            &self.dlq,
            &scheduler,
            &event,
            HandlerOptions::default(),
        )
    }

    fn s3(&self, i: usize) -> String {
        s3_event_body("ferry-test", &self.files[i], 1, "x", "2026-12-01T00:00:00Z")
    }

    fn jobs(&self) -> u32 {
        self.pipeline.warehouse.jobs.load(Ordering::Relaxed)
    }

    fn waiting(&self) -> usize {
        self.pending
            .read(&format!("load/{}", self.table.changelog))
            .unwrap()
            .len()
    }

    fn take_sent(&self) -> Vec<(String, Duration)> {
        self.sent.take()
    }

    fn loaded_files(&self) -> i64 {
        let sql = format!(
            "SELECT COUNT(DISTINCT _ferry_file) FROM {}",
            ferry_local::warehouse::quote(&ferry_local::warehouse::local_name(
                &self.table.changelog
            ))
        );
        self.pipeline.warehouse.inner.query(&sql).unwrap().rows[0][0]
            .as_i64()
            .unwrap()
    }
}

fn loaded(report: &BatchReport) -> usize {
    report
        .objects
        .iter()
        .filter(|(_, _, r)| matches!(r, ObjectResult::Loaded { .. }))
        .count()
}

#[test]
fn files_of_one_slot_wait_together_and_load_as_one_job_in_the_next() {
    let lab = Lab::new("schedule-coalesce");
    // The slot's first file loads at once.
    let r = lab.deliver(&[lab.s3(0)]);
    assert_eq!((loaded(&r), lab.jobs()), (1, 1));
    // Two more in the same slot, in two batches: parked and acknowledged, and one wake-up
    // for the slot however many batches park.
    let start = lab.now();
    lab.at(start + 20 * S);
    let r = lab.deliver(&[lab.s3(1)]);
    assert!(r.response.batch_item_failures.is_empty() && r.objects.is_empty());
    assert_eq!(r.deferred.len(), 1);
    lab.at(start + 40 * S);
    lab.deliver(&[lab.s3(2)]);
    assert_eq!((lab.jobs(), lab.waiting()), (1, 2));
    let wakes = lab.take_sent();
    assert_eq!(wakes.len(), 1, "{wakes:?}");
    let wake = &wakes[0].0;
    assert!(parse_body(wake).unwrap().wake.is_some(), "{wake}");
    // Each wake-up comes after the next slot has started, never before it.
    let next = lab.schedule.load_slot(&lab.table, start).end_micros;
    for (_, delay) in &wakes {
        assert!(
            start + 20 * S + delay.as_micros() as i64 > next,
            "{delay:?}"
        );
    }
    // The next slot: the table's next file claims it first and takes the waiting files along,
    // all three in one job; the wake-ups that follow find nothing to do.
    lab.at(next + 2 * S);
    let r = lab.deliver(&[lab.s3(3)]);
    assert_eq!(loaded(&r), 3, "{:?}", r.objects);
    assert_eq!((lab.jobs(), lab.waiting()), (2, 0));
    lab.at(next + 70 * S);
    let r = lab.deliver(&[wake.clone(), wake.clone()]);
    assert!(r.objects.is_empty() && r.response.batch_item_failures.is_empty());
    assert!(lab.take_sent().is_empty(), "no wake-up for an empty set");
    assert_eq!(lab.jobs(), 2);
    assert_eq!(
        lab.loaded_files(),
        4,
        "every file is in the change log once"
    );
}

#[test]
fn a_wake_up_loads_the_waiting_files_when_no_new_file_comes() {
    let lab = Lab::new("schedule-wake");
    lab.deliver(&[lab.s3(0)]);
    let start = lab.now();
    lab.at(start + 10 * S);
    lab.deliver(&[lab.s3(1), lab.s3(2)]);
    let wakes = lab.take_sent();
    assert_eq!(
        (wakes.len(), lab.waiting()),
        (1, 2),
        "one wake-up for the batch"
    );
    // A wake-up delivered early (still in the slot) does not load, and wakes the next slot.
    let r = lab.deliver(&[wakes[0].0.clone()]);
    assert!(r.objects.is_empty());
    assert_eq!(lab.take_sent().len(), 1, "the set still waits: woken again");
    // On time, it loads both as one job.
    lab.at(start + 10 * S + wakes[0].1.as_micros() as i64);
    let r = lab.deliver(&[wakes[0].0.clone()]);
    assert_eq!(loaded(&r), 2, "{:?}", r.objects);
    assert!(
        r.objects
            .iter()
            .all(|(id, _, _)| id == ferry_pipeline::handler::PENDING_SET)
    );
    assert_eq!((lab.jobs(), lab.waiting()), (2, 0));
    assert_eq!(lab.loaded_files(), 3);
}

#[test]
fn a_used_up_quota_defers_the_file_and_never_reaches_the_dead_letter_queue() {
    let lab = Lab::new("schedule-quota");
    // The quota refuses the next ten loads: ten deliveries, each sent back for later.
    lab.pipeline.warehouse.refuse.store(10, Ordering::Relaxed);
    let mut body = lab.s3(0);
    for round in 0..10 {
        let r = lab.deliver(&[body.clone()]);
        assert!(
            r.response.batch_item_failures.is_empty(),
            "round {round}: deferred, not retried"
        );
        assert!(lab.dlq.is_empty());
        let sent = lab.take_sent();
        assert_eq!(sent.len(), 1, "round {round}: {sent:?}");
        assert_eq!(
            sent[0].1,
            Duration::from_secs(900),
            "sent back 15 minutes later"
        );
        let deferral = parse_body(&sent[0].0).unwrap().deferred.unwrap();
        assert_eq!(deferral.times, round + 1);
        body = sent[0].0.clone();
        lab.at(lab.now() + 900 * S);
    }
    // The quota has room again: the file loads, from the message that carried it.
    let r = lab.deliver(&[body]);
    assert_eq!(loaded(&r), 1, "{:?}", r.objects);
    assert!(lab.dlq.is_empty());
    assert_eq!(lab.loaded_files(), 1);
}

#[test]
fn moto_dynamodb_pending_sets_keep_each_item_once_until_removed() {
    let rt = ferry_tests::runtime();
    let client = rt.block_on(ferry_tests::stand_ins::moto_lock_table("pending-sets"));
    let sets = ferry_aws::DynamoDbPending::new(client, rt.handle().clone(), "pending-sets");
    let (a, b, c) = ("a".to_owned(), "b \"quoted\"".to_owned(), "c".to_owned());
    assert!(
        sets.read("load/t").unwrap().is_empty(),
        "a set never added to is empty"
    );
    sets.add("load/t", &[a.clone(), b.clone()]).unwrap();
    sets.add("load/t", &[b.clone(), c.clone()]).unwrap();
    let mut got = sets.read("load/t").unwrap();
    got.sort();
    assert_eq!(got, vec![a.clone(), b.clone(), c.clone()]);
    assert!(sets.read("load/u").unwrap().is_empty(), "sets are per name");
    sets.remove("load/t", &[a, b]).unwrap();
    assert_eq!(sets.read("load/t").unwrap(), vec![c.clone()]);
    sets.remove("load/t", &[c]).unwrap();
    assert!(sets.read("load/t").unwrap().is_empty());
    // Removing what is not there is harmless.
    sets.remove("load/t", &["x".to_owned()]).unwrap();
}
