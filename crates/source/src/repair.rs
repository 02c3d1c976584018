//! Repair: the source's current rows for the keys reconcile found, written as a DMS CDC object
//! that ferry loads through its normal, exactly-once path.
//!
//! The object is what DMS would write for the table (the parquet types of the DMS type table,
//! the task's timestamp column, `Op`), with `U` rows holding the source's current rows for
//! missing and different keys and `D` rows for extra keys. Its name is a CDC file name with nine
//! fraction digits (`20261201-101500123456789.parquet`; DMS writes three), so it is never
//! mistaken for a DMS file and its job id is its own. Its time is taken before the rows are
//! read: a change committed after the read is in a later DMS file and wins, as it must, and
//! every change before the read is in the rows.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder,
    Float32Builder, Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder, UInt8Builder, UInt16Builder, UInt32Builder,
    UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_buffer::i256;
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use ferry_core::civil;
use ferry_core::mapping::Source;

use crate::catalog::{Kind, SourceTable};
use crate::conn::{MySql, SourceError, TextRow, ident};
use crate::reconcile::Key;

/// The Arrow type DMS writes a column of `kind` as.
pub fn dms_type(kind: Kind) -> DataType {
    match kind {
        Kind::Bool
        | Kind::Int {
            bytes: 1,
            unsigned: false,
        } => DataType::Int8,
        Kind::Int {
            bytes: 1,
            unsigned: true,
        } => DataType::UInt8,
        Kind::Int {
            bytes: 2,
            unsigned: false,
        }
        | Kind::Year => DataType::Int16,
        Kind::Int {
            bytes: 2,
            unsigned: true,
        } => DataType::UInt16,
        Kind::Int {
            bytes: 3 | 4,
            unsigned: false,
        } => DataType::Int32,
        Kind::Int {
            bytes: 3 | 4,
            unsigned: true,
        } => DataType::UInt32,
        Kind::Int {
            unsigned: false, ..
        } => DataType::Int64,
        Kind::Int { unsigned: true, .. } => DataType::UInt64,
        Kind::Bit(1) => DataType::Boolean,
        Kind::Bit(_) | Kind::Binary { .. } => DataType::Binary,
        Kind::Decimal(p, s) if p > 38 => DataType::Decimal256(p, i8::try_from(s).unwrap_or(30)),
        Kind::Decimal(p, s) => DataType::Decimal128(p.max(1), i8::try_from(s).unwrap_or(30)),
        Kind::Float => DataType::Float32,
        Kind::Double => DataType::Float64,
        Kind::Date => DataType::Date32,
        Kind::Datetime(_) | Kind::Timestamp(_) => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        Kind::Time(_) | Kind::Text { .. } | Kind::Json => DataType::Utf8,
    }
}

/// The source expression whose text [`build`] parses for a column of `kind`.
fn read_expr(name: &str, kind: Kind) -> String {
    let q = ident(name);
    let zero = |fmt: &str| {
        format!(
            "CASE WHEN MONTH({q}) = 0 OR DAYOFMONTH({q}) = 0 THEN NULL ELSE DATE_FORMAT({q}, '{fmt}') END"
        )
    };
    match kind {
        Kind::Bit(1) => format!("{q} + 0"),
        Kind::Bit(n) => format!("LPAD(HEX({q}), {}, '0')", 2 * u32::from(n).div_ceil(8)),
        Kind::Binary { .. } => format!("HEX({q})"),
        Kind::Float | Kind::Double => format!("CAST(CAST({q} AS DOUBLE) AS CHAR)"),
        Kind::Date => zero("%Y-%m-%d"),
        Kind::Datetime(_) | Kind::Timestamp(_) => zero("%Y-%m-%d %H:%i:%s.%f"),
        Kind::Time(_) => format!("TIME_FORMAT({q}, '%H:%i:%s.%f')"),
        _ => format!("CAST({q} AS CHAR)"),
    }
}

