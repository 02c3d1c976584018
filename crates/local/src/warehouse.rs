//! A SQLite warehouse that behaves like the BigQuery writer: change-log and replica tables, the
//! same ordering and merge semantics, and a job-id ledger written in the same transaction as the
//! rows, so a repeated load is refused.
//!
//! Tables are named `dataset.table` (quote them in SQL: `SELECT * FROM "slots_account.players"`).
//! Values are exact: INT64 and BOOL as integers, NUMERIC/BIGNUMERIC, dates and times as their
//! canonical text (never through floating point), BYTES as blobs.
//!
//! Durability: WAL with `synchronous = OFF`. A killed process loses nothing committed and never
//! corrupts the file (each load and its ledger row are one transaction); an operating-system
//! crash or power loss may, and the cure is the local mode's own: delete the file and run again.

use std::path::Path;
use std::sync::Mutex;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use ferry_convert::canonical;
use ferry_core::bqtype::BqType;
use ferry_core::event::SqsMessage;
use ferry_core::mapping::{Source, TableMapping, TableRef};
use ferry_core::schema::{BqField, TableSchema, meta};
use ferry_pipeline::{
    Converted, DeadLetters, LoadOutcome, LoadRequest, PortError, StatusEvent, Warehouse,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value as Json;

/// Rows read from a converted file at a time.
const BATCH: usize = 8192;

const LEDGER: &str = r#"
CREATE TABLE IF NOT EXISTS _ferry_loads (
    job_base TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    source TEXT NOT NULL,
    table_name TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    file_seq TEXT NOT NULL,
    rows INTEGER NOT NULL,
    commit_ts_max INTEGER,
    loaded_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS _ferry_schemas (table_name TEXT PRIMARY KEY, fields TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _ferry_applied (table_name TEXT PRIMARY KEY, last_rowid INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS _ferry_events (
    at INTEGER NOT NULL, kind TEXT NOT NULL, source TEXT, table_name TEXT, bucket TEXT NOT NULL,
    key TEXT NOT NULL, code TEXT, job_id TEXT, rows INTEGER NOT NULL, bytes INTEGER NOT NULL,
    commit_ts_max INTEGER, message TEXT, warnings TEXT
);
CREATE INDEX IF NOT EXISTS _ferry_events_table ON _ferry_events (source, table_name, at);
CREATE TABLE IF NOT EXISTS _ferry_dlq (
    id INTEGER PRIMARY KEY, message_id TEXT NOT NULL, body TEXT NOT NULL, reason TEXT NOT NULL,
    receive_count INTEGER NOT NULL, at INTEGER NOT NULL, repeats INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS _ferry_dlq_body ON _ferry_dlq (body);
CREATE TABLE IF NOT EXISTS _ferry_reconcile (
    source TEXT NOT NULL, table_name TEXT NOT NULL, status TEXT NOT NULL, checked_at INTEGER NOT NULL,
    source_rows INTEGER NOT NULL, replica_rows INTEGER NOT NULL, missing INTEGER NOT NULL,
    extra INTEGER NOT NULL, different INTEGER NOT NULL, verified_through INTEGER,
    PRIMARY KEY (source, table_name)
);
"#;

/// The SQLite warehouse.
pub struct SqliteWarehouse {
    conn: Mutex<Connection>,
}

/// A quoted SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The local table name of a BigQuery table: `dataset.table`.
pub fn local_name(t: &TableRef) -> String {
    format!("{}.{}", t.dataset, t.table)
}

fn sql_type(t: BqType) -> &'static str {
    match t {
        BqType::Bool | BqType::Int64 => "INTEGER",
        BqType::Float64 => "REAL",
        BqType::Bytes => "BLOB",
        _ => "TEXT",
    }
}

fn db_error(e: rusqlite::Error) -> PortError {
    let busy = matches!(&e, rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked));
    PortError {
        message: format!("warehouse: {e}"),
        retryable: busy,
        later: false,
    }
}

impl SqliteWarehouse {
    /// Opens (or creates) the warehouse file.
    pub fn open(path: &Path) -> Result<SqliteWarehouse, PortError> {
        let conn = Connection::open(path).map_err(db_error)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; PRAGMA busy_timeout = 5000;
             PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 20000;",
        )
        .map_err(db_error)?;
        // Dead-letter tables from before `repeats` get it (the index in LEDGER needs none).
        let has_repeats = conn
            .prepare("SELECT repeats FROM _ferry_dlq LIMIT 0")
            .is_ok();
        if !has_repeats && conn.prepare("SELECT id FROM _ferry_dlq LIMIT 0").is_ok() {
            conn.execute_batch(
                "ALTER TABLE _ferry_dlq ADD COLUMN repeats INTEGER NOT NULL DEFAULT 1",
            )
            .map_err(db_error)?;
        }
        // Event tables from before `warnings` get it.
        let has_warnings = conn
            .prepare("SELECT warnings FROM _ferry_events LIMIT 0")
            .is_ok();
        if !has_warnings && conn.prepare("SELECT at FROM _ferry_events LIMIT 0").is_ok() {
            conn.execute_batch("ALTER TABLE _ferry_events ADD COLUMN warnings TEXT")
                .map_err(db_error)?;
        }
        conn.execute_batch(LEDGER).map_err(db_error)?;
        Ok(SqliteWarehouse {
            conn: Mutex::new(conn),
        })
    }

    /// Runs `f` with the connection.
    pub fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, PortError>,
    ) -> Result<T, PortError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| PortError::permanent("warehouse lock poisoned"))?;
        f(&conn)
    }

    /// The schema stored for a local table.
    pub fn stored_schema(conn: &Connection, table: &str) -> Result<Option<TableSchema>, PortError> {
        let text: Option<String> = conn
            .query_row(
                "SELECT fields FROM _ferry_schemas WHERE table_name = ?1",
                [table],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_error)?;
        text.map(|t| serde_json::from_str(&t).map(|fields| TableSchema { fields }))
            .transpose()
            .map_err(|e| PortError::permanent(format!("stored schema of {table}: {e}")))
    }

    /// Whether an object version's job base is in the ledger.
    pub fn is_loaded(&self, job_base: &str) -> Result<bool, PortError> {
        self.exists("SELECT 1 FROM _ferry_loads WHERE job_base = ?1", job_base)
    }

    /// Whether a skip of `key` was recorded before.
    pub fn was_skipped(&self, key: &str) -> Result<bool, PortError> {
        self.exists(
            "SELECT 1 FROM _ferry_events WHERE key = ?1 AND kind = 'skipped' LIMIT 1",
            key,
        )
    }

    fn exists(&self, sql: &str, param: &str) -> Result<bool, PortError> {
        self.with_conn(|c| {
            c.query_row(sql, [param], |_| Ok(()))
                .optional()
                .map(|o| o.is_some())
                .map_err(db_error)
        })
    }
}

