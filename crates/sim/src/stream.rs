//! Writing a DMS-shaped tree: a full load, then a minute-by-minute CDC stream per table, and the
//! manifest of what BigQuery must end up holding.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use ferry_core::mapping::{Catalog, Mode, Source, TableMapping};
use ferry_core::partition::{DateDelimiter, DatePartitioning, DateSequence};
use ferry_core::schema::OpCounts;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::{Compression, GzipLevel};
use parquet::file::properties::{WriterProperties, WriterVersion};
use serde::Serialize;
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::model::{self, SimColumn};
use crate::rng::Rng;
use crate::values::{self, V};

/// Rows generated and written at a time.
const CHUNK_ROWS: u64 = 65_536;

/// Final states above this many rows get no checksum (it would dominate the run time).
const CHECKSUM_MAX_ROWS: u64 = 2_000_000;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Seed: the same seed writes the same bytes.
    pub seed: u64,
    /// Rows per table in the full load.
    pub rows: u64,
    /// Minutes of CDC after the full load (one file per table per minute with changes).
    pub minutes: u32,
    /// OpCounts per table per minute, on average.
    pub changes_per_minute: u32,
    /// Rows per parquet row group (DMS `RowGroupLength`, default 10,000).
    pub row_group_rows: usize,
    /// Rows per full-load file at most.
    pub load_file_rows: u64,
    /// GZIP-compress the parquet pages (DMS `CompressionType=GZIP`); uncompressed otherwise.
    pub gzip: bool,
    /// When the full load ran, µs since the epoch; minute `m` of CDC starts `m + 1` minutes later.
    pub start_micros: i64,
    /// Only these sources (by name) or tables (`schema.table`); all when empty.
    pub only: Vec<String>,
    /// Tables with at most this many expected rows list them in the manifest.
    pub manifest_rows: usize,
    /// Add a column to every table half way through the CDC stream.
    pub add_column: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 1,
            rows: 200,
            minutes: 6,
            changes_per_minute: 40,
            row_group_rows: 10_000,
            load_file_rows: 1_000_000,
            gzip: false,
            start_micros: 1_795_651_200_000_000, // 2026-11-26T00:00:00Z
            only: Vec::new(),
            manifest_rows: 1_000,
            add_column: true,
        }
    }
}

/// One simulated column, as the manifest lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ColumnManifest {
    /// Name.
    pub name: String,
    /// MySQL type.
    pub mysql: String,
    /// The mapping's hint, if any.
    pub hint: Option<String>,
}

/// What one table's files hold and what BigQuery must end up with.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TableManifest {
    /// Source name.
    pub source: String,
    /// `schema.table`.
    pub table: String,
    /// `replica` or `changelog`.
    pub mode: String,
    /// Whether the mapping loads the table.
    pub enabled: bool,
    /// The table analysts query (`project.dataset.table`).
    pub target: String,
    /// The columns.
    pub columns: Vec<ColumnManifest>,
    /// Object keys written, in apply order.
    pub files: Vec<String>,
    /// Rows written by operation.
    pub changes: OpCounts,
    /// Rows the target must hold: the replica's live rows, or every change in a change log.
    pub expected_rows: u64,
    /// [`checksum`] of those rows, when there are at most 2,000,000 of them.
    pub checksum: Option<String>,
    /// The rows themselves (canonical values by column; change logs add `_ferry_op`), when
    /// there are at most `manifest_rows` of them.
    pub rows: Option<Vec<Map<String, Json>>>,
}

/// Everything a simulation wrote.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The seed.
    pub seed: u64,
    /// Files written.
    pub files: u64,
    /// Rows written (all operations).
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Per table.
    pub tables: Vec<TableManifest>,
}

/// An order-independent checksum of rows: the wrapping sum of the first 128 bits of each row's
/// SHA-256 over its canonical JSON (keys sorted), as 32 hex digits.
pub fn checksum<'a>(rows: impl IntoIterator<Item = &'a Map<String, Json>>) -> String {
    let mut sum: u128 = 0;
    for row in rows {
        sum = sum.wrapping_add(row_hash(row));
    }
    format!("{sum:032x}")
}

