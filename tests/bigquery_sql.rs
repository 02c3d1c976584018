//! ferry's generated BigQuery SQL (DDL, column additions, the replica MERGE) through the strict
//! test server's rules (grammar and types, as BigQuery enforces them) and executed on bqemulator,
//! the BigQuery-dialect engine available offline. The replica must equal the state the change
//! stream implies, whatever the order files arrive in and however often.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_bigquery::warehouse::{BigQueryWarehouse, WarehouseOptions};
use ferry_bigquery::{Auth, Client, ClientConfig};
use ferry_core::bqtype::BqType;
use ferry_core::schema::{BqField, FieldMode, TableSchema, meta};
use ferry_core::sql::{self, ApplyWindow};
use ferry_core::{Catalog, TableMapping};
use ferry_tests::TempDir;
use ferry_tests::bqserver::BqServer;
use ferry_tests::stand_ins::bqemulator;
use serde_json::Value;

struct Env {
    _dir: TempDir,
    catalog: Catalog,
    rt: tokio::runtime::Runtime,
    warehouse: BigQueryWarehouse,
    server: BqServer,
}

fn env(dataset: &str) -> Env {
    let dir = TempDir::new("bq-sql");
    let mapping = format!(
        r#"{{
  "source": {{ "name": "games", "bucket": "dms-bucket", "folder": "cdc" }},
  "bigquery": {{ "project": "ferry-test", "dataset": "{dataset}" }},
  "tables": {{
    "casino.bets": {{ "primary_key": ["id"] }},
    "casino.wallets": {{ "primary_key": ["account_id", "currency"], "soft_delete": true }},
    "casino.profiles": {{ "primary_key": ["id"], "columns": {{ "note": "json" }} }}
  }}
}}"#
    );
    std::fs::write(dir.path().join("games.json"), mapping).unwrap();
    let catalog = Catalog::load_dir(dir.path()).unwrap();
    let rt = ferry_tests::runtime();
    let server = BqServer::start(Some(bqemulator().to_owned()));
    let config = ClientConfig {
        base_url: server.url.clone(),
        initial_backoff: Duration::from_millis(50),
        ..ClientConfig::default()
    };
    let client = Client::new(config, Auth::None, "ferry-test").unwrap();
    let warehouse =
        BigQueryWarehouse::new(client, rt.handle().clone(), WarehouseOptions::default());
    rt.block_on(
        warehouse
            .client()
            .ensure_dataset("ferry-test", dataset, None),
    )
    .unwrap();
    Env {
        _dir: dir,
        catalog,
        rt,
        warehouse,
        server,
    }
}

impl Env {
    fn table(&self, name: &str) -> TableMapping {
        let source = self.catalog.source("games").unwrap();
        source
            .tables
            .iter()
            .find(|t| t.table == name)
            .unwrap()
            .clone()
    }

    fn run(&self, sql: &str) -> ferry_bigquery::client::QueryResult {
        self.rt
            .block_on(self.warehouse.client().query(
                sql,
                None,
                &ferry_bigquery::warehouse::request_id(),
                Duration::from_secs(60),
            ))
            .unwrap_or_else(|e| panic!("{e}\n--- statement ---\n{sql}"))
    }
}

fn field(name: &str, t: BqType) -> BqField {
    BqField {
        name: name.into(),
        bq_type: t,
        mode: FieldMode::Nullable,
        description: None,
    }
}

/// One change: key columns and values, op, commit time, file, row.
#[derive(Clone, Debug)]
struct Change {
    key: Vec<i64>,
    op: &'static str,
    note: Option<&'static str>,
    ts: i64,
}

/// A file: its sequence and its changes in row order.
struct File {
    name: &'static str,
    seq: &'static str,
    changes: Vec<Change>,
}

fn c(key: &[i64], op: &'static str, note: Option<&'static str>, ts: i64) -> Change {
    Change {
        key: key.to_vec(),
        op,
        note,
        ts,
    }
}