/// Creates `table` with `fields`, or adds the ones it lacks; records the schema.
fn ensure_table(
    conn: &Connection,
    table: &str,
    fields: &[BqField],
    primary_key: &[String],
) -> Result<(), PortError> {
    let existing: Vec<String> = {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT name FROM pragma_table_info({})",
                sql_string(table)
            ))
            .map_err(db_error)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)?
    };
    if existing.is_empty() {
        let mut cols: Vec<String> = fields
            .iter()
            .map(|f| format!("{} {}", quote(&f.name), sql_type(f.bq_type)))
            .collect();
        if !primary_key.is_empty() {
            cols.push(format!(
                "PRIMARY KEY ({})",
                primary_key
                    .iter()
                    .map(|k| quote(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        conn.execute_batch(&format!(
            "CREATE TABLE {} ({})",
            quote(table),
            cols.join(", ")
        ))
        .map_err(db_error)?;
    } else {
        for f in fields
            .iter()
            .filter(|f| !existing.iter().any(|e| e.eq_ignore_ascii_case(&f.name)))
        {
            conn.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                quote(table),
                quote(&f.name),
                sql_type(f.bq_type)
            ))
            .map_err(db_error)?;
        }
    }
    // The stored schema only grows: a file of a batch may lack a column another file of the
    // same batch added (BigQuery's table keeps it too).
    let mut merged = SqliteWarehouse::stored_schema(conn, table)?
        .map(|s| s.fields)
        .unwrap_or_default();
    for f in fields {
        if !merged.iter().any(|m| m.name.eq_ignore_ascii_case(&f.name)) {
            merged.push(f.clone());
        }
    }
    let json = serde_json::to_string(&merged).map_err(|e| PortError::permanent(e.to_string()))?;
    conn.execute(
        "INSERT OR REPLACE INTO _ferry_schemas (table_name, fields) VALUES (?1, ?2)",
        params![table, json],
    )
    .map_err(db_error)?;
    Ok(())
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The value of row `row` of `array` as SQLite stores it.
fn sql_value(array: &dyn Array, row: usize) -> Sql {
    if array.is_null(row) {
        return Sql::Null;
    }
    match array.data_type() {
        DataType::Boolean => Sql::Integer(i64::from(array.as_boolean().value(row))),
        DataType::Int32 => Sql::Integer(i64::from(array.as_primitive::<Int32Type>().value(row))),
        DataType::Int64 => Sql::Integer(array.as_primitive::<Int64Type>().value(row)),
        DataType::Float32 => Sql::Real(f64::from(array.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => Sql::Real(array.as_primitive::<Float64Type>().value(row)),
        DataType::Binary => Sql::Blob(array.as_binary::<i32>().value(row).to_vec()),
        DataType::LargeBinary => Sql::Blob(array.as_binary::<i64>().value(row).to_vec()),
        DataType::FixedSizeBinary(_) => Sql::Blob(array.as_fixed_size_binary().value(row).to_vec()),
        DataType::Utf8 => Sql::Text(array.as_string::<i32>().value(row).to_owned()),
        _ => match canonical::value(array, row) {
            Json::String(s) => Sql::Text(s),
            Json::Bool(b) => Sql::Integer(i64::from(b)),
            Json::Number(n) => n
                .as_i64()
                .map_or_else(|| Sql::Real(n.as_f64().unwrap_or(0.0)), Sql::Integer),
            _ => Sql::Null,
        },
    }
}

fn insert_file(conn: &Connection, table: &str, file: &Converted) -> Result<u64, PortError> {
    let unreadable =
        |e: &dyn std::fmt::Display| PortError::permanent(format!("converted file unreadable: {e}"));
    let reader = ferry_convert::RangeReader::new(file.source()?);
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader)
        .map_err(|e| unreadable(&e))?
        .with_batch_size(BATCH);
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| quote(f.name()))
        .collect();
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        quote(table),
        names.join(", "),
        marks.join(", ")
    );
    let mut stmt = conn.prepare(&sql).map_err(db_error)?;
    let mut rows = 0u64;
    for batch in builder.build().map_err(|e| unreadable(&e))? {
        let batch: RecordBatch = batch.map_err(|e| unreadable(&e))?;
        for row in 0..batch.num_rows() {
            let values = batch.columns().iter().map(|c| sql_value(c.as_ref(), row));
            stmt.execute(rusqlite::params_from_iter(values))
                .map_err(db_error)?;
        }
        rows += batch.num_rows() as u64;
    }
    Ok(rows)
}

/// Removes the replica's rows older than the run start `run` (see `ferry_core::sql`, "Load
/// runs"): tombstoned at the run's start, or flagged in a soft-delete replica.
fn rebuild(
    conn: &Connection,
    table: &TableMapping,
    replica: &str,
    run: &str,
) -> Result<(), PortError> {
    let keys: Vec<String> = table.primary_key.iter().map(|k| quote(k)).collect();
    let key_list = keys.join(", ");
    let (ts, seq, cs, row) = (
        quote(meta::COMMIT_TS),
        quote(meta::FILE_SEQ),
        quote(meta::CHANGE_SEQ),
        quote(meta::ROW),
    );
    let rp = quote(replica);
    let tb = quote(&format!("{replica}__ferry_tombstones"));
    let statements = if table.soft_delete {
        vec![format!(
            "UPDATE {rp} SET _ferry_deleted = 1, {seq} = ?1, {cs} = '', {row} = -1 WHERE {seq} < ?1"
        )]
    } else {
        vec![
            format!(
                "DELETE FROM {tb} WHERE ({key_list}) IN (SELECT {key_list} FROM {rp} WHERE {seq} < ?1)"
            ),
            format!(
                "INSERT INTO {tb} ({key_list}, {ts}, {seq}, {cs}, {row}) SELECT {key_list}, {ts}, ?1, '', -1 FROM {rp} WHERE {seq} < ?1"
            ),
            format!("DELETE FROM {rp} WHERE {seq} < ?1"),
        ]
    };
    for sql in statements {
        conn.execute(&sql, [run]).map_err(db_error)?;
    }
    Ok(())
}

/// The replica's columns: ferry's metadata, the `_ferry_deleted` flag, then the data columns.
fn replica_fields(schema: &TableSchema) -> Vec<BqField> {
    let mut fields: Vec<BqField> = schema.fields.clone();
    let at = fields
        .iter()
        .take_while(|f| f.name.starts_with(ferry_core::names::METADATA_PREFIX))
        .count();
    fields.insert(
        at,
        BqField {
            name: "_ferry_deleted".into(),
            bq_type: BqType::Bool,
            mode: ferry_core::schema::FieldMode::Required,
            description: Some(
                "ferry: the row was deleted at the source (soft-delete tables only keep such rows)"
                    .into(),
            ),
        },
    );
    fields
}

impl Warehouse for SqliteWarehouse {
    fn table_schema(&self, table: &TableMapping) -> Result<Option<TableSchema>, PortError> {
        self.with_conn(|c| SqliteWarehouse::stored_schema(c, &local_name(&table.changelog)))
    }

    fn load(&self, req: &LoadRequest<'_>) -> Result<LoadOutcome, PortError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| PortError::permanent("warehouse lock poisoned"))?;
        let tx = conn.transaction().map_err(db_error)?;
        let base = req.job_id.base();
        let done: Option<String> = tx
            .query_row(
                "SELECT job_id FROM _ferry_loads WHERE job_base = ?1",
                [base],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_error)?;
        if let Some(job_id) = done {
            return Ok(LoadOutcome::AlreadyLoaded { job_id });
        }
        let changelog = local_name(&req.table.changelog);
        ensure_table(&tx, &changelog, &req.schema.fields, &[])?;
        if let Some(replica) = &req.table.replica {
            ensure_table(
                &tx,
                &local_name(replica),
                &replica_fields(req.schema),
                &req.table.primary_key,
            )?;
        }
        let rows = insert_file(&tx, &changelog, req.file)?;
        let job_id = req.job_id.to_string();
        tx.execute(
            "INSERT INTO _ferry_loads (job_base, job_id, source, table_name, bucket, key, file_seq, rows, commit_ts_max, loaded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                base,
                job_id,
                req.source.name,
                req.table.source_table(),
                req.bucket,
                req.object.key,
                req.file_seq,
                rows as i64,
                req.commit_ts_max,
                ferry_pipeline::now_micros()
            ],
        )
        .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        Ok(LoadOutcome::Loaded { job_id })
    }

    fn apply(&self, table: &TableMapping) -> Result<u64, PortError> {
        let Some(replica) = &table.replica else {
            return Ok(0);
        };
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| PortError::permanent("warehouse lock poisoned"))?;
        let tx = conn.transaction().map_err(db_error)?;
        let changelog = local_name(&table.changelog);
        let replica = local_name(replica);
        let Some(schema) = SqliteWarehouse::stored_schema(&tx, &changelog)? else {
            return Ok(0);
        };
        let last: i64 = tx
            .query_row(
                "SELECT last_rowid FROM _ferry_applied WHERE table_name = ?1",
                [&changelog],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_error)?
            .unwrap_or(0);
        let max: i64 = tx
            .query_row(
                &format!("SELECT coalesce(max(rowid), 0) FROM {}", quote(&changelog)),
                [],
                |r| r.get(0),
            )
            .map_err(db_error)?;
        if max <= last {
            return Ok(0);
        }
        let keys: Vec<String> = table.primary_key.iter().map(|k| quote(k)).collect();
        let key_list = keys.join(", ");
        let cols: Vec<String> = schema.fields.iter().map(|f| quote(&f.name)).collect();
        let col_list = cols.join(", ");
        let deleted = format!("{} = '{}'", quote(meta::OP), meta::op::DELETE);
        let (ts, seq, cs, row) = (
            quote(meta::COMMIT_TS),
            quote(meta::FILE_SEQ),
            quote(meta::CHANGE_SEQ),
            quote(meta::ROW),
        );
        let version = |alias: &str| format!("({alias}.{seq}, {alias}.{cs}, {alias}.{row})");
        // Deleted keys keep their version in a tombstone table (soft-delete replicas keep the
        // flagged row instead), so that a late, older insert cannot resurrect them.
        let tombstones = format!("{replica}__ferry_tombstones");
        let key_fields: Vec<BqField> = table
            .primary_key
            .iter()
            .filter_map(|k| schema.field(k).cloned())
            .chain(
                [meta::COMMIT_TS, meta::FILE_SEQ, meta::CHANGE_SEQ, meta::ROW]
                    .iter()
                    .filter_map(|m| schema.field(m).cloned()),
            )
            .collect();
        ensure_table(&tx, &tombstones, &key_fields, &table.primary_key)?;
        // Load runs, as the BigQuery apply keeps them (`ferry_core::sql`, "Load runs"): the run
        // starts among the new rows are recorded first; changes older than the newest are
        // ignored, and the replica's older rows are removed.
        let runs = format!("{replica}__ferry_runs");
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {rt} ({seq} TEXT PRIMARY KEY);
             INSERT OR IGNORE INTO {rt} ({seq})
               SELECT DISTINCT {seq} FROM {cl} WHERE rowid > {last} AND rowid <= {max} AND {start};",
            rt = quote(&runs),
            cl = quote(&changelog),
            start = ferry_core::key::run_start_sql(&seq),
        ))
        .map_err(db_error)?;
        let newest_run = format!("ifnull((SELECT max({seq}) FROM {}), '')", quote(&runs));
        let matches = |alias: &str| {
            keys.iter()
                .map(|k| format!("{alias}.{k} = _ferry_cand.{k}"))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        // The latest change per key among the rows loaded since the last apply wins where it is
        // newer (by `(_ferry_file_seq, _ferry_change_seq, _ferry_row)`, source order, as
        // BigQuery's MERGE orders) than what the replica or a tombstone holds:
        // the work is proportional to the new rows, and the order of arrival never matters.
        tx.execute_batch(&format!(
            "DROP TABLE IF EXISTS temp._ferry_cand;
             CREATE TEMP TABLE _ferry_cand AS SELECT * FROM (
               SELECT c.*, row_number() OVER (PARTITION BY {c_keys} ORDER BY c.{seq} DESC, c.{cs} DESC, c.{row} DESC) AS _ferry_rank,
                      max(c.{op} IN ('LOAD', 'INSERT')) OVER (PARTITION BY {c_keys}) AS _ferry_born
               FROM {cl} c WHERE c.rowid > {last} AND c.rowid <= {max} AND c.{seq} >= {newest_run}
             ) WHERE _ferry_rank = 1;
             DROP TABLE IF EXISTS temp._ferry_orphans;
             CREATE TEMP TABLE _ferry_orphans AS SELECT count(*) AS n FROM temp._ferry_cand
               WHERE {op} = 'UPDATE' AND NOT _ferry_born
                 AND NOT EXISTS (SELECT 1 FROM {rp} r WHERE {r_match})
                 AND NOT EXISTS (SELECT 1 FROM {tb} t WHERE {t_match});
             DELETE FROM temp._ferry_cand
               WHERE EXISTS (SELECT 1 FROM {rp} r WHERE {r_match} AND {r_version} >= {cand})
                  OR EXISTS (SELECT 1 FROM {tb} t WHERE {t_match} AND {t_version} >= {cand});
             DELETE FROM {rp} WHERE ({key_list}) IN (SELECT {key_list} FROM temp._ferry_cand);
             DELETE FROM {tb} WHERE ({key_list}) IN (SELECT {key_list} FROM temp._ferry_cand);
             INSERT INTO {rp} (_ferry_deleted, {col_list}) SELECT {deleted}, {col_list} FROM temp._ferry_cand {keep_deleted};
             INSERT INTO {tb} ({key_list}, {ts}, {seq}, {cs}, {row}) SELECT {key_list}, {ts}, {seq}, {cs}, {row} FROM temp._ferry_cand WHERE {deleted} {tombstone_rows};
             DROP TABLE temp._ferry_cand;",
            cl = quote(&changelog),
            rp = quote(&replica),
            tb = quote(&tombstones),
            c_keys = keys.iter().map(|k| format!("c.{k}")).collect::<Vec<_>>().join(", "),
            r_match = matches("r"),
            t_match = matches("t"),
            r_version = version("r"),
            t_version = version("t"),
            cand = version("_ferry_cand"),
            op = quote(meta::OP),
            keep_deleted = if table.soft_delete { String::new() } else { format!("WHERE NOT ({deleted})") },
            tombstone_rows = if table.soft_delete { "AND 0" } else { "" },
        ))
        .map_err(db_error)?;
        let run: Option<String> = tx
            .query_row(
                &format!(
                    "SELECT {newest_run} WHERE EXISTS (SELECT 1 FROM {cl} WHERE rowid > {last} AND rowid <= {max} AND {start})",
                    cl = quote(&changelog),
                    start = ferry_core::key::run_start_sql(&seq),
                ),
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_error)?;
        if let Some(run) = run {
            rebuild(&tx, table, &replica, &run)?;
        }
        // Updates of keys the replica never held: a primary-key update at the source (DMS
        // writes the new key only, the old one stays) or a row missed earlier. Reported; the
        // reconcile against the source finds the old keys.
        let orphans: i64 = tx
            .query_row("SELECT n FROM temp._ferry_orphans", [], |r| r.get(0))
            .map_err(db_error)?;
        tx.execute_batch("DROP TABLE temp._ferry_orphans")
            .map_err(db_error)?;
        if orphans > 0 {
            let table_name = table.source_table();
            let source: Option<String> = tx
                .query_row(
                    "SELECT source FROM _ferry_loads WHERE table_name = ?1 ORDER BY loaded_at DESC LIMIT 1",
                    [&table_name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_error)?;
            tracing::warn!(table = %table_name, updates = orphans, "updates of keys the replica did not hold (a primary-key update at the source?)");
            tx.execute(
                "INSERT INTO _ferry_events (at, kind, source, table_name, bucket, key, code, rows, bytes, message, warnings)
                 VALUES (?1, 'warning', ?2, ?3, '', '', 'update_of_unknown_key', ?4, 0, ?5, ?5)",
                params![
                    ferry_pipeline::now_micros(),
                    source,
                    table_name,
                    orphans,
                    format!("update_of_unknown_key: {orphans} updates of keys the replica did not hold: a primary-key update at the source leaves its old key (DMS writes only the new one), or a row was missed; reconcile the table against the source")
                ],
            )
            .map_err(db_error)?;
        }
        tx.execute(
            "INSERT INTO _ferry_applied (table_name, last_rowid) VALUES (?1, ?2)
             ON CONFLICT (table_name) DO UPDATE SET last_rowid = excluded.last_rowid",
            params![changelog, max],
        )
        .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        Ok((max - last) as u64)
    }

    fn empty_replica(
        &self,
        _source: &Source,
        table: &TableMapping,
        run_seq: &str,
    ) -> Result<(), PortError> {
        let Some(replica) = &table.replica else {
            return Ok(());
        };
        let replica = local_name(replica);
        let runs = quote(&format!("{replica}__ferry_runs"));
        let seq = quote(meta::FILE_SEQ);
        self.with_conn(|c| {
            c.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {runs} ({seq} TEXT PRIMARY KEY)"
            ))
            .and_then(|()| {
                c.execute(
                    &format!("INSERT OR IGNORE INTO {runs} ({seq}) VALUES (?1)"),
                    [run_seq],
                )
            })
            .map(drop)
            .map_err(db_error)
        })?;
        // Pending rows apply under the new run first (and the tombstone table exists after).
        self.apply(table)?;
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| PortError::permanent("warehouse lock poisoned"))?;
        let tx = conn.transaction().map_err(db_error)?;
        if SqliteWarehouse::stored_schema(&tx, &local_name(&table.changelog))?.is_some() {
            let newest: String = tx
                .query_row(&format!("SELECT max({seq}) FROM {runs}"), [], |r| r.get(0))
                .map_err(db_error)?;
            rebuild(&tx, table, &replica, &newest)?;
        }
        tx.commit().map_err(db_error)
    }

    fn record(&self, e: &StatusEvent) -> Result<(), PortError> {
        self.with_conn(|c| {
            c.execute(
                "INSERT INTO _ferry_events (at, kind, source, table_name, bucket, key, code, job_id, rows, bytes, commit_ts_max, message, warnings)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    e.at_micros,
                    e.kind,
                    e.source,
                    e.table,
                    e.bucket,
                    e.key,
                    e.code,
                    e.job_id,
                    e.rows as i64,
                    e.bytes as i64,
                    e.commit_ts_max,
                    e.message,
                    (!e.warnings.is_empty()).then(|| e.warnings.join("\n"))
                ],
            )
            .map(drop)
            .map_err(db_error)
        })
    }
}

