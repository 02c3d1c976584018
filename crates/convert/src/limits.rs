//! What a file claims, checked before anything is decoded: a parquet reader allocates what the
//! footer and the page headers say (rows, uncompressed page sizes), so a crafted file of a few
//! hundred bytes could otherwise ask for gigabytes and abort the process, taking the whole
//! batch with it.
//!
//! - From the footer ([`check_footer`]): rows per file and per row group against caps, every
//!   column chunk inside the file, and each chunk's uncompressed size plausible for its
//!   compressed size.
//! - From the page headers of the columns ferry decodes ([`check_pages`]), read with a small
//!   Thrift compact-protocol reader before the parquet reader sees them: each page's uncompressed
//!   size against a cap, against its compressed size (no codec expands data by more than about
//!   1,032 times, deflate's limit; uncompressed pages are their own size), and inside its chunk.
//!
//! Columns that are copied are never decompressed by ferry, so their pages are not scanned.
//! A file over a cap fails permanently, naming the cap, its setting and the claim.

use parquet::basic::Compression;
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};
use parquet::file::reader::{ChunkReader, Length};

use crate::error::{ConvertError, Result};
use crate::source::RangeReader;

/// Caps on what one file may claim, with defaults that fit a 1 GB Lambda. Settings: the
/// environment variables named per field (read once per process by [`Limits::from_env`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows in one file (`FERRY_MAX_ROWS_PER_FILE`, default 500,000,000: DMS cuts full-load
    /// files at `MaxFileSize`, 1 GB by default).
    pub max_rows_per_file: u64,
    /// Rows in one row group (`FERRY_MAX_ROWS_PER_ROW_GROUP`, default 32,000,000; DMS's
    /// `RowGroupLength` defaults to 10,000). The metadata columns ferry encodes for a row group
    /// are buffered until it closes, about 15 bytes per row (2^24 rows measured at 250 MB peak),
    /// so this cap keeps a 1 GB Lambda safe.
    pub max_rows_per_row_group: u64,
    /// Uncompressed bytes of one page (`FERRY_MAX_PAGE_MIB`, default 128 MiB; DMS writes
    /// pages of about 1 MiB).
    pub max_page_bytes: u64,
    /// Uncompressed bytes per compressed byte of a page or column chunk
    /// (`FERRY_MAX_COMPRESSION_RATIO`, default 1,100: deflate cannot exceed about 1,032).
    pub max_compression_ratio: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_rows_per_file: 500_000_000,
            max_rows_per_row_group: 32_000_000,
            max_page_bytes: 128 << 20,
            max_compression_ratio: 1_100,
        }
    }
}

impl Limits {
    /// The defaults, with any of `FERRY_MAX_ROWS_PER_FILE`, `FERRY_MAX_ROWS_PER_ROW_GROUP`,
    /// `FERRY_MAX_PAGE_MIB`, `FERRY_MAX_COMPRESSION_RATIO` set in the environment (read once;
    /// an unreadable value keeps the default).
    pub fn from_env() -> Limits {
        static LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();
        *LIMITS.get_or_init(|| {
            let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
            let d = Limits::default();
            Limits {
                max_rows_per_file: var("FERRY_MAX_ROWS_PER_FILE").unwrap_or(d.max_rows_per_file),
                max_rows_per_row_group: var("FERRY_MAX_ROWS_PER_ROW_GROUP")
                    .unwrap_or(d.max_rows_per_row_group),
                max_page_bytes: var("FERRY_MAX_PAGE_MIB")
                    .map(|m| m << 20)
                    .unwrap_or(d.max_page_bytes),
                max_compression_ratio: var("FERRY_MAX_COMPRESSION_RATIO")
                    .unwrap_or(d.max_compression_ratio),
            }
        })
    }
}

fn over(what: String, claim: u64, cap: u64, setting: &str) -> ConvertError {
    ConvertError::LimitExceeded {
        what,
        claim,
        cap,
        setting: setting.to_owned(),
    }
}

/// Slack for tiny pages, whose headers and codec framing dominate their size.
const SLACK: u64 = 64 << 10;

