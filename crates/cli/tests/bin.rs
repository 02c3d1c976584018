//! The built `ferry` binary: exit codes and streams as a shell or CI sees them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::process::Command;

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
