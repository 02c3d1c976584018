//! The canonical row: one text per row that MySQL and the warehouse (SQLite in local mode,
//! BigQuery in production) each compute in SQL from their own copy, so that equal rows hash
//! equal without either side being exported.
//!
//! # Definition
//! - **Columns**: the table's data columns that both sides have, sorted by name (ferry's
//!   metadata columns and columns only one side has are left out).
//! - **A value** is rendered by the replica column's BigQuery type (the source expression is
//!   chosen so that a correctly typed value renders the same):
//!   - INT64, NUMERIC, BIGNUMERIC: the exact decimal, no trailing fraction zeros (`12.5`, `-3`,
//!     `18446744073709551615`);
//!   - BOOL: `1` or `0` (a TINYINT(1) holding 5 is `1`, as it lands);
//!   - FLOAT64: the shortest decimal that reads back as the same double (FLOAT widened exactly),
//!     rounded half away from zero to 20 decimal places, no trailing zeros; magnitudes from
//!     1e45 on saturate to 45 nines (MySQL's DECIMAL(65,20) limit);
//!   - STRING: the text; JSON: the text without insignificant whitespace, key order kept;
//!   - BYTES: lower-case hex (BIT(n) big-endian, ceil(n/8) bytes, as DMS writes it);
//!   - DATE `YYYY-MM-DD`; DATETIME and TIMESTAMP `YYYY-MM-DD HH:MM:SS.ffffff` (TIMESTAMP in UTC);
//!     TIME `HH:MM:SS.ffffff`; MySQL's zero dates (a zero month or day) are NULL, as DMS writes
//!     them.
//! - **A row** is its values, each as `<length in characters>:<text>` or `~` for NULL, joined by
//!   `|`. The lengths make the text unambiguous: `"ab" + "c"` and `"a" + "bc"` differ (a plain
//!   concatenation, as Google's Data Validation Tool uses, makes them equal), and NULL differs
//!   from the empty string and from the text `~`.
//! - **The row hash** is SHA-256 of the row text's UTF-8 bytes, in lower-case hex. A set of rows
//!   is summarised by its count and the sum of the hash's first 40 bits ([`PIECE_DIGITS`]): order
//!   does not matter, and a row deleted while another is duplicated changes the sum, not only
//!   the count. Each engine computes the hash once per row; keys are then told apart by the
//!   whole hash.

use ferry_core::bqtype::BqType;

use crate::catalog::Kind;

/// An SQL dialect ferry computes canonical rows in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// MySQL 8 and MariaDB 10.5+, the source.
    MySql,
    /// SQLite, the local warehouse (with [`register_sqlite`]'s functions).
    Sqlite,
    /// GoogleSQL, BigQuery.
    BigQuery,
}

/// A compared column: its name, its source type and its type in the replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Col {
    /// Name, the same on both sides.
    pub name: String,
    /// The source's type.
    pub kind: Kind,
    /// The replica's type.
    pub bq: BqType,
}

/// Quotes an identifier for `d`.
pub fn ident(d: Dialect, name: &str) -> String {
    match d {
        Dialect::MySql => format!("`{}`", name.replace('`', "``")),
        Dialect::Sqlite => format!("\"{}\"", name.replace('"', "\"\"")),
        Dialect::BigQuery => ferry_core::sql::ident(name),
    }
}

/// A string literal for `d`.
pub fn literal(d: Dialect, s: &str) -> String {
    match d {
        Dialect::MySql => crate::conn::literal(s),
        Dialect::Sqlite => format!("'{}'", s.replace('\'', "''")),
        Dialect::BigQuery => ferry_core::sql::string_literal(s),
    }
}

const TRIM_ZEROS: (&str, &str) = ("TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM ", "))");

/// The canonical text of column `c` (NULL stays NULL) on side `d`.
pub fn value(d: Dialect, c: &Col) -> String {
    let q = ident(d, &c.name);
    match d {
        Dialect::MySql => mysql_value(&q, c),
        Dialect::Sqlite => match c.bq {
            BqType::Bool | BqType::Int64 => format!("CAST({q} AS TEXT)"),
            BqType::Float64 => format!("ferry_float({q})"),
            BqType::Json => format!("ferry_json_compact({q})"),
            // hex(NULL) is '' in SQLite.
            BqType::Bytes => format!("CASE WHEN {q} IS NULL THEN NULL ELSE lower(hex({q})) END"),
            BqType::Datetime => format!("replace({q}, 'T', ' ')"),
            BqType::Timestamp => format!("replace(replace({q}, 'T', ' '), 'Z', '')"),
            _ => q,
        },
        Dialect::BigQuery => bigquery_value(&q, c.bq),
    }
}

