//! The BigQuery writer against ferry's strict BigQuery test server: exactly-once loads under every
//! failure the load-job contract allows, and requests BigQuery would refuse, refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
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
    let rt = ferry_tests::runtime();
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

fn options() -> WarehouseOptions {
    WarehouseOptions {
        max_attempts: 3,
        max_wait: Duration::from_secs(10),
        ..WarehouseOptions::default()
    }
}

fn warehouse(f: &Fixture, server: &BqServer) -> BigQueryWarehouse {
    warehouse_with(f, server, options())
}

fn warehouse_with(f: &Fixture, server: &BqServer, options: WarehouseOptions) -> BigQueryWarehouse {
    let client = Client::new(fast_config(&server.url), Auth::None, "ferry-test").unwrap();
    BigQueryWarehouse::new(client, f.rt.handle().clone(), options)
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
    load_with(f, w, key, etag, file, &schema())
}

/// [`load`] with the file's schema.
fn load_with(
    f: &Fixture,
    w: &BigQueryWarehouse,
    key: &str,
    etag: &str,
    file: &Converted,
    schema: &TableSchema,
) -> Result<LoadOutcome, ferry_pipeline::ports::PortError> {
    let plan = plan_object(&f.catalog, Some("dms-bucket"), key, Some(etag));
    let (source, table, object) = (
        plan.source.unwrap(),
        plan.table.unwrap(),
        plan.object.unwrap(),
    );
    let job_id =
        ferry_core::JobId::for_object("dms-bucket", &object, Some(etag), &table.changelog, 0);
    let file_seq = object.file_seq(None);
    w.load(&LoadRequest {
        job_id: &job_id,
        source,
        table,
        object: &object,
        bucket: "dms-bucket",
        file_seq: &file_seq,
        schema,
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

/// A converted file standing for object `n` (one row).
fn bytes(n: u32) -> Converted {
    parquet_of(n, 1)
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
fn test_server_load_then_redelivery_is_recognised_by_its_job_id() {
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
    // The redelivery looked the object's job up and inserted nothing (a retried insert whose
    // first answer was lost gets 409 instead: see the lost-response test).
    let uploads = st
        .log
        .iter()
        .filter(|(_, path, _)| path.starts_with("/upload/"))
        .count();
    assert_eq!(uploads, 1, "{:?}", st.log);
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
    // Over 1 MiB: at least four full 256 KiB chunks and a short last one.
    let data = parquet_rows(9, 150_000, &schema());
    assert!(data.len() > 1 << 20, "{}", data.len());
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
fn test_server_new_tables_get_the_files_columns_and_one_alter_per_table_for_added_ones() {
    let f = fixture();
    let server = BqServer::start(None);
    let w = warehouse(&f, &server);
    load(&f, &w, &key(10), "e", &bytes(10)).unwrap();
    let queries = server.state.lock().unwrap().queries.clone();
    assert!(
        queries.iter().any(|q| q
            .starts_with("CREATE TABLE IF NOT EXISTS `ferry-test`.`games`.`bets_changelog`")
            && q.contains("`id` INT64")),
        "{queries:#?}"
    );
    assert!(
        queries
            .iter()
            .any(|q| q.starts_with("CREATE TABLE IF NOT EXISTS `ferry-test`.`games`.`bets` (")),
        "replica: {queries:#?}"
    );
    // A later file brings two columns: one ALTER per table adds both.
    let mut wider = schema();
    for (name, t) in [
        ("vip", ferry_core::bqtype::BqType::Bool),
        ("level", ferry_core::bqtype::BqType::Int64),
    ] {
        wider.fields.push(BqField {
            name: name.into(),
            bq_type: t,
            mode: FieldMode::Nullable,
            description: None,
        });
    }
    let file = Converted::InMemory(Bytes::from(parquet_rows(11, 2, &wider)));
    load_with(&f, &w, &key(11), "e", &file, &wider).unwrap();
    let st = server.state.lock().unwrap();
    let alters: Vec<&String> = st
        .queries
        .iter()
        .filter(|q| q.starts_with("ALTER TABLE"))
        .collect();
    assert_eq!(alters.len(), 2, "{alters:#?}");
    assert!(
        alters
            .iter()
            .all(|q| q.contains("`vip` BOOL") && q.contains("`level` INT64")),
        "{alters:#?}"
    );
    let table = &st.tables["ferry-test.games.bets_changelog"];
    assert!(table.column("level").is_some() && table.column("vip").is_some());
    assert!(st.refusals.is_empty(), "{:?}", st.refusals);
    assert_eq!(st.succeeded().len(), 2);
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

// ---- the load-job budget: several objects of a table in one load job, still exactly once ----

/// A converted file standing for object `n`: `rows` rows of [`schema`] naming their file.
fn parquet_of(n: u32, rows: usize) -> Converted {
    Converted::InMemory(Bytes::from(parquet_rows(n, rows, &schema())))
}

/// The parquet bytes of `rows` rows of `schema` for object `n` (`_ferry_file` names it).
fn parquet_rows(n: u32, rows: usize, schema: &TableSchema) -> Vec<u8> {
    use arrow_array::{ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow_schema::{DataType, Field, Schema, TimeUnit};
    use ferry_core::bqtype::BqType;
    use std::sync::Arc;
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for f in &schema.fields {
        let required = f.mode == FieldMode::Required;
        let (ty, col): (DataType, ArrayRef) = match f.bq_type {
            BqType::Int64 => (
                DataType::Int64,
                Arc::new(Int64Array::from_iter_values(
                    (0..rows as i64).map(|i| i + 1000 * i64::from(n)),
                )),
            ),
            BqType::Bool => (
                DataType::Boolean,
                Arc::new(BooleanArray::from(vec![true; rows])),
            ),
            BqType::Timestamp => (
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                Arc::new(TimestampMicrosecondArray::from(vec![1_i64; rows]).with_timezone("UTC")),
            ),
            _ => {
                let v = if f.name == meta::FILE {
                    key(n)
                } else if f.name == meta::OP {
                    "INSERT".to_owned()
                } else {
                    format!("{}-{n}", f.name)
                };
                (DataType::Utf8, Arc::new(StringArray::from(vec![v; rows])))
            }
        };
        fields.push(Field::new(&f.name, ty, !required));
        columns.push(col);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = arrow_array::RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf
}

/// Rows per object in what BigQuery holds: object key -> [(job id, rows)].
fn held_rows(server: &BqServer) -> std::collections::BTreeMap<String, Vec<(String, usize)>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let st = server.state.lock().unwrap();
    let mut out: std::collections::BTreeMap<String, Vec<(String, usize)>> = Default::default();
    for job in st.succeeded() {
        let reader = SerializedFileReader::new(Bytes::from(job.data.clone())).unwrap();
        let mut per: std::collections::BTreeMap<String, usize> = Default::default();
        for row in reader.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            let (_, v) = row
                .get_column_iter()
                .find(|(name, _)| name.as_str() == meta::FILE)
                .unwrap();
            *per.entry(v.to_string().trim_matches('"').to_owned())
                .or_default() += 1;
        }
        for (k, rows) in per {
            out.entry(k).or_default().push((job.id.clone(), rows));
        }
    }
    out
}

fn load_many(
    f: &Fixture,
    w: &BigQueryWarehouse,
    objects: &[(u32, &Converted)],
) -> Vec<Result<LoadOutcome, ferry_pipeline::ports::PortError>> {
    let schema = schema();
    let prepared: Vec<_> = objects
        .iter()
        .map(|(n, file)| {
            let plan = plan_object(&f.catalog, Some("dms-bucket"), &key(*n), Some("e"));
            let (source, table, object) = (
                plan.source.unwrap(),
                plan.table.unwrap(),
                plan.object.unwrap(),
            );
            let job_id = ferry_core::JobId::for_object(
                "dms-bucket",
                &object,
                Some("e"),
                &table.changelog,
                0,
            );
            let file_seq = object.file_seq(None);
            (source, table, object, job_id, *file, file_seq)
        })
        .collect();
    let requests: Vec<LoadRequest<'_>> = prepared
        .iter()
        .map(
            |(source, table, object, job_id, file, file_seq)| LoadRequest {
                job_id,
                source,
                table,
                object,
                bucket: "dms-bucket",
                file_seq,
                schema: &schema,
                added: &[],
                file,
                rows: 3,
                ops: OpCounts::default(),
                commit_ts_min: Some(1),
                commit_ts_max: Some(2),
            },
        )
        .collect();
    w.load_group(&requests)
}

fn always_combine() -> WarehouseOptions {
    WarehouseOptions {
        combine_from: 0.0,
        ..options()
    }
}

#[test]
fn test_server_hot_table_loads_a_batch_in_one_job_and_redeliveries_follow_the_claims() {
    let f = fixture();
    let server = BqServer::start(None);
    let hot = warehouse_with(&f, &server, always_combine());
    let files: Vec<Converted> = (0..4).map(|n| parquet_of(n, 3)).collect();
    let batch: Vec<(u32, &Converted)> = (0..4).map(|n| (n, &files[n as usize])).collect();
    let results = load_many(&f, &hot, &batch);
    let group = match &results[0] {
        Ok(LoadOutcome::Loaded { job_id }) => job_id.clone(),
        other => panic!("{other:?}"),
    };
    assert!(group.starts_with("ferry_group_"), "{group}");
    assert!(
        results.iter().all(|r| r
            == &Ok(LoadOutcome::Loaded {
                job_id: group.clone()
            })),
        "{results:?}"
    );
    assert_eq!(
        server.state.lock().unwrap().load_jobs(),
        1,
        "four objects, one load job"
    );
    let rows = held_rows(&server);
    assert_eq!(rows.len(), 4);
    assert!(
        rows.values().all(|v| v.len() == 1 && v[0].1 == 3),
        "{rows:?}"
    );

    // Object 2 redelivered alone to a cool table: its a0 id is a claim naming the group load.
    let cool = warehouse(&f, &server);
    let again = load(&f, &cool, &key(2), "e", &files[2]).unwrap();
    assert_eq!(
        again,
        LoadOutcome::AlreadyLoaded {
            job_id: group.clone()
        }
    );
    // Objects 1 and 3 in another batch with a new object 9: only 9 is loaded.
    let nine = parquet_of(9, 3);
    let results = load_many(&f, &hot, &[(1, &files[1]), (9, &nine), (3, &files[3])]);
    assert_eq!(
        results[0],
        Ok(LoadOutcome::AlreadyLoaded {
            job_id: group.clone()
        })
    );
    assert_eq!(
        results[2],
        Ok(LoadOutcome::AlreadyLoaded {
            job_id: group.clone()
        })
    );
    assert!(
        matches!(&results[1], Ok(LoadOutcome::Loaded { job_id }) if job_id.ends_with("_a0")),
        "{results:?}"
    );
    assert_eq!(server.state.lock().unwrap().load_jobs(), 2);
    let rows = held_rows(&server);
    assert_eq!(rows.len(), 5);
    assert!(
        rows.values().all(|v| v.len() == 1),
        "no object twice: {rows:?}"
    );
}

#[test]
fn test_server_failed_group_load_is_retried_under_the_members_next_ids() {
    let f = fixture();
    let server = BqServer::start(None);
    let hot = warehouse_with(&f, &server, always_combine());
    let files: Vec<Converted> = (0..3).map(|n| parquet_of(n, 2)).collect();
    server.inject([Fault::JobFails("backendError")]);
    let batch: Vec<(u32, &Converted)> = (0..3).map(|n| (n, &files[n as usize])).collect();
    let results = load_many(&f, &hot, &batch);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(LoadOutcome::Loaded { .. }))),
        "{results:?}"
    );
    let st = server.state.lock().unwrap();
    assert_eq!(st.load_jobs(), 2, "the failed group load and its retry");
    // The second round claimed each member's a1 id.
    assert!(
        st.jobs
            .iter()
            .any(|j| j.kind == "QUERY" && j.id.ends_with("_a1"))
    );
    drop(st);
    let rows = held_rows(&server);
    assert!(
        rows.values().all(|v| v.len() == 1 && v[0].1 == 2),
        "{rows:?}"
    );
    // Alone, object 0 walks a0 (claim -> failed group) to a1 (claim -> loaded group).
    let again = load(&f, &warehouse(&f, &server), &key(0), "e", &files[0]).unwrap();
    assert!(
        matches!(again, LoadOutcome::AlreadyLoaded { .. }),
        "{again:?}"
    );
    assert_eq!(server.state.lock().unwrap().load_jobs(), 2);
}

#[test]
fn test_server_a_claim_whose_group_never_started_blocks_until_the_grace_period_ends() {
    let f = fixture();
    let server = BqServer::start(None);
    let file = parquet_of(4, 2);
    // A delivery claimed object 4's a0 id for a group load, then died before loading.
    let plan = plan_object(&f.catalog, Some("dms-bucket"), &key(4), Some("e"));
    let a0 = ferry_core::JobId::for_object(
        "dms-bucket",
        plan.object.as_ref().unwrap(),
        Some("e"),
        &plan.table.unwrap().changelog,
        0,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    server.state.lock().unwrap().add_query_job(
        &a0.to_string(),
        "SELECT 'ferry_group_bets_changelog_2_00' AS ferry_group_load",
        now,
    );
    let err = load(&f, &warehouse(&f, &server), &key(4), "e", &file).unwrap_err();
    assert!(
        err.retryable && err.message.contains("claimed"),
        "{}",
        err.message
    );
    assert_eq!(
        server.state.lock().unwrap().load_jobs(),
        0,
        "not loaded while the claim may still be honoured"
    );
    // Once the claiming invocation must be over, the claim is a failed attempt.
    let after_grace = WarehouseOptions {
        claim_grace: Duration::ZERO,
        ..options()
    };
    std::thread::sleep(Duration::from_millis(5));
    let out = load(
        &f,
        &warehouse_with(&f, &server, after_grace),
        &key(4),
        "e",
        &file,
    )
    .unwrap();
    assert!(
        matches!(out, LoadOutcome::Loaded { ref job_id } if job_id.ends_with("_a1")),
        "{out:?}"
    );
}

#[test]
fn test_server_budget_used_up_defers_new_loads_but_not_redeliveries() {
    let f = fixture();
    let server = BqServer::start(None);
    let opts = WarehouseOptions {
        load_jobs_per_table_day: 5,
        ..options()
    };
    let file = parquet_of(1, 2);
    load(
        &f,
        &warehouse_with(&f, &server, opts.clone()),
        &key(1),
        "e",
        &file,
    )
    .unwrap();
    // BigQuery says the table had 5 load jobs in the last 24 hours.
    server.state.lock().unwrap().load_job_count = Some(5);
    let w = warehouse_with(&f, &server, opts);
    let err = load(&f, &w, &key(2), "e", &parquet_of(2, 2)).unwrap_err();
    assert!(
        err.retryable && err.message.contains("budget 5"),
        "{}",
        err.message
    );
    assert!(
        server
            .state
            .lock()
            .unwrap()
            .queries
            .iter()
            .any(|q| q.contains("`region-asia-northeast3`.INFORMATION_SCHEMA.JOBS_BY_PROJECT"))
    );
    // A redelivered object that is loaded already costs no job and passes.
    assert!(matches!(
        load(&f, &w, &key(1), "e", &file),
        Ok(LoadOutcome::AlreadyLoaded { .. })
    ));
    assert_eq!(server.state.lock().unwrap().load_jobs(), 1);
}

#[test]
fn test_server_tables_below_the_combine_threshold_load_each_object_alone() {
    let f = fixture();
    let server = BqServer::start(None);
    let w = warehouse(&f, &server); // combine from 50 % of 1,000: the table is cool
    let files: Vec<Converted> = (0..3).map(|n| parquet_of(n, 1)).collect();
    let batch: Vec<(u32, &Converted)> = (0..3).map(|n| (n, &files[n as usize])).collect();
    let results = load_many(&f, &w, &batch);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(LoadOutcome::Loaded { job_id }) if job_id.ends_with("_a0"))),
        "{results:?}"
    );
    assert_eq!(server.state.lock().unwrap().load_jobs(), 3);
}

/// Random batches (alone or grouped, overlapping), random faults, hot and cool: every object
/// ends in BigQuery exactly once.
#[test]
fn test_server_groups_and_singles_never_duplicate_or_lose_under_random_faults() {
    let f = fixture();
    let server = BqServer::start(None);
    let hot = warehouse_with(&f, &server, always_combine());
    let cool = warehouse(&f, &server);
    let objects = 16u32;
    let files: Vec<Converted> = (0..objects)
        .map(|n| parquet_of(n, 1 + n as usize % 3))
        .collect();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut done = vec![false; objects as usize];
    let mut rounds = 0;
    while done.iter().any(|d| !d) || rounds < 60 {
        rounds += 1;
        assert!(rounds < 1_000, "no progress: {done:?}");
        let size = 1 + (next() % 5) as usize;
        let mut batch: Vec<u32> = (0..size)
            .map(|_| (next() % u64::from(objects)) as u32)
            .collect();
        batch.sort_unstable();
        batch.dedup();
        server.inject(match next() % 8 {
            0 => Some(Fault::JobFails("backendError")),
            1 => Some(Fault::DropAfter(Route::Insert)),
            2 => Some(Fault::Http(Route::InsertJob, 503, "backendError")),
            3 => Some(Fault::Http(Route::GetJob, 500, "internalError")),
            4 => Some(Fault::DropAfter(Route::InsertJob)),
            _ => None,
        });
        let w = if next() % 2 == 0 { &hot } else { &cool };
        let items: Vec<(u32, &Converted)> =
            batch.iter().map(|&n| (n, &files[n as usize])).collect();
        for (n, r) in batch.iter().zip(load_many(&f, w, &items)) {
            match r {
                Ok(_) => done[*n as usize] = true,
                Err(e) => assert!(e.retryable, "{e:?}"),
            }
        }
        server.clear_faults();
    }
    let rows = held_rows(&server);
    assert_eq!(rows.len(), objects as usize);
    for (n, file) in files.iter().enumerate() {
        let _ = file;
        let k = key(n as u32);
        let v = &rows[&k];
        assert_eq!(v.len(), 1, "{k} loaded by {v:?}");
        assert_eq!(v[0].1, 1 + n % 3);
    }
    let st = server.state.lock().unwrap();
    eprintln!(
        "{} objects, {} load jobs ({} succeeded)",
        objects,
        st.load_jobs(),
        st.succeeded().len()
    );
}

#[test]
fn test_server_a_group_whose_insert_never_arrived_is_resumed_by_the_next_delivery() {
    let f = fixture();
    let server = BqServer::start(None);
    let hot = warehouse_with(
        &f,
        &server,
        WarehouseOptions {
            max_attempts: 1,
            ..always_combine()
        },
    );
    let files: Vec<Converted> = (0..3).map(|n| parquet_of(n, 2)).collect();
    let batch: Vec<(u32, &Converted)> = (0..3).map(|n| (n, &files[n as usize])).collect();
    // The claims are made, then every try of the group's upload fails: the load never starts.
    server.inject((0..4).map(|_| Fault::Http(Route::Insert, 503, "backendError")));
    let first = load_many(&f, &hot, &batch);
    assert!(
        first.iter().all(|r| matches!(r, Err(e) if e.retryable)),
        "{first:?}"
    );
    assert_eq!(server.state.lock().unwrap().load_jobs(), 0);
    server.clear_faults();
    // The redelivered batch finds its objects claimed for that same group and loads it.
    let second = load_many(&f, &hot, &batch);
    assert!(second.iter().all(|r| matches!(r, Ok(LoadOutcome::Loaded { job_id }) if job_id.starts_with("ferry_group_"))), "{second:?}");
    let rows = held_rows(&server);
    assert_eq!(rows.len(), 3);
    assert!(rows.values().all(|v| v.len() == 1), "{rows:?}");
}

#[test]
fn test_server_a_409_for_a_job_not_visible_yet_is_looked_up_again_not_skipped() {
    let f = fixture();
    let server = BqServer::start(None);
    // The walk's lookup finds nothing (true), the insert's answer is lost, the retried insert
    // gets 409, and the first lookup after it still misses the job (jobs.get lagging behind).
    server.inject([
        Fault::Http(Route::GetJob, 404, "notFound"),
        Fault::DropAfter(Route::Insert),
        Fault::Http(Route::GetJob, 404, "notFound"),
    ]);
    let w = warehouse(&f, &server);
    let out = load(&f, &w, &key(11), "e", &bytes(11)).unwrap();
    assert!(
        matches!(out, LoadOutcome::AlreadyLoaded { ref job_id } if job_id.ends_with("_a0")),
        "{out:?}"
    );
    assert_eq!(server.faults_left(), 0);
    assert_eq!(
        held(&server),
        vec![data_of(&bytes(11))],
        "loaded once, under a0"
    );
}

// ---- one writer per replica: the apply lock ----

/// Two invocations apply the test table's replica at the same moment.
fn apply_at_once(f: &Fixture, warehouses: [&BigQueryWarehouse; 2]) {
    let table = f.catalog.source("games").unwrap().tables[0].clone();
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for w in warehouses {
            let (table, barrier) = (&table, &barrier);
            s.spawn(move || {
                barrier.wait();
                w.apply(table).unwrap();
            });
        }
    });
}

