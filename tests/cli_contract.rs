//! The command line's contract, as scripts and cron jobs rely on it: exit codes per command
//! (0 success, 1 the operation found problems, 2 usage error, 3 environment or runtime error),
//! broken pipes that exit quietly, and the documented shape of every reporting command's
//! `--json` (docs/cli.md lists the same fields).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::io::Read;

use ferry_tests::{TempDir, ferry, mappings_dir};
use serde_json::Value;

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Every line of `out` is one JSON object with exactly `fields`.
fn shape(out: &str, fields: &[&str]) -> Vec<Value> {
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty(), "no output");
    for l in &lines {
        assert_eq!(keys(l), set(fields), "{l}");
    }
    lines
}

/// A small local estate of one committed table, simulated and loaded.
struct Local {
    dir: TempDir,
    m: String,
}

impl Local {
    fn new(label: &str) -> Local {
        let dir = TempDir::new(label);
        let m = mappings_dir().display().to_string();
        let l = Local { dir, m };
        let (code, out, err) = ferry(&[
            "sim",
            "--mappings",
            &l.m,
            "--bucket-dir",
            &l.p("bucket"),
            "--table",
            "slots_account.players",
            "--rows",
            "20",
            "--minutes",
            "2",
            "--changes",
            "5",
            "--no-hard-cases",
            "--ends-now",
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        shape(
            &out,
            &["files", "rows", "bytes", "tables", "seconds", "manifest"],
        );
        l
    }
    fn p(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }
    fn run(&self, args: &[&str]) -> (u8, String, String) {
        ferry(args)
    }
}

#[test]
fn local_commands_exit_codes_and_json_shapes() {
    let l = Local::new("contract-local");
    let (m, b, w) = (l.m.clone(), l.p("bucket"), l.p("w.db"));
    let (code, out, err) = l.run(&[
        "local",
        "run",
        "--mappings",
        &m,
        "--bucket-dir",
        &b,
        "--warehouse",
        &w,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let run = shape(
        &out,
        &[
            "objects",
            "loaded_before",
            "queued",
            "loaded",
            "already_loaded",
            "skipped",
            "failures",
            "dead_lettered",
            "rows",
        ],
    );
    assert!(run[0]["loaded"].as_u64().unwrap() >= 3, "{out}");

    // --limit is exact, not a batch of ten.
    let w2 = l.p("w2.db");
    let (code, out, _) = l.run(&[
        "local",
        "run",
        "--mappings",
        &m,
        "--bucket-dir",
        &b,
        "--warehouse",
        &w2,
        "--limit",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0);
    let limited: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(limited["loaded"], 2, "{limited}");

    let manifest = format!("{b}.manifest.json");
    let (code, out, _) = l.run(&[
        "local",
        "verify",
        "--manifest",
        &manifest,
        "--warehouse",
        &w,
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let checks = shape(&out, &["table", "target", "ok", "detail"]);
    assert!(checks.iter().all(|c| c["ok"] == true));
    // The half-loaded warehouse differs from the manifest: 1, with the table named.
    let (code, out, _) = l.run(&[
        "local",
        "verify",
        "--manifest",
        &manifest,
        "--warehouse",
        &w2,
        "--json",
    ]);
    assert_eq!(code, 1);
    assert!(
        shape(&out, &["table", "target", "ok", "detail"])
            .iter()
            .any(|c| c["ok"] == false)
    );

    let (code, out, _) = l.run(&[
        "status",
        "--mappings",
        &m,
        "--warehouse",
        &w,
        "--json",
        "--source",
        "slots-account",
    ]);
    assert_eq!(code, 0);
    let status = shape(&out, &["tables", "dead_letters"]);
    let tables = status[0]["tables"].as_array().unwrap();
    assert!(
        tables.iter().all(|t| t["source"] == "slots-account"),
        "--source filters"
    );
    assert_eq!(
        keys(&tables[0]),
        set(&[
            "source",
            "table",
            "state",
            "last_file",
            "last_commit_micros",
            "lag_seconds",
            "files_24h",
            "rows_24h",
            "failures_24h",
            "skipped_24h",
            "warnings_24h",
            "removed_24h",
            "last_warning",
            "reconcile",
            "verified_through_micros"
        ])
    );
    let (code, _, err) = l.run(&[
        "status",
        "--mappings",
        &m,
        "--warehouse",
        &w,
        "--table",
        "slots_account.players",
        "--stale-after",
        "1s",
    ]);
    assert_eq!(code, 1, "stale: {err}");
    let (code, _, _) = l.run(&[
        "status",
        "--mappings",
        &m,
        "--warehouse",
        &w,
        "--source",
        "nope",
    ]);
    assert_eq!(code, 2, "an unknown source is a usage error");

    let (code, out, _) = l.run(&[
        "local",
        "query",
        "--warehouse",
        &w,
        "--json",
        "SELECT 1 AS one, 'x' AS two",
    ]);
    assert_eq!(code, 0);
    shape(&out, &["one", "two"]);

    // A corrupt object: local run and invoke exit 1, and the DLQ shows it with a human time.
    std::fs::write(
        l.dir
            .path()
            .join("bucket/slots/account/slots_account/players/20261201-000000000.parquet"),
        b"PAR1 garbage",
    )
    .unwrap();
    let (code, out, err) = l.run(&[
        "local",
        "run",
        "--mappings",
        &m,
        "--bucket-dir",
        &b,
        "--warehouse",
        &w,
    ]);
    assert_eq!(code, 1, "dead letters are problems found: {out}{err}");
    assert!(
        err.contains("dead-lettered: see ferry dlq inspect"),
        "{err}"
    );
    let (code, out, _) = l.run(&["dlq", "inspect", "--warehouse", &w, "--json"]);
    assert_eq!(code, 0);
    let letters = shape(
        &out,
        &[
            "message_id",
            "sent_at",
            "receive_count",
            "objects",
            "reason",
        ],
    );
    let sent = letters[0]["sent_at"].as_str().unwrap();
    assert!(
        sent.len() == 19 && sent.as_bytes()[10] == b' ',
        "YYYY-MM-DD HH:MM:SS: {sent}"
    );
    let event = l.dir.write(
        "event.json",
        &format!(
            r#"{{"Records": [{{"messageId": "m1", "receiptHandle": "r", "body": {}, "attributes": {{}}, "eventSourceARN": "arn:aws:sqs:us-east-1:0:q"}}]}}"#,
            serde_json::to_string(&ferry_core::event::s3_event_body(
                "acme-casino-dms-cdc",
                "slots/account/slots_account/players/20991231-000000000.parquet",
                10,
                "x",
                "2026-12-01T00:00:00.000Z"
            ))
            .unwrap()
        ),
    );
    let ev = event.display().to_string();
    let (code, out, err) = l.run(&[
        "local",
        "invoke",
        "--mappings",
        &m,
        "--bucket-dir",
        &b,
        "--warehouse",
        &w,
        "--event",
        &ev,
    ]);
    assert_eq!(code, 1, "a missing object is dead-lettered: {out}{err}");

    // Usage errors: 2.
    for args in [
        vec![
            "local",
            "run",
            "--mappings",
            &m,
            "--bucket-dir",
            "/nonexistent/bucket",
            "--warehouse",
            &w,
        ],
        vec!["local", "run", "--bogus"],
        vec![
            "sim",
            "--mappings",
            &m,
            "--bucket-dir",
            &b,
            "--table",
            "nope.nope",
        ],
        vec![
            "backfill",
            "--mappings",
            &m,
            "--source",
            "nope",
            "--dry-run",
        ],
        vec![
            "local",
            "verify",
            "--manifest",
            &manifest,
            "--warehouse",
            "/nonexistent.db",
        ],
    ] {
        let (code, _, err) = l.run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.starts_with("error"), "{args:?}: {err}");
    }
}

#[test]
fn mapping_and_deploy_commands_print_documented_json() {
    let m = mappings_dir().display().to_string();
    let (code, out, _) = ferry(&["mappings", "check", "--mappings", &m, "--json"]);
    assert_eq!(code, 0);
    let doc = shape(
        &out,
        &[
            "ok",
            "sources",
            "tables",
            "enabled",
            "replicas",
            "problems",
            "backfills",
        ],
    );
    assert_eq!(
        (doc[0]["ok"].as_bool(), doc[0]["tables"].as_u64()),
        (Some(true), Some(68))
    );
    let (code, out, _) = ferry(&["bigquery", "status-views", "--mappings", &m, "--json"]);
    assert_eq!(code, 0);
    let views: Vec<String> = shape(&out, &["view", "sql"])
        .iter()
        .map(|v| v["view"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        views,
        [
            "load_jobs_hourly",
            "changes_hourly",
            "table_status",
            "table_status_hourly"
        ]
    );
    let (code, out, _) = ferry(&["dms", "table-mappings", "--mappings", &m]);
    assert_eq!(code, 0);
    let per_source = shape(&out, &["source", "table_mappings"]);
    assert_eq!(
        per_source.len(),
        6,
        "one object per source and line, no comments"
    );
    let (code, out, _) = ferry(&[
        "plan",
        "--mappings",
        &m,
        "--json",
        "slots/account/slots_account/players/LOAD00000001.parquet",
    ]);
    assert_eq!(code, 0);
    let plan: Value = serde_json::from_str(out.trim()).unwrap();
    for field in [
        "source",
        "schema",
        "table",
        "kind",
        "target",
        "job_id",
        "skip_reason",
    ] {
        assert!(plan.get(field).is_some(), "plan --json has {field}: {plan}");
    }
}

#[test]
fn runtime_failures_exit_3_and_broken_pipes_exit_quietly() {
    let m = mappings_dir().display().to_string();
    // Nothing listens on port 9: the SDK's request fails, an environment error.
    let env = [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_MAX_ATTEMPTS", "1"),
    ];
    let (code, _, err) = ferry_tests::ferry_process!(
        &[
            "dlq",
            "inspect",
            "--dlq-url",
            "http://127.0.0.1:9/000000000000/dlq"
        ],
        &env
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    // Production status with no GCP credentials in the environment.
    let (code, _, err) = ferry_tests::ferry_process!(&["status", "--mappings", &m], &env);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no GCP credentials"), "{err}");
    // --region and --profile are accepted where AWS is used; an unknown profile is the
    // environment's problem, not a usage error.
    let (code, _, err) = ferry_tests::ferry_process!(
        &[
            "dlq",
            "inspect",
            "--dlq-url",
            "http://127.0.0.1:9/000000000000/dlq",
            "--region",
            "eu-west-1"
        ],
        &env
    );
    assert_eq!(code, 3, "{err}");

    // A reader that stops early (`| head`): exit 0, nothing on stderr.
    let many: Vec<String> = (0..5000)
        .map(|i| {
            format!(
                "slots/game/slots_game/spins/20261126-{:09}.parquet",
                100_000_000 + i
            )
        })
        .collect();
    let mut args = vec![
        "plan".to_owned(),
        "--mappings".into(),
        m.clone(),
        "--json".into(),
    ];
    args.extend(many);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-under-test"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    // The pipe's read end is closed here, as `head` does.
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("Broken pipe") && stderr.is_empty(),
        "{stderr}"
    );
}

#[test]
fn aws_commands_print_documented_json_on_moto() {
    use ferry_tests::stand_ins::{moto, moto_clients};
    let rt = ferry_tests::runtime();
    let (s3, sqs) = rt.block_on(moto_clients());
    rt.block_on(async {
        let _ = s3
            .create_bucket()
            .bucket("acme-casino-dms-cdc")
            .send()
            .await;
        s3.put_object()
            .bucket("acme-casino-dms-cdc")
            .key("slots/account/slots_account/players/LOAD00000001.parquet")
            .body(aws_sdk_s3::primitives::ByteStream::from_static(
                b"PAR1 just bytes",
            ))
            .send()
            .await
            .unwrap();
    });
    let queue = |name: &str| {
        rt.block_on(sqs.create_queue().queue_name(name).send())
            .unwrap()
            .queue_url
            .unwrap()
    };
    let (dlq, main) = (queue("contract-dlq"), queue("contract-main"));
    rt.block_on(sqs.send_message().queue_url(&dlq).message_body("{}").send())
        .unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", moto()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let m = mappings_dir().display().to_string();
    // --dry-run needs neither --direct nor --enqueue.
    let (code, out, err) = ferry_tests::ferry_process!(
        &[
            "backfill",
            "--mappings",
            &m,
            "--source",
            "slots-account",
            "--table",
            "slots_account.players",
            "--dry-run",
            "--json"
        ],
        &env
    );
    assert_eq!(code, 0, "{err}");
    let objects = shape(&out, &["object", "bytes"]);
    assert_eq!(
        objects[0]["object"],
        "s3://acme-casino-dms-cdc/slots/account/slots_account/players/LOAD00000001.parquet"
    );
    let (code, out, err) =
        ferry_tests::ferry_process!(&["dlq", "inspect", "--dlq-url", &dlq, "--json"], &env);
    assert_eq!(code, 0, "{err}");
    shape(
        &out,
        &[
            "message_id",
            "sent_at",
            "receive_count",
            "objects",
            "reason",
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, out, err) = ferry_tests::ferry_process!(
        &[
            "dlq",
            "redrive",
            "--dlq-url",
            &dlq,
            "--queue-url",
            &main,
            "--copy",
            "--json"
        ],
        &env
    );
    assert_eq!(code, 0, "{err}");
    let r = shape(&out, &["method", "moved", "task"]);
    assert_eq!(
        (r[0]["method"].as_str(), r[0]["moved"].as_u64()),
        (Some("copy"), Some(1))
    );
}
