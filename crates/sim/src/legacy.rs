//! Parquet written the way older writers (and AWS DMS) write it: types annotated with the
//! legacy converted types only (`INT_16`, `UINT_64`, `DECIMAL` on FIXED_LEN_BYTE_ARRAY,
//! `DATE`, `TIMESTAMP_MILLIS`/`TIMESTAMP_MICROS`, `UTF8`), no logical-type annotations. The
//! Arrow writer always adds logical types, so the simulator and the tests use this writer to
//! exercise the older form real DMS files have.

use std::io::Write;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Decimal256Type, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use parquet::basic::{ConvertedType, Repetition, Type as Physical};
use parquet::data_type::{ByteArray, FixedLenByteArray};
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{Type, TypePtr};

/// The bytes a DECIMAL of `precision` digits needs as a two's-complement big-endian value.
fn decimal_len(precision: u8) -> i32 {
    // Smallest n with 2^(8n-1) > 10^precision.
    let bits = (f64::from(precision) * std::f64::consts::LOG2_10).ceil() as i32 + 1;
    (bits + 7) / 8
}

/// The legacy-annotated parquet type of an Arrow field.
fn column_type(name: &str, dt: &DataType, nullable: bool) -> Result<TypePtr> {
    use ConvertedType as C;
    let (physical, converted, length, precision, scale) = match dt {
        DataType::Boolean => (Physical::BOOLEAN, C::NONE, -1, -1, -1),
        DataType::Int8 => (Physical::INT32, C::INT_8, -1, -1, -1),
        DataType::Int16 => (Physical::INT32, C::INT_16, -1, -1, -1),
        DataType::Int32 => (Physical::INT32, C::NONE, -1, -1, -1),
        DataType::Int64 => (Physical::INT64, C::NONE, -1, -1, -1),
        DataType::UInt8 => (Physical::INT32, C::UINT_8, -1, -1, -1),
        DataType::UInt16 => (Physical::INT32, C::UINT_16, -1, -1, -1),
        DataType::UInt32 => (Physical::INT32, C::UINT_32, -1, -1, -1),
        DataType::UInt64 => (Physical::INT64, C::UINT_64, -1, -1, -1),
        DataType::Float32 => (Physical::FLOAT, C::NONE, -1, -1, -1),
        DataType::Float64 => (Physical::DOUBLE, C::NONE, -1, -1, -1),
        DataType::Utf8 => (Physical::BYTE_ARRAY, C::UTF8, -1, -1, -1),
        DataType::Binary => (Physical::BYTE_ARRAY, C::NONE, -1, -1, -1),
        DataType::Date32 => (Physical::INT32, C::DATE, -1, -1, -1),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            (Physical::INT64, C::TIMESTAMP_MILLIS, -1, -1, -1)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            (Physical::INT64, C::TIMESTAMP_MICROS, -1, -1, -1)
        }
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => (
            Physical::FIXED_LEN_BYTE_ARRAY,
            C::DECIMAL,
            decimal_len(*p),
            i32::from(*p),
            i32::from(*s),
        ),
        other => {
            return Err(ParquetError::NYI(format!(
                "legacy writer: {other} for column {name}"
            )));
        }
    };
    let repetition = if nullable {
        Repetition::OPTIONAL
    } else {
        Repetition::REQUIRED
    };
    Ok(Arc::new(
        Type::primitive_type_builder(name, physical)
            .with_repetition(repetition)
            .with_converted_type(converted)
            .with_length(length)
            .with_precision(precision)
            .with_scale(scale)
            .build()?,
    ))
}

/// A parquet file being written with legacy annotations: each batch is written as row groups
/// of at most `row_group_rows` rows (a file given no rows has no row group).
pub struct LegacyWriter<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    row_group_rows: usize,
}

impl<W: Write + Send> LegacyWriter<W> {
    /// Starts a file for batches of `schema`.
    pub fn try_new(
        out: W,
        schema: &arrow_schema::Schema,
        props: WriterProperties,
        row_group_rows: usize,
    ) -> Result<Self> {
        let fields: Vec<TypePtr> = schema
            .fields()
            .iter()
            .map(|f| column_type(f.name(), f.data_type(), f.is_nullable()))
            .collect::<Result<_>>()?;
        let root = Arc::new(
            Type::group_type_builder("schema")
                .with_fields(fields)
                .build()?,
        );
        Ok(LegacyWriter {
            writer: SerializedFileWriter::new(out, root, Arc::new(props))?,
            row_group_rows: row_group_rows.max(1),
        })
    }

    /// Writes a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut start = 0;
        while start < batch.num_rows() {
            let len = self.row_group_rows.min(batch.num_rows() - start);
            let rg = batch.slice(start, len);
            let mut rg_writer = self.writer.next_row_group()?;
            for column in rg.columns() {
                let mut col = rg_writer
                    .next_column()?
                    .ok_or_else(|| ParquetError::General("legacy writer: column count".into()))?;
                write_column(col.untyped(), column.as_ref())?;
                col.close()?;
            }
            rg_writer.close()?;
            start += len;
        }
        Ok(())
    }

    /// Writes the footer and returns the output.
    pub fn close(self) -> Result<W> {
        self.writer.into_inner()
    }
}

