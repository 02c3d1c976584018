//! Local mode end to end: the Lambda's handler over a directory bucket, the in-process queue
//! and the SQLite warehouse; reruns, interruptions, redeliveries, out-of-order files, bad
//! objects, and the status records.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use ferry_core::event::{SqsEvent, SqsMessage, s3_event_body};
use ferry_core::mapping::{Catalog, MappingFile, TableMapping};
use ferry_core::schema::TableSchema;
use ferry_local::queue::LocalQueue;
use ferry_local::{DirStore, LocalPipeline, RunOptions, SqliteWarehouse};
use ferry_pipeline::{
    HandlerOptions, LoadOutcome, LoadRequest, Pipeline, PortError, StatusEvent, Warehouse,
    handle_batch,
};
use ferry_sim::{Manifest, SimOptions, simulate};
use ferry_tests::{TempDir, repo_root};
use serde_json::Value;

fn lab_catalog() -> Catalog {
    lab_catalog_with(|_| {})
}

/// The lab mapping with an edit (a table's policy, say).
fn lab_catalog_with(edit: impl FnOnce(&mut Value)) -> Catalog {
    let mut doc: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("tests/fixtures/convert/types-lab.json"))
            .unwrap(),
    )
    .unwrap();
    edit(&mut doc);
    Catalog::from_files(&[MappingFile {
        path: "types-lab.json".into(),
        text: doc.to_string(),
    }])
    .unwrap()
}

/// Writes one parquet file of `columns` at `path` (folders created).
fn write_parquet(path: &std::path::Path, columns: Vec<(&str, arrow_array::ArrayRef)>) {
    let batch = arrow_array::RecordBatch::try_from_iter(columns).unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, buf).unwrap();
}

struct Estate {
    dir: TempDir,
    catalog: Catalog,
    manifest: Manifest,
}

impl Estate {
    fn new(label: &str) -> Estate {
        let dir = TempDir::new(label);
        let catalog = lab_catalog();
        let opts = SimOptions {
            rows: 120,
            minutes: 6,
            changes_per_minute: 25,
            row_group_rows: 50,
            manifest_rows: 0,
            ..SimOptions::default()
        };
        let manifest = simulate(&catalog, &opts, &dir.path().join("bucket")).unwrap();
        Estate {
            dir,
            catalog,
            manifest,
        }
    }

    fn bucket(&self) -> std::path::PathBuf {
        self.dir.path().join("bucket")
    }

    fn pipeline(&self, warehouse: &str) -> LocalPipeline {
        let db = SqliteWarehouse::open(&self.dir.path().join(warehouse)).unwrap();
        Pipeline {
            catalog: Arc::new(self.catalog.clone()),
            store: DirStore::new(self.bucket()),
            warehouse: Arc::new(db),
            work_dir: self.dir.path().join("work"),
        }
    }

    fn data_files(&self) -> u64 {
        self.manifest
            .tables
            .iter()
            .filter(|t| t.enabled)
            .map(|t| t.files.len() as u64)
            .sum()
    }
}

fn mismatches(p: &LocalPipeline, manifest: &Manifest) -> Vec<String> {
    ferry_local::verify(&p.warehouse, manifest)
        .unwrap()
        .into_iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.table, c.detail))
        .collect()
}

fn count(p: &LocalPipeline, sql: &str) -> i64 {
    p.warehouse.query(sql).unwrap().rows[0][0].as_i64().unwrap()
}

/// A local pipeline over `dir/bucket` with a warehouse in `dir/<warehouse>`.
fn dir_pipeline(dir: &std::path::Path, catalog: &Catalog, warehouse: &str) -> LocalPipeline {
    Pipeline {
        catalog: Arc::new(catalog.clone()),
        store: DirStore::new(dir.join("bucket")),
        warehouse: Arc::new(SqliteWarehouse::open(&dir.join(warehouse)).unwrap()),
        work_dir: dir.join("work"),
    }
}

