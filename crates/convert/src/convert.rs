//! The streaming converter: one DMS parquet object in, one BigQuery-ready parquet file out, one
//! row group at a time.
//!
//! Per input row group, columns BigQuery reads correctly are spliced into the output without
//! decoding ([`Action::Copy`], [`Action::Relabel`]); only `Op`, the DMS timestamp column and the
//! columns that need a value conversion are decoded, in batches. Memory is bounded by one batch
//! plus one encoded output row group, whatever the file's size.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    new_null_array,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit as ArrowTimeUnit};
use bytes::Bytes;
use ferry_core::bqtype::BqType;
use ferry_core::key::{DmsFile, DmsObject};
use ferry_core::mapping::{OnTypeChange, Source, TableMapping};
use ferry_core::names;
use ferry_core::schema::{BqField, FieldMode, OpCounts, TableSchema, meta};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::arrow_writer::{ArrowRowGroupWriterFactory, compute_leaves};
use parquet::arrow::{ArrowSchemaConverter, ProjectionMask, parquet_to_arrow_schema};
use parquet::basic::Compression;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesPtr};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{ColumnPath, Type, TypePtr};

use crate::derive::{Action, PlanProblem, Transform, arrow_type_for, plan_column};
use crate::error::{ConvertError, Result, classify_arrow, classify_read};
use crate::limits::Limits;
use crate::source::RangeReader;
use crate::timefmt;
use crate::transform;

/// Rows decoded at a time, bounding memory when DMS writes large row groups.
const BATCH_ROWS: usize = 65_536;

/// Row groups up to this many bytes are fetched in one request and served from memory; larger
/// ones stream in growing blocks.
const PREFETCH_MAX: u64 = 32 << 20;

/// The DMS change-operation column.
const DMS_OP: &str = "Op";

/// The column the `add-column` rule ferry generates gives DMS's `$AR_H_CHANGE_SEQ` header
/// (matched whatever its case).
const DMS_CHANGE_SEQ: &str = ferry_core::deploy::CHANGE_SEQ_COLUMN;

/// What the converter needs to know about the object besides its bytes.
#[derive(Debug, Clone, Copy)]
pub struct ConvertRequest<'a> {
    /// The source the object belongs to (its name and DMS timestamp column).
    pub source: &'a Source,
    /// The table mapping (type hints).
    pub table: &'a TableMapping,
    /// The parsed object key.
    pub object: &'a DmsObject,
    /// When S3 says the object was written (µs since the epoch): the commit time of full-load
    /// rows when the task writes no timestamp column.
    pub object_time_micros: Option<i64>,
    /// The table's schema as BigQuery has it, when the table exists; `None` for a new table.
    pub known: Option<&'a TableSchema>,
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConvertOutcome {
    /// The file's `_ferry_file_seq` (see `DmsObject::file_seq`).
    pub file_seq: String,
    /// The table's schema after this file: the known columns, then the added ones.
    pub schema: TableSchema,
    /// Columns this file has that the table did not (the writer adds them).
    pub added: Vec<BqField>,
    /// Rows written.
    pub rows: u64,
    /// Row groups written (one per input row group).
    pub row_groups: usize,
    /// Rows by operation.
    pub ops: OpCounts,
    /// Earliest commit time, µs since the epoch.
    pub commit_ts_min: Option<i64>,
    /// Latest commit time, µs since the epoch.
    pub commit_ts_max: Option<i64>,
    /// Rows whose DMS timestamp was NULL or unreadable and took the file's time instead.
    pub commit_ts_fallbacks: u64,
    /// Rows whose DMS timestamp lay more than [`FUTURE_TOLERANCE_MICROS`] after the file's own
    /// time (CDC: its name; full load: when S3 says it was written) and took the file's time.
    pub commit_ts_clamped: u64,
    /// Values at least the source's `LobMaxSize` long: DMS cut them there without an error.
    pub lob_at_limit: u64,
    /// The columns holding them.
    pub lob_columns: Vec<String>,
    /// The mapping names a DMS timestamp column (`source.dms.timestamp_column`) that this file
    /// does not have: every row took the file's time. A misconfigured endpoint or mapping.
    pub timestamp_column_missing: bool,
    /// Excluded columns (`exclude`) the file carried anyway and the loader dropped: the DMS
    /// task's table mappings are older than the mapping.
    pub excluded_arrived: Vec<String>,
    /// Hinted columns (`columns`) the file does not have: a misspelt hint, or a column the
    /// source dropped.
    pub hints_unused: Vec<String>,
    /// Bytes read from the input.
    pub bytes_read: u64,
    /// Bytes written to the output.
    pub bytes_written: u64,
    /// Source columns copied without decoding (with or without a new annotation).
    pub columns_copied: usize,
    /// Source columns decoded and converted.
    pub columns_converted: usize,
}

