//! The BigQuery SQL ferry runs: DDL for the change-log, replica and tombstone tables, column
//! additions, and the replica MERGE.
//!
//! Everything here is text generation, so that the statements can be read in review, pinned in
//! tests and executed on a BigQuery-dialect engine without a cloud account.
//!
//! # Replica apply
//! A replica holds the latest change per primary key, in source order: `_ferry_file_seq` (when
//! DMS wrote the row's file), then `_ferry_change_seq` (DMS's `AR_H_CHANGE_SEQ`, when the task
//! adds it), then `_ferry_row` (the row's place in its file). Commit timestamps order nothing:
//! MySQL's have whole seconds and record the statement's start, and a full-load row's is when
//! DMS read it, later than the changes captured during the load that must override it. Arrival
//! order never matters: a change wins only where it is newer than what the replica row or the
//! key's tombstone already holds, so rerunning an apply, a duplicated file or a file delivered
//! late changes nothing it should not. Hard deletes leave a tombstone
//! (`<replica>__ferry_tombstones`: the key and the delete's version) so that an older insert
//! arriving after the delete cannot bring the row back; soft-delete replicas keep the row
//! itself, flagged `_ferry_deleted`, which serves the same purpose.
//!
//! # Load runs
//! Each time DMS loads a table (the first load, and every reload) it writes `LOAD00000001`
//! first. Its `_ferry_file_seq` is recorded in `<replica>__ferry_runs`, and every change older
//! than the newest recorded run start is ignored, however late it arrives. Rows already in
//! the replica that are older than the run are removed when the run start is applied
//! (hard deletes: tombstoned at the run's start; soft deletes: flagged); the rows the run
//! delivers are newer than its start and stay.
//!
//! An apply reads only the change-log rows of the files it is given, within their commit-time
//! range (so BigQuery prunes the change log to the partitions those files touch).

use std::fmt::Write as _;

use crate::bqtype::BqType;
use crate::mapping::{ColumnHint, Granularity, TableMapping, TableRef};
use crate::schema::{BqField, FieldMode, TableSchema, meta};

/// The replica's soft-delete flag (present in every replica; `true` only in soft-delete mode).
pub const DELETED: &str = "_ferry_deleted";

/// The replica's flag for a row whose JSON column text did not parse (replicas of tables with
/// JSON columns only).
pub const INVALID_JSON: &str = "_ferry_invalid_json";

/// A backtick-quoted identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// A backtick-quoted `project.dataset.table` path.
pub fn table_path(t: &TableRef) -> String {
    format!(
        "{}.{}.{}",
        ident(&t.project),
        ident(&t.dataset),
        ident(&t.table)
    )
}

/// A single-quoted string literal.
pub fn string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The tombstone table of a replica.
pub fn tombstones_of(replica: &TableRef) -> TableRef {
    TableRef {
        project: replica.project.clone(),
        dataset: replica.dataset.clone(),
        table: format!("{}__ferry_tombstones", replica.table),
    }
}

/// A replica's load-run table: the `_ferry_file_seq` of every run start applied (see "Load
/// runs"), so that a change older than the newest run, however late it arrives, is ignored.
pub fn runs_of(replica: &TableRef) -> TableRef {
    TableRef {
        project: replica.project.clone(),
        dataset: replica.dataset.clone(),
        table: format!("{}__ferry_runs", replica.table),
    }
}

fn column_defs(fields: &[BqField]) -> String {
    let mut out = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(",\n  ");
        }
        let _ = write!(out, "{} {}", ident(&f.name), f.bq_type);
        if f.mode == FieldMode::Required {
            out.push_str(" NOT NULL");
        }
        if let Some(d) = &f.description {
            let _ = write!(out, " OPTIONS(description={})", string_literal(d));
        }
    }
    out
}

