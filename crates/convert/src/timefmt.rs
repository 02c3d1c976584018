//! Date and time text as DMS writes it, to microseconds since the Unix epoch.

use ferry_core::civil::{MICROS_PER_DAY, days_from_civil};

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

/// Reads `.ffffff…` (any number of digits, truncated to microseconds) at the start of `s`.
fn fraction_micros(s: &[u8]) -> Option<i64> {
    match s {
        [] => Some(0),
        [b'.', rest @ ..] if !rest.is_empty() && rest.iter().all(u8::is_ascii_digit) => {
            let mut micros = 0i64;
            for i in 0..6 {
                micros = micros * 10 + rest.get(i).map_or(0, |d| i64::from(d - b'0'));
            }
            Some(micros)
        }
        _ => None,
    }
}

/// Parses `HH:MM:SS[.f…]` within one day (00:00:00 to 23:59:59.999999) to microseconds.
pub(crate) fn parse_time_of_day(s: &str) -> Option<i64> {
    time_of_day(s.as_bytes())
}

fn time_of_day(b: &[u8]) -> Option<i64> {
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, sec) = (digits(&b[0..2])?, digits(&b[3..5])?, digits(&b[6..8])?);
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let whole = (i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec)) * 1_000_000;
    Some(whole + fraction_micros(&b[8..])?)
}

/// Parses `YYYY-MM-DD HH:MM:SS[.f…]` (or with `T`) to microseconds since the epoch, read as
/// UTC (or as a wall clock, for DATETIME).
pub(crate) fn parse_datetime(s: &str) -> Option<i64> {
    DatetimeParser::default().parse(s)
}

/// Microseconds since the epoch of an event time as S3 and EventBridge write it
/// (`2026-11-26T10:15:00.123Z`); `None` when it is not in that form.
pub fn event_time_micros(text: &str) -> Option<i64> {
    text.strip_suffix('Z').and_then(parse_datetime)
}

/// Parses `YYYY-MM-DD HH:MM:SS[.f…]` like [`parse_datetime`], remembering the last date: a
/// column of commit times mostly repeats it, and the calendar arithmetic is then skipped.
#[derive(Default)]
pub(crate) struct DatetimeParser {
    last: Option<([u8; 10], i64)>,
}

impl DatetimeParser {
    pub(crate) fn parse(&mut self, s: &str) -> Option<i64> {
        let b = s.as_bytes();
        if b.len() < 19 || !(b[10] == b' ' || b[10] == b'T') {
            return None;
        }
        let date: [u8; 10] = b[..10].try_into().ok()?;
        let days = match self.last {
            Some((last, days)) if last == date => days,
            _ => {
                let days = date_days(&date)?;
                self.last = Some((date, days));
                days
            }
        };
        Some(days * MICROS_PER_DAY + time_of_day(&b[11..])?)
    }
}

fn date_days(b: &[u8; 10]) -> Option<i64> {
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
        return None;
    }
    Some(days_from_civil(i64::from(y), mo, d))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times() {
        assert_eq!(
            event_time_micros("2026-11-26T10:15:00.123Z"),
            Some(20_783 * MICROS_PER_DAY + 36_900_123_000)
        );
        assert_eq!(
            event_time_micros("2026-11-26T10:15:00Z"),
            Some(20_783 * MICROS_PER_DAY + 36_900_000_000)
        );
        assert_eq!(
            event_time_micros("2026-11-26T10:15:00.123"),
            None,
            "no zone"
        );
        assert_eq!(event_time_micros("2026-11-26T10:15:00+09:00"), None);
        assert_eq!(event_time_micros("yesterday"), None);
    }

    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_datetime("2026-11-26 10:15:00.123456"),
            Some(20_783 * MICROS_PER_DAY + 36_900_123_456)
        );
        assert_eq!(
            parse_datetime("2026-11-26T10:15:00.1"),
            Some(20_783 * MICROS_PER_DAY + 36_900_100_000)
        );
        assert_eq!(
            parse_datetime("2026-11-26 10:15:00.123456789"),
            Some(20_783 * MICROS_PER_DAY + 36_900_123_456)
        );
        assert_eq!(parse_datetime("1969-12-31 23:59:59.999999"), Some(-1));
        for bad in [
            "",
            "2026-11-26",
            "2026-13-01 00:00:00",
            "2026-02-29 00:00:00",
            "2026-11-26 24:00:00",
            "2026-11-26 10:15:00.",
            "2026/11/26 10:15:00",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
        assert!(parse_datetime("2024-02-29 00:00:00").is_some());
        // The remembered date is only reused for the same date text.
        let mut p = DatetimeParser::default();
        assert_eq!(
            p.parse("2026-11-26 00:00:01"),
            Some(20_783 * MICROS_PER_DAY + 1_000_000)
        );
        assert_eq!(
            p.parse("2026-11-26 00:00:02"),
            Some(20_783 * MICROS_PER_DAY + 2_000_000)
        );
        assert_eq!(
            p.parse("2026-11-27 00:00:00"),
            Some(20_784 * MICROS_PER_DAY)
        );
        assert_eq!(p.parse("2026-11-27 25:00:00"), None);
        assert_eq!(p.parse("2026-02-30 00:00:00"), None);
    }

    #[test]
    fn times_of_day() {
        assert_eq!(parse_time_of_day("00:00:00"), Some(0));
        assert_eq!(parse_time_of_day("23:59:59.999999"), Some(86_399_999_999));
        for bad in ["24:00:00", "-01:00:00", "838:59:59", "12:60:00", "1:00:00"] {
            assert_eq!(parse_time_of_day(bad), None, "{bad}");
        }
    }
}
