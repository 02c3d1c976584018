//! DMS date partition folders (`DatePartitionEnabled`): every `DatePartitionSequence` and
//! `DatePartitionDelimiter` combination DMS can write.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// DMS `DatePartitionSequence`: the order of the date parts in the partition folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DateSequence {
    /// Year, month, day (the DMS default).
    #[serde(rename = "YYYYMMDD")]
    YyyyMmDd,
    /// Year, month, day, hour.
    #[serde(rename = "YYYYMMDDHH")]
    YyyyMmDdHh,
    /// Year, month.
    #[serde(rename = "YYYYMM")]
    YyyyMm,
    /// Month, year, day.
    #[serde(rename = "MMYYYYDD")]
    MmYyyyDd,
    /// Day, month, year.
    #[serde(rename = "DDMMYYYY")]
    DdMmYyyy,
}

/// DMS `DatePartitionDelimiter`: what joins the date parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum DateDelimiter {
    /// One folder per part, `2023/01/15` (the DMS default).
    Slash,
    /// One folder, `2023-01-15`.
    Dash,
    /// One folder, `2023_01_15`.
    Underscore,
    /// One folder, `20230115`.
    None,
}

#[derive(Clone, Copy)]
enum Part {
    Year,
    Month,
    Day,
    Hour,
}

impl Part {
    fn width(self) -> usize {
        match self {
            Part::Year => 4,
            _ => 2,
        }
    }
}

impl DateSequence {
    /// Every sequence, the DMS default first.
    pub const ALL: [DateSequence; 5] = [
        DateSequence::YyyyMmDd,
        DateSequence::YyyyMmDdHh,
        DateSequence::YyyyMm,
        DateSequence::MmYyyyDd,
        DateSequence::DdMmYyyy,
    ];

    fn parts(self) -> &'static [Part] {
        use Part::*;
        match self {
            DateSequence::YyyyMmDd => &[Year, Month, Day],
            DateSequence::YyyyMmDdHh => &[Year, Month, Day, Hour],
            DateSequence::YyyyMm => &[Year, Month],
            DateSequence::MmYyyyDd => &[Month, Year, Day],
            DateSequence::DdMmYyyy => &[Day, Month, Year],
        }
    }

    /// The DMS setting's value, e.g. `YYYYMMDD`.
    pub fn as_str(self) -> &'static str {
        match self {
            DateSequence::YyyyMmDd => "YYYYMMDD",
            DateSequence::YyyyMmDdHh => "YYYYMMDDHH",
            DateSequence::YyyyMm => "YYYYMM",
            DateSequence::MmYyyyDd => "MMYYYYDD",
            DateSequence::DdMmYyyy => "DDMMYYYY",
        }
    }
}

impl DateDelimiter {
    /// Every delimiter, the DMS default first.
    pub const ALL: [DateDelimiter; 4] = [
        DateDelimiter::Slash,
        DateDelimiter::Dash,
        DateDelimiter::Underscore,
        DateDelimiter::None,
    ];

    /// The DMS setting's value, e.g. `SLASH`.
    pub fn as_str(self) -> &'static str {
        match self {
            DateDelimiter::Slash => "SLASH",
            DateDelimiter::Dash => "DASH",
            DateDelimiter::Underscore => "UNDERSCORE",
            DateDelimiter::None => "NONE",
        }
    }
}

/// A DMS date partition layout: sequence and delimiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatePartitioning {
    /// DMS `DatePartitionSequence`.
    #[serde(default = "default_sequence")]
    pub sequence: DateSequence,
    /// DMS `DatePartitionDelimiter`.
    #[serde(default = "default_delimiter")]
    pub delimiter: DateDelimiter,
}

fn default_sequence() -> DateSequence {
    DateSequence::YyyyMmDd
}

fn default_delimiter() -> DateDelimiter {
    DateDelimiter::Slash
}

impl DatePartitioning {
    /// Reads `folders` (the folders between the table folder and the file) as this layout.
    pub fn parse(self, folders: &[&str]) -> Option<PartitionDate> {
        let parts = self.sequence.parts();
        let fields: Vec<&str> = match (self.delimiter, folders) {
            (DateDelimiter::Slash, _) => folders.to_vec(),
            (DateDelimiter::Dash, [one]) => one.split('-').collect(),
            (DateDelimiter::Underscore, [one]) => one.split('_').collect(),
            (DateDelimiter::None, [one]) => {
                let mut fields = Vec::with_capacity(parts.len());
                let mut at = 0;
                for part in parts {
                    fields.push(one.get(at..at + part.width())?);
                    at += part.width();
                }
                if at != one.len() {
                    return None;
                }
                fields
            }
            _ => return None,
        };
        if fields.len() != parts.len() {
            return None;
        }
        let mut date = PartitionDate {
            year: 0,
            month: 0,
            day: None,
            hour: None,
        };
        for (part, field) in parts.iter().zip(fields) {
            if field.len() != part.width() || !field.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let v: u16 = field.parse().ok()?;
            match part {
                Part::Year => date.year = v,
                Part::Month => date.month = v as u8,
                Part::Day => date.day = Some(v as u8),
                Part::Hour => date.hour = Some(v as u8),
            }
        }
        date.is_valid().then_some(date)
    }
}

/// The date a partition folder names. DMS partitions by commit date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionDate {
    /// Year (1970-2199; other values are not read as a partition).
    pub year: u16,
    /// Month, 1-12.
    pub month: u8,
    /// Day of month, absent for `YYYYMM`.
    pub day: Option<u8>,
    /// Hour, present for `YYYYMMDDHH` only.
    pub hour: Option<u8>,
}

impl PartitionDate {
    /// Reads `folders` as any DMS date partition layout, trying the DMS defaults first. For a
    /// source whose layout is declared, [`DatePartitioning::parse`] is exact.
    pub fn parse_any(folders: &[&str]) -> Option<PartitionDate> {
        DateSequence::ALL.iter().find_map(|&sequence| {
            DateDelimiter::ALL.iter().find_map(|&delimiter| {
                DatePartitioning {
                    sequence,
                    delimiter,
                }
                .parse(folders)
            })
        })
    }

    fn is_valid(&self) -> bool {
        (1970..=2199).contains(&self.year)
            && (1..=12).contains(&self.month)
            && self
                .day
                .is_none_or(|d| valid_date(self.year.into(), self.month.into(), d.into()))
            && self.hour.is_none_or(|h| h <= 23)
    }
}

impl fmt::Display for PartitionDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)?;
        if let Some(d) = self.day {
            write!(f, "-{d:02}")?;
        }
        if let Some(h) = self.hour {
            write!(f, "T{h:02}")?;
        }
        Ok(())
    }
}

/// Whether year-month-day is a date of the proleptic Gregorian calendar (year >= 1).
pub(crate) fn valid_date(year: u32, month: u32, day: u32) -> bool {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    year >= 1 && (1..=days).contains(&day)
}