/// The sum of the tables' `<prefix><count>` cases (`pk_updates:`, `lob_cuts:`).
fn case_total<'a>(tables: impl Iterator<Item = &'a ferry_sim::TableManifest>, prefix: &str) -> u64 {
    tables
        .flat_map(|t| t.cases.iter())
        .filter_map(|c| c.strip_prefix(prefix))
        .map(|n| n.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn a_run_loads_everything_once_and_a_rerun_loads_nothing() {
    let estate = Estate::new("local-run");
    let p = estate.pipeline("w.sqlite");
    let first = ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    assert_eq!(first.loaded, estate.data_files());
    assert_eq!(first.dead_lettered, 0);
    assert_eq!(mismatches(&p, &estate.manifest), Vec::<String>::new());
    let rows: u64 = estate
        .manifest
        .tables
        .iter()
        .filter(|t| t.enabled)
        .map(|t| t.changes.total())
        .sum();
    assert_eq!(first.rows, rows);

    let second = ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    assert_eq!((second.queued, second.loaded), (0, 0));
    assert_eq!(second.loaded_before, second.objects);
    assert_eq!(
        count(&p, "SELECT count(*) FROM _ferry_loads") as u64,
        estate.data_files()
    );
}

#[test]
fn an_interrupted_run_resumes_and_a_rebuilt_warehouse_is_the_same() {
    let estate = Estate::new("local-resume");
    let p = estate.pipeline("w.sqlite");
    let half = estate.data_files() / 2;
    let first = ferry_local::run(
        &p,
        &RunOptions {
            limit: Some(half),
            ..RunOptions::default()
        },
        |_| {},
    )
    .unwrap();
    assert!(
        first.loaded >= half && first.loaded < estate.data_files(),
        "{first:?}"
    );
    assert!(
        !mismatches(&p, &estate.manifest).is_empty(),
        "half a run is not the whole state"
    );
    let rest = ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    assert_eq!(first.loaded + rest.loaded, estate.data_files());
    assert_eq!(mismatches(&p, &estate.manifest), Vec::<String>::new());

    // Deleting the warehouse and running again rebuilds the same replica, row for row.
    let q = estate.pipeline("rebuilt.sqlite");
    ferry_local::run(&q, &RunOptions::default(), |_| {}).unwrap();
    for table in ["lab.accounts", "lab.seats"] {
        let order = if table == "lab.accounts" {
            "account_id"
        } else {
            "table_id, seat_no"
        };
        let select = format!("SELECT * FROM \"{table}\" ORDER BY {order}");
        assert_eq!(
            p.warehouse.query(&select).unwrap(),
            q.warehouse.query(&select).unwrap(),
            "{table}"
        );
    }
}

fn message(id: &str, body: String) -> SqsMessage {
    SqsMessage {
        message_id: id.into(),
        body,
        ..SqsMessage::default()
    }
}

/// An SQS event with one S3 notification per key, message ids `m0`, `m1`, ...
fn event_for(keys: &[&str]) -> SqsEvent {
    SqsEvent {
        records: keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                message(
                    &format!("m{i}"),
                    s3_event_body("ferry-test", k, 1, "x", "2026-11-26T00:00:00Z"),
                )
            })
            .collect(),
    }
}

#[test]
fn out_of_order_and_repeated_deliveries_reach_the_same_state() {
    let estate = Estate::new("local-order");
    let p = estate.pipeline("w.sqlite");
    // Every object, newest first, each delivered twice, in batches of 10.
    let mut keys: Vec<&str> = estate
        .manifest
        .tables
        .iter()
        .flat_map(|t| t.files.iter().map(String::as_str))
        .collect();
    keys.reverse();
    let doubled: Vec<&str> = keys.iter().flat_map(|k| [*k, *k]).collect();
    let mut loaded = 0;
    for chunk in doubled.chunks(10) {
        let report = handle_batch(
            &p,
            p.warehouse.as_ref(),
            &event_for(chunk),
            HandlerOptions::default(),
        );
        assert!(
            report.response.batch_item_failures.is_empty(),
            "{:?}",
            report.objects
        );
        loaded += report
            .objects
            .iter()
            .filter(|(_, _, r)| matches!(r, ferry_pipeline::ObjectResult::Loaded { .. }))
            .count() as u64;
    }
    assert_eq!(
        loaded,
        estate.data_files(),
        "each object loaded once, the repeats recognised"
    );
    assert_eq!(mismatches(&p, &estate.manifest), Vec::<String>::new());
}

#[test]
fn bad_objects_go_to_the_dead_letter_queue_with_their_reason_and_the_rest_loads() {
    let estate = Estate::new("local-bad");
    let p = estate.pipeline("w.sqlite");
    let accounts = &estate
        .manifest
        .tables
        .iter()
        .find(|t| t.table == "lab.accounts")
        .unwrap()
        .files;
    let good = accounts[0].as_str();
    // A corrupt object, an unmapped table with a hostile name, a deleted object, a key that
    // tries to leave the bucket, and a body that is not an S3 event.
    let corrupt = "lab/dms/lab/accounts/20261126-235959000.parquet";
    std::fs::write(estate.bucket().join(corrupt), b"PAR1 not parquet at all").unwrap();
    let unmapped = "lab/dms/lab/vip room 😊/LOAD00000001.parquet";
    std::fs::create_dir_all(estate.bucket().join("lab/dms/lab/vip room 😊")).unwrap();
    std::fs::copy(estate.bucket().join(good), estate.bucket().join(unmapped)).unwrap();
    let deleted = "lab/dms/lab/accounts/20261126-235958000.parquet";
    let escape = "lab/dms/lab/accounts/../../../../etc/20261126-235957000.parquet";
    let mut event = event_for(&[good, corrupt, unmapped, deleted, escape]);
    event
        .records
        .push(message("m-garbage", "this is not json".into()));

    let report = handle_batch(&p, p.warehouse.as_ref(), &event, HandlerOptions::default());
    assert!(
        report.response.batch_item_failures.is_empty(),
        "permanent failures are not retried: {:?}",
        report.response
    );
    let dlq = p
        .warehouse
        .query("SELECT message_id, reason FROM _ferry_dlq ORDER BY message_id")
        .unwrap();
    let reasons: Vec<(String, String)> = dlq
        .rows
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    let reason_of = |id: &str| {
        reasons
            .iter()
            .find(|(m, _)| m == id)
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    };
    assert!(
        reason_of("m1").contains(corrupt)
            && reason_of("m1").contains("not a readable parquet file"),
        "{}",
        reason_of("m1")
    );
    assert!(
        reason_of("m3").contains("no longer exists")
            && reason_of("m3").contains("nothing was removed"),
        "{}",
        reason_of("m3")
    );
    // The key with `..` is not a DMS layout: dead-lettered as a poison object, never read.
    assert!(
        reason_of("m4").contains("not a key DMS writes (unexpected_folders)"),
        "{reasons:#?}"
    );
    assert!(
        reason_of("m-garbage").contains("not JSON"),
        "{}",
        reason_of("m-garbage")
    );
    // The good object loaded; the unmapped one was acknowledged and recorded as such.
    assert_eq!(count(&p, "SELECT count(*) FROM _ferry_loads"), 1);
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM _ferry_events WHERE kind = 'skipped' AND code = 'unmapped_table'"
        ),
        1
    );
    let status =
        ferry_local::status(&p.warehouse, &estate.catalog, ferry_pipeline::now_micros()).unwrap();
    let vip = status
        .tables
        .iter()
        .find(|t| t.table == "lab.vip room 😊")
        .expect("unmapped table in status");
    assert_eq!((vip.state.as_str(), vip.skipped_24h), ("unmapped", 1));
    let acc = status
        .tables
        .iter()
        .find(|t| t.table == "lab.accounts")
        .unwrap();
    assert_eq!((acc.files_24h, acc.failures_24h), (1, 2), "{acc:?}");
    assert_eq!(status.dead_letters, 4);
}

