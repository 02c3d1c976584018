//! Canonical values: how a converted column's values read in BigQuery, as JSON. Integers,
//! NUMERIC and BIGNUMERIC are exact strings, BYTES base64, DATE `YYYY-MM-DD`, DATETIME
//! `YYYY-MM-DDTHH:MM:SS.ffffff`, TIMESTAMP the same with `Z`, TIME `HH:MM:SS.ffffff`. Used to
//! compare what ferry wrote with what the source held, exactly.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Decimal256Type, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, Time64MicrosecondType, TimestampMicrosecondType,
    TimestampMillisecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use serde_json::{Map, Value as Json};

/// Renders row `row` of `array`. Types ferry never writes render as `null`.
pub fn value(array: &dyn Array, row: usize) -> Json {
    if array.is_null(row) {
        return Json::Null;
    }
    let int = |v: i128| Json::String(v.to_string());
    match array.data_type() {
        DataType::Boolean => Json::Bool(array.as_boolean().value(row)),
        DataType::Int8 => int(array.as_primitive::<Int8Type>().value(row).into()),
        DataType::Int16 => int(array.as_primitive::<Int16Type>().value(row).into()),
        DataType::Int32 => int(array.as_primitive::<Int32Type>().value(row).into()),
        DataType::Int64 => int(array.as_primitive::<Int64Type>().value(row).into()),
        DataType::UInt8 => int(array.as_primitive::<UInt8Type>().value(row).into()),
        DataType::UInt16 => int(array.as_primitive::<UInt16Type>().value(row).into()),
        DataType::UInt32 => int(array.as_primitive::<UInt32Type>().value(row).into()),
        DataType::UInt64 => int(array.as_primitive::<UInt64Type>().value(row).into()),
        DataType::Float32 => Json::from(f64::from(array.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => Json::from(array.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(_, s) => Json::String(decimal(
            &array
                .as_primitive::<Decimal128Type>()
                .value(row)
                .to_string(),
            *s,
        )),
        DataType::Decimal256(_, s) => Json::String(decimal(
            &array
                .as_primitive::<Decimal256Type>()
                .value(row)
                .to_string(),
            *s,
        )),
        DataType::Utf8 => Json::String(array.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => Json::String(array.as_string::<i64>().value(row).to_owned()),
        DataType::Binary => Json::String(base64(array.as_binary::<i32>().value(row))),
        DataType::LargeBinary => Json::String(base64(array.as_binary::<i64>().value(row))),
        DataType::FixedSizeBinary(_) => {
            Json::String(base64(array.as_fixed_size_binary().value(row)))
        }
        DataType::Date32 => Json::String(date(i64::from(
            array.as_primitive::<Date32Type>().value(row),
        ))),
        DataType::Time64(TimeUnit::Microsecond) => Json::String(time(
            array.as_primitive::<Time64MicrosecondType>().value(row),
        )),
        DataType::Timestamp(unit, tz) => {
            let micros = match unit {
                TimeUnit::Microsecond => {
                    array.as_primitive::<TimestampMicrosecondType>().value(row)
                }
                TimeUnit::Millisecond => {
                    array.as_primitive::<TimestampMillisecondType>().value(row) * 1000
                }
                _ => return Json::Null,
            };
            let days = micros.div_euclid(86_400_000_000);
            let text = format!("{}T{}", date(days), time(micros.rem_euclid(86_400_000_000)));
            Json::String(if tz.is_some() { text + "Z" } else { text })
        }
        _ => Json::Null,
    }
}

/// Renders every row of a batch as an object keyed by column name.
pub fn rows(batch: &RecordBatch) -> Vec<Map<String, Json>> {
    (0..batch.num_rows())
        .map(|row| {
            batch
                .schema()
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(f, a)| (f.name().clone(), value(a.as_ref(), row)))
                .collect()
        })
        .collect()
}

/// An unscaled decimal's digits with `scale`, without trailing fraction zeros.
fn decimal(unscaled: &str, scale: i8) -> String {
    let (sign, digits) = match unscaled.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", unscaled),
    };
    let scale = usize::try_from(scale).unwrap_or(0);
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

fn date(days: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn time(micros: i64) -> String {
    let secs = micros / 1_000_000;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        micros % 1_000_000
    )
}

/// Standard base64 with padding, as BigQuery returns BYTES.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renderings() {
        assert_eq!(decimal("-1", 3), "-0.001");
        assert_eq!(decimal("125000", 4), "12.5");
        assert_eq!(decimal("18446744073709551615", 0), "18446744073709551615");
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(-719_162), "0001-01-01");
        assert_eq!(date(2_932_896), "9999-12-31");
        assert_eq!(time(86_399_999_999), "23:59:59.999999");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }
}