/// One row's share of [`checksum`]: the first 128 bits of SHA-256 over its canonical JSON.
pub fn row_hash(row: &Map<String, Json>) -> u128 {
    let text = Json::Object(row.clone()).to_string();
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// Writes the DMS tree for the catalog's tables under `out` (the bucket's root) and returns
/// the manifest (also written to `out/../<out name>.manifest.json` by the CLI).
pub fn simulate(catalog: &Catalog, opts: &SimOptions, out: &Path) -> std::io::Result<Manifest> {
    let mut manifest = Manifest {
        seed: opts.seed,
        files: 0,
        rows: 0,
        bytes: 0,
        tables: Vec::new(),
    };
    for source in catalog.sources() {
        for table in &source.tables {
            let selected = opts.only.is_empty()
                || opts
                    .only
                    .iter()
                    .any(|o| *o == source.name || *o == table.source_table());
            if selected {
                let t = simulate_table(source, table, opts, out, &mut manifest)?;
                manifest.tables.push(t);
            }
        }
    }
    Ok(manifest)
}

/// A row's state: its version, whether it was last written with the added column, and
/// whether it exists.
#[derive(Clone, Copy)]
struct RowState {
    version: u32,
    with_added: bool,
    live: bool,
}

struct TableSim<'a> {
    source: &'a Source,
    table: &'a TableMapping,
    columns: Vec<SimColumn>,
    seed: u64,
}

impl TableSim<'_> {
    fn row(&self, k: u64, version: u32, with_added: bool) -> Vec<V> {
        let name = self.table.source_table();
        let mut key_pos = 0;
        self.columns
            .iter()
            .map(|c| {
                if c.key {
                    key_pos += 1;
                    return model::key_value(c, key_pos - 1, k);
                }
                if c.since_minute.is_some() && !with_added {
                    return V::Null;
                }
                let mut rng = Rng::for_name(
                    self.seed,
                    &[
                        name.as_bytes(),
                        c.name.as_bytes(),
                        &k.to_le_bytes(),
                        &version.to_le_bytes(),
                    ],
                );
                c.mysql.value(&mut rng, true)
            })
            .collect()
    }

    fn expected(&self, values: &[V], op: Option<&str>) -> Map<String, Json> {
        let mut row = Map::new();
        for (c, v) in self.columns.iter().zip(values) {
            row.insert(c.name.clone(), c.mysql.expected(c.hint, v));
        }
        if let Some(op) = op {
            row.insert(
                ferry_core::schema::meta::OP.to_owned(),
                Json::String(op.to_owned()),
            );
        }
        row
    }

    fn table_dir(&self) -> String {
        let mut dir = String::new();
        if !self.source.folder.is_empty() {
            dir.push_str(&self.source.folder);
            dir.push('/');
        }
        format!("{dir}{}/{}", self.table.schema, self.table.table)
    }
}

/// One change: the op (`None` for a full-load row), the row number, the row's values and its
/// commit time.
struct Change {
    op: Option<&'static str>,
    values: Vec<V>,
    commit: i64,
}

