//! `ferry mappings` and `ferry plan`, run in-process over the committed mappings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use ferry_core::{Catalog, plan_object};
use ferry_tests::{TempDir, ferry, mappings_dir};
use serde_json::Value;

fn mappings() -> String {
    mappings_dir().display().to_string()
}

/// Runs `ferry plan --json` on `keys` and returns one JSON object per key.
fn plan_json(extra: &[&str], keys: &[&str]) -> Vec<Value> {
    let dir = mappings();
    let mut args = vec!["plan", "--mappings", &dir, "--json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(keys);
    let (code, out, err) = ferry(&args);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), keys.len(), "{out}");
    rows
}

#[test]
fn mappings_check_passes_on_the_committed_files() {
    let (code, out, err) = ferry(&["mappings", "check", &mappings()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok: 6 sources, 68 tables"), "{out}");
}

#[test]
fn mappings_check_lists_every_problem_one_per_line_and_exits_1() {
    let dir = TempDir::new("cli-check");
    dir.write(
        "one.json",
        r#"{"source": {"name": "one", "bucket": "acme-dms", "folder": "one"},
            "bigquery": {"project": "acme-analytics", "dataset": "bad-ds"},
            "tables": {"db.t": {}, "db.u": {"mode": "changelog", "cluster_by": ["a","b","c","d","e"]}}}"#,
    );
    // An unknown field no longer hides the file's other problems: the missing folder (which
    // overlaps one.json's) is reported too.
    dir.write("two.json", r#"{"source": {"name": "two", "bucket": "acme-dms"}, "bigquery": {"project": "acme-analytics", "dataset": "x"}, "tables": {"db.t": {"mode": "changelog", "primry_key": ["id"]}}}"#);
    let d = dir.path().to_str().expect("utf-8");
    let (code, out, err) = ferry(&["mappings", "check", "--mappings", d]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 6, "{err}");
    assert!(lines[..5].iter().all(|l| l.contains("; fix: ")), "{err}");
    assert!(
        lines[0].contains("one.json:2:55: $.bigquery.dataset"),
        "{err}"
    );
    assert!(
        lines[1].contains("one.json:3:24: $.tables[\"db.t\"].primary_key"),
        "{err}"
    );
    assert!(
        lines[2].contains("one.json:3:66: $.tables[\"db.u\"].cluster_by"),
        "{err}"
    );
    assert!(lines[3].contains("two.json:1:2: $.source.folder"), "{err}");
    assert!(
        lines[4].contains("two.json:1:151: $.tables[\"db.t\"].primry_key")
            && lines[4].contains("did you mean `primary_key`?"),
        "{err}"
    );
    assert_eq!(lines[5], "5 problems in the mapping files");

    // The old spelling (the folder as an argument) still works, and annotations carry lines.
    let (code, out, _) = ferry(&["mappings", "check", "--github", d]);
    assert_eq!(code, 1);
    let annotations: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("::error file="))
        .collect();
    assert_eq!(annotations.len(), 5, "{out}");
    assert!(
        annotations[0].contains("one.json,line=2,col=55::$.bigquery.dataset"),
        "{out}"
    );
}

/// The issue's acceptance case: one file with five different problems, all reported, each
/// with its line, in text, GitHub annotations and JSON.
#[test]
fn mappings_check_reports_five_problems_in_one_file_with_their_lines() {
    let dir = TempDir::new("cli-check-five");
    dir.write(
        "five.json",
        r#"{
  "source": {"name": "five", "bucket": "acme-dms", "folder": "five", "colour": "blue"},
  "bigquery": {"project": "acme-analytics", "dataset": "bad-ds"},
  "tables": {
    "db.a": {"primary_key": ["id"], "mode": "sometimes"},
    "db.b": {"primary_key": ["id"], "cluster_by": ["a", "b", "c", "d", "e"]},
    "db.c": {"primry_key": ["id"], "mode": "changelog"}
  }
}
"#,
    );
    let d = dir.path().to_str().expect("utf-8");
    let (code, _, err) = ferry(&["mappings", "check", "--mappings", d]);
    assert_eq!(code, 1, "{err}");
    let expected = [
        ("five.json:2:70: $.source.colour", "unknown field `colour`"),
        ("five.json:3:45: $.bigquery.dataset", "not '-'"),
        (
            "five.json:5:37: $.tables[\"db.a\"].mode",
            "unknown variant `sometimes`",
        ),
        ("five.json:6:37: $.tables[\"db.b\"].cluster_by", "at most 4"),
        (
            "five.json:7:14: $.tables[\"db.c\"].primry_key",
            "did you mean `primary_key`",
        ),
    ];
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), expected.len() + 1, "{err}");
    for (line, (at, what)) in lines.iter().zip(expected) {
        assert!(
            line.contains(at) && line.contains(what),
            "{at} {what}: {err}"
        );
    }
    let (_, out, _) = ferry(&["mappings", "check", "--mappings", d, "--github"]);
    let lines: Vec<u64> = out
        .lines()
        .filter_map(|l| l.split("line=").nth(1)?.split(',').next()?.parse().ok())
        .collect();
    assert_eq!(lines, [2, 3, 5, 6, 7], "{out}");
    let (code, out, _) = ferry(&["mappings", "check", "--mappings", d, "--json"]);
    assert_eq!(code, 1);
    let doc: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(doc["ok"], false);
    let problems = doc["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 5, "{doc}");
    assert_eq!(problems[2]["line"], 5);
    assert_eq!(problems[2]["col"], 37);
    assert_eq!(problems[2]["path"], "$.tables[\"db.a\"].mode");
    assert!(
        problems
            .iter()
            .all(|p| p["fix"].as_str().is_some_and(|f| !f.is_empty()))
    );
}

