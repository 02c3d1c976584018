//! `scripts/bench scale`: a simulated-time model of production at the seed's estate and larger.
//!
//! The model runs ferry's own handler (`ferry_pipeline::handle_batch_scheduled`, or
//! `handle_batch` for today's design) on every batch: the same parsing, grouping, conversion of
//! real DMS-shaped parquet, slot claims, deferrals, apply markers, load groups and budget rules
//! (`ferry_bigquery::combines` / `over_budget`) that production runs. It replaces only the
//! clock (simulated), SQS with the Lambda event source mapping, the lock table (an in-memory
//! store with the same contract), S3 (the objects are served from memory) and BigQuery (below).
//! Every parameter is listed in [`Params`] with its source; "assumption" marks the ones no
//! documentation gives, so they can be argued with.
//!
//! Usage: `scale [--estate N] [--hours H] [--design new|today|both] [--apply-every 15m]
//! [--tsv DIR]`. The last line per run is the summary the issue asks for:
//! `scale: estate=Nx hours=H max_loads_per_table=… project_loads=… dead_lettered=… fresh_p50_s=…
//! fresh_p99_s=… apply_tib_per_day=…`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is the report

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_bigquery::{WarehouseOptions, combines, over_budget};
use ferry_convert::RangeSource;
use ferry_core::event::{SqsEvent, s3_event_body};
use ferry_core::mapping::{Catalog, MappingFile, Source, TableMapping, TableRef};
use ferry_core::schema::TableSchema;
use ferry_core::sql::{self, ApplyWindow};
use ferry_pipeline::ports::{
    ApplyLock, LoadOutcome, LoadRequest, ObjectMeta, ObjectStore, PortError, StatusEvent, Warehouse,
};
use ferry_pipeline::schedule::{Schedule, ScheduleSettings};
use ferry_pipeline::{HandlerOptions, Pipeline, Scheduler, handle_batch, handle_batch_scheduled};
use ferry_tests::bqrules::LoadQuota;

const S: i64 = 1_000_000;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const TIB: f64 = GIB * 1024.0;
const MB10: f64 = 10.0 * 1024.0 * 1024.0;

/// The model's parameters, each with where it comes from.
#[derive(Debug, Clone)]
struct Params {
    /// Copies of the seed's estate: 1 is 6 sources, 68 mapped tables (`mappings/`), 40M changed
    /// rows a day (the seed's write-up, ../shared/seed).
    estate: u32,
    /// Simulated hours.
    hours: u32,
    /// Changed rows a day per estate copy (the seed: ~40 million).
    rows_per_day: f64,
    /// Tables per estate copy with 10 times the rows and a 10 GB replica (the model; the
    /// seed names a few hot game tables).
    hot_tables: usize,
    /// DMS `CdcMaxBatchInterval`: one CDC file per table per 60 s (DMS user guide, "Endpoint
    /// settings when using Amazon S3 as a target": default 60).
    cdc_interval_s: i64,
    /// S3 event to SQS: median 1 s, p99 10 s (assumption; the S3 user guide says notifications
    /// "typically" arrive "in seconds but can sometimes take a minute or longer").
    s3_event_median_s: f64,
    s3_event_p99_s: f64,
    /// Share of S3 events delivered twice (S3 user guide: notifications are delivered at least
    /// once; the rate is not published: assumption).
    duplicate_rate: f64,
    /// Event source mapping batch size (serverless.yml `batchSize`).
    batch_size: usize,
    /// `MaximumBatchingWindowInSeconds` (serverless.yml `batchingWindow`).
    batching_window_s: i64,
    /// Concurrent invocations (serverless.yml `reservedConcurrency`: 20 in prod at the seed's
    /// estate, sized at ten per estate copy beyond). Every idle poller gathers a batch, and a
    /// message goes to any of them at random: the pessimistic reading of the Lambda guide
    /// ("Lambda reads messages in batches" with several pollers).
    concurrency: usize,
    /// Queue visibility timeout (serverless.yml `visibilityTimeout`).
    visibility_s: i64,
    /// Receives before SQS moves a message to the dead-letter queue (serverless.yml
    /// `maxReceiveCount`).
    max_receive: u32,
    /// Tables one invocation works on at once (`FERRY_MAX_PARALLEL`).
    lanes: usize,
    /// Lambda memory, GB (serverless.yml `memorySize` 1024 MB).
    memory_gb: f64,
    /// Per object: S3 GET round trips and ferry's CPU (docs/performance.md, "Per-object overhead": 4.3 ms CPU,
    /// 12.1 ms wall on moto; 40 ms allowed for S3 in a region: assumption).
    object_overhead_ms: f64,
    /// Load job, insert to DONE: median 3 s, p99 20 s (assumption: BigQuery publishes no load
    /// latency; small uploaded loads take seconds).
    load_median_s: f64,
    load_p99_s: f64,
    /// Load jobs that fail with `backendError` (assumption), retried under the next job id.
    load_failure_rate: f64,
    /// One DML statement: median 5 s, p99 40 s (assumption).
    dml_median_s: f64,
    dml_p99_s: f64,
    /// A change-log row, all columns (assumption, from the simulator's tables plus ferry's
    /// seven `_ferry_` columns).
    row_bytes: f64,
    /// Replica size: 10 GB for the hot tables, 300 MB for the others (the model).
    hot_replica_bytes: f64,
    replica_bytes: f64,
    /// Tombstone table: 2% of its replica (assumption).
    tombstone_share: f64,
    /// On-demand price per TiB scanned (BigQuery pricing page, on-demand compute, US).
    usd_per_tib: f64,
    /// Query usage per project per day before `quotaExceeded` (page "Quotas and limits",
    /// "Query usage per day", custom-quota default for new projects: 200 TiB).
    query_tib_per_day: f64,
    /// The load-job quotas: per table 1,500, per project 100,000, rolling day, failed jobs
    /// included (the strict server's `LoadQuota`, page "Quotas and limits", Load jobs).
    quota: LoadQuota,
    /// Seed.
    seed: u64,
}