/// A warehouse that fails its first `n` loads with a retryable error, like a BigQuery 503.
struct Flaky {
    inner: Arc<SqliteWarehouse>,
    fail: AtomicU32,
}

impl Warehouse for Flaky {
    fn table_schema(&self, t: &TableMapping) -> Result<Option<TableSchema>, PortError> {
        self.inner.table_schema(t)
    }
    fn load(&self, r: &LoadRequest<'_>) -> Result<LoadOutcome, PortError> {
        if self.fail.load(Ordering::SeqCst) > 0 {
            self.fail.fetch_sub(1, Ordering::SeqCst);
            return Err(PortError::retryable(
                "backendError: 503 Service Unavailable",
            ));
        }
        self.inner.load(r)
    }
    fn apply(&self, t: &TableMapping) -> Result<u64, PortError> {
        self.inner.apply(t)
    }
    fn record(&self, e: &StatusEvent) -> Result<(), PortError> {
        self.inner.record(e)
    }
    fn empty_replica(
        &self,
        source: &ferry_core::mapping::Source,
        t: &TableMapping,
        run_seq: &str,
    ) -> Result<(), PortError> {
        self.inner.empty_replica(source, t, run_seq)
    }
}

fn flaky_pipeline(estate: &Estate, fail: u32) -> (Pipeline<DirStore, Flaky>, Arc<SqliteWarehouse>) {
    let db = Arc::new(
        SqliteWarehouse::open(&estate.dir.path().join(format!("flaky-{fail}.sqlite"))).unwrap(),
    );
    let p = Pipeline {
        catalog: Arc::new(estate.catalog.clone()),
        store: DirStore::new(estate.bucket()),
        warehouse: Flaky {
            inner: Arc::clone(&db),
            fail: AtomicU32::new(fail),
        },
        work_dir: estate.dir.path().join("work"),
    };
    (p, db)
}

#[test]
fn retryable_failures_are_redelivered_until_loaded_or_dead_lettered() {
    let estate = Estate::new("local-retry");
    let keys: Vec<String> = estate.manifest.tables[0]
        .files
        .iter()
        .take(3)
        .cloned()
        .collect();

    // Two transient failures: SQS delivers again, every object loads exactly once.
    let (p, db) = flaky_pipeline(&estate, 2);
    let mut queue = LocalQueue::new(3);
    for k in &keys {
        queue.send(s3_event_body(
            "ferry-test",
            k,
            1,
            "x",
            "2026-11-26T00:00:00Z",
        ));
    }
    let drained = queue.drain(
        db.as_ref(),
        || false,
        |e| handle_batch(&p, db.as_ref(), e, HandlerOptions::default()),
    );
    assert_eq!(drained.dead_lettered, 0);
    assert!(drained.deliveries > keys.len() as u64, "{drained:?}");
    assert_eq!(
        db.query("SELECT count(*) FROM _ferry_loads").unwrap().rows[0][0],
        Value::from(keys.len() as i64)
    );

    // Failures beyond maxReceiveCount: the messages go to the dead-letter queue with the reason.
    let (p, db) = flaky_pipeline(&estate, 1000);
    let mut queue = LocalQueue::new(3);
    queue.send(s3_event_body(
        "ferry-test",
        &keys[0],
        1,
        "x",
        "2026-11-26T00:00:00Z",
    ));
    let drained = queue.drain(
        db.as_ref(),
        || false,
        |e| handle_batch(&p, db.as_ref(), e, HandlerOptions::default()),
    );
    assert_eq!((drained.deliveries, drained.dead_lettered), (3, 1));
    let reason = db
        .query("SELECT reason, receive_count FROM _ferry_dlq")
        .unwrap();
    assert!(
        reason.rows[0][0]
            .as_str()
            .unwrap()
            .contains("maxReceiveCount (3) reached; last failure:"),
        "{reason:?}"
    );
    assert!(
        reason.rows[0][0].as_str().unwrap().contains("503"),
        "{reason:?}"
    );
    assert_eq!(reason.rows[0][1], Value::from(3));
}