/// Two invocations (two warehouses, as two Lambda processes) load files of one table, then
/// apply its replica at the same moment; the strict server records every overlap of mutating
/// statements on a table, which is where BigQuery's snapshot isolation inserts a new key twice.
fn race(lock: Option<Arc<dyn ferry_pipeline::ports::ApplyLock>>) -> Vec<String> {
    let f = fixture();
    let server = BqServer::start(None);
    server.state.lock().unwrap().dml_hold = Duration::from_millis(300);
    let make = || {
        let w = warehouse(&f, &server);
        match &lock {
            Some(l) => w.with_lock(l.clone()),
            None => w,
        }
    };
    let (a, b) = (make(), make());
    load(&f, &a, &key(40), "e", &bytes(40)).unwrap();
    load(&f, &b, &key(41), "e", &bytes(41)).unwrap();
    apply_at_once(&f, [&a, &b]);
    let st = server.state.lock().unwrap();
    let merges = st.queries.iter().filter(|q| q.starts_with("MERGE")).count();
    assert_eq!(merges, 4, "each invocation applied (tombstones, replica)");
    st.dml.overlaps.clone()
}

#[test]
fn without_the_apply_lock_two_invocations_merge_one_replica_at_once() {
    // The control: the race is real, so the test below would fail without the lock.
    let overlaps = race(None);
    assert!(!overlaps.is_empty(), "the applies overlapped");
}

