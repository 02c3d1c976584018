//! The built `ferry` binary: exit codes and streams as a shell or CI sees them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::process::Command;

#[path = "../../../tests/support/crafted.rs"]
#[allow(dead_code, unreachable_pub)]
mod crafted;

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

fn repo_mappings() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../mappings")
}

#[test]
fn version_and_help() {
    let out = ferry().arg("--version").output().expect("runs");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ferry {}", env!("CARGO_PKG_VERSION"))
    );
    let out = ferry().arg("--help").output().expect("runs");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("plan"));
}

#[test]
fn exit_codes() {
    let ok = ferry()
        .args(["mappings", "check"])
        .arg(repo_mappings())
        .output()
        .expect("runs");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let missing = ferry()
        .args(["mappings", "check", "/nonexistent/ferry/mappings"])
        .output()
        .expect("runs");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read the mappings folder"));

    let usage = ferry().arg("plan").output().expect("runs");
    assert_eq!(usage.status.code(), Some(2), "a KEY is required");
}

#[test]
fn a_killed_run_resumes_without_loss_or_duplicates() {
    let dir = std::env::temp_dir().join(format!("ferry-bin-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bucket = dir.join("bucket");
    let warehouse = dir.join("w.sqlite");
    let manifest = dir.join("bucket.manifest.json");
    let status = ferry()
        .args(["sim", "--mappings"])
        .arg(repo_mappings())
        .arg("--out")
        .arg(&bucket)
        .args(["--rows", "300", "--minutes", "4", "--changes", "20"])
        .output()
        .expect("runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // Kill the run part way (the kill may land anywhere, also between a load and its ledger
    // entry: they are one transaction).
    let mut child = ferry()
        .args(["local", "run", "--mappings"])
        .arg(repo_mappings())
        .arg("--bucket-dir")
        .arg(&bucket)
        .arg("--warehouse")
        .arg(&warehouse)
        .spawn()
        .expect("starts");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let _ = child.kill();
    let _ = child.wait();

    let rerun = ferry()
        .args(["local", "run", "--mappings"])
        .arg(repo_mappings())
        .arg("--bucket-dir")
        .arg(&bucket)
        .arg("--warehouse")
        .arg(&warehouse)
        .output()
        .expect("runs");
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let verify = ferry()
        .args(["local", "verify", "--manifest"])
        .arg(&manifest)
        .arg("--warehouse")
        .arg(&warehouse)
        .output()
        .expect("runs");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("68 of 68 tables match"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn crafted_files_are_refused_cleanly_under_a_1_5_gib_address_space_limit() {
    let dir = std::env::temp_dir().join(format!("ferry-crafted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mappings = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/convert");
    for (name, bytes, needle) in [
        ("page", crafted::page_claims_2_gib(), "FERRY_MAX_PAGE_MIB"),
        (
            "rows",
            crafted::footer_claims_rows(50_000_000),
            "permanent error",
        ),
    ] {
        let input = dir.join(format!("{name}.parquet"));
        let output = dir.join(format!("{name}.out.parquet"));
        std::fs::write(&input, bytes).unwrap();
        let script = format!(
            "ulimit -v 1572864; exec '{}' convert --mappings '{}' --key '{}' '{}' '{}'",
            env!("CARGO_BIN_EXE_ferry"),
            mappings.display(),
            crafted::KEY,
            input.display(),
            output.display()
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A clean refusal: exit code 1 (not a signal, not an abort), saying why.
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(!output.exists(), "{name}: no output left behind");
    }
    std::fs::remove_dir_all(&dir).ok();
}