#[test]
fn near_the_deadline_no_object_is_started() {
    let estate = Estate::new("local-deadline");
    let p = estate.pipeline("w.sqlite");
    let key = estate.manifest.tables[0].files[0].clone();
    let options = HandlerOptions {
        deadline: Some(std::time::Instant::now()),
        ..HandlerOptions::default()
    };
    let report = handle_batch(&p, p.warehouse.as_ref(), &event_for(&[&key]), options);
    assert_eq!(report.response.batch_item_failures.len(), 1);
    assert_eq!(count(&p, "SELECT count(*) FROM _ferry_loads"), 0);
}

#[test]
fn test_events_and_removals_are_acknowledged() {
    let estate = Estate::new("local-ack");
    let p = estate.pipeline("w.sqlite");
    let test =
        std::fs::read_to_string(repo_root().join("tests/fixtures/events/s3-test-event-body.json"))
            .unwrap();
    let removed =
        std::fs::read_to_string(repo_root().join("tests/fixtures/events/s3-removed-body.json"))
            .unwrap();
    let event = SqsEvent {
        records: vec![message("t", test), message("r", removed)],
    };
    let report = handle_batch(&p, p.warehouse.as_ref(), &event, HandlerOptions::default());
    assert!(report.response.batch_item_failures.is_empty() && report.dead_lettered.is_empty());
    assert_eq!(count(&p, "SELECT count(*) FROM _ferry_loads"), 0);
    // That removal was outside the mapped folders. One under a mapped table's folder (what a
    // DMS truncate does) is reported and recorded for the table; nothing is loaded or deleted.
    let first = ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    let key = estate.manifest.tables[0].files[0].clone();
    let body = s3_event_body("ferry-test", &key, 1, "x", "2026-11-26T00:00:00Z")
        .replace("ObjectCreated:Put", "ObjectRemoved:Delete");
    let event = SqsEvent {
        records: vec![message("gone", body)],
    };
    let report = handle_batch(&p, p.warehouse.as_ref(), &event, HandlerOptions::default());
    assert!(report.response.batch_item_failures.is_empty() && report.dead_lettered.is_empty());
    assert_eq!(
        report.removed,
        vec![(estate.manifest.tables[0].table.clone(), key)]
    );
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM _ferry_events WHERE kind = 'removed'"
        ),
        1
    );
    assert_eq!(
        count(&p, "SELECT count(*) FROM _ferry_loads") as u64,
        first.loaded
    );
    assert_eq!(mismatches(&p, &estate.manifest), Vec::<String>::new());
}

/// A warehouse whose load panics for objects whose key contains `marker` (a bug in one object's
/// path), and works for the rest.
struct Panicky {
    inner: Arc<SqliteWarehouse>,
    marker: String,
}

impl Warehouse for Panicky {
    fn table_schema(&self, t: &TableMapping) -> Result<Option<TableSchema>, PortError> {
        self.inner.table_schema(t)
    }
    fn load(&self, r: &LoadRequest<'_>) -> Result<LoadOutcome, PortError> {
        assert!(!r.object.key.contains(&self.marker), "injected panic");
        self.inner.load(r)
    }
    fn apply(&self, t: &TableMapping) -> Result<u64, PortError> {
        self.inner.apply(t)
    }
    fn record(&self, e: &StatusEvent) -> Result<(), PortError> {
        self.inner.record(e)
    }
    fn empty_replica(
        &self,
        source: &ferry_core::mapping::Source,
        t: &TableMapping,
        run_seq: &str,
    ) -> Result<(), PortError> {
        self.inner.empty_replica(source, t, run_seq)
    }
}

#[test]
fn a_panic_in_one_object_dead_letters_that_object_only() {
    let estate = Estate::new("local-panic");
    // Objects of two tables; the panic hits one object of the first.
    let keys: Vec<String> = estate
        .manifest
        .tables
        .iter()
        .filter(|t| t.enabled)
        .take(2)
        .flat_map(|t| t.files.iter().take(2).cloned())
        .collect();
    let db = Arc::new(SqliteWarehouse::open(&estate.dir.path().join("panic.sqlite")).unwrap());
    let p = Pipeline {
        catalog: Arc::new(estate.catalog.clone()),
        store: DirStore::new(estate.bucket()),
        warehouse: Panicky {
            inner: Arc::clone(&db),
            marker: keys[1].clone(),
        },
        work_dir: estate.dir.path().join("work"),
    };
    let event = SqsEvent {
        records: keys
            .iter()
            .enumerate()
            .map(|(i, k)| SqsMessage {
                message_id: format!("m{i}"),
                body: s3_event_body("ferry-test", k, 1, "x", "2026-11-26T00:00:00Z"),
                attributes: Default::default(),
                receipt_handle: String::new(),
                event_source_arn: String::new(),
            })
            .collect(),
    };
    let report = handle_batch(&p, db.as_ref(), &event, HandlerOptions::default());
    assert!(report.response.batch_item_failures.is_empty(), "{report:?}");
    assert_eq!(report.dead_lettered.len(), 1, "{:?}", report.dead_lettered);
    let (id, reason) = &report.dead_lettered[0];
    assert_eq!(id, "m1");
    assert!(
        reason.contains(&keys[1]) && reason.contains("panicked"),
        "{reason}"
    );
    assert_eq!(
        db.query("SELECT count(*) FROM _ferry_loads").unwrap().rows[0][0],
        Value::from(keys.len() as i64 - 1),
        "the rest of the batch loaded"
    );
}

