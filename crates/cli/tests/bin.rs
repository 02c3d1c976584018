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

/// A snappy CDC file of the test mapping's `lab.accounts` whose `Op` page header claims
/// 2 GiB uncompressed (the header patched; the file is otherwise valid).
fn crafted_2_gib_page() -> Vec<u8> {
    use std::sync::Arc;

    use arrow_array::{RecordBatch, StringArray, UInt64Array};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let schema = Arc::new(Schema::new(vec![
        Field::new("dms_ts", DataType::Utf8, true),
        Field::new("account_id", DataType::UInt64, true),
        Field::new("Op", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(vec!["2026-11-26 10:14:00.000001"; 10])),
            Arc::new(UInt64Array::from_iter_values(0..10)),
            Arc::new(StringArray::from(vec!["U"; 10])),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .build();
    let mut file = Vec::new();
    let mut w = ArrowWriter::try_new(&mut file, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let reader = SerializedFileReader::new(bytes::Bytes::from(file.clone())).unwrap();
    let start = reader.metadata().row_group(0).column(2).byte_range().0 as usize;
    assert_eq!(&file[start..start + 3], &[0x15, 0x00, 0x15]);
    let old = file[start + 3..]
        .iter()
        .position(|b| b & 0x80 == 0)
        .unwrap()
        + 1;
    // zigzag(i32::MAX) as a varint.
    file.splice(start + 3..start + 3 + old, [0xfe, 0xff, 0xff, 0xff, 0x0f]);
    file
}

#[test]
fn a_crafted_file_is_refused_cleanly_under_a_1_5_gib_address_space_limit() {
    let dir = std::env::temp_dir().join(format!("ferry-crafted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("crafted.parquet");
    std::fs::write(&input, crafted_2_gib_page()).unwrap();
    let mappings = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/convert");
    let script = format!(
        "ulimit -v 1572864; exec '{}' convert --mappings '{}' --key lab/dms/lab/accounts/20261126-101500123.parquet '{}' '{}'",
        env!("CARGO_BIN_EXE_ferry"),
        mappings.display(),
        input.display(),
        dir.join("out.parquet").display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A clean refusal: exit code 1 (not a signal, not an abort), naming the cap.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("FERRY_MAX_PAGE_MIB"), "{stderr}");
    assert!(!dir.join("out.parquet").exists(), "no output left behind");
    std::fs::remove_dir_all(&dir).ok();
}
