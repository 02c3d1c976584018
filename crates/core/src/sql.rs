//! The BigQuery SQL ferry runs: DDL for the change-log, replica and tombstone tables, column
//! additions, and the replica MERGE.
//!
//! Everything here is text generation, so that the statements can be read in review, pinned in
//! tests and executed on a BigQuery-dialect engine without a cloud account.
//!
//! # Replica apply
//! A replica holds the latest change per primary key, in source commit order: `_ferry_commit_ts`,
//! then `_ferry_file_seq` (the file's place in DMS's output), then `_ferry_row` (the row's place
//! in its file). Arrival order never matters: a change wins only where it is newer than what
//! the replica row or the key's tombstone already holds, so rerunning an apply, a duplicated
//! file or a file delivered late changes nothing it should not. Hard deletes leave a tombstone
//! (`<replica>__ferry_tombstones`: the key and the delete's version) so that an older insert
//! arriving after the delete cannot bring the row back; soft-delete replicas keep the row
//! itself, flagged `_ferry_deleted`, which serves the same purpose.
//!
//! An apply reads only the change-log rows of the files it is given, within their commit-time
//! range (so BigQuery prunes the change log to the partitions those files touch).

use std::fmt::Write as _;

use crate::mapping::{Granularity, TableMapping, TableRef};
use crate::schema::{BqField, FieldMode, TableSchema, meta};

/// The replica's soft-delete flag (present in every replica; `true` only in soft-delete mode).
pub const DELETED: &str = "_ferry_deleted";

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

fn partition_clause(column: &str, granularity: Granularity, schema: &TableSchema) -> String {
    let is_date = schema
        .field(column)
        .is_some_and(|f| f.bq_type == crate::bqtype::BqType::Date);
    let c = ident(column);
    match (granularity, is_date) {
        (Granularity::Day, true) => format!("PARTITION BY {c}"),
        (Granularity::Day, false) => format!("PARTITION BY DATE({c})"),
        (g, true) => format!("PARTITION BY DATE_TRUNC({c}, {})", g.as_str()),
        (Granularity::Hour, false) => format!("PARTITION BY TIMESTAMP_TRUNC({c}, HOUR)"),
        (g, false) => format!("PARTITION BY DATE_TRUNC(DATE({c}), {})", g.as_str()),
    }
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
/// mapping's partition column in change-log mode), clustered by the primary key.
pub fn create_changelog(table: &TableMapping, schema: &TableSchema) -> String {
    let partition = match (&table.partition, &table.replica) {
        (Some(p), None) => partition_clause(&p.column, p.granularity, schema),
        _ => partition_clause(meta::COMMIT_TS, Granularity::Day, schema),
    };
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  {}\n)\n{partition}{}",
        table_path(&table.changelog),
        column_defs(&schema.fields),
        cluster_clause(&cluster_columns(table)),
    );
    let _ = write!(
        sql,
        "\nOPTIONS(description={})",
        string_literal(&described("ferry change log of", table))
    );
    sql
}

/// The replica's columns: the change log's, then `_ferry_deleted`.
pub fn replica_fields(changelog: &TableSchema) -> Vec<BqField> {
    let mut fields = changelog.fields.clone();
    fields.push(BqField {
        name: DELETED.to_owned(),
        bq_type: crate::bqtype::BqType::Bool,
        mode: FieldMode::Required,
        description: Some("ferry: the row was deleted at the source (soft-delete replicas)".into()),
    });
    fields
}

/// `CREATE TABLE IF NOT EXISTS` for a replica and (hard deletes) its tombstone table.
pub fn create_replica(table: &TableMapping, changelog: &TableSchema) -> Vec<String> {
    let Some(replica) = &table.replica else {
        return Vec::new();
    };
    let schema = TableSchema {
        fields: replica_fields(changelog),
    };
    let partition = table
        .partition
        .as_ref()
        .map(|p| format!("\n{}", partition_clause(&p.column, p.granularity, &schema)))
        .unwrap_or_default();
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  {}\n){partition}{}\nOPTIONS(description={})",
        table_path(replica),
        column_defs(&schema.fields),
        cluster_clause(&cluster_columns(table)),
        string_literal(&described("ferry replica of", table)),
    )];
    if !table.soft_delete {
        let fields: Vec<BqField> = table
            .primary_key
            .iter()
            .filter_map(|k| changelog.field(k).cloned())
            .chain(
                [meta::COMMIT_TS, meta::FILE_SEQ, meta::ROW]
                    .iter()
                    .filter_map(|m| changelog.field(m).cloned()),
            )
            .collect();
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {}\n){}",
            table_path(&tombstones_of(replica)),
            column_defs(&fields),
            cluster_clause(&table.primary_key),
        ));
    }
    out
}