/// Reads the source's current rows for `keys` (canonical key text, as reconcile reports it),
/// every column in the table's order.
pub fn read_rows(
    db: &mut MySql,
    table: &SourceTable,
    key: &[String],
    keys: &[Key],
) -> Result<Vec<TextRow>, SourceError> {
    let mut out = Vec::new();
    let exprs: Vec<String> = table
        .columns
        .iter()
        .map(|c| read_expr(&c.name, c.kind))
        .collect();
    for batch in keys.chunks(500) {
        let cond: Vec<String> = batch
            .iter()
            .map(|k| {
                let ands: Vec<String> = key
                    .iter()
                    .zip(k)
                    .map(|(col, v)| {
                        let binary = table
                            .column(col)
                            .is_some_and(|c| matches!(c.kind, Kind::Bit(_) | Kind::Binary { .. }));
                        // Keys arrive as canonical text: bytes as lower-case hex.
                        let expr = if binary {
                            format!("LOWER(HEX({}))", ident(col))
                        } else {
                            ident(col)
                        };
                        match v {
                            None => format!("{expr} IS NULL"),
                            Some(v) => format!("{expr} = {}", crate::conn::literal(v)),
                        }
                    })
                    .collect();
                format!("({})", ands.join(" AND "))
            })
            .collect();
        out.extend(db.query(&format!(
            "SELECT {} FROM {}.{} WHERE {}",
            exprs.join(", "),
            ident(&table.schema),
            ident(&table.name),
            cond.join(" OR ")
        ))?);
    }
    Ok(out)
}

/// The repair object's key: a CDC name with nine fraction digits at `at_micros`.
pub fn object_key(source: &Source, table: &SourceTable, at_micros: i64, serial: u32) -> String {
    let days = at_micros.div_euclid(civil::MICROS_PER_DAY);
    let (y, m, d) = civil::civil_from_days(days);
    let rem = at_micros.rem_euclid(civil::MICROS_PER_DAY);
    let secs = rem / 1_000_000;
    format!(
        "{}{}/{}/{y:04}{m:02}{d:02}-{:02}{:02}{:02}{:06}{:03}.parquet",
        source.prefix(),
        table.schema,
        table.name,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        rem % 1_000_000,
        serial % 1000
    )
}

/// Why a value could not be written.
fn bad(column: &str, value: &str, why: &str) -> String {
    format!("column {column}: cannot write {value:?} as {why}")
}

/// The parquet bytes of a repair object: `rows` (from [`read_rows`]) as `U`, `deletes` (key
/// values) as `D`, stamped `at_micros` in the task's timestamp column.
pub fn build(
    source: &Source,
    table: &SourceTable,
    rows: &[TextRow],
    deletes: &[(Vec<String>, Key)],
    at_micros: i64,
) -> Result<Vec<u8>, String> {
    let n = rows.len() + deletes.len();
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    if let Some(ts) = &source.timestamp_column {
        let stamp = timestamp_text(at_micros);
        fields.push(Field::new(ts, DataType::Utf8, false));
        arrays.push(Arc::new(arrow_array::StringArray::from_iter_values(
            std::iter::repeat_n(stamp.as_str(), n),
        )));
    }
    fields.push(Field::new("Op", DataType::Utf8, true));
    arrays.push(Arc::new(arrow_array::StringArray::from_iter_values(
        std::iter::repeat_n("U", rows.len()).chain(std::iter::repeat_n("D", deletes.len())),
    )));
    for (i, c) in table.columns.iter().enumerate() {
        let mut values: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.get(i).and_then(|v| v.as_deref()))
            .collect();
        for (names, key) in deletes {
            values.push(
                names
                    .iter()
                    .position(|k| *k == c.name)
                    .and_then(|p| key.get(p).and_then(|v| v.as_deref())),
            );
        }
        let ty = dms_type(c.kind);
        fields.push(Field::new(&c.name, ty.clone(), true));
        arrays.push(column(&c.name, c.kind, &ty, &values)?);
    }
    fields.push(Field::new(
        ferry_core::deploy::CHANGE_SEQ_COLUMN,
        DataType::Utf8,
        true,
    ));
    arrays.push(Arc::new(arrow_array::StringArray::from_iter_values(
        std::iter::repeat_n("", n),
    )));
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(Arc::clone(&schema), arrays).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_created_by("ferry reconcile --repair".into())
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props))
        .map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    Ok(out)
}

/// `YYYY-MM-DD HH:MM:SS.ffffff`, as DMS writes its timestamp column.
fn timestamp_text(micros: i64) -> String {
    let (y, m, d) = civil::civil_from_days(micros.div_euclid(civil::MICROS_PER_DAY));
    let rem = micros.rem_euclid(civil::MICROS_PER_DAY);
    let secs = rem / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        rem % 1_000_000
    )
}

fn hex(column: &str, s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(bad(column, s, "hex bytes"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| bad(column, s, "hex bytes")))
        .collect()
}

/// Unscaled digits of decimal text at `scale`.
fn unscaled(s: &str, scale: usize) -> Option<String> {
    let (neg, body) = s.strip_prefix('-').map_or((false, s), |b| (true, b));
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if frac.len() > scale || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac:0<scale$}");
    Some(if neg { format!("-{digits}") } else { digits })
}

