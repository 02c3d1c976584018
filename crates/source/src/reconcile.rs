//! Reconciling a replica with its source table without exporting either.
//!
//! Each side summarises a segment of the table (its row count and the sums of its row hashes,
//! see [`crate::canon`]) in its own engine. Segments that agree are done. Segments that differ
//! are split into 16 and compared again, down to segments small enough ([`Options::leaf_rows`])
//! that each side lists its keys with their row hashes, which names the exact keys: missing from
//! the replica, extra in it, or different (with the first differing column).
//!
//! Segments are primary-key ranges when the leading key column is an INT64 in the replica (the
//! source reads them with its primary-key index), else ranges of the key's hash; a range of a
//! single leading value (a composite key) is split by hash within it.
//!
//! Changes in flight are not differences: keys that differ are read again on both sides after a
//! wait (the caller's `settle`, long enough for ferry to load the newest changes), and only keys
//! that still differ are reported.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::canon::{self, Col, Dialect};

/// A side's SQL executor: rows of text values. `Send`, so that both sides run at once.
pub type Exec<'a> = Box<dyn FnMut(&str) -> Result<Vec<Vec<Option<String>>>, String> + Send + 'a>;

/// Runs `f` on both sides at once (each side is its own engine), source first in the result.
fn both<T: Send>(
    source: &mut Side<'_>,
    replica: &mut Side<'_>,
    f: impl Fn(&mut Side<'_>) -> Result<T, String> + Sync,
) -> Result<(T, T), String> {
    std::thread::scope(|scope| {
        let f = &f;
        let s = scope.spawn(move || f(source));
        let r = f(replica);
        let s = s
            .join()
            .map_err(|_| "the source side panicked".to_owned())?;
        Ok((s?, r?))
    })
}

/// One side of a comparison: a table in an engine.
pub struct Side<'a> {
    /// `source` or `replica`, for messages.
    pub label: &'static str,
    /// The dialect.
    pub dialect: Dialect,
    /// The table, quoted for the dialect.
    pub table: String,
    /// A condition rows must meet (`_ferry_deleted` rows of a soft-delete replica are left out).
    pub filter: Option<String>,
    /// Runs a query.
    pub exec: Exec<'a>,
}

/// What the comparison needs to know of the table.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The compared columns (both sides have them), in canonical order.
    pub cols: Vec<Col>,
    /// The primary key, in key order.
    pub key: Vec<Col>,
    /// Whether segments can be ranges of the leading key column (an integer on both sides).
    pub integer_lead: bool,
}

impl Shape {
    /// The shape of a table whose compared columns are `cols` and key `key` (names).
    pub fn new(mut cols: Vec<Col>, key: &[String]) -> Result<Shape, String> {
        cols.sort_by(|a, b| a.name.cmp(&b.name));
        let key: Vec<Col> = key
            .iter()
            .map(|k| {
                cols.iter()
                    .find(|c| c.name == *k)
                    .cloned()
                    .ok_or_else(|| format!("key column {k} is not on both sides"))
            })
            .collect::<Result<_, _>>()?;
        let integer_lead = key.first().is_some_and(|c| {
            c.bq == ferry_core::bqtype::BqType::Int64
                && matches!(c.kind, crate::catalog::Kind::Int { bytes, unsigned } if bytes < 8 || !unsigned)
        });
        Ok(Shape {
            cols,
            key,
            integer_lead,
        })
    }
}

/// Comparison settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Segments this small (on the larger side) are listed key by key.
    pub leaf_rows: u64,
    /// Rows per top-level key range (integer keys), the unit of progress and of one
    /// statement's work.
    pub chunk_rows: u64,
    /// Draw a progress bar (rows and rows per second) on stderr.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            leaf_rows: 256,
            chunk_rows: 200_000,
            progress: false,
        }
    }
}

/// A primary key's values, canonical text (`None`: NULL).
pub type Key = Vec<Option<String>>;

/// A key whose rows differ, and the first column (in canonical order) that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Different {
    /// The key.
    pub key: BTreeMap<String, Option<String>>,
    /// The first differing column.
    pub column: String,
    /// Its canonical text in the source.
    pub source: Option<String>,
    /// Its canonical text in the replica.
    pub replica: Option<String>,
}

