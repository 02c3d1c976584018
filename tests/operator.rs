//! What operators and analysts are promised around the core path: columns kept out of
//! BigQuery (`exclude`, removed by DMS itself) or stored as a keyed hash (`hash`), hints that
//! name no column reported at load time, and the backfill a newly loaded table needs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use ferry_sim::model::MysqlType as M;
use ferry_tests::dms_tree::{self, ModelColumn, ModelTable};
use ferry_tests::{TempDir, ferry};
use serde_json::Value;

const MAPPING: &str = r#"{
  "source": {"name": "kyc", "bucket": "kyc-dms", "folder": "cdc", "dms": {"timestamp_column": "dms_commit_ts"}},
  "bigquery": {"project": "kyc-analytics", "dataset": "kyc"},
  "tables": {
    "kyc.players": {"primary_key": ["player_id"], "exclude": ["passport_no"], "hash": ["email", "phone"],
                    "columns": {"is_vipp": "tinyint(1)"}}
  }
}"#;

const KEY: &str = "a-32-byte-test-key-0123456789abc";

fn players() -> ModelTable {
    let col = |name, ddl, mysql| ModelColumn { name, ddl, mysql };
    ModelTable {
        schema: "kyc",
        name: "players",
        columns: vec![
            col("player_id", "INT", M::Int),
            col("email", "VARCHAR(100)", M::Varchar),
            col("phone", "BIGINT", M::BigInt),
            // DMS still sends it: the task's table mappings were not applied yet.
            col("passport_no", "VARCHAR(20)", M::Varchar),
            col("is_vip", "TINYINT(1)", M::TinyInt),
        ],
        key: vec!["player_id"],
    }
}

struct Estate {
    dir: TempDir,
}

