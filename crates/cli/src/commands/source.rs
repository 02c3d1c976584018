//! `ferry source check`, `ferry mappings sync`, `ferry mappings check --against` and
//! `ferry reconcile`: the commands that read the MySQL source.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ferry_core::Catalog;
use ferry_core::mapping::Source;
use ferry_source::catalog::read_tables;
use ferry_source::conn::{ConnectOptions, MySql, SourceUrl};
use ferry_source::reconcile::{Key, Options};
use ferry_source::table::{self, TableReport};

use super::load_catalog;
use crate::{EXIT_OK, EXIT_PROBLEMS, MappingsDir};

/// Which source to read, and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SourceArgs {
    #[command(flatten)]
    pub(crate) mappings: MappingsDir,
    /// The source (its mapping file's name).
    #[arg(long, value_name = "NAME")]
    pub(crate) source: String,
    /// The MySQL URL (`mysql://user:password@host:3306/`); default `$FERRY_SOURCE_URL_<NAME>`,
    /// then `$FERRY_SOURCE_URL`. Use a read-only user on a read replica.
    #[arg(long, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// Seconds each statement may run.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub(crate) statement_timeout: u64,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum SourceCommand {
    /// Preflight a MySQL source for DMS and ferry: binlog format, row image and retention, time
    /// zone, and every mapped table with its primary key. One line per problem with its fix;
    /// exit 1 if there is any.
    Check {
        #[command(flatten)]
        source: SourceArgs,
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct SyncArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    /// Write the proposal into the mapping file instead of printing it.
    #[arg(long)]
    pub(crate) write: bool,
    /// One JSON object instead of lines.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReconcileArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    aws: crate::AwsArgs,
    /// Only this table (`schema.table`).
    #[arg(long, value_name = "SCHEMA.TABLE")]
    table: Option<String>,
    /// The local warehouse (SQLite) to compare. Without it, the replicas in BigQuery are
    /// compared, with the credentials the Lambda uses (FERRY_GCP_CREDENTIALS_SECRET,
    /// GOOGLE_APPLICATION_CREDENTIALS, ...), and results are kept in <dataset>.ferry_reconcile.
    #[arg(long, value_name = "FILE")]
    warehouse: Option<PathBuf>,
    /// With --repair in local mode: the folder standing for the bucket. In BigQuery mode the
    /// repair objects go to the source's S3 bucket, whose notification loads them.
    #[arg(long, value_name = "DIR")]
    bucket_dir: Option<PathBuf>,
    /// One JSON object per table per line.
    #[arg(long)]
    json: bool,
    /// Send the source's rows for every differing key (and deletes for extra keys) through
    /// ferry's normal load path.
    #[arg(long)]
    repair: bool,
    /// Wait before keys that differ are read again (changes in flight): `0s`, `30s`, `2m`.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration, value_name = "DURATION")]
    settle: Duration,
}

fn connect(args: &SourceArgs, catalog: &Catalog) -> anyhow::Result<(Source, MySql)> {
    let source = catalog.source(&args.source).cloned().with_context(|| {
        format!(
            "no source {:?} in the mappings (sources: {})",
            args.source,
            super::source_names(catalog)
        )
    })?;
    let url = SourceUrl::resolve(&source.name, args.url.as_deref())?;
    let db = MySql::connect(
        &url,
        ConnectOptions {
            statement_timeout: Duration::from_secs(args.statement_timeout.max(1)),
            ..ConnectOptions::default()
        },
    )?;
    Ok((source, db))
}

fn schemas(source: &Source) -> Vec<String> {
    let mut s: Vec<String> = source.tables.iter().map(|t| t.schema.clone()).collect();
    s.sort();
    s.dedup();
    s
}