/// What a comparison found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Rows in the source.
    pub source_rows: u64,
    /// Rows in the replica.
    pub replica_rows: u64,
    /// Keys in the source only.
    pub missing: Vec<BTreeMap<String, Option<String>>>,
    /// Keys in the replica only.
    pub extra: Vec<BTreeMap<String, Option<String>>>,
    /// Keys whose rows differ.
    pub different: Vec<Different>,
    /// Keys that differed at first and agreed after the settle wait (changes in flight).
    pub settled: u64,
    /// Segments compared.
    pub segments: u64,
}

impl Outcome {
    /// Whether the two sides agree.
    pub fn matches(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.different.is_empty()
    }
}

/// A segment: a range of the leading key column, a prefix of the key hash, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    range: Option<(i64, i64)>,
    prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Agg {
    rows: u64,
    sum: u128,
}

fn num<T: std::str::FromStr + Default>(v: Option<&Option<String>>) -> T {
    v.and_then(|x| x.as_deref())
        .and_then(|s| s.split('.').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

/// How a segment is cut into 16: by ranges of the leading key column, or by the next hex digit
/// of the key hash.
enum Split<'s> {
    Range {
        lo: i64,
        width: i64,
        parts: Vec<Segment>,
    },
    Prefix(&'s Segment),
}

impl Split<'_> {
    /// The children, labelled as [`Side::bucket`] labels their rows.
    fn children(self) -> Vec<(String, Segment)> {
        match self {
            Split::Range { parts, .. } => parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| (i.to_string(), p))
                .collect(),
            Split::Prefix(seg) => (0..16)
                .map(|i| {
                    let digit = format!("{i:x}");
                    let child = Segment {
                        range: seg.range,
                        prefix: format!("{}{digit}", seg.prefix),
                    };
                    (digit, child)
                })
                .collect(),
        }
    }
}

/// Progress: called with rows done (on the larger side) and the total.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

