//! `ferry plan`: what ferry would do with each S3 key.

use std::io::Write;

use ferry_core::key::{self, DmsFile};
use ferry_core::{Catalog, Plan, plan_object};
use serde_json::{Value, json};

use super::load_catalog;
use crate::{EXIT_OK, EXIT_PROBLEMS, MappingsDir};

#[derive(Debug, clap::Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    mappings: MappingsDir,
    /// One JSON object per key per line instead of text.
    #[arg(long)]
    json: bool,
    /// The object's ETag, for the exact job id (with one key only). Without it the id is that of
    /// an object whose ETag is unknown.
    #[arg(long)]
    etag: Option<String>,
    /// Keys are URL-encoded as in S3 events (`+` is a space); by default this is guessed.
    #[arg(long, conflicts_with = "raw")]
    encoded: bool,
    /// Keys are raw, never decoded.
    #[arg(long)]
    raw: bool,
    /// S3 keys, URL-encoded keys, or s3://bucket/key URIs.
    #[arg(required = true, value_name = "KEY")]
    keys: Vec<String>,
}

pub(crate) fn run(args: PlanArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    if args.etag.is_some() && args.keys.len() > 1 {
        usage_bail!("--etag names one object's version: give a single KEY with it");
    }
    let Some(catalog) = load_catalog(&args.mappings, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    for arg in &args.keys {
        let (bucket, key) = super::split_s3_uri(arg);
        let decode = args.encoded || (!args.raw && key::looks_event_encoded(key));
        let decoded = if decode {
            key::decode_event_key(key)
        } else {
            Ok(key.to_owned())
        };
        let decoded = match decoded {
            Ok(k) if k.is_empty() => Err(key::KeyDecodeError::Empty),
            other => other,
        };
        match decoded {
            Ok(decoded) => {
                let plan = plan_object(&catalog, bucket, &decoded, args.etag.as_deref());
                if args.json {
                    writeln!(out, "{}", plan_json(arg, &plan))?;
                } else {
                    write_text(out, arg, &plan, &catalog)?;
                }
            }
            Err(e) => {
                if args.json {
                    let v = json!({"input": arg, "key": key, "skip_code": "bad_key", "skip_reason": format!("cannot decode the key: {e}")});
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(out, "{arg}\n  skip     cannot decode the key: {e}\n")?;
                }
            }
        }
    }
    Ok(EXIT_OK)
}

fn plan_json(input: &str, plan: &Plan<'_>) -> Value {
    let object = plan.object.as_ref();
    let (partition, segment, counter, cdc_timestamp) = match object.map(|o| &o.file) {
        Some(DmsFile::FullLoad {
            partition,
            segment,
            counter,
        }) => (partition.clone(), *segment, Some(*counter), None),
        Some(DmsFile::Cdc { timestamp, .. }) => (None, None, None, Some(timestamp.iso8601())),
        None => (None, None, None, None),
    };
    json!({
        "input": input,
        "key": plan.key,
        "bucket": plan.bucket,
        "source": plan.source.map(|s| &s.name),
        "folder": object.map(|o| &o.folder),
        "schema": object.map(|o| &o.schema),
        "table": object.map(|o| &o.table),
        "kind": object.map(|o| o.kind().as_str()),
        "partition_date": object.and_then(|o| o.partition_date).map(|d| d.to_string()),
        "load_partition": partition,
        "segment": segment,
        "load_counter": counter,
        "cdc_timestamp": cdc_timestamp,
        "mode": plan.table.map(|t| t.mode.as_str()),
        "target": plan.table.map(|t| t.primary_target().to_string()),
        "changelog": plan.table.map(|t| t.changelog.to_string()),
        "replica": plan.table.and_then(|t| t.replica.as_ref()).map(ToString::to_string),
        "job_id": plan.job_id.as_ref().map(ToString::to_string),
        "skip_code": plan.skip.as_ref().map(|s| s.code()),
        "skip_reason": plan.skip.as_ref().map(ToString::to_string),
    })
}

fn write_text(
    out: &mut dyn Write,
    input: &str,
    plan: &Plan<'_>,
    catalog: &Catalog,
) -> std::io::Result<()> {
    writeln!(out, "{input}")?;
    if plan.key != input && !input.ends_with(&plan.key) {
        writeln!(out, "  key      {}", plan.key)?;
    }
    match plan.source {
        Some(s) => writeln!(
            out,
            "  source   {} (s3://{}/{}, {})",
            s.name,
            s.bucket,
            s.prefix(),
            s.file
        )?,
        None => writeln!(
            out,
            "  source   none of the {} mapped sources",
            catalog.sources().len()
        )?,
    }
    if let Some(o) = &plan.object {
        let what = match &o.file {
            DmsFile::FullLoad {
                partition,
                segment,
                counter,
            } => {
                let mut s = format!("full load, file {counter}");
                if let Some(n) = segment {
                    s.push_str(&format!(", segment {n}"));
                }
                if let Some(p) = partition {
                    s.push_str(&format!(", partition {p:?}"));
                }
                s
            }
            DmsFile::Cdc { timestamp, .. } => format!("cdc, written {}", timestamp.iso8601()),
        };
        writeln!(out, "  table    {} ({what})", o.source_table())?;
        if let Some(d) = o.partition_date {
            writeln!(out, "  date     {d} (partition folders)")?;
        }
    }
    if let Some(t) = plan.table {
        match &t.replica {
            Some(replica) => writeln!(
                out,
                "  target   {replica} (replica), change log {}",
                t.changelog
            )?,
            None => writeln!(out, "  target   {} (change log)", t.changelog)?,
        }
    }
    if let Some(id) = &plan.job_id {
        writeln!(out, "  job id   {id}")?;
    }
    match &plan.skip {
        Some(skip) => writeln!(out, "  skip     {skip}")?,
        None => writeln!(out, "  action   load")?,
    }
    writeln!(out)
}
