//! Peak memory of `ferry convert` (release) on hostile and on large files: the crafted claims
//! must be refused without allocating what they claim, and large row groups must convert in
//! bounded memory. Prints figures; never passes or fails. Run with `scripts/bench crafted`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../../tests/support/crafted.rs"]
#[allow(dead_code, unreachable_pub)]
mod crafted;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow_array::{RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// A full-load file of `rows` rows in one row group (`dms_ts`, `account_id`), written in
/// slices so that building it stays small.
fn one_row_group(path: &Path, rows: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("dms_ts", DataType::Utf8, false),
        Field::new("account_id", DataType::UInt64, true),
    ]));
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows))
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).unwrap();
    let slice = 1 << 20;
    let mut done = 0;
    while done < rows {
        let n = slice.min(rows - done);
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    "2026-11-26 10:00:00.000000",
                    n,
                ))),
                Arc::new(UInt64Array::from_iter_values(
                    done as u64..(done + n) as u64,
                )),
            ],
        )
        .unwrap();
        w.write(&batch).unwrap();
        done += n;
    }
    w.close().unwrap();
}

fn main() {
    let ferry = std::env::var("FERRY_BIN").expect("FERRY_BIN: the release ferry binary");
    let dir = std::env::temp_dir().join(format!("ferry-bench-crafted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mappings = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/convert");
    let cdc = crafted::KEY;
    let load = "lab/dms/lab/accounts/LOAD00000001.parquet";
    let mut cases: Vec<(&str, PathBuf, &str)> = Vec::new();
    for (name, bytes) in [
        ("page header claims 2 GiB", crafted::page_claims_2_gib()),
        (
            "footer claims 50M rows",
            crafted::footer_claims_rows(50_000_000),
        ),
        (
            "footer claims 600M rows",
            crafted::footer_claims_rows(600_000_000),
        ),
    ] {
        let p = dir.join(format!("{}.parquet", cases.len()));
        std::fs::write(&p, bytes).unwrap();
        cases.push((name, p, cdc));
    }
    for (name, rows) in [
        ("3M rows, one row group", 3_000_000),
        ("2^24 + 1 rows, one row group", (1 << 24) + 1),
    ] {
        let p = dir.join(format!("{}.parquet", cases.len()));
        one_row_group(&p, rows);
        cases.push((name, p, load));
    }
    println!(
        "{:<32} {:>10} {:>12} {:>8}  outcome",
        "case", "file MB", "peak RSS MB", "secs"
    );
    for (name, input, key) in &cases {
        let out = dir.join("out.parquet");
        let started = std::time::Instant::now();
        let run = Command::new("/usr/bin/time")
            .args(["-f", "%M"])
            .arg(&ferry)
            .args(["convert", "--mappings"])
            .arg(&mappings)
            .args(["--key", key])
            .arg(input)
            .arg(&out)
            .output()
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&run.stderr);
        let peak_kib: f64 = stderr
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(f64::NAN);
        let outcome = if run.status.success() {
            "converted".to_owned()
        } else {
            let first = stderr.lines().next().unwrap_or("");
            first.chars().take(90).collect()
        };
        println!(
            "{name:<32} {:>10.1} {:>12.1} {secs:>8.2}  {outcome}",
            std::fs::metadata(input).unwrap().len() as f64 / 1e6,
            peak_kib / 1024.0
        );
        let _ = std::fs::remove_file(&out);
    }
    std::fs::remove_dir_all(&dir).ok();
}
