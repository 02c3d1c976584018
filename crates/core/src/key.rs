//! DMS object keys: decoding keys as S3 events carry them, parsing what DMS writes, and the order
//! in which a table's files must be applied.
//!
//! DMS writes `[BucketFolder/]schema/table/[partition folders/]file` where the file is a full-load
//! file (`LOAD` + 8 hex digits, optionally `SEGMENTn_`-prefixed or under a parallel-load partition
//! folder) or a CDC file named by its timestamp (`20230115-093000123.parquet`). Anything else that
//! can appear in a DMS bucket (transaction files, csv output, folder markers) is recognised and
//! given a [`SkipReason`]; nothing is ever guessed into a table it does not belong to.

use std::cmp::Ordering;
use std::fmt;

use crate::partition::{DatePartitioning, PartitionDate};

/// Why a key, as it arrived in an S3 event, could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyDecodeError {
    /// A `%` not followed by two hex digits.
    #[error("bad percent escape at byte {offset} of the key")]
    BadEscape {
        /// Byte offset of the `%` in the encoded key.
        offset: usize,
    },
    /// The decoded bytes are not UTF-8 (S3 keys always are).
    #[error("the decoded key is not valid UTF-8")]
    NotUtf8,
    /// The key is empty.
    #[error("the key is empty")]
    Empty,
}

/// Decodes an object key as S3 event notifications carry it: `+` is a space and `%XX` is a byte
/// (including `%2F`, a slash, and multi-byte UTF-8 sequences).
pub fn decode_event_key(encoded: &str) -> Result<String, KeyDecodeError> {
    if encoded.is_empty() {
        return Err(KeyDecodeError::Empty);
    }
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => return Err(KeyDecodeError::BadEscape { offset: i }),
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| KeyDecodeError::NotUtf8)
}

/// Whether `key` looks URL-encoded the way S3 events encode keys (a valid `%XX` escape, or a `+`
/// in a key without spaces). Used where a person may paste either form; code that knows the
/// origin of a key calls [`decode_event_key`] or not, instead.
pub fn looks_event_encoded(key: &str) -> bool {
    let bytes = key.as_bytes();
    let has_escape = bytes.windows(3).any(|w| {
        w[0] == b'%' && (w[1] as char).is_ascii_hexdigit() && (w[2] as char).is_ascii_hexdigit()
    });
    has_escape || (key.contains('+') && !key.contains(' '))
}

/// A key that ferry does not load, and why. Skips are normal (DMS writes more than data files);
/// they are acknowledged and counted, never retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The key ends in `/`: a folder marker, not an object with rows.
    Folder,
    /// A `CDC_TXN-*` transaction file (`PreserveTransactions`): cross-table and always csv;
    /// ferry loads the per-table files instead.
    TransactionFile,
    /// A file that is not parquet (for example `.csv` output of a task not set to parquet).
    NotParquet {
        /// The file name's extension, empty when it has none.
        extension: String,
    },
    /// A `.parquet` name that is neither `LOAD########` nor a CDC timestamp.
    UnknownFileName {
        /// The file name.
        name: String,
    },
    /// Not enough folders for `schema/table/file` below the source's bucket folder.
    NotUnderTableFolder,
    /// The key is not below the bucket folder of the source it was matched to.
    OutsideBucketFolder {
        /// The folder the key was expected under.
        folder: String,
    },
    /// Folders between the table folder and the file that are neither a date partition nor a
    /// parallel-load partition of a full-load file.
    UnexpectedFolders {
        /// The folders, joined by `/`.
        folders: String,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Folder => write!(f, "folder marker (key ends with '/'), no rows to load"),
            SkipReason::TransactionFile => write!(
                f,
                "DMS transaction file (CDC_TXN-*, PreserveTransactions): ferry loads the per-table files instead"
            ),
            SkipReason::NotParquet { extension } if extension.is_empty() => {
                write!(
                    f,
                    "not a parquet file (no extension); set the DMS endpoint to DataFormat=parquet"
                )
            }
            SkipReason::NotParquet { extension } => {
                write!(
                    f,
                    "not a parquet file (.{extension}); set the DMS endpoint to DataFormat=parquet"
                )
            }
            SkipReason::UnknownFileName { name } => write!(
                f,
                "file name {name:?} is neither a full-load file (LOAD########.parquet) nor a CDC file (YYYYMMDD-HHMMSS….parquet)"
            ),
            SkipReason::NotUnderTableFolder => {
                write!(f, "key has no schema/table/ folders before the file name")
            }
            SkipReason::OutsideBucketFolder { folder } => {
                write!(f, "key is not under the source's bucket folder {folder:?}")
            }
            SkipReason::UnexpectedFolders { folders } => write!(
                f,
                "folders {folders:?} between the table folder and the file are not a DMS date partition"
            ),
        }
    }
}

