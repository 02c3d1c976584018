//! `ferry status` in local mode: `--table`, `--stale-after` exit codes, and the HTML page opened
//! in a real headless Chromium (Debian `chromium`, which `scripts/test` installs): it renders
//! without console errors, marks the stale table, and loads nothing from elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_tests::{TempDir, ferry};

const MAPPING: &str = r#"{
  "source": {"name": "arcade", "bucket": "arcade-dms", "folder": "cdc", "dms": {"timestamp_column": "dms_commit_ts"}},
  "bigquery": {"project": "arcade-analytics", "dataset": "arcade"},
  "defaults": {"mode": "replica"},
  "tables": {
    "arcade.players": {"primary_key": ["player_id"]},
    "arcade.spins": {"primary_key": ["spin_id"]},
    "arcade.payouts": {"primary_key": ["payout_id"]}
  }
}"#;

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("chromium is missing: run scripts/test, which installs Debian's chromium")
}

/// The page's DOM after its scripts ran, and Chromium's console messages.
fn open(page: &Path, screenshot: Option<&Path>) -> (String, String) {
    let profile = TempDir::new("chromium-profile");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1400,1000",
        &format!("--user-data-dir={}", profile.path().display()),
    ]);
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Console errors and uncaught exceptions in Chromium's log.
fn console_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect()
}

/// The `<tr>` of a table in the dumped DOM.
fn row<'a>(dom: &'a str, table: &str) -> &'a str {
    let at = dom
        .find(&format!("data-table=\"{table}\""))
        .unwrap_or_else(|| panic!("no row for {table}"));
    let start = dom[..at].rfind("<tr").unwrap();
    let end = at + dom[at..].find("</tr>").unwrap();
    &dom[start..end]
}