/// Whether `uncompressed` is plausible for `compressed` bytes under `codec`.
/// (The ratio applies to the codecs DMS writes, SNAPPY and GZIP, and to LZO; ZSTD, LZ4 and
/// BROTLI can legitimately exceed any ratio on constant data, so only the page cap bounds them.)
fn plausible(codec: Compression, compressed: u64, uncompressed: u64, ratio: u64) -> bool {
    match codec {
        Compression::UNCOMPRESSED => uncompressed <= compressed.saturating_add(SLACK),
        Compression::SNAPPY | Compression::GZIP(_) | Compression::LZO => {
            uncompressed <= compressed.saturating_mul(ratio).saturating_add(SLACK)
        }
        _ => true,
    }
}

/// The footer's claims: rows, chunk ranges, chunk sizes.
pub(crate) fn check_footer(
    metadata: &ParquetMetaData,
    file_len: u64,
    limits: &Limits,
) -> Result<()> {
    let rows = u64::try_from(metadata.file_metadata().num_rows()).unwrap_or(u64::MAX);
    if rows > limits.max_rows_per_file {
        return Err(over(
            "rows in the file".into(),
            rows,
            limits.max_rows_per_file,
            "FERRY_MAX_ROWS_PER_FILE",
        ));
    }
    let mut sum: u64 = 0;
    for (i, rg) in metadata.row_groups().iter().enumerate() {
        let n = u64::try_from(rg.num_rows()).unwrap_or(u64::MAX);
        if n > limits.max_rows_per_row_group {
            return Err(over(
                format!("rows in row group {i}"),
                n,
                limits.max_rows_per_row_group,
                "FERRY_MAX_ROWS_PER_ROW_GROUP",
            ));
        }
        sum = sum.saturating_add(n);
        for c in rg.columns() {
            let (start, len) = chunk_range(c)?;
            if start.checked_add(len).is_none_or(|end| end > file_len) {
                return Err(ConvertError::corrupt(format!(
                    "column {} of row group {i} claims bytes {start}+{len}, past the end of the file ({file_len} bytes)",
                    c.column_path().string()
                )));
            }
            let uncompressed = u64::try_from(c.uncompressed_size()).unwrap_or(u64::MAX);
            let compressed = u64::try_from(c.compressed_size()).unwrap_or(0);
            if !plausible(
                c.compression(),
                compressed,
                uncompressed,
                limits.max_compression_ratio,
            ) {
                return Err(over(
                    format!(
                        "uncompressed bytes of column {} in row group {i} ({compressed} compressed, {:?})",
                        c.column_path().string(),
                        c.compression()
                    ),
                    uncompressed,
                    compressed.saturating_mul(limits.max_compression_ratio),
                    "FERRY_MAX_COMPRESSION_RATIO",
                ));
            }
        }
    }
    if sum > limits.max_rows_per_file {
        return Err(over(
            "rows in the file's row groups".into(),
            sum,
            limits.max_rows_per_file,
            "FERRY_MAX_ROWS_PER_FILE",
        ));
    }
    Ok(())
}

/// A page header's sizes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageSizes {
    /// The page type (0 data, 1 index, 2 dictionary, 3 data v2).
    pub(crate) page_type: i64,
    /// A data page's encoding (v1 and v2), when the header gives one.
    pub(crate) encoding: Option<i64>,
    pub(crate) uncompressed: i64,
    pub(crate) compressed: i64,
    /// Bytes of the header itself.
    pub(crate) header_len: usize,
}

