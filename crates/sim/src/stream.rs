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
use ferry_core::schema::{OpCounts, meta};
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
    /// DMS's hard cases: changes committed during the full load (written after it, with older
    /// timestamps), whole-second timestamps out of commit order, empty CDC files, and for some
    /// tables a reload or a truncate.
    pub hard_cases: bool,
    /// `UseTaskStartTimeForFullLoadTimestamp`: full-load rows carry the load's start, not their
    /// transfer time.
    pub task_start_timestamps: bool,
    /// Now and then an update changes a row's primary key (DMS writes only the new key; the
    /// old one stays in a replica until a reconcile removes it). Off by default: replicas then
    /// differ from the source by design, until the reconcile repairs them.
    pub pk_updates: bool,
    /// Now and then a JSON value longer than the source's `LobMaxSize`, which DMS cuts there
    /// (limited LOB mode): the manifest keeps the source's whole value, so such rows differ
    /// until the table is reloaded with a larger limit. Off by default.
    pub lob_cut: bool,
    /// Annotate types the way real DMS files do, with legacy converted types only (`INT_16`,
    /// `DECIMAL` on FIXED_LEN_BYTE_ARRAY, `TIMESTAMP_MICROS`); else with logical types.
    pub legacy_annotations: bool,
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
            hard_cases: true,
            task_start_timestamps: false,
            legacy_annotations: true,
            pk_updates: false,
            lob_cut: false,
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
    /// Object keys in S3 at the end, in the order DMS last wrote them (a reload rewrites
    /// `LOAD00000001...` under the same keys).
    pub files: Vec<String>,
    /// Objects DMS deleted (a truncate deletes the table's folder).
    #[serde(default)]
    pub removed: Vec<String>,
    /// The hard cases the table went through (`full_load_overlap`, `whole_second_timestamps`,
    /// `reload@<minute>`, `truncate@<minute>`, `type_change@<minute>`, `pk_updates:<count>`,
    /// `lob_cuts:<count>`).
    #[serde(default)]
    pub cases: Vec<String>,
    /// Rows by operation in the files still in S3.
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
    /// Last written after the retyped column's type change.
    retyped: bool,
    live: bool,
}

struct TableSim<'a> {
    source: &'a Source,
    table: &'a TableMapping,
    /// A column whose type changes to VARCHAR at a CDC minute (`ALTER TABLE ... MODIFY`).
    retype: Option<(usize, u32)>,
    /// Whether JSON values may exceed `LobMaxSize` ([`SimOptions::lob_cut`]).
    lob_cut: bool,
    columns: Vec<SimColumn>,
    seed: u64,
}