impl Side<'_> {
    fn run(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        (self.exec)(sql).map_err(|e| format!("{}: {e}", self.label))
    }

    fn key_text(&self, shape: &Shape) -> String {
        canon::row_text(self.dialect, &shape.key)
    }

    fn row_hash(&self, shape: &Shape) -> String {
        canon::sha256(self.dialect, &canon::row_text(self.dialect, &shape.cols))
    }

    fn lead(&self, shape: &Shape) -> String {
        canon::ident(self.dialect, &shape.key[0].name)
    }

    fn condition(&self, shape: &Shape, seg: &Segment) -> String {
        let mut parts: Vec<String> = self.filter.iter().cloned().collect();
        if let Some((lo, hi)) = seg.range {
            parts.push(format!("{} BETWEEN {lo} AND {hi}", self.lead(shape)));
        }
        if !seg.prefix.is_empty() {
            let kh = canon::sha256(self.dialect, &self.key_text(shape));
            parts.push(format!(
                "SUBSTR({kh}, 1, {}) = {}",
                seg.prefix.len(),
                canon::literal(self.dialect, &seg.prefix)
            ));
        }
        if parts.is_empty() {
            "1 = 1".into()
        } else {
            parts.join(" AND ")
        }
    }

    fn count(&mut self) -> Result<u64, String> {
        let filter = self.filter.clone().unwrap_or_else(|| "1 = 1".into());
        let rows = self.run(&format!(
            "SELECT COUNT(*) FROM {} WHERE {filter}",
            self.table
        ))?;
        Ok(num(rows.first().and_then(|r| r.first())))
    }

    fn bounds(&mut self, shape: &Shape) -> Result<Option<(i64, i64)>, String> {
        let filter = self.filter.clone().unwrap_or_else(|| "1 = 1".into());
        let k = self.lead(shape);
        let rows = self.run(&format!(
            "SELECT MIN({k}), MAX({k}) FROM {} WHERE {filter}",
            self.table
        ))?;
        let r = rows.first();
        match (
            r.and_then(|r| r.first()).cloned().flatten(),
            r.and_then(|r| r.get(1)).cloned().flatten(),
        ) {
            (Some(lo), Some(hi)) => Ok(Some((
                lo.parse()
                    .map_err(|_| format!("{lo:?} is not an integer"))?,
                hi.parse()
                    .map_err(|_| format!("{hi:?} is not an integer"))?,
            ))),
            _ => Ok(None),
        }
    }

    /// The SQL expression labelling a row with its child of `split`.
    fn bucket(&self, shape: &Shape, split: &Split<'_>) -> String {
        match split {
            Split::Range { lo, width, .. } => {
                let k = self.lead(shape);
                match self.dialect {
                    Dialect::MySql => format!("({k} - {lo}) DIV {width}"),
                    Dialect::Sqlite => format!("({k} - {lo}) / {width}"),
                    Dialect::BigQuery => format!("DIV({k} - {lo}, {width})"),
                }
            }
            Split::Prefix(seg) => {
                let kh = canon::sha256(self.dialect, &self.key_text(shape));
                format!("SUBSTR({kh}, {}, 1)", seg.prefix.len() + 1)
            }
        }
    }

    /// Aggregates of `seg` grouped by `bucket` (an SQL expression; a constant for one group).
    fn aggregates(
        &mut self,
        shape: &Shape,
        seg: &Segment,
        bucket: &str,
    ) -> Result<BTreeMap<String, Agg>, String> {
        let d = self.dialect;
        let sql = format!(
            "SELECT b, COUNT(*), SUM(p) FROM (SELECT {bucket} AS b, {} AS p FROM {} WHERE {}) x GROUP BY b",
            canon::hex_piece(d, &self.row_hash(shape)),
            self.table,
            self.condition(shape, seg)
        );
        let mut out = BTreeMap::new();
        for r in self.run(&sql)? {
            let b = r.first().cloned().flatten().unwrap_or_default();
            let b = b.split('.').next().unwrap_or_default().to_owned();
            out.insert(
                b,
                Agg {
                    rows: num(r.get(1)),
                    sum: num(r.get(2)),
                },
            );
        }
        Ok(out)
    }

    /// Keys and row hashes of the rows `cond` selects.
    fn hashes(&mut self, shape: &Shape, cond: &str) -> Result<BTreeMap<Key, String>, String> {
        let keys: Vec<String> = shape
            .key
            .iter()
            .map(|c| canon::value(self.dialect, c))
            .collect();
        let sql = format!(
            "SELECT {}, {} FROM {} WHERE {cond}",
            keys.join(", "),
            self.row_hash(shape),
            self.table
        );
        let n = shape.key.len();
        Ok(self
            .run(&sql)?
            .into_iter()
            .map(|mut r| {
                let h = r.get(n).cloned().flatten().unwrap_or_default();
                r.truncate(n);
                (r, h)
            })
            .collect())
    }

    /// A condition selecting exactly `keys`.
    fn key_condition(&self, shape: &Shape, keys: &[Key]) -> String {
        let d = self.dialect;
        let mut ors = Vec::new();
        for k in keys {
            let ands: Vec<String> = shape
                .key
                .iter()
                .zip(k)
                .map(|(c, v)| {
                    let raw = match d {
                        Dialect::MySql => raw_comparable(c),
                        // INTEGER and TEXT columns compare with their canonical text as stored.
                        Dialect::Sqlite => matches!(
                            c.bq,
                            ferry_core::bqtype::BqType::Int64 | ferry_core::bqtype::BqType::String
                        ),
                        Dialect::BigQuery => false,
                    };
                    let expr = if raw {
                        // The raw column, so the engine uses its primary-key index.
                        canon::ident(d, &c.name)
                    } else {
                        canon::value(d, c)
                    };
                    match v {
                        None => format!("{expr} IS NULL"),
                        Some(v) => format!("{expr} = {}", canon::literal(d, v)),
                    }
                })
                .collect();
            ors.push(format!("({})", ands.join(" AND ")));
        }
        let mut cond = ors.join(" OR ");
        if let Some(f) = &self.filter {
            cond = format!("({f}) AND ({cond})");
        }
        cond
    }

    /// Canonical values of every compared column for `keys`.
    fn values(&mut self, shape: &Shape, keys: &[Key]) -> Result<BTreeMap<Key, Key>, String> {
        let d = self.dialect;
        let n = shape.key.len();
        let mut exprs: Vec<String> = shape.key.iter().map(|c| canon::value(d, c)).collect();
        exprs.extend(shape.cols.iter().map(|c| canon::value(d, c)));
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            exprs.join(", "),
            self.table,
            self.key_condition(shape, keys)
        );
        Ok(self
            .run(&sql)?
            .into_iter()
            .map(|mut r| {
                let vals = r.split_off(n);
                (r, vals)
            })
            .collect())
    }
}

/// Whether a MySQL key column compares with its canonical text as a literal.
fn raw_comparable(c: &Col) -> bool {
    use crate::catalog::Kind;
    matches!(
        c.kind,
        Kind::Int { .. }
            | Kind::Decimal(..)
            | Kind::Text { .. }
            | Kind::Date
            | Kind::Datetime(_)
            | Kind::Timestamp(_)
            | Kind::Time(_)
            | Kind::Year
    ) && c.bq != ferry_core::bqtype::BqType::Bool
}

