//! [`BigQueryWarehouse`]: the pipeline's `Warehouse` port on BigQuery.
//!
//! A load prepares the tables ([`tables`]), counts against the table's budget and may join a
//! group load ([`budget`]), then walks the object's job-id chain ([`chain`]); the objects loaded
//! join the replica's pending window, which [`apply`] merges under the replica's lock. Every
//! wait is capped by the invocation's deadline ([`BigQueryWarehouse::wait_budget`]).
//!
//! # Layout
//! - [`chain`]: exactly-once loads over job-id chains.
//! - [`budget`]: the load-job budget and group loads (claims).
//! - [`tables`]: table creation and evolution, the load configuration.
//! - [`apply`]: the replica apply, one writer at a time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::mapping::{Source, TableMapping};
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

mod apply;
mod budget;
mod chain;
mod tables;

use budget::*;
use chain::*;

pub use budget::{combines, over_budget};
pub use tables::{key_label, load_configuration, missing_columns, schema_from_json};

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
    /// How often replicas are applied when their mapping does not say (the live view reads the
    /// change log back four times as far, at least two hours).
    pub apply_every: Duration,
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
            apply_every: Duration::from_secs(15 * 60),
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

/// Time kept free before the invocation's deadline: waits end this long before it, so the
/// handler can still answer.
const DEADLINE_RESERVE: Duration = Duration::from_secs(10);

static REQUEST: AtomicU64 = AtomicU64::new(0);

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

fn port_error(e: BqError) -> PortError {
    PortError {
        message: e.to_string(),
        retryable: e.is_retryable(),
        later: e.class == ErrorClass::RetryLater,
    }
}

/// A label value BigQuery accepts: lowercase letters, digits, `_` and `-`, at most 63.
pub(crate) fn label(value: &str) -> String {
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

    async fn run(&self, sql: &str, location: Option<&str>, kind: &str) -> Result<u64, BqError> {
        tracing::debug!(kind, "statement");
        let result = self
            .client
            .query(sql, location, &request_id(), self.wait_budget())
            .await?;
        Ok(result.dml_affected_rows.unwrap_or(0))
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
        if !combines(&self.options, used) || requests.len() < 2 {
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
                    .block_on(self.run_apply(table, location.as_deref(), &window))
            })
            .map_err(port_error)?;
        if let Ok(mut p) = self.pending.lock() {
            // Files loaded while the MERGE ran stay pending.
            if let Some((w, _)) = p.get_mut(&table.changelog) {
                w.files.retain(|f| !window.files.contains(f));
                if w.rebuild == window.rebuild {
                    w.rebuild = sql::Rebuild::No;
                }
                if w.files.is_empty() {
                    p.remove(&table.changelog);
                }
            }
        }
        Ok(changed)
    }

    fn take_pending(&self, table: &TableMapping) -> Option<ApplyWindow> {
        self.pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&table.changelog))
            .map(|(w, _)| w)
    }

    fn apply_window(
        &self,
        source: &Source,
        table: &TableMapping,
        window: &ApplyWindow,
    ) -> Result<u64, PortError> {
        let Some(replica) = &table.replica else {
            return Ok(0);
        };
        let location = source.location.as_deref();
        self.locked(replica, || {
            self.handle
                .block_on(self.run_apply(table, location, window))
        })
        .map_err(port_error)
    }

    fn empty_replica(
        &self,
        source: &Source,
        table: &TableMapping,
        run_seq: &str,
    ) -> Result<(), PortError> {
        let Some(replica) = &table.replica else {
            return Ok(());
        };
        let location = source.location.as_deref();
        self.locked(replica, || {
            self.handle.block_on(async {
                for statement in sql::empty_statements(table, run_seq) {
                    self.run(&statement, location, "merge").await?;
                }
                Ok(())
            })
        })
        .map_err(port_error)
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
        // Retryable: converted again against the table, the file follows its on_type_change.
        assert!(e.is_retryable());
        assert!(m.contains("amount__string"), "{m}");
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