impl Params {
    fn new(estate: u32, hours: u32) -> Params {
        Params {
            estate,
            hours,
            rows_per_day: 40e6,
            hot_tables: 5,
            cdc_interval_s: 60,
            s3_event_median_s: 1.0,
            s3_event_p99_s: 10.0,
            duplicate_rate: 0.002,
            batch_size: 10,
            batching_window_s: 5,
            concurrency: (10 * estate as usize).max(20),
            visibility_s: 720,
            max_receive: 5,
            lanes: 4,
            memory_gb: 1.0,
            object_overhead_ms: 45.0,
            load_median_s: 3.0,
            load_p99_s: 20.0,
            load_failure_rate: 0.002,
            dml_median_s: 5.0,
            dml_p99_s: 40.0,
            row_bytes: 300.0,
            hot_replica_bytes: 10e9,
            replica_bytes: 300e6,
            tombstone_share: 0.02,
            usd_per_tib: 6.25,
            query_tib_per_day: 200.0,
            quota: LoadQuota::default(),
            seed: 7,
        }
    }
}

/// Which write path runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Design {
    /// The scheduled handler: load slots, apply slots, deferral by delayed send.
    New,
    /// One load job per file (combined from half the budget on), one apply per table per
    /// batch, deferral by SQS retry.
    Today,
}

// ---------------------------------------------------------------------------------------------
// Randomness and clock
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// Lognormal with this median and 99th percentile.
    fn lognormal(&mut self, median: f64, p99: f64) -> f64 {
        let sigma = (p99 / median).ln() / 2.326;
        let (u1, u2) = (self.uniform().max(1e-12), self.uniform());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * z).exp()
    }
}

type Clock = Arc<AtomicI64>;

// ---------------------------------------------------------------------------------------------
// The estate
// ---------------------------------------------------------------------------------------------

/// One mapped table of the model.
struct Model {
    source: String,
    bucket: String,
    key_dir: String,
    changelog: TableRef,
    hot: bool,
    rows_per_file: f64,
    replica_bytes: f64,
    replica: bool,
    template: Bytes,
    /// When in each interval the table's file is written (DMS tables are not in step).
    phase_micros: i64,
}

/// The estate: `copies` of the committed mappings, each copy its own sources, folders and
/// datasets; and one real DMS-shaped CDC file per table from the simulator as every file's body.
fn estate(p: &Params) -> (Catalog, Vec<Model>) {
    let dir = ferry_tests::mappings_dir();
    let mut files = Vec::new();
    let mut originals = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap();
        originals.push(MappingFile {
            path: path.display().to_string(),
            text: text.clone(),
        });
        for copy in 0..p.estate {
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if copy > 0 {
                let name = format!("{}-c{copy}", v["source"]["name"].as_str().unwrap());
                v["source"]["name"] = name.clone().into();
                let folder = format!("{}-c{copy}", v["source"]["folder"].as_str().unwrap());
                v["source"]["folder"] = folder.into();
                let dataset = format!("{}_c{copy}", v["bigquery"]["dataset"].as_str().unwrap());
                v["bigquery"]["dataset"] = dataset.into();
                files.push(MappingFile {
                    path: format!("{name}.json"),
                    text: v.to_string(),
                });
            } else {
                files.push(MappingFile {
                    path: path.display().to_string(),
                    text: v.to_string(),
                });
            }
        }
    }
    let catalog = Catalog::from_files(&files).unwrap();
    // One short simulator run of the original estate gives each table a real CDC file.
    let base = Catalog::from_files(&originals).unwrap();
    let tree = ferry_tests::TempDir::new("scale-templates");
    let manifest = ferry_sim::simulate(
        &base,
        &ferry_sim::SimOptions {
            rows: 20,
            minutes: 2,
            changes_per_minute: 30,
            hard_cases: false,
            ..ferry_sim::SimOptions::default()
        },
        tree.path(),
    )
    .unwrap();
    let mut templates: HashMap<String, (String, Bytes)> = HashMap::new();
    for t in &manifest.tables {
        let Some(key) = t
            .files
            .iter()
            .find(|k| !k.rsplit('/').next().unwrap_or("").starts_with("LOAD"))
        else {
            continue;
        };
        let body = Bytes::from(std::fs::read(tree.path().join(key)).unwrap());
        let dir = key.rsplit_once('/').unwrap().0.to_owned();
        templates.insert(format!("{}/{}", t.source, t.table), (dir, body));
    }
    // Hot tables: the `hot_tables` enabled tables of each copy that sort first by a stable hash.
    let hash = |s: &str| {
        s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let mut hot: HashSet<String> = HashSet::new();
    {
        let mut all: Vec<String> = base
            .sources()
            .iter()
            .flat_map(|s| {
                s.tables
                    .iter()
                    .filter(|t| t.enabled)
                    .map(move |t| format!("{}/{}", s.name, t.source_table()))
            })
            .collect();
        all.sort_by_key(|n| hash(n));
        hot.extend(all.into_iter().take(p.hot_tables));
    }
    let per_copy: usize = base
        .sources()
        .iter()
        .map(|s| s.tables.iter().filter(|t| t.enabled).count())
        .sum();
    let weight = (per_copy - p.hot_tables) as f64 + 10.0 * p.hot_tables as f64;
    let files_per_day = 86_400.0 / p.cdc_interval_s as f64;
    let mut models = Vec::new();
    let mut rng = Rng(p.seed ^ 0x5ca1e);
    for source in catalog.sources() {
        let original = source
            .name
            .split("-c")
            .next()
            .unwrap_or(&source.name)
            .to_owned();
        let original_folder = base.source(&original).unwrap().folder.clone();
        for t in source.tables.iter().filter(|t| t.enabled) {
            let id = format!("{original}/{}", t.source_table());
            let Some((dir, body)) = templates.get(&id) else {
                continue;
            };
            let is_hot = hot.contains(&id);
            let rows_per_day = p.rows_per_day * if is_hot { 10.0 } else { 1.0 } / weight;
            models.push(Model {
                source: source.name.clone(),
                bucket: source.bucket.clone(),
                key_dir: dir.replacen(&original_folder, &source.folder, 1),
                changelog: t.changelog.clone(),
                hot: is_hot,
                rows_per_file: rows_per_day / files_per_day,
                replica_bytes: if is_hot {
                    p.hot_replica_bytes
                } else {
                    p.replica_bytes
                },
                replica: t.replica.is_some(),
                template: body.clone(),
                phase_micros: (rng.uniform() * (p.cdc_interval_s * S) as f64) as i64,
            });
        }
    }
    (catalog, models)
}