/// A DMS CDC file's timestamp, from its name (`YYYYMMDD-HHMMSS` then any number of fraction
/// digits). DMS writes it in UTC unless `DatePartitionTimezone` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CdcTimestamp {
    /// Calendar year.
    pub year: u16,
    /// Month, 1-12.
    pub month: u8,
    /// Day of month, 1-31.
    pub day: u8,
    /// Hour, 0-23.
    pub hour: u8,
    /// Minute, 0-59.
    pub minute: u8,
    /// Second, 0-60 (a leap second is tolerated).
    pub second: u8,
    /// Fraction of the second in nanoseconds (digits past the ninth are ignored for ordering;
    /// the file name breaks such ties).
    pub nanos: u32,
}

impl CdcTimestamp {
    /// Compact form used in job ids: `20230115T093000123456789` trimmed to the digits present.
    pub fn compact(&self, fraction_digits: usize) -> String {
        let frac = format!("{:09}", self.nanos);
        let frac = &frac[..fraction_digits.min(9)];
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}{frac}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// Microseconds since the epoch (UTC; nanoseconds past the microsecond are dropped).
    pub fn micros(&self) -> i64 {
        let days = crate::civil::days_from_civil(
            i64::from(self.year),
            u32::from(self.month),
            u32::from(self.day),
        );
        let secs =
            i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second);
        days * crate::civil::MICROS_PER_DAY + secs * 1_000_000 + i64::from(self.nanos / 1000)
    }

    /// ISO-8601 form, `2023-01-15T09:30:00.123000000Z`.
    pub fn iso8601(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.nanos
        )
    }
}

/// What kind of DMS file an object is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DmsFile {
    /// A full-load file.
    FullLoad {
        /// The parallel-load partition folder the file sits in, if any.
        partition: Option<String>,
        /// The `n` of a `SEGMENTn_` prefix, if any.
        segment: Option<u32>,
        /// The `LOAD` counter (8 hex digits).
        counter: u32,
    },
    /// A CDC file.
    Cdc {
        /// The timestamp in the file name.
        timestamp: CdcTimestamp,
        /// How many fraction digits the name carried (kept for readable job ids).
        fraction_digits: usize,
    },
}

/// `full_load` or `cdc`, as printed by `ferry plan --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    /// Rows copied by the full load, before any change.
    FullLoad,
    /// Changes captured from the binlog.
    Cdc,
}

impl FileKind {
    /// The snake-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::FullLoad => "full_load",
            FileKind::Cdc => "cdc",
        }
    }
}

impl DmsFile {
    /// The file's kind.
    pub fn kind(&self) -> FileKind {
        match self {
            DmsFile::FullLoad { .. } => FileKind::FullLoad,
            DmsFile::Cdc { .. } => FileKind::Cdc,
        }
    }