/// Reads a Thrift compact-protocol `PageHeader` (parquet.thrift: field 1 `type`, field 2
/// `uncompressed_page_size`, field 3 `compressed_page_size`, all i32, and the encoding of a
/// data page: field 2 of `data_page_header` (5) or field 4 of `data_page_header_v2` (8); the
/// rest skipped). `None` when the bytes end first or are not a header.
pub(crate) fn page_header(buf: &[u8]) -> Option<PageSizes> {
    let mut r = Compact { buf, pos: 0 };
    let mut sizes = PageSizes::default();
    let mut last = 0i16;
    loop {
        let b = r.byte()?;
        if b == 0 {
            break;
        }
        let ty = b & 0x0f;
        let delta = i16::from(b >> 4);
        let id = if delta == 0 {
            r.zigzag()? as i16
        } else {
            last + delta
        };
        last = id;
        match (id, ty) {
            (1, 5) => sizes.page_type = r.zigzag()?,
            (2, 5) => sizes.uncompressed = r.zigzag()?,
            (3, 5) => sizes.compressed = r.zigzag()?,
            (5, 12) => sizes.encoding = r.struct_i32(2)?,
            (8, 12) => sizes.encoding = r.struct_i32(4)?,
            _ => r.skip(ty, 0)?,
        }
    }
    sizes.header_len = r.pos;
    Some(sizes)
}

/// `PLAIN_DICTIONARY` and `RLE_DICTIONARY`: encodings that need the chunk's dictionary page.
const DICTIONARY_ENCODINGS: [i64; 2] = [2, 8];

