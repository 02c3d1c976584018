//! `ferry source check`: what DMS and ferry need from a MySQL source, checked before the task
//! runs (see the DMS user guide, "Using a MySQL-compatible database as a source": binary logging
//! in ROW format with FULL row images, binlog retention, and primary keys for LOB columns).

use ferry_core::mapping::{Mode, Source};
use serde::Serialize;

use crate::catalog::{SourceTable, read_tables};
use crate::conn::{MySql, SourceError};

/// Binlog retention below this is a problem: an outage of a day must not lose changes.
pub const MIN_RETENTION_HOURS: u64 = 24;

/// One problem, with its fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `schema.table`, or `None` for a server setting.
    pub table: Option<String>,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

/// What the check read, printed even when nothing is wrong.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    /// `SELECT VERSION()`.
    pub version: String,
    /// The server's time zone (`@@global.time_zone`, resolved through `@@system_time_zone`).
    pub time_zone: String,
    /// Binlog retention in hours, when bounded.
    pub binlog_retention_hours: Option<u64>,
    /// Mapped tables checked.
    pub tables_checked: usize,
    /// Problems found.
    pub problems: Vec<Problem>,
}

fn server(problem: String, fix: &str) -> Problem {
    Problem {
        table: None,
        problem,
        fix: fix.to_owned(),
    }
}

/// Checks the server settings and the mapped, enabled tables of `source`.
pub fn check(db: &mut MySql, source: &Source) -> Result<Findings, SourceError> {
    let mut f = Findings {
        version: db.version.clone(),
        ..Findings::default()
    };
    let var = |db: &mut MySql, name: &str| -> Result<String, SourceError> {
        Ok(db
            .query(&format!("SHOW GLOBAL VARIABLES LIKE '{name}'"))?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().nth(1).flatten())
            .unwrap_or_default())
    };
    let log_bin = var(db, "log_bin")?;
    if !log_bin.eq_ignore_ascii_case("ON") {
        f.problems.push(server(
            format!("binary logging is off (log_bin={log_bin:?})"),
            "start the server with log-bin (on RDS/Aurora: enable automated backups; Aurora MySQL: set binlog_format in the DB cluster parameter group)",
        ));
    }
    let format = var(db, "binlog_format")?;
    if !format.eq_ignore_ascii_case("ROW") {
        f.problems.push(server(
            format!("binlog_format is {format}, DMS needs ROW"),
            "set binlog_format=ROW (Aurora: in the DB cluster parameter group) and restart",
        ));
    }
    let image = var(db, "binlog_row_image")?;
    if !image.eq_ignore_ascii_case("FULL") {
        f.problems.push(server(
            format!(
                "binlog_row_image is {image}, DMS needs FULL (with {image}, columns an UPDATE does not change arrive as NULL)"
            ),
            "set binlog_row_image=FULL in the parameter group",
        ));
    }
    f.binlog_retention_hours = retention_hours(db, &var)?;
    if let Some(h) = f.binlog_retention_hours
        && h < MIN_RETENTION_HOURS
    {
        f.problems.push(server(
            format!(
                "binlogs are kept {h} h, shorter than {MIN_RETENTION_HOURS} h: a longer DMS outage loses changes for good"
            ),
            "RDS/Aurora: CALL mysql.rds_set_configuration('binlog retention hours', 24); elsewhere set binlog_expire_logs_seconds=86400 or more",
        ));
    }
    let tz = var(db, "time_zone")?;
    let system = var(db, "system_time_zone")?;
    f.time_zone = if tz.eq_ignore_ascii_case("SYSTEM") {
        system
    } else {
        tz
    };
    if !matches!(
        f.time_zone.as_str(),
        "UTC" | "+00:00" | "Etc/UTC" | "GMT" | "Z" | "Universal"
    ) {
        f.problems.push(server(
            format!(
                "the server's time zone is {}, not UTC: DMS reads TIMESTAMP values in it",
                f.time_zone
            ),
            "set the DMS source endpoint's extra connection attribute serverTimezone to the server's zone, or run the server in UTC (time_zone='+00:00')",
        ));
    }
    let schemas: Vec<String> = {
        let mut s: Vec<String> = source.tables.iter().map(|t| t.schema.clone()).collect();
        s.sort();
        s.dedup();
        s
    };
    let tables = read_tables(db, &schemas)?;
    for t in source.tables.iter().filter(|t| t.enabled) {
        f.tables_checked += 1;
        let name = t.source_table();
        let Some(st) = tables
            .iter()
            .find(|s| s.schema == t.schema && s.name == t.table)
        else {
            f.problems.push(Problem {
                table: Some(name.clone()),
                problem: "the mapped table does not exist in the source".into(),
                fix: format!(
                    "fix the table name in {}, or disable the table (\"enabled\": false)",
                    source.file
                ),
            });
            continue;
        };
        table_problems(t.mode, &t.primary_key, st, &source.file, &mut f.problems);
    }
    Ok(f)
}

fn table_problems(
    mode: Mode,
    mapped_key: &[String],
    st: &SourceTable,
    file: &str,
    out: &mut Vec<Problem>,
) {
    let name = st.source_table();
    let push = |out: &mut Vec<Problem>, problem: String, fix: String| {
        out.push(Problem {
            table: Some(name.clone()),
            problem,
            fix,
        });
    };
    let lobs: Vec<&str> = st
        .columns
        .iter()
        .filter(|c| c.kind.is_lob())
        .map(|c| c.name.as_str())
        .collect();
    if st.primary_key.is_empty() {
        if mode == Mode::Replica {
            push(
                out,
                "the table has no primary key, so its replica cannot be kept".into(),
                format!(
                    "add a primary key to the source table, or map it as \"mode\": \"changelog\" in {file}"
                ),
            );
        }
        if !lobs.is_empty() {
            push(
                out,
                format!(
                    "LOB columns {} but no primary key: DMS does not replicate LOB columns of such tables",
                    lobs.join(", ")
                ),
                "add a primary key to the source table".into(),
            );
        }
        return;
    }
    if mode == Mode::Replica && mapped_key != st.primary_key.as_slice() {
        push(
            out,
            format!(
                "the mapping's primary key is [{}] but the source's is [{}]",
                mapped_key.join(", "),
                st.primary_key.join(", ")
            ),
            format!(
                "set \"primary_key\": [{}] in {file} (ferry mappings sync --write does it)",
                st.primary_key
                    .iter()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
}

/// Binlog retention in hours (`None`: unbounded or unknown). RDS and Aurora keep it in
/// `mysql.rds_show_configuration`, where NULL means "purge as soon as possible" (0 h).
fn retention_hours(
    db: &mut MySql,
    var: &dyn Fn(&mut MySql, &str) -> Result<String, SourceError>,
) -> Result<Option<u64>, SourceError> {
    if let Ok(rows) = db.query("CALL mysql.rds_show_configuration") {
        for r in rows {
            if r.first().cloned().flatten().as_deref() == Some("binlog retention hours") {
                return Ok(Some(
                    r.get(1)
                        .cloned()
                        .flatten()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                ));
            }
        }
    }
    let seconds: u64 = var(db, "binlog_expire_logs_seconds")?.parse().unwrap_or(0);
    if seconds > 0 {
        return Ok(Some(seconds / 3600));
    }
    let days: f64 = var(db, "expire_logs_days")?.parse().unwrap_or(0.0);
    if days > 0.0 {
        // Whole hours of a fractional day count.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        return Ok(Some((days * 24.0) as u64));
    }
    Ok(None)
}
