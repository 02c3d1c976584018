//! Helpers shared by ferry's cross-crate tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

pub mod bqrules;
pub mod bqserver;
pub mod crafted;
pub mod dms_tree;
pub mod recorded;
pub mod stand_ins;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A small multi-threaded Tokio runtime for tests that drive the async adapters.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The committed mappings folder.
pub fn mappings_dir() -> PathBuf {
    repo_root().join("mappings")
}

/// Runs the `ferry` CLI in-process; returns (exit code, stdout, stderr).
pub fn ferry(args: &[&str]) -> (u8, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("ferry").chain(args.iter().copied());
    let code = ferry_cli::run(argv, &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Runs `ferry` as a process: `ferry_process!(&[args], &[(name, value)])`. See
/// [`ferry_process_at`].
#[macro_export]
macro_rules! ferry_process {
    ($args:expr, $env:expr) => {
        $crate::ferry_process_at(env!("CARGO_BIN_EXE_ferry-under-test"), $args, $env)
    };
}

/// Runs the `ferry` binary at `bin` with `env` added to the test's environment (AWS_*,
/// FERRY_* and GOOGLE_* variables of the test's own environment are removed first, so that
/// nothing leaks in); returns (exit code, stdout, stderr).
pub fn ferry_process_at(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = std::process::Command::new(bin);
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("AWS_") || n.starts_with("FERRY_") || n.starts_with("GOOGLE_") {
            command.env_remove(&name);
        }
    }
    let output = command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the ferry-under-test binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates an empty directory whose name starts with `label`.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ferry-test-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` inside the directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A parquet file of the given columns, one row group; a column is REQUIRED when `required`
/// names it.
pub fn parquet_file(columns: Vec<(&str, arrow_array::ArrayRef)>, required: &[&str]) -> Vec<u8> {
    use std::sync::Arc;
    let fields: Vec<arrow_schema::Field> = columns
        .iter()
        .map(|(n, a)| arrow_schema::Field::new(*n, a.data_type().clone(), !required.contains(n)))
        .collect();
    let schema = Arc::new(arrow_schema::Schema::new(fields));
    let batch = arrow_array::RecordBatch::try_new(
        Arc::clone(&schema),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf
}