/// A DDL statement ferry cannot write for a table: the mapping asks for something BigQuery
/// refuses (a partitioning its grammar has no form for, a column the data does not have).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("table {table}: {message}")]
pub struct DdlError {
    /// The source table (`schema.table`).
    pub table: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The `PARTITION BY` clause for a column of type `bq_type` at `granularity`, in the only forms
/// BigQuery accepts (page "Creating partitioned tables"; DDL reference, `partition_expression`):
/// a DATE column as itself (DAY) or `DATE_TRUNC(d, MONTH|YEAR)`; a TIMESTAMP as `DATE(ts)` (DAY)
/// or `TIMESTAMP_TRUNC(ts, HOUR|MONTH|YEAR)`; a DATETIME as `DATE(dt)` (DAY) or
/// `DATETIME_TRUNC(dt, HOUR|MONTH|YEAR)`. An hourly DATE partitioning has no form: an error.
pub fn partition_clause(
    column: &str,
    granularity: Granularity,
    bq_type: BqType,
) -> Result<String, String> {
    let c = ident(column);
    let g = granularity.as_str();
    Ok(match (bq_type, granularity) {
        (BqType::Date, Granularity::Day) => format!("PARTITION BY {c}"),
        (BqType::Date, Granularity::Month | Granularity::Year) => {
            format!("PARTITION BY DATE_TRUNC({c}, {g})")
        }
        (BqType::Date, Granularity::Hour) => {
            return Err(format!(
                "column {column:?} is a DATE, which BigQuery cannot partition by HOUR; use \"partition_granularity\": \"DAY\", \"MONTH\" or \"YEAR\""
            ));
        }
        (BqType::Timestamp | BqType::Datetime, Granularity::Day) => {
            format!("PARTITION BY DATE({c})")
        }
        (BqType::Timestamp, _) => format!("PARTITION BY TIMESTAMP_TRUNC({c}, {g})"),
        (BqType::Datetime, _) => format!("PARTITION BY DATETIME_TRUNC({c}, {g})"),
        (other, _) => {
            return Err(format!(
                "column {column:?} is {other}; BigQuery partitions by a DATE, DATETIME or TIMESTAMP column only"
            ));
        }
    })
}

fn table_partition(
    table: &TableMapping,
    spec: (&str, Granularity),
    schema: &TableSchema,
) -> Result<String, DdlError> {
    let (column, granularity) = spec;
    let error = |message: String| DdlError {
        table: table.source_table(),
        message,
    };
    let field = schema.field(column).ok_or_else(|| {
        error(format!(
            "partition_by names column {column:?}, which the table's files do not have"
        ))
    })?;
    partition_clause(column, granularity, field.bq_type).map_err(error)
}

/// The columns of `wanted` BigQuery can cluster by (page "Creating clustered tables": top-level
/// DATE, BOOL, INT64, NUMERIC, BIGNUMERIC, STRING, TIMESTAMP, DATETIME; never BYTES, FLOAT64,
/// TIME or JSON), at most 4. Columns of other types, or missing from the schema, are left out.
pub fn clusterable(wanted: &[String], schema: &TableSchema) -> Vec<String> {
    wanted
        .iter()
        .filter(|c| schema.field(c).is_some_and(|f| f.bq_type.can_cluster()))
        .take(4)
        .cloned()
        .collect()
}

fn cluster_clause(columns: &[String]) -> String {
    if columns.is_empty() {
        return String::new();
    }
    let cols: Vec<String> = columns.iter().take(4).map(|c| ident(c)).collect();
    format!("\nCLUSTER BY {}", cols.join(", "))
}

/// `<what> schema.table[: the mapping's description]`.
fn described(what: &str, table: &TableMapping) -> String {
    match &table.description {
        Some(d) => format!("{what} {}: {d}", table.source_table()),
        None => format!("{what} {}", table.source_table()),
    }
}

fn cluster_columns(table: &TableMapping) -> Vec<String> {
    if table.cluster_by.is_empty() {
        table.primary_key.iter().take(4).cloned().collect()
    } else {
        table.cluster_by.clone()
    }
}

/// `CREATE TABLE IF NOT EXISTS` for the change log: partitioned by commit day (or the
/// mapping's partition column in change-log mode), clustered by the primary key's clusterable
/// columns.
pub fn create_changelog(table: &TableMapping, schema: &TableSchema) -> Result<String, DdlError> {
    let partition = match (&table.partition, &table.replica) {
        (Some(p), None) => table_partition(table, (&p.column, p.granularity), schema)?,
        _ => table_partition(table, (meta::COMMIT_TS, Granularity::Day), schema)?,
    };
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  {}\n)\n{partition}{}",
        table_path(&table.changelog),
        column_defs(&schema.fields),
        cluster_clause(&clusterable(&cluster_columns(table), schema)),
    );
    let _ = write!(
        sql,
        "\nOPTIONS(description={})",
        string_literal(&described("ferry change log of", table))
    );
    Ok(sql)
}

/// The columns hinted `json`: STRING in the change log (BigQuery loads no JSON column from
/// parquet, page "Work with JSON data"), JSON in the replica, parsed by the apply.
pub fn json_columns(table: &TableMapping) -> Vec<&str> {
    table
        .columns
        .iter()
        .filter(|(_, h)| *h == ColumnHint::Json)
        .map(|(c, _)| c.as_str())
        .collect()
}

/// The replica's columns: the change log's (JSON-hinted ones as JSON), then `_ferry_deleted`,
/// and `_ferry_invalid_json` where the table has JSON columns.
pub fn replica_fields(table: &TableMapping, changelog: &TableSchema) -> Vec<BqField> {
    let json = json_columns(table);
    let mut fields = in_replica(table, &changelog.fields);
    fields.push(BqField {
        name: DELETED.to_owned(),
        bq_type: BqType::Bool,
        mode: FieldMode::Required,
        description: Some("ferry: the row was deleted at the source (soft-delete replicas)".into()),
    });
    if !json.is_empty() {
        fields.push(BqField {
            name: INVALID_JSON.to_owned(),
            bq_type: BqType::Bool,
            mode: FieldMode::Nullable,
            description: Some(
                "ferry: a JSON column's source text did not parse; the column is NULL here and the text is in the change log".into(),
            ),
        });
    }
    fields
}

/// Change-log columns as the replica has them: JSON-hinted ones as JSON, the rest unchanged.
pub fn in_replica(table: &TableMapping, changelog: &[BqField]) -> Vec<BqField> {
    let json = json_columns(table);
    changelog
        .iter()
        .map(|f| match json.contains(&f.name.as_str()) {
            true => BqField {
                bq_type: BqType::Json,
                ..f.clone()
            },
            false => f.clone(),
        })
        .collect()
}

/// `CREATE TABLE IF NOT EXISTS` for a replica, its run table and (hard deletes) its tombstone
/// table.
pub fn create_replica(
    table: &TableMapping,
    changelog: &TableSchema,
) -> Result<Vec<String>, DdlError> {
    let Some(replica) = &table.replica else {
        return Ok(Vec::new());
    };
    let schema = TableSchema {
        fields: replica_fields(table, changelog),
    };
    let partition = match &table.partition {
        Some(p) => format!(
            "\n{}",
            table_partition(table, (&p.column, p.granularity), &schema)?
        ),
        None => String::new(),
    };
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  {}\n){partition}{}\nOPTIONS(description={})",
        table_path(replica),
        column_defs(&schema.fields),
        cluster_clause(&clusterable(&cluster_columns(table), &schema)),
        string_literal(&described("ferry replica of", table)),
    )];
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  {} STRING NOT NULL\n)\nOPTIONS(description={})",
        table_path(&runs_of(replica)),
        ident(meta::FILE_SEQ),
        string_literal(&described("ferry load runs of", table)),
    ));
    if !table.soft_delete {
        let fields: Vec<BqField> = table
            .primary_key
            .iter()
            .filter_map(|k| changelog.field(k).cloned())
            .chain(
                TOMBSTONE_META
                    .iter()
                    .filter_map(|m| changelog.field(m).cloned()),
            )
            .collect();
        let tombstones = TableSchema { fields };
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {}\n){}",
            table_path(&tombstones_of(replica)),
            column_defs(&tombstones.fields),
            cluster_clause(&clusterable(&table.primary_key, &tombstones)),
        ));
    }
    Ok(out)
}