/// Where an output column's values come from.
#[derive(Debug, Clone)]
enum Out {
    /// A ferry metadata column.
    Meta(&'static str),
    /// A source column chunk spliced as is, by leaf index.
    Copy(usize),
    /// A source column chunk spliced under a new annotation.
    Relabel(usize, TypePtr),
    /// A source column decoded and converted.
    Transform(usize, Transform),
    /// A column the table has and this file lacks: NULLs.
    Null(DataType),
}

/// A conversion planned from the object's footer, ready to stream.
pub struct Conversion {
    metadata: Arc<ParquetMetaData>,
    arrow: ArrowReaderMetadata,
    columns: Vec<(String, Out)>,
    schema: TableSchema,
    added: Vec<BqField>,
    op_leaf: Option<usize>,
    ts_leaf: Option<usize>,
    cs_leaf: Option<usize>,
    limits: Limits,
    excluded_arrived: Vec<String>,
    hints_unused: Vec<String>,
}

impl Conversion {
    /// Reads the footer and plans every column. Nothing but the footer is read.
    pub fn plan(input: &RangeReader, req: &ConvertRequest<'_>) -> Result<Conversion> {
        Conversion::plan_with(input, req, Limits::from_env())
    }

    /// [`Conversion::plan`] under explicit caps.
    pub fn plan_with(
        input: &RangeReader,
        req: &ConvertRequest<'_>,
        limits: Limits,
    ) -> Result<Conversion> {
        let metadata = Arc::new(
            ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(64 * 1024))
                .parse_and_finish(input)
                .map_err(classify_read)?,
        );
        crate::limits::check_footer(
            &metadata,
            parquet::file::reader::Length::len(input),
            &limits,
        )?;
        let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
        let arrow =
            ArrowReaderMetadata::try_new(Arc::clone(&metadata), options).map_err(classify_read)?;
        let descr = metadata.file_metadata().schema_descr();
        let arrow_schema = parquet_to_arrow_schema(descr, None).map_err(classify_read)?;
        if arrow_schema.fields().len() != descr.num_columns() {
            return Err(ConvertError::UnsupportedType {
                column: descr.root_schema().name().to_owned(),
                parquet: "nested group".into(),
            });
        }

        let ts_name = req.source.timestamp_column.as_deref();
        let mut op_leaf = None;
        let mut ts_leaf = None;
        let mut cs_leaf = None;
        let mut file_columns: Vec<(String, BqType, Out)> = Vec::new();
        let mut excluded_arrived = Vec::new();
        let mut seen_columns: Vec<String> = Vec::new();
        for (leaf, field) in arrow_schema.fields().iter().enumerate() {
            let col = descr.column(leaf);
            let name = field.name().as_str();
            // Found by name wherever DMS put it (real DMS files put the timestamp column
            // first; nothing promises `Op` a position).
            if name == DMS_OP && op_leaf.is_none() {
                op_leaf = Some(leaf);
                continue;
            }
            if Some(name) == ts_name {
                ts_leaf = Some(leaf);
                continue;
            }
            if name.eq_ignore_ascii_case(DMS_CHANGE_SEQ) && cs_leaf.is_none() {
                cs_leaf = Some(leaf);
                continue;
            }
            if col.max_rep_level() > 0 || col.path().parts().len() != 1 {
                return Err(ConvertError::UnsupportedType {
                    column: name.to_owned(),
                    parquet: "repeated or nested".into(),
                });
            }
            names::check_column(name).map_err(|reason| ConvertError::InvalidColumnName {
                column: name.to_owned(),
                reason,
            })?;
            if req.table.excludes(name) {
                excluded_arrived.push(name.to_owned());
                continue;
            }
            seen_columns.push(name.to_owned());
            let hint = req.table.hint(name);
            let parquet = describe(&col);
            if req.table.hashes(name) {
                if !transform::hashable(field.data_type()) {
                    return Err(ConvertError::UnsupportedType {
                        column: name.to_owned(),
                        parquet: format!("{parquet} (hash takes text, binary and integer columns)"),
                    });
                }
                if req.source.hash_key.is_none() {
                    return Err(ConvertError::NoHashKey {
                        column: name.to_owned(),
                    });
                }
                file_columns.push((
                    name.to_owned(),
                    BqType::String,
                    Out::Transform(leaf, Transform::KeyedHash),
                ));
                continue;
            }
            let (bq, action) =
                plan_column(&col, field.data_type(), hint).map_err(|p| match (p, hint) {
                    (PlanProblem::HintMismatch, Some(hint)) => ConvertError::HintMismatch {
                        column: name.to_owned(),
                        hint: hint.to_string(),
                        parquet: parquet.clone(),
                    },
                    _ => ConvertError::UnsupportedType {
                        column: name.to_owned(),
                        parquet: parquet.clone(),
                    },
                })?;
            let out = match action {
                Action::Copy => Out::Copy(leaf),
                Action::Relabel(t) => Out::Relabel(leaf, t),
                Action::Transform(t) => Out::Transform(leaf, t),
            };
            file_columns.push((name.to_owned(), bq, out));
        }

        // A column whose type changed continues under `<column>__<type>` (the table's
        // `on_type_change: new_column`); the table's column keeps its history.
        if req.table.on_type_change == OnTypeChange::NewColumn
            && let Some(known) = req.known
        {
            for (name, bq, out) in &mut file_columns {
                let changed = known
                    .fields
                    .iter()
                    .any(|k| k.name.eq_ignore_ascii_case(name) && k.bq_type != *bq);
                if changed {
                    *name = format!("{name}__{}", bq.as_str().to_ascii_lowercase());
                    names::check_column(name).map_err(|reason| {
                        ConvertError::InvalidColumnName {
                            column: name.clone(),
                            reason,
                        }
                    })?;
                    // Spliced chunks keep their bytes under the new name.
                    *out = match &*out {
                        Out::Copy(leaf) => Out::Relabel(
                            *leaf,
                            renamed(&descr.column(*leaf).self_type_ptr(), name)?,
                        ),
                        Out::Relabel(leaf, t) => Out::Relabel(*leaf, renamed(t, name)?),
                        other => other.clone(),
                    };
                }
            }
        }

