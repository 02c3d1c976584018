//! Reconciling mapped tables: the sides built from the mapping, the source's catalog and the
//! replica's schema, the result per table, and the record of it in the local warehouse.

use std::time::Instant;

use ferry_core::mapping::{Mode, Source, TableMapping};
use ferry_core::schema::BqField;
use rusqlite::Connection;
use serde::Serialize;

use crate::canon::{self, Col, Dialect};
use crate::catalog::SourceTable;
use crate::conn::MySql;
use crate::reconcile::{self, Options, Outcome, Shape, Side};

/// The result for one table, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// `schema.table`.
    pub table: String,
    /// `match`, `differ`, `skipped` or `error`.
    pub status: &'static str,
    /// Why a table was skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The comparison, when one ran.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The newest commit time ferry had loaded when the comparison started (µs), which the
    /// replica is verified through when it matches.
    pub loaded_through: Option<i64>,
    /// Seconds the comparison took.
    pub seconds: f64,
}

impl TableReport {
    /// A table not compared.
    pub fn skipped(table: &TableMapping, reason: impl Into<String>) -> TableReport {
        TableReport {
            table: table.source_table(),
            status: "skipped",
            reason: Some(reason.into()),
            outcome: Outcome::default(),
            loaded_through: None,
            seconds: 0.0,
        }
    }

    /// A table whose comparison failed.
    pub fn failed(table: &TableMapping, reason: impl Into<String>) -> TableReport {
        TableReport {
            status: "error",
            ..TableReport::skipped(table, reason)
        }
    }
}

/// The compared columns: the replica's data columns that the source has.
pub fn columns(source: &SourceTable, replica: &[BqField]) -> Vec<Col> {
    replica
        .iter()
        .filter(|f| !f.name.starts_with(ferry_core::names::METADATA_PREFIX))
        .filter_map(|f| {
            source.column(&f.name).map(|c| Col {
                name: f.name.clone(),
                kind: c.kind,
                bq: f.bq_type,
            })
        })
        .collect()
}

/// Whether a mapped table can be reconciled, and why not.
pub fn eligible(table: &TableMapping) -> Result<(), &'static str> {
    if !table.enabled {
        return Err("disabled in the mapping");
    }
    if table.mode != Mode::Replica {
        return Err("a change-log table holds history, not the source's rows");
    }
    Ok(())
}

/// The source side of a table.
pub fn mysql_side<'a>(db: &'a mut MySql, table: &SourceTable) -> Side<'a> {
    Side {
        label: "source",
        dialect: Dialect::MySql,
        table: format!(
            "{}.{}",
            canon::ident(Dialect::MySql, &table.schema),
            canon::ident(Dialect::MySql, &table.name)
        ),
        filter: None,
        exec: Box::new(move |sql| db.query(sql).map_err(|e| e.to_string())),
    }
}

/// The replica side of a table in the local warehouse, on its own connection (from
/// [`open_local`]: with [`canon::register_sqlite`]'s functions).
pub fn sqlite_side(conn: Connection, table: &TableMapping) -> Side<'static> {
    let replica = table.replica.as_ref().unwrap_or(&table.changelog);
    Side {
        label: "replica",
        dialect: Dialect::Sqlite,
        table: canon::ident(
            Dialect::Sqlite,
            &format!("{}.{}", replica.dataset, replica.table),
        ),
        filter: table.soft_delete.then(|| {
            format!(
                "{} = 0",
                canon::ident(Dialect::Sqlite, ferry_core::sql::DELETED)
            )
        }),
        exec: Box::new(move |sql| sqlite_rows(&conn, sql)),
    }
}

/// Rows of a SQLite query as text.
pub fn sqlite_rows(conn: &Connection, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let mut stmt = conn.prepare(sql).map_err(|e| e.to_string())?;
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => None,
                        rusqlite::types::ValueRef::Integer(v) => Some(v.to_string()),
                        rusqlite::types::ValueRef::Real(v) => Some(v.to_string()),
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            Some(String::from_utf8_lossy(t).into_owned())
                        }
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| e.to_string())
}

/// Opens the local warehouse for reconciling: its tables made current (the results table,
/// `_ferry_reconcile`, among them) and the canonical-row functions registered.
pub fn open_local(path: &std::path::Path) -> Result<Connection, String> {
    ferry_local::SqliteWarehouse::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let conn = Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    canon::register_sqlite(&conn).map_err(|e| e.to_string())?;
    Ok(conn)
}