#[test]
fn a_cdc_file_with_no_rows_loads_and_changes_nothing() {
    use arrow_schema::{DataType, Field, Schema};
    let estate = Estate::new("local-empty");
    let p = estate.pipeline("empty.sqlite");
    let first = ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    assert_eq!(first.dead_lettered, 0);
    // DMS writes a CDC file with zero rows (no row groups) after the others.
    let schema = Arc::new(Schema::new(vec![
        Field::new("dms_ts", DataType::Utf8, false),
        Field::new("Op", DataType::Utf8, true),
        Field::new("account_id", DataType::UInt64, true),
    ]));
    let mut buf = Vec::new();
    parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None)
        .unwrap()
        .close()
        .unwrap();
    let key = "lab/dms/lab/accounts/27-11-2026/20261127-235959000.parquet";
    let path = estate.bucket().join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, buf).unwrap();
    let second = ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    assert_eq!((second.loaded, second.dead_lettered), (1, 0), "{second:?}");
    assert_eq!(mismatches(&p, &estate.manifest), Vec::<String>::new());
}

#[test]
fn an_unusable_service_account_key_reaches_no_dead_letter_reason() {
    use ferry_bigquery::{Auth, BigQueryWarehouse, Client, ClientConfig, WarehouseOptions};
    let estate = Estate::new("local-bad-key");
    let rt = ferry_tests::runtime();
    // Structurally a PKCS#8 key (it passes cold start), but no key at all.
    let line = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDKEYMATERIAL0";
    let body: Vec<&str> = std::iter::repeat_n(line, 20).collect();
    let key = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        body.join("\n")
    );
    let doc = serde_json::json!({
        "type": "service_account", "project_id": "p", "private_key_id": "k", "private_key": key,
        "client_email": "ferry@p.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let auth = rt
        .block_on(async { Auth::from_credentials_json(&doc.to_string()) })
        .unwrap();
    let server = ferry_tests::bqserver::BqServer::start(None);
    let config = ClientConfig {
        base_url: server.url.clone(),
        max_tries: 1,
        ..ClientConfig::default()
    };
    let client = Client::new(config, auth, "acme-analytics").unwrap();
    let warehouse =
        BigQueryWarehouse::new(client, rt.handle().clone(), WarehouseOptions::default());
    let dlq = SqliteWarehouse::open(&estate.dir.path().join("bad-key.sqlite")).unwrap();
    let p = Pipeline {
        catalog: Arc::new(estate.catalog.clone()),
        store: DirStore::new(estate.bucket()),
        warehouse,
        work_dir: estate.dir.path().join("work"),
    };
    let key_name = estate.manifest.tables[0].files[0].clone();
    let event = SqsEvent {
        records: vec![SqsMessage {
            message_id: "m0".into(),
            body: s3_event_body("ferry-test", &key_name, 1, "x", "2026-11-26T00:00:00Z"),
            attributes: Default::default(),
            receipt_handle: String::new(),
            event_source_arn: String::new(),
        }],
    };
    let report =
        std::thread::spawn(move || handle_batch(&p, &dlq, &event, HandlerOptions::default()))
            .join()
            .unwrap();
    let reasons: Vec<&String> = report.dead_lettered.iter().map(|(_, r)| r).collect();
    assert_eq!(reasons.len(), 1, "{report:?}");
    assert!(reasons[0].contains("service_account"), "{}", reasons[0]);
    assert!(
        !reasons[0].contains("KEYMATERIAL"),
        "key material in {}",
        reasons[0]
    );
    assert!(!format!("{report:?}").contains("KEYMATERIAL"));
}

#[test]
fn rerunning_over_poison_objects_keeps_one_dead_letter_each() {
    let estate = Estate::new("local-dlq-once");
    let corrupt = "lab/dms/lab/accounts/20261126-235959000.parquet";
    std::fs::write(estate.bucket().join(corrupt), b"PAR1 not parquet at all").unwrap();
    let p = estate.pipeline("dlq-once.sqlite");
    for _ in 0..3 {
        let report = ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
        assert_eq!(report.dead_lettered, 1, "{report:?}");
    }
    let rows = p
        .warehouse
        .query("SELECT count(*), max(repeats) FROM _ferry_dlq")
        .unwrap()
        .rows;
    assert_eq!(
        rows[0],
        vec![Value::from(1), Value::from(3)],
        "one entry, counted three times"
    );
    // A new version of the object is a new entry.
    std::fs::write(
        estate.bucket().join(corrupt),
        b"PAR1 still not parquet, longer",
    )
    .unwrap();
    ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    assert_eq!(
        p.warehouse
            .query("SELECT count(*) FROM _ferry_dlq")
            .unwrap()
            .rows[0][0],
        Value::from(2)
    );
}

/// The committed mappings' estate (68 tables) with DMS's hard cases, under both full-load
/// timestamp settings, delivered newest first: every replica and change log must equal the
/// simulator's source. The estate must contain each case, so that none passes by absence.
#[test]
fn dms_hard_cases_under_both_full_load_timestamp_settings_match_the_source() {
    let catalog = Catalog::load_dir(&repo_root().join("mappings")).unwrap();
    for task_start in [false, true] {
        let dir = TempDir::new(if task_start {
            "hard-task-start"
        } else {
            "hard-transfer"
        });
        let opts = SimOptions {
            rows: 40,
            minutes: 6,
            changes_per_minute: 12,
            manifest_rows: 0,
            task_start_timestamps: task_start,
            ..SimOptions::default()
        };
        let manifest = simulate(&catalog, &opts, &dir.path().join("bucket")).unwrap();
        let with = |case: &str| {
            manifest
                .tables
                .iter()
                .filter(|t| t.cases.iter().any(|c| c.starts_with(case)))
                .count()
        };
        assert!(with("reload@") > 0 && with("truncate@") > 0, "{manifest:?}");
        assert!(manifest.tables.iter().any(|t| !t.removed.is_empty()));
        let p = dir_pipeline(dir.path(), &catalog, "w.sqlite");
        let mut bodies: Vec<String> = manifest
            .tables
            .iter()
            .filter(|t| t.enabled)
            .flat_map(|t| {
                let bucket = &catalog.source(&t.source).unwrap().bucket;
                t.files
                    .iter()
                    .map(|k| s3_event_body(bucket, k, 1, "x", "2026-11-26T00:00:00Z"))
            })
            .collect();
        bodies.reverse();
        for chunk in bodies.chunks(25) {
            let event = SqsEvent {
                records: chunk
                    .iter()
                    .enumerate()
                    .map(|(i, b)| message(&format!("m{i}"), b.clone()))
                    .collect(),
            };
            let report = handle_batch(&p, p.warehouse.as_ref(), &event, HandlerOptions::default());
            assert!(
                report.response.batch_item_failures.is_empty(),
                "{:?}",
                report.objects
            );
        }
        assert_eq!(
            mismatches(&p, &manifest),
            Vec::<String>::new(),
            "task_start_timestamps={task_start}"
        );
    }
}

/// A file whose JSON value reaches DMS's `LobMaxSize` (32 KB by default) loads; the warning is
/// recorded with the load and shows in the table's status, with the column named.
#[test]
fn a_lob_cut_by_dms_loads_and_shows_as_a_warning_in_status() {
    use arrow_array::{ArrayRef, StringArray, UInt64Array};
    let estate = Estate::new("local-lob");
    let p = estate.pipeline("lob.sqlite");
    ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    let cut = format!("{{\"notes\": \"{}", "n".repeat(32 * 1024 - 11));
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "dms_ts",
            Arc::new(StringArray::from(vec!["2026-11-27 23:59:58"])),
        ),
        ("Op", Arc::new(StringArray::from(vec!["I"]))),
        ("account_id", Arc::new(UInt64Array::from(vec![424_242u64]))),
        ("profile", Arc::new(StringArray::from(vec![cut.as_str()]))),
    ];
    write_parquet(
        &estate
            .bucket()
            .join("lab/dms/lab/accounts/27-11-2026/20261127-235959000.parquet"),
        columns,
    );
    let run = ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    assert_eq!((run.loaded, run.dead_lettered), (1, 0), "{run:?}");
    let status =
        ferry_local::status(&p.warehouse, &estate.catalog, ferry_pipeline::now_micros()).unwrap();
    let accounts = status
        .tables
        .iter()
        .find(|t| t.table == "lab.accounts")
        .unwrap();
    assert_eq!(accounts.warnings_24h, 1, "{accounts:?}");
    let warning = accounts.last_warning.as_deref().unwrap();
    assert!(
        warning
            .starts_with("lob_at_limit: 1 values of profile reach the task's LobMaxSize (32 KB)"),
        "{warning}"
    );
    let seats = status
        .tables
        .iter()
        .find(|t| t.table == "lab.seats")
        .unwrap();
    assert_eq!(
        (seats.warnings_24h, seats.last_warning.as_deref()),
        (0, None)
    );
}

