//! The `ferry` command line. Every command is a function over the same library code the Lambda
//! uses, writing to the streams it is given, so tests run them in-process.
//!
//! # Layout
//! - `commands::mappings`: `ferry mappings check|schema`.
//! - `commands::plan`: `ferry plan`.
//! - `commands::convert`: `ferry convert`.
//! - `commands::sim`: `ferry sim`.
//! - `commands::local`: `ferry local run|invoke|query|verify`, `ferry status`.
//! - `commands::demo`: `ferry demo`.
//! - `commands::deploy`: `ferry dms table-mappings`, `ferry deploy config|bucket-notification`.
//! - `commands::ops`: `ferry dlq inspect|redrive`, `ferry backfill`.
//! - `commands::bigquery`: `ferry bigquery ddl`.
//! - `commands::source`: `ferry source check`, `ferry mappings sync`, `ferry reconcile`.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command ran and found problems (invalid mappings, stale files).
pub const EXIT_PROBLEMS: u8 = 1;
/// Exit code: the command was called wrongly (unknown flags, names that the mappings do not
/// hold, paths that do not exist, flags that need another).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the environment or a service failed (credentials, network, AWS, BigQuery, MySQL,
/// files that cannot be read or written).
pub const EXIT_RUNTIME: u8 = 3;

/// An error in how the command was called: exit [`EXIT_USAGE`].
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Returns a usage error (exit 2) from the function: `usage_bail!("no source {name}")`.
macro_rules! usage_bail {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::Usage(format!($($arg)*))))
    };
}

/// A usage error (exit 2) unless `cond` holds.
macro_rules! usage_ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            usage_bail!($($arg)*);
        }
    };
}

mod commands;

/// ferry carries MySQL/Aurora changes captured by AWS DMS from S3 into BigQuery.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check or describe the mapping files.
    #[command(subcommand)]
    Mappings(commands::mappings::MappingsCommand),
    /// Show what ferry would do with S3 objects: source, table, target, job id, or why skipped.
    Plan(commands::plan::PlanArgs),
    /// Convert one local DMS parquet file as the loader would, into a BigQuery-ready file.
    Convert(commands::convert::ConvertArgs),
    /// Write a DMS-style S3 tree for the mapped tables, and the state BigQuery must reach.
    Sim(commands::sim::SimArgs),
    /// The pipeline on this machine: a folder as the bucket, SQLite as the warehouse.
    #[command(subcommand)]
    Local(commands::local::LocalCommand),
    /// Per-table freshness, lag, files, rows, failures and skipped objects.
    Status(commands::local::StatusArgs),
    /// Simulate the estate, run it through local mode, verify every table, print the status.
    Demo(commands::demo::DemoArgs),
    /// Inspect and redrive the loader's dead-letter queue.
    #[command(subcommand)]
    Dlq(commands::ops::DlqCommand),
    /// Replay a table's objects for a time range, into the queue or directly.
    Backfill(commands::ops::BackfillArgs),
    /// DMS settings generated from the mappings.
    #[command(subcommand)]
    Dms(commands::deploy::DmsCommand),
    /// Deployment files generated from the mappings.
    #[command(subcommand)]
    Deploy(commands::deploy::DeployCommand),
    /// What ferry would run in BigQuery.
    #[command(subcommand)]
    Bigquery(commands::bigquery::BigqueryCommand),
    /// Read the MySQL source: preflight what DMS and ferry need from it.
    #[command(subcommand)]
    Source(commands::source::SourceCommand),
    /// Compare each replica with its source table, row by row, without exporting either; name
    /// the keys that differ, and optionally repair them.
    Reconcile(commands::source::ReconcileArgs),
}

/// The mappings folder: `--mappings`, else `$FERRY_MAPPINGS`, else `mappings`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MappingsDir {
    /// Folder holding the mapping files.
    #[arg(
        long = "mappings",
        id = "mappings",
        env = "FERRY_MAPPINGS",
        default_value = "mappings",
        value_name = "DIR"
    )]
    pub(crate) dir: PathBuf,
}

/// The `ferry` process: [`run`] over the process's arguments and standard streams.
pub fn main() -> std::process::ExitCode {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let code = run(std::env::args_os(), &mut stdout.lock(), &mut stderr.lock());
    std::process::ExitCode::from(code)
}

/// Where AWS is used: `--region` and `--profile` over the SDK's environment and files.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct AwsArgs {
    /// The AWS region (default: the SDK's, from AWS_REGION or the profile).
    #[arg(long, value_name = "REGION")]
    pub(crate) region: Option<String>,
    /// The named AWS profile (default: AWS_PROFILE, else `default`).
    #[arg(long, value_name = "NAME")]
    pub(crate) profile: Option<String>,
}

impl AwsArgs {
    /// The SDK configuration.
    pub(crate) async fn load(&self) -> ferry_aws::config::SdkConfig {
        ferry_aws::config::load_with(self.region.as_deref(), self.profile.as_deref()).await
    }
}

/// Runs ferry with `args` (the first is the program name), writing to `out` and `err`, and
/// returns the process exit code.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let text = if e.use_stderr() {
                e.render().to_string()
            } else {
                e.to_string()
            };
            let stream: &mut dyn Write = if e.use_stderr() { err } else { out };
            let _ = stream.write_all(text.as_bytes());
            return code;
        }
    };
    let result = match cli.command {
        Command::Mappings(cmd) => commands::mappings::run(cmd, out, err),
        Command::Plan(args) => commands::plan::run(args, out, err),
        Command::Convert(args) => commands::convert::run(args, out, err),
        Command::Sim(args) => commands::sim::run(args, out, err),
        Command::Local(cmd) => commands::local::run(cmd, out, err),
        Command::Status(args) => commands::local::status(args, out, err),
        Command::Demo(args) => commands::demo::run(args, out, err),
        Command::Dlq(cmd) => commands::ops::dlq(cmd, out, err),
        Command::Backfill(args) => commands::ops::backfill(args, out, err),
        Command::Dms(cmd) => commands::deploy::dms(cmd, out, err),
        Command::Deploy(cmd) => commands::deploy::deploy(cmd, out, err),
        Command::Bigquery(cmd) => commands::bigquery::run(cmd, out, err),
        Command::Source(cmd) => commands::source::source(cmd, out, err),
        Command::Reconcile(args) => commands::source::reconcile(args, out, err),
    };
    match result {
        Ok(code) => code,
        // A reader that went away (`ferry … | head`) is not an error.
        Err(e) if is_broken_pipe(&e) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "error: {e:#}");
            if e.downcast_ref::<Usage>().is_some() {
                EXIT_USAGE
            } else {
                EXIT_RUNTIME
            }
        }
    }
}

/// Whether `args` (the first is the program name) is a command line ferry accepts, without
/// running it: for checking the commands written in the documentation.
pub fn check_args<I, T>(args: I) -> Result<(), String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(_) => Ok(()),
        Err(e) if !e.use_stderr() => Ok(()),
        Err(e) => Err(e.render().to_string()),
    }
}

/// Every command's path (`mappings check`, `local run`, …), for the documentation checks.
pub fn command_paths() -> Vec<String> {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let path = format!("{prefix}{}", sub.get_name()).trim().to_owned();
            if sub.has_subcommands() {
                walk(sub, &format!("{path} "), out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), "", &mut out);
    out
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