        // Table order: ferry's metadata, the columns the table knows, then new ones.
        let mut columns: Vec<(String, Out)> = Vec::new();
        let mut fields = meta::fields();
        for f in &fields {
            columns.push((f.name.clone(), Out::Meta(meta_name(&f.name))));
        }
        let known: Vec<&BqField> = req
            .known
            .map(|k| {
                k.fields
                    .iter()
                    .filter(|f| !f.name.starts_with(names::METADATA_PREFIX))
                    .collect()
            })
            .unwrap_or_default();
        for k in &known {
            match file_columns
                .iter()
                .position(|(n, _, _)| n.eq_ignore_ascii_case(&k.name))
            {
                Some(i) => {
                    let (name, bq, out) = file_columns.remove(i);
                    if bq != k.bq_type {
                        return Err(ConvertError::SchemaConflict {
                            column: name,
                            table_type: k.bq_type,
                            file_type: bq,
                        });
                    }
                    columns.push((name, out));
                }
                None => columns.push((k.name.clone(), Out::Null(arrow_type_for(k.bq_type)))),
            }
            fields.push((*k).clone());
        }
        let mut added = Vec::new();
        for (name, bq, out) in file_columns {
            let field = BqField {
                name: name.clone(),
                bq_type: bq,
                mode: FieldMode::Nullable,
                description: None,
            };
            if req.known.is_some() {
                added.push(field.clone());
            }
            fields.push(field);
            columns.push((name, out));
        }
        Ok(Conversion {
            metadata,
            arrow,
            columns,
            schema: TableSchema { fields },
            added,
            op_leaf,
            ts_leaf,
            cs_leaf,
            limits,
            hints_unused: req
                .table
                .columns
                .iter()
                .map(|(c, _)| c)
                .filter(|c| !seen_columns.iter().any(|s| s.eq_ignore_ascii_case(c)))
                .cloned()
                .collect(),
            excluded_arrived,
        })
    }

    /// The table's schema after this file.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// Columns this file adds to a known table.
    pub fn added(&self) -> &[BqField] {
        &self.added
    }