#[test]
fn plan_parses_routes_and_names_the_job() {
    let rows = plan_json(
        &[],
        &[
            "slots/account/slots_account/players/LOAD00000001.parquet",
            "s3://acme-casino-dms-cdc/slots/game/slots_game/spins/2026/11/26/20261126-101500123.parquet",
        ],
    );
    let load = &rows[0];
    assert_eq!(load["source"], "slots-account");
    assert_eq!(
        (
            load["schema"].as_str(),
            load["table"].as_str(),
            load["kind"].as_str()
        ),
        (Some("slots_account"), Some("players"), Some("full_load"))
    );
    assert_eq!(
        load["target"],
        "acme-casino-analytics.slots_account.players"
    );
    assert_eq!(
        load["changelog"],
        "acme-casino-analytics.slots_account.players_changelog"
    );
    assert_eq!(load["mode"], "replica");
    assert_eq!(load["skip_reason"], Value::Null);
    let job = load["job_id"].as_str().expect("job id");
    assert!(
        job.starts_with("ferry_slots_account_players_load00000001_") && job.ends_with("_a0"),
        "{job}"
    );

    let cdc = &rows[1];
    assert_eq!(cdc["bucket"], "acme-casino-dms-cdc");
    assert_eq!(cdc["kind"], "cdc");
    assert_eq!(cdc["partition_date"], "2026-11-26");
    assert_eq!(cdc["cdc_timestamp"], "2026-11-26T10:15:00.123000000Z");
    assert_eq!(cdc["mode"], "changelog");
    assert_eq!(cdc["target"], "acme-casino-analytics.slots_game.spins");
    assert!(
        cdc["job_id"]
            .as_str()
            .expect("job id")
            .starts_with("ferry_slots_game_spins_20261126T101500123_")
    );
}

#[test]
fn plan_job_id_is_the_one_the_loader_computes() {
    let key = "poker/game/poker_game/hands/20261126-101500123.parquet";
    let catalog = Catalog::load_dir(&mappings_dir()).expect("valid mappings");
    for etag in [None, Some("\"0cc175b9c0f1b6a831c399e269772661\"")] {
        let expected = plan_object(&catalog, None, key, etag)
            .job_id
            .expect("loads")
            .to_string();
        let extra: Vec<&str> = etag.map(|e| vec!["--etag", e]).unwrap_or_default();
        let rows = plan_json(&extra, &[key]);
        assert_eq!(rows[0]["job_id"], expected.as_str(), "etag {etag:?}");
    }
    let with = plan_json(&["--etag", "a"], &[key]);
    let without = plan_json(&[], &[key]);
    assert_ne!(with[0]["job_id"], without[0]["job_id"]);
}