fn named(shape: &Shape, key: &Key) -> BTreeMap<String, Option<String>> {
    shape
        .key
        .iter()
        .map(|c| c.name.clone())
        .zip(key.iter().cloned())
        .collect()
}

/// Compares the two sides. `settle` is called once, when keys differ, before they are read
/// again: it waits for changes in flight.
pub fn compare(
    source: &mut Side<'_>,
    replica: &mut Side<'_>,
    shape: &Shape,
    options: Options,
    progress: Progress<'_>,
    settle: &mut dyn FnMut(),
) -> Result<Outcome, String> {
    let (source_rows, replica_rows) = both(source, replica, |side| side.count())?;
    let mut out = Outcome {
        source_rows,
        replica_rows,
        ..Outcome::default()
    };
    let total = out.source_rows.max(out.replica_rows);
    let roots: Vec<Segment> = if shape.integer_lead {
        // Key ranges are index range scans: roots of about a chunk each, for progress and
        // short statements.
        let chunks = total.div_ceil(options.chunk_rows.max(1)).max(1);
        let (sb, rb) = both(source, replica, |side| side.bounds(shape))?;
        let bounds = [sb, rb];
        let lo = bounds.iter().flatten().map(|b| b.0).min();
        let hi = bounds.iter().flatten().map(|b| b.1).max();
        match (lo, hi) {
            (Some(lo), Some(hi)) => split_range(lo, hi, chunks),
            _ => Vec::new(),
        }
    } else {
        // A hash prefix is no index: every segment's statement reads the whole table. So the
        // table is one root (summarised cut in 16, one scan), unless its 16ths would be too
        // big to sum exactly (canon::MAX_SEGMENT_ROWS).
        let mut len = 0u32;
        while total / 16u64.saturating_pow(len + 1) >= canon::MAX_SEGMENT_ROWS {
            len += 1;
        }
        (0..16u64.pow(len))
            .map(|i| Segment {
                range: None,
                prefix: if len == 0 {
                    String::new()
                } else {
                    format!("{i:0w$x}", w = len as usize)
                },
            })
            .collect()
    };
    let mut candidates: Vec<Key> = Vec::new();
    let mut done = 0u64;
    let mut work: Vec<(Segment, Agg, Agg)> = Vec::new();
    // Each root segment is summarised already cut into 16, which costs the same scan as one
    // total and saves a pass over every segment that differs.
    for seg in roots {
        let (children, s_rows, r_rows) = split_compare(source, replica, shape, &seg)?;
        out.segments += 1;
        done += s_rows.max(r_rows);
        progress(done.min(total), total);
        work.extend(children);
    }
    while let Some((seg, s, r)) = work.pop() {
        if s.rows.max(r.rows) <= options.leaf_rows || seg.prefix.len() >= 12 {
            leaf(source, replica, shape, &seg, &mut candidates)?;
            continue;
        }
        let (children, _, _) = split_compare(source, replica, shape, &seg)?;
        out.segments += 1;
        work.extend(children);
    }
    if candidates.is_empty() {
        return Ok(out);
    }
    settle();
    // Read the differing keys again, in batches, and classify what still differs.
    candidates.sort();
    candidates.dedup();
    // Per statement: index lookups on the source; in BigQuery each statement scans the
    // compared columns, so it takes many keys at once (well under the 1 MB query limit).
    let per_statement = match replica.dialect {
        Dialect::BigQuery => 5000,
        _ => 200,
    };
    for batch in candidates.chunks(per_statement) {
        let (s_rows, r_rows) = both(source, replica, |side| side.values(shape, batch))?;
        for key in batch {
            match (s_rows.get(key), r_rows.get(key)) {
                (Some(_), None) => out.missing.push(named(shape, key)),
                (None, Some(_)) => out.extra.push(named(shape, key)),
                (Some(s), Some(r)) if s != r => {
                    let i = s.iter().zip(r).position(|(a, b)| a != b).unwrap_or(0);
                    out.different.push(Different {
                        key: named(shape, key),
                        column: shape.cols[i].name.clone(),
                        source: s[i].clone(),
                        replica: r[i].clone(),
                    });
                }
                _ => out.settled += 1,
            }
        }
    }
    Ok(out)
}

