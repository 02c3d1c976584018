//! [`BigQueryWarehouse`]: the pipeline's `Warehouse` port on BigQuery.
//!
//! # Exactly-once loads
//! An object's load job ids form a chain: `<base>_a0`, `<base>_a1`, ... (see
//! [`ferry_core::JobId`]). Before loading, the writer walks the chain from attempt 0 with
//! `jobs.get`:
//! - an unused id is where the object loads (a redelivery of a loaded object uploads nothing);
//! - `DONE` without an error: the rows are in (load jobs are atomic, nothing else needs checking);
//! - `DONE` with an error: that attempt wrote nothing; the chain moves on to n+1 (a message
//!   delivered again, by an SQS retry or a redrive after a fix, is a new decision to load);
//! - running: waited for.
//!
//! Inserting answers 409 when the id was used meanwhile (a retried insert whose first answer was
//! lost); the id's job is then looked up the same way. A load this call started that fails with a
//! retryable error moves on to n+1 at once (up to `max_attempts` per call); any other error is
//! returned. Attempt n+1 is only ever created after attempt n ended in error, so at most one
//! attempt of an object succeeds, whatever the sequence of crashes, timeouts, duplicates and
//! redrives.
//!
//! # Load-job budget and group loads
//! BigQuery allows about 1,500 load jobs per table per rolling 24 hours, failed ones included.
//! The writer counts a table's jobs (INFORMATION_SCHEMA, refreshed every `budget_refresh`, plus
//! its own since), defers new loads when `load_jobs_per_table_day` is used up, and from
//! `combine_from` of it on loads a batch's files of the table as one job: it claims each
//! object's next unused id with a query job naming the group load
//! (`SELECT '<group id>' AS ferry_group_load`), then loads the concatenated files under the
//! group's id. Any later walk of an object's chain follows a claim to its group load's outcome,
//! so the chain semantics above hold for grouped objects too. A claim whose group load does not
//! exist is resumed by a delivery of the same objects (same ids, same group id) or, after
//! `claim_grace`, counts as a failed attempt.
//!
//! # Tables
//! Created with DDL (`CREATE TABLE IF NOT EXISTS`, see [`ferry_core::sql`]) before the first
//! load; new source columns are added with `ALTER TABLE ... ADD COLUMN IF NOT EXISTS`; a column
//! whose type differs from the table's is a permanent error naming both types. Columns are never
//! dropped or narrowed.
//!
//! # Replica
//! Every object loaded (or found already loaded) joins its table's pending apply window; `apply`
//! runs the MERGE statements over exactly those files and their commit-time range, then clears
//! the window. A failed apply keeps the window and reports a retryable error, so the messages
//! come back and apply again (MERGE is idempotent).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::mapping::TableMapping;
use ferry_core::schema::{BqField, FieldMode, TableSchema};
use ferry_core::sql::{self, ApplyWindow};
use ferry_core::{JobId, TableRef};
use ferry_pipeline::ports::{
    ApplyLock, Converted, LoadOutcome, LoadRequest, PortError, StatusEvent, Warehouse,
};
use serde_json::{Value, json};
use tokio::runtime::Handle;

use crate::client::{Client, JobState, Upload};
use crate::error::{BqError, ErrorClass};

/// Settings of the warehouse.
#[derive(Debug, Clone)]
pub struct WarehouseOptions {
    /// Attempts (new job ids) one load call may start after retryable job failures.
    pub max_attempts: u32,
    /// Longest wait for one job or statement.
    pub max_wait: Duration,
    /// Load jobs one table may get in a rolling 24 hours (BigQuery allows about 1,500, failed
    /// jobs included).
    pub load_jobs_per_table_day: u32,
    /// From this share of the budget on, several files of a table in one batch share one
    /// load job.
    pub combine_from: f64,
    /// How old BigQuery's job count may get before it is read again.
    pub budget_refresh: Duration,
    /// A claim whose group load has not appeared after this long is a failed attempt (at least
    /// the function timeout: by then the claiming invocation is over).
    pub claim_grace: Duration,
}

impl Default for WarehouseOptions {
    fn default() -> Self {
        WarehouseOptions {
            max_attempts: 3,
            max_wait: Duration::from_secs(300),
            load_jobs_per_table_day: 1_000,
            combine_from: 0.5,
            budget_refresh: Duration::from_secs(600),
            claim_grace: Duration::from_secs(900),
        }
    }
}

/// BigQuery as the pipeline's warehouse. Its methods block on `handle`: call them from
/// threads outside the runtime (the handler's worker threads, `spawn_blocking`).
#[derive(Debug)]
pub struct BigQueryWarehouse {
    client: Client,
    handle: Handle,
    options: WarehouseOptions,
    schemas: Mutex<HashMap<TableRef, TableSchema>>,
    replicas_ready: Mutex<HashSet<TableRef>>,
    pending: Mutex<HashMap<TableRef, (ApplyWindow, Option<String>)>>,
    jobs_started: AtomicU64,
    budget: Mutex<HashMap<TableRef, Counter>>,
    deadline: Mutex<Option<std::time::Instant>>,
    lock: Option<Arc<dyn ApplyLock>>,
    owner: String,
}

/// How long an apply lock outlives the wait for its statements: a MERGE whose wait ran out may
/// still run in BigQuery, and no other writer may start one on the table meanwhile.
const LOCK_GRACE: Duration = Duration::from_secs(600);

/// The longest wait for another writer's apply lock before the apply is left to the next
/// delivery.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Time kept free before the invocation's deadline: waits end this long before it, so the
/// handler can still answer.
const DEADLINE_RESERVE: Duration = Duration::from_secs(10);

