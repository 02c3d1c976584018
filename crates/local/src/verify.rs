//! Checks every table of the local warehouse against a simulator manifest: row counts and an
//! order-independent checksum over the canonical values of every column.

use ferry_core::bqtype::BqType;
use ferry_core::schema::meta;
use ferry_pipeline::PortError;
use ferry_sim::{Manifest, row_hash};
use rusqlite::types::Value as Sql;
use serde_json::{Map, Value as Json};

use crate::warehouse::{SqliteWarehouse, quote};

/// One table's verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableCheck {
    /// `schema.table` of the source.
    pub table: String,
    /// The warehouse table checked.
    pub target: String,
    /// Whether it matches.
    pub ok: bool,
    /// What differs, when it does not.
    pub detail: String,
}

/// Checks every table of the manifest.
pub fn verify(
    warehouse: &SqliteWarehouse,
    manifest: &Manifest,
) -> Result<Vec<TableCheck>, PortError> {
    let err = |e: rusqlite::Error| PortError::retryable(format!("verify: {e}"));
    warehouse.with_conn(|c| {
        let mut checks = Vec::new();
        for t in &manifest.tables {
            let target = t
                .target
                .split_once('.')
                .map_or(t.target.as_str(), |(_, rest)| rest)
                .to_owned();
            let changelog = t.mode == "changelog";
            let schema = SqliteWarehouse::stored_schema(c, &target)?;
            let check = |ok: bool, detail: String| TableCheck {
                table: t.table.clone(),
                target: target.clone(),
                ok,
                detail,
            };
            if !t.enabled {
                checks.push(check(
                    schema.is_none(),
                    if schema.is_none() {
                        String::new()
                    } else {
                        "a disabled table was loaded".into()
                    },
                ));
                continue;
            }
            let Some(schema) = schema else {
                checks.push(check(
                    t.expected_rows == 0,
                    format!("table missing, {} rows expected", t.expected_rows),
                ));
                continue;
            };
            // Each source column reads from the table's column of its name and the typed
            // columns it continued in after a type change (`<column>__<type>`, see
            // `on_type_change`): the first that holds a value.
            let mut names: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
            if changelog {
                names.push(meta::OP.to_owned());
            }
            let sources: Vec<Vec<(String, BqType)>> = names
                .iter()
                .map(|name| {
                    let prefix = format!("{name}__");
                    schema
                        .fields
                        .iter()
                        .filter(|f| {
                            f.name == *name
                                || f.name.strip_prefix(&prefix).is_some_and(|t| {
                                    BqType::parse(&t.to_ascii_uppercase()) == Some(f.bq_type)
                                })
                        })
                        .map(|f| (f.name.clone(), f.bq_type))
                        .collect()
                })
                .collect();
            let select = sources
                .iter()
                .flatten()
                .map(|(n, _)| quote(n))
                .collect::<Vec<_>>()
                .join(", ");
            let select = if select.is_empty() {
                "NULL".to_owned()
            } else {
                select
            };
            let filter = if !changelog && schema.field("_ferry_deleted").is_some() {
                " WHERE NOT _ferry_deleted"
            } else {
                ""
            };
            let mut stmt = c
                .prepare(&format!("SELECT {select} FROM {}{filter}", quote(&target)))
                .map_err(err)?;
            // Rows are hashed as they are read: memory does not grow with the table.
            let (mut count, mut sum) = (0u64, 0u128);
            let mut query = stmt.query([]).map_err(err)?;
            while let Some(row) = query.next().map_err(err)? {
                let mut out = Map::new();
                let mut i = 0;
                for (name, from) in names.iter().zip(&sources) {
                    let mut value = Json::Null;
                    for (_, bq) in from {
                        let v: Sql = row.get(i).map_err(err)?;
                        i += 1;
                        if value.is_null() {
                            value = canonical(v, *bq);
                        }
                    }
                    out.insert(name.clone(), value);
                }
                count += 1;
                sum = sum.wrapping_add(row_hash(&out));
            }
            let sum = format!("{sum:032x}");
            let mut problems = Vec::new();
            if count != t.expected_rows {
                problems.push(format!("{count} rows, {} expected", t.expected_rows));
            }
            if let Some(expected) = &t.checksum
                && *expected != sum
            {
                problems.push(format!("checksum {sum}, {expected} expected"));
            }
            checks.push(check(problems.is_empty(), problems.join("; ")));
        }
        Ok(checks)
    })
}

/// A stored value in the canonical form the simulator's manifest uses.
pub fn canonical(value: Sql, bq: BqType) -> Json {
    match (value, bq) {
        (Sql::Null, _) => Json::Null,
        (Sql::Integer(i), BqType::Bool) => Json::Bool(i != 0),
        (Sql::Integer(i), _) => Json::String(i.to_string()),
        (Sql::Real(f), _) => Json::from(f),
        (Sql::Text(s), _) => Json::String(s),
        (Sql::Blob(b), _) => Json::String(ferry_convert::canonical::base64(&b)),
    }
}
