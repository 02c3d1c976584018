//! `ferry sim`: a DMS-style S3 tree and its manifest.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use ferry_sim::{SimOptions, simulate};

use super::load_catalog;
use crate::{EXIT_OK, EXIT_PROBLEMS, MappingsDir};

#[derive(Debug, clap::Args)]
pub(crate) struct SimArgs {
    #[command(flatten)]
    mappings: MappingsDir,
    /// The folder standing for the bucket: keys are paths below it (`--out`, the old
    /// spelling, still works).
    #[arg(long, value_name = "DIR", alias = "out")]
    bucket_dir: PathBuf,
    /// Where to write the manifest (default: next to DIR, `<DIR>.manifest.json`).
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    #[command(flatten)]
    size: SimSize,
    /// Rows per parquet row group (DMS RowGroupLength).
    #[arg(long, default_value_t = 10_000)]
    row_group: usize,
    /// Rows per full-load file at most.
    #[arg(long, default_value_t = 1_000_000)]
    load_file_rows: u64,
    /// GZIP-compressed parquet pages (DMS CompressionType=GZIP).
    #[arg(long)]
    gzip: bool,
    /// Only this source's tables; repeatable.
    #[arg(long, value_name = "NAME")]
    source: Vec<String>,
    /// Only this table (`schema.table`); repeatable (`--only`, the old spelling, still works).
    #[arg(long, value_name = "SCHEMA.TABLE", alias = "only")]
    table: Vec<String>,
    /// One JSON object: files, rows, bytes, tables, seconds, manifest.
    #[arg(long)]
    json: bool,
    /// No column added mid-stream.
    #[arg(long)]
    no_added_column: bool,
    /// None of DMS's hard cases: no changes during the full load, timestamps in commit order,
    /// no empty files, reloads or truncates.
    #[arg(long)]
    no_hard_cases: bool,
    /// Full-load rows stamped with the load's start (UseTaskStartTimeForFullLoadTimestamp),
    /// not their transfer time.
    #[arg(long)]
    task_start_timestamps: bool,
    /// End the simulated history now (default: it starts at 2026-11-26T00:00Z, so that the same
    /// seed writes the same files).
    #[arg(long)]
    ends_now: bool,
}

/// How much to simulate; shared by `ferry sim` and `ferry demo`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SimSize {
    /// Seed; the same seed writes the same files.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Rows per table in the full load.
    #[arg(long, default_value_t = 200)]
    pub(crate) rows: u64,
    /// Minutes of CDC (one file per table per minute).
    #[arg(long, default_value_t = 6)]
    pub(crate) minutes: u32,
    /// Changes per table per minute, on average.
    #[arg(long, default_value_t = 40)]
    pub(crate) changes: u32,
}

impl SimSize {
    /// Simulator options of this size.
    pub(crate) fn options(&self) -> SimOptions {
        SimOptions {
            seed: self.seed,
            rows: self.rows,
            minutes: self.minutes,
            changes_per_minute: self.changes,
            ..SimOptions::default()
        }
    }
}

pub(crate) fn run(args: SimArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let Some(catalog) = load_catalog(&args.mappings, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    let opts = SimOptions {
        row_group_rows: args.row_group.max(1),
        load_file_rows: args.load_file_rows.max(1),
        gzip: args.gzip,
        only: args.source.iter().chain(&args.table).cloned().collect(),
        add_column: !args.no_added_column,
        hard_cases: !args.no_hard_cases,
        task_start_timestamps: args.task_start_timestamps,
        start_micros: if args.ends_now {
            ferry_pipeline::now_micros() - i64::from(args.size.minutes + 1) * 60_000_000
        } else {
            SimOptions::default().start_micros
        },
        ..args.size.options()
    };
    let started = Instant::now();
    std::fs::create_dir_all(&args.bucket_dir)
        .with_context(|| format!("creating {}", args.bucket_dir.display()))?;
    let manifest = simulate(&catalog, &opts, &args.bucket_dir)
        .with_context(|| format!("writing under {}", args.bucket_dir.display()))?;
    if manifest.tables.is_empty() {
        usage_bail!(
            "--source {:?} --table {:?} match no mapped table",
            args.source,
            args.table
        );
    }
    let path = args.manifest.unwrap_or_else(|| {
        let mut name = args
            .bucket_dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".manifest.json");
        args.bucket_dir.with_file_name(name)
    });
    std::fs::write(&path, serde_json::to_vec(&manifest)?)
        .with_context(|| format!("writing {}", path.display()))?;
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"files": manifest.files, "rows": manifest.rows, "bytes": manifest.bytes,
                "tables": manifest.tables.len(), "seconds": started.elapsed().as_secs_f64(),
                "manifest": path.display().to_string()})
        )?;
        return Ok(EXIT_OK);
    }
    writeln!(
        out,
        "wrote {} files, {} rows, {} bytes for {} tables in {:.1} s; manifest {}",
        manifest.files,
        manifest.rows,
        manifest.bytes,
        manifest.tables.len(),
        started.elapsed().as_secs_f64(),
        path.display()
    )?;
    Ok(EXIT_OK)
}
