//! The BigQuery writer against ferry's protocol-faithful BigQuery test server: exactly-once
//! loads under every failure the load-job contract allows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use ferry_bigquery::warehouse::{BigQueryWarehouse, WarehouseOptions};
use ferry_bigquery::{Auth, Client, ClientConfig, ErrorClass};
use ferry_core::schema::{BqField, FieldMode, OpCounts, TableSchema, meta};
use ferry_core::{Catalog, plan_object};
use ferry_pipeline::ports::{Converted, LoadOutcome, LoadRequest, Warehouse};
use ferry_tests::TempDir;
use ferry_tests::bqserver::{BqServer, Fault, Route};

const MAPPING: &str = r#"{
  "source": { "name": "games", "bucket": "dms-bucket", "folder": "cdc" },
  "bigquery": { "project": "ferry-test", "dataset": "games", "location": "asia-northeast3" },
  "tables": { "casino.bets": { "primary_key": ["id"] } }
}"#;

struct Fixture {
    _dir: TempDir,
    catalog: Catalog,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let dir = TempDir::new("bq-mapping");
    std::fs::write(dir.path().join("games.json"), MAPPING).unwrap();
    let catalog = Catalog::load_dir(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    Fixture {
        _dir: dir,
        catalog,
        rt,
    }
}

fn fast_config(url: &str) -> ClientConfig {
    ClientConfig {
        base_url: url.to_owned(),
        max_tries: 4,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        chunk_size: 256 << 10,
        request_timeout: Duration::from_secs(10),
    }
}

fn warehouse(f: &Fixture, server: &BqServer) -> BigQueryWarehouse {
    let client = Client::new(fast_config(&server.url), Auth::None, "ferry-test").unwrap();
    BigQueryWarehouse::new(
        client,
        f.rt.handle().clone(),
        WarehouseOptions {
            max_attempts: 3,
            max_wait: Duration::from_secs(10),
        },
    )
}

fn schema() -> TableSchema {
    let mut fields = meta::fields();
    fields.push(BqField {
        name: "id".into(),
        bq_type: ferry_core::bqtype::BqType::Int64,
        mode: FieldMode::Nullable,
        description: None,
    });
    TableSchema { fields }
}

/// Loads `data` as the object `key` (etag `etag`) through the `Warehouse` port.
fn load(
    f: &Fixture,
    w: &BigQueryWarehouse,
    key: &str,
    etag: &str,
    file: &Converted,
) -> Result<LoadOutcome, ferry_pipeline::ports::PortError> {
    let plan = plan_object(&f.catalog, Some("dms-bucket"), key, Some(etag));
    let (source, table, object) = (
        plan.source.unwrap(),
        plan.table.unwrap(),
        plan.object.unwrap(),
    );
    let job_id =
        ferry_core::JobId::for_object("dms-bucket", &object, Some(etag), &table.changelog, 0);
    let schema = schema();
    w.load(&LoadRequest {
        job_id: &job_id,
        source,
        table,
        object: &object,
        bucket: "dms-bucket",
        schema: &schema,
        added: &[],
        file,
        rows: 1,
        ops: OpCounts::default(),
        commit_ts_min: Some(1),
        commit_ts_max: Some(2),
    })
}

fn key(n: u32) -> String {
    format!("cdc/casino/bets/20261126-1200{n:02}000.parquet")
}

fn bytes(n: u32) -> Converted {
    Converted::InMemory(Bytes::from(format!("PAR1 file {n} PAR1").into_bytes()))
}

/// The data of every job that succeeded, sorted: what BigQuery holds.
fn held(server: &BqServer) -> Vec<Vec<u8>> {
    let st = server.state.lock().unwrap();
    let mut v: Vec<Vec<u8>> = st.succeeded().iter().map(|j| j.data.clone()).collect();
    v.sort();
    v
}

fn data_of(c: &Converted) -> Vec<u8> {
    match c {
        Converted::InMemory(b) => b.to_vec(),
        Converted::OnDisk(p) => std::fs::read(p).unwrap(),
    }
}

#[test]
fn test_server_load_then_redelivery_is_recognised_by_409() {
    let f = fixture();
    let server = BqServer::start(None);
    let w = warehouse(&f, &server);
    let first = load(&f, &w, &key(1), "e1", &bytes(1)).unwrap();
    let LoadOutcome::Loaded { job_id } = first else {
        panic!("{first:?}")
    };
    assert!(job_id.ends_with("_a0"), "{job_id}");
    let again = load(&f, &w, &key(1), "e1", &bytes(1)).unwrap();
    assert_eq!(again, LoadOutcome::AlreadyLoaded { job_id });
    assert_eq!(held(&server), vec![data_of(&bytes(1))]);
    let st = server.state.lock().unwrap();
    assert!(
        st.log.iter().any(|(_, _, s)| *s == 409),
        "the second insert got 409"
    );
    // A new version of the object (new etag) is a new load.
    drop(st);
    let v2 = load(&f, &w, &key(1), "e2", &bytes(1)).unwrap();
    assert!(matches!(v2, LoadOutcome::Loaded { .. }));
    assert_eq!(held(&server).len(), 2);
}

#[test]
fn test_server_transient_http_errors_are_retried_with_the_same_id() {
    let f = fixture();
    let server = BqServer::start(None);
    server.inject([
        Fault::Http(Route::Insert, 503, "backendError"),
        Fault::Http(Route::Insert, 429, "rateLimitExceeded"),
        Fault::Malformed(Route::GetJob),
    ]);
    server.state.lock().unwrap().running_polls = 2;
    let w = warehouse(&f, &server);
    let out = load(&f, &w, &key(2), "e", &bytes(2)).unwrap();
    assert!(
        matches!(out, LoadOutcome::Loaded { ref job_id } if job_id.ends_with("_a0")),
        "{out:?}"
    );
    assert_eq!(server.faults_left(), 0);
    assert_eq!(held(&server), vec![data_of(&bytes(2))]);
    assert_eq!(w.jobs_started(), 1, "HTTP retries reuse the job id");
}

#[test]
fn test_server_lost_response_after_insert_is_not_loaded_twice() {
    let f = fixture();
    let server = BqServer::start(None);
    // BigQuery created the job, but the answer never arrived: the retry gets 409 and looks it up.
    server.inject([Fault::DropAfter(Route::Insert)]);
    let w = warehouse(&f, &server);
    let out = load(&f, &w, &key(3), "e", &bytes(3)).unwrap();
    assert!(matches!(out, LoadOutcome::AlreadyLoaded { .. }), "{out:?}");
    assert_eq!(held(&server), vec![data_of(&bytes(3))]);
    assert_eq!(server.state.lock().unwrap().jobs.len(), 1);
}

#[test]
fn test_server_failed_job_is_retried_under_the_next_attempt_id() {
    let f = fixture();
    let server = BqServer::start(None);
    server.inject([Fault::JobFails("backendError")]);
    let w = warehouse(&f, &server);
    let out = load(&f, &w, &key(4), "e", &bytes(4)).unwrap();
    let LoadOutcome::Loaded { job_id } = out else {
        panic!("{out:?}")
    };
    assert!(job_id.ends_with("_a1"), "{job_id}");
    let st = server.state.lock().unwrap();
    assert_eq!(st.jobs.len(), 2);
    assert_eq!(st.jobs[0].error, Some("backendError"));
    drop(st);
    assert_eq!(held(&server), vec![data_of(&bytes(4))]);
    // A redelivery walks the chain: a0 failed, a1 done: already loaded, nothing new.
    let again = load(&f, &w, &key(4), "e", &bytes(4)).unwrap();
    assert_eq!(again, LoadOutcome::AlreadyLoaded { job_id });
    assert_eq!(server.state.lock().unwrap().jobs.len(), 2);
}

#[test]
fn test_server_permanent_job_error_is_reported_then_a_redrive_loads_once() {
    let f = fixture();
    let server = BqServer::start(None);
    server.inject([Fault::JobFails("invalid")]);
    let w = warehouse(&f, &server);
    let err = load(&f, &w, &key(5), "e", &bytes(5)).unwrap_err();
    assert!(!err.retryable, "{err:?}");
    assert!(
        err.message.contains("invalid") && err.message.contains("_a0"),
        "{}",
        err.message
    );
    assert!(held(&server).is_empty(), "a failed job wrote nothing");
    assert_eq!(
        server.state.lock().unwrap().jobs.len(),
        1,
        "a permanent error is not retried"
    );
    // After the cause is fixed, ops redrive the message: the next attempt id loads it.
    let out = load(&f, &w, &key(5), "e", &bytes(5)).unwrap();
    assert!(
        matches!(out, LoadOutcome::Loaded { ref job_id } if job_id.ends_with("_a1")),
        "{out:?}"
    );
    assert_eq!(held(&server), vec![data_of(&bytes(5))]);
}

#[test]
fn test_server_daily_quota_is_retry_later_and_gives_up_after_max_attempts() {
    let f = fixture();
    let server = BqServer::start(None);
    server.inject([Fault::JobFails("quotaExceeded")]);
    let w = warehouse(&f, &server);
    let err = load(&f, &w, &key(6), "e", &bytes(6)).unwrap_err();
    assert!(
        err.retryable && err.message.contains("retry later"),
        "{}",
        err.message
    );
    server.inject((0..3).map(|_| Fault::JobFails("backendError")));
    let err = load(&f, &w, &key(7), "e", &bytes(7)).unwrap_err();
    assert!(err.retryable, "{err:?}");
    assert_eq!(
        w.jobs_started(),
        1 + 3,
        "max_attempts bounds the jobs one call starts"
    );
    assert!(held(&server).is_empty());
    // The next delivery continues the chain after the failed attempts.
    let out = load(&f, &w, &key(7), "e", &bytes(7)).unwrap();
    assert!(
        matches!(out, LoadOutcome::Loaded { ref job_id } if job_id.ends_with("_a3")),
        "{out:?}"
    );
}

#[test]
fn test_server_permanent_http_error_is_not_retried() {
    let f = fixture();
    let server = BqServer::start(None);
    server.inject([Fault::Http(Route::Insert, 403, "accessDenied")]);
    let w = warehouse(&f, &server);
    let err = load(&f, &w, &key(8), "e", &bytes(8)).unwrap_err();
    assert!(!err.retryable);
    assert!(
        err.message.contains("HTTP 403 accessDenied"),
        "{}",
        err.message
    );
    assert!(server.state.lock().unwrap().jobs.is_empty());
}

#[test]
fn test_server_resumable_upload_streams_chunks_and_resumes_after_failures() {
    let f = fixture();
    let server = BqServer::start(None);
    let dir = TempDir::new("bq-resumable");
    let path = dir.path().join("big.parquet");
    // 1 MiB + a tail: four full 256 KiB chunks and a short last one.
    let data: Vec<u8> = (0..(1u32 << 20) + 12_345)
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    server.inject([
        Fault::Http(Route::Chunk, 503, "backendError"),
        Fault::DropAfter(Route::Chunk),
    ]);
    let w = warehouse(&f, &server);
    let file = Converted::OnDisk(path);
    let out = load(&f, &w, &key(9), "e", &file).unwrap();
    assert!(matches!(out, LoadOutcome::Loaded { .. }), "{out:?}");
    assert_eq!(
        held(&server),
        vec![data.clone()],
        "the job holds the file exactly"
    );
    let st = server.state.lock().unwrap();
    assert!(st.chunks.iter().all(|&c| c <= 256 << 10), "{:?}", st.chunks);
    assert!(st.chunks.len() >= 5, "{:?}", st.chunks);
    drop(st);
    // Redelivered: the resumable upload completes and BigQuery answers 409.
    let again = load(&f, &w, &key(9), "e", &file).unwrap();
    assert!(
        matches!(again, LoadOutcome::AlreadyLoaded { .. }),
        "{again:?}"
    );
    assert_eq!(held(&server).len(), 1);
}

#[test]
fn test_server_new_tables_get_the_files_columns() {
    let f = fixture();
    let server = BqServer::start(None);
    let w = warehouse(&f, &server);
    load(&f, &w, &key(10), "e", &bytes(10)).unwrap();
    let queries = server.state.lock().unwrap().queries.clone();
    assert!(
        queries
            .iter()
            .any(|q| q
                .starts_with("CREATE TABLE IF NOT EXISTS `ferry-test`.`games`.`bets_changelog`")),
        "{queries:#?}"
    );
    // The server's table has no columns: every column of the file is added, NULLABLE.
    assert!(
        queries
            .iter()
            .any(|q| q.contains("ADD COLUMN IF NOT EXISTS `id` INT64")),
        "{queries:#?}"
    );
    assert!(
        queries
            .iter()
            .any(|q| q.contains("CREATE TABLE IF NOT EXISTS `ferry-test`.`games`.`bets`")),
        "replica: {queries:#?}"
    );
    assert!(
        queries.iter().any(|q| q.contains("bets__ferry_tombstones")),
        "{queries:#?}"
    );
}

/// Many objects, random faults, random redeliveries: every object ends loaded exactly once.
#[test]
fn test_server_no_duplicate_and_no_loss_under_random_faults() {
    let f = fixture();
    let server = BqServer::start(None);
    let w = warehouse(&f, &server);
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let objects = 24u32;
    let mut done = vec![false; objects as usize];
    let mut deliveries = 0;
    let mut last_error = None;
    while done.iter().any(|d| !d) || deliveries < 80 {
        deliveries += 1;
        assert!(
            deliveries < 2_000,
            "no progress: {done:?}, faults left {}, last {last_error:?}",
            server.faults_left()
        );
        let n = (next() % u64::from(objects)) as u32;
        let fault = match next() % 9 {
            0 => Some(Fault::Http(Route::Insert, 503, "backendError")),
            1 => Some(Fault::DropAfter(Route::Insert)),
            2 => Some(Fault::JobFails("backendError")),
            3 => Some(Fault::Malformed(Route::GetJob)),
            4 => Some(Fault::Http(Route::GetJob, 500, "internalError")),
            5 => Some(Fault::JobFails("rateLimitExceeded")),
            _ => None,
        };
        server.inject(fault);
        match load(&f, &w, &key(n), "e", &bytes(n)) {
            Ok(_) => done[n as usize] = true,
            Err(e) => {
                assert!(e.retryable, "only retryable faults were injected: {e:?}");
                last_error = Some(e);
            }
        }
        // A fault belongs to its delivery (a delivery that found the object loaded creates no
        // job for a JobFails fault to hit).
        server.clear_faults();
    }
    let held = held(&server);
    let mut expected: Vec<Vec<u8>> = (0..objects).map(|n| data_of(&bytes(n))).collect();
    expected.sort();
    assert_eq!(held, expected, "each object's rows are held exactly once");
}

#[test]
fn error_classes_are_exposed_for_callers() {
    // The handler relies on this mapping: retry-later counts as retryable for SQS.
    let e =
        ferry_bigquery::BqError::from_response("x", Some(403), Some("quotaExceeded".into()), "m");
    assert_eq!(e.class, ErrorClass::RetryLater);
    assert!(e.is_retryable());
}
