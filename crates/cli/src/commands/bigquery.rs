//! `ferry bigquery ddl`: every statement the writer would run for the mapped tables, derived from
//! their DMS files in a local folder, for review before a mapping change is merged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ferry_convert::{Conversion, ConvertRequest, RangeReader};
use ferry_core::key::DmsObject;
use ferry_core::schema::TableSchema;
use ferry_core::{plan_object, sql};

use super::load_catalog;
use crate::{EXIT_OK, EXIT_PROBLEMS, MappingsDir};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BigqueryCommand {
    /// Print, in order of execution, the statements ferry would run for each mapped table
    /// (dataset, change log, replica, tombstones, column additions), derived from the table's
    /// DMS files in a local folder (a `ferry sim` tree, or files copied from S3).
    Ddl(DdlArgs),
    /// The `ferry_status` views (table_status, table_status_hourly, load_jobs_hourly,
    /// changes_hourly) over INFORMATION_SCHEMA.JOBS, the change logs and the reconcile results:
    /// printed, or created with --apply (the Lambda's credentials; run again after tables are
    /// added, since a view names only tables that exist).
    StatusViews(StatusViewsArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusViewsArgs {
    #[command(flatten)]
    mappings: MappingsDir,
    /// Create the dataset and the views in BigQuery instead of printing them.
    #[arg(long)]
    apply: bool,
    /// The table the views read load jobs from (default: the mappings' region's
    /// `INFORMATION_SCHEMA.JOBS_BY_PROJECT`; `JOBS_BY_FOLDER` or a copy of the jobs work too).
    #[arg(long, value_name = "TABLE")]
    jobs_source: Option<String>,
    /// One JSON object per line: each statement (`{"view", "sql"}`), or with --apply
    /// `{"created", "project", "dataset"}`.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    aws: crate::AwsArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DdlArgs {
    #[command(flatten)]
    mappings: MappingsDir,
    /// The folder standing for the DMS bucket (read as `ferry local run` reads it).
    #[arg(long, value_name = "DIR")]
    bucket_dir: PathBuf,
    /// Only this table (`schema.table`).
    #[arg(long, value_name = "SCHEMA.TABLE")]
    table: Option<String>,
}

pub(crate) fn run(
    cmd: BigqueryCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let args = match cmd {
        BigqueryCommand::Ddl(args) => args,
        BigqueryCommand::StatusViews(args) => return status_views(args, out, err),
    };
    let Some(catalog) = load_catalog(&args.mappings, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    usage_ensure!(
        args.bucket_dir.is_dir(),
        "bucket folder {} does not exist",
        args.bucket_dir.display()
    );
    let mut problems = 0;
    let mut printed = 0;
    for source in catalog.sources() {
        for table in &source.tables {
            if args
                .table
                .as_deref()
                .is_some_and(|t| t != table.source_table())
            {
                continue;
            }
            let folder = args
                .bucket_dir
                .join(source.prefix())
                .join(&table.schema)
                .join(&table.table);
            let mut objects: Vec<(DmsObject, PathBuf)> = Vec::new();
            for path in files_under(&folder)? {
                let key = key_of(&args.bucket_dir, &path);
                let plan = plan_object(&catalog, None, &key, None);
                if let (Some(object), None) = (plan.object, plan.skip) {
                    objects.push((object, path));
                }
            }
            objects.sort_by(|a, b| a.0.apply_order(&b.0));
            if objects.is_empty() {
                writeln!(
                    err,
                    "note: {}: no DMS files under {}",
                    table.source_table(),
                    folder.display()
                )?;
                continue;
            }
            // The table's schema after each file, as the writer's loads widen it.
            let mut schemas: Vec<TableSchema> = Vec::new();
            for (object, path) in &objects {
                let file =
                    std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
                let input = RangeReader::new(Arc::new(file));
                let request = ConvertRequest {
                    source,
                    table,
                    object,
                    object_time_micros: None,
                    known: schemas.last(),
                };
                match Conversion::plan(&input, &request) {
                    Ok(c) => schemas.push(c.schema().clone()),
                    Err(e) => {
                        problems += 1;
                        writeln!(err, "{}: {e}", path.display())?;
                    }
                }
            }
            match sql::table_statements(table, source.location.as_deref(), &schemas) {
                Ok(statements) => {
                    writeln!(
                        out,
                        "-- {} ({} file{})",
                        table.source_table(),
                        objects.len(),
                        if objects.len() == 1 { "" } else { "s" }
                    )?;
                    for s in statements {
                        writeln!(out, "{s};")?;
                        printed += 1;
                    }
                    writeln!(out)?;
                }
                Err(e) => {
                    problems += 1;
                    writeln!(err, "{e}")?;
                }
            }
        }
    }
    if let Some(t) = &args.table
        && printed == 0
        && problems == 0
    {
        usage_bail!(
            "{t}: not a mapped table with files under {}",
            args.bucket_dir.display()
        );
    }
    Ok(if problems > 0 { EXIT_PROBLEMS } else { EXIT_OK })
}

/// Every file below `dir` (none if it does not exist), in name order.
fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The S3 key a file of the bucket folder stands for.
fn key_of(bucket_dir: &Path, path: &Path) -> String {
    path.strip_prefix(bucket_dir)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn status_views(
    args: StatusViewsArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let Some(catalog) = load_catalog(&args.mappings, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    let first = catalog
        .sources()
        .first()
        .context("the mappings are empty")?
        .clone();
    let jobs = args.jobs_source.clone().unwrap_or_else(|| {
        ferry_bigquery::status::jobs_source(&first.project, first.location.as_deref())
    });
    if !args.apply {
        for sql in ferry_bigquery::status::statements(&catalog, &first.project, &jobs, &|_| true) {
            if args.json {
                // `CREATE OR REPLACE VIEW `p`.`d`.`name` AS ...`: the view's name.
                let view = sql
                    .split(" AS")
                    .next()
                    .and_then(|head| head.rsplit('`').nth(1))
                    .unwrap_or_default();
                writeln!(out, "{}", serde_json::json!({"view": view, "sql": sql}))?;
            } else {
                writeln!(out, "{sql};\n")?;
            }
        }
        return Ok(EXIT_OK);
    }
    let rt = tokio::runtime::Runtime::new()?;
    let aws = rt.block_on(args.aws.load());
    let client = rt
        .block_on(ferry_lambda::bigquery_client_from_env(&aws, &first.project))
        .map_err(anyhow::Error::msg)?;
    let location = first.location.as_deref();
    rt.block_on(client.ensure_dataset(&first.project, ferry_bigquery::status::DATASET, location))
        .map_err(|e| anyhow::anyhow!(e))?;
    let exists = |t: &ferry_core::TableRef| {
        rt.block_on(client.get_table_fields(&t.project, &t.dataset, &t.table))
            .is_ok_and(|f| f.is_some())
    };
    let statements = ferry_bigquery::status::statements(&catalog, &first.project, &jobs, &exists);
    for (i, sql) in statements.iter().enumerate() {
        let id = format!("ferry-status-views-{}-{i}", std::process::id());
        rt.block_on(client.query(sql, location, &id, std::time::Duration::from_secs(120)))
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"created": statements.len(), "project": first.project,
                "dataset": ferry_bigquery::status::DATASET})
        )?;
    } else {
        writeln!(
            out,
            "created {} views in {}.{}",
            statements.len(),
            first.project,
            ferry_bigquery::status::DATASET
        )?;
    }
    Ok(EXIT_OK)
}