/// The replica's schema in the local warehouse: the change log's stored fields.
pub fn local_fields(
    conn: &Connection,
    table: &TableMapping,
) -> Result<Option<Vec<BqField>>, String> {
    let name = format!("{}.{}", table.changelog.dataset, table.changelog.table);
    ferry_local::SqliteWarehouse::stored_schema(conn, &name)
        .map(|s| s.map(|s| s.fields))
        .map_err(|e| e.message)
}

/// The newest commit time ferry has loaded for a table in the local warehouse.
pub fn local_loaded_through(
    conn: &Connection,
    source: &Source,
    table: &TableMapping,
) -> Option<i64> {
    conn.query_row(
        "SELECT MAX(commit_ts_max) FROM _ferry_loads WHERE source = ?1 AND table_name = ?2",
        [source.name.as_str(), table.source_table().as_str()],
        |r| r.get::<_, Option<i64>>(0),
    )
    .ok()
    .flatten()
}

/// Records a table's result; `verified_through` advances only when the table matches, and
/// never goes back.
pub fn record_local(
    conn: &Connection,
    source: &str,
    report: &TableReport,
    now_micros: i64,
) -> Result<(), String> {
    if !matches!(report.status, "match" | "differ") {
        return Ok(());
    }
    let o = &report.outcome;
    let verified = if report.status == "match" {
        report.loaded_through.or(Some(now_micros))
    } else {
        None
    };
    conn.execute(
        "INSERT INTO _ferry_reconcile (source, table_name, status, checked_at, source_rows, replica_rows, missing, extra, different, verified_through)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (source, table_name) DO UPDATE SET status = excluded.status, checked_at = excluded.checked_at,
           source_rows = excluded.source_rows, replica_rows = excluded.replica_rows, missing = excluded.missing,
           extra = excluded.extra, different = excluded.different,
           verified_through = MAX(COALESCE(excluded.verified_through, verified_through), COALESCE(verified_through, excluded.verified_through))",
        rusqlite::params![
            source,
            report.table,
            report.status,
            now_micros,
            i64::try_from(o.source_rows).unwrap_or(i64::MAX),
            i64::try_from(o.replica_rows).unwrap_or(i64::MAX),
            o.missing.len() as i64,
            o.extra.len() as i64,
            o.different.len() as i64,
            verified,
        ],
    )
    .map(drop)
    .map_err(|e| e.to_string())
}

/// Compares one table of the local warehouse with the source.
pub fn reconcile_local(
    db: &mut MySql,
    conn: &Connection,
    source: &Source,
    table: &TableMapping,
    source_table: &SourceTable,
    options: Options,
    settle: &mut dyn FnMut(),
) -> TableReport {
    let started = Instant::now();
    let Some(fields) = (match local_fields(conn, table) {
        Ok(f) => f,
        Err(e) => return TableReport::failed(table, e),
    }) else {
        return TableReport::skipped(table, "nothing loaded yet");
    };
    let run = match Run::new(table, source_table, &fields, options, started) {
        Ok(run) => run.loaded_through(local_loaded_through(conn, source, table)),
        Err(e) => return TableReport::failed(table, e),
    };
    let own = match conn.path().map(|p| open_local(std::path::Path::new(p))) {
        Some(Ok(c)) => c,
        Some(Err(e)) => return TableReport::failed(table, e),
        None => return TableReport::failed(table, "the warehouse connection has no file"),
    };
    let mut r = sqlite_side(own, table);
    run.finish(table, &mut mysql_side(db, source_table), &mut r, settle)
}

/// A comparison about to run, with what its report needs.
struct Run {
    shape: Shape,
    options: Options,
    loaded_through: Option<i64>,
    started: Instant,
}

impl Run {
    /// The comparison of the columns both sides have, or why there is none.
    fn new(
        table: &TableMapping,
        source_table: &SourceTable,
        replica: &[BqField],
        options: Options,
        started: Instant,
    ) -> Result<Run, String> {
        // A hashed column holds a digest the source cannot compute in SQL (MySQL has no
        // HMAC): it is left out of the comparison, like excluded ones (absent from the replica).
        let compared = columns(source_table, replica)
            .into_iter()
            .filter(|c| !table.hashes(&c.name))
            .collect();
        let shape = Shape::new(compared, &table.primary_key)?;
        Ok(Run {
            shape,
            options,
            loaded_through: None,
            started,
        })
    }