    /// Streams the converted file into `out`.
    pub fn write<W: Write + Send>(
        self,
        input: &RangeReader,
        req: &ConvertRequest<'_>,
        out: W,
    ) -> Result<ConvertOutcome> {
        let props = writer_properties(self.compressed(), &self.converted_columns());
        let constants = self.constants(req);

        // The columns ferry encodes itself, as an Arrow schema and its parquet form.
        let mut encode_fields = Vec::new();
        for (name, out) in &self.columns {
            if constants.contains_key(name.as_str()) {
                continue;
            }
            if let Some(dt) = self.encoded_type(out) {
                let nullable = !matches!(out, Out::Meta(_));
                encode_fields.push(Field::new(name, dt, nullable));
            }
        }
        let encode_schema = Arc::new(Schema::new(encode_fields));
        let encode_descr = ArrowSchemaConverter::new()
            .convert(&encode_schema)
            .map_err(ConvertError::write)?;
        let mut encoded_types = encode_descr.root_schema().get_fields().iter();
        let in_descr = self.metadata.file_metadata().schema_descr();
        let mut out_types: Vec<TypePtr> = Vec::with_capacity(self.columns.len());
        for (name, out) in &self.columns {
            out_types.push(match out {
                _ if constants.contains_key(name.as_str()) => constant_type(name)?,
                Out::Copy(leaf) => in_descr.column(*leaf).self_type_ptr(),
                Out::Relabel(_, t) => Arc::clone(t),
                _ => Arc::clone(
                    encoded_types
                        .next()
                        .ok_or_else(|| ConvertError::write("encoded column count"))?,
                ),
            });
        }
        let root = Arc::new(
            Type::group_type_builder("schema")
                .with_fields(out_types)
                .build()
                .map_err(ConvertError::write)?,
        );
        let counting = CountingWrite {
            inner: out,
            written: 0,
        };
        let mut writer = SerializedFileWriter::new(counting, root, Arc::clone(&props))
            .map_err(ConvertError::write)?;
        let factory = {
            let encode_root = encode_descr.root_schema_ptr();
            let scratch =
                SerializedFileWriter::new(std::io::sink(), encode_root, Arc::clone(&props))
                    .map_err(ConvertError::write)?;
            ArrowRowGroupWriterFactory::new(&scratch, Arc::clone(&encode_schema))
        };
        let out_descr = writer.schema_descr().clone();

        let mut constant_chunks = ConstantChunks::default();
        let mut stats = Stats::default();
        let file_time = file_time_micros(req);
        // A full-load file's Op (IncludeOpForFullLoad) says nothing ferry needs: not decoded.
        let op_leaf = self
            .op_leaf
            .filter(|_| matches!(req.object.file, DmsFile::Cdc { .. }));
        let mut decode_leaves: Vec<usize> = op_leaf
            .into_iter()
            .chain(self.ts_leaf)
            .chain(self.change_seq_leaf(req))
            .collect();
        decode_leaves.extend(self.columns.iter().filter_map(|(_, o)| match o {
            Out::Transform(leaf, _) => Some(*leaf),
            _ => None,
        }));
        let mut row_base: u64 = 0;
        // LOB values DMS may have cut: byte-array columns, decoded only in row groups whose
        // chunk is long enough to hold such a value.
        let lob_limit = u64::from(req.source.lob_max_size_kb) * 1024;
        let byte_arrays: Vec<(usize, &str)> = self
            .columns
            .iter()
            .filter_map(|(name, out)| match out {
                Out::Copy(leaf) | Out::Relabel(leaf, _) | Out::Transform(leaf, _)
                    if in_physical(&self.metadata, *leaf) == parquet::basic::Type::BYTE_ARRAY =>
                {
                    Some((*leaf, name.as_str()))
                }
                _ => None,
            })
            .collect();
        let mut lob_counts: BTreeMap<String, u64> = BTreeMap::new();

        for rg in 0..self.metadata.num_row_groups() {
            let rg_meta = self.metadata.row_group(rg);
            let rg_rows = usize::try_from(rg_meta.num_rows()).unwrap_or(0);
            let windowed;
            let input = match row_group_span(rg_meta) {
                Some((start, len)) if len <= PREFETCH_MAX => {
                    windowed = input
                        .with_window(start, len as usize)
                        .map_err(|e| classify_read(e.into()))?;
                    &windowed
                }
                _ => input,
            };
            let mut col_writers = factory
                .create_column_writers(rg)
                .map_err(ConvertError::write)?;

            let lob_leaves: Vec<(usize, &str)> = byte_arrays
                .iter()
                .filter(|(leaf, _)| {
                    u64::try_from(rg_meta.column(*leaf).uncompressed_size()).unwrap_or(0)
                        >= lob_limit
                })
                .copied()
                .collect();
            let mut rg_leaves = decode_leaves.clone();
            rg_leaves.extend(
                lob_leaves
                    .iter()
                    .map(|(l, _)| *l)
                    .filter(|l| !decode_leaves.contains(l)),
            );
            // The pages about to be decompressed are checked first (their headers decide the
            // allocations).
            for leaf in &rg_leaves {
                crate::limits::check_pages(input, rg_meta.column(*leaf), &self.limits)?;
            }
            let mut done = 0usize;
            let mut batches = self.batches(input, rg, &rg_leaves)?;
            while done < rg_rows {
                let n = BATCH_ROWS.min(rg_rows - done);
                let batch = match batches.as_mut() {
                    Some(reader) => Some(
                        reader
                            .next()
                            .ok_or_else(|| ConvertError::corrupt("row group ended early"))?
                            .map_err(classify_arrow)?,
                    ),
                    None => None,
                };
                let n = batch.as_ref().map_or(n, RecordBatch::num_rows);
                if let Some(b) = &batch {
                    for (leaf, name) in &lob_leaves {
                        let field = self.arrow.schema().field(*leaf).name();
                        let long = b
                            .column_by_name(field)
                            .map_or(0, |a| values_at_least(a.as_ref(), lob_limit));
                        if long > 0 {
                            *lob_counts.entry((*name).to_owned()).or_default() += long;
                        }
                    }
                }
                let arrays = self.batch_columns(
                    req,
                    batch.as_ref(),
                    n,
                    row_base,
                    file_time,
                    &constants,
                    &mut stats,
                )?;
                let mut writers = col_writers.iter_mut();
                for (field, array) in encode_schema.fields().iter().zip(&arrays) {
                    for leaf in compute_leaves(field, array).map_err(ConvertError::write)? {
                        writers
                            .next()
                            .ok_or_else(|| ConvertError::write("column writer count"))?
                            .write(&leaf)
                            .map_err(ConvertError::write)?;
                    }
                }
                done += n;
                row_base += n as u64;
            }

            let mut chunks = col_writers.into_iter().map(|w| w.close());
            let mut rg_writer = writer.next_row_group().map_err(ConvertError::write)?;
            for (i, (name, out)) in self.columns.iter().enumerate() {
                match out {
                    _ if constants.contains_key(name.as_str()) => {
                        let value = &constants[name.as_str()];
                        let (bytes, close) =
                            constant_chunks.get(name, value, rg_meta.num_rows(), &props)?;
                        rg_writer
                            .append_column(&bytes, close)
                            .map_err(ConvertError::write)?;
                    }
                    Out::Copy(leaf) => {
                        let close = close_result(rg_meta.column(*leaf).clone(), rg_meta.num_rows());
                        rg_writer
                            .append_column(input, close)
                            .map_err(classify_read)?;
                    }
                    Out::Relabel(leaf, _) => {
                        let relabelled = relabel_chunk(rg_meta.column(*leaf), out_descr.column(i))
                            .map_err(ConvertError::write)?;
                        let close = close_result(relabelled, rg_meta.num_rows());
                        rg_writer
                            .append_column(input, close)
                            .map_err(classify_read)?;
                    }
                    _ => {
                        let chunk = chunks
                            .next()
                            .ok_or_else(|| ConvertError::write("encoded chunk count"))?
                            .map_err(ConvertError::write)?;
                        chunk
                            .append_to_row_group(&mut rg_writer)
                            .map_err(ConvertError::write)?;
                    }
                }
            }
            rg_writer.close().map_err(ConvertError::write)?;
        }
        let written = writer.finish().map_err(ConvertError::write)?;
        check_counts(&written, row_base)?;
        let bytes_written = writer.inner().written;
        let (copied, converted) = self.columns.iter().fold((0, 0), |(c, t), (_, o)| match o {
            Out::Copy(_) | Out::Relabel(..) => (c + 1, t),
            Out::Transform(..) => (c, t + 1),
            _ => (c, t),
        });
        Ok(ConvertOutcome {
            file_seq: constants[meta::FILE_SEQ].clone(),
            schema: self.schema,
            added: self.added,
            rows: row_base,
            row_groups: self.metadata.num_row_groups(),
            ops: stats.ops,
            commit_ts_min: stats.ts_min,
            commit_ts_max: stats.ts_max,
            commit_ts_fallbacks: stats.fallbacks,
            commit_ts_clamped: stats.clamped,
            lob_at_limit: lob_counts.values().sum(),
            lob_columns: lob_counts.into_keys().collect(),
            timestamp_column_missing: req.source.timestamp_column.is_some()
                && self.ts_leaf.is_none(),
            excluded_arrived: self.excluded_arrived,
            hints_unused: self.hints_unused,
            bytes_read: input.bytes_fetched(),
            bytes_written,
            columns_copied: copied,
            columns_converted: converted,
        })
    }