fn simulate_table(
    source: &Source,
    table: &TableMapping,
    opts: &SimOptions,
    out: &Path,
    manifest: &mut Manifest,
) -> std::io::Result<TableManifest> {
    let add_at = (opts.add_column && opts.minutes >= 2).then_some(opts.minutes / 2);
    let sim = TableSim {
        source,
        table,
        columns: model::table_columns(table, add_at),
        seed: opts.seed,
    };
    let replica = table.mode == Mode::Replica;
    let keep_rows = |n: u64| n <= opts.manifest_rows as u64;
    let mut files = Vec::new();
    let mut changes = OpCounts::default();
    let mut log: Vec<Map<String, Json>> = Vec::new();
    let mut log_sum: u128 = 0;
    let mut log_count: u64 = 0;
    let mut record =
        |sim: &TableSim<'_>, values: &[V], op: &str, log: &mut Vec<Map<String, Json>>| {
            if !replica {
                let row = sim.expected(values, Some(op));
                log_count += 1;
                if log_count <= CHECKSUM_MAX_ROWS {
                    log_sum = log_sum.wrapping_add(row_hash(&row));
                }
                if log.len() <= opts.manifest_rows {
                    log.push(row);
                }
            }
        };

    // Full load: rows 1..=rows, version 0, written before the added column exists.
    let mut state: Vec<RowState> = vec![
        RowState {
            version: 0,
            with_added: false,
            live: true
        };
        opts.rows as usize + 1
    ];
    state[0].live = false;
    let mut file_no = 1u32;
    let mut k = 1u64;
    while k <= opts.rows {
        let end = (k + opts.load_file_rows).min(opts.rows + 1);
        let key = format!("{}/LOAD{file_no:08X}.parquet", sim.table_dir());
        let mut writer = DmsWriter::create(out, &key, &sim, None, opts)?;
        let mut start = k;
        while start < end {
            let stop = (start + CHUNK_ROWS).min(end);
            let batch: Vec<Change> = (start..stop)
                .map(|k| Change {
                    op: None,
                    values: sim.row(k, 0, false),
                    commit: opts.start_micros,
                })
                .collect();
            for c in &batch {
                record(
                    &sim,
                    &c.values,
                    ferry_core::schema::meta::op::LOAD,
                    &mut log,
                );
            }
            writer.write(&batch)?;
            start = stop;
        }
        changes.load += end - k;
        manifest.bytes += writer.close()?;
        files.push(key);
        file_no += 1;
        k = end;
    }

    // CDC: one file per minute.
    let mut rng = Rng::for_name(opts.seed, &[table.source_table().as_bytes(), b"cdc"]);
    let mut next_k = opts.rows + 1;
    let mut deleted: Vec<u64> = Vec::new();
    let mut live_count = opts.rows;
    for minute in 0..opts.minutes {
        let with_added = add_at.is_some_and(|a| minute >= a);
        let n = if opts.changes_per_minute == 0 {
            0
        } else {
            rng.below(u64::from(opts.changes_per_minute) * 2) + 1
        };
        let minute_start = opts.start_micros + i64::from(minute + 1) * 60_000_000;
        let mut batch = Vec::with_capacity(n as usize);
        let mut last_touched: Option<u64> = None;
        for i in 0..n {
            let commit = minute_start + 1_000_000 + (i as i64) * (58_000_000 / n as i64);
            let roll = rng.below(100);
            let (op, k) = if roll < 45 || live_count < 3 {
                // Insert: a new key, or now and then a key that was deleted before.
                let k = match deleted.pop() {
                    Some(k) if rng.below(4) == 0 => k,
                    other => {
                        if let Some(k) = other {
                            deleted.push(k);
                        }
                        next_k += 1;
                        next_k - 1
                    }
                };
                ("I", k)
            } else {
                // Update or delete a live row; now and then the row just changed again.
                let k = match last_touched
                    .filter(|k| state.get(*k as usize).is_some_and(|s| s.live) && rng.below(3) == 0)
                {
                    Some(k) => k,
                    None => pick_live(&state, &mut rng),
                };
                (if roll < 85 { "U" } else { "D" }, k)
            };
            if state.len() <= k as usize {
                state.resize(
                    k as usize + 1,
                    RowState {
                        version: 0,
                        with_added: false,
                        live: false,
                    },
                );
            }
            let s = &mut state[k as usize];
            let values = match op {
                "D" => {
                    // DMS writes the row as it was before the delete.
                    let v = sim.row(k, s.version, s.with_added);
                    s.live = false;
                    live_count -= 1;
                    deleted.push(k);
                    changes.delete += 1;
                    v
                }
                _ => {
                    s.version += 1;
                    s.with_added = with_added;
                    live_count += u64::from(!s.live);
                    s.live = true;
                    if op == "I" {
                        changes.insert += 1;
                    } else {
                        changes.update += 1;
                    }
                    sim.row(k, s.version, with_added)
                }
            };
            let meta_op = match op {
                "I" => ferry_core::schema::meta::op::INSERT,
                "U" => ferry_core::schema::meta::op::UPDATE,
                _ => ferry_core::schema::meta::op::DELETE,
            };
            record(&sim, &values, meta_op, &mut log);
            batch.push(Change {
                op: Some(op),
                values,
                commit,
            });
            last_touched = Some(k);
        }
        if batch.is_empty() {
            continue;
        }
        let written = minute_start + 59_000_000 + rng.range(0, 999) * 1000;
        let key = format!(
            "{}/{}{}.parquet",
            sim.table_dir(),
            partition_folders(source.date_partitioning, written),
            cdc_name(written)
        );
        let mut writer = DmsWriter::create(out, &key, &sim, Some(minute), opts)?;
        writer.write(&batch)?;
        manifest.bytes += writer.close()?;
        files.push(key);
    }

    let (expected_rows, checksum, rows) = if replica {
        let live: Vec<u64> = (0..state.len() as u64)
            .filter(|k| state[*k as usize].live)
            .collect();
        let n = live.len() as u64;
        let rendered = |k: &u64| {
            let s = state[*k as usize];
            sim.expected(&sim.row(*k, s.version, s.with_added), None)
        };
        let sum = (n <= CHECKSUM_MAX_ROWS)
            .then(|| checksum(live.iter().map(rendered).collect::<Vec<_>>().iter()));
        let rows = keep_rows(n).then(|| live.iter().map(rendered).collect());
        (n, sum, rows)
    } else {
        let sum = (log_count <= CHECKSUM_MAX_ROWS).then(|| format!("{log_sum:032x}"));
        (log_count, sum, keep_rows(log_count).then_some(log))
    };
    manifest.files += files.len() as u64;
    manifest.rows += changes.total();
    Ok(TableManifest {
        source: source.name.clone(),
        table: table.source_table(),
        mode: table.mode.as_str().to_owned(),
        enabled: table.enabled,
        target: table.primary_target().to_string(),
        columns: sim
            .columns
            .iter()
            .map(|c| ColumnManifest {
                name: c.name.clone(),
                mysql: format!("{:?}", c.mysql),
                hint: c.hint.map(|h| h.to_string()),
            })
            .collect(),
        files,
        changes,
        expected_rows,
        checksum,
        rows,
    })
}

