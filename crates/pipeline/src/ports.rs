//! The ports the use cases need, and nothing more. Production implements them with S3, SQS and
//! BigQuery; local mode with a directory, an in-process queue and SQLite. Each implementation
//! classifies its own failures as retryable or permanent.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_convert::RangeSource;
use ferry_core::JobId;
use ferry_core::event::SqsMessage;
use ferry_core::key::DmsObject;
use ferry_core::mapping::{Source, TableMapping};
use ferry_core::schema::{BqField, OpCounts, TableSchema};
use ferry_core::sql::ApplyWindow;
use serde::{Deserialize, Serialize};

/// A failure of a port, classified by the port that knows the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    /// What happened, naming the object or table.
    pub message: String,
    /// Whether the same call may succeed later (throttling, 5xx, timeouts).
    pub retryable: bool,
    /// A quota that resets with time (a table's daily load jobs): retryable, but not for a
    /// while; a scheduled handler defers the object instead of retrying it.
    pub later: bool,
}

impl PortError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> PortError {
        PortError {
            message: message.into(),
            retryable: true,
            later: false,
        }
    }

    /// A quota that resets with time: try again, but not before a while.
    pub fn later(message: impl Into<String>) -> PortError {
        PortError {
            message: message.into(),
            retryable: true,
            later: true,
        }
    }

    /// A failure that will not go away by retrying.
    pub fn permanent(message: impl Into<String>) -> PortError {
        PortError {
            message: message.into(),
            retryable: false,
            later: false,
        }
    }
}

/// An object's current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The version's ETag (without quotes): part of the load job id.
    pub etag: String,
    /// When it was written, µs since the epoch.
    pub last_modified_micros: Option<i64>,
}

/// Where DMS objects are read from.
///
/// Contract: `head` returns `None` only for an object that does not exist (deleted); `open`
/// reads the version `meta` describes; `list` returns every object under a prefix, sorted by key.
pub trait ObjectStore: Send + Sync {
    /// The object's current version, or `None` when it does not exist.
    fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, PortError>;
    /// A range-read source over the object.
    fn open(
        &self,
        bucket: &str,
        key: &str,
        meta: &ObjectMeta,
    ) -> Result<Arc<dyn RangeSource>, PortError>;
    /// Every object under `prefix`, sorted by key.
    fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, PortError>;
}

/// One converted file to load into a table's change log.
#[derive(Debug, Clone, Copy)]
pub struct LoadRequest<'a> {
    /// The job id of attempt 0; the warehouse moves to later attempts only after a failed one.
    pub job_id: &'a JobId,
    /// The source.
    pub source: &'a Source,
    /// The table mapping.
    pub table: &'a TableMapping,
    /// The object.
    pub object: &'a DmsObject,
    /// The bucket.
    pub bucket: &'a str,
    /// The file's place in its table's source order (`_ferry_file_seq` of its rows).
    pub file_seq: &'a str,
    /// The change-log table's schema with this file's columns (known ones first).
    pub schema: &'a TableSchema,
    /// Columns the table gets with this file.
    pub added: &'a [BqField],
    /// The converted parquet file.
    pub file: &'a Converted,
    /// Rows in it.
    pub rows: u64,
    /// Rows by operation.
    pub ops: OpCounts,
    /// Earliest commit time in it, µs since the epoch.
    pub commit_ts_min: Option<i64>,
    /// Latest commit time in it, µs since the epoch.
    pub commit_ts_max: Option<i64>,
}

/// A converted parquet file: in memory when small, else in the work folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Converted {
    /// The file's bytes.
    InMemory(bytes::Bytes),
    /// The file's path.
    OnDisk(PathBuf),
}