/// A cursor over Thrift compact-protocol bytes.
struct Compact<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Compact<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(out);
            }
        }
        None
    }

    fn zigzag(&mut self) -> Option<i64> {
        let n = self.varint()?;
        Some(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    fn bytes(&mut self, n: u64) -> Option<()> {
        let n = usize::try_from(n).ok()?;
        let end = self.pos.checked_add(n)?;
        (end <= self.buf.len()).then(|| self.pos = end)
    }

    /// Skips a value of compact type `ty` (nested at most 32 deep).
    /// Reads a struct, returning its i32 field `want` if present (the rest skipped).
    fn struct_i32(&mut self, want: i16) -> Option<Option<i64>> {
        let mut last = 0i16;
        let mut found = None;
        loop {
            let b = self.byte()?;
            if b == 0 {
                return Some(found);
            }
            let ty = b & 0x0f;
            let delta = i16::from(b >> 4);
            let id = if delta == 0 {
                self.zigzag()? as i16
            } else {
                last + delta
            };
            last = id;
            if id == want && ty == 5 {
                found = Some(self.zigzag()?);
            } else {
                self.skip(ty, 1)?;
            }
        }
    }

    fn skip(&mut self, ty: u8, depth: u8) -> Option<()> {
        if depth > 32 {
            return None;
        }
        match ty {
            1 | 2 => Some(()),
            3 => self.bytes(1),
            4..=6 => self.varint().map(|_| ()),
            7 => self.bytes(8),
            8 => {
                let n = self.varint()?;
                self.bytes(n)
            }
            9 | 10 => {
                let h = self.byte()?;
                let n = match h >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                let elem = h & 0x0f;
                for _ in 0..n {
                    if elem == 1 || elem == 2 {
                        self.bytes(1)?;
                    } else {
                        self.skip(elem, depth + 1)?;
                    }
                }
                Some(())
            }
            11 => {
                let n = self.varint()?;
                if n > 0 {
                    let kv = self.byte()?;
                    for _ in 0..n {
                        self.skip(kv >> 4, depth + 1)?;
                        self.skip(kv & 0x0f, depth + 1)?;
                    }
                }
                Some(())
            }
            12 => loop {
                let b = self.byte()?;
                if b == 0 {
                    return Some(());
                }
                if b >> 4 == 0 {
                    self.zigzag()?;
                }
                self.skip(b & 0x0f, depth + 1)?;
            },
            _ => None,
        }
    }
}

/// A column chunk's byte range, refused when the footer gives a negative offset or size (the
/// parquet crate's own `byte_range` panics on those).
pub(crate) fn chunk_range(c: &ColumnChunkMetaData) -> Result<(u64, u64)> {
    let start = c
        .dictionary_page_offset()
        .unwrap_or_else(|| c.data_page_offset());
    match (u64::try_from(start), u64::try_from(c.compressed_size())) {
        (Ok(start), Ok(len)) => Ok((start, len)),
        _ => Err(ConvertError::corrupt(format!(
            "column {} claims a negative offset or size ({start}, {} bytes)",
            c.column_path().string(),
            c.compressed_size()
        ))),
    }
}

/// The largest page header read (statistics can make headers long).
const HEADER_MAX: u64 = 16 << 20;

/// Every page header of a column chunk ferry will decode, against the caps.
pub(crate) fn check_pages(
    input: &RangeReader,
    chunk: &ColumnChunkMetaData,
    limits: &Limits,
) -> Result<()> {
    let (start, len) = chunk_range(chunk)?;
    let end = start.saturating_add(len).min(input.len());
    let column = chunk.column_path().string();
    let codec = chunk.compression();
    let mut pos = start;
    let mut dictionary = false;
    while pos < end {
        let mut want = (64u64 << 10).min(end - pos);
        let sizes = loop {
            let bytes = input
                .get_bytes(pos, usize::try_from(want).unwrap_or(usize::MAX))
                .map_err(crate::error::classify_read)?;
            match page_header(&bytes) {
                Some(s) => break s,
                None if want < (end - pos).min(HEADER_MAX) => {
                    want = (want * 4).min(end - pos).min(HEADER_MAX)
                }
                None => {
                    return Err(ConvertError::corrupt(format!(
                        "column {column}: no readable page header at byte {pos}"
                    )));
                }
            }
        };
        let (uncompressed, compressed) = (
            u64::try_from(sizes.uncompressed).map_err(|_| {
                ConvertError::corrupt(format!("column {column}: a page claims a negative size"))
            })?,
            u64::try_from(sizes.compressed).map_err(|_| {
                ConvertError::corrupt(format!("column {column}: a page claims a negative size"))
            })?,
        );
        if uncompressed > limits.max_page_bytes {
            return Err(over(
                format!("uncompressed bytes of a page of column {column}"),
                uncompressed,
                limits.max_page_bytes,
                "FERRY_MAX_PAGE_MIB",
            ));
        }
        if !plausible(
            codec,
            compressed,
            uncompressed,
            limits.max_compression_ratio,
        ) {
            return Err(over(
                format!(
                    "uncompressed bytes of a page of column {column} ({compressed} compressed, {codec:?})"
                ),
                uncompressed,
                compressed.saturating_mul(limits.max_compression_ratio),
                "FERRY_MAX_COMPRESSION_RATIO",
            ));
        }
        // The parquet reader panics on a dictionary-encoded page it has no dictionary for.
        dictionary |= sizes.page_type == 2;
        if sizes
            .encoding
            .is_some_and(|e| DICTIONARY_ENCODINGS.contains(&e))
            && !dictionary
        {
            return Err(ConvertError::corrupt(format!(
                "column {column}: a dictionary-encoded page at byte {pos} with no dictionary page before it"
            )));
        }
        let next = pos + sizes.header_len as u64 + compressed;
        if next > end {
            return Err(ConvertError::corrupt(format!(
                "column {column}: a page of {compressed} bytes at byte {pos} runs past its column chunk"
            )));
        }
        pos = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zigzag(v: i64) -> Vec<u8> {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    #[test]
    fn reads_the_sizes_of_a_page_header_and_skips_the_rest() {
        // type=DATA_PAGE(0), uncompressed=2 GiB-1, compressed=100, crc, data_page_header{...}
        let mut h = vec![0x15];
        h.extend(zigzag(0));
        h.push(0x15);
        h.extend(zigzag(i64::from(i32::MAX)));
        h.push(0x15);
        h.extend(zigzag(100));
        h.push(0x15); // crc
        h.extend(zigzag(7));
        h.push(0x1c); // field 5, struct
        h.push(0x15); // num_values
        h.extend(zigzag(10));
        h.push(0x18); // a binary statistic-like field
        h.push(3);
        h.extend(b"abc");
        h.push(0x00); // end of data_page_header
        h.push(0x00); // end of PageHeader
        let s = page_header(&h).unwrap();
        assert_eq!(
            (s.uncompressed, s.compressed, s.header_len),
            (i64::from(i32::MAX), 100, h.len())
        );
        assert_eq!(page_header(&h[..h.len() - 1]), None, "cut short");
        assert_eq!(page_header(&[0x1f]), None, "unknown type");
    }
}