fn pick_live(state: &[RowState], rng: &mut Rng) -> u64 {
    loop {
        let k = rng.below(state.len() as u64);
        if state[k as usize].live {
            return k;
        }
    }
}

/// A CDC file name for the time DMS wrote it: `YYYYMMDD-HHMMSSmmm`.
fn cdc_name(micros: i64) -> String {
    let text = values::datetime_text(micros); // YYYY-MM-DDTHH:MM:SS.ffffff
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    format!("{}-{}", &digits[..8], &digits[8..17])
}

/// The date partition folders (with a trailing `/`) for a layout, or nothing.
fn partition_folders(layout: Option<DatePartitioning>, micros: i64) -> String {
    let Some(layout) = layout else {
        return String::new();
    };
    let text = values::datetime_text(micros);
    let (y, m, d, h) = (&text[0..4], &text[5..7], &text[8..10], &text[11..13]);
    let parts: Vec<&str> = match layout.sequence {
        DateSequence::YyyyMmDd => vec![y, m, d],
        DateSequence::YyyyMmDdHh => vec![y, m, d, h],
        DateSequence::YyyyMm => vec![y, m],
        DateSequence::MmYyyyDd => vec![m, y, d],
        DateSequence::DdMmYyyy => vec![d, m, y],
    };
    let joined = match layout.delimiter {
        DateDelimiter::Slash => parts.join("/"),
        DateDelimiter::Dash => parts.join("-"),
        DateDelimiter::Underscore => parts.join("_"),
        DateDelimiter::None => parts.concat(),
    };
    format!("{joined}/")
}

/// One parquet file being written the way DMS writes it.
struct DmsWriter<'s> {
    writer: ArrowWriter<BufWriter<File>>,
    schema: Arc<Schema>,
    columns: Vec<usize>,
    sim: &'s TableSim<'s>,
    cdc: bool,
    path: PathBuf,
}

impl<'s> DmsWriter<'s> {
    /// `minute` is the CDC minute (`None` for a full-load file): it decides `Op` and whether
    /// the added column exists yet.
    fn create(
        out: &Path,
        key: &str,
        sim: &'s TableSim<'s>,
        minute: Option<u32>,
        opts: &SimOptions,
    ) -> std::io::Result<Self> {
        let path = out.join(key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut fields = Vec::new();
        if minute.is_some() {
            fields.push(Field::new("Op", DataType::Utf8, true));
        }
        if let Some(ts) = &sim.source.timestamp_column {
            fields.push(Field::new(ts, DataType::Utf8, true));
        }
        let mut columns = Vec::new();
        for (i, c) in sim.columns.iter().enumerate() {
            let exists = match (c.since_minute, minute) {
                (None, _) => true,
                (Some(since), Some(m)) => m >= since,
                (Some(_), None) => false,
            };
            if exists {
                fields.push(Field::new(&c.name, c.mysql.dms_arrow_type(), true));
                columns.push(i);
            }
        }
        let schema = Arc::new(Schema::new(fields));
        let compression = if opts.gzip {
            Compression::GZIP(GzipLevel::default())
        } else {
            Compression::UNCOMPRESSED
        };
        let props = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_1_0)
            .set_compression(compression)
            .set_max_row_group_row_count(Some(opts.row_group_rows))
            .set_created_by("parquet-mr (ferry DMS simulator)".into())
            .build();
        let options = ArrowWriterOptions::new()
            .with_properties(props)
            .with_skip_arrow_metadata(true);
        let file = BufWriter::new(File::create(&path)?);
        let writer = ArrowWriter::try_new_with_options(file, Arc::clone(&schema), options)
            .map_err(std::io::Error::other)?;
        Ok(DmsWriter {
            writer,
            schema,
            columns,
            sim,
            cdc: minute.is_some(),
            path,
        })
    }

    fn write(&mut self, changes: &[Change]) -> std::io::Result<()> {
        let mut arrays: Vec<ArrayRef> = Vec::new();
        if self.cdc {
            arrays.push(Arc::new(
                changes.iter().map(|c| c.op).collect::<StringArray>(),
            ));
        }
        if self.sim.source.timestamp_column.is_some() {
            arrays.push(Arc::new(StringArray::from_iter_values(
                changes.iter().map(|c| values::dms_timestamp_text(c.commit)),
            )));
        }
        for &i in &self.columns {
            let values: Vec<&V> = changes.iter().map(|c| &c.values[i]).collect();
            arrays.push(model::build_array(self.sim.columns[i].mysql, &values));
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), arrays)
            .map_err(std::io::Error::other)?;
        self.writer.write(&batch).map_err(std::io::Error::other)
    }

    fn close(self) -> std::io::Result<u64> {
        self.writer.close().map_err(std::io::Error::other)?;
        Ok(std::fs::metadata(&self.path)?.len())
    }
}
