//! The source's own description of its tables, from `information_schema`: columns with their
//! MySQL types, primary keys, and what DMS and ferry make of each type.

use std::collections::BTreeMap;

use ferry_core::mapping::ColumnHint;

use crate::conn::{MySql, SourceError, literal};

/// What a MySQL column type is, as far as DMS, parquet and ferry tell types apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An integer type other than `TINYINT(1)`; `bytes` is its storage size.
    Int {
        /// 1, 2, 3, 4 or 8.
        bytes: u8,
        /// UNSIGNED.
        unsigned: bool,
    },
    /// `TINYINT(1)` / `BOOLEAN`.
    Bool,
    /// `BIT(n)`.
    Bit(u8),
    /// `DECIMAL(p, s)`.
    Decimal(u8, u8),
    /// `FLOAT`.
    Float,
    /// `DOUBLE`.
    Double,
    /// `DATE`.
    Date,
    /// `DATETIME(fsp)`.
    Datetime(u8),
    /// `TIMESTAMP(fsp)`.
    Timestamp(u8),
    /// `TIME(fsp)`.
    Time(u8),
    /// `YEAR`.
    Year,
    /// Character types, `ENUM` and `SET`; `lob`: MEDIUMTEXT/LONGTEXT, which DMS treats as LOBs.
    Text {
        /// A DMS LOB.
        lob: bool,
    },
    /// `JSON` (MySQL's type, or MariaDB's LONGTEXT with a `JSON_VALID` check). A DMS LOB.
    Json,
    /// Binary types; `lob`: MEDIUMBLOB/LONGBLOB/GEOMETRY.
    Binary {
        /// A DMS LOB.
        lob: bool,
    },
}

impl Kind {
    /// Classifies `information_schema.COLUMNS` `DATA_TYPE` and `COLUMN_TYPE`.
    pub fn classify(data_type: &str, column_type: &str, precision: (u32, u32), fsp: u32) -> Kind {
        let dt = data_type.to_ascii_lowercase();
        let ct = column_type.to_ascii_lowercase();
        let unsigned = ct.contains("unsigned");
        let fsp = u8::try_from(fsp.min(6)).unwrap_or(0);
        match dt.as_str() {
            "tinyint" if ct.starts_with("tinyint(1)") => Kind::Bool,
            "tinyint" => Kind::Int { bytes: 1, unsigned },
            "smallint" => Kind::Int { bytes: 2, unsigned },
            "mediumint" => Kind::Int { bytes: 3, unsigned },
            "int" | "integer" => Kind::Int { bytes: 4, unsigned },
            "bigint" => Kind::Int { bytes: 8, unsigned },
            "bit" => Kind::Bit(u8::try_from(precision.0.clamp(1, 64)).unwrap_or(64)),
            "decimal" | "numeric" => Kind::Decimal(
                u8::try_from(precision.0.min(65)).unwrap_or(65),
                u8::try_from(precision.1.min(30)).unwrap_or(30),
            ),
            "float" => Kind::Float,
            "double" | "real" => Kind::Double,
            "date" => Kind::Date,
            "datetime" => Kind::Datetime(fsp),
            "timestamp" => Kind::Timestamp(fsp),
            "time" => Kind::Time(fsp),
            "year" => Kind::Year,
            "json" => Kind::Json,
            "mediumtext" | "longtext" => Kind::Text { lob: true },
            "binary" | "varbinary" | "tinyblob" | "blob" => Kind::Binary { lob: false },
            "mediumblob" | "longblob" | "geometry" | "point" | "linestring" | "polygon"
            | "multipoint" | "multilinestring" | "multipolygon" | "geometrycollection" => {
                Kind::Binary { lob: true }
            }
            _ => Kind::Text { lob: false },
        }
    }

    /// Whether DMS treats the column as a LOB (cut at `LobMaxSize`, needs a primary key).
    pub fn is_lob(self) -> bool {
        matches!(
            self,
            Kind::Json | Kind::Text { lob: true } | Kind::Binary { lob: true }
        )
    }

    /// The mapping hint the type needs, where parquet alone would land it wrong, in the
    /// spelling `ferry mappings sync` writes.
    pub fn hint(self) -> Option<String> {
        let fsp = |base: &str, n: u8| {
            if n == 0 {
                base.to_owned()
            } else {
                format!("{base}({n})")
            }
        };
        match self {
            Kind::Bool => Some("tinyint(1)".into()),
            Kind::Bit(n) => Some(format!("bit({n})")),
            Kind::Datetime(n) => Some(fsp("datetime", n)),
            Kind::Timestamp(n) => Some(fsp("timestamp", n)),
            Kind::Time(n) => Some(fsp("time", n)),
            Kind::Json => Some("json".into()),
            Kind::Int {
                bytes: 8,
                unsigned: true,
            } => Some("bigint unsigned".into()),
            _ => None,
        }
    }

    /// The hint as ferry reads it.
    pub fn column_hint(self) -> Option<ColumnHint> {
        self.hint().and_then(|h| ColumnHint::parse(&h).ok())
    }
}

/// One source column.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceColumn {
    /// Name.
    pub name: String,
    /// `COLUMN_TYPE`, as MySQL prints it (`tinyint(1)`, `decimal(65,30)`, `bigint unsigned`).
    pub column_type: String,
    /// The kind.
    pub kind: Kind,
    /// NULL allowed.
    pub nullable: bool,
}

