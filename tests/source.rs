//! Integrity against a real MySQL source (MariaDB, started by the tests): preflight, hints read
//! from information_schema, and reconcile/repair of the local warehouse's replicas.
//!
//! The source's tables hold every MySQL type of the DMS type table with NULLs, unicode, 2^64-1,
//! DECIMAL(65,30) extremes, JSON and zero dates. The DMS tree is written by the tests' own DMS
//! (`support::dms_tree`, the simulator's model of each type), loaded with `ferry local run`, and
//! then compared with the source by `ferry reconcile`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use ferry_sim::model::MysqlType as M;
use ferry_source::conn::{ConnectOptions, MySql, SourceUrl};
use ferry_tests::dms_tree::{self, ModelColumn, ModelTable};
use ferry_tests::stand_ins::MariaDb;
use ferry_tests::{TempDir, ferry};
use serde_json::Value;

const TS: &str = "dms_commit_ts";

fn col(name: &'static str, ddl: &'static str, mysql: M) -> ModelColumn {
    ModelColumn { name, ddl, mysql }
}

fn players() -> ModelTable {
    ModelTable {
        schema: "casino_game",
        name: "players",
        columns: vec![
            col("player_id", "INT NOT NULL", M::Int),
            col("is_vip", "TINYINT(1)", M::Boolean),
            col("stars", "TINYINT", M::TinyInt),
            col("spins_left", "TINYINT UNSIGNED", M::TinyIntUnsigned),
            col("level", "SMALLINT", M::SmallInt),
            col("seat_count", "SMALLINT UNSIGNED", M::SmallIntUnsigned),
            col("xp", "MEDIUMINT", M::MediumInt),
            col("points", "INT UNSIGNED", M::IntUnsigned),
            col("big", "BIGINT", M::BigInt),
            col("external_ref", "BIGINT UNSIGNED", M::BigIntUnsigned),
            col("is_flagged", "BIT(1)", M::Bit1),
            col("status_flags", "BIT(8)", M::Bits(8)),
            col("amount", "DECIMAL(20,4)", M::Decimal(20, 4)),
            col("jackpot", "DECIMAL(65,30)", M::Decimal(65, 30)),
            col("score", "DOUBLE", M::Double),
            col("ratio", "FLOAT", M::Float),
            col("birth_date", "DATE", M::Date),
            col("created_at", "DATETIME(3)", M::Datetime),
            col("last_login", "TIMESTAMP(6) NULL DEFAULT NULL", M::Timestamp),
            col("session_len", "TIME(6)", M::Time),
            col("signup_year", "YEAR", M::Year),
            col("nickname", "VARCHAR(64)", M::Varchar),
            col("bio", "LONGTEXT", M::Varchar),
            col("prefs", "JSON", M::Json),
            col("tier", "ENUM('bronze','silver','gold')", M::Enum),
            col("channels", "SET('email','sms','push')", M::Set),
            col("avatar", "BLOB", M::Blob),
        ],
        key: vec!["player_id"],
    }
}

fn wallets() -> ModelTable {
    ModelTable {
        schema: "casino_game",
        name: "wallets",
        columns: vec![
            col("player_id", "INT NOT NULL", M::Int),
            col("currency", "CHAR(3) NOT NULL", M::Varchar),
            col("balance", "DECIMAL(20,4)", M::Decimal(20, 4)),
            col("updated_at", "DATETIME(6)", M::Datetime),
        ],
        key: vec!["player_id", "currency"],
    }
}

fn sessions() -> ModelTable {
    ModelTable {
        schema: "casino_game",
        name: "sessions",
        columns: vec![
            col("session_id", "VARCHAR(36) NOT NULL", M::Varchar),
            col("player_id", "INT", M::Int),
            col("started_at", "TIMESTAMP NULL DEFAULT NULL", M::Timestamp),
            col("device", "VARCHAR(200)", M::Varchar),
        ],
        key: vec!["session_id"],
    }
}

/// The hand-written mapping: every hint the source needs.
const MAPPING: &str = r#"{
  "source": {"name": "casino", "bucket": "casino-dms", "folder": "cdc", "dms": {"timestamp_column": "dms_commit_ts"}},
  "bigquery": {"project": "casino-analytics", "dataset": "casino"},
  "defaults": {"mode": "replica"},
  "tables": {
    "casino_game.players": {
      "primary_key": ["player_id"],
      "description": "Players, as analysts describe them.",
      "columns": {"is_vip": "tinyint(1)", "external_ref": "bigint unsigned", "is_flagged": "bit(1)",
                  "status_flags": "bit(8)", "created_at": "datetime(3)", "last_login": "timestamp(6)",
                  "session_len": "time(6)", "prefs": "json"}
    },
    "casino_game.wallets": {"primary_key": ["player_id", "currency"], "columns": {"updated_at": "datetime(6)"}},
    "casino_game.sessions": {"primary_key": ["session_id"], "soft_delete": true, "columns": {"started_at": "timestamp"}}
  }
}
"#;

const PLAYERS: u32 = 2000;

