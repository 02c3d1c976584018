//! Simulated MySQL tables: their columns, the parquet types DMS writes for them, deterministic
//! values (nasty ones included), and what each value must read as in BigQuery.

use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder,
    Float32Builder, Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder, UInt8Builder, UInt16Builder, UInt32Builder,
    UInt64Builder,
};
use arrow_buffer::i256;
use arrow_schema::{DataType, TimeUnit};
use ferry_core::mapping::{ColumnHint, TableMapping};
use serde_json::Value as Json;

use crate::rng::Rng;
use crate::values::{self, V};

/// A MySQL column type, as far as DMS and ferry tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MysqlType {
    /// TINYINT.
    TinyInt,
    /// TINYINT(1) / BOOLEAN.
    Boolean,
    /// TINYINT UNSIGNED.
    TinyIntUnsigned,
    /// SMALLINT.
    SmallInt,
    /// SMALLINT UNSIGNED.
    SmallIntUnsigned,
    /// MEDIUMINT (24 bits, written as INT32).
    MediumInt,
    /// INT.
    Int,
    /// INT UNSIGNED (values above 2^31).
    IntUnsigned,
    /// BIGINT.
    BigInt,
    /// BIGINT UNSIGNED (values above 2^63).
    BigIntUnsigned,
    /// BIT(1).
    Bit1,
    /// BIT(n), n > 1.
    Bits(u8),
    /// DECIMAL(p, s).
    Decimal(u8, i8),
    /// FLOAT.
    Float,
    /// DOUBLE.
    Double,
    /// DATE (zero dates arrive as NULL).
    Date,
    /// DATETIME (wall clock).
    Datetime,
    /// TIMESTAMP (UTC).
    Timestamp,
    /// TIME.
    Time,
    /// YEAR.
    Year,
    /// VARCHAR with unicode.
    Varchar,
    /// JSON.
    Json,
    /// ENUM.
    Enum,
    /// SET (comma-joined).
    Set,
    /// BLOB.
    Blob,
}

impl MysqlType {
    /// The type a mapping hint names.
    pub fn from_hint(hint: ColumnHint) -> MysqlType {
        match hint {
            ColumnHint::Bool => MysqlType::Boolean,
            ColumnHint::Bit(1) => MysqlType::Bit1,
            ColumnHint::Bit(n) => MysqlType::Bits(n),
            ColumnHint::Datetime => MysqlType::Datetime,
            ColumnHint::Timestamp => MysqlType::Timestamp,
            ColumnHint::Json => MysqlType::Json,
            ColumnHint::Time => MysqlType::Time,
            ColumnHint::UnsignedBigint => MysqlType::BigIntUnsigned,
        }
    }

    /// The Arrow type of the parquet column DMS writes (its parquet type is what the parquet
    /// writer derives from it: INT8 as INT32 (INT(8)), UINT64 as INT64 (UINT_64), timestamps as
    /// INT64 TIMESTAMP(MICROS, UTC) whatever MySQL's type, DECIMAL as DECIMAL).
    pub fn dms_arrow_type(self) -> DataType {
        match self {
            MysqlType::TinyInt | MysqlType::Boolean => DataType::Int8,
            MysqlType::SmallInt | MysqlType::Year => DataType::Int16,
            MysqlType::Int | MysqlType::MediumInt => DataType::Int32,
            MysqlType::TinyIntUnsigned => DataType::UInt8,
            MysqlType::SmallIntUnsigned => DataType::UInt16,
            MysqlType::IntUnsigned => DataType::UInt32,
            MysqlType::BigInt => DataType::Int64,
            MysqlType::BigIntUnsigned => DataType::UInt64,
            MysqlType::Bit1 => DataType::Boolean,
            MysqlType::Bits(_) | MysqlType::Blob => DataType::Binary,
            MysqlType::Decimal(p, s) if p > 38 => DataType::Decimal256(p, s),
            MysqlType::Decimal(p, s) => DataType::Decimal128(p, s),
            MysqlType::Float => DataType::Float32,
            MysqlType::Double => DataType::Float64,
            MysqlType::Date => DataType::Date32,
            MysqlType::Datetime | MysqlType::Timestamp => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            MysqlType::Time
            | MysqlType::Varchar
            | MysqlType::Json
            | MysqlType::Enum
            | MysqlType::Set => DataType::Utf8,
        }
    }

