//! [`BigQueryWarehouse`]: the pipeline's `Warehouse` port on BigQuery.
//!
//! # Exactly-once loads
//! An object's load job ids form a chain: `<base>_a0`, `<base>_a1`, ... (see
//! [`ferry_core::JobId`]). A load walks the chain from attempt 0:
//! - insert attempt n with its data; BigQuery answers 409 when a job with that id exists, and
//!   the job is looked up instead;
//! - a job still running is waited for;
//! - `DONE` without an error: the rows are in (by this call: `Loaded`; by an earlier one:
//!   `AlreadyLoaded`). Load jobs are atomic, so nothing else needs checking;
//! - `DONE` with an error: that attempt wrote nothing. If this call ran it, a retryable error
//!   moves on to attempt n+1 (up to `max_attempts` per call) and any other error is returned;
//!   if an earlier delivery ran it, the chain moves on to n+1: a message delivered again (SQS
//!   retry, or a redrive after a fix) is a new decision to load.
//!
//! Attempt n+1 is only ever created after attempt n ended in error, so at most one attempt of
//! an object succeeds, whatever the sequence of crashes, timeouts, duplicates and redrives.
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

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_core::mapping::TableMapping;
use ferry_core::schema::{BqField, FieldMode, TableSchema};
use ferry_core::sql::{self, ApplyWindow};
use ferry_core::{JobId, TableRef};
use ferry_pipeline::ports::{
    Converted, LoadOutcome, LoadRequest, PortError, StatusEvent, Warehouse,
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
}

impl Default for WarehouseOptions {
    fn default() -> Self {
        WarehouseOptions {
            max_attempts: 3,
            max_wait: Duration::from_secs(300),
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
    replicas_ready: Mutex<HashMap<TableRef, ()>>,
    pending: Mutex<HashMap<TableRef, (ApplyWindow, Option<String>)>>,
    jobs_started: AtomicU64,
}

static REQUEST: AtomicU64 = AtomicU64::new(0);

fn request_id(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "ferry-{kind}-{}-{nanos:x}-{}",
        std::process::id(),
        REQUEST.fetch_add(1, Ordering::Relaxed)
    )
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

/// The load job configuration for a converted file.
pub fn load_configuration(request: &LoadRequest<'_>) -> Value {
    let t = &request.table.changelog;
    json!({
        "load": {
            "destinationTable": { "projectId": t.project, "datasetId": t.dataset, "tableId": t.table },
            "sourceFormat": "PARQUET",
            "writeDisposition": "WRITE_APPEND",
            "createDisposition": "CREATE_NEVER",
            "schemaUpdateOptions": ["ALLOW_FIELD_ADDITION"],
            "parquetOptions": { "enableListInference": true },
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
            replicas_ready: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            jobs_started: AtomicU64::new(0),
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
        let result = self
            .client
            .query(sql, location, &request_id(kind), self.options.max_wait)
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
                self.run(
                    &sql::create_changelog(table, request.schema),
                    location,
                    "ddl",
                )
                .await?;
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
        for alter in sql::add_columns(&table.changelog, &missing) {
            self.run(&alter, location, "ddl").await?;
        }
        let mut schema = actual;
        schema.fields.extend(missing.iter().cloned());
        if let Some(replica) = &table.replica {
            let ready = self
                .replicas_ready
                .lock()
                .map(|r| r.contains_key(replica))
                .unwrap_or(false);
            if !ready {
                for ddl in sql::create_replica(table, &schema) {
                    self.run(&ddl, location, "ddl").await?;
                }
                if let Ok(mut r) = self.replicas_ready.lock() {
                    r.insert(replica.clone(), ());
                }
            }
            for alter in sql::add_columns(replica, &missing) {
                self.run(&alter, location, "ddl").await?;
            }
        }
        if let Ok(mut s) = self.schemas.lock() {
            s.insert(table.changelog.clone(), schema);
        }
        Ok(())
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
    ) -> Result<(LoadOutcome, JobState), BqError> {
        let mut id = base.clone();
        let mut started_here = 0;
        loop {
            let name = id.to_string();
            let (state, existed) = match self
                .client
                .insert_load_job(&name, location, configuration, data)
                .await?
            {
                Some(state) => {
                    self.jobs_started.fetch_add(1, Ordering::Relaxed);
                    started_here += 1;
                    (state, false)
                }
                None => (self.client.get_job(&name, location).await?, true),
            };
            let state = self
                .client
                .wait_job(state, location, self.options.max_wait)
                .await?;
            let Some(error) = state.error.clone() else {
                let outcome = if existed {
                    LoadOutcome::AlreadyLoaded { job_id: name }
                } else {
                    LoadOutcome::Loaded { job_id: name }
                };
                return Ok((outcome, state));
            };
            let failure = BqError::from_response(
                format!("load job {name}"),
                None,
                error.reason.clone(),
                error.message.clone(),
            );
            if existed {
                // An earlier delivery's attempt failed and wrote nothing: this delivery tries
                // the next id.
                tracing::info!(job_id = %name, error = %failure, "earlier attempt failed; trying the next id");
            } else if failure.class != ErrorClass::Retryable
                || started_here >= self.options.max_attempts
            {
                return Err(failure);
            } else {
                tracing::warn!(job_id = %name, error = %failure, "load attempt failed; retrying with the next id");
                self.client.backoff(started_here - 1).await;
            }
            id = id.next_attempt();
        }
    }

    async fn load_async(&self, request: &LoadRequest<'_>) -> Result<LoadOutcome, BqError> {
        self.prepare_tables(request).await?;
        let configuration = load_configuration(request);
        let location = request.source.location.as_deref();
        let (outcome, state) = match request.file {
            Converted::InMemory(bytes) => {
                self.load_exactly_once(
                    request.job_id,
                    location,
                    &configuration,
                    Upload::Bytes(bytes),
                )
                .await?
            }
            Converted::OnDisk(path) => {
                self.load_exactly_once(request.job_id, location, &configuration, Upload::File(path))
                    .await?
            }
        };
        if let (LoadOutcome::Loaded { job_id }, Some(rows)) = (&outcome, state.output_rows)
            && rows != request.rows
        {
            tracing::warn!(job_id = %job_id, expected = request.rows, loaded = rows, "load job wrote another row count than the file holds");
        }
        Ok(outcome)
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
        let outcome = self.block(self.load_async(request))?;
        self.remember_for_apply(request);
        Ok(outcome)
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
        let changed = self.block(self.apply_window(table, location.as_deref(), &window))?;
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
