//! Value conversions for the columns BigQuery cannot take as DMS wrote them.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int8Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, Int64Array, StringArray,
    Time64MicrosecondArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, TimeUnit};

use crate::derive::Transform;
use crate::timefmt;

/// A value a conversion could not carry over exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadValue {
    /// Row index within the array.
    pub(crate) row: usize,
    /// The value, rendered.
    pub(crate) value: String,
    /// Why it cannot be converted.
    pub(crate) reason: &'static str,
}

/// Integer columns of any width as an iterator of `Option<i128>`.
fn integers(array: &dyn Array) -> Option<Box<dyn Iterator<Item = Option<i128>> + '_>> {
    macro_rules! widen {
        ($t:ty) => {
            Box::new(array.as_primitive::<$t>().iter().map(|v| v.map(i128::from)))
        };
    }
    Some(match array.data_type() {
        DataType::Int8 => widen!(Int8Type),
        DataType::Int16 => widen!(Int16Type),
        DataType::Int32 => widen!(Int32Type),
        DataType::Int64 => widen!(Int64Type),
        DataType::UInt8 => widen!(UInt8Type),
        DataType::UInt16 => widen!(UInt16Type),
        DataType::UInt32 => widen!(UInt32Type),
        DataType::UInt64 => widen!(UInt64Type),
        _ => return None,
    })
}

/// Big-endian bytes (BIT(n)) as an iterator of `Option<&[u8]>`.
fn byte_values(array: &dyn Array) -> Option<Box<dyn Iterator<Item = Option<&[u8]>> + '_>> {
    Some(match array.data_type() {
        DataType::Binary => Box::new(array.as_binary::<i32>().iter()),
        DataType::LargeBinary => Box::new(array.as_binary::<i64>().iter()),
        DataType::FixedSizeBinary(_) => Box::new(array.as_fixed_size_binary().iter()),
        _ => return None,
    })
}

/// Text columns as an iterator of `Option<&str>`.
fn strings(array: &dyn Array) -> Option<Box<dyn Iterator<Item = Option<&str>> + '_>> {
    Some(match array.data_type() {
        DataType::Utf8 => Box::new(array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => Box::new(array.as_string::<i64>().iter()),
        _ => return None,
    })
}