    /// With the newest commit time ferry had loaded when the comparison started.
    fn loaded_through(self, loaded_through: Option<i64>) -> Run {
        Run {
            loaded_through,
            ..self
        }
    }

    /// Compares the two sides and reports.
    fn finish(
        self,
        table: &TableMapping,
        source: &mut Side<'_>,
        replica: &mut Side<'_>,
        settle: &mut dyn FnMut(),
    ) -> TableReport {
        let result = reconcile::compare_with_bar(
            source,
            replica,
            &self.shape,
            self.options,
            &table.source_table(),
            settle,
        );
        match result {
            Ok(outcome) => TableReport {
                table: table.source_table(),
                status: if outcome.matches() { "match" } else { "differ" },
                reason: None,
                outcome,
                loaded_through: self.loaded_through,
                seconds: self.started.elapsed().as_secs_f64(),
            },
            Err(e) => TableReport::failed(table, e),
        }
    }
}

/// The replica side of a table in BigQuery, queried with `client` on `rt` (jobs.query; each
/// statement gets its own request id).
pub fn bigquery_side<'a>(
    client: &'a ferry_bigquery::Client,
    rt: &'a tokio::runtime::Handle,
    table: &TableMapping,
    location: Option<&'a str>,
) -> Side<'a> {
    let replica = table.replica.as_ref().unwrap_or(&table.changelog);
    let mut n = 0u64;
    Side {
        label: "replica",
        dialect: Dialect::BigQuery,
        table: ferry_core::sql::table_path(replica),
        filter: table.soft_delete.then(|| {
            format!(
                "NOT {}",
                canon::ident(Dialect::BigQuery, ferry_core::sql::DELETED)
            )
        }),
        exec: Box::new(move |sql| bigquery_rows(client, rt, sql, location, &mut n)),
    }
}

/// Rows of a BigQuery query as text (cells as the REST API returns them: strings or null).
pub fn bigquery_rows(
    client: &ferry_bigquery::Client,
    rt: &tokio::runtime::Handle,
    sql: &str,
    location: Option<&str>,
    counter: &mut u64,
) -> Result<Vec<Vec<Option<String>>>, String> {
    *counter += 1;
    // BigQuery takes request ids of at most 36 ASCII characters (jobs.query, QueryRequest).
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let id = format!(
        "ferry-rc-{:08x}{:012x}{:04x}",
        std::process::id(),
        micros & 0xffff_ffff_ffff,
        *counter & 0xffff
    );
    let result = rt
        .block_on(client.query(sql, location, &id, std::time::Duration::from_secs(600)))
        .map_err(|e| e.to_string())?;
    Ok(result
        .rows
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s),
                    other => Some(other.to_string()),
                })
                .collect()
        })
        .collect())
}

/// The replica's columns as BigQuery has them (`tables.get`), `None` when it does not exist.
pub fn bigquery_fields(
    client: &ferry_bigquery::Client,
    rt: &tokio::runtime::Handle,
    table: &TableMapping,
) -> Result<Option<Vec<BqField>>, String> {
    let replica = table.replica.as_ref().unwrap_or(&table.changelog);
    let fields = rt
        .block_on(client.get_table_fields(&replica.project, &replica.dataset, &replica.table))
        .map_err(|e| e.to_string())?;
    fields
        .map(|f| {
            ferry_bigquery::warehouse::schema_from_json(replica, &f)
                .map(|s| s.fields)
                .map_err(|e| e.to_string())
        })
        .transpose()
}

/// The newest commit time in a table's change log (µs), read from the last two days'
/// partitions only, so the query scans one column of two days.
pub fn bigquery_loaded_through(
    client: &ferry_bigquery::Client,
    rt: &tokio::runtime::Handle,
    table: &TableMapping,
    location: Option<&str>,
) -> Result<Option<i64>, String> {
    let ts = ferry_core::sql::ident(ferry_core::schema::meta::COMMIT_TS);
    let sql = format!(
        "SELECT UNIX_MICROS(MAX({ts})) FROM {} WHERE {ts} >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 2 DAY)",
        ferry_core::sql::table_path(&table.changelog)
    );
    let rows = bigquery_rows(client, rt, &sql, location, &mut 0)?;
    Ok(rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse().ok()))
}