impl Estate {
    fn new(label: &str) -> Estate {
        let dir = TempDir::new(label);
        std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
        dir.write("mappings/kyc.json", MAPPING);
        dir.write("hash.key", &format!("{KEY}\n"));
        let rows: Vec<Vec<Option<String>>> = [
            (1, "ana@example.com", "821012345678", "M1234567", "1"),
            (2, "bo@example.com", "821098765432", "M7654321", "0"),
            (3, "ana@example.com", "821012345678", "M0000000", "0"),
        ]
        .iter()
        .map(|(id, email, phone, passport, vip)| {
            [
                id.to_string(),
                email.to_string(),
                phone.to_string(),
                passport.to_string(),
                vip.to_string(),
            ]
            .into_iter()
            .map(Some)
            .collect()
        })
        .collect();
        dms_tree::write_rows(
            &players(),
            &rows,
            None,
            "dms_commit_ts",
            1_796_000_000_000_000,
            &dir.path()
                .join("bucket/cdc/kyc/players/LOAD00000001.parquet"),
        );
        Estate { dir }
    }
    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }
    fn run(&self, extra: &[&str]) -> (u8, String, String) {
        let (m, b, w) = (
            self.path("mappings"),
            self.path("bucket"),
            self.path("w.db"),
        );
        let mut args = vec![
            "local",
            "run",
            "--mappings",
            &m,
            "--bucket-dir",
            &b,
            "--warehouse",
            &w,
            "--json",
        ];
        args.extend_from_slice(extra);
        ferry(&args)
    }
    fn query(&self, sql: &str) -> Vec<Value> {
        let w = self.path("w.db");
        let (code, out, err) = ferry(&["local", "query", "--warehouse", &w, "--json", sql]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[test]
fn excluded_columns_are_removed_by_dms_and_dropped_if_they_arrive() {
    let e = Estate::new("op-exclude");
    // DMS's own rule: the value never reaches S3 once the task's table mappings are applied.
    let (code, out, err) = ferry(&["dms", "table-mappings", "--mappings", &e.path("mappings")]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(doc["source"], "kyc");
    let rules = doc["table_mappings"]["rules"].as_array().unwrap();
    let removal: Vec<&Value> = rules
        .iter()
        .filter(|r| r["rule-action"] == "remove-column")
        .collect();
    assert_eq!(removal.len(), 1, "{rules:?}");
    assert_eq!(removal[0]["rule-target"], "column");
    assert_eq!(
        removal[0]["object-locator"],
        serde_json::json!({"schema-name": "kyc", "table-name": "players", "column-name": "passport[_]no"})
    );
    let ids: Vec<&str> = rules
        .iter()
        .map(|r| r["rule-id"].as_str().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "rule ids are unique");

    // The file still carries it (the rule not applied yet): the loader drops and reports it.
    let (code, out, err) = e.run(&["--hash-key-file", &e.path("hash.key")]);
    assert_eq!(code, 0, "{out}{err}");
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (
            summary["loaded"].as_u64(),
            summary["dead_lettered"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let columns: Vec<String> = e
        .query("SELECT name FROM pragma_table_info('kyc.players')")
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(columns.contains(&"email".to_owned()), "{columns:?}");
    assert!(!columns.iter().any(|c| c == "passport_no"), "{columns:?}");
    let rows = e.query("SELECT * FROM \"kyc.players_changelog\"");
    assert!(
        rows.iter().all(|r| !r.to_string().contains("M1234567")),
        "no passport number anywhere: {rows:?}"
    );
    let (_, out, _) = ferry(&[
        "status",
        "--mappings",
        &e.path("mappings"),
        "--warehouse",
        &e.path("w.db"),
        "--json",
    ]);
    let status: Value = serde_json::from_str(out.trim()).unwrap();
    let t = &status["tables"][0];
    assert_eq!(t["warnings_24h"], 1, "{t}");
    let warning = t["last_warning"].as_str().unwrap();
    assert!(
        warning.contains("excluded_arrived: excluded column(s) passport_no"),
        "{warning}"
    );
    // The misspelt hint is reported too, naming the hint: `is_vip` kept the data's type.
    assert!(
        warning.contains("hint_unused") && warning.contains("is_vipp"),
        "{warning}"
    );
}

#[test]
fn hashed_columns_hold_a_keyed_digest_that_joins_but_does_not_read() {
    let e = Estate::new("op-hash");
    let (code, out, err) = e.run(&["--hash-key-file", &e.path("hash.key")]);
    assert_eq!(code, 0, "{out}{err}");
    let rows = e.query("SELECT player_id, email, phone FROM \"kyc.players\" ORDER BY player_id");
    assert_eq!(rows.len(), 3);
    let key = ferry_core::hashkey::HashKey::new(KEY.as_bytes()).unwrap();
    assert_eq!(rows[0]["email"], key.hmac_hex(b"ana@example.com"));
    assert_eq!(
        rows[0]["phone"],
        key.hmac_hex(b"821012345678"),
        "integers by their digits"
    );
    assert_eq!(rows[0]["email"], rows[2]["email"], "equal values join");
    assert_ne!(rows[0]["email"], rows[1]["email"]);
    assert!(!rows.iter().any(|r| r.to_string().contains("example.com")));
    // Another key gives other digests: the key is what protects the values.
    let other = ferry_core::hashkey::HashKey::new(b"another-key-of-32-bytes-00000000").unwrap();
    assert_ne!(rows[0]["email"], other.hmac_hex(b"ana@example.com"));

    // Without a key nothing is loaded in the clear: the file is dead-lettered with the cause.
    let e = Estate::new("op-hash-nokey");
    let (code, out, err) = e.run(&[]);
    assert_eq!(code, 1, "dead letters make the run exit 1: {out}{err}");
    let (code, out, _) = ferry(&["dlq", "inspect", "--warehouse", &e.path("w.db"), "--json"]);
    assert_eq!(code, 0);
    let letter: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains("LOAD00000001.parquet") && reason.contains("no hash key is configured"),
        "{reason}"
    );
    assert!(
        letter["sent_at"].as_str().unwrap().starts_with("20"),
        "a human time: {letter}"
    );
    assert!(
        e.query("SELECT name FROM sqlite_master WHERE name = 'kyc.players'")
            .is_empty()
    );
}

#[test]
fn mapping_controls_are_validated() {
    let dir = TempDir::new("op-controls");
    dir.write(
        "kyc.json",
        r#"{"source": {"name": "kyc", "bucket": "kyc-dms", "folder": "cdc", "heartbeat": "kyc.beat"},
  "bigquery": {"project": "kyc-analytics", "dataset": "kyc"},
  "tables": {
    "kyc.players": {"primary_key": ["player_id"], "exclude": ["player_id", "doc"], "hash": ["doc"],
                    "columns": {"doc": "json"}}
  }
}"#,
    );
    let (code, _, err) = ferry(&[
        "mappings",
        "check",
        "--mappings",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    for needle in [
        "kyc.json:1:66: $.source.heartbeat: heartbeat table \"kyc.beat\" is not mapped",
        "$.tables[\"kyc.players\"].exclude[0]: column \"player_id\" is in primary_key; an excluded column cannot be",
        "$.tables[\"kyc.players\"].exclude[1]: column \"doc\" is excluded but has a type hint",
        "$.tables[\"kyc.players\"].hash[0]: column \"doc\" is both excluded and hashed",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn a_table_the_change_adds_or_enables_is_listed_with_its_backfill() {
    let dir = TempDir::new("op-backfill-hint");
    let write = |sub: &str, tables: &str| {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        dir.write(
            &format!("{sub}/kyc.json"),
            &format!(
                r#"{{"source": {{"name": "kyc", "bucket": "kyc-dms", "folder": "cdc"}},
                   "bigquery": {{"project": "kyc-analytics", "dataset": "kyc"}}, "tables": {{{tables}}}}}"#
            ),
        );
        dir.path().join(sub).display().to_string()
    };
    let before = write(
        "before",
        r#""kyc.players": {"primary_key": ["id"]}, "kyc.bets": {"primary_key": ["id"], "enabled": false}"#,
    );
    let after = write(
        "after",
        r#""kyc.players": {"primary_key": ["id"]}, "kyc.bets": {"primary_key": ["id"]}, "kyc.wins": {"primary_key": ["id"]}"#,
    );
    let (code, out, err) = ferry(&[
        "mappings",
        "check",
        "--mappings",
        &after,
        "--previous",
        &before,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("kyc.bets is newly loaded: after the deploy, load its history with: ferry backfill --source kyc --table kyc.bets --direct"),
        "{out}"
    );
    assert!(
        out.contains("ferry backfill --source kyc --table kyc.wins --direct"),
        "{out}"
    );
    assert!(!out.contains("kyc.players is newly"), "{out}");
    let (_, out, _) = ferry(&[
        "mappings",
        "check",
        "--mappings",
        &after,
        "--previous",
        &before,
        "--json",
    ]);
    let doc: Value = serde_json::from_str(out.trim()).unwrap();
    let tables: Vec<&str> = doc["backfills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables, ["kyc.bets", "kyc.wins"]);
    // The printed command is one the CLI accepts.
    let (code, _, err) = ferry(&[
        "backfill",
        "--mappings",
        &after,
        "--source",
        "kyc",
        "--table",
        "kyc.bets",
        "--direct",
        "--help",
    ]);
    assert_eq!(code, 0, "{err}");
    // Nothing to say when nothing is newly loaded.
    let (_, out, _) = ferry(&[
        "mappings",
        "check",
        "--mappings",
        &after,
        "--previous",
        &after,
    ]);
    assert!(!out.contains("newly loaded"), "{out}");
}