/// Fills the source: generated rows plus rows of edge values.
fn fill(db: &MariaDb) {
    let mut a = db.admin();
    a.exec("CREATE DATABASE casino_game").unwrap();
    for t in [players(), wallets(), sessions()] {
        a.exec(&t.create_sql()).unwrap();
    }
    a.exec(&format!(
        "INSERT INTO casino_game.players SELECT seq, seq % 3 = 0, seq % 200 - 100, seq % 256, seq % 30000, seq % 65536,
           seq * 7 % 8388607, seq * 2147483, seq * 4611686018427, CAST(seq AS UNSIGNED) * 9223372036854775,
           seq % 2, seq % 256, seq * 12.3456 - 9000, CONCAT(seq, '.', LPAD(seq, 30, '7')),
           seq / 7.0e0, seq / 3.0e0, DATE_ADD('1990-01-01', INTERVAL seq DAY),
           TIMESTAMP('2026-01-01 00:00:00.123') + INTERVAL seq MINUTE,
           TIMESTAMP('2026-06-01 12:00:00.654321') + INTERVAL seq SECOND,
           SEC_TO_TIME(seq * 37.5), 1990 + seq % 60, CONCAT('플레이어 ', seq, ' 😊'),
           REPEAT('bio ', seq % 5), CONCAT('{{\"level\": ', seq, ', \"tags\": [\"a\", \"b\"]}}'),
           ELT(1 + seq % 3, 'bronze', 'silver', 'gold'), IF(seq % 4 = 0, 'email,push', 'sms'),
           UNHEX(LPAD(HEX(seq), 8, '0'))
         FROM (SELECT CAST(seq AS SIGNED) AS seq FROM casino_game.seq_1_to_{PLAYERS}) s"
    ))
    .unwrap();
    // Edge values: NULLs, extremes, zero dates, awkward text.
    a.exec(
        "INSERT INTO casino_game.players (player_id) VALUES (-5), (0);
         INSERT INTO casino_game.players VALUES
          (3000001, 1, -128, 255, -32768, 65535, -8388608, 4294967295, -9223372036854775808,
           18446744073709551615, 1, 255, -9999999999999999.9999,
           '99999999999999999999999999999999999.999999999999999999999999999999',
           1.0000000000000002, 3.4e38, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00',
           '00:00:00', 2155, 'a \"quoted\"|pipe~:1', '', '{\"b\": 1, \"a\": [1, 2], \"s\": \"x  y\"}',
           'gold', '', X''),
          (3000002, 0, 127, 0, 32767, 0, 8388607, 0, 9223372036854775807, 0, 0, 0, 0.0001,
           '-99999999999999999999999999999999999.999999999999999999999999999999',
           -2.675, -0.0, '2024-00-15', '9999-12-31 23:59:59.999', '2038-01-19 03:14:07.999999',
           '23:59:59.999999', 1901, '~', 'line\nbreak\ttab\\\\back', '[]', 'bronze',
           'email,sms,push', X'00FF00'),
          (3000003, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           1e300, 1e-30, '1000-01-01', '1000-01-01 00:00:00', NULL, NULL, NULL, NULL, NULL, 'null',
           NULL, NULL, NULL)",
    )
    .unwrap();
    a.exec(
        "INSERT INTO casino_game.wallets SELECT p.seq, c.cur, p.seq * 10.5 + c.n, TIMESTAMP('2026-03-01 00:00:00') + INTERVAL (p.seq * 3 + c.n) SECOND
         FROM (SELECT CAST(seq AS SIGNED) AS seq FROM casino_game.seq_1_to_300) p CROSS JOIN (SELECT 'EUR' cur, 1 n UNION ALL SELECT 'USD', 2 UNION ALL SELECT 'KRW', 3) c;
         INSERT INTO casino_game.sessions SELECT CONCAT(LPAD(HEX(seq * 2654435761 % 4294967296), 8, '0'), '-s', seq),
           seq % 500, TIMESTAMP('2026-05-01 08:00:00') + INTERVAL seq MINUTE, IF(seq % 10 = 0, NULL, CONCAT('device ', seq))
         FROM (SELECT CAST(seq AS SIGNED) AS seq FROM casino_game.seq_1_to_700) s",
    )
    .unwrap();
}

struct World {
    db: MariaDb,
    dir: TempDir,
}