impl DeadLetters for SqliteWarehouse {
    /// One entry per message body (local mode's bodies name the object by bucket, key and size,
    /// so a rewritten object of another size is a new entry): a poison object dead-lettered
    /// again, by a rerun over the same folder, is counted in `repeats` with its latest reason,
    /// not added again.
    fn send(&self, message: &SqsMessage, reason: &str) -> Result<(), PortError> {
        self.with_conn(|c| {
            let now = ferry_pipeline::now_micros();
            let updated = c
                .execute(
                    "UPDATE _ferry_dlq SET repeats = repeats + 1, reason = ?2, at = ?3 WHERE body = ?1",
                    params![message.body, reason, now],
                )
                .map_err(db_error)?;
            if updated > 0 {
                return Ok(());
            }
            c.execute(
                "INSERT INTO _ferry_dlq (message_id, body, reason, receive_count, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![message.message_id, message.body, reason, message.receive_count(), now],
            )
            .map(drop)
            .map_err(db_error)
        })
    }
}

/// The result of an SQL query: column names and rows of JSON values (integers and reals as
/// numbers, text as strings, blobs as base64).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows.
    pub rows: Vec<Vec<Json>>,
}

impl SqliteWarehouse {
    /// Runs one SQL statement and returns its rows.
    pub fn query(&self, sql: &str) -> Result<QueryResult, PortError> {
        self.with_conn(|c| {
            let bad = |e: rusqlite::Error| PortError::permanent(format!("query: {e}"));
            let mut stmt = c.prepare(sql).map_err(bad)?;
            let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
            let n = columns.len();
            let mut rows = Vec::new();
            let mut query = stmt.query([]).map_err(bad)?;
            while let Some(row) = query.next().map_err(bad)? {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    out.push(match row.get::<_, Sql>(i).map_err(bad)? {
                        Sql::Null => Json::Null,
                        Sql::Integer(v) => Json::from(v),
                        Sql::Real(v) => Json::from(v),
                        Sql::Text(s) => Json::String(s),
                        Sql::Blob(b) => Json::String(canonical::base64(&b)),
                    });
                }
                rows.push(out);
            }
            Ok(QueryResult { columns, rows })
        })
    }
}
