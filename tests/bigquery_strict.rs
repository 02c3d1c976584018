//! The strict BigQuery test server refuses what BigQuery refuses: each test sends the request
//! ferry used to send (or one BigQuery documents as refused) and sees BigQuery's answer, then the
//! request ferry sends now and sees it pass. The rules and their sources are in
//! `tests/support/bqrules.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};
use bytes::Bytes;
use ferry_bigquery::client::{QueryResult, Upload};
use ferry_bigquery::warehouse::request_id;
use ferry_bigquery::{Auth, BqError, Client, ClientConfig};
use ferry_tests::bqserver::{BqServer, Fault};
use serde_json::{Value, json};

struct Env {
    rt: tokio::runtime::Runtime,
    client: Client,
    server: BqServer,
}

fn env() -> Env {
    let server = BqServer::start(None);
    let config = ClientConfig {
        base_url: server.url.clone(),
        max_tries: 2,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(10),
        ..ClientConfig::default()
    };
    let client = Client::new(config, Auth::None, "ferry-test").unwrap();
    Env {
        rt: ferry_tests::runtime(),
        client,
        server,
    }
}

impl Env {
    fn query(&self, sql: &str) -> Result<QueryResult, BqError> {
        self.query_with_id(sql, &request_id())
    }

    fn query_with_id(&self, sql: &str, id: &str) -> Result<QueryResult, BqError> {
        self.rt
            .block_on(self.client.query(sql, None, id, Duration::from_secs(5)))
    }

    fn create(&self, table: &str, columns: &str, tail: &str) -> Result<QueryResult, BqError> {
        self.query(&format!(
            "CREATE TABLE IF NOT EXISTS `ferry-test`.`d`.`{table}` (\n  {columns}\n){tail}"
        ))
    }

    /// A load job of `data` into `d.t`, with `load` merged into the configuration; the job's
    /// final error, if any.
    fn load(&self, id: &str, load: Value, data: Vec<u8>) -> Option<(String, String)> {
        let mut configuration = json!({"load": {
            "destinationTable": {"projectId": "ferry-test", "datasetId": "d", "tableId": "t"},
            "sourceFormat": "PARQUET",
            "writeDisposition": "WRITE_APPEND",
            "createDisposition": "CREATE_NEVER",
        }});
        for (k, v) in load.as_object().unwrap() {
            configuration["load"][k] = v.clone();
        }
        let data = Bytes::from(data);
        let state = self
            .rt
            .block_on(
                self.client
                    .insert_load_job(id, None, &configuration, Upload::Bytes(&data)),
            )
            .unwrap()
            .unwrap();
        state
            .error
            .map(|e| (e.reason.unwrap_or_default(), e.message))
    }
}

fn refused(r: Result<QueryResult, BqError>, status: u16, reason: &str, needle: &str) {
    let e = r.expect_err("BigQuery refuses this");
    assert_eq!(e.status, Some(status), "{e}");
    assert_eq!(e.reason.as_deref(), Some(reason), "{e}");
    assert!(e.message.contains(needle), "{e}");
}

fn parquet(columns: Vec<(&str, ArrayRef)>) -> Vec<u8> {
    ferry_tests::parquet_file(columns, &[])
}

#[test]
fn partition_by_forms_bigquery_rejects_are_refused() {
    let env = env();
    let cols = "`d` DATE,\n  `ts` TIMESTAMP,\n  `dt` DATETIME";
    // What sql.rs used to emit.
    refused(
        env.create("a", cols, "\nPARTITION BY DATE_TRUNC(DATE(`ts`), MONTH)"),
        400,
        "invalidQuery",
        "PARTITION BY expression must be",
    );
    refused(
        env.create("b", cols, "\nPARTITION BY TIMESTAMP_TRUNC(`dt`, HOUR)"),
        400,
        "invalidQuery",
        "PARTITION BY",
    );
    refused(
        env.create("c", cols, "\nPARTITION BY DATE_TRUNC(`d`, HOUR)"),
        400,
        "invalidQuery",
        "PARTITION BY",
    );
    // What it emits now.
    for (i, p) in [
        "`d`",
        "DATE_TRUNC(`d`, MONTH)",
        "DATE(`ts`)",
        "TIMESTAMP_TRUNC(`ts`, HOUR)",
        "DATE(`dt`)",
        "DATETIME_TRUNC(`dt`, MONTH)",
    ]
    .iter()
    .enumerate()
    {
        env.create(&format!("ok{i}"), cols, &format!("\nPARTITION BY {p}"))
            .unwrap_or_else(|e| panic!("{p}: {e}"));
    }
}