#[test]
fn moto_dynamodb_lock_keeps_replica_applies_one_at_a_time() {
    let rt = ferry_tests::runtime();
    let client = rt.block_on(ferry_tests::stand_ins::moto_lock_table("race-locks"));
    let lock = ferry_aws::DynamoDbLock::new(client, rt.handle().clone(), "race-locks");
    let overlaps = race(Some(Arc::new(lock)));
    assert!(overlaps.is_empty(), "{overlaps:?}");
}

#[test]
fn moto_dynamodb_lock_is_exclusive_expires_and_is_released_by_its_owner_only() {
    use ferry_pipeline::ports::ApplyLock;
    let rt = ferry_tests::runtime();
    let client = rt.block_on(ferry_tests::stand_ins::moto_lock_table("unit-locks"));
    let lock = ferry_aws::DynamoDbLock::new(client, rt.handle().clone(), "unit-locks");
    let minute = Duration::from_secs(60);
    assert!(lock.try_acquire("p.d.t", "a", minute).unwrap());
    assert!(
        !lock.try_acquire("p.d.t", "b", minute).unwrap(),
        "held by a"
    );
    assert!(lock.try_acquire("p.d.t", "a", minute).unwrap(), "a renews");
    assert!(
        lock.try_acquire("p.d.u", "b", minute).unwrap(),
        "another table is free"
    );
    lock.release("p.d.t", "b").unwrap();
    assert!(
        !lock.try_acquire("p.d.t", "b", minute).unwrap(),
        "b cannot release a's lock"
    );
    lock.release("p.d.t", "a").unwrap();
    assert!(
        lock.try_acquire("p.d.t", "b", Duration::from_secs(1))
            .unwrap()
    );
    std::thread::sleep(Duration::from_millis(2_100));
    assert!(
        lock.try_acquire("p.d.t", "c", minute).unwrap(),
        "an expired lease is taken over"
    );
}