    /// A short, readable stamp for job ids: `load00000001`, `seg2_load0000000a`, or the CDC
    /// timestamp's compact form.
    pub fn stamp(&self) -> String {
        match self {
            DmsFile::FullLoad {
                segment: Some(n),
                counter,
                ..
            } => format!("seg{n}_load{counter:08x}"),
            DmsFile::FullLoad {
                segment: None,
                counter,
                ..
            } => format!("load{counter:08x}"),
            DmsFile::Cdc {
                timestamp,
                fraction_digits,
            } => timestamp.compact(*fraction_digits),
        }
    }
}

/// A parsed DMS data object: where it came from and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DmsObject {
    /// The full, decoded object key.
    pub key: String,
    /// The bucket folder (DMS `BucketFolder`), empty when the task writes at the bucket root.
    pub folder: String,
    /// Source schema (MySQL database) name.
    pub schema: String,
    /// Source table name.
    pub table: String,
    /// The date partition folders' date, when `DatePartitionEnabled` put the file under them.
    pub partition_date: Option<PartitionDate>,
    /// The file.
    pub file: DmsFile,
}

impl DmsObject {
    /// `schema.table`.
    pub fn source_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The file's kind.
    pub fn kind(&self) -> FileKind {
        self.file.kind()
    }

    /// Whether the file opens a load run: `LOAD00000001` outside any parallel-load partition or
    /// segment. DMS writes it first whenever it loads the table, on the first load and on every
    /// reload; everything older than it is replaced by the run.
    pub fn is_run_start(&self) -> bool {
        matches!(
            self.file,
            DmsFile::FullLoad {
                partition: None,
                segment: None,
                counter: 1,
            }
        )
    }

    /// The file's place in its table's source order, loaded next to every row (with the row's
    /// position) so that the warehouse orders changes the same way. It sorts by the time DMS
    /// wrote the file, because only that orders a full load against the changes captured while
    /// it ran: DMS caches those changes and writes them after the load, so their own
    /// timestamps are older than rows they must override.
    ///
    /// `written_micros` is when S3 says a full-load file was written (`LastModified`; its name
    /// has no time); a CDC file's name carries the time. The form is
    /// `<20-digit µs>.0.<0|1>.<partition>.<segment>.<counter>.<name>` for a full-load file (`0`
    /// for a run start, see [`DmsObject::is_run_start`] and [`run_start_sql`]) and
    /// `<20-digit µs>.1.<name>` for a CDC file: at the same instant a full load sorts first.
    /// Without a time, full-load files sort before every CDC file (the order within one batch).
    pub fn file_seq(&self, written_micros: Option<i64>) -> String {
        let name = self.key.rsplit('/').next().unwrap_or_default();
        match &self.file {
            DmsFile::FullLoad {
                partition,
                segment,
                counter,
            } => {
                let t = written_micros.unwrap_or(0).max(0);
                // No partition sorts before every named one; no segment before SEGMENT0.
                let partition = partition
                    .as_ref()
                    .map(|p| format!("1{p}"))
                    .unwrap_or_default();
                let segment = segment.map_or(0, |s| u64::from(s) + 1);
                let run = if self.is_run_start() { '0' } else { '1' };
                format!("{t:020}.0.{run}.{partition}.{segment:010}.{counter:08X}.{name}")
            }
            DmsFile::Cdc { timestamp: t, .. } => {
                format!("{:020}.1.{name}", t.micros().max(0))
            }
        }
    }

    /// Compares two files of the same table in the order a batch loads them (full-load files,
    /// then CDC files by time, see [`DmsObject::file_seq`] without write times); the key breaks
    /// any remaining tie, so the order is total.
    pub fn apply_order(&self, other: &Self) -> Ordering {
        self.file_seq(None)
            .cmp(&other.file_seq(None))
            .then_with(|| self.key.cmp(&other.key))
    }
}

/// The `_ferry_file_seq` of a run that starts when a table's files were removed at `micros`
/// (a source TRUNCATE, under `on_truncate: empty`): everything DMS wrote before is older, and
/// what it writes afterwards newer. It reads as a run start ([`run_start_sql`]).
pub fn removal_run_seq(micros: i64) -> String {
    format!("{:020}.0.0..removed", micros.max(0))
}