static REQUEST: AtomicU64 = AtomicU64::new(0);

/// Combined files up to this size are built in memory; larger ones in a temporary file.
const COMBINE_IN_MEMORY_MAX: u64 = 32 << 20;

/// What a used job id amounts to for an object.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Never used.
    Unused,
    /// The object's rows are in, by this load job.
    Loaded(String),
    /// Ended in error: nothing written.
    Failed,
    /// Still running.
    Running,
    /// Claimed by a group load that has not started (yet).
    Claimed(String),
}

impl Fate {
    fn of(job: &JobState) -> Fate {
        match (job.is_done(), &job.error) {
            (false, _) => Fate::Running,
            (true, Some(_)) => Fate::Failed,
            (true, None) => Fate::Loaded(job.job_id.clone()),
        }
    }
}

/// Where an object's chain stands.
enum Walk {
    /// The first unused id.
    Free(JobId),
    /// Loaded by this job.
    Loaded(String),
    /// A job of it is running.
    Busy(String),
    /// Its id `id` is claimed by group load `group`, which has not started.
    Claimed {
        /// The claimed id.
        id: JobId,
        /// The group load's job id.
        group: String,
    },
}

/// Per-table load-job counting for the budget.
#[derive(Debug, Default)]
struct Counter {
    seed: u64,
    seeded_at: Option<std::time::Instant>,
    local: std::collections::VecDeque<std::time::Instant>,
}

/// A temporary file removed on drop.
struct ScratchFile(std::path::PathBuf);

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The group load job id a claim names, from the claim's SQL.
fn claimed_group(sql: &str) -> Option<String> {
    let rest = sql.strip_prefix("SELECT '")?;
    let (id, tail) = rest.split_once('\'')?;
    (tail == " AS ferry_group_load" && id.starts_with("ferry_")).then(|| id.to_owned())
}

/// The group load's job id: the table's readable name and a hash of the members' job ids.
fn group_job_id(table: &TableRef, member_ids: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"ferry-group-v1");
    for id in member_ids {
        h.update((id.len() as u64).to_le_bytes());
        h.update(id.as_bytes());
    }
    let hex: String = h
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let name: String = table
        .table
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(64)
        .collect();
    format!("ferry_group_{name}_{}_{hex}", member_ids.len())
}

fn destination_of(configuration: &Value) -> Option<TableRef> {
    let d = configuration.pointer("/load/destinationTable")?;
    Some(TableRef {
        project: d.get("projectId")?.as_str()?.to_owned(),
        dataset: d.get("datasetId")?.as_str()?.to_owned(),
        table: d.get("tableId")?.as_str()?.to_owned(),
    })
}

/// A `QueryRequest.requestId`: BigQuery takes at most 36 ASCII characters (v2 discovery
/// document), and the official clients send a UUID; this is one in the UUID v4 layout, from a
/// hash of the time, the process and a counter (unique, not secret).
pub fn request_id() -> String {
    use sha2::{Digest, Sha256};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(nanos.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(REQUEST.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let mut b: [u8; 16] = [0; 16];
    b.copy_from_slice(&h.finalize()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn ddl_error(e: sql::DdlError) -> BqError {
    BqError::permanent(format!("table {}", e.table), e.message)
}

fn port_error(e: BqError) -> PortError {
    PortError {
        message: e.to_string(),
        retryable: e.is_retryable(),
    }
}

/// A label value BigQuery accepts: lowercase letters, digits, `_` and `-`, at most 63.
fn label(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect()
}

/// The load job configuration for a converted file, with the destination's whole schema.
///
/// BigQuery maps a parquet TIMESTAMP only to TIMESTAMP unless the load names the column's type
/// (page "Loading Parquet data", section "Parquet conversions"): without `schema`, wall-clock
/// timestamps bound for a DATETIME column fail with "changed type from DATETIME to TIMESTAMP".
/// The schema is the table's (every column, in table order), not the file's: a load schema
/// lacking a table column is refused ("Field x is missing in new schema").
pub fn load_configuration(request: &LoadRequest<'_>, table_schema: &TableSchema) -> Value {
    let t = &request.table.changelog;
    let fields: Vec<Value> = table_schema
        .fields
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "type": f.bq_type.as_str(),
                "mode": match f.mode { FieldMode::Required => "REQUIRED", FieldMode::Nullable => "NULLABLE" },
            })
        })
        .collect();
    json!({
        "load": {
            "destinationTable": { "projectId": t.project, "datasetId": t.dataset, "tableId": t.table },
            "sourceFormat": "PARQUET",
            "writeDisposition": "WRITE_APPEND",
            "createDisposition": "CREATE_NEVER",
            "schema": { "fields": fields },
            "schemaUpdateOptions": ["ALLOW_FIELD_ADDITION"],
            "parquetOptions": { "enableListInference": true, "enumAsString": true },
            "decimalTargetTypes": ["NUMERIC", "BIGNUMERIC", "STRING"],
        },
        "labels": {
            "ferry_source": label(&request.source.name),
            "ferry_table": label(&request.table.source_table()),
        },
    })
}