    /// The metadata columns that hold one value for the whole file, with that value. They are
    /// encoded once per row-group size and spliced in, not encoded row by row.
    fn constants(&self, req: &ConvertRequest<'_>) -> BTreeMap<&'static str, String> {
        let mut constants = BTreeMap::from([
            (meta::FILE_SEQ, req.object.file_seq(req.object_time_micros)),
            (meta::FILE, req.object.key.clone()),
            (meta::SOURCE, req.source.name.clone()),
        ]);
        if matches!(req.object.file, DmsFile::FullLoad { .. }) {
            constants.insert(meta::OP, meta::op::LOAD.to_owned());
        } else if self.op_leaf.is_none() {
            constants.insert(meta::OP, meta::op::INSERT.to_owned());
        }
        if self.change_seq_leaf(req).is_none() {
            constants.insert(meta::CHANGE_SEQ, String::new());
        }
        constants
    }

    /// The change-sequence column to decode: CDC files only (DMS leaves it empty in full-load
    /// rows).
    fn change_seq_leaf(&self, req: &ConvertRequest<'_>) -> Option<usize> {
        self.cs_leaf
            .filter(|_| matches!(req.object.file, DmsFile::Cdc { .. }))
    }

    /// Whether the task compresses its files (DMS `CompressionType`): ferry's own columns
    /// then get snappy; otherwise they stay uncompressed like the columns copied from DMS.
    fn compressed(&self) -> bool {
        let first = (0..self.metadata.num_row_groups())
            .flat_map(|i| self.metadata.row_group(i).columns().first())
            .next();
        first.is_some_and(|c| c.compression() != Compression::UNCOMPRESSED)
    }

    /// The source columns ferry converts (and so encodes itself).
    fn converted_columns(&self) -> Vec<&str> {
        self.columns
            .iter()
            .filter_map(|(name, out)| matches!(out, Out::Transform(..)).then_some(name.as_str()))
            .collect()
    }

    fn encoded_type(&self, out: &Out) -> Option<DataType> {
        match out {
            Out::Meta(name) => Some(meta_arrow_type(name)),
            Out::Transform(_, t) => Some(t.output_type()),
            Out::Null(dt) => Some(dt.clone()),
            Out::Copy(_) | Out::Relabel(..) => None,
        }
    }

    /// A reader of the decoded columns of row group `rg`, or `None` when nothing is decoded.
    fn batches(
        &self,
        input: &RangeReader,
        rg: usize,
        leaves: &[usize],
    ) -> Result<Option<parquet::arrow::arrow_reader::ParquetRecordBatchReader>> {
        if leaves.is_empty() {
            return Ok(None);
        }
        let mask = ProjectionMask::leaves(
            self.metadata.file_metadata().schema_descr(),
            leaves.iter().copied(),
        );
        ParquetRecordBatchReaderBuilder::new_with_metadata(input.clone(), self.arrow.clone())
            .with_row_groups(vec![rg])
            .with_projection(mask)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map(Some)
            .map_err(classify_read)
    }

    /// The encoded columns' arrays for `n` rows starting at file row `row_base`.
    #[allow(clippy::too_many_arguments)]
    fn batch_columns(
        &self,
        req: &ConvertRequest<'_>,
        batch: Option<&RecordBatch>,
        n: usize,
        row_base: u64,
        file_time: i64,
        constants: &BTreeMap<&'static str, String>,
        stats: &mut Stats,
    ) -> Result<Vec<ArrayRef>> {
        let leaf_array = |leaf: usize| -> Option<&ArrayRef> {
            let name = self.arrow.schema().field(leaf).name();
            batch.and_then(|b| b.column_by_name(name))
        };
        let ops = self.ops(req, self.op_leaf.and_then(leaf_array), n, row_base, stats)?;
        let commit = commit_times(self.ts_leaf.and_then(leaf_array), n, file_time, stats);
        let mut arrays = Vec::new();
        for (name, out) in &self.columns {
            if constants.contains_key(name.as_str()) {
                continue;
            }
            let array: ArrayRef = match out {
                Out::Meta(meta::OP) => ops
                    .clone()
                    .ok_or_else(|| ConvertError::write("no Op values"))?,
                Out::Meta(meta::COMMIT_TS) => Arc::clone(&commit),
                Out::Meta(meta::CHANGE_SEQ) => {
                    change_seqs(self.change_seq_leaf(req).and_then(leaf_array), n)?
                }
                Out::Meta(meta::ROW) => Arc::new(Int64Array::from_iter_values(
                    (row_base..row_base + n as u64).map(|r| r as i64),
                )),
                Out::Meta(_) => return Err(ConvertError::write("metadata column without a value")),
                Out::Transform(leaf, Transform::KeyedHash) => {
                    let input = leaf_array(*leaf)
                        .ok_or_else(|| ConvertError::corrupt("decoded column missing"))?;
                    let key =
                        req.source
                            .hash_key
                            .as_ref()
                            .ok_or_else(|| ConvertError::NoHashKey {
                                column: name.clone(),
                            })?;
                    transform::keyed_hash(key, input.as_ref()).ok_or_else(|| {
                        ConvertError::UnsupportedType {
                            column: name.clone(),
                            parquet: "a type hash does not take".into(),
                        }
                    })?
                }
                Out::Transform(leaf, t) => {
                    let input = leaf_array(*leaf)
                        .ok_or_else(|| ConvertError::corrupt("decoded column missing"))?;
                    transform::apply(*t, input.as_ref()).map_err(|bad| ConvertError::BadValue {
                        column: name.clone(),
                        row: row_base + bad.row as u64,
                        value: ferry_core::text::quote_value(&bad.value),
                        reason: bad.reason.to_owned(),
                    })?
                }
                Out::Null(dt) => new_null_array(dt, n),
                Out::Copy(_) | Out::Relabel(..) => continue,
            };
            arrays.push(array);
        }
        Ok(arrays)
    }

    /// `_ferry_op` for a batch from DMS's `Op`, counting operations; `None` when constant.
    fn ops(
        &self,
        req: &ConvertRequest<'_>,
        op: Option<&ArrayRef>,
        n: usize,
        row_base: u64,
        stats: &mut Stats,
    ) -> Result<Option<ArrayRef>> {
        // Full-load files, and CDC files of CdcInsertsOnly tasks (no Op column), have one
        // operation for every row: a constant column, see `constants`.
        if matches!(req.object.file, DmsFile::FullLoad { .. }) {
            stats.ops.load += n as u64;
            return Ok(None);
        }
        let Some(op) = op else {
            stats.ops.insert += n as u64;
            return Ok(None);
        };
        let op = op.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
            ConvertError::UnsupportedType {
                column: DMS_OP.into(),
                parquet: format!("{:?}", op.data_type()),
            }
        })?;
        let mut out = Vec::with_capacity(n);
        for (i, v) in op.iter().enumerate() {
            out.push(match v {
                Some("I") => {
                    stats.ops.insert += 1;
                    meta::op::INSERT
                }
                Some("U") => {
                    stats.ops.update += 1;
                    meta::op::UPDATE
                }
                Some("D") => {
                    stats.ops.delete += 1;
                    meta::op::DELETE
                }
                other => {
                    return Err(ConvertError::BadOp {
                        row: row_base + i as u64,
                        value: ferry_core::text::quote_value(other.unwrap_or("NULL")),
                    });
                }
            });
        }
        Ok(Some(Arc::new(StringArray::from_iter_values(out))))
    }
}