fn insert_rows(env: &Env, table: &TableMapping, file: &File) {
    let keys = &table.primary_key;
    let mut values = Vec::new();
    for (row, ch) in file.changes.iter().enumerate() {
        let mut cols = vec![
            sql::string_literal(ch.op),
            format!("TIMESTAMP_MICROS({})", ch.ts),
            sql::string_literal(file.seq),
            sql::string_literal(""),
            row.to_string(),
            sql::string_literal(file.name),
            sql::string_literal("games"),
        ];
        for (i, k) in keys.iter().enumerate() {
            cols.push(if k == "currency" {
                sql::string_literal(&format!("C{}", ch.key[i]))
            } else {
                ch.key[i].to_string()
            });
        }
        cols.push(ch.note.map(sql::string_literal).unwrap_or("NULL".into()));
        values.push(format!("({})", cols.join(", ")));
    }
    let mut names: Vec<String> = meta::ALL.iter().map(|m| sql::ident(m)).collect();
    names.extend(keys.iter().map(|k| sql::ident(k)));
    names.push(sql::ident("note"));
    env.run(&format!(
        "INSERT INTO {} ({}) VALUES {}",
        sql::table_path(&table.changelog),
        names.join(", "),
        values.join(", ")
    ));
}

fn schema_for(table: &TableMapping) -> TableSchema {
    let mut fields = meta::fields();
    for k in &table.primary_key {
        fields.push(field(
            k,
            if k == "currency" {
                BqType::String
            } else {
                BqType::Int64
            },
        ));
    }
    fields.push(field("note", BqType::String));
    TableSchema { fields }
}

fn window(file: &File) -> ApplyWindow {
    ApplyWindow {
        files: vec![file.name.to_owned()],
        commit_ts_min: file.changes.iter().map(|c| c.ts).min(),
        commit_ts_max: file.changes.iter().map(|c| c.ts).max(),
        // A load run's first file rebuilds the replica, as the writer asks for it.
        rebuild: if file.name.ends_with("/LOAD00000001.parquet") {
            sql::Rebuild::From(file.seq.to_owned())
        } else {
            sql::Rebuild::No
        },
    }
}

/// The source's state after its changes, replayed one by one in the order the source
/// committed them (`files` in source order, rows in file order): the model the replica must
/// match. A soft-delete replica keeps deleted keys, flagged.
fn expected(files: &[&File], soft: bool) -> BTreeMap<Vec<i64>, (Option<String>, bool)> {
    let mut state = BTreeMap::new();
    for f in files {
        for ch in &f.changes {
            match ch.op {
                // DMS writes a delete with the row's before-image; the flagged row keeps it.
                "DELETE" if soft => {
                    state.insert(ch.key.clone(), (ch.note.map(str::to_owned), true));
                }
                "DELETE" => {
                    state.remove(&ch.key);
                }
                _ => {
                    state.insert(ch.key.clone(), (ch.note.map(str::to_owned), false));
                }
            }
        }
    }
    state
}

type State = BTreeMap<Vec<i64>, (Option<String>, bool)>;

fn replica_state(env: &Env, table: &TableMapping) -> State {
    state_of(env, table, table.replica.as_ref().unwrap())
}

/// Key, note and deleted flag per row of a replica or its live view.
fn state_of(env: &Env, table: &TableMapping, path: &ferry_core::TableRef) -> State {
    let keys: Vec<String> = table.primary_key.iter().map(|k| sql::ident(k)).collect();
    let note = if sql::json_columns(table).contains(&"note") {
        "TO_JSON_STRING(note)"
    } else {
        "note"
    };
    let r = env.run(&format!(
        "SELECT {}, {note}, _ferry_deleted FROM {} ORDER BY {}",
        keys.join(", "),
        sql::table_path(path),
        keys.join(", ")
    ));
    let mut out = BTreeMap::new();
    for row in r.rows {
        let n = table.primary_key.len();
        let key: Vec<i64> = row[..n]
            .iter()
            .map(|v| {
                let s = v.as_str().unwrap();
                s.trim_start_matches('C').parse().unwrap()
            })
            .collect();
        let note = row[n].as_str().map(str::to_owned);
        let deleted = match &row[n + 1] {
            Value::String(s) => s == "true",
            Value::Bool(b) => *b,
            other => panic!("_ferry_deleted = {other:?}"),
        };
        assert!(
            out.insert(key.clone(), (note, deleted)).is_none(),
            "key {key:?} twice in {path}"
        );
    }
    out
}

