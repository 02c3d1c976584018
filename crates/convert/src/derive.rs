//! Target schema derivation: a DMS parquet column (its parquet annotation and Arrow type) plus
//! the mapping's hint decide the BigQuery type, and how the column gets there: copied as is,
//! copied with a corrected annotation, or decoded and converted.

use std::sync::Arc;

use arrow_schema::{DataType, TimeUnit as ArrowTimeUnit};
use ferry_core::bqtype::BqType;
use ferry_core::mapping::ColumnHint;
use parquet::basic::{ConvertedType, LogicalType, TimeUnit, Type as PhysicalType};
use parquet::schema::types::{ColumnDescriptor, Type, TypePtr};

/// How a source column reaches the output file.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// The column chunk is copied byte for byte: BigQuery reads it as the target type already.
    Copy,
    /// The column chunk is copied byte for byte under a corrected parquet annotation (the
    /// physical values are already right, the label is not).
    Relabel(TypePtr),
    /// The column is decoded, converted and encoded again.
    Transform(Transform),
}

/// A value conversion for columns whose bytes BigQuery cannot take as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transform {
    /// Any integer to BOOL, MySQL's truth: 0 is false, every other value true.
    IntToBool,
    /// An unsigned 32-bit integer to INT64.
    ToInt64,
    /// An unsigned 64-bit integer to NUMERIC (DECIMAL(20,0)), never wrapped.
    Uint64ToNumeric,
    /// A signed 64-bit column hinted `bigint unsigned`: its bits read as unsigned, to NUMERIC.
    Int64AsUnsigned,
    /// BIT(1) bytes to BOOL.
    BitsToBool,
    /// BIT(n <= 63) big-endian bytes to INT64.
    BitsToInt64,
    /// BIT(64) big-endian bytes to NUMERIC.
    BitsToNumeric,
    /// `HH:MM:SS[.f]` text to TIME.
    StringToTime,
    /// `YYYY-MM-DD HH:MM:SS[.f]` text to DATETIME (wall clock).
    StringToDatetime,
    /// `YYYY-MM-DD HH:MM:SS[.f]` text to TIMESTAMP (UTC).
    StringToTimestamp,
    /// A text, binary or integer value to the hex HMAC-SHA256 under the deployment's hash key
    /// (a `hash` column): STRING.
    KeyedHash,
    /// A timestamp BigQuery cannot read as stored (INT96, nanoseconds) to microseconds;
    /// `utc` false makes it a DATETIME.
    TimestampToMicros {
        /// TIMESTAMP (true) or DATETIME (false).
        utc: bool,
    },
}

impl Transform {
    /// The Arrow type the conversion produces.
    pub(crate) fn output_type(self) -> DataType {
        match self {
            Transform::IntToBool | Transform::BitsToBool => DataType::Boolean,
            Transform::ToInt64 | Transform::BitsToInt64 => DataType::Int64,
            Transform::Uint64ToNumeric | Transform::Int64AsUnsigned | Transform::BitsToNumeric => {
                DataType::Decimal128(20, 0)
            }
            Transform::StringToTime => DataType::Time64(ArrowTimeUnit::Microsecond),
            Transform::KeyedHash => DataType::Utf8,
            Transform::StringToDatetime | Transform::TimestampToMicros { utc: false } => {
                DataType::Timestamp(ArrowTimeUnit::Microsecond, None)
            }
            Transform::StringToTimestamp | Transform::TimestampToMicros { utc: true } => {
                DataType::Timestamp(ArrowTimeUnit::Microsecond, Some("UTC".into()))
            }
        }
    }
}

/// Why a column cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PlanProblem {
    /// The mapping's hint does not fit the column's parquet type.
    HintMismatch,
    /// ferry has no BigQuery type for this parquet type.
    Unsupported,
}

/// The BigQuery type for DECIMAL(p, s): NUMERIC holds 29 integer and 9 fraction digits,
/// BIGNUMERIC 38 and 38; wider has no exact BigQuery type.
pub(crate) fn decimal_type(precision: u8, scale: i8) -> Option<BqType> {
    let (p, s) = (i32::from(precision), i32::from(scale));
    if s < 0 {
        return None;
    }
    if s <= 9 && p - s <= 29 {
        Some(BqType::Numeric)
    } else if s <= 38 && p - s <= 38 {
        Some(BqType::BigNumeric)
    } else {
        None
    }
}