// ---- waits, uploads and DML errors as BigQuery answers them ----

#[test]
fn test_server_waits_end_before_the_invocation_deadline_and_the_next_delivery_resumes_the_job() {
    let f = fixture();
    let server = BqServer::start(None);
    server.state.lock().unwrap().running_polls = 1_000_000;
    let w = warehouse_with(
        &f,
        &server,
        WarehouseOptions {
            max_wait: Duration::from_secs(300),
            ..options()
        },
    );
    // 12 s left in the invocation: waits end 10 s before the deadline.
    w.set_deadline(Some(std::time::Instant::now() + Duration::from_secs(12)));
    let started = std::time::Instant::now();
    let e = load(&f, &w, &key(50), "e", &bytes(50)).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(e.retryable, "{}", e.message);
    assert!(e.message.contains("still"), "{}", e.message);
    // The next delivery (a new invocation) finds the job by its id and waits for it.
    {
        let mut st = server.state.lock().unwrap();
        assert_eq!(st.load_jobs(), 1);
        st.jobs.iter_mut().for_each(|j| j.polls_left = 1);
    }
    w.set_deadline(None);
    let out = load(&f, &w, &key(50), "e", &bytes(50)).unwrap();
    assert!(matches!(out, LoadOutcome::AlreadyLoaded { .. }), "{out:?}");
    assert_eq!(server.state.lock().unwrap().load_jobs(), 1, "no second job");
}