impl Converted {
    /// A range-read source over the file.
    pub fn source(&self) -> Result<Arc<dyn RangeSource>, PortError> {
        match self {
            Converted::InMemory(b) => Ok(Arc::new(b.clone())),
            Converted::OnDisk(p) => std::fs::File::open(p)
                .map(|f| Arc::new(f) as Arc<dyn RangeSource>)
                .map_err(|e| PortError::retryable(format!("{}: {e}", p.display()))),
        }
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Converted::InMemory(b) => b.len() as u64,
            Converted::OnDisk(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a load ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadOutcome {
    /// The rows are in the change log now, under this job id.
    Loaded {
        /// The job id that loaded them.
        job_id: String,
    },
    /// A job with this object's id had loaded it before: nothing was written.
    AlreadyLoaded {
        /// That job's id.
        job_id: String,
    },
}

/// Where rows land.
///
/// Contract: `load` is exactly-once per job id base: whatever the sequence of calls and
/// failures, an object's rows are written at most once, and a call that returns `Ok` means they
/// are written. `apply` is idempotent and order-independent: it brings the replica to the
/// latest change per key over the whole change log, in source commit order:
/// `(_ferry_commit_ts, _ferry_file_seq, _ferry_row)`.
pub trait Warehouse: Send + Sync {
    /// The change-log table's schema, or `None` before its first load.
    fn table_schema(&self, table: &TableMapping) -> Result<Option<TableSchema>, PortError>;
    /// Loads a converted file, creating or widening the tables as needed.
    fn load(&self, request: &LoadRequest<'_>) -> Result<LoadOutcome, PortError>;
    /// Loads several converted files of one table (same columns, in apply order), as one
    /// load job where the warehouse can, keeping `load`'s exactly-once contract per object.
    /// Returns one result per request, in order. The default loads them one by one.
    fn load_group(&self, requests: &[LoadRequest<'_>]) -> Vec<Result<LoadOutcome, PortError>> {
        requests.iter().map(|r| self.load(r)).collect()
    }
    /// Applies change-log rows not applied yet to the replica (replica mode).
    fn apply(&self, table: &TableMapping) -> Result<u64, PortError>;
    /// Takes what this process loaded into `table`'s change log and has not applied, as an
    /// apply window (the scheduled handler carries it to the table's next apply slot). Default:
    /// `None`, for warehouses that track it themselves (see `apply`).
    fn take_pending(&self, _table: &TableMapping) -> Option<ApplyWindow> {
        None
    }
    /// Applies `window` of the change log to the replica, one writer at a time. Default:
    /// `apply`.
    fn apply_window(
        &self,
        _source: &Source,
        table: &TableMapping,
        _window: &ApplyWindow,
    ) -> Result<u64, PortError> {
        self.apply(table)
    }
    /// Records what happened to an object, for status.
    fn record(&self, event: &StatusEvent) -> Result<(), PortError>;
    /// Empties a replica as of the run start `run_seq` (see `ferry_core::sql::empty_statements`):
    /// a table's files were removed under `on_truncate: empty`.
    fn empty_replica(
        &self,
        source: &Source,
        table: &TableMapping,
        run_seq: &str,
    ) -> Result<(), PortError>;
    /// The invocation's deadline, set by the handler before a batch: every wait the warehouse
    /// does ends before it (work left is resumed by the next delivery). Default: ignored.
    fn set_deadline(&self, _deadline: Option<std::time::Instant>) {}
}

/// A lock held by one process at a time, across processes and invocations: the guard that a
/// replica is applied by one writer only (two MERGEs that both insert a new key both insert it
/// under BigQuery's snapshot isolation).
///
/// Contract: `try_acquire` succeeds for at most one owner of `name` at a time until that owner
/// releases it or `ttl` passes; it never blocks. `release` by an owner that does not hold the
/// lock (any more) changes nothing.
pub trait ApplyLock: Send + Sync {
    /// Takes `name` for `owner` until `ttl` from now; `Ok(false)` when someone else holds it.
    fn try_acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, PortError>;
    /// Gives `name` up, if `owner` holds it.
    fn release(&self, name: &str, owner: &str) -> Result<(), PortError>;
}

impl std::fmt::Debug for dyn ApplyLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApplyLock")
    }
}

/// Locks within one process: for local mode, tests and a single-writer deployment.
#[derive(Debug, Default)]
pub struct ProcessLock {
    held: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl ApplyLock for ProcessLock {
    fn try_acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, PortError> {
        let mut held = self
            .held
            .lock()
            .map_err(|_| PortError::retryable("lock table poisoned"))?;
        let now = std::time::Instant::now();
        match held.get(name) {
            Some((o, until)) if o != owner && *until > now => Ok(false),
            _ => {
                held.insert(name.to_owned(), (owner.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    fn release(&self, name: &str, owner: &str) -> Result<(), PortError> {
        if let Ok(mut held) = self.held.lock()
            && held.get(name).is_some_and(|(o, _)| o == owner)
        {
            held.remove(name);
        }
        Ok(())
    }
}

/// The loader's own queue, for work sent back to be done later: deferred loads and applies.
///
/// Contract: after `send_later` returns `Ok`, the body is delivered to the loader again, no
/// sooner than `delay` from now (the caller may then acknowledge what it carries).
pub trait Requeue: Send + Sync {
    /// Sends `body` to the queue, delivered after `delay` (SQS allows at most 15 minutes).
    fn send_later(&self, body: &str, delay: std::time::Duration) -> Result<(), PortError>;
}

/// Work waiting for a table's next slot, held between invocations (the lock table in
/// production): sets of items (the objects of a load, the apply windows of loaded files), and
/// whoever claims the table's next slot takes them all.
///
/// Contract: after `add` returns `Ok`, `read` returns every item added (once, however often it
/// was added) until `remove` removes it.
pub trait PendingSets: Send + Sync {
    /// Adds items to the set `name`.
    fn add(&self, name: &str, items: &[String]) -> Result<(), PortError>;
    /// The items of the set `name`.
    fn read(&self, name: &str) -> Result<Vec<String>, PortError>;
    /// Removes items from the set `name`.
    fn remove(&self, name: &str, items: &[String]) -> Result<(), PortError>;
}

/// Pending sets within one process: for tests, the model and a single-writer deployment.
#[derive(Debug, Default)]
pub struct ProcessPending {
    sets: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
}

impl ProcessPending {
    fn sets(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<String>>>, PortError>
    {
        self.sets
            .lock()
            .map_err(|_| PortError::retryable("pending sets poisoned"))
    }
}

impl PendingSets for ProcessPending {
    fn add(&self, name: &str, items: &[String]) -> Result<(), PortError> {
        let mut sets = self.sets()?;
        let set = sets.entry(name.to_owned()).or_default();
        for item in items {
            if !set.contains(item) {
                set.push(item.clone());
            }
        }
        Ok(())
    }

    fn read(&self, name: &str) -> Result<Vec<String>, PortError> {
        Ok(self.sets()?.get(name).cloned().unwrap_or_default())
    }

    fn remove(&self, name: &str, items: &[String]) -> Result<(), PortError> {
        let mut sets = self.sets()?;
        if let Some(set) = sets.get_mut(name) {
            set.retain(|x| !items.contains(x));
            if set.is_empty() {
                sets.remove(name);
            }
        }
        Ok(())
    }
}

/// Where messages that can never succeed go, with their reason.
pub trait DeadLetters: Send + Sync {
    /// Sends the message with its reason. Only after this returns `Ok` may the message be
    /// acknowledged.
    fn send(&self, message: &SqsMessage, reason: &str) -> Result<(), PortError>;
}

/// What happened to one object, as status records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// When, µs since the epoch.
    pub at_micros: i64,
    /// `loaded`, `already_loaded`, `skipped`, `failed_retryable` or `failed_permanent`.
    pub kind: String,
    /// The source, when known.
    pub source: Option<String>,
    /// `schema.table`, when the key parsed.
    pub table: Option<String>,
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// The skip code (see `PlanSkip::code`), when skipped.
    pub code: Option<String>,
    /// The job id, when loaded.
    pub job_id: Option<String>,
    /// Rows loaded.
    pub rows: u64,
    /// Bytes of the object.
    pub bytes: u64,
    /// Latest commit time loaded, µs since the epoch.
    pub commit_ts_max: Option<i64>,
    /// The reason of a skip or failure.
    pub message: Option<String>,
    /// What a loaded object's conversion noticed and could not fix, each `code: detail`
    /// (`timestamp_column_missing`, `commit_ts_clamped`, `lob_at_limit`).
    pub warnings: Vec<String>,
}

impl<T: ObjectStore + ?Sized> ObjectStore for Arc<T> {
    fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, PortError> {
        (**self).head(bucket, key)
    }
    fn open(
        &self,
        bucket: &str,
        key: &str,
        meta: &ObjectMeta,
    ) -> Result<Arc<dyn RangeSource>, PortError> {
        (**self).open(bucket, key, meta)
    }
    fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, PortError> {
        (**self).list(bucket, prefix)
    }
}

impl<T: Warehouse + ?Sized> Warehouse for Arc<T> {
    fn table_schema(&self, table: &TableMapping) -> Result<Option<TableSchema>, PortError> {
        (**self).table_schema(table)
    }
    fn load(&self, request: &LoadRequest<'_>) -> Result<LoadOutcome, PortError> {
        (**self).load(request)
    }
    fn load_group(&self, requests: &[LoadRequest<'_>]) -> Vec<Result<LoadOutcome, PortError>> {
        (**self).load_group(requests)
    }
    fn apply(&self, table: &TableMapping) -> Result<u64, PortError> {
        (**self).apply(table)
    }
    fn take_pending(&self, table: &TableMapping) -> Option<ApplyWindow> {
        (**self).take_pending(table)
    }
    fn apply_window(
        &self,
        source: &Source,
        table: &TableMapping,
        window: &ApplyWindow,
    ) -> Result<u64, PortError> {
        (**self).apply_window(source, table, window)
    }
    fn record(&self, event: &StatusEvent) -> Result<(), PortError> {
        (**self).record(event)
    }
    fn empty_replica(
        &self,
        source: &Source,
        table: &TableMapping,
        run_seq: &str,
    ) -> Result<(), PortError> {
        (**self).empty_replica(source, table, run_seq)
    }
    fn set_deadline(&self, deadline: Option<std::time::Instant>) {
        (**self).set_deadline(deadline)
    }
}
