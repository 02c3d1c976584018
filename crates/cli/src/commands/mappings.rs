//! `ferry mappings check` and `ferry mappings schema`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ferry_core::Catalog;
use ferry_core::mapping::Mode;

use super::print_problems;
use crate::{EXIT_OK, EXIT_PROBLEMS, MappingsDir};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum MappingsCommand {
    /// Validate every mapping file; print every problem (file:line:col, JSON path, what is
    /// wrong, the fix), one per line, and exit 1 if any.
    Check(CheckArgs),
    /// Propose (or, with --write, write) what the source decides in a mapping: primary keys and
    /// hints for the types parquet blurs, read from information_schema; list unmapped tables.
    Sync(super::source::SyncArgs),
    /// Print the JSON Schema of a mapping file, or check that FILE holds the current one.
    Schema {
        /// Compare with this file instead of printing; exit 1 when it differs.
        #[arg(long, value_name = "FILE")]
        check: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    mappings: MappingsDir,
    /// The folder, as the old spelling gave it (`ferry mappings check DIR`).
    #[arg(value_name = "DIR", hide = true, conflicts_with = "mappings")]
    dir: Option<PathBuf>,
    /// Print problems as GitHub Actions error annotations (with file, line and column).
    #[arg(long)]
    github: bool,
    /// One JSON object: ok, sources, tables, enabled, replicas, problems (file, line, col,
    /// path, message, fix) and backfills (with --previous).
    #[arg(long, conflicts_with = "github")]
    json: bool,
    /// The mappings as they were before this change (say, the main branch's): tables the change
    /// adds or enables are listed with the backfill to run after the deploy.
    #[arg(long, value_name = "DIR")]
    previous: Option<PathBuf>,
    /// Also check the hints and keys against this MySQL source (`mysql://…`): exit 1 when a
    /// hint is missing, contradicts the source or names no column.
    #[arg(long, value_name = "URL")]
    against: Option<String>,
    /// With --against: the source it is (needed when the mappings hold several).
    #[arg(long, value_name = "NAME", requires = "against")]
    source: Option<String>,
}

/// Tables that `catalog` loads and `previous` did not (added, or enabled): each needs a
/// backfill after the deploy, since DMS's files from before were never loaded.
pub(crate) fn newly_loaded(catalog: &Catalog, previous: Option<&Catalog>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for source in catalog.sources() {
        for t in source.tables.iter().filter(|t| t.enabled) {
            let before = previous.and_then(|p| p.source(&source.name)).and_then(|s| {
                s.tables
                    .iter()
                    .find(|o| o.source_table() == t.source_table())
            });
            if previous.is_some() && before.is_none_or(|o| !o.enabled) {
                out.push((source.name.clone(), t.source_table()));
            }
        }
    }
    out
}

/// The command that loads a newly mapped table's history.
pub(crate) fn backfill_command(source: &str, table: &str) -> String {
    format!("ferry backfill --source {source} --table {table} --direct")
}

pub(crate) fn run(
    cmd: MappingsCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    match cmd {
        MappingsCommand::Check(args) => {
            let dir = args
                .dir
                .clone()
                .unwrap_or_else(|| args.mappings.dir.clone());
            let code = check(&dir, &args, out, err)?;
            match &args.against {
                Some(url) if code == EXIT_OK => {
                    let catalog =
                        Catalog::load_dir(&dir).map_err(|_| anyhow::anyhow!("invalid mappings"))?;
                    super::source::check_against(&catalog, url, args.source.as_deref(), out)
                }
                _ => Ok(code),
            }
        }
        MappingsCommand::Sync(args) => super::source::sync(args, out, err),
        MappingsCommand::Schema { check } => schema(check, out, err),
    }
}

fn check(
    dir: &Path,
    args: &CheckArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let result = Catalog::load_dir(dir);
    let previous = match &args.previous {
        Some(p) => Some(Catalog::load_dir(p).map_err(|problems| {
            crate::Usage(format!(
                "--previous {}: {} problem(s) in those mappings",
                p.display(),
                problems.len()
            ))
        })?),
        None => None,
    };
    let problems = result.as_ref().err().cloned().unwrap_or_default();
    let backfills = result
        .as_ref()
        .map(|c| newly_loaded(c, previous.as_ref()))
        .unwrap_or_default();
    if args.json {
        let counts = result.as_ref().ok().map(counts);
        let doc = serde_json::json!({
            "ok": problems.is_empty(),
            "sources": result.as_ref().map_or(0, |c| c.sources().len()),
            "tables": result.as_ref().map_or(0, Catalog::table_count),
            "enabled": counts.map_or(0, |c| c.0),
            "replicas": counts.map_or(0, |c| c.1),
            "problems": problems.iter().map(|p| serde_json::json!({
                "file": p.file, "line": p.at.map(|a| a.0), "col": p.at.map(|a| a.1),
                "path": p.path, "message": p.message, "fix": p.fix,
            })).collect::<Vec<_>>(),
            "backfills": backfills.iter().map(|(s, t)| serde_json::json!({
                "source": s, "table": t, "command": backfill_command(s, t),
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{doc}")?;
        return Ok(if problems.is_empty() {
            EXIT_OK
        } else {
            EXIT_PROBLEMS
        });
    }
    if !problems.is_empty() {
        if args.github {
            for p in &problems {
                // https://docs.github.com/actions/reference/workflow-commands-for-github-actions
                let text = format!("{}: {}; fix: {}", p.path, p.message, p.fix)
                    .replace('%', "%25")
                    .replace('\r', "%0D")
                    .replace('\n', "%0A");
                let (line, col) = p.at.unwrap_or((1, 1));
                writeln!(out, "::error file={},line={line},col={col}::{text}", p.file)?;
            }
        }
        print_problems(&problems, err)?;
        return Ok(EXIT_PROBLEMS);
    }
    let catalog = result.map_err(|_| anyhow::anyhow!("invalid mappings"))?;
    let (enabled, replicas) = counts(&catalog);
    writeln!(
        out,
        "ok: {} sources, {} tables ({enabled} enabled, {replicas} replicas) in {}",
        catalog.sources().len(),
        catalog.table_count(),
        dir.display()
    )?;
    for (s, t) in &backfills {
        let line = format!(
            "{t} is newly loaded: after the deploy, load its history with: {}",
            backfill_command(s, t)
        );
        if args.github {
            writeln!(out, "::notice::{line}")?;
        } else {
            writeln!(out, "{line}")?;
        }
    }
    Ok(EXIT_OK)
}

/// Enabled tables and replicas.
fn counts(catalog: &Catalog) -> (usize, usize) {
    let tables = catalog.sources().iter().flat_map(|s| &s.tables);
    let (mut enabled, mut replicas) = (0, 0);
    for t in tables {
        enabled += usize::from(t.enabled);
        replicas += usize::from(t.mode == Mode::Replica);
    }
    (enabled, replicas)
}

fn schema(check: Option<PathBuf>, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(&Catalog::json_schema())?
    );
    match check {
        None => {
            out.write_all(text.as_bytes())?;
            Ok(EXIT_OK)
        }
        Some(path) => {
            let current = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            if current == text {
                writeln!(out, "ok: {} is current", path.display())?;
                Ok(EXIT_OK)
            } else {
                writeln!(
                    err,
                    "{} is stale; regenerate it with: ferry mappings schema > {}",
                    path.display(),
                    path.display()
                )?;
                Ok(EXIT_PROBLEMS)
            }
        }
    }
}