pub(crate) fn source(
    cmd: SourceCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let SourceCommand::Check { source: args, json } = cmd;
    let Some(catalog) = load_catalog(&args.mappings, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    let (source, mut db) = connect(&args, &catalog)?;
    let findings = ferry_source::check::check(&mut db, &source)?;
    if json {
        writeln!(out, "{}", serde_json::to_string(&findings)?)?;
    } else {
        writeln!(
            out,
            "{}: {} ({}), time zone {}, binlog retention {}, {} mapped tables checked",
            source.name,
            db.url(),
            findings.version,
            findings.time_zone,
            findings
                .binlog_retention_hours
                .map_or_else(|| "unbounded".to_owned(), |h| format!("{h} h")),
            findings.tables_checked
        )?;
        for p in &findings.problems {
            let at = p.table.as_deref().unwrap_or("server");
            writeln!(out, "{at}: {}; fix: {}", p.problem, p.fix)?;
        }
        if findings.problems.is_empty() {
            writeln!(out, "ok: nothing to fix")?;
        }
    }
    Ok(if findings.problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_PROBLEMS
    })
}

/// `ferry mappings sync`.
pub(crate) fn sync(args: SyncArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let Some(catalog) = load_catalog(&args.source.mappings, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    let (source, mut db) = connect(&args.source, &catalog)?;
    let tables = read_tables(&mut db, &schemas(&source))?;
    let report = ferry_source::sync::compare(&source, &tables);
    let text = std::fs::read_to_string(&source.file)
        .with_context(|| format!("reading {}", source.file))?;
    let proposed =
        ferry_source::sync::rewrite(&text, &source, &tables).map_err(anyhow::Error::msg)?;
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"source": source.name, "file": source.file, "findings": report.findings,
                "unmapped": report.unmapped, "changed": proposed != text, "written": args.write && proposed != text})
        )?;
    } else {
        for f in &report.findings {
            writeln!(out, "{}", f.describe())?;
        }
        for t in &report.unmapped {
            writeln!(out, "{t}: in the source but not mapped")?;
        }
    }
    if args.write {
        if proposed != text {
            std::fs::write(&source.file, &proposed)
                .with_context(|| format!("writing {}", source.file))?;
            // The written file must still be a valid mapping.
            if let Err(problems) = Catalog::load_dir(&args.source.mappings.dir) {
                super::print_problems(&problems, err)?;
                return Ok(EXIT_PROBLEMS);
            }
            if !args.json {
                writeln!(out, "wrote {}", source.file)?;
            }
        } else if !args.json {
            writeln!(out, "{} already agrees with the source", source.file)?;
        }
    } else if !args.json && proposed != text {
        writeln!(out, "--- proposed {}", source.file)?;
        out.write_all(proposed.as_bytes())?;
    }
    Ok(EXIT_OK)
}

/// `ferry mappings check --against URL`: exit 1 when a hint is missing or contradicts the
/// source, or a key differs.
pub(crate) fn check_against(
    catalog: &Catalog,
    url: &str,
    only: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let sources: Vec<&Source> = match only {
        Some(name) => vec![
            catalog
                .source(name)
                .with_context(|| format!("no source {name:?} in the mappings"))?,
        ],
        None if catalog.sources().len() == 1 => catalog.sources().iter().collect(),
        None => usage_bail!(
            "--against reads one MySQL server: name its source with --source (sources: {})",
            super::source_names(catalog)
        ),
    };
    let mut problems = 0;
    for source in sources {
        let mut db = MySql::connect(&SourceUrl::parse(url)?, ConnectOptions::default())?;
        let tables = read_tables(&mut db, &schemas(source))?;
        let report = ferry_source::sync::compare(source, &tables);
        for f in report.findings.iter().filter(|f| f.is_problem()) {
            problems += 1;
            writeln!(out, "{}: {}", source.file, f.describe())?;
        }
    }
    if problems == 0 {
        writeln!(out, "ok: the mappings agree with the source")?;
        Ok(EXIT_OK)
    } else {
        writeln!(
            out,
            "{problems} problems; `ferry mappings sync --write` fixes them"
        )?;
        Ok(EXIT_PROBLEMS)
    }
}