/// Compares one table's BigQuery replica with the source.
#[allow(clippy::too_many_arguments)]
pub fn reconcile_bigquery(
    db: &mut MySql,
    client: &ferry_bigquery::Client,
    rt: &tokio::runtime::Handle,
    source: &Source,
    table: &TableMapping,
    source_table: &SourceTable,
    options: Options,
    settle: &mut dyn FnMut(),
) -> TableReport {
    let started = Instant::now();
    let location = source.location.as_deref();
    let fields = match bigquery_fields(client, rt, table) {
        Ok(Some(f)) => f,
        Ok(None) => return TableReport::skipped(table, "the replica does not exist yet"),
        Err(e) => return TableReport::failed(table, e),
    };
    let run = match Run::new(table, source_table, &fields, options, started) {
        Ok(run) => {
            run.loaded_through(bigquery_loaded_through(client, rt, table, location).unwrap_or(None))
        }
        Err(e) => return TableReport::failed(table, e),
    };
    let mut r = bigquery_side(client, rt, table, location);
    run.finish(table, &mut mysql_side(db, source_table), &mut r, settle)
}

/// The BigQuery table reconcile results are kept in: `ferry_reconcile` in the source's dataset,
/// one row per table and run.
pub fn results_table(source: &Source) -> ferry_core::TableRef {
    ferry_core::TableRef {
        project: source.project.clone(),
        dataset: source.dataset.clone(),
        table: ferry_bigquery::status::RESULTS_TABLE.into(),
    }
}

/// Creates [`results_table`] when missing; once per source and run, before
/// [`record_bigquery`].
pub fn ensure_results_bigquery(
    client: &ferry_bigquery::Client,
    rt: &tokio::runtime::Handle,
    source: &Source,
) -> Result<(), String> {
    let path = ferry_core::sql::table_path(&results_table(source));
    bigquery_rows(
        client,
        rt,
        &format!(
            "CREATE TABLE IF NOT EXISTS {path} (source STRING NOT NULL, table_name STRING NOT NULL, status STRING NOT NULL, checked_at TIMESTAMP NOT NULL, source_rows INT64, replica_rows INT64, missing INT64, extra INT64, different INT64, verified_through TIMESTAMP) PARTITION BY DATE(checked_at) CLUSTER BY table_name"
        ),
        source.location.as_deref(),
        &mut 0,
    )
    .map(drop)
}

/// Appends a run's results to [`results_table`], one row per compared table, in one statement.
/// `verified_through` is set only for a match: the newest verified time is the maximum over
/// the table's rows.
pub fn record_bigquery(
    client: &ferry_bigquery::Client,
    rt: &tokio::runtime::Handle,
    source: &Source,
    reports: &[TableReport],
    now_micros: i64,
) -> Result<(), String> {
    let lit = ferry_core::sql::string_literal;
    let rows: Vec<String> = reports
        .iter()
        .filter(|r| matches!(r.status, "match" | "differ"))
        .map(|report| {
            let o = &report.outcome;
            let verified = match (report.status, report.loaded_through) {
                ("match", Some(t)) => format!("TIMESTAMP_MICROS({t})"),
                ("match", None) => format!("TIMESTAMP_MICROS({now_micros})"),
                _ => "NULL".into(),
            };
            format!(
                "({}, {}, {}, TIMESTAMP_MICROS({now_micros}), {}, {}, {}, {}, {}, {verified})",
                lit(&source.name),
                lit(&report.table),
                lit(report.status),
                o.source_rows,
                o.replica_rows,
                o.missing.len(),
                o.extra.len(),
                o.different.len()
            )
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    bigquery_rows(
        client,
        rt,
        &format!(
            "INSERT INTO {} (source, table_name, status, checked_at, source_rows, replica_rows, missing, extra, different, verified_through) VALUES {}",
            ferry_core::sql::table_path(&results_table(source)),
            rows.join(", ")
        ),
        source.location.as_deref(),
        &mut 0,
    )
    .map(drop)
}