/// One `ALTER TABLE` adding every column a file brings, each `ADD COLUMN IF NOT EXISTS` (one
/// statement per table: BigQuery allows 5 metadata updates per table per 10 s, page "Quotas
/// and limits"). Added columns are always NULLABLE (existing rows have no value). `None` when
/// nothing is added.
pub fn add_columns(table: &TableRef, added: &[BqField]) -> Option<String> {
    if added.is_empty() {
        return None;
    }
    let clauses: Vec<String> = added
        .iter()
        .map(|f| format!("ADD COLUMN IF NOT EXISTS {} {}", ident(&f.name), f.bq_type))
        .collect();
    Some(format!(
        "ALTER TABLE {}\n  {}",
        table_path(table),
        clauses.join(",\n  ")
    ))
}

/// `CREATE SCHEMA IF NOT EXISTS` for a table's dataset: what the writer's `datasets.get`, then
/// `datasets.insert` where missing, amounts to (shown by `ferry bigquery ddl`).
pub fn create_dataset(table: &TableRef, location: Option<&str>) -> String {
    let mut sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {}.{}",
        ident(&table.project),
        ident(&table.dataset)
    );
    if let Some(l) = location {
        let _ = write!(sql, "\nOPTIONS(location={})", string_literal(l));
    }
    sql
}

/// Every statement the writer runs for a table whose files bring `schemas` in apply order (the
/// table's schema after each file): dataset, change log, replica and tombstones from the first,
/// then one `ALTER TABLE` per table for each file that adds columns.
pub fn table_statements(
    table: &TableMapping,
    location: Option<&str>,
    schemas: &[TableSchema],
) -> Result<Vec<String>, DdlError> {
    let Some(first) = schemas.first() else {
        return Ok(Vec::new());
    };
    let mut out = vec![
        create_dataset(&table.changelog, location),
        create_changelog(table, first)?,
    ];
    out.extend(create_replica(table, first)?);
    for pair in schemas.windows(2) {
        let added: Vec<BqField> = pair[1]
            .fields
            .iter()
            .filter(|f| pair[0].field(&f.name).is_none())
            .map(|f| BqField {
                mode: FieldMode::Nullable,
                ..f.clone()
            })
            .collect();
        out.extend(add_columns(&table.changelog, &added));
        if let Some(replica) = &table.replica {
            out.extend(add_columns(replica, &in_replica(table, &added)));
        }
    }
    Ok(out)
}

/// Load jobs into `table` in the last 24 hours, failed ones included (they count against
/// BigQuery's per-table limit too), from the region's `INFORMATION_SCHEMA.JOBS_BY_PROJECT`
/// (needs `bigquery.jobs.listAll` on the project).
pub fn load_jobs_last_day(project: &str, location: &str, table: &TableRef) -> String {
    format!(
        "SELECT COUNT(*) AS jobs FROM {}.{}.INFORMATION_SCHEMA.JOBS_BY_PROJECT\n\
         WHERE creation_time > TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 24 HOUR)\n  \
         AND job_type = 'LOAD'\n  \
         AND destination_table.project_id = {}\n  \
         AND destination_table.dataset_id = {}\n  \
         AND destination_table.table_id = {}",
        ident(project),
        ident(&format!("region-{}", location.to_ascii_lowercase())),
        string_literal(&table.project),
        string_literal(&table.dataset),
        string_literal(&table.table),
    )
}

/// What one apply covers: the change-log files loaded since the last apply, and their commit
/// time range (µs since the epoch) for partition pruning.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplyWindow {
    /// S3 keys of the files (`_ferry_file`). Empty: every row in the time range.
    pub files: Vec<String>,
    /// Earliest commit time among them; `None`: no lower bound.
    pub commit_ts_min: Option<i64>,
    /// Latest commit time among them; `None`: no upper bound.
    pub commit_ts_max: Option<i64>,
    /// Whether the apply rebuilds the replica from a load run (see the module docs).
    pub rebuild: Rebuild,
}

/// Which load run, if any, an apply rebuilds the replica from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rebuild {
    /// None: the window holds no run start.
    No,
    /// The run whose first file has this `_ferry_file_seq` (the newest run start in the window).
    From(String),
    /// The newest run start in the whole change log (a full re-apply).
    Newest,
}

impl ApplyWindow {
    /// The whole change log (a full re-apply), rebuilt from its newest load run.
    pub fn everything() -> ApplyWindow {
        ApplyWindow {
            files: Vec::new(),
            commit_ts_min: None,
            commit_ts_max: None,
            rebuild: Rebuild::Newest,
        }
    }
}

impl ApplyWindow {
    /// A window with nothing in it yet.
    pub fn empty() -> ApplyWindow {
        ApplyWindow {
            files: Vec::new(),
            commit_ts_min: None,
            commit_ts_max: None,
            rebuild: Rebuild::No,
        }
    }