/// `ALTER TABLE ... ADD COLUMN IF NOT EXISTS`, one statement per column a file brings (one
/// column per statement runs on every engine; column additions are rare). Added columns are
/// always NULLABLE (existing rows have no value).
pub fn add_columns(table: &TableRef, added: &[BqField]) -> Vec<String> {
    added
        .iter()
        .map(|f| {
            format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                table_path(table),
                ident(&f.name),
                f.bq_type
            )
        })
        .collect()
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyWindow {
    /// S3 keys of the files (`_ferry_file`). Empty: every row in the time range.
    pub files: Vec<String>,
    /// Earliest commit time among them; `None`: no lower bound.
    pub commit_ts_min: Option<i64>,
    /// Latest commit time among them; `None`: no upper bound.
    pub commit_ts_max: Option<i64>,
}

impl ApplyWindow {
    /// The whole change log (a full re-apply).
    pub fn everything() -> ApplyWindow {
        ApplyWindow {
            files: Vec::new(),
            commit_ts_min: None,
            commit_ts_max: None,
        }
    }
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

/// `(a.commit_ts, a.file_seq, a.row) > (b...)`, or `>=` with `or_equal`.
fn newer(a: &str, b: &str, or_equal: bool) -> String {
    let [ts, seq, row] = [meta::COMMIT_TS, meta::FILE_SEQ, meta::ROW].map(ident);
    let last = if or_equal { ">=" } else { ">" };
    format!(
        "({a}.{ts} > {b}.{ts} OR ({a}.{ts} = {b}.{ts} AND ({a}.{seq} > {b}.{seq} OR ({a}.{seq} = {b}.{seq} AND {a}.{row} {last} {b}.{row}))))"
    )
}

/// The latest change per key among the window's rows.
fn latest_changes(table: &TableMapping, window: &ApplyWindow) -> String {
    let keys: Vec<String> = table.primary_key.iter().map(|k| ident(k)).collect();
    let [ts, seq, row] = [meta::COMMIT_TS, meta::FILE_SEQ, meta::ROW].map(ident);
    format!(
        "SELECT * FROM {cl}\n    WHERE {filter}\n    QUALIFY ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {ts} DESC, {seq} DESC, {row} DESC) = 1",
        cl = table_path(&table.changelog),
        filter = window_filter(window),
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
    let mut out = Vec::new();
    let mut source = latest_changes(table, window);
    if !table.soft_delete {
        let tomb = tombstones_of(replica);
        let tomb_cols: Vec<String> = keys
            .iter()
            .map(|k| ident(k))
            .chain([meta::COMMIT_TS, meta::FILE_SEQ, meta::ROW].map(ident))
            .collect();
        // 1. Remember the newest delete per key.
        out.push(format!(
            "MERGE {tp} T\nUSING (\n  SELECT * FROM (\n    {latest}\n  ) WHERE {op} = {del}\n) S\nON {on}\nWHEN MATCHED AND {newer} THEN UPDATE SET {set}\nWHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({vals})",
            tp = table_path(&tomb),
            latest = source,
            del = string_literal(meta::op::DELETE),
            on = key_match("T", "S", keys),
            newer = newer("S", "T", false),
            set = [meta::COMMIT_TS, meta::FILE_SEQ, meta::ROW]
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
            "SELECT C.* FROM (\n    {source}\n  ) C\n  LEFT JOIN {tp} D ON {on}\n  WHERE D.{ts} IS NULL OR {newer_eq}",
            tp = table_path(&tomb),
            on = key_match("D", "C", keys),
            ts = ident(meta::COMMIT_TS),
            newer_eq = newer("C", "D", true),
        );
    }
    // 2. The latest change per key wins where it is newer than the replica's row.
    let set: Vec<String> = cols
        .iter()
        .map(|c| format!("{c} = S.{c}"))
        .chain(std::iter::once(format!("{deleted} = {is_delete}")))
        .collect();
    let insert_cols = format!("{}, {deleted}", cols.join(", "));
    let insert_vals = format!(
        "{}, {is_delete}",
        cols.iter()
            .map(|c| format!("S.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