#[test]
fn cluster_by_unclusterable_types_and_more_than_four_columns_are_refused() {
    let env = env();
    let cols = "`k` BYTES,\n  `f` FLOAT64,\n  `t` TIME,\n  `a` INT64,\n  `b` STRING,\n  `c` DATE,\n  `e` BOOL";
    for bad in ["`k`", "`f`", "`t`"] {
        refused(
            env.create("x", cols, &format!("\nCLUSTER BY {bad}")),
            400,
            "invalidQuery",
            "Clustering is not supported",
        );
    }
    refused(
        env.create("y", cols, "\nCLUSTER BY `a`, `b`, `c`, `e`, `a`"),
        400,
        "invalidQuery",
        "limit is 4",
    );
    env.create("z", cols, "\nCLUSTER BY `a`, `b`, `c`, `e`")
        .unwrap();
}

#[test]
fn reserved_column_names_are_refused() {
    let env = env();
    for name in [
        "_PARTITIONTIME",
        "_table_suffix",
        "_CHANGE_TYPE",
        "_file_name",
    ] {
        refused(
            env.create("r", &format!("`{name}` STRING"), ""),
            400,
            "invalid",
            "are reserved",
        );
    }
    env.create("r", "`_ferry_op` STRING NOT NULL", "").unwrap();
    // A reserved keyword is a column name only when quoted.
    refused(
        env.create("k", "at TIMESTAMP", ""),
        400,
        "invalidQuery",
        "Unexpected keyword AT",
    );
    env.create("k", "`at` TIMESTAMP, checked_at TIMESTAMP", "")
        .unwrap();
}

#[test]
fn request_ids_longer_than_36_characters_are_refused() {
    let env = env();
    // The form ferry used to send: `ferry-<kind>-<pid>-<nanos>-<n>`.
    let old = format!(
        "ferry-merge-{}-{:x}-{}",
        123_456, 1_764_000_000_000_000_000u128, 7
    );
    assert!(old.len() > 36);
    refused(
        env.query_with_id("SELECT 1", &old),
        400,
        "invalid",
        "at most 36",
    );
    let id = request_id();
    assert_eq!(id.len(), 36, "{id}");
    assert_ne!(id, request_id(), "ids are unique");
    env.query_with_id("SELECT 1", &id).unwrap();
}

#[test]
fn table_updates_beyond_five_per_ten_seconds_are_refused() {
    let env = env();
    env.create("t", "`a` INT64", "").unwrap();
    for i in 0..4 {
        env.query(&format!(
            "ALTER TABLE `ferry-test`.`d`.`t`\n  ADD COLUMN IF NOT EXISTS `c{i}` INT64"
        ))
        .unwrap();
    }
    refused(
        env.query("ALTER TABLE `ferry-test`.`d`.`t` ADD COLUMN IF NOT EXISTS `c9` INT64"),
        403,
        "rateLimitExceeded",
        "too many table update operations",
    );
}