    /// Whether it covers nothing.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.commit_ts_min.is_none()
            && self.commit_ts_max.is_none()
            && self.rebuild == Rebuild::No
    }

    /// Widens this window to cover `other` too: the files of both, the wider commit range, the
    /// newer run start. Beyond [`ApplyWindow::MAX_FILES`] files the file filter is dropped (the
    /// commit range alone bounds the apply: more rows read, the same result).
    pub fn merge(&mut self, other: &ApplyWindow) {
        let union = |a: Option<i64>, b: Option<i64>, min: bool| match (a, b) {
            (Some(a), Some(b)) => Some(if min { a.min(b) } else { a.max(b) }),
            (a, b) => a.or(b),
        };
        let was_empty = self.is_empty();
        // An empty file list on a non-empty window means "every file in the range".
        let unfiltered =
            (!was_empty && self.files.is_empty()) || (!other.is_empty() && other.files.is_empty());
        self.commit_ts_min = union(self.commit_ts_min, other.commit_ts_min, true);
        self.commit_ts_max = union(self.commit_ts_max, other.commit_ts_max, false);
        if unfiltered {
            self.files.clear();
        } else {
            for f in &other.files {
                if !self.files.contains(f) {
                    self.files.push(f.clone());
                }
            }
            if self.files.len() > ApplyWindow::MAX_FILES {
                self.files.clear();
            }
        }
        self.rebuild = match (&self.rebuild, &other.rebuild) {
            (Rebuild::Newest, _) | (_, Rebuild::Newest) => Rebuild::Newest,
            (Rebuild::From(a), Rebuild::From(b)) => Rebuild::From(a.max(b).clone()),
            (Rebuild::From(a), Rebuild::No) | (Rebuild::No, Rebuild::From(a)) => {
                Rebuild::From(a.clone())
            }
            (Rebuild::No, Rebuild::No) => Rebuild::No,
        };
    }

    /// Files one window lists before it falls back to its commit range alone.
    pub const MAX_FILES: usize = 500;
}

fn window_filter(window: &ApplyWindow) -> String {
    let mut conds = Vec::new();
    if let Some(lo) = window.commit_ts_min {
        conds.push(format!(
            "{} >= TIMESTAMP_MICROS({lo})",
            ident(meta::COMMIT_TS)
        ));
    }
    if let Some(hi) = window.commit_ts_max {
        conds.push(format!(
            "{} <= TIMESTAMP_MICROS({hi})",
            ident(meta::COMMIT_TS)
        ));
    }
    if !window.files.is_empty() {
        let files: Vec<String> = window.files.iter().map(|f| string_literal(f)).collect();
        conds.push(format!("{} IN ({})", ident(meta::FILE), files.join(", ")));
    }
    if conds.is_empty() {
        "TRUE".to_owned()
    } else {
        conds.join("\n      AND ")
    }
}

/// `a`'s version ([`meta::VERSION`]) is newer than `b`'s, or as new with `or_equal`.
fn newer(a: &str, b: &str, or_equal: bool) -> String {
    let [seq, cs, row] = meta::VERSION.map(ident);
    let last = if or_equal { ">=" } else { ">" };
    format!(
        "({a}.{seq} > {b}.{seq} OR ({a}.{seq} = {b}.{seq} AND ({a}.{cs} > {b}.{cs} OR ({a}.{cs} = {b}.{cs} AND {a}.{row} {last} {b}.{row}))))"
    )
}

/// A tombstone's columns after the key: the delete's commit time (for reading) and version.
const TOMBSTONE_META: [&str; 4] = [meta::COMMIT_TS, meta::FILE_SEQ, meta::CHANGE_SEQ, meta::ROW];

/// The newest run start recorded for a replica, `''` when none.
fn newest_run(replica: &TableRef) -> String {
    let seq = ident(meta::FILE_SEQ);
    format!(
        "IFNULL((SELECT MAX({seq}) FROM {}), '')",
        table_path(&runs_of(replica))
    )
}

/// The latest change per key among the window's rows that are not older than the newest load
/// run.
fn latest_changes(table: &TableMapping, replica: &TableRef, window: &ApplyWindow) -> String {
    let keys: Vec<String> = table.primary_key.iter().map(|k| ident(k)).collect();
    let [seq, cs, row] = meta::VERSION.map(ident);
    format!(
        "SELECT * FROM {cl}\n    WHERE {filter}\n      AND {seq} >= {run}\n    QUALIFY ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {seq} DESC, {cs} DESC, {row} DESC) = 1",
        cl = table_path(&table.changelog),
        filter = window_filter(window),
        run = newest_run(replica),
        keys = keys.join(", "),
    )
}