#[test]
fn test_server_files_from_5_mib_in_memory_upload_resumably() {
    let f = fixture();
    let server = BqServer::start(None);
    let w = warehouse(&f, &server);
    let big = parquet_rows(55, 700_000, &schema());
    assert!(big.len() >= 5 << 20, "{}", big.len());
    load(
        &f,
        &w,
        &key(55),
        "e",
        &Converted::InMemory(Bytes::from(big.clone())),
    )
    .unwrap();
    load(&f, &w, &key(56), "e", &bytes(56)).unwrap();
    let st = server.state.lock().unwrap();
    let multipart = st
        .log
        .iter()
        .filter(|(_, p, _)| p.contains("uploadType=multipart"))
        .count();
    let resumable = st
        .log
        .iter()
        .filter(|(m, p, _)| m == "POST" && p.contains("uploadType=resumable"))
        .count();
    assert_eq!((multipart, resumable), (1, 1), "{:?}", st.log);
    assert!(st.succeeded().iter().any(|j| j.data == big));
}

#[test]
fn test_server_a_merge_that_loses_a_concurrent_update_is_retried() {
    let f = fixture();
    let server = BqServer::start(None);
    {
        let mut st = server.state.lock().unwrap();
        st.dml_hold = Duration::from_millis(200);
        st.conflict_on_overlap = true;
    }
    // Backoff longer than a statement: the retry comes after the winner committed.
    let patient = || {
        let config = ClientConfig {
            initial_backoff: Duration::from_millis(300),
            max_backoff: Duration::from_millis(600),
            ..fast_config(&server.url)
        };
        let client = Client::new(config, Auth::None, "ferry-test").unwrap();
        BigQueryWarehouse::new(client, f.rt.handle().clone(), options())
    };
    let (a, b) = (patient(), patient());
    load(&f, &a, &key(57), "e", &bytes(57)).unwrap();
    load(&f, &b, &key(58), "e", &bytes(58)).unwrap();
    apply_at_once(&f, [&a, &b]);
    let st = server.state.lock().unwrap();
    assert!(
        st.refusals
            .iter()
            .any(|r| r.message.contains("Could not serialize access")),
        "the race produced a conflict: {:?}",
        st.refusals
    );
    // Both applies succeeded (the unwraps above): the loser retried after backing off.
    assert!(st.queries.iter().filter(|q| q.starts_with("MERGE")).count() >= 5);
}