/// What BigQuery reads a parquet column as, annotation included, with no help from ferry; `None`
/// where it would read something else than ferry wants or nothing at all.
fn bigquery_reads_as(descr: &ColumnDescriptor) -> Option<BqType> {
    let logical = descr.logical_type_ref();
    let converted = descr.converted_type();
    match (descr.physical_type(), logical, converted) {
        (PhysicalType::BOOLEAN, None, ConvertedType::NONE) => Some(BqType::Bool),
        (PhysicalType::INT32, None, ConvertedType::NONE | ConvertedType::INT_32) => {
            Some(BqType::Int64)
        }
        (PhysicalType::INT32, Some(LogicalType::Integer(i)), _)
            if i.bit_width == 32 && i.is_signed =>
        {
            Some(BqType::Int64)
        }
        (PhysicalType::INT64, None, ConvertedType::NONE | ConvertedType::INT_64) => {
            Some(BqType::Int64)
        }
        (PhysicalType::INT64, Some(LogicalType::Integer(i)), _)
            if i.bit_width == 64 && i.is_signed =>
        {
            Some(BqType::Int64)
        }
        (PhysicalType::INT32, Some(LogicalType::Date), _)
        | (PhysicalType::INT32, None, ConvertedType::DATE) => Some(BqType::Date),
        (PhysicalType::INT64, Some(LogicalType::Timestamp(t)), _) if t.unit != TimeUnit::NANOS => {
            Some(if t.is_adjusted_to_u_t_c {
                BqType::Timestamp
            } else {
                BqType::Datetime
            })
        }
        (
            PhysicalType::INT64,
            None,
            ConvertedType::TIMESTAMP_MICROS | ConvertedType::TIMESTAMP_MILLIS,
        ) => Some(BqType::Timestamp),
        (PhysicalType::INT64, Some(LogicalType::Time(t)), _) if t.unit == TimeUnit::MICROS => {
            Some(BqType::Time)
        }
        (PhysicalType::FLOAT | PhysicalType::DOUBLE, None, ConvertedType::NONE) => {
            Some(BqType::Float64)
        }
        (PhysicalType::BYTE_ARRAY, Some(LogicalType::String | LogicalType::Enum), _)
        | (PhysicalType::BYTE_ARRAY, None, ConvertedType::UTF8 | ConvertedType::ENUM) => {
            Some(BqType::String)
        }
        // JSON-annotated text: BigQuery loads no JSON column from parquet (page "Work with JSON
        // data"); ferry relabels it STRING and the replica apply parses it.
        (PhysicalType::BYTE_ARRAY, Some(LogicalType::Json), _)
        | (PhysicalType::BYTE_ARRAY, None, ConvertedType::JSON) => None,
        (
            PhysicalType::BYTE_ARRAY | PhysicalType::FIXED_LEN_BYTE_ARRAY,
            None,
            ConvertedType::NONE,
        ) => Some(BqType::Bytes),
        (
            PhysicalType::INT32
            | PhysicalType::INT64
            | PhysicalType::BYTE_ARRAY
            | PhysicalType::FIXED_LEN_BYTE_ARRAY,
            _,
            ConvertedType::DECIMAL,
        ) => {
            let (p, s) = (
                u8::try_from(descr.type_precision()).ok()?,
                i8::try_from(descr.type_scale()).ok()?,
            );
            decimal_type(p, s)
        }
        _ => None,
    }
}

/// The same column under another parquet annotation (`None`: a plain physical type).
fn relabel(descr: &ColumnDescriptor, logical: Option<LogicalType>) -> Result<TypePtr, PlanProblem> {
    let t = descr.self_type();
    let info = t.get_basic_info();
    let mut builder = Type::primitive_type_builder(info.name(), descr.physical_type())
        .with_repetition(info.repetition())
        .with_logical_type(logical)
        .with_length(descr.type_length());
    if info.has_id() {
        builder = builder.with_id(Some(info.id()));
    }
    builder
        .build()
        .map(Arc::new)
        .map_err(|_| PlanProblem::Unsupported)
}