// ---------------------------------------------------------------------------------------------
// S3, the lock table and the queue's ports
// ---------------------------------------------------------------------------------------------

/// S3: every key of a table reads as the table's template file.
struct Store {
    templates: HashMap<String, Bytes>,
}

fn write_micros(key: &str) -> Option<i64> {
    match ferry_core::key::parse_key_unanchored(key).ok()?.file {
        ferry_core::key::DmsFile::Cdc { timestamp, .. } => Some(timestamp.micros()),
        ferry_core::key::DmsFile::FullLoad { .. } => None,
    }
}

impl ObjectStore for Store {
    fn head(&self, _bucket: &str, key: &str) -> Result<Option<ObjectMeta>, PortError> {
        let dir = key.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        Ok(self.templates.get(dir).map(|b| ObjectMeta {
            key: key.to_owned(),
            size: b.len() as u64,
            etag: format!("{:016x}", fnv(key)),
            last_modified_micros: write_micros(key),
        }))
    }
    fn open(
        &self,
        _bucket: &str,
        key: &str,
        _meta: &ObjectMeta,
    ) -> Result<Arc<dyn RangeSource>, PortError> {
        let dir = key.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        Ok(Arc::new(self.templates[dir].clone()))
    }
    fn list(&self, _bucket: &str, _prefix: &str) -> Result<Vec<ObjectMeta>, PortError> {
        Ok(Vec::new())
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The lock table: a conditional write with an expiry, on the simulated clock.
struct Slots {
    clock: Clock,
    held: Mutex<HashMap<String, (String, i64)>>,
}

impl ApplyLock for Slots {
    fn try_acquire(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool, PortError> {
        let now = self.clock.load(Ordering::Relaxed);
        let mut held = self.held.lock().unwrap();
        if held.len() > 200_000 {
            held.retain(|_, (_, until)| *until > now);
        }
        match held.get(name) {
            Some((o, until)) if o != owner && *until > now => Ok(false),
            _ => {
                held.insert(
                    name.to_owned(),
                    (owner.to_owned(), now + ttl.as_micros() as i64),
                );
                Ok(true)
            }
        }
    }
    fn release(&self, name: &str, owner: &str) -> Result<(), PortError> {
        let mut held = self.held.lock().unwrap();
        if held.get(name).is_some_and(|(o, _)| o == owner) {
            held.remove(name);
        }
        Ok(())
    }
}

use ferry_tests::recorded::{Dlq, Sent};

// ---------------------------------------------------------------------------------------------
// BigQuery
// ---------------------------------------------------------------------------------------------

/// What one table's work in a batch took, in processing order.
#[derive(Debug, Default)]
struct GroupTime {
    table: Option<TableRef>,
    micros: i64,
    /// (offset in the group when queryable in the change log, key) per loaded file.
    loaded: Vec<(i64, String)>,
    /// (offset when applied, files) per apply.
    applied: Vec<(i64, Vec<String>)>,
}

#[derive(Debug, Default, Clone)]
struct TableStats {
    loads: u64,
    failed_loads: u64,
    refused: u64,
    applies: u64,
    dml: u64,
    bytes_billed: f64,
}

struct BqState {
    rng: Rng,
    schemas: HashMap<TableRef, TableSchema>,
    loaded: HashSet<u64>,
    jobs_table: HashMap<TableRef, VecDeque<i64>>,
    jobs_project: VecDeque<i64>,
    query_bytes: VecDeque<(i64, f64)>,
    query_bytes_day: f64,
    pending: HashMap<TableRef, ApplyWindow>,
    lease_until: HashMap<TableRef, i64>,
    changelog_day_bytes: HashMap<(TableRef, i64), f64>,
    stats: HashMap<TableRef, TableStats>,
    groups: Vec<GroupTime>,
    overlaps: u64,
}

/// BigQuery in the model: the strict server's load quotas, the writer's budget rules, job and
/// statement durations from [`Params`], and bytes billed by the pricing rule for DML (a MERGE
/// with UPDATE or DELETE is billed for its whole target, plus what it reads, at least 10 MB
/// per table referenced: ../shared/reference/bigquery-rules.md, "Billing").
struct Bq {
    p: Params,
    /// Jobs and statements from this time on (the drain after the simulated hours) are not
    /// counted in the per-day figures.
    until: i64,
    options: WarehouseOptions,
    clock: Clock,
    models: HashMap<TableRef, usize>,
    rows: Vec<f64>,
    replica_bytes: Vec<f64>,
    state: Mutex<BqState>,
}

fn roll(q: &mut VecDeque<i64>, now: i64) -> usize {
    while q.front().is_some_and(|t| *t <= now - 86_400 * S) {
        q.pop_front();
    }
    q.len()
}

impl Bq {
    fn group<'a>(st: &'a mut BqState, table: &TableRef) -> &'a mut GroupTime {
        if st
            .groups
            .last()
            .is_none_or(|g| g.table.as_ref() != Some(table))
        {
            st.groups.push(GroupTime {
                table: Some(table.clone()),
                ..GroupTime::default()
            });
        }
        st.groups.last_mut().unwrap()
    }

    /// One load job over `requests` (already loaded ones answer at once).
    fn job(
        &self,
        st: &mut BqState,
        requests: &[&LoadRequest<'_>],
    ) -> Vec<Result<LoadOutcome, PortError>> {
        let table = requests[0].table.changelog.clone();
        let now = self.clock.load(Ordering::Relaxed);
        let overhead = (self.p.object_overhead_ms * 1000.0) as i64 * requests.len() as i64;
        Bq::group(st, &table).micros += overhead;
        let mut fresh = Vec::new();
        let mut out: Vec<Option<Result<LoadOutcome, PortError>>> = vec![None; requests.len()];
        for (i, r) in requests.iter().enumerate() {
            if st.loaded.contains(&fnv(&r.object.key)) {
                out[i] = Some(Ok(LoadOutcome::AlreadyLoaded {
                    job_id: r.job_id.to_string(),
                }));
            } else {
                fresh.push(i);
            }
        }
        if !fresh.is_empty() {
            let result = self.insert(st, &table, now, &requests[fresh[0]].table.source_table());
            for &i in &fresh {
                out[i] = Some(match &result {
                    Ok(()) => {
                        let r = requests[i];
                        st.loaded.insert(fnv(&r.object.key));
                        let m = self.models[&table];
                        let day = now.div_euclid(86_400 * S);
                        *st.changelog_day_bytes
                            .entry((table.clone(), day))
                            .or_default() += self.rows[m] * self.p.row_bytes;
                        let g = Bq::group(st, &table);
                        g.loaded.push((g.micros, r.object.key.clone()));
                        if r.table.replica.is_some() {
                            let w = st
                                .pending
                                .entry(table.clone())
                                .or_insert_with(ApplyWindow::empty);
                            w.merge(&ApplyWindow {
                                files: vec![r.object.key.clone()],
                                commit_ts_min: r.commit_ts_min,
                                commit_ts_max: r.commit_ts_max,
                                rebuild: sql::Rebuild::No,
                            });
                        }
                        Ok(LoadOutcome::Loaded {
                            job_id: r.job_id.to_string(),
                        })
                    }
                    Err(e) => Err(e.clone()),
                });
            }
        }
        out.into_iter().map(Option::unwrap).collect()
    }

    /// Inserts and runs one load job with the writer's attempts: the budget first (the writer's
    /// own rule), then BigQuery's quotas, then a job that may fail and is retried.
    fn insert(
        &self,
        st: &mut BqState,
        table: &TableRef,
        now: i64,
        name: &str,
    ) -> Result<(), PortError> {
        for _attempt in 0..self.options.max_attempts {
            let used = roll(st.jobs_table.entry(table.clone()).or_default(), now) as u64;
            if over_budget(&self.options, used) {
                return Err(PortError::later(format!(
                    "table {table}: ferryLoadJobBudget: {used} load jobs in the last 24 hours"
                )));
            }
            let in_project = roll(&mut st.jobs_project, now);
            if let Err(r) = self.p.quota.check(name, used as usize, in_project) {
                if now < self.until {
                    st.stats.entry(table.clone()).or_default().refused += 1;
                }
                return Err(PortError::later(format!(
                    "HTTP {} {}: {}",
                    r.status, r.reason, r.message
                )));
            }
            let d = (st.rng.lognormal(self.p.load_median_s, self.p.load_p99_s) * S as f64) as i64;
            Bq::group(st, table).micros += d;
            st.jobs_table.get_mut(table).unwrap().push_back(now);
            st.jobs_project.push_back(now);
            let failed = st.rng.uniform() < self.p.load_failure_rate;
            if now < self.until {
                let stats = st.stats.entry(table.clone()).or_default();
                stats.loads += 1;
                stats.failed_loads += u64::from(failed);
            }
            if !failed {
                return Ok(());
            }
        }
        Err(PortError::retryable(format!(
            "load into {table}: backendError after {} attempts",
            self.options.max_attempts
        )))
    }

    /// One apply: the real statements for the window, each timed and billed.
    fn merge(&self, table: &TableMapping, window: &ApplyWindow) -> Result<u64, PortError> {
        let now = self.clock.load(Ordering::Relaxed);
        let mut st = self.state.lock().unwrap();
        let key = table.changelog.clone();
        let Some(schema) = st.schemas.get(&key).cloned() else {
            return Ok(0);
        };
        if st.lease_until.get(&key).is_some_and(|u| *u > now) {
            st.overlaps += 1;
            return Err(PortError::retryable(format!(
                "replica of {key}: another invocation is applying it"
            )));
        }
        while st
            .query_bytes
            .front()
            .is_some_and(|(t, _)| *t <= now - 86_400 * S)
        {
            let (_, b) = st.query_bytes.pop_front().unwrap();
            st.query_bytes_day -= b;
        }
        if st.query_bytes_day >= self.p.query_tib_per_day * TIB {
            return Err(PortError::later(
                "HTTP 403 quotaExceeded: Quota exceeded: Your project exceeded quota for free query bytes scanned",
            ));
        }
        let m = self.models[&key];
        let replica = self.replica_bytes[m];
        let tombstones = replica * self.p.tombstone_share;
        // The change-log partitions (commit day) the window's commit range covers.
        let day = |t: Option<i64>| t.map(|t| t.div_euclid(86_400 * S));
        let (lo, hi) = (
            day(window.commit_ts_min).unwrap_or(now.div_euclid(86_400 * S) - 400),
            day(window.commit_ts_max).unwrap_or(now.div_euclid(86_400 * S)),
        );
        let scan: f64 = (lo..=hi)
            .map(|d| {
                st.changelog_day_bytes
                    .get(&(key.clone(), d))
                    .copied()
                    .unwrap_or(0.0)
            })
            .sum();
        let statements = sql::apply_statements(table, &schema, window);
        let replica_path = sql::table_path(table.replica.as_ref().unwrap());
        let tomb_path = sql::table_path(&sql::tombstones_of(table.replica.as_ref().unwrap()));
        let mut billed = 0.0;
        let mut took = 0;
        for s in &statements {
            let target = s.split_whitespace().nth(1).unwrap_or("");
            billed += if target == replica_path {
                replica
                    + scan.max(MB10)
                    + if table.soft_delete {
                        0.0
                    } else {
                        tombstones.max(MB10)
                    }
                    + MB10
            } else if target == tomb_path {
                tombstones.max(MB10) + scan.max(MB10) + MB10
            } else {
                MB10 + scan.max(MB10)
            };
            took += (st.rng.lognormal(self.p.dml_median_s, self.p.dml_p99_s) * S as f64) as i64;
        }
        st.query_bytes.push_back((now, billed));
        st.query_bytes_day += billed;
        st.lease_until.insert(key.clone(), now + took);
        if now < self.until {
            let stats = st.stats.entry(key.clone()).or_default();
            stats.applies += 1;
            stats.dml += statements.len() as u64;
            stats.bytes_billed += billed;
        }
        let g = Bq::group(&mut st, &key);
        g.micros += took;
        let at = g.micros;
        g.applied.push((at, window.files.clone()));
        Ok(0)
    }
}

impl Warehouse for Bq {
    fn table_schema(&self, table: &TableMapping) -> Result<Option<TableSchema>, PortError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .schemas
            .get(&table.changelog)
            .cloned())
    }
    fn load(&self, request: &LoadRequest<'_>) -> Result<LoadOutcome, PortError> {
        let mut st = self.state.lock().unwrap();
        st.schemas
            .entry(request.table.changelog.clone())
            .or_insert_with(|| request.schema.clone());
        self.job(&mut st, &[request]).pop().unwrap()
    }
    fn load_group(&self, requests: &[LoadRequest<'_>]) -> Vec<Result<LoadOutcome, PortError>> {
        let Some(last) = requests.last() else {
            return Vec::new();
        };
        let mut st = self.state.lock().unwrap();
        st.schemas
            .entry(last.table.changelog.clone())
            .or_insert_with(|| last.schema.clone());
        let now = self.clock.load(Ordering::Relaxed);
        let used = roll(
            st.jobs_table
                .entry(last.table.changelog.clone())
                .or_default(),
            now,
        ) as u64;
        // The writer's rule (`ferry_bigquery::combines`): one job per file below the share.
        if !combines(&self.options, used) || requests.len() < 2 {
            return requests
                .iter()
                .map(|r| self.job(&mut st, &[r]).pop().unwrap())
                .collect();
        }
        let all: Vec<&LoadRequest<'_>> = requests.iter().collect();
        self.job(&mut st, &all)
    }
    fn apply(&self, table: &TableMapping) -> Result<u64, PortError> {
        let window = self.state.lock().unwrap().pending.remove(&table.changelog);
        match window {
            Some(w) => self.merge(table, &w).inspect_err(|_| {
                // A failed apply keeps its window (the writer keeps it pending).
                let mut st = self.state.lock().unwrap();
                st.pending
                    .entry(table.changelog.clone())
                    .or_insert_with(ApplyWindow::empty)
                    .merge(&w);
            }),
            None => Ok(0),
        }
    }
    fn take_pending(&self, table: &TableMapping) -> Option<ApplyWindow> {
        self.state.lock().unwrap().pending.remove(&table.changelog)
    }
    fn apply_window(
        &self,
        _source: &Source,
        table: &TableMapping,
        window: &ApplyWindow,
    ) -> Result<u64, PortError> {
        self.merge(table, window)
    }
    fn record(&self, _event: &StatusEvent) -> Result<(), PortError> {
        Ok(())
    }
    fn empty_replica(
        &self,
        _source: &Source,
        _table: &TableMapping,
        _run_seq: &str,
    ) -> Result<(), PortError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// SQS and the event source mapping
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Msg {
    id: u64,
    body: Arc<str>,
    receives: u32,
}

#[derive(Debug)]
enum Event {
    /// DMS writes table `t`'s file of interval `k`.
    Write(usize, i64),
    Visible(Msg),
    Close(usize),
    End(usize),
}

/// An invocation in flight: its messages (with when they were received), the ones it failed,
/// what it sent back to the queue, and its tables' timings.
struct Running {
    batch: Vec<(Msg, i64)>,
    failed: Vec<String>,
    resent: Vec<(String, Duration)>,
    timed: Vec<GroupTime>,
    started: i64,
}

#[derive(Debug)]
enum Poller {
    Idle,
    Gathering(Vec<(Msg, i64)>),
    Busy,
}

/// Freshness samples: (seconds, weight).
#[derive(Default)]
struct Hist {
    bins: BTreeMap<i64, f64>,
    total: f64,
}

impl Hist {
    fn add(&mut self, seconds: f64, weight: f64) {
        *self
            .bins
            .entry(seconds.max(0.0).round() as i64)
            .or_default() += weight;
        self.total += weight;
    }
    fn pct(&self, q: f64) -> f64 {
        let mut acc = 0.0;
        for (s, w) in &self.bins {
            acc += w;
            if acc >= q * self.total {
                return *s as f64;
            }
        }
        f64::NAN
    }
}

struct Run {
    design: Design,
    p: Params,
    apply_every: Duration,
}

#[derive(Default)]
struct Totals {
    invocations: u64,
    gb_seconds: f64,
    messages: u64,
    dead_lettered: u64,
    dlq_by_handler: u64,
    fresh: Hist,
    fresh_replica: Hist,
    deferred: u64,
    files: u64,
}

fn run(r: &Run) -> String {
    let p = &r.p;
    let (catalog, models) = estate(p);
    let clock: Clock = Arc::new(AtomicI64::new(0));
    let day0 = 1_796_083_200 * S; // 2026-12-01T00:00:00Z
    let options = WarehouseOptions {
        combine_from: if r.design == Design::New { 0.0 } else { 0.5 },
        ..WarehouseOptions::default()
    };
    let index: HashMap<TableRef, usize> = models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.changelog.clone(), i))
        .collect();
    let end = day0 + i64::from(p.hours) * 3600 * S;
    let bq = Bq {
        p: p.clone(),
        until: end,
        options: options.clone(),
        clock: clock.clone(),
        models: index.clone(),
        rows: models.iter().map(|m| m.rows_per_file).collect(),
        replica_bytes: models.iter().map(|m| m.replica_bytes).collect(),
        state: Mutex::new(BqState {
            rng: Rng(p.seed),
            schemas: HashMap::new(),
            loaded: HashSet::new(),
            jobs_table: HashMap::new(),
            jobs_project: VecDeque::new(),
            query_bytes: VecDeque::new(),
            query_bytes_day: 0.0,
            pending: HashMap::new(),
            lease_until: HashMap::new(),
            changelog_day_bytes: HashMap::new(),
            stats: HashMap::new(),
            groups: Vec::new(),
            overlaps: 0,
        }),
    };
    let store = Store {
        templates: models
            .iter()
            .map(|m| (m.key_dir.clone(), m.template.clone()))
            .collect(),
    };
    let catalog = Arc::new(catalog);
    let pipeline = Pipeline {
        catalog: catalog.clone(),
        store,
        warehouse: bq,
        work_dir: std::env::temp_dir().join("ferry-scale"),
    };
    let schedule = Schedule::new(
        &catalog,
        ScheduleSettings {
            apply_every: r.apply_every,
            ..ScheduleSettings::default()
        },
    );
    let slots = Slots {
        clock: clock.clone(),
        held: Mutex::new(HashMap::new()),
    };
    let sent = Sent::default();
    let pending = ferry_pipeline::ports::ProcessPending::default();
    let dlq = Dlq::default();
    let now_fn = {
        let c = clock.clone();
        move || c.load(Ordering::Relaxed)
    };
    let mut rng = Rng(p.seed ^ 0xe5);
    let mut events: BinaryHeap<Reverse<(i64, u64, usize)>> = BinaryHeap::new();
    let mut payloads: HashMap<usize, Event> = HashMap::new();
    let mut seq = 0u64;
    let mut slot_id = 0usize;
    let mut push = |events: &mut BinaryHeap<Reverse<(i64, u64, usize)>>,
                    payloads: &mut HashMap<usize, Event>,
                    at: i64,
                    e: Event| {
        seq += 1;
        slot_id += 1;
        payloads.insert(slot_id, e);
        events.push(Reverse((at, seq, slot_id)));
    };
    let interval = p.cdc_interval_s * S;
    for (i, m) in models.iter().enumerate() {
        push(
            &mut events,
            &mut payloads,
            day0 + m.phase_micros,
            Event::Write(i, 0),
        );
    }
    let mut pollers: Vec<Poller> = (0..p.concurrency).map(|_| Poller::Idle).collect();
    let mut backlog: VecDeque<Msg> = VecDeque::new();
    let mut inflight: HashMap<usize, Running> = HashMap::new();
    let mut next_id = 0u64;
    let mut t = Totals::default();
    let mut written: HashMap<u64, (usize, i64)> = HashMap::new();
    let handler_options = HandlerOptions {
        max_parallel: 1,
        deadline: None,
        ..HandlerOptions::default()
    };
    let started = std::time::Instant::now();
    while let Some(Reverse((at, _, id))) = events.pop() {
        if at > end + 3 * 3600 * S {
            break;
        }
        let event = payloads.remove(&id).unwrap();
        match event {
            Event::Write(i, k) => {
                let write = at;
                if write > end {
                    continue;
                }
                let m = &models[i];
                let (y, mo, d) = ferry_core::civil::civil_from_days(write.div_euclid(86_400 * S));
                let ms = write.rem_euclid(86_400 * S) / 1000;
                let (h, mi, sec, frac) =
                    (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
                let key = format!(
                    "{}/{y:04}{mo:02}{d:02}-{h:02}{mi:02}{sec:02}{frac:03}.parquet",
                    m.key_dir
                );
                written.insert(fnv(&key), (i, write));
                t.files += 1;
                let iso = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}.{frac:03}Z");
                let body: Arc<str> = s3_event_body(
                    &m.bucket,
                    &key,
                    m.template.len() as u64,
                    &format!("{:016x}", fnv(&key)),
                    &iso,
                )
                .into();
                let copies = if rng.uniform() < p.duplicate_rate {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let delay =
                        (rng.lognormal(p.s3_event_median_s, p.s3_event_p99_s) * S as f64) as i64;
                    next_id += 1;
                    push(
                        &mut events,
                        &mut payloads,
                        write + delay,
                        Event::Visible(Msg {
                            id: next_id,
                            body: body.clone(),
                            receives: 0,
                        }),
                    );
                }
                push(
                    &mut events,
                    &mut payloads,
                    write + interval,
                    Event::Write(i, k + 1),
                );
            }
            Event::Visible(msg) => {
                t.messages += 1;
                let free: Vec<usize> = pollers
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !matches!(s, Poller::Busy))
                    .map(|(i, _)| i)
                    .collect();
                if free.is_empty() {
                    backlog.push_back(msg);
                    continue;
                }
                let k = free[rng.below(free.len())];
                match &mut pollers[k] {
                    Poller::Idle => {
                        pollers[k] = Poller::Gathering(vec![(msg, at)]);
                        push(
                            &mut events,
                            &mut payloads,
                            at + p.batching_window_s * S,
                            Event::Close(k),
                        );
                    }
                    Poller::Gathering(batch) => {
                        batch.push((msg, at));
                        if batch.len() >= p.batch_size {
                            push(&mut events, &mut payloads, at, Event::Close(k));
                        }
                    }
                    Poller::Busy => unreachable!(),
                }
            }
            Event::Close(k) => {
                let Poller::Gathering(batch) = std::mem::replace(&mut pollers[k], Poller::Busy)
                else {
                    continue;
                };
                let mut batch = batch;
                for (m, _) in &mut batch {
                    m.receives += 1;
                }
                let records: Vec<serde_json::Value> = batch
                    .iter()
                    .map(|(m, _)| {
                        serde_json::json!({
                            "messageId": m.id.to_string(),
                            "body": &*m.body,
                            "attributes": {"ApproximateReceiveCount": m.receives.to_string()},
                        })
                    })
                    .collect();
                let event: SqsEvent =
                    serde_json::from_value(serde_json::json!({"Records": records})).unwrap();
                clock.store(at, Ordering::Relaxed);
                pipeline.warehouse.state.lock().unwrap().groups.clear();
                let before = dlq.len();
                let report = match r.design {
                    Design::New => {
                        let scheduler = Scheduler {
                            schedule: &schedule,
                            slots: &slots,
                            requeue: &sent,
                            pending: &pending,
                            clock: &now_fn,
                        };
                        handle_batch_scheduled(&pipeline, &dlq, &scheduler, &event, handler_options)
                    }
                    Design::Today => handle_batch(&pipeline, &dlq, &event, handler_options),
                };
                t.dlq_by_handler += (dlq.len() - before) as u64;
                t.deferred += report.deferred.len() as u64;
                let groups = std::mem::take(&mut pipeline.warehouse.state.lock().unwrap().groups);
                // Lanes: each table's work on the first free of `lanes` threads.
                let mut lanes = vec![20_000i64; p.lanes];
                let mut timed = Vec::new();
                for mut g in groups {
                    let lane = (0..lanes.len()).min_by_key(|&l| lanes[l]).unwrap();
                    let start = lanes[lane];
                    lanes[lane] += g.micros;
                    for (off, _) in &mut g.loaded {
                        *off += start;
                    }
                    for (off, _) in &mut g.applied {
                        *off += start;
                    }
                    timed.push(g);
                }
                let took = lanes.iter().copied().max().unwrap_or(0) + batch.len() as i64 * 2_000;
                t.invocations += 1;
                t.gb_seconds += took as f64 / S as f64 * p.memory_gb;
                let failed: Vec<String> = report
                    .response
                    .batch_item_failures
                    .iter()
                    .map(|f| f.item_identifier.clone())
                    .collect();
                let resent = sent.take();
                inflight.insert(
                    k,
                    Running {
                        batch,
                        failed,
                        resent,
                        timed,
                        started: at,
                    },
                );
                push(&mut events, &mut payloads, at + took, Event::End(k));
            }
            Event::End(k) => {
                let Running {
                    batch,
                    failed,
                    resent,
                    timed,
                    started: started_at,
                } = inflight.remove(&k).unwrap();
                // A file's rows, their commit times spread over the interval the file
                // covers, become queryable `off` into the invocation.
                let sample = |hist: &mut Hist, off: i64, key: &str| {
                    if let Some((i, write)) = written.get(&fnv(key)) {
                        let rows = models[*i].rows_per_file;
                        for j in 0..4 {
                            let commit = write - ((j as f64 + 0.5) / 4.0 * interval as f64) as i64;
                            hist.add((started_at + off - commit) as f64 / S as f64, rows / 4.0);
                        }
                    }
                };
                for g in &timed {
                    for (off, key) in &g.loaded {
                        sample(&mut t.fresh, *off, key);
                    }
                    for (off, files) in &g.applied {
                        for key in files {
                            sample(&mut t.fresh_replica, *off, key);
                        }
                    }
                }
                for (m, received) in batch {
                    if failed.contains(&m.id.to_string()) {
                        if m.receives >= p.max_receive {
                            t.dead_lettered += 1;
                        } else {
                            push(
                                &mut events,
                                &mut payloads,
                                received + p.visibility_s * S,
                                Event::Visible(m),
                            );
                        }
                    }
                }
                for (body, delay) in resent {
                    next_id += 1;
                    push(
                        &mut events,
                        &mut payloads,
                        at + delay.as_micros() as i64,
                        Event::Visible(Msg {
                            id: next_id,
                            body: body.into(),
                            receives: 0,
                        }),
                    );
                }
                pollers[k] = Poller::Idle;
                if !backlog.is_empty() {
                    let take: Vec<(Msg, i64)> = (0..p.batch_size)
                        .filter_map(|_| backlog.pop_front())
                        .map(|m| (m, at))
                        .collect();
                    let full = take.len() >= p.batch_size;
                    pollers[k] = Poller::Gathering(take);
                    push(
                        &mut events,
                        &mut payloads,
                        if full {
                            at
                        } else {
                            at + p.batching_window_s * S
                        },
                        Event::Close(k),
                    );
                }
            }
        }
    }
    let st = pipeline.warehouse.state.into_inner().unwrap();
    let per_day = 24.0 / f64::from(p.hours);
    let mut rows: Vec<(String, bool, TableStats)> = models
        .iter()
        .map(|m| {
            (
                format!("{}/{}", m.source, m.changelog.table),
                m.hot,
                st.stats.get(&m.changelog).cloned().unwrap_or_default(),
            )
        })
        .collect();
    rows.sort_by(|a, b| {
        b.2.loads
            .cmp(&a.2.loads)
            .then(b.2.bytes_billed.total_cmp(&a.2.bytes_billed))
    });
    let project_loads: u64 = rows.iter().map(|r| r.2.loads).sum();
    let refused: u64 = rows.iter().map(|r| r.2.refused).sum();
    let dml: u64 = rows.iter().map(|r| r.2.dml).sum();
    let billed: f64 = rows.iter().map(|r| r.2.bytes_billed).sum();
    let max_loads = rows.first().map(|r| r.2.loads).unwrap_or(0);
    let design = match r.design {
        Design::New => format!(
            "new (load_every={}s, apply_every={}s)",
            schedule.load_every().as_secs(),
            r.apply_every.as_secs()
        ),
        Design::Today => "today (one load job per file, one apply per table per batch)".to_owned(),
    };
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "\n== estate {}x ({} tables, {} replicas), {} h simulated, design {design}",
        p.estate,
        models.len(),
        models.iter().filter(|m| m.replica).count(),
        p.hours
    );
    let _ = writeln!(
        out,
        "{:<52} {:>4} {:>10} {:>8} {:>8} {:>8} {:>10}",
        "busiest tables", "hot", "loads/day", "failed", "refused", "applies", "TiB/day"
    );
    for (name, hot, s) in rows.iter().take(8) {
        let _ = writeln!(
            out,
            "{:<52} {:>4} {:>10.0} {:>8} {:>8} {:>8.0} {:>10.3}",
            name,
            if *hot { "yes" } else { "" },
            s.loads as f64 * per_day,
            s.failed_loads,
            s.refused,
            s.applies as f64 * per_day,
            s.bytes_billed * per_day / TIB
        );
    }
    let (fresh, label) = match r.design {
        Design::New => (&t.fresh, "through the live view"),
        Design::Today => (&t.fresh_replica, "through the replica"),
    };
    let _ = writeln!(
        out,
        "files written {}, messages {} (deferred sends {}), invocations {} ({:.0} GB-s, {:.1} s simulated in {:.0} s)",
        t.files,
        t.messages,
        t.deferred,
        t.invocations,
        t.gb_seconds,
        f64::from(p.hours) * 3600.0,
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        out,
        "load jobs/day: max per table {:.0} (limit 1,500), project {:.0} (limit 100,000); inserts refused by quota {refused}",
        max_loads as f64 * per_day,
        project_loads as f64 * per_day
    );
    let _ = writeln!(
        out,
        "applies: {:.0} DML statements/day, {:.2} TiB billed/day (${:.0}/day on demand), lease overlaps {}",
        dml as f64 * per_day,
        billed * per_day / TIB,
        billed * per_day / TIB * p.usd_per_tib,
        st.overlaps
    );
    let _ = writeln!(
        out,
        "dead-lettered: {} by SQS (maxReceiveCount {}), {} by ferry",
        t.dead_lettered, p.max_receive, t.dlq_by_handler
    );
    let _ = writeln!(
        out,
        "freshness {label} (source commit to queryable): p50 {:.0} s, p95 {:.0} s, p99 {:.0} s; through the replica: p50 {:.0} s, p99 {:.0} s",
        fresh.pct(0.5),
        fresh.pct(0.95),
        fresh.pct(0.99),
        t.fresh_replica.pct(0.5),
        t.fresh_replica.pct(0.99)
    );
    let _ = write!(
        out,
        "scale: estate={}x hours={} design={} max_loads_per_table={:.0} project_loads={:.0} dead_lettered={} fresh_p50_s={:.0} fresh_p99_s={:.0} apply_tib_per_day={:.2}",
        p.estate,
        p.hours,
        if r.design == Design::New {
            "new"
        } else {
            "today"
        },
        max_loads as f64 * per_day,
        project_loads as f64 * per_day,
        t.dead_lettered + t.dlq_by_handler,
        fresh.pct(0.5),
        fresh.pct(0.99),
        billed * per_day / TIB
    );
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let estates: Vec<u32> = get("--estate")
        .map(|v| v.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![1, 10]);
    let hours: u32 = get("--hours").and_then(|v| v.parse().ok()).unwrap_or(24);
    let designs = match get("--design").as_deref() {
        Some("new") => vec![Design::New],
        Some("today") => vec![Design::Today],
        _ => vec![Design::New, Design::Today],
    };
    let concurrency: Option<usize> = get("--concurrency").and_then(|v| v.parse().ok());
    let apply_every = get("--apply-every")
        .and_then(|v| ferry_core::mapping::parse_interval(&v))
        .unwrap_or(Duration::from_secs(900));
    for estate in estates {
        for design in &designs {
            let mut p = Params::new(estate, hours);
            if let Some(c) = concurrency {
                p.concurrency = c;
            }
            let r = Run {
                design: *design,
                p,
                apply_every,
            };
            println!("{}", run(&r));
        }
    }
}
