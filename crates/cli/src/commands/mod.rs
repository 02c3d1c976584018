//! One module per top-level command.

pub(crate) mod bigquery;
pub(crate) mod convert;
pub(crate) mod demo;
pub(crate) mod deploy;
pub(crate) mod html;
pub(crate) mod local;
pub(crate) mod mappings;
pub(crate) mod ops;
pub(crate) mod plan;
pub(crate) mod sim;
pub(crate) mod source;

use std::io::Write;

use ferry_core::{Catalog, Problem};

use crate::MappingsDir;

/// Loads the catalog, or prints every problem (one per line) and says so.
pub(crate) fn load_catalog(
    dir: &MappingsDir,
    err: &mut dyn Write,
) -> std::io::Result<Option<Catalog>> {
    match Catalog::load_dir(&dir.dir) {
        Ok(catalog) => Ok(Some(catalog)),
        Err(problems) => {
            print_problems(&problems, err)?;
            Ok(None)
        }
    }
}

/// Prints problems one per line, then a count.
pub(crate) fn print_problems(problems: &[Problem], err: &mut dyn Write) -> std::io::Result<()> {
    for p in problems {
        writeln!(err, "{p}")?;
    }
    let n = problems.len();
    writeln!(
        err,
        "{n} problem{} in the mapping files",
        if n == 1 { "" } else { "s" }
    )
}

/// A duration on the command line: `0`, `90s`, `15m`, `1h`, `2d`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration: use 0, 90s, 15m, 1h or 2d");
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    match s.strip_suffix('d') {
        Some(days) => days
            .parse::<u64>()
            .ok()
            .and_then(|d| d.checked_mul(86_400))
            .map(std::time::Duration::from_secs)
            .ok_or_else(bad),
        None => ferry_core::mapping::parse_interval(s).ok_or_else(bad),
    }
}

/// The catalog's source names, for messages.
pub(crate) fn source_names(catalog: &Catalog) -> String {
    catalog
        .sources()
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `s3://bucket/key` as (bucket, key); anything else is a key without a bucket.
pub(crate) fn split_s3_uri(arg: &str) -> (Option<&str>, &str) {
    match arg.strip_prefix("s3://") {
        Some(rest) => match rest.split_once('/') {
            Some((bucket, key)) => (Some(bucket), key),
            None => (Some(rest), ""),
        },
        None => (None, arg),
    }
}