/// Writer settings for the columns ferry encodes: snappy when the task compresses; no
/// statistics (BigQuery does not read them, and the copied columns keep DMS's); no dictionary
/// for `_ferry_row`, `_ferry_commit_ts` and converted columns (keys and times, mostly distinct:
/// dictionary work would be thrown away).
fn writer_properties(compressed: bool, converted: &[&str]) -> WriterPropertiesPtr {
    let compression = if compressed {
        Compression::SNAPPY
    } else {
        Compression::UNCOMPRESSED
    };
    let mut b = WriterProperties::builder()
        .set_compression(compression)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_created_by(format!("ferry {}", env!("CARGO_PKG_VERSION")));
    for name in [meta::ROW, meta::COMMIT_TS].iter().chain(converted) {
        b = b.set_column_dictionary_enabled(ColumnPath::from(*name), false);
    }
    Arc::new(b.build())
}

/// The parquet type of a constant metadata column (a required string).
fn constant_type(name: &str) -> Result<TypePtr> {
    let schema = Schema::new(vec![Field::new(name, DataType::Utf8, false)]);
    let descr = ArrowSchemaConverter::new()
        .convert(&schema)
        .map_err(ConvertError::write)?;
    descr
        .root_schema()
        .get_fields()
        .first()
        .cloned()
        .ok_or_else(|| ConvertError::write("constant column type"))
}

/// Encoded chunks of constant columns, by column and row count: a file's row groups mostly
/// have the same size, so each is encoded once and copied.
#[derive(Default)]
struct ConstantChunks {
    chunks: BTreeMap<(String, i64), (Bytes, ColumnChunkMetaData)>,
}