/// An SQL condition (BigQuery and SQLite) that holds where `seq`, a `_ferry_file_seq` value,
/// is a run start's ([`DmsObject::is_run_start`]).
pub fn run_start_sql(seq: &str) -> String {
    format!("SUBSTR({seq}, 22, 3) = '0.0'")
}

/// The outcome of parsing a key: a data object, or why it is skipped.
pub type ParsedKey = Result<DmsObject, SkipReason>;

/// Parses a decoded key written by a DMS task whose `BucketFolder` is `folder` (empty for none).
///
/// With a known folder the schema and table are exact even when they look like dates. Folders
/// between the table and the file are read as date partitions (`partitioning` when the source
/// declares it, any DMS layout otherwise) or, for a full-load file, as its parallel-load partition.
pub fn parse_key(key: &str, folder: &str, partitioning: Option<DatePartitioning>) -> ParsedKey {
    let folder = folder.trim_matches('/');
    if key.ends_with('/') {
        return Err(SkipReason::Folder);
    }
    let rest = if folder.is_empty() {
        key
    } else {
        match key.strip_prefix(folder).and_then(|r| r.strip_prefix('/')) {
            Some(rest) => rest,
            None => {
                return Err(SkipReason::OutsideBucketFolder {
                    folder: folder.to_owned(),
                });
            }
        }
    };
    let (dirs, file) = split_file(rest)?;
    let file_kind = classify_file_name(file)?;
    let [schema, table, extra @ ..] = dirs.as_slice() else {
        return Err(SkipReason::NotUnderTableFolder);
    };
    let (partition_date, load_partition) = read_partition_folders(extra, partitioning, &file_kind)?;
    Ok(build(
        key,
        folder,
        schema,
        table,
        partition_date,
        load_partition,
        file_kind,
    ))
}

/// Parses a decoded key whose bucket folder is unknown, reading it from the right: the file,
/// then any date partition folders, then table and schema; what is left is the bucket folder.
///
/// Exact for every layout except a full-load file under a parallel-load partition folder, whose
/// partition name would be read as the table: pass the folder to [`parse_key`] when it is known.
pub fn parse_key_unanchored(key: &str) -> ParsedKey {
    let (dirs, file) = split_file(key)?;
    let file_kind = classify_file_name(file)?;
    let mut upto = dirs.len();
    let mut partition_date = None;
    // The longest trailing run of folders that forms a date partition (at most 4 folders).
    for take in (1..=4.min(dirs.len().saturating_sub(2))).rev() {
        if let Some(date) = PartitionDate::parse_any(&dirs[dirs.len() - take..]) {
            partition_date = Some(date);
            upto = dirs.len() - take;
            break;
        }
    }
    if upto < 2 {
        return Err(SkipReason::NotUnderTableFolder);
    }
    let folder = dirs[..upto - 2].join("/");
    Ok(build(
        key,
        &folder,
        dirs[upto - 2],
        dirs[upto - 1],
        partition_date,
        None,
        file_kind,
    ))
}

fn build(
    key: &str,
    folder: &str,
    schema: &str,
    table: &str,
    partition_date: Option<PartitionDate>,
    load_partition: Option<String>,
    file: FileName,
) -> DmsObject {
    let file = match file {
        FileName::Load { segment, counter } => DmsFile::FullLoad {
            partition: load_partition,
            segment,
            counter,
        },
        FileName::Cdc {
            timestamp,
            fraction_digits,
        } => DmsFile::Cdc {
            timestamp,
            fraction_digits,
        },
    };
    DmsObject {
        key: key.to_owned(),
        folder: folder.to_owned(),
        schema: schema.to_owned(),
        table: table.to_owned(),
        partition_date,
        file,
    }
}