#[test]
fn json_columns_cannot_be_loaded_from_parquet() {
    let env = env();
    env.create("t", "`id` INT64,\n  `doc` JSON", "").unwrap();
    let data = parquet(vec![
        ("id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ("doc", Arc::new(StringArray::from(vec![r#"{"a":1}"#]))),
    ]);
    let (reason, message) = env.load("j1", json!({}), data).expect("the load fails");
    assert_eq!(reason, "invalid");
    assert!(
        message.contains("Unsupported field type: JSON"),
        "{message}"
    );
    // The failed job exists: its id is used up (409), like any failed load's.
    let config = json!({"load": {
        "destinationTable": {"projectId": "ferry-test", "datasetId": "d", "tableId": "t"}}});
    let again = env
        .rt
        .block_on(env.client.insert_load_job(
            "j1",
            None,
            &config,
            Upload::Bytes(&Bytes::from_static(b"x")),
        ))
        .unwrap();
    assert!(again.is_none(), "{again:?}");
}

#[test]
fn datetime_columns_need_the_schema_in_the_load() {
    let env = env();
    env.create("t", "`id` INT64,\n  `at` DATETIME", "").unwrap();
    let wall_clock = || {
        parquet(vec![
            ("id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            (
                "at",
                Arc::new(TimestampMicrosecondArray::from(vec![1_700_000_000_000_000])),
            ),
        ])
    };
    // The load ferry used to send: no schema.
    let (reason, message) = env
        .load("dt1", json!({}), wall_clock())
        .expect("the load fails");
    assert_eq!(reason, "invalid");
    assert!(
        message.contains("Field at has changed type from DATETIME to TIMESTAMP"),
        "{message}"
    );
    // With the table's schema it loads.
    let schema = json!({"schema": {"fields": [
        {"name": "id", "type": "INT64", "mode": "NULLABLE"},
        {"name": "at", "type": "DATETIME", "mode": "NULLABLE"}]}});
    assert_eq!(env.load("dt2", schema, wall_clock()), None);
    // A load schema must name every column of the table.
    let partial = json!({"schema": {"fields": [{"name": "at", "type": "DATETIME"}]}});
    let (_, message) = env.load("dt3", partial, wall_clock()).unwrap();
    assert!(
        message.contains("Field id is missing in new schema"),
        "{message}"
    );
}

#[test]
fn enum_columns_load_as_bytes_unless_enum_as_string() {
    use parquet::basic::{LogicalType, Repetition, Type as Physical};
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::types::Type;
    let env = env();
    env.create("t", "`state` STRING", "").unwrap();
    let enum_file = || {
        let field = Type::primitive_type_builder("state", Physical::BYTE_ARRAY)
            .with_repetition(Repetition::OPTIONAL)
            .with_logical_type(Some(LogicalType::Enum))
            .build()
            .unwrap();
        let schema = Arc::new(
            Type::group_type_builder("schema")
                .with_fields(vec![Arc::new(field)])
                .build()
                .unwrap(),
        );
        let mut buf = Vec::new();
        let mut w = SerializedFileWriter::new(&mut buf, schema, Default::default()).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&[ByteArray::from("open")], Some(&[1]), None)
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
        w.close().unwrap();
        buf
    };
    let (_, message) = env.load("e1", json!({}), enum_file()).unwrap();
    assert!(message.contains("from STRING to BYTES"), "{message}");
    assert_eq!(
        env.load(
            "e2",
            json!({"parquetOptions": {"enumAsString": true}}),
            enum_file()
        ),
        None
    );
}

#[test]
fn jobs_outside_us_and_eu_are_not_found_without_their_location() {
    let env = env();
    env.create("t", "`id` INT64", "").unwrap();
    let config = json!({"load": {
        "destinationTable": {"projectId": "ferry-test", "datasetId": "d", "tableId": "t"},
        "sourceFormat": "PARQUET"}});
    let data = Bytes::from(parquet(vec![(
        "id",
        Arc::new(Int64Array::from(vec![1])) as ArrayRef,
    )]));
    env.rt
        .block_on(env.client.insert_load_job(
            "loc1",
            Some("asia-northeast3"),
            &config,
            Upload::Bytes(&data),
        ))
        .unwrap()
        .unwrap();
    let e = env
        .rt
        .block_on(env.client.get_job("loc1", None))
        .unwrap_err();
    assert_eq!(e.status, Some(404), "{e}");
    let job = env
        .rt
        .block_on(env.client.get_job("loc1", Some("asia-northeast3")))
        .unwrap();
    assert!(job.is_done() && job.error.is_none(), "{job:?}");
}

#[test]
fn load_jobs_per_table_are_limited_failed_ones_included() {
    let env = env();
    env.server.state.lock().unwrap().quota.per_table = 3;
    env.create("t", "`id` INT64", "").unwrap();
    let good = || {
        parquet(vec![(
            "id",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )])
    };
    env.server.inject([Fault::JobFails("backendError")]);
    assert!(
        env.load("q1", json!({}), good()).is_some(),
        "the first fails"
    );
    assert_eq!(env.load("q2", json!({}), good()), None);
    assert_eq!(env.load("q3", json!({}), good()), None);
    let data = Bytes::from(good());
    let config = json!({"load": {
        "destinationTable": {"projectId": "ferry-test", "datasetId": "d", "tableId": "t"},
        "sourceFormat": "PARQUET"}});
    let e = env
        .rt
        .block_on(
            env.client
                .insert_load_job("q4", None, &config, Upload::Bytes(&data)),
        )
        .unwrap_err();
    assert_eq!(e.status, Some(403), "{e}");
    assert_eq!(e.reason.as_deref(), Some("quotaExceeded"), "{e}");
    assert!(
        e.message.contains("imports or query appends per table"),
        "{e}"
    );
}