fn days_of(s: &str) -> Option<i32> {
    let (y, rest) = s.split_once('-')?;
    let (m, d) = rest.split_once('-')?;
    let days = civil::days_from_civil(y.parse().ok()?, m.parse().ok()?, d.get(..2)?.parse().ok()?);
    i32::try_from(days).ok()
}

fn micros_of(s: &str) -> Option<i64> {
    let (date, time) = s.split_once(' ')?;
    let days = i64::from(days_of(date)?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut p = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, m, sec) = (p.next()??, p.next()??, p.next()??);
    let frac: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    Some(days * civil::MICROS_PER_DAY + (h * 3600 + m * 60 + sec) * 1_000_000 + frac)
}

fn column(
    name: &str,
    kind: Kind,
    ty: &DataType,
    values: &[Option<&str>],
) -> Result<ArrayRef, String> {
    macro_rules! build {
        ($builder:expr, $what:expr, |$s:ident| $parse:expr) => {{
            let mut b = $builder;
            for v in values {
                match v {
                    None => b.append_null(),
                    Some($s) => b.append_value($parse.ok_or_else(|| bad(name, $s, $what))?),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match ty {
        DataType::Int8 => build!(Int8Builder::new(), "INT8", |s| s.parse::<i8>().ok()),
        DataType::UInt8 => build!(UInt8Builder::new(), "UINT8", |s| s.parse::<u8>().ok()),
        DataType::Int16 => build!(Int16Builder::new(), "INT16", |s| s.parse::<i16>().ok()),
        DataType::UInt16 => build!(UInt16Builder::new(), "UINT16", |s| s.parse::<u16>().ok()),
        DataType::Int32 => build!(Int32Builder::new(), "INT32", |s| s.parse::<i32>().ok()),
        DataType::UInt32 => build!(UInt32Builder::new(), "UINT32", |s| s.parse::<u32>().ok()),
        DataType::Int64 => build!(Int64Builder::new(), "INT64", |s| s.parse::<i64>().ok()),
        DataType::UInt64 => build!(UInt64Builder::new(), "UINT64", |s| s.parse::<u64>().ok()),
        DataType::Boolean => build!(BooleanBuilder::new(), "BOOL", |s| match *s {
            "0" => Some(false),
            "" => None,
            _ => Some(true),
        }),
        DataType::Float32 => build!(Float32Builder::new(), "FLOAT", |s| s
            .parse::<f64>()
            .ok()
            .map(|f| {
                #[allow(clippy::cast_possible_truncation)]
                let x = f as f32;
                x
            })),
        DataType::Float64 => build!(Float64Builder::new(), "DOUBLE", |s| s.parse::<f64>().ok()),
        DataType::Decimal128(p, sc) => {
            let scale = usize::try_from(*sc).unwrap_or(0);
            build!(
                Decimal128Builder::new()
                    .with_precision_and_scale(*p, *sc)
                    .map_err(|e| e.to_string())?,
                "DECIMAL",
                |s| unscaled(s, scale).and_then(|d| d.parse::<i128>().ok())
            )
        }
        DataType::Decimal256(p, sc) => {
            let scale = usize::try_from(*sc).unwrap_or(0);
            build!(
                Decimal256Builder::new()
                    .with_precision_and_scale(*p, *sc)
                    .map_err(|e| e.to_string())?,
                "DECIMAL",
                |s| unscaled(s, scale).and_then(|d| i256::from_string(&d))
            )
        }
        DataType::Date32 => build!(Date32Builder::new(), "DATE", |s| days_of(s)),
        DataType::Timestamp(_, _) => build!(
            TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            "DATETIME",
            |s| micros_of(s)
        ),
        DataType::Binary => {
            let mut b = BinaryBuilder::new();
            for v in values {
                match v {
                    None => b.append_null(),
                    Some(s) if matches!(kind, Kind::Bit(_) | Kind::Binary { .. }) => {
                        b.append_value(hex(name, s)?);
                    }
                    Some(s) => b.append_value(s.as_bytes()),
                }
            }
            Arc::new(b.finish())
        }
        _ => {
            let mut b = StringBuilder::new();
            for v in values {
                b.append_option(*v);
            }
            Arc::new(b.finish())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_parse_back() {
        assert_eq!(unscaled("-12.5", 3).as_deref(), Some("-12500"));
        assert_eq!(unscaled("7", 2).as_deref(), Some("700"));
        assert_eq!(unscaled("1.234", 2), None);
        assert_eq!(days_of("1970-01-02"), Some(1));
        assert_eq!(micros_of("1970-01-01 00:00:01.5"), Some(1_500_000));
        assert_eq!(timestamp_text(1_500_000), "1970-01-01 00:00:01.500000");
        assert_eq!(hex("c", "00ff").unwrap(), vec![0, 255]);
    }
}
