//! Source values as MySQL holds them, and how each must read in BigQuery ("canonical" JSON:
//! integers and decimals as exact strings, bytes as base64, times in ISO-8601).
//!
//! `ferry_convert::canonical` renders the converter's output the same way. The two are kept
//! apart on purpose: the simulator's expectations must not come from the code under test.

use arrow_buffer::i256;
use serde_json::Value as Json;

/// One source value.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    /// NULL (also MySQL's zero dates, which DMS writes as NULL).
    Null,
    /// BIT(1).
    Bool(bool),
    /// Any integer type, signed or unsigned.
    Int(i128),
    /// FLOAT.
    F32(f32),
    /// DOUBLE.
    F64(f64),
    /// DECIMAL: unscaled value and scale.
    Dec(i256, i8),
    /// Text.
    Str(String),
    /// Bytes (BLOB, BIT(n) big-endian).
    Bytes(Vec<u8>),
    /// DATE: days since 1970-01-01.
    Date(i32),
    /// DATETIME or TIMESTAMP: µs since the epoch (DATETIME: of the wall clock read as UTC).
    Micros(i64),
}

pub use ferry_core::civil::civil_from_days;

/// `YYYY-MM-DD`.
pub fn date_text(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff`.
pub fn datetime_text(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    let rest = micros.rem_euclid(86_400_000_000);
    format!("{}T{}", date_text(days), time_text(rest))
}

/// `HH:MM:SS.ffffff` for µs since midnight.
pub fn time_text(micros: i64) -> String {
    let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
    format!(
        "{:02}:{:02}:{:02}.{frac:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// DMS's timestamp column text, `yyyy-MM-dd HH:mm:ss.SSSSSS`.
pub fn dms_timestamp_text(micros: i64) -> String {
    datetime_text(micros).replace('T', " ")
}

/// A decimal's exact text without trailing fraction zeros: `12.5`, `-0.001`, `7`.
pub fn decimal_text(unscaled: i256, scale: i8) -> String {
    let negative = unscaled < i256::ZERO;
    let digits = unscaled.wrapping_abs().to_string();
    let scale = scale.max(0) as usize;
    let padded = if digits.len() <= scale {
        format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
    } else {
        digits
    };
    let (int, frac) = padded.split_at(padded.len() - scale);
    let frac = frac.trim_end_matches('0');
    let sign = if negative { "-" } else { "" };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// Standard base64 with padding (how BigQuery's JSON API returns BYTES).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An exact integer as a JSON string.
pub fn int_json(v: i128) -> Json {
    Json::String(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        assert_eq!(date_text(0), "1970-01-01");
        assert_eq!(date_text(20_783), "2026-11-26");
        assert_eq!(date_text(-1), "1969-12-31");
        assert_eq!(
            datetime_text(1_764_151_200_123_456),
            "2025-11-26T10:00:00.123456"
        );
        assert_eq!(datetime_text(-1), "1969-12-31T23:59:59.999999");
        assert_eq!(decimal_text(i256::from_i128(12_500), 3), "12.5");
        assert_eq!(decimal_text(i256::from_i128(-1), 3), "-0.001");
        assert_eq!(decimal_text(i256::from_i128(7_0000), 4), "7");
        assert_eq!(decimal_text(i256::from_i128(0), 2), "0");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