/// BigQuery's canonical text. Written not to depend on how `CAST(NUMERIC AS STRING)` pads, or
/// on `%Y` padding years below 1000: trailing zeros are trimmed and years padded explicitly.
fn bigquery_value(q: &str, bq: BqType) -> String {
    let trim = |s: String| format!("IF(STRPOS({s}, '.') > 0, RTRIM(RTRIM({s}, '0'), '.'), {s})");
    let year = |e: String| format!("LPAD(CAST(EXTRACT(YEAR FROM {e}) AS STRING), 4, '0')");
    match bq {
        BqType::Bool => format!("CASE WHEN {q} IS NULL THEN NULL WHEN {q} THEN '1' ELSE '0' END"),
        BqType::Int64 => format!("CAST({q} AS STRING)"),
        BqType::Numeric | BqType::BigNumeric => trim(format!("CAST({q} AS STRING)")),
        // The shortest round-trip digits (CAST to STRING), then MySQL's DECIMAL(65,20) rounding.
        BqType::Float64 => trim(format!(
            "CAST(ROUND(SAFE_CAST(CAST({q} AS STRING) AS BIGNUMERIC), 20) AS STRING)"
        )),
        BqType::Json => format!("TO_JSON_STRING({q})"),
        BqType::Bytes => format!("TO_HEX({q})"),
        BqType::Date => format!("CONCAT({}, FORMAT_DATE('-%m-%d', {q}))", year(q.to_owned())),
        BqType::Datetime => format!(
            "CONCAT({}, FORMAT_DATETIME('-%m-%d %H:%M:%E6S', {q}))",
            year(q.to_owned())
        ),
        BqType::Timestamp => format!(
            "CONCAT({}, FORMAT_TIMESTAMP('-%m-%d %H:%M:%E6S', {q}, 'UTC'))",
            // EXTRACT from a TIMESTAMP reads it in UTC.
            year(q.to_owned())
        ),
        BqType::Time => format!("FORMAT_TIME('%H:%M:%E6S', {q})"),
        BqType::String => q.to_owned(),
    }
}

fn mysql_value(q: &str, c: &Col) -> String {
    let (trim_open, trim_close) = TRIM_ZEROS;
    let zero_date = |fmt: &str| {
        format!(
            "CASE WHEN MONTH({q}) = 0 OR DAYOFMONTH({q}) = 0 THEN NULL ELSE DATE_FORMAT({q}, '{fmt}') END"
        )
    };
    match (c.bq, c.kind) {
        (BqType::Bool, _) => {
            format!("CASE WHEN {q} IS NULL THEN NULL WHEN {q} <> 0 THEN '1' ELSE '0' END")
        }
        (_, Kind::Bit(n)) if c.bq == BqType::Bytes => format!(
            "LOWER(LPAD(HEX({q}), {}, '0'))",
            2 * u32::from(n).div_ceil(8)
        ),
        (BqType::Int64 | BqType::Numeric | BqType::BigNumeric, Kind::Bit(_)) => {
            format!("CAST({q} + 0 AS CHAR)")
        }
        (BqType::Numeric | BqType::BigNumeric, Kind::Decimal(_, s)) if s > 0 => {
            format!("{trim_open}CAST({q} AS CHAR){trim_close}")
        }
        (BqType::Float64, _) => format!(
            "{trim_open}CAST(CAST(CAST({q} AS DOUBLE) AS DECIMAL(65,20)) AS CHAR){trim_close}"
        ),
        (BqType::Bytes, _) => format!("LOWER(HEX({q}))"),
        (BqType::Date, _) => zero_date("%Y-%m-%d"),
        (BqType::Datetime | BqType::Timestamp, _) => zero_date("%Y-%m-%d %H:%i:%s.%f"),
        (BqType::Time, _) => format!("TIME_FORMAT({q}, '%H:%i:%s.%f')"),
        (BqType::Json, _) => format!("JSON_COMPACT({q})"),
        _ => format!("CAST({q} AS CHAR)"),
    }
}