/// Definition levels (1 present, 0 NULL) and the indices of the present values.
fn levels(array: &dyn Array) -> (Vec<i16>, Vec<usize>) {
    let defs = (0..array.len())
        .map(|i| i16::from(array.is_valid(i)))
        .collect();
    let present = (0..array.len()).filter(|i| array.is_valid(*i)).collect();
    (defs, present)
}

fn big_endian_fixed(bytes: &[u8], len: usize) -> FixedLenByteArray {
    // `bytes` is little-endian two's complement; keep the low `len` bytes, big-endian.
    let mut v: Vec<u8> = bytes[..len].to_vec();
    v.reverse();
    FixedLenByteArray::from(v)
}

fn write_column(
    writer: &mut parquet::column::writer::ColumnWriter<'_>,
    array: &dyn Array,
) -> Result<()> {
    use parquet::column::writer::ColumnWriter as W;
    let (defs, present) = levels(array);
    let defs = Some(defs.as_slice());
    macro_rules! ints {
        ($w:expr, $t:ty, $conv:expr) => {{
            let a = array.as_primitive::<$t>();
            let values: Vec<_> = present.iter().map(|i| $conv(a.value(*i))).collect();
            $w.write_batch(&values, defs, None)?;
        }};
    }
    // DECIMAL(p, s) as big-endian two's complement of the length `p` needs.
    macro_rules! decimals {
        ($w:expr, $t:ty, $p:expr) => {{
            let a = array.as_primitive::<$t>();
            let len = decimal_len($p) as usize;
            let values: Vec<FixedLenByteArray> = present
                .iter()
                .map(|i| big_endian_fixed(&a.value(*i).to_le_bytes(), len))
                .collect();
            $w.write_batch(&values, defs, None)?;
        }};
    }
    match (writer, array.data_type()) {
        (W::BoolColumnWriter(w), DataType::Boolean) => {
            let a = array.as_boolean();
            let values: Vec<bool> = present.iter().map(|i| a.value(*i)).collect();
            w.write_batch(&values, defs, None)?;
        }
        (W::Int32ColumnWriter(w), DataType::Int8) => ints!(w, Int8Type, i32::from),
        (W::Int32ColumnWriter(w), DataType::Int16) => ints!(w, Int16Type, i32::from),
        (W::Int32ColumnWriter(w), DataType::Int32) => ints!(w, Int32Type, |v| v),
        (W::Int32ColumnWriter(w), DataType::UInt8) => ints!(w, UInt8Type, i32::from),
        (W::Int32ColumnWriter(w), DataType::UInt16) => ints!(w, UInt16Type, i32::from),
        (W::Int32ColumnWriter(w), DataType::UInt32) => ints!(w, UInt32Type, |v: u32| v as i32),
        (W::Int32ColumnWriter(w), DataType::Date32) => ints!(w, Date32Type, |v| v),
        (W::Int64ColumnWriter(w), DataType::Int64) => ints!(w, Int64Type, |v| v),
        (W::Int64ColumnWriter(w), DataType::UInt64) => ints!(w, UInt64Type, |v: u64| v as i64),
        (W::Int64ColumnWriter(w), DataType::Timestamp(TimeUnit::Millisecond, _)) => {
            ints!(w, TimestampMillisecondType, |v| v)
        }
        (W::Int64ColumnWriter(w), DataType::Timestamp(TimeUnit::Microsecond, _)) => {
            ints!(w, TimestampMicrosecondType, |v| v)
        }
        (W::FloatColumnWriter(w), DataType::Float32) => ints!(w, Float32Type, |v| v),
        (W::DoubleColumnWriter(w), DataType::Float64) => ints!(w, Float64Type, |v| v),
        (W::ByteArrayColumnWriter(w), DataType::Utf8) => {
            let a = array.as_string::<i32>();
            let values: Vec<ByteArray> = present
                .iter()
                .map(|i| ByteArray::from(a.value(*i).as_bytes().to_vec()))
                .collect();
            w.write_batch(&values, defs, None)?;
        }
        (W::ByteArrayColumnWriter(w), DataType::Binary) => {
            let a = array.as_binary::<i32>();
            let values: Vec<ByteArray> = present
                .iter()
                .map(|i| ByteArray::from(a.value(*i).to_vec()))
                .collect();
            w.write_batch(&values, defs, None)?;
        }
        (W::FixedLenByteArrayColumnWriter(w), DataType::Decimal128(p, _)) => {
            decimals!(w, Decimal128Type, *p)
        }
        (W::FixedLenByteArrayColumnWriter(w), DataType::Decimal256(p, _)) => {
            decimals!(w, Decimal256Type, *p)
        }
        (_, other) => {
            return Err(ParquetError::NYI(format!("legacy writer: {other}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_lengths_hold_their_precision() {
        // 10^p - 1 must fit in 8n-1 bits.
        for (p, n) in [
            (1u8, 1),
            (2, 1),
            (3, 2),
            (9, 4),
            (18, 8),
            (20, 9),
            (38, 16),
            (65, 28),
        ] {
            assert_eq!(decimal_len(p), n, "precision {p}");
        }
    }
}