#[test]
fn test_server_a_column_added_by_another_writer_makes_the_load_retry_with_the_fresh_schema() {
    let f = fixture();
    let server = BqServer::start(None);
    let w = warehouse(&f, &server);
    load(&f, &w, &key(20), "e", &bytes(20)).unwrap();
    // Another process adds a column; this process's cached schema lacks it.
    server
        .state
        .lock()
        .unwrap()
        .tables
        .get_mut("ferry-test.games.bets_changelog")
        .unwrap()
        .columns
        .push(ferry_tests::bqrules::Column {
            name: "added_elsewhere".into(),
            ty: "STRING".into(),
            required: false,
        });
    let e = load(&f, &w, &key(21), "e", &bytes(21)).unwrap_err();
    assert!(e.retryable, "{}", e.message);
    assert!(
        e.message
            .contains("added_elsewhere is missing in new schema"),
        "{}",
        e.message
    );
    // The redelivery reads the table again and loads under the next attempt id.
    let out = load(&f, &w, &key(21), "e", &bytes(21)).unwrap();
    assert!(matches!(out, LoadOutcome::Loaded { .. }), "{out:?}");
}

/// A converted file of object `n` inserting keys `ids` (commit time `ts`).
fn inserts(n: u32, ids: &[i64], ts: i64) -> Converted {
    use arrow_array::{ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};
    let rows = ids.len();
    let text = |v: String| Arc::new(StringArray::from(vec![v; rows])) as ArrayRef;
    let columns: Vec<(&str, ArrayRef)> = vec![
        (meta::OP, text("INSERT".into())),
        (
            meta::COMMIT_TS,
            Arc::new(TimestampMicrosecondArray::from(vec![ts; rows]).with_timezone("UTC")),
        ),
        (meta::FILE_SEQ, text(format!("c{n:08}"))),
        (meta::CHANGE_SEQ, text(String::new())),
        (
            meta::ROW,
            Arc::new(Int64Array::from_iter_values(0..rows as i64)),
        ),
        (meta::FILE, text(key(n))),
        (meta::SOURCE, text("games".into())),
        ("id", Arc::new(Int64Array::from(ids.to_vec()))),
    ];
    let required: Vec<&str> = columns
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| *n != "id")
        .collect();
    Converted::InMemory(Bytes::from(ferry_tests::parquet_file(columns, &required)))
}

