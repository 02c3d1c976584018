//! `ferry demo`: the seed's estate simulated, loaded through local mode, verified, reported.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use ferry_local::RunOptions;
use ferry_sim::{SimOptions, simulate};

use super::sim::SimSize;

use super::load_catalog;
use super::local::{local_pipeline, print_status, run_with_progress, verify};
use crate::{EXIT_OK, EXIT_PROBLEMS, MappingsDir};

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    #[command(flatten)]
    mappings: MappingsDir,
    /// Where to write the bucket folder and the warehouse (default: a fresh temporary folder,
    /// kept so that you can query it).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    #[command(flatten)]
    size: SimSize,
}

pub(crate) fn run(args: DemoArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let Some(catalog) = load_catalog(&args.mappings, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id())),
    };
    let bucket = dir.join("bucket");
    let warehouse = dir.join("warehouse.sqlite");
    let manifest_path = dir.join("manifest.json");
    if bucket.exists() || warehouse.exists() {
        usage_bail!(
            "{} already holds a demo; pass another --dir or remove it",
            dir.display()
        );
    }
    std::fs::create_dir_all(&bucket).with_context(|| format!("creating {}", bucket.display()))?;

    let started = Instant::now();
    // The simulated history ends now, so that the status reads as a live system's would.
    let base = args.size.options();
    let opts = SimOptions {
        manifest_rows: 0,
        start_micros: ferry_pipeline::now_micros() - i64::from(base.minutes + 1) * 60_000_000,
        ..base
    };
    let manifest = simulate(&catalog, &opts, &bucket).context("simulating the DMS tree")?;
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest)?)?;
    let sim_seconds = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "simulated {} sources, {} tables: {} files, {} changed rows ({:.1} s)",
        catalog.sources().len(),
        manifest.tables.len(),
        manifest.files,
        manifest.rows,
        sim_seconds
    )?;

    let pipeline = local_pipeline(catalog.clone(), &bucket, &warehouse)?;
    let loading = Instant::now();
    let summary = run_with_progress(&pipeline, &RunOptions::default(), err)?;
    let load_seconds = loading.elapsed().as_secs_f64();
    writeln!(
        out,
        "loaded {} objects ({} rows) in {:.1} s: {:.0} rows/s, {:.0} files/s; skipped {}, dead-lettered {}; peak RSS {}",
        summary.loaded,
        summary.rows,
        load_seconds,
        summary.rows as f64 / load_seconds.max(1e-9),
        summary.loaded as f64 / load_seconds.max(1e-9),
        summary.skipped,
        summary.dead_lettered,
        peak_rss().map_or_else(
            || "unknown".to_owned(),
            |kb| format!("{:.0} MB", kb as f64 / 1024.0)
        )
    )?;

    let checks = verify(&pipeline.warehouse, &manifest_path)?;
    let status = ferry_local::status(&pipeline.warehouse, &catalog, ferry_pipeline::now_micros())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    writeln!(out)?;
    print_status(out, &status)?;
    let page = dir.join("status.html");
    std::fs::write(
        &page,
        super::html::page(
            &status,
            &super::html::History::Local(&pipeline.warehouse),
            None,
            ferry_pipeline::now_micros(),
            std::time::Duration::from_secs(900),
        ),
    )?;
    writeln!(out, "status page: {}", page.display())?;
    writeln!(out)?;
    let bad: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
    for c in &bad {
        writeln!(out, "MISMATCH {} ({}): {}", c.table, c.target, c.detail)?;
    }
    writeln!(
        out,
        "warehouse: {} (try: ferry local query --warehouse {} 'SELECT count(*) FROM \"slots_account.players\"')",
        warehouse.display(),
        warehouse.display()
    )?;
    if bad.is_empty() {
        writeln!(out, "all {} tables match", checks.len())?;
        Ok(EXIT_OK)
    } else {
        writeln!(out, "{} of {} tables do not match", bad.len(), checks.len())?;
        Ok(EXIT_PROBLEMS)
    }
}

/// This process's peak resident set size in KiB (Linux `VmHWM`).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
