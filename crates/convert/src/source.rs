//! Byte sources that support range reads (a local file, a buffer, later an S3 object), and the
//! parquet [`ChunkReader`] over them that fetches only the ranges the converter asks for.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};

/// The first request of a sequential read outside a window; each next one doubles, up to
/// [`MAX_BLOCK`], so a small column chunk costs a small read and a large one few requests.
const FIRST_BLOCK: usize = 64 << 10;

/// The largest request of a sequential read.
const MAX_BLOCK: usize = 1 << 20;

/// A byte source that reads any range on demand.
///
/// Contract: `len` is fixed for the source's lifetime; `read_at` fills `buf` completely from
/// `offset` or fails (a short source is an error, never a silently short read).
pub trait RangeSource: Send + Sync {
    /// The source's size in bytes.
    fn len(&self) -> u64;

    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl RangeSource for std::fs::File {
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl RangeSource for Bytes {
    fn len(&self) -> u64 {
        self.as_ref().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A parquet [`ChunkReader`] over a [`RangeSource`], counting the bytes it fetched. A reader
/// may hold a window (one row group's bytes, fetched in one request) and serve reads inside it
/// from memory.
#[derive(Clone)]
pub struct RangeReader {
    source: Arc<dyn RangeSource>,
    len: u64,
    fetched: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    window: Option<(u64, Bytes)>,
}

impl RangeReader {
    /// Wraps a source.
    pub fn new(source: Arc<dyn RangeSource>) -> RangeReader {
        let len = source.len();
        RangeReader {
            source,
            len,
            fetched: Arc::new(AtomicU64::new(0)),
            requests: Arc::new(AtomicU64::new(0)),
            window: None,
        }
    }

    /// A reader sharing this one's source and counters that has `start..start + len` in memory
    /// (fetched now, in one request).
    pub fn with_window(&self, start: u64, len: usize) -> io::Result<RangeReader> {
        let mut buf = vec![0; len];
        self.fetch(start, &mut buf)?;
        Ok(RangeReader {
            window: Some((start, buf.into())),
            ..self.clone()
        })
    }

    /// Read requests made to the source so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The window's bytes from `start` to the window's end, when `start` is inside it.
    fn windowed(&self, start: u64) -> Option<Bytes> {
        let (w, bytes) = self.window.as_ref()?;
        let at = usize::try_from(start.checked_sub(*w)?).ok()?;
        (at < bytes.len()).then(|| bytes.slice(at..))
    }

    /// Bytes fetched from the source so far.
    pub fn bytes_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    fn fetch(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "range {offset}+{} is past the end of the object ({} bytes)",
                    buf.len(),
                    self.len
                ),
            ));
        }
        self.source.read_at(offset, buf)?;
        self.fetched.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Length for RangeReader {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for RangeReader {
    type T = BlockRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<BlockRead> {
        Ok(BlockRead {
            reader: self.clone(),
            pos: start,
            buf: Bytes::new(),
            next_block: FIRST_BLOCK,
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        if let Some(bytes) = self.windowed(start).filter(|b| b.len() >= length) {
            return Ok(bytes.slice(..length));
        }
        let mut buf = vec![0; length];
        self.fetch(start, &mut buf)
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        Ok(buf.into())
    }
}

/// A sequential reader from an offset: from the window where it covers the position, else
/// in growing blocks.
pub struct BlockRead {
    reader: RangeReader,
    /// Source offset just past `buf`.
    pos: u64,
    buf: Bytes,
    next_block: usize,
}

impl Read for BlockRead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf.is_empty() {
            if let Some(bytes) = self.reader.windowed(self.pos) {
                self.buf = bytes;
            } else {
                let left = self.reader.len.saturating_sub(self.pos);
                let n = left.min(self.next_block as u64) as usize;
                if n == 0 {
                    return Ok(0);
                }
                let mut block = vec![0; n];
                self.reader.fetch(self.pos, &mut block)?;
                self.buf = block.into();
                self.next_block = (self.next_block * 2).min(MAX_BLOCK);
            }
            self.pos += self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ranges_and_sequentially() {
        let data: Bytes = (0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let reader = RangeReader::new(Arc::new(data.clone()));
        assert_eq!(reader.get_bytes(10, 5).unwrap(), data.slice(10..15));
        let mut all = Vec::new();
        reader
            .get_read(1_000_000)
            .unwrap()
            .read_to_end(&mut all)
            .unwrap();
        assert_eq!(all, data.slice(1_000_000..));
        assert_eq!(reader.bytes_fetched(), 5 + 2_000_000);
        // 64 KiB, 128 KiB, 256 KiB, 512 KiB, then the last ~0.9 MiB: growing blocks.
        assert_eq!(reader.requests(), 1 + 5);

        let windowed = reader.with_window(100, 1000).unwrap();
        let before = (reader.bytes_fetched(), reader.requests());
        assert_eq!(windowed.get_bytes(200, 10).unwrap(), data.slice(200..210));
        let mut part = vec![0; 900];
        windowed
            .get_read(200)
            .unwrap()
            .read_exact(&mut part)
            .unwrap();
        assert_eq!(part, data.slice(200..1100));
        assert_eq!(
            (reader.bytes_fetched(), reader.requests()),
            before,
            "served from the window"
        );
        // Past the window's end a read goes on from the source.
        let mut more = vec![0; 1000];
        windowed
            .get_read(600)
            .unwrap()
            .read_exact(&mut more)
            .unwrap();
        assert_eq!(more, data.slice(600..1600));
        let err = reader.get_bytes(2_999_999, 2).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
    }
}