/// Cuts `seg` into 16 on both sides and returns the children that differ, with the rows each
/// side holds in `seg`.
#[allow(clippy::type_complexity)]
fn split_compare(
    source: &mut Side<'_>,
    replica: &mut Side<'_>,
    shape: &Shape,
    seg: &Segment,
) -> Result<(Vec<(Segment, Agg, Agg)>, u64, u64), String> {
    let split = match seg.range {
        Some((lo, hi)) if lo != hi => {
            let parts = split_range(lo, hi, 16);
            let width = parts[0].range.map_or(1, |(a, b)| b - a + 1);
            Split::Range { lo, width, parts }
        }
        _ => Split::Prefix(seg),
    };
    let (s_aggs, r_aggs) = both(source, replica, |side| {
        let bucket = side.bucket(shape, &split);
        side.aggregates(shape, seg, &bucket)
    })?;
    let rows = |a: &BTreeMap<String, Agg>| a.values().map(|x| x.rows).sum::<u64>();
    let (s_rows, r_rows) = (rows(&s_aggs), rows(&r_aggs));
    let differing = split
        .children()
        .into_iter()
        .filter_map(|(label, child)| {
            let s = s_aggs.get(&label).copied().unwrap_or_default();
            let r = r_aggs.get(&label).copied().unwrap_or_default();
            (s != r).then_some((child, s, r))
        })
        .collect();
    Ok((differing, s_rows, r_rows))
}

/// Lists a segment's keys and hashes on both sides and keeps the keys that differ.
fn leaf(
    source: &mut Side<'_>,
    replica: &mut Side<'_>,
    shape: &Shape,
    seg: &Segment,
    out: &mut Vec<Key>,
) -> Result<(), String> {
    let (s, r) = both(source, replica, |side| {
        let cond = side.condition(shape, seg);
        side.hashes(shape, &cond)
    })?;
    for (k, h) in &s {
        if r.get(k) != Some(h) {
            out.push(k.clone());
        }
    }
    out.extend(r.keys().filter(|k| !s.contains_key(*k)).cloned());
    Ok(())
}

/// `[lo, hi]` cut into at most `parts` ranges of equal width.
fn split_range(lo: i64, hi: i64, parts: u64) -> Vec<Segment> {
    let span = i128::from(hi) - i128::from(lo) + 1;
    let width = (span + i128::from(parts) - 1) / i128::from(parts.max(1));
    let width = width.max(1);
    let mut out = Vec::new();
    let mut start = i128::from(lo);
    while start <= i128::from(hi) {
        let end = (start + width - 1).min(i128::from(hi));
        out.push(Segment {
            range: Some((
                i64::try_from(start).unwrap_or(i64::MAX),
                i64::try_from(end).unwrap_or(i64::MAX),
            )),
            prefix: String::new(),
        });
        start = end + 1;
    }
    out
}

/// Runs a comparison and reports its progress on stderr as `rows/total (rows/s)` when `show`.
pub fn compare_with_bar(
    source: &mut Side<'_>,
    replica: &mut Side<'_>,
    shape: &Shape,
    options: Options,
    label: &str,
    settle: &mut dyn FnMut(),
) -> Result<Outcome, String> {
    let show = options.progress;
    let started = Instant::now();
    let mut last = Instant::now();
    let mut bar = |done: u64, total: u64| {
        if !show || (last.elapsed() < Duration::from_millis(250) && done < total) {
            return;
        }
        last = Instant::now();
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let width = 30usize;
        let filled = done
            .saturating_mul(width as u64)
            .checked_div(total)
            .map_or(width, |f| usize::try_from(f).unwrap_or(width));
        #[allow(clippy::cast_precision_loss)]
        let rate = done as f64 / secs;
        eprint!(
            "\r{label} [{}{}] {done}/{total} rows, {rate:.0} rows/s ",
            "#".repeat(filled),
            "-".repeat(width - filled.min(width))
        );
        if done >= total {
            eprintln!();
        }
    };
    compare(source, replica, shape, options, &mut bar, settle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_exactly() {
        let r = split_range(1, 100, 16);
        assert_eq!(r.first().unwrap().range, Some((1, 7)));
        assert_eq!(r.last().unwrap().range.unwrap().1, 100);
        let covered: i64 = r
            .iter()
            .map(|s| s.range.map_or(0, |(a, b)| b - a + 1))
            .sum();
        assert_eq!(covered, 100);
        assert_eq!(split_range(5, 5, 16).len(), 1);
        let wide = split_range(i64::MIN, i64::MAX, 16);
        assert_eq!(wide.len(), 16);
        assert_eq!(wide.last().unwrap().range.unwrap().1, i64::MAX);
    }
}