impl TableSim<'_> {
    fn row(&self, k: u64, version: u32, with_added: bool, retyped: bool) -> Vec<V> {
        let name = self.table.source_table();
        let mut key_pos = 0;
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
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
                match self.retype {
                    Some((col, _)) if col == i && retyped => {
                        model::MysqlType::Varchar.value(&mut rng, true)
                    }
                    _ if self.lob_cut
                        && c.mysql == model::MysqlType::Json
                        && rng.below(20) == 0 =>
                    {
                        // A document longer than the task's LobMaxSize.
                        let limit = self.source.lob_max_size_kb as usize * 1024;
                        V::Str(format!("{{\"history\": \"{}\"}}", "h".repeat(limit)))
                    }
                    _ => c.mysql.value(&mut rng, true),
                }
            })
            .collect()
    }

    /// Whether files of `minute` (`None`: the first full load) have the retyped column's new
    /// type.
    fn retyped_in(&self, minute: Option<u32>) -> bool {
        matches!((self.retype, minute), (Some((_, at)), Some(m)) if m >= at)
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

/// One row DMS writes: the op (`None` for a full-load row), the row's values, the value of the
/// timestamp column DMS writes, and the change sequence (`AR_H_CHANGE_SEQ`; empty for full-load
/// rows).
#[derive(Clone)]
struct Change {
    op: Option<&'static str>,
    values: Vec<V>,
    stamp: i64,
    change_seq: String,
}

/// The hard cases one table gets, chosen per table from the seed.
#[derive(Debug, Clone, Copy, Default)]
struct Cases {
    /// The CDC minute at which DMS reloads the table (`LOAD00000001...` written again).
    reload_at: Option<u32>,
    /// The CDC minute at which the source truncates the table (DMS deletes its S3 folder).
    truncate_at: Option<u32>,
    /// The CDC minute at which the column [`RETYPED_COLUMN`] becomes a VARCHAR.
    retype_at: Option<u32>,
}

/// The column whose type a type-change case changes (SMALLINT to VARCHAR).
pub const RETYPED_COLUMN: &str = "level";

/// How long the simulated full load of a table runs.
const LOAD_MICROS: i64 = 20_000_000;

/// The simulated source table and the DMS task writing it.
struct TableRun<'a, 's> {
    sim: &'a TableSim<'s>,
    opts: &'a SimOptions,
    out: &'a Path,
    replica: bool,
    state: Vec<RowState>,
    live_count: u64,
    deleted: Vec<u64>,
    next_k: u64,
    rng: Rng,
    /// Changes so far, for `AR_H_CHANGE_SEQ`.
    change_counter: u64,
    /// Whether the retyped column has its new type now.
    retyped_now: bool,
    /// Primary-key updates written.
    pk_updates: u64,
    /// LOB values DMS cut at `LobMaxSize`.
    lob_cuts: u64,
    removed: Vec<String>,
    /// Per file still in S3, in the order DMS last wrote them: what it holds.
    file_rows: Vec<(String, FileRows)>,
    bytes: u64,
}

/// What one file holds: its rows by operation and, for change-log tables, the rows' checksum
/// share, count and (while few) the rows.
#[derive(Default)]
struct FileRows {
    ops: OpCounts,
    sum: u128,
    count: u64,
    rows: Vec<Map<String, Json>>,
}

impl TableRun<'_, '_> {
    fn ensure(&mut self, k: u64) {
        if self.state.len() <= k as usize {
            self.state.resize(
                k as usize + 1,
                RowState {
                    version: 0,
                    with_added: false,
                    retyped: false,
                    live: false,
                },
            );
        }
    }

    fn current(&self, k: u64) -> Vec<V> {
        let s = self.state[k as usize];
        self.sim.row(k, s.version, s.with_added, s.retyped)
    }

    /// `AR_H_CHANGE_SEQ` for a change committed at `micros`: 16 digits of time
    /// (`YYYYMMDDHHmmSShh`) and a 19-digit counter.
    fn change_seq(&mut self, micros: i64) -> String {
        self.change_counter += 1;
        let digits: String = values::datetime_text(micros)
            .chars()
            .filter(char::is_ascii_digit)
            .take(16)
            .collect();
        format!("{digits}{:019}", self.change_counter)
    }

    /// One source change committed at `commit` (µs), applied to the model; returns the row
    /// DMS writes for it, with the commit's timestamp as MySQL's binlog has it (whole seconds).
    fn source_change(&mut self, commit: i64, with_added: bool, last: &mut Option<u64>) -> Change {
        let roll = self.rng.below(100);
        let (op, k) = if roll < 45 || self.live_count < 3 {
            // Insert: a new key, or now and then a key that was deleted before.
            let k = match self.deleted.pop() {
                Some(k) if self.rng.below(4) == 0 => k,
                other => {
                    if let Some(k) = other {
                        self.deleted.push(k);
                    }
                    self.next_k += 1;
                    self.next_k - 1
                }
            };
            ("I", k)
        } else {
            // Update or delete a live row; now and then the row just changed again.
            let again = last.filter(|k| {
                self.state.get(*k as usize).is_some_and(|s| s.live) && self.rng.below(3) == 0
            });
            let k = match again {
                Some(k) => k,
                None => pick_live(&self.state, &mut self.rng),
            };
            (if roll < 85 { "U" } else { "D" }, k)
        };
        self.ensure(k);
        // A primary-key update (`UPDATE t SET id = ...`): the row moves to a new key, and DMS
        // writes the new row only.
        if op == "U" && self.opts.pk_updates && self.rng.below(10) == 0 {
            let moved = self.next_k;
            self.next_k += 1;
            self.ensure(moved);
            let old = self.state[k as usize];
            self.state[k as usize].live = false;
            self.state[moved as usize] = RowState {
                version: old.version + 1,
                with_added,
                retyped: self.retyped_now,
                live: true,
            };
            self.pk_updates += 1;
            *last = Some(moved);
            let change_seq = self.change_seq(commit);
            return Change {
                op: Some("U"),
                values: self.current(moved),
                stamp: commit - commit.rem_euclid(1_000_000),
                change_seq,
            };
        }
        let values = if op == "D" {
            // DMS writes the row as it was before the delete.
            let v = self.current(k);
            self.state[k as usize].live = false;
            self.live_count -= 1;
            self.deleted.push(k);
            v
        } else {
            let s = &mut self.state[k as usize];
            s.version += 1;
            s.with_added = with_added;
            s.retyped = self.retyped_now;
            self.live_count += u64::from(!s.live);
            s.live = true;
            self.current(k)
        };
        *last = Some(k);
        let change_seq = self.change_seq(commit);
        Change {
            op: Some(op),
            values,
            stamp: commit - commit.rem_euclid(1_000_000),
            change_seq,
        }
    }

    /// Writes one file DMS wrote at `written` (µs; also its modification time, as S3's
    /// `LastModified` would be) and records it.
    fn write_file(
        &mut self,
        key: String,
        minute: Option<u32>,
        cdc: bool,
        rows: &[Change],
        written: i64,
    ) -> std::io::Result<()> {
        let mut writer = DmsWriter::create(self.out, &key, self.sim, minute, cdc, self.opts)?;
        let limit = self.sim.source.lob_max_size_kb as usize * 1024;
        for c in rows {
            for (col, v) in self.sim.columns.iter().zip(&c.values) {
                if col.mysql == model::MysqlType::Json && matches!(v, V::Str(s) if s.len() > limit)
                {
                    self.lob_cuts += 1;
                }
            }
        }
        for chunk in rows.chunks(CHUNK_ROWS as usize) {
            writer.write(chunk)?;
        }
        self.bytes += writer.close(written)?;
        let mut f = FileRows::default();
        for c in rows {
            let (op, count) = match c.op {
                None => (meta::op::LOAD, &mut f.ops.load),
                Some("I") => (meta::op::INSERT, &mut f.ops.insert),
                Some("U") => (meta::op::UPDATE, &mut f.ops.update),
                _ => (meta::op::DELETE, &mut f.ops.delete),
            };
            *count += 1;
            if !self.replica {
                let row = self.sim.expected(&c.values, Some(op));
                f.sum = f.sum.wrapping_add(row_hash(&row));
                f.count += 1;
                if f.rows.len() <= self.opts.manifest_rows {
                    f.rows.push(row);
                }
            }
        }
        // A file written again under the same key (a reload) replaces the old one.
        self.file_rows.retain(|(k, _)| *k != key);
        self.file_rows.push((key, f));
        Ok(())
    }

    /// A full load starting at `start`: DMS reads the live rows in key order over
    /// [`LOAD_MICROS`] while the source keeps changing. A row reads as it is when DMS reaches it;
    /// the changes committed meanwhile are cached and written after the load as one CDC file,
    /// with their (older) timestamps. Full-load rows carry their transfer time, or the task's
    /// start with `UseTaskStartTimeForFullLoadTimestamp`.
    fn full_load(
        &mut self,
        start: i64,
        minute: Option<u32>,
        with_added: bool,
    ) -> std::io::Result<()> {
        // A reload is how changes DMS never captured get repaired (a stopped task whose binlog
        // expired): some rows were deleted at the source without DMS writing anything.
        if minute.is_some() {
            for _ in 0..3.min(self.live_count) {
                let k = pick_live(&self.state, &mut self.rng);
                self.state[k as usize].live = false;
                self.live_count -= 1;
            }
        }
        let mut keys: Vec<u64> = (0..self.state.len() as u64)
            .filter(|k| self.state[*k as usize].live)
            .collect();
        let overlap = if self.opts.hard_cases {
            u64::from(self.opts.changes_per_minute / 4).max(1)
        } else {
            0
        };
        let mut change_times: Vec<i64> = (0..overlap)
            .map(|_| start + 1_000_000 + self.rng.range(0, LOAD_MICROS - 2_000_000))
            .collect();
        change_times.sort_unstable();
        let n = keys.len().max(1) as i64;
        let mut cached = Vec::new();
        let mut loaded: Vec<(i64, Change)> = Vec::new();
        let mut last = None;
        let mut changes = change_times.into_iter().peekable();
        let mut i = 0usize;
        // Keys inserted during the load lie past the scan: read at its end if still live.
        while i < keys.len() {
            let k = keys[i];
            let read_at = start + 500_000 + (i as i64) * (LOAD_MICROS - 1_000_000) / n;
            if let Some(&t) = changes.peek()
                && t < read_at
            {
                changes.next();
                let before = self.next_k;
                cached.push(self.source_change(t, with_added, &mut last));
                if self.next_k > before {
                    keys.push(before);
                }
                continue;
            }
            i += 1;
            if !self.state[k as usize].live {
                continue;
            }
            let stamp = if self.opts.task_start_timestamps {
                start
            } else {
                read_at
            };
            loaded.push((
                read_at,
                Change {
                    op: None,
                    values: self.current(k),
                    stamp,
                    change_seq: String::new(),
                },
            ));
        }
        for t in changes {
            cached.push(self.source_change(t, with_added, &mut last));
        }
        let dir = self.sim.table_dir();
        let mut last_load_written = start;
        for (file_no, chunk) in loaded.chunks(self.opts.load_file_rows as usize).enumerate() {
            let written = chunk.last().map_or(start, |(t, _)| *t) + 200_000;
            last_load_written = last_load_written.max(written);
            let rows: Vec<Change> = chunk.iter().map(|(_, c)| c.clone()).collect();
            let key = format!("{dir}/LOAD{:08X}.parquet", file_no + 1);
            self.write_file(key, minute, false, &rows, written)?;
        }
        if !cached.is_empty() {
            // DMS applies the cached changes once the load is complete: their file is written
            // after every LOAD file, also when rows inserted during the load were read past the
            // scan's window.
            let written = (start + LOAD_MICROS + 2_000_000).max(last_load_written + 1_000_000);
            let key = self.cdc_key(written);
            self.write_file(key, minute, true, &cached, written)?;
        }
        Ok(())
    }

    fn cdc_key(&self, written: i64) -> String {
        format!(
            "{}/{}{}.parquet",
            self.sim.table_dir(),
            partition_folders(self.sim.source.date_partitioning, written),
            cdc_name(written)
        )
    }

    /// A TRUNCATE at the source: every row is gone, and DMS deletes the table's files.
    fn truncate(&mut self) -> std::io::Result<()> {
        for (key, _) in std::mem::take(&mut self.file_rows) {
            std::fs::remove_file(self.out.join(&key))?;
            self.removed.push(key);
        }
        for s in &mut self.state {
            s.live = false;
        }
        self.live_count = 0;
        self.deleted.clear();
        Ok(())
    }
}

fn simulate_table(
    source: &Source,
    table: &TableMapping,
    opts: &SimOptions,
    out: &Path,
    manifest: &mut Manifest,
) -> std::io::Result<TableManifest> {
    let add_at = (opts.add_column && opts.minutes >= 2).then_some(opts.minutes / 2);
    let name = table.source_table();
    let mut cases = Cases::default();
    if opts.hard_cases && opts.minutes >= 3 {
        match Rng::for_name(opts.seed, &[name.as_bytes(), b"cases"]).below(5) {
            0 => cases.reload_at = Some(opts.minutes * 2 / 3),
            1 => cases.truncate_at = Some(opts.minutes / 2 + 1),
            2 => cases.retype_at = Some(opts.minutes / 2),
            _ => {}
        }
    }
    let columns = model::table_columns(table, add_at);
    // The retyped column must be a plain one: not a key, not hinted, not the added one.
    let retype = cases.retype_at.and_then(|at| {
        columns
            .iter()
            .position(|c| c.name == RETYPED_COLUMN && !c.key && c.hint.is_none())
            .map(|i| (i, at))
    });
    if retype.is_none() {
        cases.retype_at = None;
    }
    let sim = TableSim {
        source,
        table,
        retype,
        lob_cut: opts.lob_cut,
        columns,
        seed: opts.seed,
    };
    let mut run = TableRun {
        sim: &sim,
        opts,
        out,
        replica: table.mode == Mode::Replica,
        state: vec![
            RowState {
                version: 0,
                with_added: false,
                retyped: false,
                live: true,
            };
            opts.rows as usize + 1
        ],
        live_count: opts.rows,
        deleted: Vec::new(),
        next_k: opts.rows + 1,
        rng: Rng::for_name(opts.seed, &[name.as_bytes(), b"cdc"]),
        change_counter: 0,
        retyped_now: false,
        pk_updates: 0,
        lob_cuts: 0,
        removed: Vec::new(),
        file_rows: Vec::new(),
        bytes: 0,
    };
    run.state[0].live = false;

    // The full load, then one CDC file per minute.
    run.full_load(opts.start_micros, None, false)?;
    for minute in 0..opts.minutes {
        let with_added = add_at.is_some_and(|a| minute >= a);
        run.retyped_now = sim.retyped_in(Some(minute));
        let minute_start = opts.start_micros + i64::from(minute + 1) * 60_000_000;
        if cases.truncate_at == Some(minute) {
            run.truncate()?;
        }
        if cases.reload_at == Some(minute) {
            run.full_load(minute_start + 5_000_000, Some(minute), with_added)?;
            continue;
        }
        let n = if opts.changes_per_minute == 0 || (opts.hard_cases && run.rng.below(8) == 0) {
            0
        } else {
            run.rng.below(u64::from(opts.changes_per_minute) * 2) + 1
        };
        let mut batch = Vec::with_capacity(n as usize);
        let mut last = None;
        for i in 0..n {
            let commit = minute_start + 1_000_000 + (i as i64) * (58_000_000 / n as i64);
            let mut change = run.source_change(commit, with_added, &mut last);
            // A transaction that began before the previous one committed after it: its binlog
            // timestamp (the statement's start) is older than the row before it.
            if opts.hard_cases && i > 0 && run.rng.below(8) == 0 {
                change.stamp -= (run.rng.below(3) as i64 + 1) * 1_000_000;
            }
            batch.push(change);
        }
        // Nothing changed: DMS writes a file with no rows now and then (hard cases).
        if batch.is_empty() && !opts.hard_cases {
            continue;
        }
        let written = minute_start + 59_000_000 + run.rng.range(0, 999) * 1000;
        let key = run.cdc_key(written);
        run.write_file(key, Some(minute), true, &batch, written)?;
    }

    let mut case_names = Vec::new();
    if opts.hard_cases {
        case_names.push("full_load_overlap".to_owned());
        case_names.push("whole_second_timestamps".to_owned());
    }
    if let Some(m) = cases.reload_at {
        case_names.push(format!("reload@{m}"));
    }
    if let Some(m) = cases.truncate_at {
        case_names.push(format!("truncate@{m}"));
    }
    if let Some(m) = cases.retype_at {
        case_names.push(format!("type_change@{m}"));
    }
    if run.pk_updates > 0 {
        case_names.push(format!("pk_updates:{}", run.pk_updates));
    }
    if run.lob_cuts > 0 {
        case_names.push(format!("lob_cuts:{}", run.lob_cuts));
    }
    let keep_rows = |n: u64| n <= opts.manifest_rows as u64;
    let (expected_rows, checksum, rows) = if run.replica {
        let live: Vec<u64> = (0..run.state.len() as u64)
            .filter(|k| run.state[*k as usize].live)
            .collect();
        let n = live.len() as u64;
        let rendered = |k: &u64| sim.expected(&run.current(*k), None);
        let sum = (n <= CHECKSUM_MAX_ROWS)
            .then(|| checksum(live.iter().map(rendered).collect::<Vec<_>>().iter()));
        let rows = keep_rows(n).then(|| live.iter().map(rendered).collect());
        (n, sum, rows)
    } else {
        let count: u64 = run.file_rows.iter().map(|(_, f)| f.count).sum();
        let sum = run
            .file_rows
            .iter()
            .fold(0u128, |a, (_, f)| a.wrapping_add(f.sum));
        let rows = keep_rows(count).then(|| {
            run.file_rows
                .iter()
                .flat_map(|(_, f)| f.rows.iter().cloned())
                .collect()
        });
        (
            count,
            (count <= CHECKSUM_MAX_ROWS).then(|| format!("{sum:032x}")),
            rows,
        )
    };
    // What the files still in S3 hold (a reload overwrote some, a truncate deleted some).
    let changes = run
        .file_rows
        .iter()
        .fold(OpCounts::default(), |a, (_, f)| OpCounts {
            load: a.load + f.ops.load,
            insert: a.insert + f.ops.insert,
            update: a.update + f.ops.update,
            delete: a.delete + f.ops.delete,
        });
    manifest.files += run.file_rows.len() as u64;
    manifest.rows += changes.total();
    manifest.bytes += run.bytes;
    Ok(TableManifest {
        source: source.name.clone(),
        table: name,
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
        files: run.file_rows.into_iter().map(|(k, _)| k).collect(),
        removed: run.removed,
        cases: case_names,
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

/// The parquet writer of a simulated file: legacy annotations (as real DMS writes them), or the
/// Arrow writer's logical types.
enum Parquet {
    Legacy(crate::legacy::LegacyWriter<BufWriter<File>>),
    Arrow(ArrowWriter<BufWriter<File>>),
}

/// One parquet file being written the way DMS writes it: the timestamp column first and
/// REQUIRED, then `Op` (CDC files), the table's columns, and the `AR_H_CHANGE_SEQ` column the
/// task's `add-column` rule appends.
struct DmsWriter<'s> {
    writer: Parquet,
    schema: Arc<Schema>,
    /// The table's columns in the file, with the MySQL type they have in it.
    columns: Vec<(usize, model::MysqlType)>,
    sim: &'s TableSim<'s>,
    cdc: bool,
    path: PathBuf,
}

impl<'s> DmsWriter<'s> {
    /// `minute` is the CDC minute the file belongs to (`None`: the first full load): it decides
    /// whether the added column exists yet.
    fn create(
        out: &Path,
        key: &str,
        sim: &'s TableSim<'s>,
        minute: Option<u32>,
        cdc: bool,
        opts: &SimOptions,
    ) -> std::io::Result<Self> {
        let path = out.join(key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut fields = Vec::new();
        if let Some(ts) = &sim.source.timestamp_column {
            fields.push(Field::new(ts, DataType::Utf8, false));
        }
        if cdc {
            fields.push(Field::new("Op", DataType::Utf8, true));
        }
        let mut columns = Vec::new();
        for (i, c) in sim.columns.iter().enumerate() {
            let exists = match (c.since_minute, minute) {
                (None, _) => true,
                (Some(since), Some(m)) => m >= since,
                (Some(_), None) => false,
            };
            if exists {
                let mysql = match sim.retype {
                    Some((col, _)) if col == i && sim.retyped_in(minute) => {
                        model::MysqlType::Varchar
                    }
                    _ => c.mysql,
                };
                fields.push(Field::new(&c.name, mysql.dms_arrow_type(), true));
                columns.push((i, mysql));
            }
        }
        fields.push(Field::new(
            ferry_core::deploy::CHANGE_SEQ_COLUMN,
            DataType::Utf8,
            true,
        ));
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
            .set_created_by("AWS (ferry DMS simulator)".into())
            .build();
        let file = BufWriter::new(File::create(&path)?);
        let writer = if opts.legacy_annotations {
            Parquet::Legacy(
                crate::legacy::LegacyWriter::try_new(file, &schema, props, opts.row_group_rows)
                    .map_err(std::io::Error::other)?,
            )
        } else {
            let options = ArrowWriterOptions::new()
                .with_properties(props)
                .with_skip_arrow_metadata(true);
            Parquet::Arrow(
                ArrowWriter::try_new_with_options(file, Arc::clone(&schema), options)
                    .map_err(std::io::Error::other)?,
            )
        };
        Ok(DmsWriter {
            writer,
            schema,
            columns,
            sim,
            cdc,
            path,
        })
    }

    fn write(&mut self, changes: &[Change]) -> std::io::Result<()> {
        let mut arrays: Vec<ArrayRef> = Vec::new();
        if self.sim.source.timestamp_column.is_some() {
            arrays.push(Arc::new(StringArray::from_iter_values(
                changes.iter().map(|c| values::dms_timestamp_text(c.stamp)),
            )));
        }
        if self.cdc {
            arrays.push(Arc::new(
                changes.iter().map(|c| c.op).collect::<StringArray>(),
            ));
        }
        for &(i, mysql) in &self.columns {
            if mysql != self.sim.columns[i].mysql {
                // After `MODIFY ... VARCHAR`, MySQL holds every value as text, the ones
                // written before the change too.
                let text: Vec<V> = changes
                    .iter()
                    .map(|c| match &c.values[i] {
                        V::Int(n) => V::Str(n.to_string()),
                        other => other.clone(),
                    })
                    .collect();
                arrays.push(model::build_array(mysql, &text.iter().collect::<Vec<_>>()));
                continue;
            }
            if mysql == model::MysqlType::Json {
                // DMS cuts LOBs at LobMaxSize without an error (S3 targets: limited LOB mode).
                let limit = self.sim.source.lob_max_size_kb as usize * 1024;
                let cut: Vec<V> = changes
                    .iter()
                    .map(|c| match &c.values[i] {
                        V::Str(s) if s.len() > limit => {
                            let mut end = limit;
                            while !s.is_char_boundary(end) {
                                end -= 1;
                            }
                            V::Str(s[..end].to_owned())
                        }
                        other => other.clone(),
                    })
                    .collect();
                arrays.push(model::build_array(mysql, &cut.iter().collect::<Vec<_>>()));
                continue;
            }
            let values: Vec<&V> = changes.iter().map(|c| &c.values[i]).collect();
            arrays.push(model::build_array(mysql, &values));
        }
        arrays.push(Arc::new(StringArray::from_iter_values(
            changes.iter().map(|c| c.change_seq.as_str()),
        )));
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), arrays)
            .map_err(std::io::Error::other)?;
        match &mut self.writer {
            Parquet::Legacy(w) => w.write(&batch),
            Parquet::Arrow(w) => w.write(&batch),
        }
        .map_err(std::io::Error::other)
    }

    /// Finishes the file (a file given no rows has no row groups, as DMS writes an empty CDC
    /// file), dates it `written` (µs) and returns its size.
    fn close(self, written: i64) -> std::io::Result<u64> {
        match self.writer {
            Parquet::Legacy(w) => w.close().map(drop),
            Parquet::Arrow(w) => w.close().map(drop),
        }
        .map_err(std::io::Error::other)?;
        let file = File::options().write(true).open(&self.path)?;
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::from_micros(u64::try_from(written).unwrap_or(0));
        file.set_modified(at)?;
        Ok(file.metadata()?.len())
    }
}