#[test]
fn bqemulator_two_invocations_inserting_the_same_new_keys_leave_one_replica_row_per_key() {
    let f = fixture();
    let rt = ferry_tests::runtime();
    let client = rt.block_on(ferry_tests::stand_ins::moto_lock_table("race-rows-locks"));
    let lock: Arc<dyn ferry_pipeline::ports::ApplyLock> = Arc::new(ferry_aws::DynamoDbLock::new(
        client,
        rt.handle().clone(),
        "race-rows-locks",
    ));
    let server = BqServer::start(Some(ferry_tests::stand_ins::bqemulator().to_owned()));
    server.state.lock().unwrap().dml_hold = Duration::from_millis(300);
    let (a, b) = (
        warehouse(&f, &server).with_lock(lock.clone()),
        warehouse(&f, &server).with_lock(lock),
    );
    // Both files insert keys 1..=3, new to the replica (a source insert seen twice, e.g. a
    // full-load row and its CDC insert arriving through two invocations).
    load(&f, &a, &key(30), "e", &inserts(30, &[1, 2, 3], 1)).unwrap();
    load(&f, &b, &key(31), "e", &inserts(31, &[1, 2, 3], 2)).unwrap();
    apply_at_once(&f, [&a, &b]);
    let rows = f
        .rt
        .block_on(a.client().query(
            "SELECT id, COUNT(*) AS n, MAX(_ferry_file) AS file FROM `ferry-test`.`games`.`bets` GROUP BY id ORDER BY id",
            Some("asia-northeast3"),
            &ferry_bigquery::warehouse::request_id(),
            Duration::from_secs(30),
        ))
        .unwrap()
        .rows;
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap_or_default().to_owned();
            (s(0), s(1), s(2))
        })
        .collect();
    let newest = key(31);
    let want: Vec<(String, String, String)> = (1..=3)
        .map(|i| (i.to_string(), "1".to_owned(), newest.clone()))
        .collect();
    assert_eq!(got, want, "one row per key, the newest change");
    assert!(server.state.lock().unwrap().dml.overlaps.is_empty());
}
