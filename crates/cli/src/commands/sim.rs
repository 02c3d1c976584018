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
    /// The folder standing for the bucket: keys are paths below it.
    #[arg(long)]
    out: PathBuf,
    /// Where to write the manifest (default: next to OUT, `<OUT>.manifest.json`).
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
    /// Only this source (by name) or table (schema.table); repeatable.
    #[arg(long = "only", value_name = "NAME")]
    only: Vec<String>,
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
        only: args.only.clone(),
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
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let manifest = simulate(&catalog, &opts, &args.out)
        .with_context(|| format!("writing under {}", args.out.display()))?;
    if manifest.tables.is_empty() {
        anyhow::bail!("--only {:?} matches no mapped source or table", args.only);
    }
    let path = args.manifest.unwrap_or_else(|| {
        let mut name = args
            .out
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".manifest.json");
        args.out.with_file_name(name)
    });
    std::fs::write(&path, serde_json::to_vec(&manifest)?)
        .with_context(|| format!("writing {}", path.display()))?;
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