fn stream() -> Vec<File> {
    vec![
        // An old file that arrives last: its insert of key 2 predates key 2's delete.
        File {
            name: "cdc/casino/x/20261126-110000000.parquet",
            seq: "20261126T110000000",
            changes: vec![c(&[2], "INSERT", Some("ghost"), 500)],
        },
        File {
            name: "cdc/casino/x/20261126-120000000.parquet",
            seq: "20261126T120000000",
            changes: vec![
                c(&[1], "INSERT", Some("one"), 1_000),
                c(&[2], "INSERT", Some("two"), 1_000),
                c(&[3], "INSERT", Some("three"), 1_001),
            ],
        },
        File {
            name: "cdc/casino/x/20261126-120100000.parquet",
            seq: "20261126T120100000",
            changes: vec![
                c(&[1], "UPDATE", Some("one v2"), 2_000),
                c(&[2], "DELETE", None, 2_000),
                c(&[4], "INSERT", Some("four"), 2_001),
            ],
        },
        File {
            name: "cdc/casino/x/20261126-120200000.parquet",
            seq: "20261126T120200000",
            changes: vec![
                c(&[1], "DELETE", Some("one v2"), 3_000),
                // Two changes of one key in one file, same commit time: row order decides.
                c(&[3], "UPDATE", Some("three v2"), 3_000),
                c(&[3], "UPDATE", Some("three v3"), 3_000),
            ],
        },
        File {
            name: "cdc/casino/x/20261126-120300000.parquet",
            seq: "20261126T120300000",
            changes: vec![
                // Key 1 comes back after its delete.
                c(&[1], "INSERT", Some("one again"), 4_000),
                c(&[4], "DELETE", Some("four"), 4_000),
            ],
        },
    ]
}