fn key_match(a: &str, b: &str, keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("{a}.{k} = {b}.{k}", k = ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The statements that apply a window of the change log to the replica, in order. Each is
/// idempotent on its own, so a failure between them is repaired by running them all again.
/// Empty in change-log mode.
pub fn apply_statements(
    table: &TableMapping,
    changelog: &TableSchema,
    window: &ApplyWindow,
) -> Vec<String> {
    let Some(replica) = &table.replica else {
        return Vec::new();
    };
    let keys = &table.primary_key;
    let op = ident(meta::OP);
    let is_delete = format!("S.{op} = {}", string_literal(meta::op::DELETE));
    let cols: Vec<String> = changelog.fields.iter().map(|f| ident(&f.name)).collect();
    let deleted = ident(DELETED);
    let mut out = record_run(table, replica, window);
    let mut source = latest_changes(table, replica, window);
    if !table.soft_delete {
        let tomb = tombstones_of(replica);
        let tomb_cols: Vec<String> = keys
            .iter()
            .map(|k| ident(k))
            .chain(TOMBSTONE_META.map(ident))
            .collect();
        // 1. Remember the newest delete per key.
        out.push(format!(
            "MERGE {tp} T\nUSING (\n  SELECT * FROM (\n    {latest}\n  ) WHERE {op} = {del}\n) S\nON {on}\nWHEN MATCHED AND {newer} THEN UPDATE SET {set}\nWHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({vals})",
            tp = table_path(&tomb),
            latest = source,
            del = string_literal(meta::op::DELETE),
            on = key_match("T", "S", keys),
            newer = newer("S", "T", false),
            set = TOMBSTONE_META
                .map(|c| format!("{c} = S.{c}", c = ident(c)))
                .join(", "),
            cols = tomb_cols.join(", "),
            vals = tomb_cols
                .iter()
                .map(|c| format!("S.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
        // Changes older than a key's tombstone are dropped (the delete itself passes: equal).
        source = format!(
            "SELECT C.* FROM (\n    {source}\n  ) C\n  LEFT JOIN {tp} D ON {on}\n  WHERE D.{seq} IS NULL OR {newer_eq}",
            tp = table_path(&tomb),
            on = key_match("D", "C", keys),
            seq = ident(meta::FILE_SEQ),
            newer_eq = newer("C", "D", true),
        );
    }
    // 2. The latest change per key wins where it is newer than the replica's row. JSON columns
    // arrive as text and are parsed here; text that does not parse is NULL in the replica, the
    // row is flagged, and the change log keeps the text.
    let json = json_columns(table);
    let value = |f: &BqField| {
        let c = ident(&f.name);
        if json.contains(&f.name.as_str()) {
            format!("SAFE.PARSE_JSON(S.{c})")
        } else {
            format!("S.{c}")
        }
    };
    let mut extra_cols = vec![deleted.clone()];
    let mut extra_vals = vec![is_delete.clone()];
    if !json.is_empty() {
        let invalid: Vec<String> = json
            .iter()
            .map(|c| {
                let c = ident(c);
                format!("(S.{c} IS NOT NULL AND SAFE.PARSE_JSON(S.{c}) IS NULL)")
            })
            .collect();
        extra_cols.push(ident(INVALID_JSON));
        extra_vals.push(format!("({})", invalid.join(" OR ")));
    }
    let vals: Vec<String> = changelog.fields.iter().map(value).collect();
    let set: Vec<String> = cols
        .iter()
        .chain(&extra_cols)
        .zip(vals.iter().chain(&extra_vals))
        .map(|(c, v)| format!("{c} = {v}"))
        .collect();
    let insert_cols = cols
        .iter()
        .chain(&extra_cols)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let insert_vals = vals
        .iter()
        .chain(&extra_vals)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let mut merge = format!(
        "MERGE {rp} T\nUSING (\n  {source}\n) S\nON {on}\n",
        rp = table_path(replica),
        on = key_match("T", "S", keys),
    );
    let newer_than_row = newer("S", "T", false);
    if table.soft_delete {
        let _ = write!(
            merge,
            "WHEN MATCHED AND {newer_than_row} THEN UPDATE SET {set}\nWHEN NOT MATCHED THEN INSERT ({insert_cols}) VALUES ({insert_vals})",
            set = set.join(", "),
        );
    } else {
        let _ = write!(
            merge,
            "WHEN MATCHED AND {is_delete} AND {newer_than_row} THEN DELETE\nWHEN MATCHED AND {newer_than_row} THEN UPDATE SET {set}\nWHEN NOT MATCHED AND NOT ({is_delete}) THEN INSERT ({insert_cols}) VALUES ({insert_vals})",
            set = set.join(", "),
        );
    }
    out.push(merge);
    out.extend(rebuild_statements(table, replica, window));
    out
}

/// The live view of a replica: `<replica>_live`.
pub fn live_view_of(replica: &TableRef) -> TableRef {
    TableRef {
        project: replica.project.clone(),
        dataset: replica.dataset.clone(),
        table: format!("{}_live", replica.table),
    }
}

/// How far back the live view reads the change log: long enough to hold every change the
/// replica may not have yet (four apply intervals, at least two hours).
pub fn live_lookback(apply_every: std::time::Duration) -> std::time::Duration {
    (apply_every * 4).max(std::time::Duration::from_secs(2 * 3600))
}

/// `CREATE OR REPLACE VIEW <replica>_live`: the replica with the change log's recent rows laid
/// over it, so analysts read the newest state whatever the apply interval. Per key the newest
/// version wins among the replica's row and the change-log rows of the last `lookback`
/// (changes the replica already has are the same version, and lose nothing); a key's newest
/// change that is a delete hides it (soft-delete replicas show it flagged, as the replica
/// does); changes older than the key's tombstone or than the newest load run (recorded, or
/// recent in the change log and not applied yet) are left out, as the apply leaves them out.
/// Its columns are the replica's, from `changelog` (the change log's schema). Reading it scans
/// the replica, its tombstones and the change log's partitions of the last `lookback`.
pub fn live_view(
    table: &TableMapping,
    changelog: &TableSchema,
    lookback: std::time::Duration,
) -> Option<String> {
    let replica = table.replica.as_ref()?;
    let json = json_columns(table);
    let keys: Vec<String> = table.primary_key.iter().map(|k| ident(k)).collect();
    let [seq, cs, row] = meta::VERSION.map(ident);
    let ts = ident(meta::COMMIT_TS);
    let since = format!(
        "{ts} >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL {} SECOND)",
        lookback.as_secs()
    );
    let run = format!(
        "GREATEST({recorded}, IFNULL((SELECT MAX({seq}) FROM {cl} WHERE {since} AND {start}), ''))",
        recorded = newest_run(replica),
        cl = table_path(&table.changelog),
        start = crate::key::run_start_sql(&seq),
    );
    let cols: Vec<String> = changelog.fields.iter().map(|f| ident(&f.name)).collect();
    let mut replica_cols = cols.clone();
    replica_cols.push(ident(DELETED));
    let mut change_cols: Vec<String> = changelog
        .fields
        .iter()
        .map(|f| {
            let c = ident(&f.name);
            if json.contains(&f.name.as_str()) {
                format!("SAFE.PARSE_JSON(C.{c}) AS {c}")
            } else {
                format!("C.{c}")
            }
        })
        .collect();
    change_cols.push(format!(
        "C.{} = {} AS {}",
        ident(meta::OP),
        string_literal(meta::op::DELETE),
        ident(DELETED)
    ));
    if !json.is_empty() {
        replica_cols.push(ident(INVALID_JSON));
        let invalid: Vec<String> = json
            .iter()
            .map(|c| {
                let c = ident(c);
                format!("(C.{c} IS NOT NULL AND SAFE.PARSE_JSON(C.{c}) IS NULL)")
            })
            .collect();
        change_cols.push(format!(
            "({}) AS {}",
            invalid.join(" OR "),
            ident(INVALID_JSON)
        ));
    }
    let (tomb_join, tomb_filter) = if table.soft_delete {
        (String::new(), String::new())
    } else {
        (
            format!(
                "
    LEFT JOIN {tp} D ON {on}",
                tp = table_path(&tombstones_of(replica)),
                on = key_match("D", "C", &table.primary_key),
            ),
            format!(
                "
      AND (D.{seq} IS NULL OR {newer_eq})",
                newer_eq = newer("C", "D", true)
            ),
        )
    };
    let shown = if table.soft_delete {
        String::new()
    } else {
        format!(" AND NOT {}", ident(DELETED))
    };
    let rank = ident("_ferry_live_rank");
    let mut out = String::new();
    let _ = write!(
        out,
        "CREATE OR REPLACE VIEW {view}
OPTIONS(description={desc})
AS
SELECT * EXCEPT({rank}) FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {seq} DESC, {cs} DESC, {row} DESC) AS {rank}
  FROM (
    SELECT {rcols} FROM {rp}
    WHERE {seq} >= {run}
    UNION ALL
    SELECT {ccols}
    FROM {cl} C{tomb_join}
    WHERE C.{since}
      AND C.{seq} >= {run}{tomb_filter}
  )
)
WHERE {rank} = 1{shown}",
        view = table_path(&live_view_of(replica)),
        desc = string_literal(&described("ferry live view (the replica with the change log's newest rows laid over it) of", table)),
        keys = keys.join(", "),
        rcols = replica_cols.join(", "),
        rp = table_path(replica),
        ccols = change_cols.join(", "),
        cl = table_path(&table.changelog),
        since = since,
    );
    Some(out)
}

/// The statements that empty a replica as of a run start `run_seq` (`on_truncate: empty`):
/// the run is recorded, and every row older than the newest run is removed (tombstoned) or,
/// in soft-delete replicas, flagged. Changes written after it apply as usual. Idempotent.
pub fn empty_statements(table: &TableMapping, run_seq: &str) -> Vec<String> {
    let Some(replica) = &table.replica else {
        return Vec::new();
    };
    let window = ApplyWindow {
        files: Vec::new(),
        commit_ts_min: None,
        commit_ts_max: None,
        rebuild: Rebuild::From(run_seq.to_owned()),
    };
    let mut out = record_run(table, replica, &window);
    out.extend(rebuild_statements(table, replica, &window));
    out
}

/// Records the window's run start, if any, in the replica's run table (before the MERGE, so
/// that it already ignores what the run replaces).
fn record_run(table: &TableMapping, replica: &TableRef, window: &ApplyWindow) -> Vec<String> {
    let seq = ident(meta::FILE_SEQ);
    let run = match &window.rebuild {
        Rebuild::No => return Vec::new(),
        Rebuild::From(s) => string_literal(s),
        Rebuild::Newest => format!(
            "(SELECT MAX({seq}) FROM {cl} WHERE {start})",
            cl = table_path(&table.changelog),
            start = crate::key::run_start_sql(&seq),
        ),
    };
    vec![format!(
        "MERGE {rt} T\nUSING (SELECT {run} AS {seq}) S\nON T.{seq} = S.{seq}\nWHEN NOT MATCHED AND S.{seq} IS NOT NULL THEN INSERT ({seq}) VALUES (S.{seq})",
        rt = table_path(&runs_of(replica)),
    )]
}

/// After a window holding a run start: the replica's rows older than the newest run are
/// removed, tombstoned at the run's start (hard deletes) or flagged deleted (soft deletes).
/// Rows the run delivers again are newer than its start and stay. Both statements are
/// idempotent.
fn rebuild_statements(
    table: &TableMapping,
    replica: &TableRef,
    window: &ApplyWindow,
) -> Vec<String> {
    if window.rebuild == Rebuild::No {
        return Vec::new();
    }
    let run = newest_run(replica);
    let [ts, seq, cs, row] = TOMBSTONE_META.map(ident);
    let older = format!("{seq} < {run}");
    if table.soft_delete {
        return vec![format!(
            "UPDATE {rp} SET {deleted} = TRUE, {seq} = {run}, {cs} = '', {row} = -1\nWHERE {older}",
            rp = table_path(replica),
            deleted = ident(DELETED),
        )];
    }
    let keys: Vec<String> = table.primary_key.iter().map(|k| ident(k)).collect();
    vec![
        format!(
            "MERGE {tp} T\nUSING (\n  SELECT {key_list}, {ts}, {run} AS {seq} FROM {rp} WHERE {older}\n) S\nON {on}\nWHEN MATCHED AND T.{seq} < S.{seq} THEN UPDATE SET {ts} = S.{ts}, {seq} = S.{seq}, {cs} = '', {row} = -1\nWHEN NOT MATCHED THEN INSERT ({key_list}, {ts}, {seq}, {cs}, {row}) VALUES ({s_keys}, S.{ts}, S.{seq}, '', -1)",
            tp = table_path(&tombstones_of(replica)),
            rp = table_path(replica),
            key_list = keys.join(", "),
            on = key_match("T", "S", &table.primary_key),
            s_keys = keys
                .iter()
                .map(|k| format!("S.{k}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        format!("DELETE FROM {rp} WHERE {older}", rp = table_path(replica)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{Catalog, MappingFile};

    fn mapping(tables: &str) -> Vec<TableMapping> {
        let text = format!(
            r#"{{"source": {{"name": "s", "bucket": "dms-bucket", "folder": "f"}},
                "bigquery": {{"project": "project-p", "dataset": "d"}},
                "tables": {{ {tables} }} }}"#
        );
        let catalog = Catalog::from_files(&[MappingFile {
            path: "s.json".into(),
            text,
        }])
        .unwrap_or_else(|p| panic!("{p:?}"));
        catalog.sources()[0].tables.clone()
    }

    fn field(name: &str, t: BqType) -> BqField {
        BqField {
            name: name.into(),
            bq_type: t,
            mode: FieldMode::Nullable,
            description: None,
        }
    }

    fn with_meta(cols: &[(&str, BqType)]) -> TableSchema {
        let mut fields: Vec<BqField> = [
            (meta::OP, BqType::String),
            (meta::COMMIT_TS, BqType::Timestamp),
            (meta::FILE_SEQ, BqType::String),
            (meta::CHANGE_SEQ, BqType::String),
            (meta::ROW, BqType::Int64),
            (meta::FILE, BqType::String),
        ]
        .iter()
        .map(|(n, t)| field(n, *t))
        .collect();
        fields.extend(cols.iter().map(|(n, t)| field(n, *t)));
        TableSchema { fields }
    }

    #[test]
    fn partition_clauses_for_every_type_and_granularity() {
        use Granularity::*;
        let golden = [
            (BqType::Date, Day, Some("PARTITION BY `c`")),
            (
                BqType::Date,
                Month,
                Some("PARTITION BY DATE_TRUNC(`c`, MONTH)"),
            ),
            (
                BqType::Date,
                Year,
                Some("PARTITION BY DATE_TRUNC(`c`, YEAR)"),
            ),
            (BqType::Date, Hour, None),
            (BqType::Timestamp, Day, Some("PARTITION BY DATE(`c`)")),
            (
                BqType::Timestamp,
                Hour,
                Some("PARTITION BY TIMESTAMP_TRUNC(`c`, HOUR)"),
            ),
            (
                BqType::Timestamp,
                Month,
                Some("PARTITION BY TIMESTAMP_TRUNC(`c`, MONTH)"),
            ),
            (
                BqType::Timestamp,
                Year,
                Some("PARTITION BY TIMESTAMP_TRUNC(`c`, YEAR)"),
            ),
            (BqType::Datetime, Day, Some("PARTITION BY DATE(`c`)")),
            (
                BqType::Datetime,
                Hour,
                Some("PARTITION BY DATETIME_TRUNC(`c`, HOUR)"),
            ),
            (
                BqType::Datetime,
                Month,
                Some("PARTITION BY DATETIME_TRUNC(`c`, MONTH)"),
            ),
            (
                BqType::Datetime,
                Year,
                Some("PARTITION BY DATETIME_TRUNC(`c`, YEAR)"),
            ),
            (BqType::Int64, Day, None),
            (BqType::String, Month, None),
        ];
        for (t, g, want) in golden {
            let got = partition_clause("c", g, t);
            match want {
                Some(w) => assert_eq!(got.as_deref(), Ok(w), "{t} {g:?}"),
                None => assert!(got.is_err(), "{t} {g:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn ddl_fails_for_a_partition_the_types_do_not_allow() {
        let t = &mapping(
            r#""g.days": {"mode": "changelog", "partition_by": "day", "partition_granularity": "HOUR"}"#,
        )[0];
        let e = create_changelog(t, &with_meta(&[("day", BqType::Date)])).unwrap_err();
        assert!(
            e.message.contains("DATE") && e.message.contains("HOUR"),
            "{e}"
        );
        let e = create_changelog(t, &with_meta(&[])).unwrap_err();
        assert!(e.message.contains("do not have"), "{e}");
    }

    #[test]
    fn cluster_by_leaves_out_types_bigquery_cannot_cluster() {
        let t = &mapping(r#""g.k": {"primary_key": ["blob", "f", "t", "id"]}"#)[0];
        let schema = with_meta(&[
            ("blob", BqType::Bytes),
            ("f", BqType::Float64),
            ("t", BqType::Time),
            ("id", BqType::Int64),
        ]);
        let ddl = create_changelog(t, &schema).unwrap();
        assert!(ddl.contains("CLUSTER BY `id`\n"), "{ddl}");
        let replica = create_replica(t, &schema).unwrap();
        assert!(
            replica
                .iter()
                .filter(|d| !d.contains("__ferry_runs"))
                .all(|d| d.contains("CLUSTER BY `id`")),
            "{replica:?}"
        );
        let only_bytes = &mapping(r#""g.k": {"primary_key": ["blob"]}"#)[0];
        let ddl = create_changelog(only_bytes, &with_meta(&[("blob", BqType::Bytes)])).unwrap();
        assert!(!ddl.contains("CLUSTER BY"), "{ddl}");
    }

    #[test]
    fn column_additions_are_one_statement() {
        let t = TableRef {
            project: "p".into(),
            dataset: "d".into(),
            table: "t".into(),
        };
        assert_eq!(add_columns(&t, &[]), None);
        let sql =
            add_columns(&t, &[field("a", BqType::Int64), field("b", BqType::String)]).unwrap();
        assert_eq!(
            sql,
            "ALTER TABLE `p`.`d`.`t`\n  ADD COLUMN IF NOT EXISTS `a` INT64,\n  ADD COLUMN IF NOT EXISTS `b` STRING"
        );
    }

    #[test]
    fn json_columns_are_text_in_the_change_log_and_parsed_into_the_replica() {
        let t = &mapping(r#""g.docs": {"primary_key": ["id"], "columns": {"doc": "json"}}"#)[0];
        let schema = with_meta(&[("id", BqType::Int64), ("doc", BqType::String)]);
        let fields = replica_fields(t, &schema);
        let doc = fields.iter().find(|f| f.name == "doc").unwrap();
        assert_eq!(doc.bq_type, BqType::Json);
        assert!(fields.iter().any(|f| f.name == INVALID_JSON));
        let merge = apply_statements(t, &schema, &ApplyWindow::everything())
            .into_iter()
            .find(|s| s.starts_with("MERGE `project-p`.`d`.`docs` T"))
            .unwrap();
        assert!(
            merge.contains("`doc` = SAFE.PARSE_JSON(S.`doc`)"),
            "{merge}"
        );
        assert!(
            merge.contains("(S.`doc` IS NOT NULL AND SAFE.PARSE_JSON(S.`doc`) IS NULL)"),
            "{merge}"
        );
        let plain = &mapping(r#""g.docs": {"primary_key": ["id"]}"#)[0];
        assert!(
            !replica_fields(plain, &schema)
                .iter()
                .any(|f| f.name == INVALID_JSON)
        );
    }

    #[test]
    fn identifiers_and_literals_cannot_break_out() {
        assert_eq!(ident("a`b"), "`a\\`b`");
        assert_eq!(string_literal("it's\\"), "'it\\'s\\\\'");
        assert_eq!(string_literal("a\nb"), "'a\\nb'");
    }

    #[test]
    fn window_filter_prunes_by_commit_time_and_names_files() {
        let w = ApplyWindow {
            files: vec!["a/b.parquet".into(), "it's.parquet".into()],
            commit_ts_min: Some(1),
            commit_ts_max: Some(2),
            rebuild: Rebuild::No,
        };
        let f = window_filter(&w);
        assert!(
            f.contains("`_ferry_commit_ts` >= TIMESTAMP_MICROS(1)"),
            "{f}"
        );
        assert!(f.contains("<= TIMESTAMP_MICROS(2)"), "{f}");
        assert!(f.contains("'it\\'s.parquet'"), "{f}");
        assert_eq!(window_filter(&ApplyWindow::everything()), "TRUE");
    }

    #[test]
    fn changes_order_by_file_then_change_sequence_then_row_and_runs_rebuild() {
        let t = &mapping(r#""g.k": {"primary_key": ["id"]}"#)[0];
        let schema = with_meta(&[("id", BqType::Int64)]);
        let window = |rebuild| ApplyWindow {
            files: vec!["f/g/k/LOAD00000001.parquet".into()],
            commit_ts_min: None,
            commit_ts_max: None,
            rebuild,
        };
        let plain = apply_statements(t, &schema, &window(Rebuild::No));
        assert_eq!(plain.len(), 2, "tombstones and replica: {plain:#?}");
        let merge = &plain[1];
        assert!(
            merge.contains(
                "ORDER BY `_ferry_file_seq` DESC, `_ferry_change_seq` DESC, `_ferry_row` DESC"
            ),
            "{merge}"
        );
        assert!(
            !merge.contains("`_ferry_commit_ts` >"),
            "timestamps order nothing: {merge}"
        );
        // Changes older than the newest run start are ignored, however late they come.
        assert!(
            merge.contains("AND `_ferry_file_seq` >= IFNULL((SELECT MAX(`_ferry_file_seq`) FROM `project-p`.`d`.`k__ferry_runs`), '')"),
            "{merge}"
        );
        let rebuild = apply_statements(t, &schema, &window(Rebuild::From("000.0.0.x".into())));
        assert_eq!(rebuild.len(), 5, "{rebuild:#?}");
        assert!(rebuild[0].starts_with("MERGE `project-p`.`d`.`k__ferry_runs`"));
        assert!(rebuild[0].contains("SELECT '000.0.0.x' AS"));
        assert!(rebuild[3].starts_with("MERGE `project-p`.`d`.`k__ferry_tombstones`"));
        assert!(rebuild[4].starts_with("DELETE FROM `project-p`.`d`.`k` WHERE"));
        // A full re-apply finds the newest run start in the change log.
        let again = apply_statements(t, &schema, &ApplyWindow::everything());
        assert!(
            again[0].contains("WHERE SUBSTR(`_ferry_file_seq`, 22, 3) = '0.0'"),
            "{}",
            again[0]
        );
        let soft = &mapping(r#""g.k": {"primary_key": ["id"], "soft_delete": true}"#)[0];
        let soft = apply_statements(soft, &schema, &window(Rebuild::From("x".into())));
        assert!(
            soft.last()
                .unwrap()
                .starts_with("UPDATE `project-p`.`d`.`k` SET `_ferry_deleted` = TRUE")
        );
    }
}