/// Plans one source column: its BigQuery type and how it gets there.
pub(crate) fn plan_column(
    descr: &ColumnDescriptor,
    arrow: &DataType,
    hint: Option<ColumnHint>,
) -> Result<(BqType, Action), PlanProblem> {
    use ColumnHint as H;
    use DataType as D;
    let reads_as = bigquery_reads_as(descr);
    // Copy when BigQuery already reads the column as `want`, else relabel with `label`.
    let copy_or =
        |want: BqType, label: Option<LogicalType>| -> Result<(BqType, Action), PlanProblem> {
            if reads_as == Some(want) {
                Ok((want, Action::Copy))
            } else {
                Ok((want, Action::Relabel(relabel(descr, label)?)))
            }
        };
    let transform = |bq: BqType, t: Transform| Ok((bq, Action::Transform(t)));
    let is_int96 = descr.physical_type() == PhysicalType::INT96;
    match (arrow, hint) {
        (D::Boolean, None | Some(H::Bool | H::Bit(1))) => copy_or(BqType::Bool, None),

        (
            D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64,
            Some(H::Bool),
        ) => transform(BqType::Bool, Transform::IntToBool),
        (D::Int8 | D::Int16 | D::Int32 | D::UInt8 | D::UInt16, None) => {
            copy_or(BqType::Int64, None)
        }
        (D::UInt32, None) => transform(BqType::Int64, Transform::ToInt64),
        (D::Int64, None) => copy_or(BqType::Int64, None),
        (D::Int64, Some(H::UnsignedBigint)) => {
            transform(BqType::Numeric, Transform::Int64AsUnsigned)
        }
        (D::UInt64, None | Some(H::UnsignedBigint)) => {
            transform(BqType::Numeric, Transform::Uint64ToNumeric)
        }

        (D::Float32 | D::Float64, None) => copy_or(BqType::Float64, None),

        (
            D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal128(p, s) | D::Decimal256(p, s),
            None | Some(H::UnsignedBigint),
        ) => {
            let bq = decimal_type(*p, *s).ok_or(PlanProblem::Unsupported)?;
            if reads_as == Some(bq) {
                Ok((bq, Action::Copy))
            } else {
                Err(PlanProblem::Unsupported)
            }
        }

        (D::Date32, None) => copy_or(BqType::Date, Some(LogicalType::Date)),

        (D::Timestamp(_, _), None | Some(H::Timestamp)) if is_int96 => transform(
            BqType::Timestamp,
            Transform::TimestampToMicros { utc: true },
        ),
        (D::Timestamp(_, _), Some(H::Datetime)) if is_int96 => transform(
            BqType::Datetime,
            Transform::TimestampToMicros { utc: false },
        ),
        (
            D::Timestamp(ArrowTimeUnit::Nanosecond, tz),
            hint @ (None | Some(H::Timestamp | H::Datetime)),
        ) => {
            let utc = hint != Some(H::Datetime) && (tz.is_some() || hint == Some(H::Timestamp));
            let bq = if utc {
                BqType::Timestamp
            } else {
                BqType::Datetime
            };
            transform(bq, Transform::TimestampToMicros { utc })
        }
        (D::Timestamp(unit, tz), hint @ (None | Some(H::Timestamp | H::Datetime))) => {
            let unit = if *unit == ArrowTimeUnit::Millisecond {
                TimeUnit::MILLIS
            } else {
                TimeUnit::MICROS
            };
            // Without a hint the file decides (DMS marks every timestamp UTC, DATETIME included:
            // that is what the hint is for).
            let utc = match hint {
                Some(H::Datetime) => false,
                Some(_) => true,
                None => tz.is_some(),
            };
            let bq = if utc {
                BqType::Timestamp
            } else {
                BqType::Datetime
            };
            copy_or(bq, Some(LogicalType::timestamp(utc, unit)))
        }

        (D::Utf8 | D::LargeUtf8, None) => copy_or(BqType::String, Some(LogicalType::String)),
        // JSON stays text in the change log (see `bigquery_reads_as`).
        (D::Utf8 | D::LargeUtf8, Some(H::Json)) => {
            copy_or(BqType::String, Some(LogicalType::String))
        }
        (D::Utf8 | D::LargeUtf8, Some(H::Time)) => transform(BqType::Time, Transform::StringToTime),
        (D::Utf8 | D::LargeUtf8, Some(H::Datetime)) => {
            transform(BqType::Datetime, Transform::StringToDatetime)
        }
        (D::Utf8 | D::LargeUtf8, Some(H::Timestamp)) => {
            transform(BqType::Timestamp, Transform::StringToTimestamp)
        }

        (D::Binary | D::LargeBinary | D::FixedSizeBinary(_), None) => copy_or(BqType::Bytes, None),
        (D::Binary | D::LargeBinary | D::FixedSizeBinary(_), Some(H::Bit(1))) => {
            transform(BqType::Bool, Transform::BitsToBool)
        }
        (D::Binary | D::LargeBinary | D::FixedSizeBinary(_), Some(H::Bit(n))) if n <= 63 => {
            transform(BqType::Int64, Transform::BitsToInt64)
        }
        (D::Binary | D::LargeBinary | D::FixedSizeBinary(_), Some(H::Bit(_))) => {
            transform(BqType::Numeric, Transform::BitsToNumeric)
        }

        (D::Time64(ArrowTimeUnit::Microsecond), None | Some(H::Time))
            if reads_as == Some(BqType::Time) =>
        {
            Ok((BqType::Time, Action::Copy))
        }

        (_, Some(_)) if is_supported_without_hint(descr, arrow) => Err(PlanProblem::HintMismatch),
        _ => Err(PlanProblem::Unsupported),
    }
}

fn is_supported_without_hint(descr: &ColumnDescriptor, arrow: &DataType) -> bool {
    plan_column(descr, arrow, None).is_ok()
}

/// The Arrow type ferry writes for a BigQuery type when it has to produce the column itself
/// (a column the file lacks, or a metadata column).
pub(crate) fn arrow_type_for(bq: BqType) -> DataType {
    match bq {
        BqType::Bool => DataType::Boolean,
        BqType::Int64 => DataType::Int64,
        BqType::Float64 => DataType::Float64,
        BqType::Numeric => DataType::Decimal128(38, 9),
        BqType::BigNumeric => DataType::Decimal256(76, 38),
        BqType::String | BqType::Json => DataType::Utf8,
        BqType::Bytes => DataType::Binary,
        BqType::Date => DataType::Date32,
        BqType::Datetime => DataType::Timestamp(ArrowTimeUnit::Microsecond, None),
        BqType::Time => DataType::Time64(ArrowTimeUnit::Microsecond),
        BqType::Timestamp => DataType::Timestamp(ArrowTimeUnit::Microsecond, Some("UTC".into())),
    }
}