/// The encoded value: `<length>:<text>`, or `~` for NULL.
fn encoded(d: Dialect, v: &str) -> String {
    match d {
        Dialect::MySql => format!("IF(({v}) IS NULL, '~', CONCAT(CHAR_LENGTH({v}), ':', {v}))"),
        Dialect::Sqlite => {
            format!("CASE WHEN ({v}) IS NULL THEN '~' ELSE length({v}) || ':' || ({v}) END")
        }
        Dialect::BigQuery => {
            format!("IF(({v}) IS NULL, '~', CONCAT(CAST(LENGTH({v}) AS STRING), ':', {v}))")
        }
    }
}

/// The row text of `cols` on side `d`.
pub fn row_text(d: Dialect, cols: &[Col]) -> String {
    let parts: Vec<String> = cols.iter().map(|c| encoded(d, &value(d, c))).collect();
    if parts.is_empty() {
        return literal(d, "");
    }
    match d {
        Dialect::MySql => format!("CONCAT_WS('|', {})", parts.join(", ")),
        Dialect::Sqlite => parts.join(" || '|' || "),
        Dialect::BigQuery => format!("CONCAT({})", parts.join(", '|', ")),
    }
}

/// Lower-case hex SHA-256 of `text` (a UTF-8 string expression).
pub fn sha256(d: Dialect, text: &str) -> String {
    match d {
        Dialect::MySql => format!("SHA2({text}, 256)"),
        Dialect::Sqlite => format!("ferry_sha256({text})"),
        Dialect::BigQuery => format!("TO_HEX(SHA256({text}))"),
    }
}

/// Hex digits of the row hash that segment sums add up: 40 bits, so a segment of fewer than
/// [`MAX_SEGMENT_ROWS`] rows sums within a signed 64-bit integer on every engine.
pub const PIECE_DIGITS: u32 = 10;

/// Rows a summarised segment may hold: 2^23 (2^23 x 2^40 = 2^63).
pub const MAX_SEGMENT_ROWS: u64 = 1 << 23;

/// The integer of the first [`PIECE_DIGITS`] hex digits of hex expression `h`.
pub fn hex_piece(d: Dialect, h: &str) -> String {
    let n = PIECE_DIGITS;
    match d {
        Dialect::MySql => format!("CAST(CONV(SUBSTRING({h}, 1, {n}), 16, 10) AS UNSIGNED)"),
        Dialect::Sqlite => format!("ferry_hex_int(substr({h}, 1, {n}))"),
        Dialect::BigQuery => format!("CAST(CONCAT('0x', SUBSTR({h}, 1, {n})) AS INT64)"),
    }
}

/// Registers the functions the SQLite dialect uses: `ferry_sha256(text)`, `ferry_hex_int(hex)`,
/// `ferry_float(real)` and `ferry_json_compact(text)`.
pub fn register_sqlite(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("ferry_sha256", 1, flags, |ctx| {
        let text: Option<String> = ctx.get(0)?;
        Ok(text.map(|t| hex_sha256(t.as_bytes())))
    })?;
    conn.create_scalar_function("ferry_hex_int", 1, flags, |ctx| {
        let text: Option<String> = ctx.get(0)?;
        Ok(text.and_then(|t| i64::from_str_radix(&t, 16).ok()))
    })?;
    conn.create_scalar_function("ferry_float", 1, flags, |ctx| {
        let v: Option<f64> = ctx.get(0)?;
        Ok(v.map(float_text))
    })?;
    conn.create_scalar_function("ferry_json_compact", 1, flags, |ctx| {
        let v: Option<String> = ctx.get(0)?;
        Ok(v.map(|t| json_compact(&t)))
    })?;
    Ok(())
}

/// Lower-case hex SHA-256.
pub fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// JSON text without whitespace outside strings (what MariaDB's `JSON_COMPACT` does).
pub fn json_compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for ch in text.chars() {
        if in_string {
            out.push(ch);
            match (escaped, ch) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if ch == '"' {
            in_string = true;
            out.push(ch);
        } else if !ch.is_whitespace() {
            out.push(ch);
        }
    }
    out
}