impl ConstantChunks {
    fn get(
        &mut self,
        name: &str,
        value: &str,
        rows: i64,
        props: &WriterPropertiesPtr,
    ) -> Result<(Bytes, ColumnCloseResult)> {
        let key = (name.to_owned(), rows);
        if !self.chunks.contains_key(&key) {
            // One column chunk of exactly `rows` values, written BATCH_ROWS values at a time
            // (the value is shared, never copied per row): memory stays flat whatever the row
            // count, and nothing splits the chunk into row groups of its own.
            let column = constant_type(name)?;
            let root = Arc::new(
                Type::group_type_builder("schema")
                    .with_fields(vec![column])
                    .build()
                    .map_err(ConvertError::write)?,
            );
            let mut writer = SerializedFileWriter::new(Vec::new(), root, Arc::clone(props))
                .map_err(ConvertError::write)?;
            let mut rg = writer.next_row_group().map_err(ConvertError::write)?;
            let mut col = rg
                .next_column()
                .map_err(ConvertError::write)?
                .ok_or_else(|| ConvertError::write("constant column writer"))?;
            let value = parquet::data_type::ByteArray::from(Bytes::from(value.to_owned()));
            let mut left = usize::try_from(rows).unwrap_or(0);
            // No more copies of the value than the chunk has rows (small files are the rule).
            let batch = vec![value; left.clamp(1, BATCH_ROWS)];
            while left > 0 {
                let n = left.min(batch.len());
                col.typed::<parquet::data_type::ByteArrayType>()
                    .write_batch(&batch[..n], None, None)
                    .map_err(ConvertError::write)?;
                left -= n;
            }
            col.close().map_err(ConvertError::write)?;
            rg.close().map_err(ConvertError::write)?;
            let bytes = Bytes::from(writer.into_inner().map_err(ConvertError::write)?);
            let metadata = ParquetMetaDataReader::new()
                .parse_and_finish(&bytes)
                .map_err(ConvertError::write)?;
            if metadata.num_row_groups() != 1 || metadata.row_group(0).num_rows() != rows {
                return Err(ConvertError::write(format!(
                    "constant column {name}: wrote {} row groups for {rows} rows",
                    metadata.num_row_groups()
                )));
            }
            let chunk = metadata.row_group(0).column(0).clone();
            self.chunks.insert(key.clone(), (bytes, chunk));
        }
        let (bytes, chunk) = &self.chunks[&key];
        Ok((bytes.clone(), close_result(chunk.clone(), rows)))
    }
}

/// Every column of every row group holds as many values as the row group has rows, and the row
/// groups add up to the rows written: a file that says otherwise is never handed on.
fn check_counts(written: &ParquetMetaData, rows: u64) -> Result<()> {
    let mut total: u64 = 0;
    for (i, rg) in written.row_groups().iter().enumerate() {
        for c in rg.columns() {
            if c.num_values() != rg.num_rows() {
                return Err(ConvertError::write(format!(
                    "output row group {i}: column {} holds {} values for {} rows",
                    c.column_path(),
                    c.num_values(),
                    rg.num_rows()
                )));
            }
        }
        total += u64::try_from(rg.num_rows()).unwrap_or(0);
    }
    if total != rows {
        return Err(ConvertError::write(format!(
            "output holds {total} rows, {rows} were converted"
        )));
    }
    Ok(())
}

/// How far a row's commit time may lie after its file's own time (clock skew between the
/// source and DMS) before it is taken as the file's time.
pub const FUTURE_TOLERANCE_MICROS: i64 = 5 * 60 * 1_000_000;

#[derive(Default)]
struct Stats {
    clamped: u64,
    ops: OpCounts,
    ts_min: Option<i64>,
    ts_max: Option<i64>,
    fallbacks: u64,
}

/// `_ferry_commit_ts` for a batch: the DMS timestamp column where readable, else the file time.
fn commit_times(ts: Option<&ArrayRef>, n: usize, file_time: i64, stats: &mut Stats) -> ArrayRef {
    let strings = ts.and_then(|a| a.as_any().downcast_ref::<StringArray>());
    let mut parser = timefmt::DatetimeParser::default();
    let values: Vec<i64> = match strings {
        Some(s) => s
            .iter()
            .map(|v| {
                let t = v.and_then(|v| parser.parse(v)).unwrap_or_else(|| {
                    stats.fallbacks += 1;
                    file_time
                });
                // A commit after the file was written is impossible; one far after it (a forged
                // row in year 9999) would win every later change of its key forever.
                if file_time > 0 && t > file_time + FUTURE_TOLERANCE_MICROS {
                    stats.clamped += 1;
                    file_time
                } else {
                    t
                }
            })
            .collect(),
        None => vec![file_time; n],
    };
    if let (Some(lo), Some(hi)) = (values.iter().min(), values.iter().max()) {
        stats.ts_min = Some(stats.ts_min.map_or(*lo, |m| m.min(*lo)));
        stats.ts_max = Some(stats.ts_max.map_or(*hi, |m| m.max(*hi)));
    }
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

/// A primitive column type under another name, everything else kept.
fn renamed(t: &TypePtr, name: &str) -> Result<TypePtr> {
    let info = t.get_basic_info();
    let (length, precision, scale) = match t.as_ref() {
        Type::PrimitiveType {
            type_length,
            precision,
            scale,
            ..
        } => (*type_length, *precision, *scale),
        Type::GroupType { .. } => {
            return Err(ConvertError::write("a group column cannot be renamed"));
        }
    };
    Type::primitive_type_builder(name, t.get_physical_type())
        .with_repetition(info.repetition())
        .with_converted_type(info.converted_type())
        .with_logical_type(info.logical_type_ref().cloned())
        .with_length(length)
        .with_precision(precision)
        .with_scale(scale)
        .build()
        .map(Arc::new)
        .map_err(ConvertError::write)
}

/// The physical type of a source leaf.
fn in_physical(metadata: &ParquetMetaData, leaf: usize) -> parquet::basic::Type {
    metadata
        .file_metadata()
        .schema_descr()
        .column(leaf)
        .physical_type()
}

/// How many of a string or binary array's values are at least `limit` bytes long.
fn values_at_least(array: &dyn Array, limit: u64) -> u64 {
    let long = |len: usize| u64::from(len as u64 >= limit);
    if let Some(s) = array.as_any().downcast_ref::<StringArray>() {
        (0..s.len())
            .filter(|i| s.is_valid(*i))
            .map(|i| long(s.value(i).len()))
            .sum()
    } else if let Some(b) = array.as_any().downcast_ref::<arrow_array::BinaryArray>() {
        (0..b.len())
            .filter(|i| b.is_valid(*i))
            .map(|i| long(b.value(i).len()))
            .sum()
    } else {
        0
    }
}

/// `_ferry_change_seq` for a batch: DMS's text (a NULL as empty), which must be a string.
fn change_seqs(cs: Option<&ArrayRef>, n: usize) -> Result<ArrayRef> {
    let Some(cs) = cs else {
        return Ok(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n("", n),
        )));
    };
    let strings =
        cs.as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| ConvertError::UnsupportedType {
                column: DMS_CHANGE_SEQ.into(),
                parquet: format!("{:?}", cs.data_type()),
            })?;
    Ok(Arc::new(StringArray::from_iter_values(
        strings.iter().map(|v| v.unwrap_or("")),
    )))
}