fn split_file(rest: &str) -> Result<(Vec<&str>, &str), SkipReason> {
    if rest.ends_with('/') {
        return Err(SkipReason::Folder);
    }
    let mut parts: Vec<&str> = rest.split('/').collect();
    let file = parts.pop().unwrap_or_default();
    if parts.iter().any(|p| p.is_empty()) {
        // `a//b` or a leading slash: not a layout DMS writes.
        return Err(SkipReason::UnexpectedFolders {
            folders: parts.join("/"),
        });
    }
    Ok((parts, file))
}

fn read_partition_folders(
    extra: &[&str],
    partitioning: Option<DatePartitioning>,
    file: &FileName,
) -> Result<(Option<PartitionDate>, Option<String>), SkipReason> {
    if extra.is_empty() {
        return Ok((None, None));
    }
    let declared = partitioning.and_then(|p| p.parse(extra));
    if let Some(date) = declared.or_else(|| PartitionDate::parse_any(extra)) {
        return Ok((Some(date), None));
    }
    match (file, extra) {
        (FileName::Load { .. }, [partition]) => Ok((None, Some((*partition).to_owned()))),
        (FileName::Load { .. }, [partition, date @ ..]) => {
            let date = partitioning
                .and_then(|p| p.parse(date))
                .or_else(|| PartitionDate::parse_any(date));
            match date {
                Some(date) => Ok((Some(date), Some((*partition).to_owned()))),
                None => Err(SkipReason::UnexpectedFolders {
                    folders: extra.join("/"),
                }),
            }
        }
        _ => Err(SkipReason::UnexpectedFolders {
            folders: extra.join("/"),
        }),
    }
}

#[derive(Debug)]
enum FileName {
    Load {
        segment: Option<u32>,
        counter: u32,
    },
    Cdc {
        timestamp: CdcTimestamp,
        fraction_digits: usize,
    },
}

fn classify_file_name(name: &str) -> Result<FileName, SkipReason> {
    if name.starts_with("CDC_TXN-") {
        return Err(SkipReason::TransactionFile);
    }
    let Some(stem) = name.strip_suffix(".parquet") else {
        let extension = match name.rsplit_once('.') {
            Some((_, ext)) => ext.to_owned(),
            None => String::new(),
        };
        return Err(SkipReason::NotParquet { extension });
    };
    parse_load_stem(stem)
        .or_else(|| parse_cdc_stem(stem))
        .ok_or_else(|| SkipReason::UnknownFileName {
            name: name.to_owned(),
        })
}

fn parse_load_stem(stem: &str) -> Option<FileName> {
    let (segment, load) = match stem.strip_prefix("SEGMENT") {
        Some(rest) => {
            let (n, load) = rest.split_once('_')?;
            (Some(parse_digits(n)?), load)
        }
        None => (None, stem),
    };
    let hex = load.strip_prefix("LOAD")?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let counter = u32::from_str_radix(hex, 16).ok()?;
    Some(FileName::Load { segment, counter })
}

fn parse_digits(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_cdc_stem(stem: &str) -> Option<FileName> {
    let (date, time) = stem.split_once('-')?;
    if date.len() != 8
        || time.len() < 6
        || !date.bytes().chain(time.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let num = |s: &str| s.parse::<u32>().ok();
    let (year, month, day) = (num(&date[..4])?, num(&date[4..6])?, num(&date[6..8])?);
    let (hour, minute, second) = (num(&time[..2])?, num(&time[2..4])?, num(&time[4..6])?);
    if !crate::partition::valid_date(year, month, day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let frac = &time[6..];
    let mut padded = frac.chars().take(9).collect::<String>();
    while padded.len() < 9 {
        padded.push('0');
    }
    let timestamp = CdcTimestamp {
        year: year as u16,
        month: month as u8,
        day: day as u8,
        hour: hour as u8,
        minute: minute as u8,
        second: second as u8,
        nanos: padded.parse().ok()?,
    };
    Some(FileName::Cdc {
        timestamp,
        fraction_digits: frac.len(),
    })
}

#[cfg(test)]
#[path = "key_tests.rs"]
mod tests;