#[test]
fn plan_explains_every_skip_and_still_fills_parsed_fields() {
    let rows = plan_json(
        &[],
        &[
            // URL-encoded as in an S3 event: "vip room 😊" is not mapped.
            "baccarat/game/baccarat_game/vip+room+%F0%9F%98%8A/LOAD00000001.parquet",
            "poker/game/poker_game/chat_messages/20261126-101500123.parquet",
            "slots/account/cdc/CDC_TXN-20261126-101500123.csv",
            "other/db/t/LOAD00000001.parquet",
            "s3://other-bucket/slots/account/slots_account/players/LOAD00000001.parquet",
            "slots/account/slots_account/players/",
        ],
    );
    let codes: Vec<&str> = rows
        .iter()
        .map(|r| r["skip_code"].as_str().expect("skipped"))
        .collect();
    assert_eq!(
        codes,
        [
            "unmapped_table",
            "disabled_table",
            "transaction_file",
            "no_source",
            "no_source",
            "folder"
        ]
    );
    assert!(
        rows.iter()
            .all(|r| r["job_id"].is_null()
                && r["skip_reason"].as_str().is_some_and(|s| !s.is_empty()))
    );

    let unmapped = &rows[0];
    assert_eq!(
        unmapped["key"],
        "baccarat/game/baccarat_game/vip room 😊/LOAD00000001.parquet"
    );
    assert_eq!(
        (unmapped["schema"].as_str(), unmapped["table"].as_str()),
        (Some("baccarat_game"), Some("vip room 😊"))
    );
    assert_eq!(unmapped["kind"], "full_load");
    assert_eq!(unmapped["source"], "baccarat-game");
    assert!(
        unmapped["skip_reason"]
            .as_str()
            .expect("reason")
            .contains("not mapped")
    );
    assert_eq!(rows[1]["table"], "chat_messages");
    assert_eq!(
        rows[3]["schema"], "db",
        "parsed from the right without a source"
    );
    assert_eq!(rows[3]["folder"], "other");

    // A key that claims to be encoded but is not decodable.
    let bad = plan_json(&["--encoded"], &["slots/account/%zz/LOAD00000001.parquet"]);
    assert_eq!(bad[0]["skip_code"], "bad_key");
    assert!(
        bad[0]["skip_reason"]
            .as_str()
            .expect("reason")
            .contains("bad percent escape at byte 14"),
        "{}",
        bad[0]
    );
    // Without --encoded the same text is a raw key (S3 allows '%'), parsed as such.
    let raw = plan_json(
        &[],
        &["slots/account/slots_account/100%zz/LOAD00000001.parquet"],
    );
    assert_eq!(raw[0]["table"], "100%zz");
}

#[test]
fn plan_prints_a_readable_block_per_key() {
    let (code, out, err) = ferry(&[
        "plan",
        "--mappings",
        &mappings(),
        "slots/game/slots_game/bets/2026/11/26/20261126-101500123.parquet",
        "slots/game/slots_game/rtp_audit/20261126-101500123.parquet",
    ]);
    assert_eq!(code, 0, "{err}");
    let blocks: Vec<&str> = out.split("\n\n").filter(|b| !b.trim().is_empty()).collect();
    assert_eq!(blocks.len(), 2, "{out}");
    assert!(blocks[0].contains("source   slots-game"), "{out}");
    assert!(blocks[0].contains("target   acme-casino-analytics.slots_game.bets (replica), change log acme-casino-analytics.slots_game.bets_changelog"), "{out}");
    assert!(
        blocks[0].contains("job id   ferry_slots_game_bets_20261126T101500123_"),
        "{out}"
    );
    assert!(blocks[0].contains("action   load"), "{out}");
    assert!(blocks[1].contains("skip     table is disabled"), "{out}");
}

