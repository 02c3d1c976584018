//! Per-column type hints: the MySQL types parquet blurs, and the BigQuery type each lands as.

use std::fmt;

use crate::bqtype::BqType;

/// A column's MySQL type where the parquet type alone would land it wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnHint {
    /// `TINYINT(1)` / `BOOLEAN`: DMS writes an INT8; it lands as `BOOL`.
    Bool,
    /// `BIT(n)`: DMS writes BOOL (n = 1) or big-endian bytes; it lands as `BOOL` (n = 1),
    /// `INT64` (n <= 63) or `NUMERIC` (n = 64), never wrapped.
    Bit(u8),
    /// `DATETIME`: a wall-clock value DMS writes as a parquet TIMESTAMP without converting it;
    /// it lands as `DATETIME`.
    Datetime,
    /// `TIMESTAMP`: converted to UTC by DMS; lands as `TIMESTAMP` (the default for parquet
    /// timestamps, so this hint only documents it).
    Timestamp,
    /// `JSON`: DMS writes a string; it lands as `JSON`.
    Json,
    /// `TIME`: DMS writes a string; it lands as `TIME`.
    Time,
    /// `BIGINT UNSIGNED`: values above 2^63-1 do not fit INT64; it lands as `NUMERIC`.
    UnsignedBigint,
}

/// The hint spellings ferry accepts, for error messages.
pub const ACCEPTED_HINTS: &str = "tinyint(1), boolean, bit(n), datetime, datetime(n), timestamp, timestamp(n), json, time, time(n), bigint unsigned";

impl ColumnHint {
    /// Parses a MySQL type as `SHOW CREATE TABLE` prints it (case and spacing are free).
    pub fn parse(text: &str) -> Result<ColumnHint, String> {
        let norm: String = text
            .to_ascii_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let norm = norm
            .replace(" (", "(")
            .replace("( ", "(")
            .replace(" )", ")");
        let (base, arg) = match norm.split_once('(') {
            Some((base, rest)) => match rest.strip_suffix(')') {
                Some(arg) => (base, Some(arg.trim())),
                None => return Err(format!("unbalanced parentheses in type hint {text:?}")),
            },
            None => (norm.as_str(), None),
        };
        let fsp = |arg: Option<&str>| -> Result<(), String> {
            match arg.map(str::parse::<u8>) {
                None | Some(Ok(0..=6)) => Ok(()),
                _ => Err(format!(
                    "fractional seconds precision in {text:?} must be 0 to 6"
                )),
            }
        };
        match (base, arg) {
            ("boolean" | "bool", None) | ("tinyint", Some("1")) => Ok(ColumnHint::Bool),
            ("bit", None) => Ok(ColumnHint::Bit(1)),
            ("bit", Some(n)) => match n.parse::<u8>() {
                Ok(n @ 1..=64) => Ok(ColumnHint::Bit(n)),
                _ => Err(format!("BIT length in {text:?} must be 1 to 64")),
            },
            ("datetime", arg) => fsp(arg).map(|()| ColumnHint::Datetime),
            ("timestamp", arg) => fsp(arg).map(|()| ColumnHint::Timestamp),
            ("time", arg) => fsp(arg).map(|()| ColumnHint::Time),
            ("json", None) => Ok(ColumnHint::Json),
            ("bigint unsigned", None) => Ok(ColumnHint::UnsignedBigint),
            ("tinyint", Some(_)) => Err(format!(
                "{text:?} is a plain integer and needs no hint; only tinyint(1) means BOOL"
            )),
            _ => Err(format!(
                "unknown type hint {text:?}; accepted: {ACCEPTED_HINTS}"
            )),
        }
    }

    /// The BigQuery type a hinted column lands as.
    pub fn bigquery_type(self) -> BqType {
        match self {
            ColumnHint::Bool | ColumnHint::Bit(1) => BqType::Bool,
            ColumnHint::Bit(n) if n <= 63 => BqType::Int64,
            ColumnHint::Bit(_) | ColumnHint::UnsignedBigint => BqType::Numeric,
            ColumnHint::Datetime => BqType::Datetime,
            ColumnHint::Timestamp => BqType::Timestamp,
            ColumnHint::Json => BqType::Json,
            ColumnHint::Time => BqType::Time,
        }
    }
}

impl fmt::Display for ColumnHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnHint::Bool => f.write_str("tinyint(1)"),
            ColumnHint::Bit(n) => write!(f, "bit({n})"),
            ColumnHint::Datetime => f.write_str("datetime"),
            ColumnHint::Timestamp => f.write_str("timestamp"),
            ColumnHint::Json => f.write_str("json"),
            ColumnHint::Time => f.write_str("time"),
            ColumnHint::UnsignedBigint => f.write_str("bigint unsigned"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_spelling() {
        let cases = [
            ("tinyint(1)", ColumnHint::Bool, BqType::Bool),
            ("TINYINT( 1 )", ColumnHint::Bool, BqType::Bool),
            ("boolean", ColumnHint::Bool, BqType::Bool),
            ("bool", ColumnHint::Bool, BqType::Bool),
            ("bit", ColumnHint::Bit(1), BqType::Bool),
            ("bit(1)", ColumnHint::Bit(1), BqType::Bool),
            ("bit(8)", ColumnHint::Bit(8), BqType::Int64),
            ("bit(63)", ColumnHint::Bit(63), BqType::Int64),
            ("BIT(64)", ColumnHint::Bit(64), BqType::Numeric),
            ("datetime", ColumnHint::Datetime, BqType::Datetime),
            ("datetime(6)", ColumnHint::Datetime, BqType::Datetime),
            ("timestamp(3)", ColumnHint::Timestamp, BqType::Timestamp),
            ("json", ColumnHint::Json, BqType::Json),
            ("time", ColumnHint::Time, BqType::Time),
            ("time(6)", ColumnHint::Time, BqType::Time),
            (
                "bigint unsigned",
                ColumnHint::UnsignedBigint,
                BqType::Numeric,
            ),
            (
                "  BIGINT   UNSIGNED ",
                ColumnHint::UnsignedBigint,
                BqType::Numeric,
            ),
        ];
        for (text, hint, bq) in cases {
            assert_eq!(ColumnHint::parse(text), Ok(hint), "{text}");
            assert_eq!(hint.bigquery_type(), bq, "{text}");
            // Display round-trips through parse.
            assert_eq!(ColumnHint::parse(&hint.to_string()), Ok(hint), "{text}");
        }
    }

    #[test]
    fn rejects_with_a_reason() {
        for (text, needle) in [
            ("tinyint(4)", "needs no hint"),
            ("bit(0)", "1 to 64"),
            ("bit(65)", "1 to 64"),
            ("datetime(7)", "0 to 6"),
            ("varchar(255)", "accepted:"),
            ("json(", "unbalanced"),
            ("", "unknown type hint"),
        ] {
            let err = ColumnHint::parse(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