#[test]
fn mutating_dml_beyond_the_table_queue_is_refused_and_overlaps_are_seen() {
    let env = env();
    env.create("t", "`id` INT64", "").unwrap();
    env.server.state.lock().unwrap().dml_hold = Duration::from_millis(400);
    // 24 MERGEs at once against one table: 2 run, 20 queue, the rest are refused.
    let results: Vec<Result<QueryResult, BqError>> = env.rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..24 {
            let c = env.client.clone();
            set.spawn(async move {
                c.query(
                    "MERGE `ferry-test`.`d`.`t` T USING (SELECT 1 AS id) S ON T.id = S.id WHEN NOT MATCHED THEN INSERT (id) VALUES (S.id)",
                    None,
                    &request_id(),
                    Duration::from_secs(10),
                )
                .await
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out
    });
    let refused: Vec<&BqError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!refused.is_empty(), "some beyond the queue are refused");
    for e in &refused {
        assert_eq!(e.reason.as_deref(), Some("resourcesExceeded"), "{e}");
        assert!(
            e.message.contains("Too many DML statements outstanding"),
            "{e}"
        );
        assert!(e.is_retryable(), "a full DML queue is transient: {e}");
    }
    let st = env.server.state.lock().unwrap();
    assert!(
        st.dml.overlaps.iter().any(|t| t == "ferry-test.d.t"),
        "concurrent MERGEs on one table are seen"
    );
}

#[test]
fn warnings_in_a_successful_query_are_not_failures() {
    let env = env();
    env.server
        .inject([Fault::Warning("Query results may be incomplete")]);
    let r = env.query("SELECT 1");
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(env.server.faults_left(), 0, "the warning was sent");
}

#[test]
fn dataset_creation_needs_its_own_permission_and_is_not_asked_for_an_existing_dataset() {
    let env = env();
    env.server.state.lock().unwrap().can_create_datasets = false;
    let e = env
        .rt
        .block_on(env.client.ensure_dataset("ferry-test", "fresh", None))
        .unwrap_err();
    assert_eq!(e.status, Some(403), "{e}");
    assert!(e.message.contains("bigquery.datasets.create"), "{e}");
    env.server
        .state
        .lock()
        .unwrap()
        .datasets
        .insert("ferry-test.existing".into());
    env.rt
        .block_on(env.client.ensure_dataset("ferry-test", "existing", None))
        .unwrap();
    let st = env.server.state.lock().unwrap();
    let inserts = st
        .log
        .iter()
        .filter(|(m, p, _)| m == "POST" && p.ends_with("/datasets"))
        .count();
    assert_eq!(
        inserts, 1,
        "only the missing dataset was inserted: {:?}",
        st.log
    );
}

#[test]
fn view_statements_bigquery_rejects_are_refused_and_the_live_view_passes() {
    let env = env();
    refused(
        env.query("CREATE OR REPLACE VIEW IF NOT EXISTS `ferry-test`.`d`.`v` AS SELECT 1 AS x"),
        400,
        "invalidQuery",
        "cannot be combined with IF NOT EXISTS",
    );
    refused(
        env.query("CREATE VIEW `ferry-test`.`d`.`v` OPTIONS(partition_expiration_days=1) AS SELECT 1 AS x"),
        400,
        "invalidQuery",
        "Unknown option",
    );
    refused(
        env.query("CREATE VIEW `ferry-test`.`d`.`v` SELECT 1 AS x"),
        400,
        "invalidQuery",
        "expected AS",
    );
    // ferry's live view, for a hard-delete replica with a JSON column and a soft-delete one.
    let dir = ferry_tests::TempDir::new("strict-view");
    std::fs::write(
        dir.path().join("games.json"),
        r#"{"source": {"name": "games", "bucket": "dms-bucket", "folder": "cdc"},
            "bigquery": {"project": "ferry-test", "dataset": "d"},
            "tables": {"casino.bets": {"primary_key": ["id"], "columns": {"note": "json"}},
                       "casino.wallets": {"primary_key": ["id"], "soft_delete": true}}}"#,
    )
    .unwrap();
    let catalog = ferry_core::Catalog::load_dir(dir.path()).unwrap();
    let mut fields = ferry_core::schema::meta::fields();
    for (name, t) in [
        ("id", ferry_core::bqtype::BqType::Int64),
        ("note", ferry_core::bqtype::BqType::String),
    ] {
        fields.push(ferry_core::schema::BqField {
            name: name.into(),
            bq_type: t,
            mode: ferry_core::schema::FieldMode::Nullable,
            description: None,
        });
    }
    let schema = ferry_core::schema::TableSchema { fields };
    for table in &catalog.sources()[0].tables {
        let sql = ferry_core::sql::live_view(table, &schema, Duration::from_secs(7200)).unwrap();
        env.query(&sql).unwrap_or_else(|e| panic!("{e}\n{sql}"));
    }
}

