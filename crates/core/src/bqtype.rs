//! BigQuery column types, as ferry names them in schemas and DDL.

use std::fmt;

/// A BigQuery standard SQL column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BqType {
    /// `BOOL`.
    Bool,
    /// `INT64`.
    Int64,
    /// `FLOAT64`.
    Float64,
    /// `NUMERIC`: precision 38, scale 9.
    Numeric,
    /// `BIGNUMERIC`: precision 76, scale 38.
    BigNumeric,
    /// `STRING`.
    String,
    /// `BYTES`.
    Bytes,
    /// `DATE`.
    Date,
    /// `DATETIME`: a wall-clock date and time, no time zone.
    Datetime,
    /// `TIME`.
    Time,
    /// `TIMESTAMP`: an instant, UTC.
    Timestamp,
    /// `JSON`.
    Json,
}

impl BqType {
    /// The type's name in DDL and in the REST API's `TableFieldSchema.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            BqType::Bool => "BOOL",
            BqType::Int64 => "INT64",
            BqType::Float64 => "FLOAT64",
            BqType::Numeric => "NUMERIC",
            BqType::BigNumeric => "BIGNUMERIC",
            BqType::String => "STRING",
            BqType::Bytes => "BYTES",
            BqType::Date => "DATE",
            BqType::Datetime => "DATETIME",
            BqType::Time => "TIME",
            BqType::Timestamp => "TIMESTAMP",
            BqType::Json => "JSON",
        }
    }

    /// Reads a type name as the REST API or DDL writes it (also the legacy names `INTEGER`,
    /// `FLOAT`, `BOOLEAN`, `BIGDECIMAL`, `DECIMAL`).
    pub fn parse(name: &str) -> Option<BqType> {
        Some(match name.to_ascii_uppercase().as_str() {
            "BOOL" | "BOOLEAN" => BqType::Bool,
            "INT64" | "INTEGER" => BqType::Int64,
            "FLOAT64" | "FLOAT" => BqType::Float64,
            "NUMERIC" | "DECIMAL" => BqType::Numeric,
            "BIGNUMERIC" | "BIGDECIMAL" => BqType::BigNumeric,
            "STRING" => BqType::String,
            "BYTES" => BqType::Bytes,
            "DATE" => BqType::Date,
            "DATETIME" => BqType::Datetime,
            "TIME" => BqType::Time,
            "TIMESTAMP" => BqType::Timestamp,
            "JSON" => BqType::Json,
            _ => return None,
        })
    }

    /// Whether a table can be time-partitioned by a column of this type.
    pub fn can_partition(self) -> bool {
        matches!(self, BqType::Date | BqType::Datetime | BqType::Timestamp)
    }

    /// Whether values of this type can be compared for equality (MERGE keys).
    pub fn can_key(self) -> bool {
        !matches!(self, BqType::Json | BqType::Float64)
    }

    /// Whether a table can be clustered by a column of this type (page "Creating clustered
    /// tables": not BYTES, FLOAT64, TIME or JSON).
    pub fn can_cluster(self) -> bool {
        !matches!(
            self,
            BqType::Json | BqType::Float64 | BqType::Bytes | BqType::Time
        )
    }
}

impl fmt::Display for BqType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