impl World {
    fn mappings(&self) -> String {
        self.dir.path().join("mappings").display().to_string()
    }
    fn bucket(&self) -> String {
        self.dir.path().join("bucket").display().to_string()
    }
    fn warehouse(&self) -> String {
        self.dir.path().join("warehouse.db").display().to_string()
    }
    fn reader(&self) -> MySql {
        MySql::connect(
            &SourceUrl::parse(&self.db.read_only_url()).unwrap(),
            ConnectOptions::default(),
        )
        .unwrap()
    }
    fn table_dir(&self, t: &ModelTable) -> std::path::PathBuf {
        Path::new(&self.bucket())
            .join("cdc")
            .join(t.schema)
            .join(t.name)
    }
    fn load(&self) -> String {
        let (code, out, err) = ferry(&[
            "local",
            "run",
            "--mappings",
            &self.mappings(),
            "--bucket-dir",
            &self.bucket(),
            "--warehouse",
            &self.warehouse(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("dead-lettered 0"), "{out}");
        out
    }
    fn reconcile(&self, extra: &[&str]) -> (u8, String, String) {
        let (m, url, wh) = (self.mappings(), self.db.read_only_url(), self.warehouse());
        let mut args = vec![
            "reconcile",
            "--mappings",
            &m,
            "--source",
            "casino",
            "--url",
            &url,
            "--warehouse",
            &wh,
        ];
        args.extend_from_slice(extra);
        ferry(&args)
    }
}

fn now_micros() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

/// The source, its DMS tree (one full load per table, an hour ago) and the local warehouse
/// loaded from it: shared by the tests that only read it.
fn loaded_world() -> World {
    let db = MariaDb::start("reconcile", &[]);
    fill(&db);
    let dir = TempDir::new("source");
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/casino.json"), MAPPING).unwrap();
    let w = World { db, dir };
    let mut r = w.reader();
    let at = now_micros() - 3_600_000_000;
    for t in [players(), wallets(), sessions()] {
        let n = dms_tree::write_file(
            &mut r,
            &t,
            "1 = 1",
            None,
            TS,
            at,
            &w.table_dir(&t).join("LOAD00000001.parquet"),
        );
        assert!(n > 0);
    }
    w.load();
    w
}

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn keys(v: &Value, field: &str) -> Vec<String> {
    let mut k: Vec<String> = v[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let k = if field == "different" { &k["key"] } else { k };
            k.as_object()
                .unwrap()
                .iter()
                .map(|(c, v)| format!("{c}={}", v.as_str().unwrap_or("NULL")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    k.sort();
    k
}

#[test]
fn reconcile_matches_finds_exactly_the_broken_keys_and_repair_restores_the_match() {
    let w = loaded_world();
    // Every type, NULL, unicode and edge value hashes the same on both sides.
    let (code, out, err) = w.reconcile(&["--settle", "0", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let reports = lines(&out);
    assert_eq!(reports.len(), 3, "{out}");
    for r in &reports {
        for field in [
            "table",
            "source_rows",
            "replica_rows",
            "missing",
            "extra",
            "different",
            "status",
        ] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert_eq!(r["status"], "match", "{r}");
        assert_eq!(r["source_rows"], r["replica_rows"]);
    }
    let rows = |t: &str| {
        reports.iter().find(|r| r["table"] == t).unwrap()["source_rows"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(rows("casino_game.players"), u64::from(PLAYERS) + 5);
    assert_eq!(rows("casino_game.wallets"), 900);
    assert_eq!(rows("casino_game.sessions"), 700);

    // Break the replica: one row lost, one extra, one changed; and a session row deleted.
    let sqlite = rusqlite::Connection::open(w.warehouse()).unwrap();
    sqlite
        .execute_batch(
            r#"DELETE FROM "casino.players" WHERE player_id = 17;
               CREATE TEMP TABLE copy AS SELECT * FROM "casino.players" WHERE player_id = 18;
               UPDATE copy SET player_id = 100017;
               INSERT INTO "casino.players" SELECT * FROM copy;
               UPDATE "casino.players" SET nickname = 'tampered' WHERE player_id = 42;
               UPDATE "casino.wallets" SET balance = '1.5' WHERE player_id = 7 AND currency = 'EUR';
               UPDATE "casino.sessions" SET _ferry_deleted = 1 WHERE player_id = 33;"#,
        )
        .unwrap();
    let ghost_sessions: Vec<String> = {
        let mut s = sqlite
            .prepare(r#"SELECT session_id FROM "casino.sessions" WHERE player_id = 33 ORDER BY 1"#)
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(!ghost_sessions.is_empty());
    // Changes in flight at the source: an update, and a primary-key update (DMS writes only the
    // after-image, so the old key stays behind as a ghost once it is loaded).
    let mut a = w.db.admin();
    a.exec("UPDATE casino_game.players SET level = level + 1 WHERE player_id = 5; UPDATE casino_game.players SET player_id = 900009 WHERE player_id = 9").unwrap();
    let mut r = w.reader();
    let cdc_at = now_micros();
    dms_tree::write_file(
        &mut r,
        &players(),
        "player_id IN (5, 900009)",
        Some("U"),
        TS,
        cdc_at,
        &w.table_dir(&players()).join(dms_tree::cdc_name(cdc_at)),
    );

    // Reconcile while the changes are in flight; ferry loads them during the settle wait.
    let catalog = ferry_core::Catalog::load_dir(Path::new(&w.mappings())).unwrap();
    let source = catalog.source("casino").unwrap().clone();
    let mut db = w.reader();
    let tables = ferry_source::catalog::read_tables(&mut db, &["casino_game".into()]).unwrap();
    let conn = ferry_source::table::open_local(Path::new(&w.warehouse())).unwrap();
    let mapping = source.tables.iter().find(|t| t.table == "players").unwrap();
    let st = tables.iter().find(|t| t.name == "players").unwrap();
    let mut loads = 0;
    let mut settle = || {
        loads += 1;
        w.load();
    };
    let report = ferry_source::table::reconcile_local(
        &mut db,
        &conn,
        &source,
        mapping,
        st,
        ferry_source::reconcile::Options::default(),
        &mut settle,
    );
    assert_eq!(loads, 1, "one settle wait");
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["status"], "differ", "{v}");
    assert_eq!(keys(&v, "missing"), ["player_id=17"], "{v}");
    assert_eq!(
        keys(&v, "extra"),
        ["player_id=100017", "player_id=9"],
        "{v}"
    );
    assert_eq!(keys(&v, "different"), ["player_id=42"], "{v}");
    assert_eq!(v["different"][0]["column"], "nickname");
    assert_eq!(v["different"][0]["replica"], "tampered");
    assert!(
        report.outcome.settled >= 2,
        "player 5's update and 900009 settled once loaded: {v}"
    );
    assert!(
        report.outcome.segments > 1,
        "the table was bisected, not listed: {v}"
    );

    // The CLI names the same keys in every table, and exits 1.
    let (code, out, err) = w.reconcile(&["--settle", "0", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let reports = lines(&out);
    let by = |t: &str| reports.iter().find(|r| r["table"] == t).unwrap().clone();
    assert_eq!(
        keys(&by("casino_game.wallets"), "different"),
        ["currency=EUR,player_id=7"]
    );
    assert_eq!(
        by("casino_game.wallets")["different"][0]["column"],
        "balance"
    );
    let mut expected: Vec<String> = ghost_sessions
        .iter()
        .map(|s| format!("session_id={s}"))
        .collect();
    expected.sort();
    assert_eq!(keys(&by("casino_game.sessions"), "missing"), expected);

    // Repair, then everything matches.
    let bucket = w.bucket();
    let (code, out, err) = w.reconcile(&["--settle", "0", "--repair", "--bucket-dir", &bucket]);
    assert_eq!(
        code, 1,
        "differences were found before the repair: {out}{err}"
    );
    assert!(out.contains("repaired"), "{out}{err}");
    let (code, out, err) = w.reconcile(&["--settle", "0"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches(": match").count(), 3, "{out}");
    // The results are recorded, with the time the tables are verified through.
    let verified: Vec<(String, String, Option<i64>)> = {
        let mut s = sqlite
            .prepare("SELECT table_name, status, verified_through FROM _ferry_reconcile ORDER BY 1")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(verified.len(), 3);
    assert!(
        verified.iter().all(|(_, s, v)| s == "match" && v.is_some()),
        "{verified:?}"
    );
}

fn shared() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let db = MariaDb::start("hints", &[]);
        fill(&db);
        let dir = TempDir::new("hints");
        std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
        std::fs::write(dir.path().join("mappings/casino.json"), MAPPING).unwrap();
        World { db, dir }
    })
}

fn hints(dir: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let catalog = ferry_core::Catalog::load_dir(Path::new(dir)).unwrap();
    catalog.sources()[0]
        .tables
        .iter()
        .map(|t| {
            let mut h: Vec<(String, String)> = t
                .columns
                .iter()
                .map(|(c, h)| (c.clone(), format!("{h:?}")))
                .collect();
            h.sort();
            (t.source_table(), h)
        })
        .collect()
}

#[test]
fn mappings_sync_reproduces_the_hand_written_hints_and_keeps_what_analysts_wrote() {
    let w = shared();
    let dir = TempDir::new("sync");
    // The same mapping with every hint removed.
    let mut bare: Value = serde_json::from_str(MAPPING).unwrap();
    for t in bare["tables"].as_object_mut().unwrap().values_mut() {
        t.as_object_mut().unwrap().remove("columns");
    }
    let text = serde_json::to_string_pretty(&bare).unwrap();
    dir.write("casino.json", &text);
    let m = dir.path().display().to_string();
    let url = w.db.read_only_url();
    let (code, out, err) = ferry(&[
        "mappings",
        "sync",
        "--mappings",
        &m,
        "--source",
        "casino",
        "--url",
        &url,
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["changed"], true);
    let missing: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "missing_hint")
        .map(|f| f["column"].as_str().unwrap())
        .collect();
    assert!(
        missing.contains(&"is_vip") && missing.contains(&"prefs"),
        "{v}"
    );
    let lob: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "lob")
        .map(|f| f["column"].as_str().unwrap())
        .collect();
    assert_eq!(lob, ["bio", "prefs"], "LONGTEXT and JSON are DMS LOBs: {v}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("casino.json")).unwrap(),
        text,
        "without --write nothing changes"
    );

    let (code, out, err) = ferry(&[
        "mappings",
        "sync",
        "--mappings",
        &m,
        "--source",
        "casino",
        "--url",
        &url,
        "--write",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let original = TempDir::new("original");
    original.write("casino.json", MAPPING);
    assert_eq!(hints(&m), hints(&original.path().display().to_string()));
    let written = std::fs::read_to_string(dir.path().join("casino.json")).unwrap();
    assert!(
        written.contains("Players, as analysts describe them."),
        "{written}"
    );
    assert!(written.contains("\"soft_delete\": true"), "{written}");
    // A second sync has nothing to do, and the check against the source passes.
    let (code, out, _) = ferry(&[
        "mappings",
        "sync",
        "--mappings",
        &m,
        "--source",
        "casino",
        "--url",
        &url,
        "--write",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("already agrees"), "{out}");
    let (code, out, err) = ferry(&["mappings", "check", &m, "--against", &url]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn mappings_check_against_the_source_names_a_misspelt_hint() {
    let w = shared();
    let dir = TempDir::new("against");
    dir.write(
        "casino.json",
        &MAPPING
            .replace("\"is_vip\": \"tinyint(1)\"", "\"is_vipp\": \"tinyint(1)\"")
            .replace("\"prefs\": \"json\"", "\"prefs\": \"time\""),
    );
    let m = dir.path().display().to_string();
    let (code, out, err) = ferry(&["mappings", "check", &m, "--against", &w.db.read_only_url()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("column is_vipp") && out.contains("remove it"),
        "{out}"
    );
    assert!(
        out.contains("column is_vip is tinyint(1) in the source but has no hint"),
        "{out}"
    );
    assert!(
        out.contains("column prefs is hinted time but the source says json"),
        "{out}"
    );
}

#[test]
fn source_check_passes_a_good_source_and_names_each_problem_of_a_bad_one() {
    let w = shared();
    let (code, out, err) = ferry(&[
        "source",
        "check",
        "--mappings",
        &w.mappings(),
        "--source",
        "casino",
        "--url",
        &w.db.read_only_url(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok: nothing to fix") && out.contains("time zone UTC"),
        "{out}"
    );
    assert!(
        !out.contains("ferry-ro-pw"),
        "the password is never printed: {out}"
    );

    let bad = MariaDb::start(
        "minimal",
        &[
            "--binlog-row-image=MINIMAL",
            "--binlog-expire-logs-seconds=7200",
        ],
    );
    bad.admin().exec("CREATE DATABASE casino_game; CREATE TABLE casino_game.players (player_id INT, prefs JSON); CREATE TABLE casino_game.wallets (player_id INT, currency CHAR(3), PRIMARY KEY (currency, player_id))").unwrap();
    let (code, out, err) = ferry(&[
        "source",
        "check",
        "--mappings",
        &w.mappings(),
        "--source",
        "casino",
        "--url",
        &bad.read_only_url(),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let problem = |needle: &str| {
        out.lines()
            .any(|l| l.contains(needle) && l.contains("fix:"))
    };
    assert!(problem("binlog_row_image is MINIMAL"), "{out}");
    assert!(problem("binlogs are kept 2 h"), "{out}");
    assert!(
        problem("casino_game.players: the table has no primary key"),
        "{out}"
    );
    assert!(
        problem("casino_game.players: LOB columns prefs but no primary key"),
        "{out}"
    );
    assert!(
        problem(
            "casino_game.wallets: the mapping's primary key is [player_id, currency] but the source's is [currency, player_id]"
        ),
        "{out}"
    );
    assert!(
        problem("casino_game.sessions: the mapped table does not exist"),
        "{out}"
    );
    let (_, json, _) = ferry(&[
        "source",
        "check",
        "--mappings",
        &w.mappings(),
        "--source",
        "casino",
        "--url",
        &bad.read_only_url(),
        "--json",
    ]);
    let v: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["problems"].as_array().unwrap().len(), 6, "{v}");
}

#[test]
fn ferry_sessions_cannot_write_to_the_source() {
    let w = shared();
    // Even as root: every ferry session is READ ONLY.
    let mut db = MySql::connect(
        &SourceUrl::parse(&w.db.root_url).unwrap(),
        ConnectOptions::default(),
    )
    .unwrap();
    let e = db
        .exec("UPDATE casino_game.wallets SET balance = 0")
        .unwrap_err();
    assert!(e.to_string().contains("READ ONLY"), "{e}");
    // Statements have a deadline, on the client and on the server.
    let mut quick = MySql::connect(
        &SourceUrl::parse(&w.db.read_only_url()).unwrap(),
        ConnectOptions {
            statement_timeout: std::time::Duration::from_secs(1),
            ..ConnectOptions::default()
        },
    )
    .unwrap();
    let started = std::time::Instant::now();
    let e = quick.query("SELECT SLEEP(5)").map(|r| r[0][0].clone());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "SLEEP(5) was cut short at 1 s"
    );
    assert!(
        e.is_err() || e.as_ref().unwrap().as_deref() == Some("1"),
        "an interrupted SLEEP fails or returns 1: {e:?}"
    );
}

/// One value in each engine: the MySQL column and literal, the BigQuery type and literal, and
/// the value as the local warehouse stores it.
struct Case {
    ddl: &'static str,
    mysql: &'static str,
    bq: ferry_core::bqtype::BqType,
    bq_literal: &'static str,
    sqlite: &'static str,
}

#[test]
fn canonical_rows_agree_in_mariadb_sqlite_and_the_bigquery_dialect() {
    use ferry_core::bqtype::BqType as B;
    use ferry_source::canon::{self, Col, Dialect};
    let cases = [
        Case {
            ddl: "INT",
            mysql: "-42",
            bq: B::Int64,
            bq_literal: "-42",
            sqlite: "-42",
        },
        // bqemulator types this NUMERIC literal DECIMAL(18,3) next to a FORMAT_TIMESTAMP and fails
        // the query; BIGNUMERIC renders through the same expression.
        Case {
            ddl: "BIGINT UNSIGNED",
            mysql: "18446744073709551615",
            bq: B::Numeric,
            bq_literal: "CAST('18446744073709551615' AS BIGNUMERIC)",
            sqlite: "'18446744073709551615'",
        },
        Case {
            ddl: "TINYINT(1)",
            mysql: "5",
            bq: B::Bool,
            bq_literal: "TRUE",
            sqlite: "1",
        },
        Case {
            ddl: "BIT(1)",
            mysql: "b'0'",
            bq: B::Bool,
            bq_literal: "FALSE",
            sqlite: "0",
        },
        Case {
            ddl: "BIT(8)",
            mysql: "b'00000101'",
            bq: B::Int64,
            bq_literal: "5",
            sqlite: "5",
        },
        Case {
            ddl: "BIT(16)",
            mysql: "b'0000000100000010'",
            bq: B::Bytes,
            bq_literal: "FROM_HEX('0102')",
            sqlite: "X'0102'",
        },
        Case {
            ddl: "DECIMAL(20,4)",
            mysql: "12.5000",
            bq: B::Numeric,
            bq_literal: "NUMERIC '12.5'",
            sqlite: "'12.5'",
        },
        Case {
            ddl: "DECIMAL(20,4)",
            mysql: "100",
            bq: B::Numeric,
            bq_literal: "NUMERIC '100'",
            sqlite: "'100'",
        },
        Case {
            ddl: "DECIMAL(65,30)",
            mysql: "-1.5",
            bq: B::BigNumeric,
            bq_literal: "BIGNUMERIC '-1.5'",
            sqlite: "'-1.5'",
        },
        // bqemulator's BIGNUMERIC keeps 5 decimals: floats with more are compared on MariaDB and
        // SQLite only (see the unit tests of ferry_source::canon).
        Case {
            ddl: "DOUBLE",
            mysql: "-2.5e0",
            bq: B::Float64,
            bq_literal: "-2.5",
            sqlite: "-2.5",
        },
        Case {
            ddl: "FLOAT",
            mysql: "0.25e0",
            bq: B::Float64,
            bq_literal: "0.25",
            sqlite: "0.25",
        },
        Case {
            ddl: "DATE",
            mysql: "'0999-01-02'",
            bq: B::Date,
            bq_literal: "DATE '0999-01-02'",
            sqlite: "'0999-01-02'",
        },
        Case {
            ddl: "DATE",
            mysql: "'0000-00-00'",
            bq: B::Date,
            bq_literal: "CAST(NULL AS DATE)",
            sqlite: "NULL",
        },
        Case {
            ddl: "DATETIME(3)",
            mysql: "'2024-01-02 03:04:05.123'",
            bq: B::Datetime,
            bq_literal: "DATETIME '2024-01-02 03:04:05.123'",
            sqlite: "'2024-01-02T03:04:05.123000'",
        },
        Case {
            ddl: "TIMESTAMP(6) NULL",
            mysql: "'2024-01-02 03:04:05.654321'",
            bq: B::Timestamp,
            bq_literal: "TIMESTAMP '2024-01-02 03:04:05.654321+00'",
            sqlite: "'2024-01-02T03:04:05.654321Z'",
        },
        Case {
            ddl: "TIME(6)",
            mysql: "'12:34:56.5'",
            bq: B::Time,
            bq_literal: "TIME '12:34:56.5'",
            sqlite: "'12:34:56.500000'",
        },
        Case {
            ddl: "VARCHAR(40)",
            mysql: "'한글 \"q\"|~:3'",
            bq: B::String,
            bq_literal: "'한글 \"q\"|~:3'",
            sqlite: "'한글 \"q\"|~:3'",
        },
        Case {
            ddl: "VARCHAR(40)",
            mysql: "''",
            bq: B::String,
            bq_literal: "''",
            sqlite: "''",
        },
        Case {
            ddl: "VARCHAR(40)",
            mysql: "NULL",
            bq: B::String,
            bq_literal: "CAST(NULL AS STRING)",
            sqlite: "NULL",
        },
        Case {
            ddl: "JSON",
            mysql: "'{\"b\": 1, \"a\": [1, 2]}'",
            bq: B::Json,
            bq_literal: "PARSE_JSON('{\"b\": 1, \"a\": [1, 2]}')",
            sqlite: "'{\"b\": 1, \"a\": [1, 2]}'",
        },
        Case {
            ddl: "BLOB",
            mysql: "X'00FF'",
            bq: B::Bytes,
            bq_literal: "FROM_HEX('00ff')",
            sqlite: "X'00FF'",
        },
        Case {
            ddl: "YEAR",
            mysql: "2024",
            bq: B::Int64,
            bq_literal: "2024",
            sqlite: "2024",
        },
        Case {
            ddl: "ENUM('a','b')",
            mysql: "'b'",
            bq: B::String,
            bq_literal: "'b'",
            sqlite: "'b'",
        },
    ];
    let w = shared();
    let names: Vec<String> = (0..cases.len()).map(|i| format!("c{i:02}")).collect();
    let mut a = w.db.admin();
    let ddl: Vec<String> = cases
        .iter()
        .zip(&names)
        .map(|(c, n)| format!("{n} {}", c.ddl))
        .collect();
    a.exec(&format!(
        "CREATE TABLE casino_game.canon_cases (id INT PRIMARY KEY, {}) DEFAULT CHARSET=utf8mb4",
        ddl.join(", ")
    ))
    .unwrap();
    let values: Vec<&str> = cases.iter().map(|c| c.mysql).collect();
    a.exec(&format!(
        "INSERT INTO casino_game.canon_cases VALUES (1, {})",
        values.join(", ")
    ))
    .unwrap();
    let mut db = w.reader();
    let tables = ferry_source::catalog::read_tables(&mut db, &["casino_game".into()]).unwrap();
    let st = tables.iter().find(|t| t.name == "canon_cases").unwrap();
    let cols: Vec<Col> = cases
        .iter()
        .zip(&names)
        .map(|(c, n)| Col {
            name: n.clone(),
            kind: st.column(n).unwrap().kind,
            bq: c.bq,
        })
        .collect();
    let select = |d: Dialect| {
        let mut e: Vec<String> = cols.iter().map(|c| canon::value(d, c)).collect();
        e.push(canon::sha256(d, &canon::row_text(d, &cols)));
        e.push(canon::hex_piece(
            d,
            &canon::sha256(d, &canon::row_text(d, &cols)),
        ));
        e.join(", ")
    };
    let mysql = db
        .query(&format!(
            "SELECT {} FROM casino_game.canon_cases",
            select(Dialect::MySql)
        ))
        .unwrap()
        .remove(0);

    let sqlite = rusqlite::Connection::open_in_memory().unwrap();
    canon::register_sqlite(&sqlite).unwrap();
    let inner: Vec<String> = cases
        .iter()
        .zip(&names)
        .map(|(c, n)| format!("{} AS {n}", c.sqlite))
        .collect();
    let lite = ferry_source::table::sqlite_rows(
        &sqlite,
        &format!(
            "SELECT {} FROM (SELECT {}) t",
            select(Dialect::Sqlite),
            inner.join(", ")
        ),
    )
    .unwrap()
    .remove(0);

    let client = ferry_bigquery::Client::new(
        ferry_bigquery::ClientConfig {
            base_url: ferry_tests::stand_ins::bqemulator().to_owned(),
            ..Default::default()
        },
        ferry_bigquery::Auth::None,
        "ferry-test",
    )
    .unwrap();
    let rt = ferry_tests::runtime();
    let inner: Vec<String> = cases
        .iter()
        .zip(&names)
        .map(|(c, n)| format!("{} AS {n}", c.bq_literal))
        .collect();
    let mut counter = 0;
    let bq = ferry_source::table::bigquery_rows(
        &client,
        rt.handle(),
        &format!(
            "SELECT {} FROM (SELECT {}) t",
            select(Dialect::BigQuery),
            inner.join(", ")
        ),
        None,
        &mut counter,
    )
    .unwrap();
    assert_eq!(
        bq.len(),
        1,
        "bqemulator reports a failed query as an empty result"
    );
    let bq = bq.into_iter().next().unwrap();

    for (i, c) in cases.iter().enumerate() {
        assert_eq!(
            mysql[i], lite[i],
            "{} {}: MariaDB vs SQLite",
            c.ddl, c.mysql
        );
        assert_eq!(
            mysql[i], bq[i],
            "{} {}: MariaDB vs BigQuery dialect",
            c.ddl, c.mysql
        );
    }
    assert_eq!(
        mysql[cases.len()],
        lite[cases.len()],
        "row hash, MariaDB vs SQLite"
    );
    assert_eq!(
        mysql[cases.len()],
        bq[cases.len()],
        "row hash, MariaDB vs BigQuery dialect"
    );
    assert_eq!(
        mysql[cases.len() + 1],
        bq[cases.len() + 1],
        "hash piece as an integer"
    );
    assert_eq!(mysql[0].as_deref(), Some("-42"));
    assert_eq!(mysql[12], None, "a zero date is NULL, as DMS writes it");
}

#[test]
fn reconcile_against_a_bigquery_replica_on_the_strict_server_names_the_differences_and_records_them()
 {
    let w = shared();
    let mut a = w.db.admin();
    a.exec(
        "CREATE TABLE casino_game.ledger (entry_id BIGINT PRIMARY KEY, account VARCHAR(20), amount DECIMAL(20,4),
           booked_at DATETIME(6), cleared TINYINT(1)) DEFAULT CHARSET=utf8mb4;
         INSERT INTO casino_game.ledger SELECT seq, CONCAT('acct-', seq % 37), seq * 0.25,
           TIMESTAMP('2026-01-01') + INTERVAL seq SECOND, seq % 2
         FROM (SELECT CAST(seq AS SIGNED) seq FROM casino_game.seq_1_to_1000) s",
    )
    .unwrap();
    // The replica as ferry keeps it in BigQuery, with the same rows, then broken three ways.
    let server = ferry_tests::bqserver::BqServer::start(Some(
        ferry_tests::stand_ins::bqemulator().to_owned(),
    ));
    let client = ferry_bigquery::Client::new(
        ferry_bigquery::ClientConfig {
            base_url: server.url.clone(),
            ..Default::default()
        },
        ferry_bigquery::Auth::None,
        "ferry-test",
    )
    .unwrap();
    let rt = ferry_tests::runtime();
    rt.block_on(client.ensure_dataset("ferry-test", "ledger_ds", None))
        .unwrap();
    let mut n = 0;
    let mut q = |sql: &str| {
        ferry_source::table::bigquery_rows(&client, rt.handle(), sql, None, &mut n).unwrap()
    };
    q(
        "CREATE TABLE `ferry-test`.`ledger_ds`.`ledger` (`_ferry_file_seq` STRING, `_ferry_deleted` BOOL, entry_id INT64 NOT NULL, account STRING, amount NUMERIC, booked_at DATETIME, cleared BOOL)",
    );
    q("INSERT INTO `ferry-test`.`ledger_ds`.`ledger` (`_ferry_file_seq`, `_ferry_deleted`, entry_id, account, amount, booked_at, cleared)
       SELECT '', FALSE, x, CONCAT('acct-', CAST(MOD(x, 37) AS STRING)), CAST(x AS NUMERIC) * 0.25,
              DATETIME_ADD(DATETIME '2026-01-01 00:00:00', INTERVAL x SECOND), MOD(x, 2) = 1
       FROM UNNEST(GENERATE_ARRAY(1, 1000)) AS x");
    q("UPDATE `ferry-test`.`ledger_ds`.`ledger` SET account = 'tampered' WHERE entry_id = 500");
    q("DELETE FROM `ferry-test`.`ledger_ds`.`ledger` WHERE entry_id = 77");
    q("INSERT INTO `ferry-test`.`ledger_ds`.`ledger` (`_ferry_file_seq`, `_ferry_deleted`, entry_id, account, amount, booked_at, cleared)
       VALUES ('', FALSE, 5000, 'ghost', NUMERIC '1', DATETIME '2026-01-01 00:00:00', FALSE)");

    let dir = TempDir::new("bq-reconcile");
    dir.write(
        "ledger.json",
        r#"{"source": {"name": "ledger", "bucket": "casino-dms", "folder": "cdc"},
            "bigquery": {"project": "ferry-test", "dataset": "ledger_ds"},
            "tables": {"casino_game.ledger": {"primary_key": ["entry_id"], "target": "ledger",
                       "columns": {"booked_at": "datetime(6)", "cleared": "tinyint(1)"}}}}"#,
    );
    let catalog = ferry_core::Catalog::load_dir(dir.path()).unwrap();
    let source = catalog.source("ledger").unwrap();
    let mapping = &source.tables[0];
    let mut db = w.reader();
    let tables = ferry_source::catalog::read_tables(&mut db, &["casino_game".into()]).unwrap();
    let st = tables.iter().find(|t| t.name == "ledger").unwrap();
    let report = ferry_source::table::reconcile_bigquery(
        &mut db,
        &client,
        rt.handle(),
        source,
        mapping,
        st,
        ferry_source::reconcile::Options::default(),
        &mut || {},
    );
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["status"], "differ", "{v}");
    assert_eq!(keys(&v, "missing"), ["entry_id=77"], "{v}");
    assert_eq!(keys(&v, "extra"), ["entry_id=5000"], "{v}");
    assert_eq!(keys(&v, "different"), ["entry_id=500"], "{v}");
    assert_eq!(v["different"][0]["column"], "account");
    assert!(report.outcome.segments > 1, "bisected in BigQuery SQL: {v}");

    // The result is kept where the status views read it.
    ferry_source::table::ensure_results_bigquery(&client, rt.handle(), source).unwrap();
    ferry_source::table::record_bigquery(
        &client,
        rt.handle(),
        source,
        std::slice::from_ref(&report),
        1_790_000_000_000_000,
    )
    .unwrap();
    let mut n = 0;
    let rows = ferry_source::table::bigquery_rows(
        &client,
        rt.handle(),
        "SELECT table_name, status, missing, extra, different, verified_through FROM `ferry-test`.`ledger_ds`.`ferry_reconcile`",
        None,
        &mut n,
    )
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0].as_deref(), Some("casino_game.ledger"));
    assert_eq!(rows[0][1].as_deref(), Some("differ"));
    assert_eq!(
        (
            rows[0][2].as_deref(),
            rows[0][3].as_deref(),
            rows[0][4].as_deref()
        ),
        (Some("1"), Some("1"), Some("1"))
    );
    assert_eq!(rows[0][5], None, "a differing table is not verified");
}