#[test]
fn the_status_page_renders_in_chromium_and_marks_the_stale_table() {
    let dir = TempDir::new("status-page");
    let m = dir.path().join("mappings");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("arcade.json"), MAPPING).unwrap();
    let (m, b, w, page) = (
        m.display().to_string(),
        dir.path().join("bucket").display().to_string(),
        dir.path().join("warehouse.db").display().to_string(),
        dir.path().join("status.html"),
    );
    // Two tables with a history that ends now; payouts never gets a file.
    let (code, out, err) = ferry(&[
        "sim",
        "--mappings",
        &m,
        "--out",
        &b,
        "--only",
        "arcade.players",
        "--only",
        "arcade.spins",
        "--ends-now",
        "--no-hard-cases",
        "--minutes",
        "3",
        "--rows",
        "50",
    ]);
    assert_eq!(code, 0, "{out}{err}");
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

    // --stale-after: 1 while payouts has nothing, 0 for a fresh table, 1 when the limit is tiny.
    let p = page.display().to_string();
    let (code, out, err) = ferry(&[
        "status",
        "--mappings",
        &m,
        "--warehouse",
        &w,
        "--stale-after",
        "15m",
        "--html",
        &p,
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("stale: arcade.payouts (nothing loaded)"),
        "{err}"
    );
    assert!(!err.contains("arcade.players"), "{err}");
    let (code, out, err) = ferry(&[
        "status",
        "--mappings",
        &m,
        "--warehouse",
        &w,
        "--table",
        "arcade.spins",
        "--stale-after",
        "15m",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("arcade.spins") && !out.contains("arcade.players"),
        "{out}"
    );
    let (code, _, err) = ferry(&[
        "status",
        "--mappings",
        &m,
        "--warehouse",
        &w,
        "--table",
        "arcade.spins",
        "--stale-after",
        "1s",
    ]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = ferry(&[
        "status",
        "--mappings",
        &m,
        "--warehouse",
        &w,
        "--stale-after",
        "soon",
    ]);
    assert_eq!(code, 2, "{err}");

    // The page: self-contained, and what Chromium renders of it.
    let html = std::fs::read_to_string(&page).unwrap();
    for external in ["http://", "https://", " src=", "<link"] {
        assert!(
            !html.contains(external),
            "the page loads nothing from elsewhere: {external}"
        );
    }
    let (dom, log) = open(&page, None);
    assert!(
        console_errors(&log).is_empty(),
        "console: {:?}",
        console_errors(&log)
    );
    let payouts = row(&dom, "arcade.payouts");
    assert!(
        payouts.contains("class=\"stale\"") && payouts.contains("STALE"),
        "{payouts}"
    );
    let players = row(&dom, "arcade.players");
    assert!(
        players.contains("class=\"fresh\"") && !players.contains("STALE"),
        "{players}"
    );
    assert!(
        players.contains("<svg"),
        "a 24-hour chart per table: {players}"
    );
    assert!(
        dom.find("arcade.payouts").unwrap() < dom.find("arcade.players").unwrap(),
        "stale tables come first"
    );
    assert!(
        dom.contains("id=\"stale-count\"") && dom.contains("1 stale"),
        "the summary counts it"
    );

    // The console check sees errors when there are some.
    let broken = dir.path().join("broken.html");
    std::fs::write(
        &broken,
        html.replace("</body>", "<script>undefinedFunction();</script></body>"),
    )
    .unwrap();
    let (_, log) = open(&broken, None);
    assert!(
        !console_errors(&log).is_empty(),
        "an uncaught error is seen: {log}"
    );

    // A screenshot, for people (kept when FERRY_SCREENSHOT names a file).
    if let Ok(target) = std::env::var("FERRY_SCREENSHOT") {
        open(&page, Some(Path::new(&target)));
    }
}

#[test]
fn the_status_views_are_printed_for_review() {
    let m = ferry_tests::mappings_dir().display().to_string();
    let (code, out, err) = ferry(&["bigquery", "status-views", "--mappings", &m]);
    assert_eq!(code, 0, "{err}");
    for view in [
        "load_jobs_hourly",
        "changes_hourly",
        "table_status",
        "table_status_hourly",
    ] {
        assert!(
            out.contains(&format!(
                "CREATE OR REPLACE VIEW `acme-casino-analytics`.`ferry_status`.`{view}` AS"
            )),
            "{view}: {out}"
        );
    }
    // The committed mappings' region (asia-northeast3) holds the jobs view.
    assert!(
        out.contains("`region-asia-northeast3`.INFORMATION_SCHEMA.JOBS_BY_PROJECT"),
        "{out}"
    );
    // Every mapped table is listed, disabled ones too, each with its state.
    let tables = out.matches(" AS table_name, ").count();
    assert!(
        out.contains("'baccarat_account.players' AS table_name"),
        "{out}"
    );
    assert!(
        tables >= 68,
        "one mapped row and one change-log branch per table: {tables}"
    );
}

#[test]
fn the_dead_letter_queue_summary_shows_its_depth_and_oldest_reason_on_moto() {
    use ferry_pipeline::DeadLetters;
    let rt = ferry_tests::runtime();
    let (_, sqs) = rt.block_on(ferry_tests::stand_ins::moto_clients());
    let url = rt
        .block_on(sqs.create_queue().queue_name("status-dlq").send())
        .unwrap()
        .queue_url
        .unwrap();
    let empty = rt
        .block_on(ferry_aws::sqs::dlq_summary(&sqs, &url))
        .unwrap();
    assert_eq!((empty.depth, empty.oldest), (0, None));
    let dlq = ferry_aws::sqs::SqsDeadLetters::new(sqs.clone(), rt.handle().clone(), url.clone());
    let message = |id: &str| ferry_core::event::SqsMessage {
        message_id: id.into(),
        receipt_handle: String::new(),
        body: "{}".into(),
        attributes: Default::default(),
        event_source_arn: String::new(),
    };
    dlq.send(&message("m1"), "cdc/a/b/x.parquet: not a parquet file")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    dlq.send(&message("m2"), "type conflict on column level")
        .unwrap();
    let summary = rt
        .block_on(ferry_aws::sqs::dlq_summary(&sqs, &url))
        .unwrap();
    assert_eq!(summary.depth, 2);
    let oldest = summary.oldest.unwrap();
    assert!(oldest.reason.contains("not a parquet file"), "{oldest:?}");
    // Summarising removes nothing: the messages are visible again (at once on SQS; moto keeps
    // them hidden for the 1 s receive timeout).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        rt.block_on(ferry_aws::sqs::dlq_summary(&sqs, &url))
            .unwrap()
            .depth,
        2
    );
}

/// One history, loaded twice: by local mode into SQLite, and by the BigQuery writer through the
/// strict server onto bqemulator. Production `ferry status` (a real process: it reads its
/// credentials and endpoints from the environment) over the `ferry_status` views and a moto DLQ
/// must say what local mode says of the same files, and report the load that failed.
#[test]
fn production_status_over_a_loaded_estate_agrees_with_local_mode() {
    use ferry_core::Catalog;
    use ferry_pipeline::DeadLetters;
    use ferry_sim::model::MysqlType as M;
    use ferry_tests::bqserver::{BqServer, Fault};
    use ferry_tests::dms_tree::{self, ModelColumn, ModelTable};
    use ferry_tests::stand_ins::{bqemulator, moto};
    use serde_json::Value;

    const MAPPING: &str = r#"{
  "source": {"name": "arcade", "bucket": "arcade-dms", "folder": "cdc", "dms": {"timestamp_column": "dms_commit_ts"}},
  "bigquery": {"project": "ferry-test", "dataset": "arcade_status"},
  "defaults": {"mode": "replica"},
  "tables": {
    "arcade.players": {"primary_key": ["player_id"]},
    "arcade.spins": {"primary_key": ["spin_id"]},
    "arcade.payouts": {"primary_key": ["payout_id"], "enabled": false}
  }
}"#;
    let table = |name: &'static str, key: &'static str| ModelTable {
        schema: "arcade",
        name,
        columns: vec![
            ModelColumn {
                name: key,
                ddl: "INT",
                mysql: M::Int,
            },
            ModelColumn {
                name: "nickname",
                ddl: "VARCHAR(40)",
                mysql: M::Varchar,
            },
        ],
        key: vec![key],
    };
    let (players, spins) = (table("players", "player_id"), table("spins", "spin_id"));
    let dir = TempDir::new("status-agree");
    let m = dir.path().join("mappings");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("arcade.json"), MAPPING).unwrap();
    let bucket = dir.path().join("bucket");
    let page = dir.path().join("status.html");
    let folder = |t: &ModelTable| bucket.join("cdc").join(t.schema).join(t.name);
    let rows = |ids: &[u32]| -> Vec<Vec<Option<String>>> {
        ids.iter()
            .map(|i| vec![Some(i.to_string()), Some(format!("p{i}"))])
            .collect()
    };
    let now = ferry_pipeline::now_micros();
    let min = 60_000_000;
    let ts = "dms_commit_ts";
    dms_tree::write_rows(
        &players,
        &rows(&[1, 2, 3]),
        None,
        ts,
        now - 180 * min,
        &folder(&players).join("LOAD00000001.parquet"),
    );
    for (ids, op, at) in [(&[1, 2][..], "U", 120), (&[4][..], "I", 10)] {
        let stamp = now - at * min;
        dms_tree::write_rows(
            &players,
            &rows(ids),
            Some(op),
            ts,
            stamp,
            &folder(&players).join(dms_tree::cdc_name(stamp)),
        );
    }
    let stamp = now - 40 * min;
    dms_tree::write_rows(
        &spins,
        &rows(&[7, 8]),
        Some("I"),
        ts,
        stamp,
        &folder(&spins).join(dms_tree::cdc_name(stamp)),
    );
    let corrupt = folder(&spins).join(dms_tree::cdc_name(now - 30 * min));
    std::fs::write(&corrupt, b"PAR1 cut short by a crash").unwrap();

    // Local mode.
    let (ms, bs, w) = (
        m.display().to_string(),
        bucket.display().to_string(),
        dir.path().join("w.db").display().to_string(),
    );
    let (code, out, err) = ferry(&[
        "local",
        "run",
        "--mappings",
        &ms,
        "--bucket-dir",
        &bs,
        "--warehouse",
        &w,
    ]);
    assert!(code <= 1, "{out}{err}");
    let (code, out, err) = ferry(&["status", "--mappings", &ms, "--warehouse", &w, "--json"]);
    assert_eq!(code, 0, "{err}");
    let local: Value = serde_json::from_str(&out).unwrap();

    // The same files through the BigQuery writer; the first load into spins fails once.
    let server = BqServer::start(Some(bqemulator().to_owned()));
    server.inject([Fault::JobFailsOn("spins", "backendError")]);
    let rt = ferry_tests::runtime();
    let client = ferry_bigquery::Client::new(
        ferry_bigquery::ClientConfig {
            base_url: server.url.clone(),
            initial_backoff: std::time::Duration::from_millis(50),
            ..Default::default()
        },
        ferry_bigquery::Auth::None,
        "ferry-test",
    )
    .unwrap();
    for d in ["arcade_status", "info"] {
        rt.block_on(client.ensure_dataset("ferry-test", d, None))
            .unwrap();
    }
    let catalog = Catalog::load_dir(&m).unwrap();
    let source = catalog.source("arcade").unwrap().clone();
    let pipeline = ferry_pipeline::Pipeline {
        catalog: std::sync::Arc::new(catalog.clone()),
        store: ferry_local::DirStore::new(&bucket),
        warehouse: ferry_bigquery::BigQueryWarehouse::new(
            client,
            rt.handle().clone(),
            Default::default(),
        ),
        work_dir: dir.path().join("work"),
    };
    let objects =
        ferry_pipeline::backfill::select(&catalog, &pipeline.store, &source, &Default::default())
            .unwrap();
    let summary = ferry_pipeline::backfill::run_direct(&pipeline, &source, &objects, &mut |_| {});
    assert_eq!((summary.loaded, summary.failed), (4, 1), "{summary:?}");
    // The corrupt file is dead-lettered as the Lambda does it, on moto.
    let (_, sqs) = rt.block_on(ferry_tests::stand_ins::moto_clients());
    let dlq_url = rt
        .block_on(sqs.create_queue().queue_name("status-agree-dlq").send())
        .unwrap()
        .queue_url
        .unwrap();
    let dlq = ferry_aws::sqs::SqsDeadLetters::new(sqs, rt.handle().clone(), dlq_url.clone());
    let message = ferry_core::event::SqsMessage {
        message_id: "m1".into(),
        receipt_handle: String::new(),
        body: "{}".into(),
        attributes: Default::default(),
        event_source_arn: String::new(),
    };
    dlq.send(&message, &summary.failures[0]).unwrap();

    // INFORMATION_SCHEMA.JOBS as BigQuery would list the jobs the server ran (set up on
    // bqemulator directly: the strict server's DDL rule knows only the types ferry writes).
    let direct = ferry_bigquery::Client::new(
        ferry_bigquery::ClientConfig {
            base_url: bqemulator().to_owned(),
            ..Default::default()
        },
        ferry_bigquery::Auth::None,
        "ferry-test",
    )
    .unwrap();
    let jobs: Vec<String> = server
        .state
        .lock()
        .unwrap()
        .jobs
        .iter()
        .map(|j| {
            let labels: Vec<String> = j
                .labels
                .iter()
                .map(|(k, v)| format!("STRUCT('{k}' AS key, '{v}' AS value)"))
                .collect();
            let error = j.error.map_or("NULL".to_owned(), |r| {
                format!("STRUCT('{r}' AS reason, 'failed' AS message)")
            });
            format!(
                "(TIMESTAMP_MILLIS({}), '{}', '{}', 'DONE', {error}, [{}], {})",
                j.created_millis,
                j.id,
                j.kind,
                labels.join(", "),
                j.data.len()
            )
        })
        .collect();
    for (i, sql) in [
        "CREATE TABLE `ferry-test`.`info`.`jobs` (`creation_time` TIMESTAMP, `job_id` STRING, `job_type` STRING, `state` STRING,
           `error_result` STRUCT<reason STRING, message STRING>, `labels` ARRAY<STRUCT<key STRING, value STRING>>, `total_bytes_processed` INT64)".to_owned(),
        format!("INSERT INTO `ferry-test`.`info`.`jobs` VALUES {}", jobs.join(",\n")),
    ]
    .iter()
    .enumerate()
    {
        rt.block_on(direct.query(sql, None, &format!("status-agree-jobs-{i}"), std::time::Duration::from_secs(30)))
            .unwrap();
    }

    // The production commands, as a process with the environment an operator would set.
    let env = [
        ("FERRY_BQ_BASE_URL", server.url.as_str()),
        ("FERRY_BQ_TOKEN", "none"),
        ("AWS_ENDPOINT_URL", moto()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let (code, out, err) = ferry_tests::ferry_process!(
        &[
            "bigquery",
            "status-views",
            "--mappings",
            &ms,
            "--apply",
            "--jobs-source",
            "`ferry-test`.`info`.`jobs`"
        ],
        &env
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("created 4 views"), "{out}");
    let (code, out, err) = ferry_tests::ferry_process!(
        &[
            "status",
            "--mappings",
            &ms,
            "--json",
            "--dlq-url",
            &dlq_url,
            "--html",
            &page.display().to_string()
        ],
        &env
    );
    assert_eq!(code, 0, "{out}{err}");
    let production: Value = serde_json::from_str(&out).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("arcade.spins") && html.contains("Corrupt footer"),
        "the production page shows the tables and the oldest dead letter"
    );
    // Its charts come from table_status_hourly: the failed load's hour, a freshness line.
    let spins_row = row(&html, "arcade.spins");
    assert!(
        spins_row.contains("class=\"bar failed\"") && spins_row.contains("class=\"lag\""),
        "{spins_row}"
    );

    let by = |doc: &Value, t: &str| -> Value {
        doc["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["table"] == t)
            .unwrap_or_else(|| panic!("{t}: {doc}"))
            .clone()
    };
    for t in ["arcade.players", "arcade.spins", "arcade.payouts"] {
        let (l, p) = (by(&local, t), by(&production, t));
        for field in ["last_commit_micros", "files_24h", "rows_24h"] {
            assert_eq!(l[field], p[field], "{t} {field}: local {l} production {p}");
        }
        assert_eq!(l["state"] == "disabled", p["state"] == "disabled", "{t}");
        // Production's last load job names the file local mode loaded last (its stamp).
        if let Some(file) = l["last_file"].as_str() {
            let stamp = file
                .rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".parquet");
            let job = p["last_file"].as_str().unwrap();
            assert!(
                job.contains(&stamp.replace('-', "T")),
                "{t}: {file} vs {job}"
            );
        }
        let lag = |v: &Value| v["lag_seconds"].as_f64();
        match (lag(&l), lag(&p)) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 120.0, "{t}: lag {a} vs {b}"),
            (a, b) => assert_eq!(a, b, "{t}"),
        }
    }
    let players = by(&production, "arcade.players");
    assert_eq!(players["files_24h"], 3, "{players}");
    assert_eq!(players["rows_24h"], 6, "{players}");
    let spins = by(&production, "arcade.spins");
    assert_eq!(spins["failures_24h"], 1, "the failed load job: {spins}");
    assert_eq!(production["dead_letters"], local["dead_letters"]);
    assert_eq!(production["dead_letters"], 1);
    let reason = production["dead_letter_oldest"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&dms_tree::cdc_name(now - 30 * min)),
        "the reason names the object: {reason}"
    );
}