    /// A deterministic value; `rng` is seeded from the row's identity. About one value in ten of
    /// a nullable column is NULL, and every type's edge values come up.
    pub fn value(self, rng: &mut Rng, nullable: bool) -> V {
        if nullable && rng.below(10) == 0 {
            return V::Null;
        }
        let pick = rng.below(8);
        match self {
            MysqlType::TinyInt => V::Int(match pick % 3 {
                0 => i128::from(i8::MIN) + i128::from(pick),
                1 => i128::from(i8::MAX) - i128::from(pick),
                _ => i128::from(pick),
            }),
            MysqlType::Boolean => V::Int(if pick == 7 { 5 } else { i128::from(pick % 2) }),
            MysqlType::SmallInt => V::Int(i128::from(rng.range(-32_768, 32_767))),
            MysqlType::TinyIntUnsigned => V::Int(if pick == 0 {
                255
            } else {
                i128::from(rng.range(0, 255))
            }),
            MysqlType::SmallIntUnsigned => V::Int(if pick == 0 {
                65_535
            } else {
                i128::from(rng.range(0, 65_535))
            }),
            MysqlType::MediumInt => V::Int(i128::from(rng.range(-8_388_608, 8_388_607))),
            MysqlType::Year => V::Int(i128::from(rng.range(1901, 2155))),
            MysqlType::Int => V::Int(i128::from(
                rng.range(i64::from(i32::MIN), i64::from(i32::MAX)),
            )),
            MysqlType::IntUnsigned => V::Int(if pick == 0 {
                i128::from(u32::MAX)
            } else {
                i128::from(rng.next() as u32)
            }),
            MysqlType::BigInt => V::Int(match pick {
                0 => i128::from(i64::MIN),
                1 => i128::from(i64::MAX),
                _ => i128::from(rng.next() as i64),
            }),
            MysqlType::BigIntUnsigned => V::Int(match pick {
                0 => i128::from(u64::MAX),
                1 => 1i128 << 63,
                _ => i128::from(rng.next()),
            }),
            MysqlType::Bit1 => V::Bool(pick % 2 == 1),
            MysqlType::Bits(n) => {
                let mask = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
                let v = if pick == 0 { mask } else { rng.next() & mask };
                let len = usize::from(n).div_ceil(8);
                V::Bytes(v.to_be_bytes()[8 - len..].to_vec())
            }
            MysqlType::Decimal(p, s) => {
                // Up to p digits; the widest values come up too.
                let digits = if pick == 0 {
                    u32::from(p)
                } else {
                    1 + (rng.below(u64::from(p)) as u32)
                };
                let mut v = i256::ZERO;
                for _ in 0..digits {
                    v = v
                        .wrapping_mul(i256::from_i128(10))
                        .wrapping_add(i256::from_i128(i128::from(rng.below(10))));
                }
                if pick % 2 == 1 {
                    v = v.wrapping_neg();
                }
                V::Dec(v, s)
            }
            MysqlType::Float => V::F32(
                [0.0, -1.5, f32::MAX, f32::MIN_POSITIVE][pick as usize % 4]
                    + (rng.below(1000) as f32),
            ),
            MysqlType::Double => V::F64(match pick {
                0 => f64::MAX,
                1 => -f64::MIN_POSITIVE,
                2 => 0.1 + 0.2,
                _ => (rng.next() as i64) as f64 / 1e6,
            }),
            MysqlType::Date => V::Date(rng.range(-25_000, 40_000) as i32),
            MysqlType::Datetime | MysqlType::Timestamp => V::Micros(match pick {
                0 => -62_135_596_800_000_000, // 0001-01-01
                1 => 253_402_300_799_999_999, // 9999-12-31 23:59:59.999999
                _ => rng.range(0, 4_102_444_800_000_000),
            }),
            MysqlType::Time => V::Str(values::time_text(rng.range(0, 86_399_999_999))),
            MysqlType::Varchar => V::Str(
                [
                    "플레이어",
                    "😊 lucky",
                    "a \"quoted\" name",
                    "",
                    "tab\there",
                    "über-long name ",
                    "你好",
                    "O'Brien",
                ][pick as usize]
                    .to_owned()
                    + &rng.below(1000).to_string(),
            ),
            MysqlType::Json => V::Str(format!(
                "{{\"level\": {}, \"tag\": \"😊\", \"nested\": {{\"ok\": true}}}}",
                rng.below(100)
            )),
            MysqlType::Enum => {
                V::Str(["bronze", "silver", "gold", "vip"][pick as usize % 4].to_owned())
            }
            MysqlType::Set => {
                V::Str(["", "email", "email,sms", "email,push,sms"][pick as usize % 4].to_owned())
            }
            MysqlType::Blob => {
                V::Bytes((0..rng.below(24)).map(|i| (i * 37 + pick) as u8).collect())
            }
        }
    }

