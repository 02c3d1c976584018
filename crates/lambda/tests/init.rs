//! The `bootstrap` binary's cold start: mappings loaded and validated before the first event;
//! a broken deployment fails init with the file and field named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bootstrap(mappings: &std::path::Path) -> std::process::Output {
    bootstrap_with(mappings, &[("FERRY_BQ_TOKEN", "none")])
}

fn bootstrap_with(mappings: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .arg("--init-only")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FERRY_MAPPINGS", mappings)
        .env(
            "FERRY_DLQ_URL",
            "https://sqs.us-east-1.amazonaws.com/000000000000/dlq",
        )
        .env("FERRY_LOCK_TABLE", "ferry-test-apply-locks")
        .envs(env.iter().copied())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap()
}

#[test]
fn cold_start_loads_the_committed_mappings() {
    let out = bootstrap(&repo().join("mappings"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("init_us "), "{stdout}");
    assert!(
        stdout.contains("\"tables\":68") || stdout.contains("tables=68"),
        "{stdout}"
    );
}

#[test]
fn a_bad_mapping_set_fails_init_naming_file_and_field() {
    let dir = std::env::temp_dir().join(format!("ferry-bad-mappings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("broken.json"),
        r#"{"source": {"name": "broken", "bucket": "b"}, "bigquery": {"project": "acme-analytics", "dataset": "d"}, "tables": {"db.t": {"mode": "replica"}}}"#,
    )
    .unwrap();
    let out = bootstrap(&dir);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("broken.json") && all.contains("primary_key"),
        "{all}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_malformed_private_key_fails_init_with_its_cause_and_no_key_material() {
    let line = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDKEYMATERIAL0";
    let body: Vec<&str> = std::iter::repeat_n(line, 20).collect();
    let escaped = format!(
        "-----BEGIN PRIVATE KEY-----\\\\n{}\\\\n-----END PRIVATE KEY-----\\\\n",
        body.join("\\\\n")
    );
    let credentials = format!(
        r#"{{"type": "service_account", "project_id": "p", "private_key": "{escaped}", "client_email": "ferry@p.iam.gserviceaccount.com", "token_uri": "https://oauth2.googleapis.com/token"}}"#
    );
    let out = bootstrap_with(
        &repo().join("mappings"),
        &[("FERRY_GCP_CREDENTIALS", credentials.as_str())],
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("newlines are escaped"), "{all}");
    assert!(
        !all.contains("KEYMATERIAL"),
        "key material in the output: {all}"
    );
}
