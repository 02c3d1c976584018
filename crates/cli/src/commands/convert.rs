//! `ferry convert`: one local DMS file through the loader's conversion.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use ferry_convert::{ConvertRequest, RangeReader, convert};
use ferry_core::plan_object;
use ferry_core::schema::TableSchema;

use super::load_catalog;
use crate::{EXIT_OK, EXIT_PROBLEMS, MappingsDir};

#[derive(Debug, clap::Args)]
pub(crate) struct ConvertArgs {
    #[command(flatten)]
    mappings: MappingsDir,
    /// The object's S3 key (decoded) or `s3://bucket/key`, which tells the source and table.
    #[arg(long)]
    key: String,
    /// The table's current schema (a JSON list of BigQuery fields, as `--schema-json` writes):
    /// columns it lacks are reported as added; without it the table is taken as new.
    #[arg(long, value_name = "FILE")]
    known: Option<PathBuf>,
    /// Write the derived table schema (BigQuery fields) to FILE.
    #[arg(long, value_name = "FILE")]
    schema_json: Option<PathBuf>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    /// The DMS parquet file.
    input: PathBuf,
    /// Where to write the BigQuery-ready parquet file.
    output: PathBuf,
}

pub(crate) fn run(
    args: ConvertArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let Some(catalog) = load_catalog(&args.mappings, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    let (bucket, key) = super::split_s3_uri(&args.key);
    let plan = plan_object(&catalog, bucket, key, None);
    let (Some(source), Some(object), Some(table)) = (plan.source, plan.object.as_ref(), plan.table)
    else {
        usage_bail!(
            "{}: not loaded: {}",
            args.key,
            plan.skip.map(|s| s.to_string()).unwrap_or_default()
        );
    };
    if let Some(skip) = &plan.skip {
        writeln!(
            err,
            "note: {}: the loader would skip this object ({skip}); converting anyway",
            args.key
        )?;
    }
    let known: Option<TableSchema> = match &args.known {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(TableSchema {
                fields: serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            })
        }
        None => None,
    };
    let file =
        File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let input = RangeReader::new(Arc::new(file));
    let modified = std::fs::metadata(&args.input)?.modified().ok();
    let object_time_micros = modified
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_micros()).ok());
    let request = ConvertRequest {
        source,
        table,
        object,
        object_time_micros,
        known: known.as_ref(),
    };
    let output = BufWriter::new(
        File::create(&args.output)
            .with_context(|| format!("creating {}", args.output.display()))?,
    );
    let started = Instant::now();
    let outcome = match convert(&input, &request, output) {
        Ok(outcome) => outcome,
        Err(e) => {
            let _ = std::fs::remove_file(&args.output);
            let kind = if e.is_retryable() {
                "retryable"
            } else {
                "permanent"
            };
            writeln!(err, "{}: {kind} error: {e}", args.key)?;
            return Ok(EXIT_PROBLEMS);
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if let Some(path) = &args.schema_json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&outcome.schema.fields)? + "\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        let mut value = serde_json::to_value(&outcome)?;
        value["seconds"] = seconds.into();
        writeln!(out, "{value}")?;
    } else {
        let ops = outcome.ops;
        writeln!(out, "{} -> {}", args.input.display(), args.output.display())?;
        writeln!(
            out,
            "  table    {} -> {}",
            object.source_table(),
            table.changelog
        )?;
        writeln!(
            out,
            "  rows     {} in {} row groups (load {}, insert {}, update {}, delete {})",
            outcome.rows, outcome.row_groups, ops.load, ops.insert, ops.update, ops.delete
        )?;
        writeln!(
            out,
            "  columns  {} copied without decoding, {} converted, {} in the table",
            outcome.columns_copied,
            outcome.columns_converted,
            outcome.schema.fields.len()
        )?;
        if !outcome.added.is_empty() {
            let names: Vec<&str> = outcome.added.iter().map(|f| f.name.as_str()).collect();
            writeln!(out, "  added    {}", names.join(", "))?;
        }
        writeln!(
            out,
            "  bytes    {} read, {} written in {:.3} s",
            outcome.bytes_read, outcome.bytes_written, seconds
        )?;
        if outcome.commit_ts_fallbacks > 0 {
            writeln!(
                out,
                "  note     {} rows had no readable DMS timestamp and took the file's time",
                outcome.commit_ts_fallbacks
            )?;
        }
    }
    Ok(EXIT_OK)
}