    /// How `v` must read in BigQuery for a column of this type hinted `hint`.
    pub fn expected(self, hint: Option<ColumnHint>, v: &V) -> Json {
        use ColumnHint as H;
        match (self, hint, v) {
            (_, _, V::Null) => Json::Null,
            (MysqlType::Boolean, Some(H::Bool), V::Int(i)) => Json::Bool(*i != 0),
            (MysqlType::Bits(_), Some(H::Bit(_)), V::Bytes(b)) => {
                let n = b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
                Json::String(n.to_string())
            }
            (_, _, V::Int(i)) => values::int_json(*i),
            (_, _, V::Bool(b)) => Json::Bool(*b),
            (_, _, V::F32(f)) => Json::from(f64::from(*f)),
            (_, _, V::F64(f)) => Json::from(*f),
            (_, _, V::Dec(d, s)) => Json::String(values::decimal_text(*d, *s)),
            (_, _, V::Bytes(b)) => Json::String(values::base64(b)),
            (_, _, V::Date(d)) => Json::String(values::date_text(i64::from(*d))),
            (MysqlType::Datetime, Some(H::Datetime), V::Micros(m)) => {
                Json::String(values::datetime_text(*m))
            }
            (_, _, V::Micros(m)) => Json::String(format!("{}Z", values::datetime_text(*m))),
            (MysqlType::Time, Some(H::Time), V::Str(s)) => Json::String(s.clone()),
            (_, _, V::Str(s)) => Json::String(s.clone()),
        }
    }
}

/// One simulated column.
#[derive(Debug, Clone)]
pub struct SimColumn {
    /// Name.
    pub name: String,
    /// MySQL type.
    pub mysql: MysqlType,
    /// The mapping's hint for it.
    pub hint: Option<ColumnHint>,
    /// Part of the primary key.
    pub key: bool,
    /// From which CDC minute the column exists (added to the source table mid-stream).
    pub since_minute: Option<u32>,
}

/// Columns every simulated table has besides its keys and hinted columns: one of each type in
/// the DMS type table.
const ZOO: &[(&str, MysqlType)] = &[
    ("amount", MysqlType::Decimal(20, 4)),
    ("jackpot_share", MysqlType::Decimal(65, 30)),
    ("score", MysqlType::Double),
    ("ratio", MysqlType::Float),
    ("level", MysqlType::SmallInt),
    ("stars", MysqlType::TinyInt),
    ("spins_left", MysqlType::TinyIntUnsigned),
    ("seat_count", MysqlType::SmallIntUnsigned),
    ("xp", MysqlType::MediumInt),
    ("points", MysqlType::IntUnsigned),
    ("external_ref", MysqlType::BigIntUnsigned),
    ("is_flagged", MysqlType::Bit1),
    ("birth_date", MysqlType::Date),
    ("updated_at", MysqlType::Timestamp),
    ("nickname", MysqlType::Varchar),
    ("avatar", MysqlType::Blob),
    ("tier", MysqlType::Enum),
    ("channels", MysqlType::Set),
    ("signup_year", MysqlType::Year),
];

/// The column added to every table half way through the CDC stream.
pub const ADDED_COLUMN: &str = "promo_code";