/// One source table.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTable {
    /// Schema (database).
    pub schema: String,
    /// Table.
    pub name: String,
    /// Columns in ordinal order.
    pub columns: Vec<SourceColumn>,
    /// Primary key columns in key order; empty when the table has none.
    pub primary_key: Vec<String>,
}

impl SourceTable {
    /// `schema.table`.
    pub fn source_table(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&SourceColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Reads the base tables of `schemas` (all of them, mapped or not), ordered by schema and name.
pub fn read_tables(db: &mut MySql, schemas: &[String]) -> Result<Vec<SourceTable>, SourceError> {
    if schemas.is_empty() {
        return Ok(Vec::new());
    }
    let list = schemas
        .iter()
        .map(|s| literal(s))
        .collect::<Vec<_>>()
        .join(", ");
    let mut tables: BTreeMap<(String, String), SourceTable> = BTreeMap::new();
    for r in db.query(&format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA IN ({list}) AND TABLE_TYPE = 'BASE TABLE'"
    ))? {
        let (schema, name) = (text(&r, 0), text(&r, 1));
        tables.insert(
            (schema.clone(), name.clone()),
            SourceTable {
                schema,
                name,
                columns: Vec::new(),
                primary_key: Vec::new(),
            },
        );
    }
    // MariaDB's JSON is LONGTEXT with a JSON_VALID check named after the column.
    let mut json_checks: Vec<(String, String, String)> = Vec::new();
    if db.is_mariadb() {
        for r in db.query(&format!(
            "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA IN ({list})"
        ))? {
            let clause = text(&r, 2);
            if let Some(col) = json_valid_column(&clause) {
                json_checks.push((text(&r, 0), text(&r, 1), col));
            }
        }
    }
    for r in db.query(&format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, \
                COALESCE(NUMERIC_PRECISION, 0), COALESCE(NUMERIC_SCALE, 0), COALESCE(DATETIME_PRECISION, 0) \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA IN ({list}) \
         ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
    ))? {
        let key = (text(&r, 0), text(&r, 1));
        let Some(t) = tables.get_mut(&key) else {
            continue;
        };
        let name = text(&r, 2);
        let num = |i: usize| text(&r, i).parse::<u32>().unwrap_or(0);
        let mut kind = Kind::classify(&text(&r, 3), &text(&r, 4), (num(6), num(7)), num(8));
        if json_checks
            .iter()
            .any(|(s, tb, c)| *s == key.0 && *tb == key.1 && *c == name)
        {
            kind = Kind::Json;
        }
        t.columns.push(SourceColumn {
            name,
            column_type: text(&r, 4),
            kind,
            nullable: text(&r, 5) == "YES",
        });
    }
    for r in db.query(&format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
         WHERE TABLE_SCHEMA IN ({list}) AND CONSTRAINT_NAME = 'PRIMARY' \
         ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
    ))? {
        if let Some(t) = tables.get_mut(&(text(&r, 0), text(&r, 1))) {
            t.primary_key.push(text(&r, 2));
        }
    }
    Ok(tables.into_values().collect())
}

fn text(row: &[Option<String>], i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

/// The column a `json_valid(`col`)` check clause names.
fn json_valid_column(clause: &str) -> Option<String> {
    let c = clause.trim();
    let inner = c
        .strip_prefix("json_valid(")
        .or_else(|| c.strip_prefix("JSON_VALID("))?
        .strip_suffix(')')?
        .trim();
    let name = inner.strip_prefix('`')?.strip_suffix('`')?;
    Some(name.replace("``", "`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_classify_as_dms_sees_them() {
        let k = |dt: &str, ct: &str| Kind::classify(dt, ct, (0, 0), 0);
        assert_eq!(k("tinyint", "tinyint(1)"), Kind::Bool);
        assert_eq!(
            k("tinyint", "tinyint(1) unsigned"),
            Kind::Bool,
            "MySQL treats TINYINT(1) UNSIGNED as a flag too"
        );
        assert_eq!(
            k("tinyint", "tinyint(4)"),
            Kind::Int {
                bytes: 1,
                unsigned: false
            }
        );
        assert_eq!(
            k("bigint", "bigint(20) unsigned").hint().as_deref(),
            Some("bigint unsigned")
        );
        assert_eq!(k("int", "int(10) unsigned").hint(), None);
        assert_eq!(
            Kind::classify("datetime", "datetime(3)", (0, 0), 3)
                .hint()
                .as_deref(),
            Some("datetime(3)")
        );
        assert_eq!(
            Kind::classify("bit", "bit(8)", (8, 0), 0).hint().as_deref(),
            Some("bit(8)")
        );
        assert!(k("longtext", "longtext").is_lob());
        assert!(!k("text", "text").is_lob());
        assert!(k("mediumblob", "mediumblob").is_lob());
        for kind in [
            Kind::Bool,
            Kind::Bit(64),
            Kind::Json,
            Kind::Time(6),
            Kind::Timestamp(0),
        ] {
            assert!(
                kind.column_hint().is_some(),
                "{kind:?}: ferry reads its hint"
            );
        }
        assert_eq!(
            json_valid_column("json_valid(`prefs`)").as_deref(),
            Some("prefs")
        );
        assert_eq!(json_valid_column("`a` > 0"), None);
    }
}
