//! `ferry dms table-mappings` and `ferry deploy config|bucket-notification`: the deployment
//! files derived from the mappings. Generated files are committed; `--check` fails when they
//! are stale, so a mapping change cannot reach production without them.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use ferry_core::deploy::{
    bucket_notification, deploy_config, dms_table_mappings, merge_bucket_notification,
};

use crate::{EXIT_OK, EXIT_PROBLEMS, MappingsDir};

/// `ferry dms ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DmsCommand {
    /// The DMS task table mappings (selection rules for the enabled mapped tables).
    TableMappings {
        #[command(flatten)]
        mappings: MappingsDir,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Write `<source>.table-mappings.json` files into this folder instead of printing
        /// one JSON object per source and line (`{"source", "table_mappings"}`). `--out`, the
        /// old spelling, still works.
        #[arg(long, value_name = "DIR", alias = "out")]
        out_dir: Option<PathBuf>,
        /// With --out-dir: change nothing, fail if a file is missing or differs.
        #[arg(long, requires = "out_dir")]
        check: bool,
    },
}

/// `ferry deploy ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeployCommand {
    /// What serverless.yml reads from the mappings: S3 read access and notifications.
    Config {
        #[command(flatten)]
        mappings: MappingsDir,
        /// Write the file here instead of printing.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// With --out: change nothing, fail if the file is missing or differs.
        #[arg(long, requires = "out")]
        check: bool,
    },
    /// The bucket notification configuration sending DMS objects to a stage's loader queue:
    /// the stage's entries alone, or (with --current) the bucket's whole configuration with
    /// them merged in. Exits 1, changing nothing, when another stage (or anything not ferry's)
    /// receives the events of an overlapping prefix.
    BucketNotification {
        #[command(flatten)]
        mappings: MappingsDir,
        /// The bucket.
        #[arg(long)]
        bucket: String,
        /// The stage whose loader queue receives the events (ids are `ferry-<stage>-<source>`).
        #[arg(long)]
        stage: String,
        /// The loader queue's ARN.
        #[arg(long)]
        queue_arn: String,
        /// The bucket's current configuration (`aws s3api get-bucket-notification-configuration`
        /// output; `-` for standard input): print it with this stage's entries merged in.
        #[arg(long, value_name = "FILE")]
        current: Option<PathBuf>,
        /// Take the events of overlapping prefixes from whoever has them (moving a bucket to
        /// another stage, on purpose).
        #[arg(long, requires = "current")]
        take_over: bool,
    },
}

fn pretty(v: &serde_json::Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(v)? + "\n")
}

/// Writes or checks generated files; returns the stale ones.
fn emit(files: &[(PathBuf, String)], check: bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut stale = Vec::new();
    for (path, text) in files {
        let current = std::fs::read_to_string(path).ok();
        if current.as_deref() == Some(text.as_str()) {
            continue;
        }
        if check {
            stale.push(path.clone());
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(stale)
}

fn report_stale(stale: &[PathBuf], regenerate: &str, err: &mut dyn Write) -> anyhow::Result<u8> {
    if stale.is_empty() {
        return Ok(EXIT_OK);
    }
    for p in stale {
        writeln!(
            err,
            "{}: stale or missing (generated from the mappings)",
            p.display()
        )?;
    }
    writeln!(err, "regenerate with: {regenerate}")?;
    Ok(EXIT_PROBLEMS)
}

pub(crate) fn dms(cmd: DmsCommand, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let DmsCommand::TableMappings {
        mappings,
        source,
        out_dir: dir,
        check,
    } = cmd;
    let Some(catalog) = super::load_catalog(&mappings, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    let sources: Vec<_> = catalog
        .sources()
        .iter()
        .filter(|s| source.as_ref().is_none_or(|n| *n == s.name))
        .collect();
    if let Some(name) = &source
        && sources.is_empty()
    {
        usage_bail!("no source {name:?} in {}", mappings.dir.display());
    }
    match dir {
        None => {
            for s in sources {
                let doc =
                    serde_json::json!({"source": s.name, "table_mappings": dms_table_mappings(s)});
                writeln!(out, "{doc}")?;
            }
            Ok(EXIT_OK)
        }
        Some(dir) => {
            let files = sources
                .iter()
                .map(|s| {
                    Ok((
                        dir.join(format!("{}.table-mappings.json", s.name)),
                        pretty(&dms_table_mappings(s))?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let stale = emit(&files, check)?;
            let regen = format!(
                "ferry dms table-mappings --mappings {} --out-dir {}",
                mappings.dir.display(),
                dir.display()
            );
            if !check {
                writeln!(err, "wrote {} file(s) to {}", files.len(), dir.display())?;
            }
            report_stale(&stale, &regen, err)
        }
    }
}

pub(crate) fn deploy(
    cmd: DeployCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    match cmd {
        DeployCommand::Config {
            mappings,
            out: file,
            check,
        } => {
            let Some(catalog) = super::load_catalog(&mappings, err)? else {
                return Ok(EXIT_PROBLEMS);
            };
            let text = pretty(&deploy_config(&catalog))?;
            match file {
                None => {
                    out.write_all(text.as_bytes())?;
                    Ok(EXIT_OK)
                }
                Some(file) => {
                    let stale = emit(&[(file.clone(), text)], check)?;
                    let regen = format!(
                        "ferry deploy config --mappings {} --out {}",
                        mappings.dir.display(),
                        file.display()
                    );
                    report_stale(&stale, &regen, err)
                }
            }
        }
        DeployCommand::BucketNotification {
            mappings,
            bucket,
            stage,
            queue_arn,
            current,
            take_over,
        } => {
            let Some(catalog) = super::load_catalog(&mappings, err)? else {
                return Ok(EXIT_PROBLEMS);
            };
            if !catalog.sources().iter().any(|s| s.bucket == bucket) {
                usage_bail!("no mapping uses bucket {bucket}");
            }
            if ferry_core::names::check_source_name(&stage).is_err() {
                usage_bail!("stage {stage:?}: use lowercase letters, digits and '-'");
            }
            let Some(current) = current else {
                let doc = bucket_notification(&catalog, &bucket, &stage, &queue_arn);
                out.write_all(pretty(&doc)?.as_bytes())?;
                return Ok(EXIT_OK);
            };
            let text = if current.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&current)
                    .with_context(|| format!("reading {}", current.display()))?
            };
            let doc: serde_json::Value = if text.trim().is_empty() {
                serde_json::json!({})
            } else {
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", current.display()))?
            };
            match merge_bucket_notification(&catalog, &doc, &bucket, &stage, &queue_arn, take_over)
            {
                Ok(merged) => {
                    out.write_all(pretty(&merged)?.as_bytes())?;
                    Ok(EXIT_OK)
                }
                Err(conflict) => {
                    writeln!(err, "{conflict}")?;
                    Ok(EXIT_PROBLEMS)
                }
            }
        }
    }
}