/// The time a file stands for: its name's timestamp (CDC), else when S3 says it was written,
/// else the epoch.
fn file_time_micros(req: &ConvertRequest<'_>) -> i64 {
    match &req.object.file {
        DmsFile::Cdc { timestamp, .. } => timestamp.micros(),
        DmsFile::FullLoad { .. } => req.object_time_micros.unwrap_or(0),
    }
}

fn meta_name(name: &str) -> &'static str {
    meta::ALL
        .into_iter()
        .find(|m| *m == name)
        .unwrap_or(meta::SOURCE)
}

fn meta_arrow_type(name: &str) -> DataType {
    match name {
        meta::COMMIT_TS => DataType::Timestamp(ArrowTimeUnit::Microsecond, Some("UTC".into())),
        meta::ROW => DataType::Int64,
        _ => DataType::Utf8,
    }
}

fn describe(col: &parquet::schema::types::ColumnDescriptor) -> String {
    let mut s = col.physical_type().to_string();
    if let Some(l) = col.logical_type_ref() {
        s.push_str(&format!(" ({l:?})"));
    } else if col.converted_type() != parquet::basic::ConvertedType::NONE {
        s.push_str(&format!(" ({})", col.converted_type()));
    }
    s
}

/// The byte range holding a row group's column chunks.
fn row_group_span(rg: &parquet::file::metadata::RowGroupMetaData) -> Option<(u64, u64)> {
    // The footer's ranges were checked (`limits::check_footer`); a bad one yields no span.
    let ranges = rg
        .columns()
        .iter()
        .map(|c| crate::limits::chunk_range(c).unwrap_or((0, 0)));
    let start = ranges.clone().map(|(s, _)| s).min()?;
    let end = ranges.map(|(s, l)| s + l).max()?;
    Some((start, end - start))
}

fn close_result(metadata: ColumnChunkMetaData, rows: i64) -> ColumnCloseResult {
    ColumnCloseResult {
        bytes_written: u64::try_from(metadata.compressed_size()).unwrap_or(0),
        rows_written: u64::try_from(rows).unwrap_or(0),
        metadata,
        bloom_filter: None,
        column_index: None,
        offset_index: None,
    }
}

/// The same column chunk described under the output's (re-annotated) column descriptor.
fn relabel_chunk(
    chunk: &ColumnChunkMetaData,
    descr: parquet::schema::types::ColumnDescPtr,
) -> parquet::errors::Result<ColumnChunkMetaData> {
    let mut b = ColumnChunkMetaData::builder(descr)
        .set_compression_codec(chunk.compression_codec())
        .set_encodings_mask(*chunk.encodings_mask())
        .set_total_compressed_size(chunk.compressed_size())
        .set_total_uncompressed_size(chunk.uncompressed_size())
        .set_num_values(chunk.num_values())
        .set_data_page_offset(chunk.data_page_offset())
        .set_dictionary_page_offset(chunk.dictionary_page_offset());
    if let Some(stats) = chunk.page_encoding_stats() {
        b = b.set_page_encoding_stats(stats.clone());
    }
    b.build()
}

struct CountingWrite<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Converts one object: plans from the footer, then streams every row group into `out`.
pub fn convert<W: Write + Send>(
    input: &RangeReader,
    req: &ConvertRequest<'_>,
    out: W,
) -> Result<ConvertOutcome> {
    Conversion::plan(input, req)?.write(input, req, out)
}

/// [`convert`] under explicit caps.
pub fn convert_with<W: Write + Send>(
    input: &RangeReader,
    req: &ConvertRequest<'_>,
    out: W,
    limits: Limits,
) -> Result<ConvertOutcome> {
    Conversion::plan_with(input, req, limits)?.write(input, req, out)
}