fn bits_to_u64(bytes: &[u8]) -> Option<u64> {
    let (high, low) = bytes.split_at(bytes.len().saturating_sub(8));
    if high.iter().any(|&b| b != 0) {
        return None;
    }
    Some(low.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)))
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in bytes {
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Whether a `hash` column of this type can be hashed: text, binary and integers.
pub(crate) fn hashable(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::FixedSizeBinary(_)
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

/// The hex HMAC-SHA256 of each value under `key`: text and binary by their bytes, integers by
/// their decimal digits (so `42` hashes alike whatever its width). NULL stays NULL. `None` for
/// a type [`hashable`] refuses.
pub(crate) fn keyed_hash(
    key: &ferry_core::hashkey::HashKey,
    array: &dyn Array,
) -> Option<ArrayRef> {
    let out: StringArray = if let Some(values) = strings(array) {
        values
            .map(|v| v.map(|s| key.hmac_hex(s.as_bytes())))
            .collect()
    } else if let Some(values) = byte_values(array) {
        values.map(|v| v.map(|b| key.hmac_hex(b))).collect()
    } else {
        integers(array)?
            .map(|v| v.map(|n| key.hmac_hex(n.to_string().as_bytes())))
            .collect()
    };
    Some(Arc::new(out))
}

/// Applies `t` to `array`. The result has the same length and the same NULLs.
pub(crate) fn apply(t: Transform, array: &dyn Array) -> Result<ArrayRef, BadValue> {
    let unsupported = || BadValue {
        row: 0,
        value: format!("{:?}", array.data_type()),
        reason: "unexpected input type",
    };
    let out: ArrayRef = match t {
        // Keyed: applied by `keyed_hash`, which is given the key.
        Transform::KeyedHash => return Err(unsupported()),
        Transform::IntToBool => Arc::new(
            integers(array)
                .ok_or_else(unsupported)?
                .map(|v| v.map(|v| v != 0))
                .collect::<BooleanArray>(),
        ),
        Transform::ToInt64 => Arc::new(
            integers(array)
                .ok_or_else(unsupported)?
                .map(|v| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
                .collect::<Int64Array>(),
        ),
        Transform::Uint64ToNumeric => decimal20(integers(array).ok_or_else(unsupported)?),
        Transform::Int64AsUnsigned => {
            let values = array
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(unsupported)?;
            decimal20(Box::new(
                values.iter().map(|v| v.map(|v| i128::from(v as u64))),
            ))
        }
        Transform::BitsToBool | Transform::BitsToInt64 | Transform::BitsToNumeric => {
            let mut out = Vec::with_capacity(array.len());
            for (row, v) in byte_values(array).ok_or_else(unsupported)?.enumerate() {
                let parsed = match v {
                    None => None,
                    Some(bytes) => Some(bits_to_u64(bytes).ok_or_else(|| BadValue {
                        row,
                        value: hex(bytes),
                        reason: "more than 64 bits",
                    })?),
                };
                if t == Transform::BitsToInt64
                    && let (Some(v), Some(bytes)) = (parsed, v)
                    && v > i64::MAX as u64
                {
                    return Err(BadValue {
                        row,
                        value: hex(bytes),
                        reason: "above INT64 range; hint bit(64) for NUMERIC",
                    });
                }
                out.push(parsed);
            }
            match t {
                Transform::BitsToBool => Arc::new(
                    out.into_iter()
                        .map(|v| v.map(|v| v != 0))
                        .collect::<BooleanArray>(),
                ),
                Transform::BitsToInt64 => Arc::new(
                    out.into_iter()
                        .map(|v| v.map(|v| v as i64))
                        .collect::<Int64Array>(),
                ),
                _ => decimal20(Box::new(out.into_iter().map(|v| v.map(i128::from)))),
            }
        }
        Transform::StringToTime | Transform::StringToDatetime | Transform::StringToTimestamp => {
            let parse: fn(&str) -> Option<i64> = match t {
                Transform::StringToTime => timefmt::parse_time_of_day,
                _ => timefmt::parse_datetime,
            };
            let reason = match t {
                Transform::StringToTime => {
                    "not a time of day 00:00:00-23:59:59.999999 (BigQuery TIME); remove the hint to keep it as STRING"
                }
                _ => "not a YYYY-MM-DD HH:MM:SS[.ffffff] date and time",
            };
            let mut out = Vec::with_capacity(array.len());
            for (row, v) in strings(array).ok_or_else(unsupported)?.enumerate() {
                out.push(match v {
                    None => None,
                    Some(s) => Some(parse(s).ok_or_else(|| BadValue {
                        row,
                        value: s.to_owned(),
                        reason,
                    })?),
                });
            }
            match t {
                Transform::StringToTime => Arc::new(Time64MicrosecondArray::from(out)),
                Transform::StringToDatetime => Arc::new(TimestampMicrosecondArray::from(out)),
                _ => Arc::new(TimestampMicrosecondArray::from(out).with_timezone("UTC")),
            }
        }
        Transform::TimestampToMicros { utc } => {
            let micros: TimestampMicrosecondArray = match array.data_type() {
                DataType::Timestamp(TimeUnit::Second, _) => array
                    .as_primitive::<TimestampSecondType>()
                    .unary_opt(|v| v.checked_mul(1_000_000)),
                DataType::Timestamp(TimeUnit::Millisecond, _) => array
                    .as_primitive::<TimestampMillisecondType>()
                    .unary_opt(|v| v.checked_mul(1_000)),
                DataType::Timestamp(TimeUnit::Microsecond, _) => array
                    .as_primitive::<TimestampMicrosecondType>()
                    .unary(|v| v),
                DataType::Timestamp(TimeUnit::Nanosecond, _) => array
                    .as_primitive::<TimestampNanosecondType>()
                    .unary(|v| v.div_euclid(1_000)),
                _ => return Err(unsupported()),
            };
            if micros.null_count() != array.null_count() {
                return Err(BadValue {
                    row: 0,
                    value: "timestamp".into(),
                    reason: "out of range",
                });
            }
            Arc::new(if utc {
                micros.with_timezone("UTC")
            } else {
                micros
            })
        }
    };
    Ok(out)
}

fn decimal20(values: Box<dyn Iterator<Item = Option<i128>> + '_>) -> ArrayRef {
    let array: Decimal128Array = values.collect();
    // 2^64 - 1 has 20 digits: every unsigned 64-bit value fits DECIMAL(20, 0).
    Arc::new(
        array
            .with_precision_and_scale(20, 0)
            .unwrap_or_else(|_| Decimal128Array::new_null(0)),
    )
}

#[cfg(test)]
mod tests {
    use arrow_array::{BinaryArray, StringArray, UInt64Array};

    use super::*;

    #[test]
    fn unsigned_and_bits_never_wrap() {
        let u = UInt64Array::from(vec![Some(u64::MAX), None, Some(0)]);
        let out = apply(Transform::Uint64ToNumeric, &u).unwrap();
        let d = out.as_primitive::<arrow_array::types::Decimal128Type>();
        assert_eq!(d.value(0), i128::from(u64::MAX));
        assert!(d.is_null(1));
        let bits = BinaryArray::from(vec![
            Some(&[0x80u8, 0, 0, 0, 0, 0, 0, 1][..]),
            Some(&[0x01, 0x02][..]),
        ]);
        let out = apply(Transform::BitsToNumeric, &bits).unwrap();
        assert_eq!(
            out.as_primitive::<arrow_array::types::Decimal128Type>()
                .value(0),
            (1i128 << 63) + 1
        );
        let err = apply(Transform::BitsToInt64, &bits).unwrap_err();
        assert_eq!((err.row, err.value.as_str()), (0, "0x8000000000000001"));
        let small = BinaryArray::from(vec![Some(&[0x01u8, 0x02][..]), None]);
        assert_eq!(
            apply(Transform::BitsToInt64, &small)
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0),
            258
        );
        let wide = BinaryArray::from(vec![Some(&[1u8, 0, 0, 0, 0, 0, 0, 0, 0][..])]);
        assert_eq!(
            apply(Transform::BitsToNumeric, &wide).unwrap_err().reason,
            "more than 64 bits"
        );
    }

    #[test]
    fn time_out_of_range_is_an_error_not_a_wrap() {
        let t = StringArray::from(vec![Some("12:34:56.5"), None, Some("838:59:59")]);
        let err = apply(Transform::StringToTime, &t).unwrap_err();
        assert_eq!((err.row, err.value.as_str()), (2, "838:59:59"));
        let ok = StringArray::from(vec![Some("12:34:56.5"), None]);
        let out = apply(Transform::StringToTime, &ok).unwrap();
        let out = out.as_primitive::<arrow_array::types::Time64MicrosecondType>();
        assert_eq!(out.value(0), 45_296_500_000);
        assert!(out.is_null(1));
    }

    #[test]
    fn mysql_truth() {
        let i = arrow_array::Int8Array::from(vec![Some(0), Some(1), Some(5), None]);
        let b = apply(Transform::IntToBool, &i).unwrap();
        let b = b.as_boolean();
        assert_eq!(
            (b.value(0), b.value(1), b.value(2), b.is_null(3)),
            (false, true, true, true)
        );
    }
}