#[test]
fn plan_refuses_an_etag_for_several_keys_and_bad_mappings() {
    let (code, _, err) = ferry(&[
        "plan",
        "--mappings",
        &mappings(),
        "--etag",
        "x",
        "a/b/c",
        "d/e/f",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("single KEY"), "{err}");
    let dir = TempDir::new("cli-plan-bad");
    dir.write("x.json", "{");
    let (code, _, err) = ferry(&[
        "plan",
        "--mappings",
        dir.path().to_str().expect("utf-8"),
        "a/b/LOAD00000001.parquet",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("x.json"), "{err}");
}

#[test]
fn sim_then_convert_through_the_cli() {
    let dir = TempDir::new("cli-sim");
    let bucket = dir.path().join("bucket");
    let bucket_arg = bucket.to_str().expect("utf-8");
    let (code, out, err) = ferry(&[
        "sim",
        "--mappings",
        &mappings(),
        "--out",
        bucket_arg,
        "--only",
        "slots_account.players",
        "--rows",
        "50",
        "--minutes",
        "3",
        "--no-hard-cases",
    ]);
    assert_eq!(code, 0, "{err}");
    // The full load and three minutes of CDC.
    assert!(out.starts_with("wrote 4 files"), "{out}");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("bucket.manifest.json")).expect("manifest"),
    )
    .expect("json");
    let key = manifest["tables"][0]["files"][0]
        .as_str()
        .expect("a file")
        .to_owned();
    assert_eq!(
        key,
        "slots/account/slots_account/players/LOAD00000001.parquet"
    );

    let input = bucket.join(&key);
    let output = dir.path().join("out.parquet");
    let schema = dir.path().join("schema.json");
    let (code, out, err) = ferry(&[
        "convert",
        "--mappings",
        &mappings(),
        "--key",
        &key,
        "--schema-json",
        schema.to_str().expect("utf-8"),
        input.to_str().expect("utf-8"),
        output.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rows     50 in 1 row groups (load 50"),
        "{out}"
    );
    let fields: Value =
        serde_json::from_str(&std::fs::read_to_string(&schema).expect("schema")).expect("json");
    let is_vip = fields
        .as_array()
        .expect("list")
        .iter()
        .find(|f| f["name"] == "is_vip")
        .expect("is_vip");
    assert_eq!(is_vip["type"], "BOOL", "the mapping's tinyint(1) hint");
    assert!(output.exists());

    // A corrupt object: a permanent error naming the key, exit 1, no output left behind.
    std::fs::write(&input, b"PAR1 not really").expect("write");
    std::fs::remove_file(&output).expect("rm");
    let (code, _, err) = ferry(&[
        "convert",
        "--mappings",
        &mappings(),
        "--key",
        &key,
        input.to_str().expect("utf-8"),
        output.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!(
            "{key}: permanent error: not a readable parquet file"
        )),
        "{err}"
    );
    assert!(!output.exists());

    // A key ferry would not load.
    let (code, _, err) = ferry(&[
        "convert",
        "--mappings",
        &mappings(),
        "--key",
        "nope/x/y/LOAD00000001.parquet",
        "a",
        "b",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("not loaded"), "{err}");
}

#[test]
fn demo_local_run_invoke_query_and_status_through_the_cli() {
    let dir = TempDir::new("cli-demo");
    let demo = dir.path().join("demo");
    let demo_arg = demo.to_str().expect("utf-8");
    let (code, out, err) = ferry(&[
        "demo",
        "--mappings",
        &mappings(),
        "--dir",
        demo_arg,
        "--rows",
        "30",
        "--minutes",
        "3",
        "--changes",
        "8",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("simulated 6 sources, 68 tables"), "{out}");
    assert!(out.lines().any(|l| l == "all 68 tables match"), "{out}");
    assert!(
        out.contains("slots_game.rtp_audit") && out.contains("disabled"),
        "the status table lists every table: {out}"
    );

    let warehouse = demo.join("warehouse.sqlite");
    let wh = warehouse.to_str().expect("utf-8");
    let bucket = demo.join("bucket");
    let bk = bucket.to_str().expect("utf-8");

    // A second run loads nothing.
    let (code, out, err) = ferry(&[
        "local",
        "run",
        "--mappings",
        &mappings(),
        "--bucket-dir",
        bk,
        "--warehouse",
        wh,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 queued; loaded 0 (0 rows)"), "{out}");

    // Exact values as JSON: unsigned 64-bit keys and wide decimals as strings, no floats.
    let (code, out, err) = ferry(&[
        "local",
        "query",
        "--warehouse",
        wh,
        "--json",
        "SELECT spin_id, jackpot_share FROM \"slots_game.spins\" WHERE spin_id = '9223372036854775809'",
    ]);
    assert_eq!(code, 0, "{err}");
    let row: Value = serde_json::from_str(out.lines().next().expect("a row")).expect("json");
    assert_eq!(row["spin_id"], "9223372036854775809");
    assert!(
        row["jackpot_share"].is_string() || row["jackpot_share"].is_null(),
        "{row}"
    );

    let (code, out, _) = ferry(&[
        "local",
        "query",
        "--warehouse",
        wh,
        "SELECT count(*) AS n FROM _ferry_dlq",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().nth(2), Some("0"), "{out}");

    // Status as JSON: every mapped table, with what was loaded.
    let (code, out, err) = ferry(&[
        "status",
        "--mappings",
        &mappings(),
        "--warehouse",
        wh,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).expect("json");
    let tables = status["tables"].as_array().expect("tables");
    assert_eq!(tables.len(), 68);
    let players = tables
        .iter()
        .find(|t| t["table"] == "slots_account.players")
        .expect("players");
    assert!(
        players["files_24h"].as_u64().expect("n") >= 2 && players["last_file"].is_string(),
        "{players}"
    );

    // Invoke on a hand-written event: exactly the objects named, through the handler. The
    // objects were loaded already, so they are recognised; an unknown key is acknowledged.
    let key = "slots/account/slots_account/players/LOAD00000001.parquet";
    let event = serde_json::json!({"Records": [
        {"messageId": "a", "body": ferry_core::event::s3_event_body("acme-casino-dms-cdc", key, 1, "x", "2026-11-26T00:00:00Z")},
        {"messageId": "b", "body": ferry_core::event::s3_event_body("acme-casino-dms-cdc", "elsewhere/x.csv", 1, "x", "2026-11-26T00:00:00Z")}
    ]});
    let event_file = dir.write("event.json", &event.to_string());
    let (code, out, err) = ferry(&[
        "local",
        "invoke",
        "--mappings",
        &mappings(),
        "--bucket-dir",
        bk,
        "--warehouse",
        wh,
        "--event",
        event_file.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), r#"{"batchItemFailures":[]}"#);
    let (_, out, _) = ferry(&[
        "local",
        "query",
        "--warehouse",
        wh,
        "--json",
        "SELECT kind, key FROM _ferry_events ORDER BY rowid DESC LIMIT 2",
    ]);
    assert!(out.contains("already_loaded") && out.contains(key), "{out}");

    // verify fails loudly on a tampered warehouse.
    let (code, _, _) = ferry(&[
        "local",
        "query",
        "--warehouse",
        wh,
        "DELETE FROM \"slots_account.players\" WHERE rowid IN (SELECT rowid FROM \"slots_account.players\" LIMIT 1)",
    ]);
    assert_eq!(code, 0);
    let manifest = demo.join("manifest.json");
    let (code, out, err) = ferry(&[
        "local",
        "verify",
        "--manifest",
        manifest.to_str().expect("utf-8"),
        "--warehouse",
        wh,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("slots_account.players") && err.contains("rows"),
        "{err}"
    );
    assert!(out.contains("67 of 68 tables match"), "{out}");
}

#[test]
fn bigquery_ddl_over_a_sim_tree_of_the_committed_mappings_passes_the_strict_grammar() {
    use ferry_tests::bqrules;
    let dir = TempDir::new("cli-ddl");
    let bucket = dir.path().join("bucket");
    let bucket_arg = bucket.to_str().expect("utf-8");
    let (code, _, err) = ferry(&[
        "sim",
        "--mappings",
        &mappings(),
        "--out",
        bucket_arg,
        "--rows",
        "10",
        "--minutes",
        "2",
        "--changes",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ferry(&[
        "bigquery",
        "ddl",
        "--mappings",
        &mappings(),
        "--bucket-dir",
        bucket_arg,
    ]);
    assert_eq!(code, 0, "{err}");
    let statements: Vec<String> = out
        .split(";\n")
        .map(|s| {
            s.lines()
                .filter(|l| !l.starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .collect();
    // Every table the sim wrote files for: dataset, change log, and (replicas) two more.
    assert!(statements.len() > 3 * 60, "{}", statements.len());
    let mut catalogue = std::collections::HashMap::new();
    let now = std::time::Instant::now();
    let (mut created, mut altered) = (0, 0);
    for s in &statements {
        match bqrules::ddl(s) {
            None => assert!(s.starts_with("CREATE SCHEMA IF NOT EXISTS"), "{s}"),
            Some(parsed) => {
                let parsed = parsed.unwrap_or_else(|r| panic!("refused: {r:?}\n{s}"));
                if matches!(parsed, bqrules::Ddl::Create { .. }) {
                    created += 1;
                } else {
                    altered += 1;
                }
                bqrules::apply_ddl(&mut catalogue, parsed, now)
                    .unwrap_or_else(|r| panic!("refused: {r:?}\n{s}"));
            }
        }
    }
    assert!(
        created >= 60 && altered > 0,
        "{created} created, {altered} altered"
    );
    // No JSON column in a change log (parquet cannot load one); JSON in replicas.
    for (name, table) in &catalogue {
        if name.ends_with("_changelog") {
            assert!(table.columns.iter().all(|c| c.ty != "JSON"), "{name}");
        }
    }
    assert!(
        catalogue
            .values()
            .any(|t| t.columns.iter().any(|c| c.ty == "JSON"))
    );
    // The committed payments tables (DATETIME, MONTH) get a form BigQuery accepts.
    assert!(
        out.contains("PARTITION BY DATETIME_TRUNC(`requested_at`, MONTH)"),
        "{out}"
    );
    // One table only.
    let (code, one, err) = ferry(&[
        "bigquery",
        "ddl",
        "--mappings",
        &mappings(),
        "--bucket-dir",
        bucket_arg,
        "--table",
        "slots_account.players",
    ]);
    assert_eq!(code, 0, "{err}");
    // Change log, replica, its runs and its tombstones.
    assert_eq!(one.matches("CREATE TABLE").count(), 4, "{one}");
}
