//! Concatenating converted files of one table into one file, so that several objects can be
//! loaded by one BigQuery load job (the load-job budget). Column chunks are copied as they are,
//! row group by row group: nothing is decoded, and memory stays at one footer per input.

use std::io::Write;
use std::sync::Arc;

use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use crate::error::{ConvertError, Result, classify_read};
use crate::source::{RangeReader, RangeSource};

/// Writes the row groups of `inputs`, in order, into one parquet file; returns the rows
/// written. Every input must have the same schema (converted files of one table with the
/// same columns do).
pub fn concat<W: Write + Send>(inputs: &[Arc<dyn RangeSource>], out: W) -> Result<u64> {
    let readers: Vec<RangeReader> = inputs
        .iter()
        .map(|s| RangeReader::new(Arc::clone(s)))
        .collect();
    let mut metas = Vec::with_capacity(readers.len());
    for r in &readers {
        metas.push(
            ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(64 * 1024))
                .parse_and_finish(r)
                .map_err(classify_read)?,
        );
    }
    let Some(first) = metas.first() else {
        return Err(ConvertError::write("nothing to concatenate"));
    };
    let schema = first.file_metadata().schema_descr().root_schema_ptr();
    for (i, m) in metas.iter().enumerate().skip(1) {
        if m.file_metadata().schema_descr().root_schema_ptr() != schema {
            return Err(ConvertError::write(format!(
                "file {i} has another schema than file 0: cannot share one load job"
            )));
        }
    }
    let props = Arc::new(
        WriterProperties::builder()
            .set_created_by(format!("ferry {}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let mut writer = SerializedFileWriter::new(out, schema, props).map_err(ConvertError::write)?;
    let mut rows = 0u64;
    for (reader, meta) in readers.iter().zip(&metas) {
        for rg in meta.row_groups() {
            let mut rg_writer = writer.next_row_group().map_err(ConvertError::write)?;
            for column in rg.columns() {
                let close = ColumnCloseResult {
                    bytes_written: u64::try_from(column.compressed_size()).unwrap_or(0),
                    rows_written: u64::try_from(rg.num_rows()).unwrap_or(0),
                    metadata: column.clone(),
                    bloom_filter: None,
                    column_index: None,
                    offset_index: None,
                };
                rg_writer
                    .append_column(reader, close)
                    .map_err(classify_read)?;
            }
            rg_writer.close().map_err(ConvertError::write)?;
            rows += u64::try_from(rg.num_rows()).unwrap_or(0);
        }
    }
    writer.finish().map_err(ConvertError::write)?;
    Ok(rows)
}