/// The simulated source table for a mapping: keys, hinted columns, the mapping's other named
/// columns, the type zoo, and a column that appears mid-stream.
pub fn table_columns(t: &TableMapping, add_at_minute: Option<u32>) -> Vec<SimColumn> {
    let mut cols: Vec<SimColumn> = Vec::new();
    let push = |name: &str,
                mysql: MysqlType,
                key: bool,
                since_minute: Option<u32>,
                cols: &mut Vec<SimColumn>| {
        if !cols.iter().any(|c| c.name == name) {
            cols.push(SimColumn {
                name: name.to_owned(),
                mysql,
                hint: t.hint(name),
                key,
                since_minute,
            });
        }
    };
    let guess = |name: &str| match t.hint(name) {
        Some(h) => MysqlType::from_hint(h),
        None if name.ends_with("_id") => MysqlType::BigInt,
        None if name.ends_with("_no") => MysqlType::Int,
        None if name.ends_with("_at") => MysqlType::Timestamp,
        None => MysqlType::Varchar,
    };
    // A change log without a key still needs a row identity: `<table>_id`.
    let keys: Vec<String> = if t.primary_key.is_empty() {
        vec![format!("{}_id", t.table.trim_end_matches('s'))]
    } else {
        t.primary_key.clone()
    };
    for k in &keys {
        push(k, guess(k), true, None, &mut cols);
    }
    for (name, hint) in &t.columns {
        push(name, MysqlType::from_hint(*hint), false, None, &mut cols);
    }
    for name in t
        .cluster_by
        .iter()
        .chain(t.partition.as_ref().map(|p| &p.column))
    {
        push(name, guess(name), false, None, &mut cols);
    }
    for (name, mysql) in ZOO {
        push(name, *mysql, false, None, &mut cols);
    }
    if let Some(m) = add_at_minute {
        push(ADDED_COLUMN, MysqlType::Varchar, false, Some(m), &mut cols);
    }
    cols
}

/// A key column's value for the row numbered `k`: unique in the first key column.
pub fn key_value(col: &SimColumn, position: usize, k: u64) -> V {
    let k = i128::from(k);
    let derived = if position == 0 { k } else { k % 7 + 1 };
    match col.mysql {
        MysqlType::Varchar
        | MysqlType::Enum
        | MysqlType::Set
        | MysqlType::Json
        | MysqlType::Time => V::Str(format!("key-{derived}")),
        MysqlType::BigIntUnsigned if position == 0 => V::Int(derived + (1i128 << 63)),
        _ => V::Int(derived),
    }
}

/// Builds the DMS parquet column for `values` of a column of type `mysql`.
pub fn build_array(mysql: MysqlType, values: &[&V]) -> ArrayRef {
    macro_rules! build {
        ($builder:expr, $pat:pat => $val:expr) => {{
            let mut b = $builder;
            for v in values {
                match v {
                    $pat => b.append_value($val),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match mysql.dms_arrow_type() {
        DataType::Int8 => build!(Int8Builder::new(), V::Int(i) => *i as i8),
        DataType::Int16 => build!(Int16Builder::new(), V::Int(i) => *i as i16),
        DataType::Int32 => build!(Int32Builder::new(), V::Int(i) => *i as i32),
        DataType::UInt8 => build!(UInt8Builder::new(), V::Int(i) => *i as u8),
        DataType::UInt16 => build!(UInt16Builder::new(), V::Int(i) => *i as u16),
        DataType::UInt32 => build!(UInt32Builder::new(), V::Int(i) => *i as u32),
        DataType::Int64 => build!(Int64Builder::new(), V::Int(i) => *i as i64),
        DataType::UInt64 => build!(UInt64Builder::new(), V::Int(i) => *i as u64),
        DataType::Boolean => build!(BooleanBuilder::new(), V::Bool(b) => *b),
        DataType::Binary => build!(BinaryBuilder::new(), V::Bytes(b) => b),
        DataType::Decimal128(p, s) => {
            build!(Decimal128Builder::new().with_precision_and_scale(p, s).unwrap_or_default(), V::Dec(d, _) => d.as_i128())
        }
        DataType::Decimal256(p, s) => {
            build!(Decimal256Builder::new().with_precision_and_scale(p, s).unwrap_or_default(), V::Dec(d, _) => *d)
        }
        DataType::Float32 => build!(Float32Builder::new(), V::F32(f) => *f),
        DataType::Float64 => build!(Float64Builder::new(), V::F64(f) => *f),
        DataType::Date32 => build!(Date32Builder::new(), V::Date(d) => *d),
        DataType::Timestamp(_, _) => {
            build!(TimestampMicrosecondBuilder::new().with_timezone("UTC"), V::Micros(m) => *m)
        }
        _ => build!(StringBuilder::new(), V::Str(s) => s),
    }
}