fn replay(env: &Env, table: &TableMapping, files: &[File], order: &[usize]) {
    let schema = schema_for(table);
    env.run(&sql::create_changelog(table, &schema).unwrap());
    for ddl in sql::create_replica(table, &schema).unwrap() {
        env.run(&ddl);
    }
    for &i in order {
        let file = &files[i];
        insert_rows(env, table, file);
        env.rt
            .block_on(env.warehouse.run_apply(table, None, &window(file)))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

fn keyed(files: &[File], arity: usize) -> Vec<File> {
    files
        .iter()
        .map(|f| File {
            name: f.name,
            seq: f.seq,
            changes: f
                .changes
                .iter()
                .map(|ch| Change {
                    key: (0..arity).map(|i| ch.key[0] * 10 + i as i64).collect(),
                    ..ch.clone()
                })
                .collect(),
        })
        .collect()
}

#[test]
fn bqemulator_replica_hard_delete_out_of_order_and_duplicated_files() {
    let env = env("hard_deletes");
    let table = env.table("bets");
    let files = stream();
    // Out of order, one file twice, the old file last.
    replay(&env, &table, &files, &[1, 3, 2, 2, 4, 0]);
    let all: Vec<&File> = files.iter().collect();
    let want = expected(&all, false);
    assert_eq!(replica_state(&env, &table), want);
    assert_eq!(want.get(&vec![1]).unwrap().0.as_deref(), Some("one again"));
    assert!(
        !want.contains_key(&vec![2]),
        "key 2 stays deleted: no resurrection"
    );
    assert_eq!(want.get(&vec![3]).unwrap().0.as_deref(), Some("three v3"));

    // Re-applying everything changes nothing.
    let before = replica_state(&env, &table);
    env.rt
        .block_on(
            env.warehouse
                .run_apply(&table, None, &ApplyWindow::everything()),
        )
        .unwrap();
    assert_eq!(replica_state(&env, &table), before);
}

#[test]
fn bqemulator_replica_in_order_equals_out_of_order() {
    let env = env("in_order");
    let table = env.table("bets");
    let files = stream();
    replay(&env, &table, &files, &[0, 1, 2, 3, 4]);
    let all: Vec<&File> = files.iter().collect();
    assert_eq!(replica_state(&env, &table), expected(&all, false));
}

#[test]
fn bqemulator_replica_soft_delete_with_composite_key() {
    let env = env("soft_deletes");
    let table = env.table("wallets");
    assert!(table.soft_delete);
    let files = keyed(&stream(), 2);
    replay(&env, &table, &files, &[4, 2, 1, 3, 0, 3]);
    let all: Vec<&File> = files.iter().collect();
    let want = expected(&all, true);
    let got = replica_state(&env, &table);
    assert_eq!(got, want);
    // Key 2 (as 20/21) is kept, flagged deleted; its late insert did not undelete it.
    assert!(got.get(&vec![20, 21]).unwrap().1);
}

#[test]
fn bqemulator_column_additions_and_type_conflicts() {
    let env = env("evolution");
    let table = env.table("bets");
    let schema = schema_for(&table);
    env.run(&sql::create_changelog(&table, &schema).unwrap());
    let added = [field("vip", BqType::Bool), field("payload", BqType::Json)];
    let alter = sql::add_columns(&table.changelog, &added).unwrap();
    env.run(&alter);
    env.run(&alter); // IF NOT EXISTS: a repeat is harmless
    // bqemulator's tables.get does not show columns added by ALTER (its gap); the columns are
    // there for SQL, with their types.
    let r = env.run(&format!(
        "SELECT vip, payload FROM {} WHERE vip IS NULL",
        sql::table_path(&table.changelog)
    ));
    assert_eq!(r.columns, ["vip", "payload"]);
    insert_rows(&env, &table, &stream()[1]);
    env.run(&format!(
        "UPDATE {} SET vip = TRUE, payload = JSON '{{\"a\": 1}}' WHERE id = 1",
        sql::table_path(&table.changelog)
    ));
    let r = env.run(&format!(
        "SELECT COUNT(*) FROM {} WHERE vip",
        sql::table_path(&table.changelog)
    ));
    assert_eq!(r.rows[0][0], Value::String("1".into()));
    let actual = schema;
    // The table now says INT64 for id: a file with id as STRING is refused, naming both.
    let err = ferry_bigquery::warehouse::missing_columns(
        &table.changelog,
        &actual,
        &[field("id", BqType::String)],
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("id is INT64 in BigQuery but STRING"),
        "{err}"
    );
}

#[test]
fn bqemulator_json_columns_are_parsed_into_the_replica_and_bad_text_is_flagged() {
    let env = env("json_columns");
    let table = env.table("profiles");
    let file = File {
        name: "cdc/casino/profiles/20261126-120000000.parquet",
        seq: "00000001",
        changes: vec![
            c(&[1], "INSERT", Some(r#"{"level": 3, "tags": ["vip"]}"#), 10),
            c(&[2], "INSERT", Some(r#"{"cut": "at 32 K"#), 11),
            c(&[3], "INSERT", None, 12),
        ],
    };
    replay(&env, &table, std::slice::from_ref(&file), &[0]);
    let r = env.run(&format!(
        "SELECT id, JSON_VALUE(note, '$.level') AS level, _ferry_invalid_json FROM {} ORDER BY id",
        sql::table_path(table.replica.as_ref().unwrap())
    ));
    let cell = |row: usize, col: usize| r.rows[row][col].as_str().map(str::to_owned);
    assert_eq!(r.rows.len(), 3, "every change is kept: {:?}", r.rows);
    assert_eq!(cell(0, 1).as_deref(), Some("3"), "{:?}", r.rows);
    assert_eq!(cell(0, 2).as_deref(), Some("false"));
    assert_eq!(cell(1, 1), None, "text that does not parse is NULL");
    assert_eq!(
        cell(1, 2).as_deref(),
        Some("true"),
        "and the row is flagged"
    );
    assert_eq!(cell(2, 2).as_deref(), Some("false"), "NULL is not invalid");
    // The change log keeps the text as it came.
    let r = env.run(&format!(
        "SELECT note FROM {} WHERE id = 2",
        sql::table_path(&table.changelog)
    ));
    assert_eq!(r.rows[0][0].as_str(), Some(r#"{"cut": "at 32 K"#));
}

#[test]
fn strict_grammar_accepts_every_generated_statement() {
    let env = env("grammar");
    for name in ["bets", "wallets", "profiles"] {
        let table = env.table(name);
        let files = keyed(&stream(), table.primary_key.len());
        replay(&env, &table, &files[..1], &[0]);
    }
    let st = env.server.state.lock().unwrap();
    assert!(st.refusals.is_empty(), "{:?}", st.refusals);
    assert!(st.tables.len() >= 6, "{:?}", st.tables.keys());
}

/// A full load with changes committed while it ran, whole-second timestamps out of commit
/// order, and a reload after an uncaptured truncate, as DMS writes them. The truth is the
/// source's table, written by hand from the story below, not derived from any ordering rule.
///
/// - Rows 1 `a`, 2 `b`, 3 `c` exist. The load starts at t=100 and reads row 1 (t=101).
/// - During the load: 1 becomes `a2` (t=102), 3 is deleted (t=103), 2 becomes `b2` (t=104).
/// - The load reads row 2 as `b2` (t=105); row 3 is gone. `LOAD00000001` is written at t=110,
///   its rows stamped with their transfer times; the cached changes follow in a CDC file.
/// - Later: 4 is inserted as `d`, then a transaction that began at t=149 commits after the
///   one stamped t=151 and sets 4 to `d3`: binlog order, not timestamps, says `d3` wins.
/// - 6 is inserted (t=250). A TRUNCATE at t=280 is not captured; 7 `g` is inserted after it.
/// - A reload at t=300 writes `LOAD00000001` again (row 7 only); during it 7 becomes `g2` and
///   8 `h` is inserted.
fn dms_story(task_start_timestamps: bool) -> Vec<File> {
    // `_ferry_commit_ts` of full-load rows: the transfer time, or the task's start.
    let load_ts = |t: i64| if task_start_timestamps { 100 } else { t };
    let reload_ts = |t: i64| if task_start_timestamps { 300 } else { t };
    vec![
        File {
            name: "cdc/casino/bets/LOAD00000001.parquet",
            seq: "00000000000000000110.0.0..0000000000.00000001.LOAD00000001.parquet",
            changes: vec![
                c(&[1], "LOAD", Some("a"), load_ts(101)),
                c(&[2], "LOAD", Some("b2"), load_ts(105)),
            ],
        },
        File {
            name: "cdc/casino/bets/20261126-000000111.parquet",
            seq: "00000000000000000111.1.20261126-000000111.parquet",
            changes: vec![
                c(&[1], "UPDATE", Some("a2"), 102),
                c(&[3], "DELETE", Some("c"), 103),
                c(&[2], "UPDATE", Some("b2"), 104),
            ],
        },
        File {
            name: "cdc/casino/bets/20261126-000000200.parquet",
            seq: "00000000000000000200.1.20261126-000000200.parquet",
            changes: vec![
                c(&[4], "INSERT", Some("d"), 150),
                c(&[4], "UPDATE", Some("d2"), 151),
                c(&[4], "UPDATE", Some("d3"), 149),
            ],
        },
        File {
            name: "cdc/casino/bets/20261126-000000260.parquet",
            seq: "00000000000000000260.1.20261126-000000260.parquet",
            changes: vec![c(&[6], "INSERT", Some("f"), 250)],
        },
        File {
            name: "cdc/casino/bets/20261126-000000290.parquet",
            seq: "00000000000000000290.1.20261126-000000290.parquet",
            changes: vec![c(&[7], "INSERT", Some("g"), 285)],
        },
        File {
            name: "cdc/casino/bets/LOAD00000001.parquet",
            seq: "00000000000000000310.0.0..0000000000.00000001.LOAD00000001.parquet",
            changes: vec![c(&[7], "LOAD", Some("g"), reload_ts(305))],
        },
        File {
            name: "cdc/casino/bets/20261126-000000400.parquet",
            seq: "00000000000000000400.1.20261126-000000400.parquet",
            changes: vec![
                c(&[7], "UPDATE", Some("g2"), 320),
                c(&[8], "INSERT", Some("h"), 350),
            ],
        },
    ]
}

fn source_table(rows: &[(i64, &str)]) -> BTreeMap<Vec<i64>, (Option<String>, bool)> {
    rows.iter()
        .map(|(k, v)| (vec![*k], (Some((*v).to_owned()), false)))
        .collect()
}

#[test]
fn bqemulator_full_load_overlap_whole_seconds_and_reload_match_the_source() {
    for task_start in [false, true] {
        let env = env(if task_start {
            "story_task_start"
        } else {
            "story_transfer"
        });
        let table = env.table("bets");
        let files = dms_story(task_start);
        // Up to the truncate: the first run and its changes.
        replay(&env, &table, &files, &[0, 1, 2, 3]);
        assert_eq!(
            replica_state(&env, &table),
            source_table(&[(1, "a2"), (2, "b2"), (4, "d3"), (6, "f")]),
            "task_start_timestamps={task_start}: changes during the load beat its stale rows"
        );
        // The reload rebuilds the table: 1, 2, 4 and 6 were truncated away.
        replay(&env, &table, &files, &[4, 5, 6]);
        assert_eq!(
            replica_state(&env, &table),
            source_table(&[(7, "g2"), (8, "h")]),
            "task_start_timestamps={task_start}: the reload replaced the old run"
        );
        // A late, duplicated file from before the reload changes nothing.
        replay(&env, &table, &files, &[2, 1]);
        assert_eq!(
            replica_state(&env, &table),
            source_table(&[(7, "g2"), (8, "h")])
        );
        // A full re-apply of the change log (both runs' rows) gives the same table.
        env.rt
            .block_on(
                env.warehouse
                    .run_apply(&table, None, &ApplyWindow::everything()),
            )
            .unwrap();
        assert_eq!(
            replica_state(&env, &table),
            source_table(&[(7, "g2"), (8, "h")])
        );
    }
}

#[test]
fn bqemulator_story_delivered_out_of_order_matches_the_source() {
    let env = env("story_shuffled");
    let table = env.table("bets");
    let files = dms_story(false);
    // The cached changes before their load, the reload before the file before it, the last
    // file first.
    replay(&env, &table, &files, &[6, 1, 3, 0, 5, 2, 4, 1]);
    assert_eq!(
        replica_state(&env, &table),
        source_table(&[(7, "g2"), (8, "h")])
    );
}

/// `on_truncate: empty` on BigQuery: the statements that empty a replica as of a removal pass
/// the strict grammar and, on bqemulator, leave only what DMS wrote after the truncate; a late
/// file from before it brings nothing back.
#[test]
fn bqemulator_a_truncate_empties_the_replica_as_of_the_removal() {
    use ferry_pipeline::Warehouse;
    let env = env("truncate");
    let table = env.table("bets");
    let files = dms_story(false);
    replay(&env, &table, &files, &[0, 1, 2]);
    assert!(!replica_state(&env, &table).is_empty());
    let source = env.catalog.source("games").unwrap();
    env.warehouse
        .empty_replica(source, &table, &ferry_core::key::removal_run_seq(270))
        .unwrap();
    assert!(replica_state(&env, &table).is_empty(), "emptied");
    // After the truncate: key 7 (t=290). Before it, delivered late: key 6 (t=260).
    replay(&env, &table, &files, &[4, 3]);
    assert_eq!(replica_state(&env, &table), source_table(&[(7, "g")]));
    let st = env.server.state.lock().unwrap();
    assert!(st.refusals.is_empty(), "{:?}", st.refusals);
}

/// The live view over a replica that lacks the newest files (one of them an old file arriving
/// late): it shows the source's state (the model), and once the files are applied it equals
/// the replica.
fn live_view_story(dataset: &str, name: &str, arity: usize) {
    let env = env(dataset);
    let table = env.table(name);
    let files = if arity == 1 {
        stream()
    } else {
        keyed(&stream(), arity)
    };
    let schema = schema_for(&table);
    env.run(&sql::create_changelog(&table, &schema).unwrap());
    for ddl in sql::create_replica(&table, &schema).unwrap() {
        env.run(&ddl);
    }
    let apply = |i: usize| {
        env.rt
            .block_on(env.warehouse.run_apply(&table, None, &window(&files[i])))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    for i in [1, 2] {
        insert_rows(&env, &table, &files[i]);
        apply(i);
    }
    // Loaded into the change log, not applied yet.
    for i in [3, 4, 0] {
        insert_rows(&env, &table, &files[i]);
    }
    // A lookback that holds the test's commit times (1970); production reads back hours.
    let ddl = sql::live_view(&table, &schema, Duration::from_secs(100 * 365 * 86_400)).unwrap();
    env.run(&ddl);
    env.run(&ddl); // OR REPLACE: again is harmless
    let view = sql::live_view_of(table.replica.as_ref().unwrap());
    let live = state_of(&env, &table, &view);
    let before = replica_state(&env, &table);
    assert_ne!(before, live, "the replica lacks the newest files");
    if sql::json_columns(&table).is_empty() {
        let all: Vec<&File> = files.iter().collect();
        assert_eq!(
            live,
            expected(&all, table.soft_delete),
            "the live view shows the source"
        );
    }
    for i in [3, 4, 0] {
        apply(i);
    }
    assert_eq!(
        replica_state(&env, &table),
        live,
        "after the apply the replica is the live view"
    );
    assert_eq!(state_of(&env, &table, &view), live);
}

#[test]
fn bqemulator_live_view_hard_deletes() {
    live_view_story("live_hard", "bets", 1);
}

#[test]
fn bqemulator_live_view_soft_deletes_composite_key() {
    live_view_story("live_soft", "wallets", 2);
}

#[test]
fn bqemulator_live_view_json_columns() {
    live_view_story("live_json", "profiles", 1);
}

#[test]
fn bqemulator_status_views_report_freshness_counts_failures_and_verification() {
    let server = BqServer::start(Some(bqemulator().to_owned()));
    let config = ClientConfig {
        base_url: server.url.clone(),
        initial_backoff: Duration::from_millis(50),
        ..ClientConfig::default()
    };
    let client = Client::new(config, Auth::None, "ferry-test").unwrap();
    let rt = ferry_tests::runtime();
    for d in ["arcade", "ferry_status", "info"] {
        rt.block_on(client.ensure_dataset("ferry-test", d, None))
            .unwrap();
    }
    let dir = TempDir::new("status-views");
    std::fs::write(
        dir.path().join("arcade.json"),
        r#"{"source": {"name": "arcade", "bucket": "dms", "folder": "cdc"},
            "bigquery": {"project": "ferry-test", "dataset": "arcade"},
            "tables": {"arcade.players": {"primary_key": ["id"]}, "arcade.spins": {"primary_key": ["id"]},
                       "arcade.payouts": {"primary_key": ["id"], "enabled": false}}}"#,
    )
    .unwrap();
    let catalog = Catalog::load_dir(dir.path()).unwrap();
    // The stand-in of INFORMATION_SCHEMA.JOBS (its documented columns) is set up on bqemulator
    // directly: the strict server's DDL rule knows only the types ferry writes.
    let direct = Client::new(
        ClientConfig {
            base_url: bqemulator().to_owned(),
            ..ClientConfig::default()
        },
        Auth::None,
        "ferry-test",
    )
    .unwrap();
    let mut n = 0;
    let run = |c: &Client, sql: &str, n: &mut u64| -> Vec<Vec<Option<String>>> {
        *n += 1;
        let r = rt
            .block_on(c.query(
                sql,
                None,
                &format!("status-views-{n}"),
                Duration::from_secs(30),
            ))
            .unwrap_or_else(|e| panic!("{e}\n{sql}"));
        r.rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .collect()
    };
    let q = |sql: &str, n: &mut u64| run(&client, sql, n);
    let setup = |sql: &str, n: &mut u64| run(&direct, sql, n);
    // A scripted history: change logs, load jobs (as INFORMATION_SCHEMA.JOBS shows them, with
    // ferry's labels) and a reconcile result.
    for t in ["players", "spins"] {
        q(
            &format!(
                "CREATE TABLE `ferry-test`.`arcade`.`{t}_changelog` (`id` INT64, `_ferry_commit_ts` TIMESTAMP)"
            ),
            &mut n,
        );
    }
    q("INSERT INTO `ferry-test`.`arcade`.`players_changelog` (`id`, `_ferry_commit_ts`) VALUES
       (1, TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 10 MINUTE)), (2, TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 10 MINUTE)),
       (3, TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 150 MINUTE)), (4, TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 3 DAY))", &mut n);
    q(
        "INSERT INTO `ferry-test`.`arcade`.`spins_changelog` (`id`, `_ferry_commit_ts`) VALUES (1, TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 5 HOUR))",
        &mut n,
    );
    setup("CREATE TABLE `ferry-test`.`info`.`jobs` (`creation_time` TIMESTAMP, `job_id` STRING, `job_type` STRING, `state` STRING,
       `error_result` STRUCT<reason STRING, message STRING>, `labels` ARRAY<STRUCT<key STRING, value STRING>>, `total_bytes_processed` INT64)", &mut n);
    let labels = |table: &str| {
        format!(
            "[STRUCT('ferry_source' AS key, 'arcade' AS value), STRUCT('ferry_table' AS key, '{table}' AS value)]"
        )
    };
    setup(&format!("INSERT INTO `ferry-test`.`info`.`jobs` VALUES
       (TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 9 MINUTE), 'ferry_players_2', 'LOAD', 'DONE', NULL, {p}, 100),
       (TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 149 MINUTE), 'ferry_players_1', 'LOAD', 'DONE', NULL, {p}, 50),
       (TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 3 DAY), 'ferry_players_0', 'LOAD', 'DONE', NULL, {p}, 50),
       (TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 HOUR), 'ferry_spins_9', 'LOAD', 'DONE', STRUCT('invalid' AS reason, 'bad file' AS message), {s}, 0),
       (TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 HOUR), 'query_1', 'QUERY', 'DONE', NULL, {s}, 10)",
        p = labels("arcade_players"), s = labels("arcade_spins")), &mut n);
    q(
        "CREATE TABLE `ferry-test`.`arcade`.`ferry_reconcile` (source STRING, table_name STRING, status STRING, checked_at TIMESTAMP, verified_through TIMESTAMP)",
        &mut n,
    );
    q("INSERT INTO `ferry-test`.`arcade`.`ferry_reconcile` VALUES
       ('arcade', 'arcade.players', 'match', TIMESTAMP '2026-11-30 00:00:00+00', TIMESTAMP '2026-11-29 23:50:00+00'),
       ('arcade', 'arcade.players', 'match', TIMESTAMP '2026-12-01 00:00:00+00', TIMESTAMP '2026-11-30 23:55:00+00'),
       ('arcade', 'arcade.spins', 'differ', TIMESTAMP '2026-12-01 00:00:00+00', NULL)", &mut n);

    let exists = |t: &ferry_core::TableRef| t.table != "payouts_changelog";
    for sql in ferry_bigquery::status::statements(
        &catalog,
        "ferry-test",
        "`ferry-test`.`info`.`jobs`",
        &exists,
    ) {
        q(&sql, &mut n);
    }
    let rows = q("SELECT table_name, state, last_job, freshness_seconds, loads_24h, rows_24h, failed_loads_24h, reconcile, CAST(verified_through AS STRING)
                  FROM `ferry-test`.`ferry_status`.`table_status` ORDER BY table_name", &mut n);
    let by = |t: &str| {
        rows.iter()
            .find(|r| r[0].as_deref() == Some(t))
            .unwrap_or_else(|| panic!("{t}: {rows:?}"))
            .clone()
    };
    let num = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<f64>().ok());
    let players = by("arcade.players");
    assert_eq!(players[1].as_deref(), Some("enabled"));
    assert_eq!(
        players[2].as_deref(),
        Some("ferry_players_2"),
        "the newest successful load"
    );
    let fresh = num(&players[3]).unwrap();
    assert!((590.0..=720.0).contains(&fresh), "freshness {fresh}");
    assert_eq!(
        num(&players[4]),
        Some(2.0),
        "loads in the last day: {players:?}"
    );
    assert_eq!(
        num(&players[5]),
        Some(3.0),
        "rows committed in the last day"
    );
    assert_eq!(num(&players[6]), Some(0.0));
    assert_eq!(players[7].as_deref(), Some("match"));
    assert!(
        players[8]
            .as_deref()
            .unwrap_or_default()
            .starts_with("2026-11-30 23:55:00"),
        "{players:?}"
    );
    let spins = by("arcade.spins");
    assert_eq!(num(&spins[6]), Some(1.0), "the failed load: {spins:?}");
    assert_eq!(spins[7].as_deref(), Some("differ"));
    assert_eq!(spins[8], None);
    let payouts = by("arcade.payouts");
    assert_eq!(payouts[1].as_deref(), Some("disabled"));
    assert_eq!((payouts[3].clone(), num(&payouts[5])), (None, Some(0.0)));
    let hourly = q(
        "SELECT table_name, row_count, loads, failed_loads FROM `ferry-test`.`ferry_status`.`table_status_hourly` ORDER BY table_name, hour",
        &mut n,
    );
    let players_hours: Vec<_> = hourly
        .iter()
        .filter(|r| r[0].as_deref() == Some("arcade.players"))
        .collect();
    assert_eq!(players_hours.len(), 2, "{hourly:?}");
    assert!(
        hourly
            .iter()
            .any(|r| r[0].as_deref() == Some("arcade.spins") && r[3].as_deref() == Some("1")),
        "{hourly:?}"
    );
}