#[test]
fn labels_bigquery_rejects_are_refused_and_loads_carry_ferry_labels() {
    let env = env();
    env.create("t", "`id` INT64", "").unwrap();
    let data = || {
        parquet(vec![(
            "id",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )])
    };
    let load_with = |id: &str, labels: Value| {
        let configuration = json!({"load": {
            "destinationTable": {"projectId": "ferry-test", "datasetId": "d", "tableId": "t"},
            "sourceFormat": "PARQUET", "writeDisposition": "WRITE_APPEND", "createDisposition": "CREATE_NEVER"},
            "labels": labels});
        let data = Bytes::from(data());
        env.rt.block_on(
            env.client
                .insert_load_job(id, None, &configuration, Upload::Bytes(&data)),
        )
    };
    for (id, labels) in [
        ("l1", json!({"Ferry_Table": "x"})),
        ("l2", json!({"9lives": "x"})),
        ("l3", json!({"ferry_table": "slots_game.spins"})),
        ("l4", json!({"ferry_key": "k".repeat(64)})),
        (
            "l5",
            Value::Object((0..65).map(|i| (format!("k{i}"), json!("v"))).collect()),
        ),
    ] {
        let e = load_with(id, labels.clone()).expect_err("refused");
        assert_eq!(e.status, Some(400), "{labels}: {e}");
        assert!(e.message.contains("Invalid label"), "{e}");
    }
    assert!(
        load_with(
            "l6",
            json!({"ferry_table": "slots_game_spins", "ferry_attempt": "0", "empty": ""})
        )
        .is_ok()
    );
    // ferry's own labels pass, and name the object and the attempt.
    let dir = ferry_tests::TempDir::new("labels");
    dir.write("slots-game.json", r#"{"source": {"name": "slots-game", "bucket": "dms", "folder": "cdc"},
        "bigquery": {"project": "ferry-test", "dataset": "d"}, "tables": {"Slots.Spins": {"primary_key": ["id"]}}}"#);
    let catalog = ferry_core::Catalog::load_dir(dir.path()).unwrap();
    let source = catalog.source("slots-game").unwrap();
    let table = &source.tables[0];
    let object = source
        .parse_key("cdc/Slots/Spins/20261201-101500123.parquet")
        .unwrap();
    let job_id = ferry_core::JobId::for_object("dms", &object, Some("etag"), &table.changelog, 0)
        .next_attempt();
    let schema = ferry_core::schema::TableSchema { fields: vec![] };
    let file = ferry_pipeline::Converted::InMemory(Bytes::new());
    let request = ferry_pipeline::LoadRequest {
        job_id: &job_id,
        source,
        table,
        object: &object,
        bucket: "dms",
        file_seq: "1",
        schema: &schema,
        added: &[],
        file: &file,
        rows: 0,
        ops: Default::default(),
        commit_ts_min: None,
        commit_ts_max: None,
    };
    let configuration = ferry_bigquery::warehouse::load_configuration(&request, &schema);
    let labels = &configuration["labels"];
    assert_eq!(labels["ferry_source"], "slots-game");
    assert_eq!(labels["ferry_table"], "slots_spins");
    assert_eq!(labels["ferry_attempt"], "1");
    assert_eq!(
        labels["ferry_key"],
        ferry_bigquery::warehouse::key_label("dms", &object.key)
    );
    assert_ne!(
        labels["ferry_key"],
        ferry_bigquery::warehouse::key_label("dms", "cdc/Slots/Spins/other.parquet")
    );
    ferry_tests::bqrules::labels(Some(labels)).unwrap();
}