/// A double's canonical text (see the module's definition): shortest round-trip digits,
/// rounded half away from zero to 20 places, trailing zeros trimmed, saturating at 1e45.
pub fn float_text(v: f64) -> String {
    const SCALE: usize = 20;
    const INT_DIGITS: usize = 45;
    if !v.is_finite() {
        return v.to_string();
    }
    // The shortest digit count that reads back as the same double; when two such decimals are
    // equally close (the double lies half way), MySQL's dtoa takes the even one, as correctly
    // rounded formatting at that precision does.
    let shortest = format!("{:e}", v.abs());
    let n = shortest
        .split('e')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_digit)
        .count()
        .max(1);
    let sci = format!("{:.*e}", n - 1, v.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    // Value = 0.digits × 10^(exp + 1): place the point.
    let point = exp + 1;
    let (mut int, mut frac) = if point <= 0 {
        (
            "0".to_owned(),
            "0".repeat(usize::try_from(-point).unwrap_or(0)) + &digits,
        )
    } else {
        let p = usize::try_from(point).unwrap_or(0);
        if digits.len() <= p {
            (
                digits.clone() + &"0".repeat(p - digits.len()),
                String::new(),
            )
        } else {
            (digits[..p].to_owned(), digits[p..].to_owned())
        }
    };
    if frac.len() > SCALE {
        let round_up = frac.as_bytes()[SCALE] >= b'5';
        frac.truncate(SCALE);
        if round_up {
            let mut all: Vec<u8> = format!("{int}{frac}").into_bytes();
            let mut i = all.len();
            loop {
                if i == 0 {
                    all.insert(0, b'1');
                    break;
                }
                i -= 1;
                if all[i] == b'9' {
                    all[i] = b'0';
                } else {
                    all[i] += 1;
                    break;
                }
            }
            let s = String::from_utf8(all).unwrap_or_default();
            let cut = s.len() - SCALE;
            int = s[..cut].to_owned();
            frac = s[cut..].to_owned();
        }
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let (int, frac) = if int.len() > INT_DIGITS {
        ("9".repeat(INT_DIGITS), "9".repeat(SCALE))
    } else {
        (int.to_owned(), frac)
    };
    let frac = frac.trim_end_matches('0');
    let body = if frac.is_empty() {
        int
    } else {
        format!("{int}.{frac}")
    };
    if v.is_sign_negative() && body != "0" {
        format!("-{body}")
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_render_as_mysql_casts_them() {
        // MariaDB's rule, TRIM(... CAST(CAST(CAST(x AS DOUBLE) AS DECIMAL(65,20)) AS CHAR)):
        // 0.1, 0.1f32, -0, 1e-7, 1e300 and the half-way case were read off MariaDB 10.11; the
        // reconcile test compares FLOAT and DOUBLE edge values with MariaDB end to end.
        assert_eq!(float_text(0.1), "0.1");
        assert_eq!(float_text(f64::from(0.1f32)), "0.10000000149011612");
        // Half way between two shortest forms: the even one, as MariaDB prints it.
        assert_eq!(float_text(f64::from(512.333_3_f32)), "512.3333129882812");
        assert_eq!(float_text(2.675), "2.675");
        assert_eq!(float_text(-0.0), "0");
        assert_eq!(float_text(1e-7), "0.0000001");
        assert_eq!(float_text(1e-21), "0");
        assert_eq!(float_text(5e-21), "0.00000000000000000001");
        assert_eq!(float_text(123_456_789_012_345_678.0), "123456789012345680");
        assert_eq!(float_text(-1.5), "-1.5");
        assert_eq!(
            float_text(1e300),
            format!("{}.{}", "9".repeat(45), "9".repeat(20))
        );
        assert_eq!(float_text(0.999_999_999_999_999_999_9), "1");
    }

    #[test]
    fn json_loses_only_whitespace() {
        assert_eq!(
            json_compact(r#"{"a" : 1.50,  "b": "x  y", "c":[ 1 , {"d" :null}], "e": "q\" :"}"#),
            r#"{"a":1.50,"b":"x  y","c":[1,{"d":null}],"e":"q\" :"}"#
        );
    }

    #[test]
    fn the_row_text_is_unambiguous() {
        let c = |name: &str| Col {
            name: name.into(),
            kind: Kind::Text { lob: false },
            bq: BqType::String,
        };
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        register_sqlite(&conn).unwrap();
        let text = |a: Option<&str>, b: Option<&str>| -> String {
            conn.query_row(
                &format!(
                    "SELECT {} FROM (SELECT ?1 AS a, ?2 AS b)",
                    row_text(Dialect::Sqlite, &[c("a"), c("b")])
                ),
                rusqlite::params![a, b],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(text(Some("ab"), Some("c")), "2:ab|1:c");
        assert_ne!(text(Some("ab"), Some("c")), text(Some("a"), Some("bc")));
        assert_eq!(text(None, Some("")), "~|0:");
        assert_ne!(text(Some("~"), None), text(None, None));
        assert_eq!(text(Some("한글"), None), "2:한글|~");
    }
}
