//! `ferry mappings check` and `ferry mappings schema`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use ferry_core::Catalog;
use ferry_core::mapping::Mode;

use super::{load_catalog, print_problems};
use crate::{EXIT_OK, EXIT_PROBLEMS, MappingsDir};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum MappingsCommand {
    /// Validate every mapping file in DIR; print every problem, one per line, and exit 1 if any.
    Check {
        /// Folder holding the mapping files.
        #[arg(default_value = "mappings", env = "FERRY_MAPPINGS", value_name = "DIR")]
        dir: PathBuf,
        /// Print problems as GitHub Actions error annotations.
        #[arg(long)]
        github: bool,
        /// Also check the hints and keys against this MySQL source (`mysql://…`): exit 1 when a
        /// hint is missing, contradicts the source or names no column.
        #[arg(long, value_name = "URL")]
        against: Option<String>,
        /// With --against: the source it is (needed when the mappings hold several).
        #[arg(long, value_name = "NAME", requires = "against")]
        source: Option<String>,
    },
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

pub(crate) fn run(
    cmd: MappingsCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    match cmd {
        MappingsCommand::Check {
            dir,
            github,
            against,
            source,
        } => {
            let code = check(dir.clone(), github, out, err)?;
            match against {
                Some(url) if code == EXIT_OK => {
                    let catalog =
                        Catalog::load_dir(&dir).map_err(|_| anyhow::anyhow!("invalid mappings"))?;
                    super::source::check_against(&catalog, &url, source.as_deref(), out)
                }
                _ => Ok(code),
            }
        }
        MappingsCommand::Sync(args) => super::source::sync(args, out, err),
        MappingsCommand::Schema { check } => schema(check, out, err),
    }
}

fn check(
    dir: PathBuf,
    github: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    if github && let Err(problems) = Catalog::load_dir(&dir) {
        for p in &problems {
            // https://docs.github.com/actions/reference/workflow-commands-for-github-actions
            let text = format!("{}: {}; fix: {}", p.path, p.message, p.fix)
                .replace('%', "%25")
                .replace('\n', "%0A");
            writeln!(out, "::error file={}::{text}", p.file)?;
        }
        print_problems(&problems, err)?;
        return Ok(EXIT_PROBLEMS);
    }
    let Some(catalog) = load_catalog(&MappingsDir { dir: dir.clone() }, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    let tables = catalog.sources().iter().flat_map(|s| &s.tables);
    let (mut enabled, mut replicas) = (0, 0);
    for t in tables {
        enabled += usize::from(t.enabled);
        replicas += usize::from(t.mode == Mode::Replica);
    }
    writeln!(
        out,
        "ok: {} sources, {} tables ({enabled} enabled, {replicas} replicas) in {}",
        catalog.sources().len(),
        catalog.table_count(),
        dir.display()
    )?;
    Ok(EXIT_OK)
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
