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