/// `on_type_change: stop`: a file whose column changed type is not loaded and not
/// dead-lettered; it is skipped with code `type_changed` (it stays in the bucket for a
/// backfill), and the table keeps what it had.
#[test]
fn a_table_that_stops_on_type_changes_skips_the_changed_file_without_dead_lettering_it() {
    use arrow_array::{ArrayRef, Int64Array, StringArray, UInt64Array};
    let catalog =
        lab_catalog_with(|doc| doc["tables"]["lab.accounts"]["on_type_change"] = "stop".into());
    let dir = TempDir::new("local-stop");
    let write = |key: &str, level: ArrayRef| {
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "dms_ts",
                Arc::new(StringArray::from(vec!["2026-11-27 10:00:00"])),
            ),
            ("Op", Arc::new(StringArray::from(vec!["I"]))),
            ("account_id", Arc::new(UInt64Array::from(vec![1u64]))),
            ("level", level),
        ];
        write_parquet(&dir.path().join("bucket").join(key), columns);
    };
    write(
        "lab/dms/lab/accounts/27-11-2026/20261127-100000000.parquet",
        Arc::new(Int64Array::from(vec![3])),
    );
    let p = dir_pipeline(dir.path(), &catalog, "w.sqlite");
    let first = ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    assert_eq!((first.loaded, first.dead_lettered), (1, 0));
    write(
        "lab/dms/lab/accounts/27-11-2026/20261127-100100000.parquet",
        Arc::new(StringArray::from(vec!["gold"])),
    );
    let second = ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    assert_eq!((second.loaded, second.dead_lettered), (0, 0), "{second:?}");
    let skipped = p
        .warehouse
        .query("SELECT code, message FROM _ferry_events WHERE kind = 'skipped'")
        .unwrap();
    assert_eq!(skipped.rows.len(), 1, "{skipped:?}");
    assert_eq!(skipped.rows[0][0], Value::String("type_changed".into()));
    let message = skipped.rows[0][1].as_str().unwrap();
    assert!(
        message.contains("INT64") && message.contains("STRING") && message.contains("backfill"),
        "{message}"
    );
    assert_eq!(
        count(&p, "SELECT count(*) FROM \"lab.accounts\" WHERE level = 3"),
        1,
        "the table keeps what it had"
    );
}