/// A `TableSchema` from the REST API's `schema.fields`.
pub fn schema_from_json(table: &TableRef, fields: &Value) -> Result<TableSchema, BqError> {
    let context = format!("schema of {table}");
    let list = fields
        .as_array()
        .ok_or_else(|| BqError::malformed(&context, "schema.fields is not a list"))?;
    let mut out = Vec::with_capacity(list.len());
    for f in list {
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        let type_name = f.get("type").and_then(Value::as_str).unwrap_or_default();
        let bq_type = ferry_core::bqtype::BqType::parse(type_name).ok_or_else(|| {
            BqError::permanent(
                &context,
                format!("column {name} has type {type_name}, which ferry does not write"),
            )
        })?;
        let mode = match f.get("mode").and_then(Value::as_str).unwrap_or("NULLABLE") {
            "REQUIRED" => FieldMode::Required,
            "NULLABLE" => FieldMode::Nullable,
            other => {
                return Err(BqError::permanent(
                    &context,
                    format!("column {name} has mode {other}, which ferry does not write"),
                ));
            }
        };
        out.push(BqField {
            name: name.to_owned(),
            bq_type,
            mode,
            description: f
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }
    Ok(TableSchema { fields: out })
}

/// Columns of `wanted` missing from `actual`; a column present in both with another type is a
/// permanent error naming the column and both types.
pub fn missing_columns(
    table: &TableRef,
    actual: &TableSchema,
    wanted: &[BqField],
) -> Result<Vec<BqField>, BqError> {
    let mut missing = Vec::new();
    for w in wanted {
        match actual
            .fields
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(&w.name))
        {
            Some(a) if a.bq_type != w.bq_type => {
                return Err(BqError::permanent(
                    format!("table {table}"),
                    format!(
                        "column {} is {} in BigQuery but {} in the file; ferry never narrows or changes a column's type: change the table by hand or map the column with a type hint",
                        w.name, a.bq_type, w.bq_type
                    ),
                ));
            }
            Some(_) => {}
            None => missing.push(BqField {
                mode: FieldMode::Nullable,
                ..w.clone()
            }),
        }
    }
    Ok(missing)
}

impl BigQueryWarehouse {
    /// A warehouse over `client`, blocking on `handle`.
    pub fn new(client: Client, handle: Handle, options: WarehouseOptions) -> BigQueryWarehouse {
        BigQueryWarehouse {
            client,
            handle,
            options,
            schemas: Mutex::new(HashMap::new()),
            replicas_ready: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
            jobs_started: AtomicU64::new(0),
            budget: Mutex::new(HashMap::new()),
            deadline: Mutex::new(None),
            lock: None,
            owner: request_id(),
        }
    }

    /// Applies take `lock` first (one writer per replica across processes); without one,
    /// applies of one process are serialised per replica only.
    pub fn with_lock(mut self, lock: Arc<dyn ApplyLock>) -> BigQueryWarehouse {
        self.lock = Some(lock);
        self
    }

    /// Runs `apply` holding the replica's apply lock, waiting up to [`LOCK_WAIT`] (and the time
    /// the invocation has) for another writer to finish.
    fn locked<T>(
        &self,
        replica: &TableRef,
        apply: impl FnOnce() -> Result<T, BqError>,
    ) -> Result<T, BqError> {
        let Some(lock) = &self.lock else {
            return apply();
        };
        let name = replica.to_string();
        let ttl = self.wait_budget() + LOCK_GRACE;
        let started = std::time::Instant::now();
        let patience = LOCK_WAIT.min(self.wait_budget());
        let mut delay = Duration::from_millis(100);
        loop {
            let taken = lock
                .try_acquire(&name, &self.owner, ttl)
                .map_err(|e| BqError::transport(format!("apply lock {name}"), e.message))?;
            if taken {
                break;
            }
            if started.elapsed() >= patience {
                return Err(BqError::transport(
                    format!("replica {name}"),
                    "another invocation is applying it; the apply is left to the next delivery",
                ));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        let result = apply();
        // A statement whose wait ran out may still run: the lock then expires on its own.
        if !matches!(&result, Err(e) if e.is_still_running())
            && let Err(e) = lock.release(&name, &self.owner)
        {
            tracing::warn!(replica = %name, error = %e.message, "apply lock not released; it expires on its own");
        }
        result
    }

    /// How long one wait may last now: `max_wait`, cut to the time the invocation has left
    /// (less a reserve). A wait that runs out is a retryable error; the next delivery finds the
    /// job by its id and waits for it again, so nothing runs twice.
    pub fn wait_budget(&self) -> Duration {
        let deadline = self.deadline.lock().ok().and_then(|d| *d);
        match deadline {
            Some(d) => self.options.max_wait.min(
                d.saturating_duration_since(std::time::Instant::now())
                    .saturating_sub(DEADLINE_RESERVE),
            ),
            None => self.options.max_wait,
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Load jobs this warehouse inserted (attempts included, 409 lookups not).
    pub fn jobs_started(&self) -> u64 {
        self.jobs_started.load(Ordering::Relaxed)
    }

    async fn fetch_schema(&self, table: &TableRef) -> Result<Option<TableSchema>, BqError> {
        match self
            .client
            .get_table_fields(&table.project, &table.dataset, &table.table)
            .await?
        {
            Some(fields) => schema_from_json(table, &fields).map(Some),
            None => Ok(None),
        }
    }

    async fn run(&self, sql: &str, location: Option<&str>, kind: &str) -> Result<u64, BqError> {
        tracing::debug!(kind, "statement");
        let result = self
            .client
            .query(sql, location, &request_id(), self.wait_budget())
            .await?;
        Ok(result.dml_affected_rows.unwrap_or(0))
    }

    /// Creates or widens the change log (and the replica) so that the file's columns fit.
    async fn prepare_tables(&self, request: &LoadRequest<'_>) -> Result<(), BqError> {
        let table = request.table;
        let location = request.source.location.as_deref();
        let cached = self.cached_schema(&table.changelog);
        let wanted = &request.schema.fields;
        let actual = match cached {
            Some(s) => s,
            None => {
                self.client
                    .ensure_dataset(&table.changelog.project, &table.changelog.dataset, location)
                    .await?;
                let ddl = sql::create_changelog(table, request.schema).map_err(ddl_error)?;
                self.run(&ddl, location, "ddl").await?;
                self.fetch_schema(&table.changelog).await?.ok_or_else(|| {
                    BqError::transport(
                        format!("table {}", table.changelog),
                        "created, but not visible yet",
                    )
                })?
            }
        };
        let missing = missing_columns(&table.changelog, &actual, wanted)?;
        if !missing.is_empty() {
            tracing::info!(table = %table.changelog, columns = missing.len(), "adding columns");
        }
        if let Some(alter) = sql::add_columns(&table.changelog, &missing) {
            self.run(&alter, location, "ddl").await?;
        }
        let mut schema = actual;
        schema.fields.extend(missing.iter().cloned());
        if let Some(replica) = &table.replica {
            let ready = self
                .replicas_ready
                .lock()
                .map(|r| r.contains(replica))
                .unwrap_or(false);
            if ready {
                let json = sql::json_columns(table);
                let added: Vec<BqField> = missing
                    .iter()
                    .map(|f| match json.contains(&f.name.as_str()) {
                        true => BqField {
                            bq_type: ferry_core::bqtype::BqType::Json,
                            ..f.clone()
                        },
                        false => f.clone(),
                    })
                    .collect();
                if let Some(alter) = sql::add_columns(replica, &added) {
                    self.run(&alter, location, "ddl").await?;
                }
            } else {
                // Once per process: the replica (and its tombstones) exist with every change-log
                // column, also after a mode switch or an addition interrupted half way.
                let tombstones = sql::tombstones_of(replica);
                let has_tombstones =
                    table.soft_delete || self.fetch_schema(&tombstones).await?.is_some();
                match self.fetch_schema(replica).await? {
                    Some(actual) if has_tombstones => {
                        let wanted = sql::replica_fields(table, &schema);
                        let lacking = missing_columns(replica, &actual, &wanted)?;
                        if let Some(alter) = sql::add_columns(replica, &lacking) {
                            self.run(&alter, location, "ddl").await?;
                        }
                    }
                    _ => {
                        for ddl in sql::create_replica(table, &schema).map_err(ddl_error)? {
                            self.run(&ddl, location, "ddl").await?;
                        }
                    }
                }
                if let Ok(mut r) = self.replicas_ready.lock() {
                    r.insert(replica.clone());
                }
            }
        }
        if let Ok(mut s) = self.schemas.lock() {
            s.insert(table.changelog.clone(), schema);
        }
        Ok(())
    }

    /// The load configuration for `request`, with the change log's schema as
    /// [`Self::prepare_tables`] left it (the file's own columns before that).
    fn configuration_for(&self, request: &LoadRequest<'_>) -> Value {
        let schema = self
            .cached_schema(&request.table.changelog)
            .unwrap_or_else(|| request.schema.clone());
        load_configuration(request, &schema)
    }

    /// A load refused because its schema lacks a column another writer added meanwhile
    /// ("Field x is missing in new schema"): the cached schema is stale. It is dropped and the
    /// load retried (read afresh next time); any other error is returned as it is.
    fn stale_schema(&self, table: &TableRef, e: BqError) -> BqError {
        if !e.message.contains("is missing in new schema") {
            return e;
        }
        if let Ok(mut s) = self.schemas.lock() {
            s.remove(table);
        }
        BqError {
            class: ErrorClass::Retryable,
            ..e
        }
    }

    fn cached_schema(&self, table: &TableRef) -> Option<TableSchema> {
        self.schemas.lock().ok().and_then(|s| s.get(table).cloned())
    }

    /// Walks the object's job-id chain until its rows are in (see the module docs).
    pub async fn load_exactly_once(
        &self,
        base: &JobId,
        location: Option<&str>,
        configuration: &Value,
        data: Upload<'_>,
    ) -> Result<LoadOutcome, BqError> {
        let mut id = base.clone();
        let mut started_here = 0;
        let mut unseen = 0;
        loop {
            let name = id.to_string();
            let Some(state) = self
                .client
                .insert_load_job(&name, location, configuration, data)
                .await?
            else {
                // 409: this id was used before (a load of this object, or a claim by a group
                // load): its fate decides.
                match self.settle(&name, location).await? {
                    Fate::Loaded(by) => return Ok(LoadOutcome::AlreadyLoaded { job_id: by }),
                    Fate::Failed => {
                        // An earlier delivery's attempt failed and wrote nothing: this delivery
                        // tries the next id.
                        tracing::info!(job_id = %name, "earlier attempt failed; trying the next id");
                        id = id.next_attempt();
                        continue;
                    }
                    _ => {
                        // 409 says the job exists, but jobs.get does not show it yet: never
                        // move on from an id whose fate is unknown; look again.
                        unseen += 1;
                        if unseen >= self.client.config().max_tries {
                            return Err(BqError::transport(
                                format!("load job {name}"),
                                "BigQuery answered 409 for this id, but the job cannot be found yet",
                            ));
                        }
                        self.client.backoff(unseen - 1).await;
                        continue;
                    }
                }
            };
            self.count_job(configuration);
            started_here += 1;
            let state = self
                .client
                .wait_job(state, location, self.wait_budget())
                .await?;
            let Some(error) = state.error.clone() else {
                if let Some(rows) = state.output_rows {
                    tracing::debug!(job_id = %name, rows, "load job done");
                }
                return Ok(LoadOutcome::Loaded { job_id: name });
            };
            let failure = BqError::from_response(
                format!("load job {name}"),
                None,
                error.reason.clone(),
                error.message.clone(),
            );
            if failure.class != ErrorClass::Retryable || started_here >= self.options.max_attempts {
                return Err(failure);
            }
            tracing::warn!(job_id = %name, error = %failure, "load attempt failed; retrying with the next id");
            self.client.backoff(started_here - 1).await;
            id = id.next_attempt();
        }
    }

    /// What a used job id amounts to for the object whose chain it is in. A claim (a query job
    /// a group load made under the object's id) amounts to its group load's fate; a claim whose
    /// group load never started counts as failed once it is older than `claim_grace` (its
    /// invocation is over), and as busy before.
    async fn fate(&self, id: &str, location: Option<&str>) -> Result<Fate, BqError> {
        let job = match self.client.get_job(id, location).await {
            Ok(job) => job,
            Err(e) if e.status == Some(404) => return Ok(Fate::Unused),
            Err(e) => return Err(e),
        };
        let Some(group) = job.query.as_deref().and_then(claimed_group) else {
            return Ok(Fate::of(&job));
        };
        match self.client.get_job(&group, location).await {
            Ok(g) => Ok(Fate::of(&g)),
            Err(e) if e.status == Some(404) => {
                let age = crate::client::now_millis() - job.created_millis.unwrap_or(0);
                if age > i64::try_from(self.options.claim_grace.as_millis()).unwrap_or(i64::MAX) {
                    Ok(Fate::Failed)
                } else {
                    Ok(Fate::Claimed(group))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Like [`Self::fate`], waiting while the job runs.
    async fn settle(&self, id: &str, location: Option<&str>) -> Result<Fate, BqError> {
        let started = tokio::time::Instant::now();
        let budget = self.wait_budget();
        let mut delay = Duration::from_millis(200);
        loop {
            match self.fate(id, location).await? {
                Fate::Running if started.elapsed() < budget => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Fate::Running => {
                    return Err(BqError::still_running(format!("job {id}"), "still running"));
                }
                Fate::Claimed(group) => {
                    return Err(BqError::transport(
                        format!("job {id}"),
                        format!(
                            "claimed by group load {group}, which has not started yet (another delivery is loading this object)"
                        ),
                    ));
                }
                fate => return Ok(fate),
            }
        }
    }

    /// Walks an object's job-id chain to its first unused id (or to the job that loaded it).
    async fn walk(&self, base: &JobId, location: Option<&str>) -> Result<Walk, BqError> {
        let mut id = base.clone();
        loop {
            match self.fate(&id.to_string(), location).await? {
                Fate::Unused => return Ok(Walk::Free(id)),
                Fate::Loaded(by) => return Ok(Walk::Loaded(by)),
                Fate::Failed => id = id.next_attempt(),
                Fate::Running => return Ok(Walk::Busy(id.to_string())),
                Fate::Claimed(group) => return Ok(Walk::Claimed { id, group }),
            }
        }
    }

    /// Counts a load job against its table's budget.
    fn count_job(&self, configuration: &Value) {
        self.jobs_started.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = destination_of(configuration)
            && let Ok(mut b) = self.budget.lock()
        {
            let c = b.entry(t).or_default();
            c.local.push_back(std::time::Instant::now());
        }
    }

    /// Load jobs of `table` in the last 24 hours: BigQuery's count (INFORMATION_SCHEMA, at
    /// most `budget_refresh` old) plus the jobs this process started since.
    async fn jobs_last_day(&self, table: &TableRef, location: Option<&str>) -> u64 {
        let day = Duration::from_secs(24 * 3600);
        let needs_seed = self
            .budget
            .lock()
            .map(|b| {
                b.get(table)
                    .and_then(|c| c.seeded_at)
                    .is_none_or(|t| t.elapsed() > self.options.budget_refresh)
            })
            .unwrap_or(false);
        if needs_seed {
            // Datasets without a location live in the US multi-region.
            let loc = location.unwrap_or("US");
            let sql = sql::load_jobs_last_day(self.client.project(), loc, table);
            let seed = match self
                .client
                .query(&sql, location, &request_id(), self.wait_budget())
                .await
            {
                Ok(r) => r
                    .rows
                    .first()
                    .and_then(|row| row.first())
                    .and_then(|v| {
                        v.as_str()
                            .and_then(|s| s.parse().ok())
                            .or_else(|| v.as_u64())
                    })
                    .unwrap_or(0),
                Err(e) => {
                    tracing::warn!(table = %table, error = %e, "cannot count load jobs in INFORMATION_SCHEMA (needs bigquery.jobs.listAll); counting this process's jobs only");
                    0
                }
            };
            if let Ok(mut b) = self.budget.lock() {
                let c = b.entry(table.clone()).or_default();
                c.seed = seed;
                c.seeded_at = Some(std::time::Instant::now());
                c.local.clear();
            }
        }
        self.budget
            .lock()
            .map(|mut b| {
                let c = b.entry(table.clone()).or_default();
                while c.local.front().is_some_and(|t| t.elapsed() > day) {
                    c.local.pop_front();
                }
                c.seed + c.local.len() as u64
            })
            .unwrap_or(0)
    }

    /// Refuses a new load job when the table's budget is used up (retry later: the objects
    /// wait in the queue, and are combined into fewer jobs when they come back).
    async fn check_budget(&self, table: &TableRef, location: Option<&str>) -> Result<u64, BqError> {
        let used = self.jobs_last_day(table, location).await;
        if used >= u64::from(self.options.load_jobs_per_table_day) {
            return Err(BqError {
                context: format!("table {table}"),
                status: None,
                reason: Some("ferryLoadJobBudget".into()),
                message: format!(
                    "{used} load jobs in the last 24 hours, budget {}: waiting for the window to move",
                    self.options.load_jobs_per_table_day
                ),
                class: ErrorClass::RetryLater,
            });
        }
        Ok(used)
    }

    /// Loads several converted files of one table as one load job, exactly once per object:
    /// each object's next unused job id is claimed for the group (a query job under that id
    /// naming the group's load job), then the concatenated file is loaded under the group's id.
    /// Whoever later finds one of those ids used (a redelivery loading the object alone, or in
    /// another group) reads the claim and follows it to the group load's outcome.
    pub async fn load_group_async(
        &self,
        requests: &[LoadRequest<'_>],
    ) -> Vec<Result<LoadOutcome, BqError>> {
        let n = requests.len();
        let Some(last) = requests.last() else {
            return Vec::new();
        };
        let location = last.source.location.as_deref();
        let table = &last.table.changelog;
        if let Err(e) = self.prepare_tables(last).await {
            return vec![Err(e); n];
        }
        let mut results: Vec<Option<Result<LoadOutcome, BqError>>> = vec![None; n];
        let mut rounds = 0;
        loop {
            let mut members: Vec<(usize, JobId)> = Vec::new();
            let mut claimed: Vec<(usize, JobId, String)> = Vec::new();
            for (i, r) in requests.iter().enumerate() {
                if results[i].is_some() {
                    continue;
                }
                match self.walk(r.job_id, location).await {
                    Ok(Walk::Free(id)) => members.push((i, id)),
                    Ok(Walk::Claimed { id, group }) => claimed.push((i, id, group)),
                    Ok(Walk::Loaded(by)) => {
                        results[i] = Some(Ok(LoadOutcome::AlreadyLoaded { job_id: by }))
                    }
                    Ok(Walk::Busy(id)) => {
                        results[i] = Some(Err(BqError::transport(
                            format!("load of {}", r.object.key),
                            format!(
                                "job {id} of this object is still running or claimed by another delivery"
                            ),
                        )))
                    }
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
            // Claims of exactly these objects for a group load that never started (its
            // insert failed, or its invocation died): the same group, so it is loaded now
            // (if the first claimer is alive after all, one of the two inserts gets 409).
            let resume = claimed.first().map(|(_, _, g)| g.clone()).filter(|g| {
                members.is_empty()
                    && claimed.iter().all(|(_, _, other)| other == g)
                    && group_job_id(
                        table,
                        &claimed
                            .iter()
                            .map(|(_, id, _)| id.to_string())
                            .collect::<Vec<_>>(),
                    ) == *g
            });
            if resume.is_none() {
                for (i, id, group) in claimed.drain(..) {
                    results[i] = Some(Err(BqError::transport(
                        format!("load of {}", requests[i].object.key),
                        format!(
                            "job id {id} is claimed by group load {group}, which has not started (another delivery is loading this object)"
                        ),
                    )));
                }
            } else {
                members = claimed.iter().map(|(i, id, _)| (*i, id.clone())).collect();
            }
            if members.is_empty() {
                break;
            }
            if let Err(e) = self.check_budget(table, location).await {
                for (i, _) in &members {
                    results[*i] = Some(Err(e.clone()));
                }
                break;
            }
            if members.len() == 1 && resume.is_none() {
                let (i, id) = &members[0];
                results[*i] = Some(self.load_one(&requests[*i], id).await);
                break;
            }
            let ids: Vec<String> = members.iter().map(|(_, id)| id.to_string()).collect();
            let group = group_job_id(table, &ids);
            let claim = format!("SELECT {} AS ferry_group_load", sql::string_literal(&group));
            let mut conflict = None;
            let to_claim = if resume.is_some() {
                &[][..]
            } else {
                &members[..]
            };
            // The claims go out together (each is one small request; none waits for the others).
            let mut claims = tokio::task::JoinSet::new();
            for (_, id) in to_claim {
                let (client, name, claim) = (self.client.clone(), id.to_string(), claim.clone());
                let location = location.map(str::to_owned);
                claims.spawn(async move {
                    let location = location.as_deref();
                    let labels = json!({"ferry_claim": "true"});
                    match client
                        .insert_query_job(&name, location, &claim, &labels)
                        .await
                    {
                        Ok(Some(_)) => None,
                        // Taken meanwhile: ours from an earlier try of this group, or not.
                        Ok(None) => match client.get_job(&name, location).await {
                            Ok(j) if j.query.as_deref() == Some(claim.as_str()) => None,
                            Ok(_) => Some(format!("job id {name} was taken by another delivery")),
                            Err(e) => Some(e.to_string()),
                        },
                        Err(e) => Some(e.to_string()),
                    }
                });
            }
            while let Some(done) = claims.join_next().await {
                let failed = done.unwrap_or_else(|e| Some(format!("claim task failed: {e}")));
                if conflict.is_none() {
                    conflict = failed;
                }
            }
            if let Some(why) = conflict {
                // Claims already made point to a group load that will not start: after the
                // grace period they count as failed attempts.
                for (i, r) in members.iter().map(|(i, _)| (*i, &requests[*i])) {
                    results[i] = Some(Err(BqError::transport(
                        format!("load of {}", r.object.key),
                        format!("group load not started: {why}"),
                    )));
                }
                break;
            }
            let files: Vec<&Converted> = members.iter().map(|(i, _)| requests[*i].file).collect();
            let outcome = self
                .load_combined(&group, location, &self.configuration_for(last), &files)
                .await;
            let failed_retryably = match outcome {
                Ok(outcome) => {
                    for (i, _) in &members {
                        results[*i] = Some(Ok(match &outcome {
                            LoadOutcome::Loaded { job_id } => LoadOutcome::Loaded {
                                job_id: job_id.clone(),
                            },
                            LoadOutcome::AlreadyLoaded { job_id } => LoadOutcome::AlreadyLoaded {
                                job_id: job_id.clone(),
                            },
                        }));
                    }
                    false
                }
                Err(e)
                    if e.class == ErrorClass::Retryable
                        && rounds + 1 < self.options.max_attempts =>
                {
                    tracing::warn!(job_id = %group, error = %e, "group load failed; retrying under the next ids");
                    true
                }
                Err(e) => {
                    for (i, _) in &members {
                        results[*i] = Some(Err(e.clone()));
                    }
                    false
                }
            };
            if !failed_retryably {
                break;
            }
            rounds += 1;
            self.client.backoff(rounds - 1).await;
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BqError::transport("group load", "no outcome"))))
            .collect()
    }

    /// One object through its own chain, from its first unused id.
    async fn load_one(
        &self,
        request: &LoadRequest<'_>,
        from: &JobId,
    ) -> Result<LoadOutcome, BqError> {
        let configuration = self.configuration_for(request);
        let location = request.source.location.as_deref();
        match request.file {
            Converted::InMemory(bytes) => {
                self.load_exactly_once(from, location, &configuration, Upload::Bytes(bytes))
                    .await
            }
            Converted::OnDisk(path) => {
                self.load_exactly_once(from, location, &configuration, Upload::File(path))
                    .await
            }
        }
    }

    /// The group's load job over the concatenated files (no attempts: a failed group load is
    /// retried as a new group, under the members' next ids).
    async fn load_combined(
        &self,
        group: &str,
        location: Option<&str>,
        configuration: &Value,
        files: &[&Converted],
    ) -> Result<LoadOutcome, BqError> {
        let context = format!("group load {group}");
        let sources = files
            .iter()
            .map(|f| {
                f.source()
                    .map_err(|e| BqError::transport(&context, e.message))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let total: u64 = files.iter().map(|f| f.len()).sum();
        let scratch;
        let data = if total <= COMBINE_IN_MEMORY_MAX {
            let mut buf = Vec::with_capacity(usize::try_from(total).unwrap_or(0) + 4096);
            ferry_convert::concat(&sources, &mut buf)
                .map_err(|e| BqError::permanent(&context, e.to_string()))?;
            Converted::InMemory(buf.into())
        } else {
            scratch = ScratchFile(std::env::temp_dir().join(format!("{group}.parquet")));
            let f = std::fs::File::create(&scratch.0)
                .map_err(|e| BqError::transport(&context, e.to_string()))?;
            ferry_convert::concat(&sources, std::io::BufWriter::new(f))
                .map_err(|e| BqError::permanent(&context, e.to_string()))?;
            Converted::OnDisk(scratch.0.clone())
        };
        let upload = match &data {
            Converted::InMemory(b) => Upload::Bytes(b),
            Converted::OnDisk(p) => Upload::File(p),
        };
        match self
            .client
            .insert_load_job(group, location, configuration, upload)
            .await?
        {
            Some(state) => {
                self.count_job(configuration);
                let state = self
                    .client
                    .wait_job(state, location, self.wait_budget())
                    .await?;
                match state.error {
                    None => Ok(LoadOutcome::Loaded {
                        job_id: group.to_owned(),
                    }),
                    Some(e) => Err(BqError::from_response(context, None, e.reason, e.message)),
                }
            }
            None => match self.settle(group, location).await? {
                Fate::Loaded(by) => Ok(LoadOutcome::AlreadyLoaded { job_id: by }),
                _ => Err(BqError::transport(
                    context,
                    "an earlier run of this group load failed",
                )),
            },
        }
    }

    async fn load_async(&self, request: &LoadRequest<'_>) -> Result<LoadOutcome, BqError> {
        self.prepare_tables(request).await?;
        let location = request.source.location.as_deref();
        // A redelivered object that is loaded already needs no budget.
        match self.walk(request.job_id, location).await? {
            Walk::Loaded(by) => Ok(LoadOutcome::AlreadyLoaded { job_id: by }),
            Walk::Free(id) => {
                self.check_budget(&request.table.changelog, location)
                    .await?;
                self.load_one(request, &id).await
            }
            // Running or claimed: the insert's 409 path waits for it or reports it.
            Walk::Busy(_) | Walk::Claimed { .. } => self.load_one(request, request.job_id).await,
        }
    }

    fn remember_for_apply(&self, request: &LoadRequest<'_>) {
        if request.table.replica.is_none() || request.rows == 0 {
            return;
        }
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let (w, _) = pending
            .entry(request.table.changelog.clone())
            .or_insert_with(|| {
                (
                    ApplyWindow {
                        files: Vec::new(),
                        commit_ts_min: None,
                        commit_ts_max: None,
                    },
                    request.source.location.clone(),
                )
            });
        if !w.files.iter().any(|f| f == &request.object.key) {
            w.files.push(request.object.key.clone());
        }
        let widen = |cur: Option<i64>, new: Option<i64>, min: bool| match (cur, new) {
            (Some(a), Some(b)) => Some(if min { a.min(b) } else { a.max(b) }),
            (a, b) => a.or(b),
        };
        w.commit_ts_min = widen(w.commit_ts_min, request.commit_ts_min, true);
        w.commit_ts_max = widen(w.commit_ts_max, request.commit_ts_max, false);
    }

    /// Runs the replica statements for a window (also usable for a full re-apply).
    pub async fn apply_window(
        &self,
        table: &TableMapping,
        location: Option<&str>,
        window: &ApplyWindow,
    ) -> Result<u64, BqError> {
        let schema = match self.cached_schema(&table.changelog) {
            Some(s) => s,
            None => match self.fetch_schema(&table.changelog).await? {
                Some(s) => s,
                None => return Ok(0),
            },
        };
        let mut changed = 0;
        for statement in sql::apply_statements(table, &schema, window) {
            changed = self.run(&statement, location, "merge").await?;
        }
        Ok(changed)
    }

    fn block<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, BqError>>,
    ) -> Result<T, PortError> {
        self.handle.block_on(f).map_err(port_error)
    }
}

impl Warehouse for BigQueryWarehouse {
    fn set_deadline(&self, deadline: Option<std::time::Instant>) {
        if let Ok(mut d) = self.deadline.lock() {
            *d = deadline;
        }
    }

    fn table_schema(&self, table: &TableMapping) -> Result<Option<TableSchema>, PortError> {
        if let Some(s) = self.cached_schema(&table.changelog) {
            return Ok(Some(s));
        }
        let schema = self.block(self.fetch_schema(&table.changelog))?;
        if let (Some(s), Ok(mut cache)) = (&schema, self.schemas.lock()) {
            cache.insert(table.changelog.clone(), s.clone());
        }
        Ok(schema)
    }

    fn load(&self, request: &LoadRequest<'_>) -> Result<LoadOutcome, PortError> {
        let outcome = self
            .handle
            .block_on(self.load_async(request))
            .map_err(|e| self.stale_schema(&request.table.changelog, e))
            .map_err(port_error)?;
        self.remember_for_apply(request);
        Ok(outcome)
    }

    fn load_group(&self, requests: &[LoadRequest<'_>]) -> Vec<Result<LoadOutcome, PortError>> {
        let Some(last) = requests.last() else {
            return Vec::new();
        };
        // Below `combine_from` of the budget every object gets its own load job (the simplest
        // path, and the freshest data); above it, one job carries the whole run.
        let used = self
            .handle
            .block_on(self.jobs_last_day(&last.table.changelog, last.source.location.as_deref()));
        let hot = used as f64
            >= self.options.combine_from * f64::from(self.options.load_jobs_per_table_day);
        if !hot || requests.len() < 2 {
            return requests.iter().map(|r| self.load(r)).collect();
        }
        let results = self.handle.block_on(self.load_group_async(requests));
        requests
            .iter()
            .zip(results)
            .map(|(r, result)| {
                let outcome = result.map_err(port_error)?;
                self.remember_for_apply(r);
                Ok(outcome)
            })
            .collect()
    }

    fn apply(&self, table: &TableMapping) -> Result<u64, PortError> {
        let window = self
            .pending
            .lock()
            .ok()
            .and_then(|p| p.get(&table.changelog).cloned());
        let Some((window, location)) = window else {
            return Ok(0);
        };
        let replica = table
            .replica
            .clone()
            .unwrap_or_else(|| table.changelog.clone());
        let changed = self
            .locked(&replica, || {
                self.handle
                    .block_on(self.apply_window(table, location.as_deref(), &window))
            })
            .map_err(port_error)?;
        if let Ok(mut p) = self.pending.lock() {
            // Files loaded while the MERGE ran stay pending.
            if let Some((w, _)) = p.get_mut(&table.changelog) {
                w.files.retain(|f| !window.files.contains(f));
                if w.files.is_empty() {
                    p.remove(&table.changelog);
                }
            }
        }
        Ok(changed)
    }

    fn record(&self, _event: &StatusEvent) -> Result<(), PortError> {
        // The pipeline logs every object (one structured line with its span) and the Lambda
        // turns the batch into metrics; BigQuery keeps no status table of its own.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::bqtype::BqType;

    fn t() -> TableRef {
        TableRef {
            project: "p".into(),
            dataset: "d".into(),
            table: "t".into(),
        }
    }

    #[test]
    fn rest_schema_reads_legacy_names_and_default_mode() {
        let s = schema_from_json(
            &t(),
            &json!([{"name":"id","type":"INTEGER","mode":"REQUIRED"},{"name":"v","type":"STRING"}]),
        )
        .unwrap();
        assert_eq!(s.fields[0].bq_type, BqType::Int64);
        assert_eq!(s.fields[1].mode, FieldMode::Nullable);
        let e = schema_from_json(&t(), &json!([{"name":"r","type":"RECORD"}])).unwrap_err();
        assert!(!e.is_retryable());
    }

    #[test]
    fn type_conflicts_name_the_column_and_both_types() {
        let actual = schema_from_json(&t(), &json!([{"name":"amount","type":"INT64"}])).unwrap();
        let wanted = vec![BqField {
            name: "amount".into(),
            bq_type: BqType::String,
            mode: FieldMode::Nullable,
            description: None,
        }];
        let e = missing_columns(&t(), &actual, &wanted).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("amount") && m.contains("INT64") && m.contains("STRING"),
            "{m}"
        );
        assert!(!e.is_retryable());
        let added = BqField {
            name: "new_col".into(),
            bq_type: BqType::Json,
            mode: FieldMode::Required,
            description: None,
        };
        let missing = missing_columns(&t(), &actual, &[added]).unwrap();
        assert_eq!(
            missing[0].mode,
            FieldMode::Nullable,
            "added columns are NULLABLE"
        );
    }

    #[test]
    fn labels_are_valid() {
        assert_eq!(label("Slots.Account-DB"), "slots_account-db");
        assert_eq!(label(&"x".repeat(80)).len(), 63);
    }
}
