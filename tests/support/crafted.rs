//! Hostile parquet files, valid enough to pass a parser's first look, for `lab.accounts` CDC keys
//! of the test mapping (`tests/fixtures/convert/types-lab.json`): what an attacker with write
//! access to the bucket could put there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use arrow_array::{RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};

/// A key of the test mapping such files stand for.
pub const KEY: &str = "lab/dms/lab/accounts/20261126-101500123.parquet";

/// A snappy CDC file of `rows` rows (`dms_ts`, `account_id`, then `Op` last), plain-encoded.
pub fn snappy_cdc(rows: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("dms_ts", DataType::Utf8, true),
        Field::new("account_id", DataType::UInt64, true),
        Field::new("Op", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("2026-11-26 10:14:00.{:06}", i % 1_000_000)),
            )),
            Arc::new(UInt64Array::from_iter_values(0..rows as u64)),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                "U", rows,
            ))),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf
}

/// [`snappy_cdc`] with the `Op` column's first page header claiming 2 GiB uncompressed (its
/// `uncompressed_page_size` varint replaced).
pub fn page_claims_2_gib() -> Vec<u8> {
    let mut file = snappy_cdc(10);
    let reader = SerializedFileReader::new(Bytes::from(file.clone())).unwrap();
    let col = reader.metadata().row_group(0).column(2);
    assert_eq!(col.column_path().string(), "Op");
    let start = col.byte_range().0 as usize;
    // PageHeader: field 1 (i32 type = DATA_PAGE), then field 2 (i32 uncompressed_page_size).
    assert_eq!(&file[start..start + 3], &[0x15, 0x00, 0x15]);
    let old = file[start + 3..]
        .iter()
        .position(|b| b & 0x80 == 0)
        .unwrap()
        + 1;
    // zigzag(i32::MAX) as a varint.
    file.splice(start + 3..start + 3 + old, [0xfe, 0xff, 0xff, 0xff, 0x0f]);
    file
}

/// A file of 10 real rows whose footer claims `rows` rows (and as many values in every column),
/// the column chunks themselves unchanged.
pub fn footer_claims_rows(rows: u64) -> Vec<u8> {
    let real = Bytes::from(snappy_cdc(10));
    let reader = SerializedFileReader::new(real.clone()).unwrap();
    let meta = reader.metadata();
    let schema = meta.file_metadata().schema_descr().root_schema_ptr();
    let mut out = Vec::new();
    let mut w = parquet::file::writer::SerializedFileWriter::new(
        &mut out,
        schema,
        Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    let mut rg = w.next_row_group().unwrap();
    for c in meta.row_group(0).columns() {
        let claimed = c
            .clone()
            .into_builder()
            .set_num_values(i64::try_from(rows).unwrap())
            .build()
            .unwrap();
        rg.append_column(
            &real,
            parquet::column::writer::ColumnCloseResult {
                bytes_written: u64::try_from(c.compressed_size()).unwrap(),
                rows_written: rows,
                metadata: claimed,
                bloom_filter: None,
                column_index: None,
                offset_index: None,
            },
        )
        .unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
    out
}