/// `on_truncate: empty`: removing a table's full-load file (what DMS does on a source
/// TRUNCATE) empties its replica as of the removal; a change DMS writes afterwards applies,
/// and a late file from before the truncate brings nothing back. Another table is untouched.
#[test]
fn a_truncate_empties_the_replica_when_the_table_asks_for_it() {
    use arrow_array::{ArrayRef, StringArray, UInt64Array};
    let catalog =
        lab_catalog_with(|doc| doc["tables"]["lab.accounts"]["on_truncate"] = "empty".into());
    let estate = Estate::new("local-truncate");
    let p = Pipeline {
        catalog: Arc::new(catalog),
        store: DirStore::new(estate.bucket()),
        warehouse: Arc::new(SqliteWarehouse::open(&estate.dir.path().join("t.sqlite")).unwrap()),
        work_dir: estate.dir.path().join("work"),
    };
    ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    let accounts = |p: &LocalPipeline| count(p, "SELECT count(*) FROM \"lab.accounts\"");
    let seats = count(&p, "SELECT count(*) FROM \"lab.seats\"");
    assert!(accounts(&p) > 0 && seats > 0);
    // The truncate: DMS deletes the folder, LOAD00000001 with it, after every file so far.
    let removal = |key: &str| {
        let body = s3_event_body("ferry-test", key, 1, "x", "2026-11-27T12:00:00.000Z")
            .replace("ObjectCreated:Put", "ObjectRemoved:Delete");
        SqsEvent {
            records: vec![message("truncate", body)],
        }
    };
    let report = handle_batch(
        &p,
        p.warehouse.as_ref(),
        &removal("lab/dms/lab/accounts/LOAD00000001.parquet"),
        HandlerOptions::default(),
    );
    assert!(report.response.batch_item_failures.is_empty());
    assert_eq!(accounts(&p), 0, "the replica was emptied");
    assert_eq!(count(&p, "SELECT count(*) FROM \"lab.seats\""), seats);
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM _ferry_events WHERE code = 'replica_emptied'"
        ),
        1
    );
    // A CDC file DMS writes after the truncate applies; a file from before it, delivered late,
    // does not bring its rows back.
    let write = |key: &str, ts: &str, id: u64| {
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("dms_ts", Arc::new(StringArray::from(vec![ts]))),
            ("Op", Arc::new(StringArray::from(vec!["I"]))),
            ("account_id", Arc::new(UInt64Array::from(vec![id]))),
        ];
        write_parquet(&estate.bucket().join(key), columns);
    };
    let after = "lab/dms/lab/accounts/27-11-2026/20261127-120100000.parquet";
    let before = "lab/dms/lab/accounts/27-11-2026/20261127-115900000.parquet";
    write(after, "2026-11-27 12:00:30", 77);
    write(before, "2026-11-27 11:58:30", 99);
    let report = handle_batch(
        &p,
        p.warehouse.as_ref(),
        &event_for(&[after, before]),
        HandlerOptions::default(),
    );
    assert!(
        report.response.batch_item_failures.is_empty(),
        "{:?}",
        report.objects
    );
    let rows = p
        .warehouse
        .query("SELECT CAST(account_id AS TEXT) FROM \"lab.accounts\"")
        .unwrap();
    assert_eq!(rows.rows, vec![vec![Value::String("77".into())]]);
}

