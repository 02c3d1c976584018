//! The tests' own DMS: reads a MySQL table's rows and writes the parquet file DMS would, from the
//! simulator's model of each MySQL type (`ferry_sim::model`: the DMS type table), never from
//! ferry's repair writer.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_buffer::i256;
use arrow_schema::{DataType, Field, Schema};
use ferry_sim::model::{MysqlType, build_array};
use ferry_sim::values::V;
use ferry_source::conn::MySql;

/// A column of a test table: its DDL and the type the model gives it.
#[derive(Debug, Clone)]
pub struct ModelColumn {
    /// Name.
    pub name: &'static str,
    /// Its type in `CREATE TABLE`.
    pub ddl: &'static str,
    /// The model's type.
    pub mysql: MysqlType,
}

/// A test table.
#[derive(Debug, Clone)]
pub struct ModelTable {
    /// Schema.
    pub schema: &'static str,
    /// Table.
    pub name: &'static str,
    /// Columns.
    pub columns: Vec<ModelColumn>,
    /// Primary key (empty: none).
    pub key: Vec<&'static str>,
}

impl ModelTable {
    /// `CREATE TABLE`.
    pub fn create_sql(&self) -> String {
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("`{}` {}", c.name, c.ddl))
            .collect();
        if !self.key.is_empty() {
            parts.push(format!(
                "PRIMARY KEY ({})",
                self.key
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        format!(
            "CREATE TABLE `{}`.`{}` ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            self.schema,
            self.name,
            parts.join(", ")
        )
    }
}

fn read_expr(c: &ModelColumn) -> String {
    let q = format!("`{}`", c.name);
    match c.mysql {
        MysqlType::Bit1 => format!("{q} + 0"),
        MysqlType::Bits(_) | MysqlType::Blob => format!("HEX({q})"),
        MysqlType::Float | MysqlType::Double => format!("CAST({q} AS DOUBLE)"),
        MysqlType::Date => format!("DATE_FORMAT({q}, '%Y-%m-%d')"),
        MysqlType::Datetime | MysqlType::Timestamp => {
            format!("DATE_FORMAT({q}, '%Y-%m-%d %H:%i:%s.%f')")
        }
        MysqlType::Time => format!("TIME_FORMAT({q}, '%H:%i:%s.%f')"),
        _ => format!("CAST({q} AS CHAR)"),
    }
}

fn days(y: i64, m: u32, d: u32) -> i64 {
    ferry_core::civil::days_from_civil(y, m, d)
}

/// A date's parts, or `None` for MySQL's zero dates (DMS writes them as NULL).
fn date_parts(s: &str) -> Option<(i64, u32, u32)> {
    let y: i64 = s.get(0..4)?.parse().ok()?;
    let m: u32 = s.get(5..7)?.parse().ok()?;
    let d: u32 = s.get(8..10)?.parse().ok()?;
    (m != 0 && d != 0).then_some((y, m, d))
}

fn value(c: &ModelColumn, text: Option<&str>) -> V {
    let Some(s) = text else { return V::Null };
    match c.mysql {
        MysqlType::Bit1 => V::Bool(s != "0"),
        MysqlType::Bits(n) => {
            let width = usize::from(n).div_ceil(8) * 2;
            let padded = format!("{s:0>width$}");
            V::Bytes(hex(&padded))
        }
        MysqlType::Blob => V::Bytes(hex(s)),
        MysqlType::Decimal(_, scale) => {
            let (neg, body) = s.strip_prefix('-').map_or((false, s), |b| (true, b));
            let (int, frac) = body.split_once('.').unwrap_or((body, ""));
            let digits = format!(
                "{}{int}{frac:0<w$}",
                if neg { "-" } else { "" },
                w = scale as usize
            );
            V::Dec(i256::from_string(&digits).unwrap(), scale)
        }
        MysqlType::Float => V::F32(s.parse::<f64>().unwrap() as f32),
        MysqlType::Double => V::F64(s.parse().unwrap()),
        MysqlType::Date => match date_parts(s) {
            Some((y, m, d)) => V::Date(i32::try_from(days(y, m, d)).unwrap()),
            None => V::Null,
        },
        MysqlType::Datetime | MysqlType::Timestamp => match date_parts(s) {
            Some((y, m, d)) => {
                let h: i64 = s[11..13].parse().unwrap();
                let mi: i64 = s[14..16].parse().unwrap();
                let se: i64 = s[17..19].parse().unwrap();
                let us: i64 = s[20..26].parse().unwrap();
                V::Micros(
                    days(y, m, d) * 86_400_000_000 + (h * 3600 + mi * 60 + se) * 1_000_000 + us,
                )
            }
            None => V::Null,
        },
        MysqlType::Time
        | MysqlType::Varchar
        | MysqlType::Json
        | MysqlType::Enum
        | MysqlType::Set => V::Str(s.to_owned()),
        _ => V::Int(s.parse().unwrap()),
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` of µs since the epoch (DMS's timestamp column).
pub fn stamp_text(micros: i64) -> String {
    ferry_sim::values::dms_timestamp_text(micros)
}

/// Writes the rows of `t` that `condition` selects as one DMS file at `path`: a full-load file
/// (`op` `None`) or a CDC file whose rows all have `op`. `stamp` fills the timestamp column and
/// dates the file.
pub fn write_file(
    db: &mut MySql,
    t: &ModelTable,
    condition: &str,
    op: Option<&str>,
    ts_column: &str,
    stamp: i64,
    path: &Path,
) -> usize {
    let exprs: Vec<String> = t.columns.iter().map(read_expr).collect();
    let rows = db
        .query(&format!(
            "SELECT {} FROM `{}`.`{}` WHERE {condition}",
            exprs.join(", "),
            t.schema,
            t.name
        ))
        .unwrap();
    write_rows(t, &rows, op, ts_column, stamp, path);
    rows.len()
}

/// Writes given rows (text as [`write_file`] reads them) as one DMS file.
pub fn write_rows(
    t: &ModelTable,
    rows: &[Vec<Option<String>>],
    op: Option<&str>,
    ts_column: &str,
    stamp: i64,
    path: &Path,
) {
    let mut fields = vec![Field::new(ts_column, DataType::Utf8, false)];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
        std::iter::repeat_n(stamp_text(stamp), rows.len()),
    ))];
    if let Some(op) = op {
        fields.push(Field::new("Op", DataType::Utf8, true));
        arrays.push(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(op, rows.len()),
        )));
    }
    for (i, c) in t.columns.iter().enumerate() {
        let values: Vec<V> = rows.iter().map(|r| value(c, r[i].as_deref())).collect();
        fields.push(Field::new(c.name, c.mysql.dms_arrow_type(), true));
        arrays.push(build_array(c.mysql, &values.iter().collect::<Vec<_>>()));
    }
    fields.push(Field::new("AR_H_CHANGE_SEQ", DataType::Utf8, true));
    arrays.push(Arc::new(StringArray::from_iter_values(
        std::iter::repeat_n("", rows.len()),
    )));
    let schema = Schema::new(fields);
    let batch = RecordBatch::try_new(Arc::new(schema.clone()), arrays).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_created_by("AWS (ferry tests' DMS)".into())
        .build();
    let mut w = ferry_sim::legacy::LegacyWriter::try_new(file, &schema, props, 10_000).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(u64::try_from(stamp).unwrap());
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

/// A CDC file name at `micros`: `YYYYMMDD-HHMMSSmmm.parquet`, as DMS names them.
pub fn cdc_name(micros: i64) -> String {
    let t = stamp_text(micros);
    format!(
        "{}{}{}-{}{}{}{}.parquet",
        &t[0..4],
        &t[5..7],
        &t[8..10],
        &t[11..13],
        &t[14..16],
        &t[17..19],
        &t[20..23]
    )
}
