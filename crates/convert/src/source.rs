//! Byte sources that support range reads (a local file, a buffer, later an S3 object), and the
//! parquet [`ChunkReader`] over them that fetches only the ranges the converter asks for.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};

/// Bytes read through [`RangeReader::get_read`] per request.
const BLOCK: usize = 1 << 20;

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
        let src = self.get(start..start + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A parquet [`ChunkReader`] over a [`RangeSource`], counting the bytes it fetched.
#[derive(Clone)]
pub struct RangeReader {
    source: Arc<dyn RangeSource>,
    len: u64,
    fetched: Arc<AtomicU64>,
}

impl RangeReader {
    /// Wraps a source.
    pub fn new(source: Arc<dyn RangeSource>) -> RangeReader {
        let len = source.len();
        RangeReader { source, len, fetched: Arc::new(AtomicU64::new(0)) }
    }

    /// Bytes fetched from the source so far.
    pub fn bytes_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    fn fetch(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("range {offset}+{} is past the end of the object ({} bytes)", buf.len(), self.len),
            ));
        }
        self.source.read_at(offset, buf)?;
        self.fetched.fetch_add(buf.len() as u64, Ordering::Relaxed);
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
        Ok(BlockRead { reader: self.clone(), pos: start, buf: Vec::new(), at: 0 })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let mut buf = vec![0; length];
        self.fetch(start, &mut buf).map_err(|e| ParquetError::External(Box::new(e)))?;
        Ok(buf.into())
    }
}

/// A sequential reader from an offset, fetching one block at a time.
pub struct BlockRead {
    reader: RangeReader,
    pos: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Read for BlockRead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            let left = self.reader.len.saturating_sub(self.pos);
            let n = left.min(BLOCK as u64) as usize;
            if n == 0 {
                return Ok(0);
            }
            self.buf.resize(n, 0);
            self.reader.fetch(self.pos, &mut self.buf)?;
            self.pos += n as u64;
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ranges_and_sequentially() {
        let data: Bytes = (0..3_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
        let reader = RangeReader::new(Arc::new(data.clone()));
        assert_eq!(reader.get_bytes(10, 5).unwrap(), data.slice(10..15));
        let mut all = Vec::new();
        reader.get_read(1_000_000).unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, data.slice(1_000_000..));
        assert_eq!(reader.bytes_fetched(), 5 + 2_000_000);
        let err = reader.get_bytes(2_999_999, 2).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
    }
}