/// A primary-key update at the source (`UPDATE ... SET id = ...`): DMS writes only the new
/// key, so the old one stays in the replica, and the replica differs from the source by
/// exactly those rows. ferry cannot see the old key in the file; it reports the updates of
/// keys the replica never held, in status.
#[test]
fn primary_key_updates_are_reported_as_updates_of_unknown_keys() {
    let dir = TempDir::new("local-pk");
    let catalog = lab_catalog();
    let opts = SimOptions {
        rows: 60,
        minutes: 4,
        changes_per_minute: 30,
        manifest_rows: 0,
        pk_updates: true,
        // No reload or truncate to remove the old keys, no full load overlapping the moves.
        hard_cases: false,
        ..SimOptions::default()
    };
    let manifest = simulate(&catalog, &opts, &dir.path().join("bucket")).unwrap();
    let moved = case_total(
        manifest.tables.iter().filter(|t| t.mode == "replica"),
        "pk_updates:",
    );
    assert!(moved > 0, "{manifest:?}");
    let p = dir_pipeline(dir.path(), &catalog, "w.sqlite");
    ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    // The old keys stay: the replicas hold one row more than the source per moved key.
    let ghosts: i64 = manifest
        .tables
        .iter()
        .filter(|t| t.mode == "replica")
        .map(|t| {
            let target = t.target.split_once('.').unwrap().1;
            count(
                &p,
                &format!("SELECT count(*) FROM \"{target}\" WHERE NOT _ferry_deleted"),
            ) - t.expected_rows as i64
        })
        .sum();
    assert_eq!(ghosts as u64, moved, "{:?}", mismatches(&p, &manifest));
    let status = ferry_local::status(&p.warehouse, &catalog, ferry_pipeline::now_micros()).unwrap();
    let reported: i64 = p
        .warehouse
        .query(
            "SELECT coalesce(sum(rows), 0) FROM _ferry_events WHERE code = 'update_of_unknown_key'",
        )
        .unwrap()
        .rows[0][0]
        .as_i64()
        .unwrap();
    // Reported where the file shows it (a moved key deleted in the same apply does not), and
    // never an update of a key the replica held.
    assert!(
        reported > 0 && reported as u64 <= moved,
        "{reported} of {moved}"
    );
    let warned = status.tables.iter().filter(|t| t.warnings_24h > 0).count();
    assert!(warned > 0, "{status:?}");
    assert!(
        status
            .tables
            .iter()
            .filter_map(|t| t.last_warning.as_deref())
            .any(|w| w.starts_with("update_of_unknown_key:")),
        "{status:?}"
    );
}

/// JSON documents longer than the task's `LobMaxSize`: DMS cuts them there, silently. Every
/// file still loads, and every cut value is counted in the loads' warnings; the replica cannot
/// hold what DMS never wrote, so the tables differ from the source until a reload with a
/// larger limit.
#[test]
fn lob_values_dms_cut_load_and_are_all_counted() {
    let dir = TempDir::new("local-lob-cut");
    let catalog = lab_catalog();
    let opts = SimOptions {
        rows: 80,
        minutes: 3,
        changes_per_minute: 30,
        manifest_rows: 0,
        lob_cut: true,
        hard_cases: false,
        ..SimOptions::default()
    };
    let manifest = simulate(&catalog, &opts, &dir.path().join("bucket")).unwrap();
    let cut = case_total(manifest.tables.iter(), "lob_cuts:");
    assert!(cut > 0, "{manifest:?}");
    let p = dir_pipeline(dir.path(), &catalog, "w.sqlite");
    let run = ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
    assert_eq!(run.dead_lettered, 0);
    let warnings = p
        .warehouse
        .query("SELECT warnings FROM _ferry_events WHERE kind = 'loaded' AND warnings IS NOT NULL")
        .unwrap();
    let counted: u64 = warnings
        .rows
        .iter()
        .filter_map(|r| r[0].as_str())
        .filter_map(|w| w.strip_prefix("lob_at_limit: "))
        .map(|w| w.split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, cut, "{warnings:?}");
    assert!(
        !mismatches(&p, &manifest).is_empty(),
        "the cut rows differ from the source"
    );
}

/// Rows inserted while a full load runs are read past the scan's window; the changes DMS cached
/// during the load must still be written after every LOAD file (found by the README's tour:
/// 50 rows, 3 minutes, seed 1, where `slots_account.withdrawals` kept a full-load row over
/// the newer change).
#[test]
fn changes_cached_during_a_full_load_are_written_after_it_whatever_the_inserts() {
    let catalog = Catalog::load_dir(&repo_root().join("mappings")).unwrap();
    for seed in 1..=3 {
        let dir = TempDir::new("local-cached-after-load");
        let opts = SimOptions {
            seed,
            rows: 50,
            minutes: 3,
            only: vec![
                "slots_account.withdrawals".into(),
                "slots_account.players".into(),
            ],
            ..SimOptions::default()
        };
        let manifest = simulate(&catalog, &opts, &dir.path().join("bucket")).unwrap();
        let p = dir_pipeline(dir.path(), &catalog, "w.sqlite");
        ferry_local::run(&p, &RunOptions::default(), |_| {}).unwrap();
        assert_eq!(
            mismatches(&p, &manifest),
            Vec::<String>::new(),
            "seed {seed}"
        );
    }
}
