//! `scripts/bench reconcile [ROWS]`: reconcile throughput on a table of ROWS rows (default 1M),
//! source side (MariaDB) and warehouse side (SQLite, local mode), measured, never asserted.
//!
//! The table is filled in MariaDB, written as DMS full-load files by the tests' DMS, loaded with
//! `ferry local run`, then compared twice: once matching (one aggregate pass per side), and once
//! with 10 replica rows changed (the bisection down to the keys).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::time::Instant;

use ferry_sim::model::MysqlType as M;
use ferry_source::conn::{ConnectOptions, MySql, SourceUrl};
use ferry_source::reconcile::{self, Options};
use ferry_tests::dms_tree::{self, ModelColumn, ModelTable};
use ferry_tests::stand_ins::MariaDb;
use ferry_tests::{TempDir, ferry};

fn table() -> ModelTable {
    let c = |name, ddl, mysql| ModelColumn { name, ddl, mysql };
    ModelTable {
        schema: "bench",
        name: "bets",
        columns: vec![
            c("bet_id", "BIGINT NOT NULL", M::BigInt),
            c("player_id", "INT", M::Int),
            c("amount", "DECIMAL(20,4)", M::Decimal(20, 4)),
            c("odds", "DOUBLE", M::Double),
            c("won", "TINYINT(1)", M::Boolean),
            c("placed_at", "DATETIME(6)", M::Datetime),
            c("game", "VARCHAR(40)", M::Varchar),
            c("meta", "JSON", M::Json),
        ],
        key: vec!["bet_id"],
    }
}

const MAPPING: &str = r#"{
  "source": {"name": "bench", "bucket": "bench-dms", "folder": "cdc", "dms": {"timestamp_column": "dms_commit_ts"}},
  "bigquery": {"project": "bench-project", "dataset": "bench"},
  "tables": {"bench.bets": {"primary_key": ["bet_id"], "columns": {"won": "tinyint(1)", "placed_at": "datetime(6)", "meta": "json"}}}
}"#;

fn main() {
    let rows: u64 = std::env::args()
        .skip(1)
        .find(|a| a.chars().all(|c| c.is_ascii_digit()))
        .map_or(1_000_000, |a| a.parse().unwrap());
    let db = MariaDb::start("bench", &[]);
    let dir = TempDir::new("reconcile-bench");
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/bench.json"), MAPPING).unwrap();
    let t = table();
    let mut a = db.admin();
    a.exec("CREATE DATABASE bench").unwrap();
    a.exec(&t.create_sql()).unwrap();
    let started = Instant::now();
    a.exec(&format!(
        "INSERT INTO bench.bets SELECT seq, seq % 50000, seq * 0.25, seq / 7e0, seq % 2,
           TIMESTAMP('2026-01-01') + INTERVAL seq SECOND, CONCAT('game-', seq % 97),
           CONCAT('{{\"line\": ', seq % 20, '}}') FROM (SELECT CAST(seq AS SIGNED) seq FROM bench.seq_1_to_{rows}) s"
    ))
    .unwrap();
    println!(
        "source: {rows} rows inserted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let url = SourceUrl::parse(&db.read_only_url()).unwrap();
    let mut r = MySql::connect(&url, ConnectOptions::default()).unwrap();
    let bucket = dir.path().join("bucket");
    let started = Instant::now();
    let chunk = 250_000u64;
    let at = 1_790_000_000_000_000i64;
    for (i, lo) in (1..=rows)
        .step_by(usize::try_from(chunk).unwrap())
        .enumerate()
    {
        let path = bucket.join(format!("cdc/bench/bets/LOAD{:08X}.parquet", i + 1));
        dms_tree::write_file(
            &mut r,
            &t,
            &format!("bet_id BETWEEN {lo} AND {}", lo + chunk - 1),
            None,
            "dms_commit_ts",
            at,
            &path,
        );
    }
    println!(
        "DMS files written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (m, b, w) = (
        dir.path().join("mappings").display().to_string(),
        bucket.display().to_string(),
        dir.path().join("warehouse.db").display().to_string(),
    );
    let started = Instant::now();
    let (code, out, err) = ferry(&[
        "local",
        "run",
        "--mappings",
        &m,
        "--bucket-dir",
        &b,
        "--warehouse",
        &w,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    println!(
        "ferry local run: {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        out.trim()
    );

    let catalog = ferry_core::Catalog::load_dir(Path::new(&m)).unwrap();
    let source = catalog.source("bench").unwrap();
    let mapping = &source.tables[0];
    let tables = ferry_source::catalog::read_tables(&mut r, &["bench".into()]).unwrap();
    let st = &tables[0];
    let conn = ferry_source::table::open_local(Path::new(&w)).unwrap();
    let fields = ferry_source::table::local_fields(&conn, mapping)
        .unwrap()
        .unwrap();
    let shape = reconcile::Shape::new(
        ferry_source::table::columns(st, &fields),
        &mapping.primary_key,
    )
    .unwrap();

    // Each side alone: one aggregate over the whole table.
    for side in ["source", "warehouse"] {
        let started = Instant::now();
        let mut s = if side == "source" {
            ferry_source::table::mysql_side(&mut r, st)
        } else {
            ferry_source::table::sqlite_side(
                ferry_source::table::open_local(Path::new(&w)).unwrap(),
                mapping,
            )
        };
        let sql = format!(
            "SELECT COUNT(*), SUM(p) FROM (SELECT {} AS p FROM {}) x",
            ferry_source::canon::hex_piece(
                s.dialect,
                &ferry_source::canon::sha256(
                    s.dialect,
                    &ferry_source::canon::row_text(s.dialect, &shape.cols)
                ),
            ),
            s.table
        );
        let n = (s.exec)(&sql).unwrap()[0][0].clone().unwrap();
        let secs = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let rate = rows as f64 / secs;
        println!("{side} side: {n} rows hashed in {secs:.2} s, {rate:.0} rows/s");
    }
    for (label, broken) in [("matching", 0), ("10 rows changed", 10)] {
        if let Some(step) = rows.checked_div(broken) {
            for k in 0..broken {
                conn.execute(
                    r#"UPDATE "bench.bets" SET game = 'tampered' WHERE bet_id = ?1"#,
                    [i64::try_from(1 + k * step).unwrap()],
                )
                .unwrap();
            }
        }
        let started = Instant::now();
        let mut s = ferry_source::table::mysql_side(&mut r, st);
        let mut rep = ferry_source::table::sqlite_side(
            ferry_source::table::open_local(Path::new(&w)).unwrap(),
            mapping,
        );
        let outcome = reconcile::compare(
            &mut s,
            &mut rep,
            &shape,
            Options::default(),
            &mut |_, _| {},
            &mut || {},
        )
        .unwrap();
        let secs = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let rate = rows as f64 / secs;
        println!(
            "reconcile, {label}: {secs:.2} s ({rate:.0} rows/s), {} segments, {} different",
            outcome.segments,
            outcome.different.len()
        );
    }
}