/// `ferry reconcile`.
pub(crate) fn reconcile(
    args: ReconcileArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let Some(catalog) = load_catalog(&args.source.mappings, err)? else {
        return Ok(EXIT_PROBLEMS);
    };
    if let Some(w) = &args.warehouse {
        usage_ensure!(
            w.is_file(),
            "warehouse {} does not exist (ferry local run creates it)",
            w.display()
        );
        if args.repair {
            usage_ensure!(
                args.bucket_dir.is_some(),
                "--repair in local mode writes the repair objects into the bucket folder: pass --bucket-dir"
            );
        }
    }
    let (source, mut db) = connect(&args.source, &catalog)?;
    if let Some(t) = &args.table {
        usage_ensure!(
            source.tables.iter().any(|m| m.source_table() == *t),
            "{t} is not a table of source {}",
            source.name
        );
    }
    let source_tables = read_tables(&mut db, &schemas(&source))?;
    let options = Options {
        progress: !args.json && std::io::stderr().is_terminal(),
        ..Options::default()
    };
    let settle = args.settle;
    let mut wait = || std::thread::sleep(settle);
    let selected: Vec<&ferry_core::TableMapping> = source
        .tables
        .iter()
        .filter(|t| {
            args.table
                .as_ref()
                .is_none_or(|only| *only == t.source_table())
        })
        .collect();
    let find = |t: &ferry_core::TableMapping| {
        source_tables
            .iter()
            .find(|s| s.schema == t.schema && s.name == t.table)
    };
    let mut reports = Vec::new();
    let bigquery = match &args.warehouse {
        Some(path) => {
            let conn = table::open_local(path).map_err(anyhow::Error::msg)?;
            for t in selected {
                let report = match (table::eligible(t), find(t)) {
                    (Err(why), _) => TableReport::skipped(t, why),
                    (Ok(()), None) => {
                        TableReport::failed(t, "the table does not exist in the source")
                    }
                    (Ok(()), Some(st)) => {
                        table::reconcile_local(&mut db, &conn, &source, t, st, options, &mut wait)
                    }
                };
                table::record_local(&conn, &source.name, &report, now_micros())
                    .map_err(anyhow::Error::msg)?;
                print_report(&report, args.json, out)?;
                reports.push(report);
            }
            None
        }
        None => {
            let rt = tokio::runtime::Runtime::new()?;
            let aws = rt.block_on(args.aws.load());
            let client = rt
                .block_on(ferry_lambda::bigquery_client_from_env(
                    &aws,
                    &source.project,
                ))
                .map_err(anyhow::Error::msg)?;
            for t in selected {
                let report = match (table::eligible(t), find(t)) {
                    (Err(why), _) => TableReport::skipped(t, why),
                    (Ok(()), None) => {
                        TableReport::failed(t, "the table does not exist in the source")
                    }
                    (Ok(()), Some(st)) => table::reconcile_bigquery(
                        &mut db,
                        &client,
                        rt.handle(),
                        &source,
                        t,
                        st,
                        options,
                        &mut wait,
                    ),
                };
                print_report(&report, args.json, out)?;
                reports.push(report);
            }
            let recorded =
                table::ensure_results_bigquery(&client, rt.handle(), &source).and_then(|()| {
                    table::record_bigquery(&client, rt.handle(), &source, &reports, now_micros())
                });
            if let Err(e) = recorded {
                writeln!(err, "could not record the results: {e}")?;
            }
            Some((rt, aws))
        }
    };
    let differ = reports
        .iter()
        .any(|r| matches!(r.status, "differ" | "error"));
    if args.repair && differ {
        let objects = repair_objects(&mut db, &source, &source_tables, &reports, err)?;
        let keys: usize = objects.iter().map(|o| o.2).sum();
        match (&args.warehouse, &bigquery) {
            (Some(warehouse), _) => {
                let bucket_dir = args.bucket_dir.clone().unwrap_or_default();
                for (key, bytes, _) in &objects {
                    let path = bucket_dir.join(key);
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    std::fs::write(&path, bytes)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                let pipeline =
                    super::local::local_pipeline(catalog.clone(), &bucket_dir, warehouse)?;
                let summary = super::local::run_with_progress(
                    &pipeline,
                    &ferry_local::RunOptions::default(),
                    err,
                )?;
                anyhow::ensure!(
                    summary.dead_lettered == 0,
                    "{} objects were dead-lettered while loading the repair; see ferry dlq inspect",
                    summary.dead_lettered
                );
            }
            (None, Some((rt, aws))) => {
                let s3 = ferry_aws::config::s3(aws);
                for (key, bytes, _) in objects {
                    rt.block_on(ferry_aws::s3::put_object(&s3, &source.bucket, &key, bytes))
                        .map_err(anyhow::Error::msg)?;
                    writeln!(
                        err,
                        "wrote s3://{}/{key}; the bucket's notification sends it to the loader",
                        source.bucket
                    )?;
                }
            }
            (None, None) => {}
        }
        if !args.json {
            writeln!(
                out,
                "repaired {keys} keys; run ferry reconcile again to confirm"
            )?;
        }
    }
    Ok(if differ { EXIT_PROBLEMS } else { EXIT_OK })
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn print_report(r: &TableReport, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
        return Ok(());
    }
    let o = &r.outcome;
    match r.status {
        "match" => writeln!(
            out,
            "{}: match ({} rows, {:.1} s)",
            r.table, o.source_rows, r.seconds
        )?,
        "differ" => {
            writeln!(
                out,
                "{}: differ: {} missing, {} extra, {} different ({} source rows, {} replica rows{})",
                r.table,
                o.missing.len(),
                o.extra.len(),
                o.different.len(),
                o.source_rows,
                o.replica_rows,
                if o.settled > 0 {
                    format!(", {} settled while waiting", o.settled)
                } else {
                    String::new()
                }
            )?;
            let key = |k: &std::collections::BTreeMap<String, Option<String>>| {
                k.iter()
                    .map(|(c, v)| format!("{c}={}", v.as_deref().unwrap_or("NULL")))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            for k in &o.missing {
                writeln!(out, "  missing {}", key(k))?;
            }
            for k in &o.extra {
                writeln!(out, "  extra {}", key(k))?;
            }
            for d in &o.different {
                writeln!(
                    out,
                    "  different {}: {} is {} in the source, {} in the replica",
                    key(&d.key),
                    d.column,
                    d.source.as_deref().unwrap_or("NULL"),
                    d.replica.as_deref().unwrap_or("NULL")
                )?;
            }
        }
        _ => writeln!(
            out,
            "{}: {} ({})",
            r.table,
            r.status,
            r.reason.as_deref().unwrap_or_default()
        )?,
    }
    Ok(())
}

/// One repair object per differing table: its key, its bytes and how many keys it repairs.
fn repair_objects(
    db: &mut MySql,
    source: &Source,
    source_tables: &[ferry_source::catalog::SourceTable],
    reports: &[TableReport],
    err: &mut dyn Write,
) -> anyhow::Result<Vec<(String, Vec<u8>, usize)>> {
    let mut objects = Vec::new();
    for (serial, r) in reports.iter().filter(|r| r.status == "differ").enumerate() {
        let Some(t) = source.tables.iter().find(|t| t.source_table() == r.table) else {
            continue;
        };
        let Some(st) = source_tables
            .iter()
            .find(|s| s.schema == t.schema && s.name == t.table)
        else {
            continue;
        };
        let as_key = |k: &std::collections::BTreeMap<String, Option<String>>| -> Key {
            t.primary_key
                .iter()
                .map(|c| k.get(c).cloned().flatten())
                .collect()
        };
        let upserts: Vec<Key> = r
            .outcome
            .missing
            .iter()
            .chain(r.outcome.different.iter().map(|d| &d.key))
            .map(as_key)
            .collect();
        let deletes: Vec<(Vec<String>, Key)> = r
            .outcome
            .extra
            .iter()
            .map(|k| (t.primary_key.clone(), as_key(k)))
            .collect();
        // The object's time is taken before the rows are read (see ferry_source::repair).
        let at = now_micros();
        let rows = ferry_source::repair::read_rows(db, st, &t.primary_key, &upserts)?;
        let bytes = ferry_source::repair::build(source, st, &rows, &deletes, at)
            .map_err(|e| anyhow::anyhow!("{}: {e}", r.table))?;
        let key =
            ferry_source::repair::object_key(source, st, at, u32::try_from(serial).unwrap_or(0));
        writeln!(
            err,
            "{}: repair object {key} ({} rows, {} deletes)",
            r.table,
            rows.len(),
            deletes.len()
        )?;
        objects.push((key, bytes, rows.len() + deletes.len()));
    }
    Ok(objects)
}
