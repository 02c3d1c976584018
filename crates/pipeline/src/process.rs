//! One object, from "it landed" to "its rows are in the warehouse": plan, read, convert, load.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_convert::{Conversion, ConvertOutcome, ConvertRequest, RangeReader};
use ferry_core::key::DmsObject;
use ferry_core::mapping::{Catalog, OnTypeChange, Source, TableMapping};
use ferry_core::{JobId, plan_object};

use crate::ports::{
    Converted, LoadOutcome, LoadRequest, ObjectStore, PortError, StatusEvent, Warehouse,
};

/// The use cases' dependencies: the mappings, the ports and a scratch folder.
pub struct Pipeline<S, W> {
    /// Validated mappings.
    pub catalog: Arc<Catalog>,
    /// Where objects are read.
    pub store: S,
    /// Where rows land.
    pub warehouse: W,
    /// Folder for converted files on their way to the warehouse (Lambda: `/tmp`).
    pub work_dir: PathBuf,
}

/// How processing one object ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectResult {
    /// Rows loaded.
    Loaded {
        /// The job id.
        job_id: String,
        /// Rows.
        rows: u64,
        /// The table (`schema.table`), for the replica apply.
        table: String,
        /// The source.
        source: String,
        /// The newest source commit time among the rows, µs since the epoch (for lag).
        commit_ts_max: Option<i64>,
        /// What the conversion noticed (see `StatusEvent::warnings`).
        warnings: Vec<String>,
    },
    /// This version was loaded before; nothing written.
    AlreadyLoaded {
        /// The job id.
        job_id: String,
        /// The table.
        table: String,
        /// The source.
        source: String,
    },
    /// Not loaded by design (not DMS data, unmapped or disabled table), with the plan's code.
    Skipped {
        /// The skip code.
        code: String,
        /// Why.
        reason: String,
    },
    /// Not loaded now because a quota that resets with time is used up (the table's daily load
    /// jobs): the object is deferred (scheduled handler) or retried.
    Deferred {
        /// Why, naming the object and the quota.
        reason: String,
    },
    /// Failed; `retryable` says whether trying again may help.
    Failed {
        /// What went wrong, naming the object.
        reason: String,
        /// Whether to retry.
        retryable: bool,
    },
}

static SCRATCH: AtomicU64 = AtomicU64::new(0);

/// Objects up to this size are converted in memory.
const IN_MEMORY_MAX: u64 = 8 << 20;

/// Microseconds since the epoch, now.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// An object converted and ready to load.
struct Prepared<'c> {
    source: &'c Source,
    table: &'c TableMapping,
    object: DmsObject,
    job_id: JobId,
    outcome: ConvertOutcome,
    file: Converted,
    warnings: Vec<String>,
    _scratch: Option<Scratch>,
}

/// One object's progress through the pipeline.
struct Tracked<'c> {
    key: String,
    started: std::time::Instant,
    event: StatusEvent,
    state: Result<Prepared<'c>, ObjectResult>,
}

/// The failure of an object whose processing panicked (the panic itself is logged).
const PANICKED: &str =
    "processing panicked (see the log line with this key); kept for redrive after a fix";

/// Runs `f`; a panic becomes a permanent failure of the object, naming it and the panic.
fn contain<T>(bucket: &str, key: &str, f: impl FnOnce() -> T) -> Result<T, ObjectResult> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        tracing::error!(bucket, key, panic = %what, "processing the object panicked");
        ObjectResult::Failed {
            reason: format!(
                "s3://{bucket}/{key}: processing panicked ({what}); kept for redrive after a fix"
            ),
            retryable: false,
        }
    })
}

impl<S: ObjectStore, W: Warehouse> Pipeline<S, W> {
    /// Processes one object and records what happened (never fails: failures are results).
    /// Recording is best effort: a status write that fails is logged, not retried (the object's
    /// outcome does not depend on it).
    pub fn process_object(&self, bucket: &str, key: &str) -> ObjectResult {
        self.process_objects(bucket, &[key.to_owned()])
            .pop()
            .unwrap_or(ObjectResult::Failed {
                reason: format!("s3://{bucket}/{key}: not processed"),
                retryable: true,
            })
    }

    /// Processes objects of one table, given in apply order, and returns their results in the
    /// same order. Consecutive objects whose converted files have the same columns are loaded
    /// together (one load job, see `Warehouse::load_group`) when the warehouse combines loads.
    pub fn process_objects(&self, bucket: &str, keys: &[String]) -> Vec<ObjectResult> {
        self.process_objects_until(bucket, keys, &|| false)
    }

    /// Like [`Self::process_objects`], but an object is not started once `stop` says so (the
    /// invocation's deadline is near): it fails as retryable, for SQS to deliver again.
    pub fn process_objects_until(
        &self,
        bucket: &str,
        keys: &[String],
        stop: &dyn Fn() -> bool,
    ) -> Vec<ObjectResult> {
        let mut tracked: Vec<Tracked<'_>> = keys
            .iter()
            .map(|key| {
                let started = std::time::Instant::now();
                let span = tracing::info_span!("object", bucket, key = key.as_str());
                let _entered = span.enter();
                let mut event = self.new_event(bucket, key);
                let state = if stop() {
                    Err(ObjectResult::Failed {
                        reason: format!(
                            "s3://{bucket}/{key}: not started, too close to the invocation deadline"
                        ),
                        retryable: true,
                    })
                } else {
                    // A panic converting one object (a bug, or an input no check caught) fails
                    // that object alone, permanently, with its reason: the rest of the batch
                    // goes on, and the object is kept in the dead-letter queue for redrive.
                    contain(bucket, key, || self.prepare(bucket, key, &mut event))
                        .unwrap_or_else(Err)
                };
                Tracked {
                    key: key.clone(),
                    started,
                    event,
                    state,
                }
            })
            .collect();
        // Runs of prepared objects of one table with the same columns load together.
        let mut results: Vec<Option<ObjectResult>> = tracked
            .iter()
            .map(|t| t.state.as_ref().err().cloned())
            .collect();
        let mut i = 0;
        while i < tracked.len() {
            let Ok(first) = &tracked[i].state else {
                i += 1;
                continue;
            };
            let mut j = i + 1;
            while j < tracked.len()
                && matches!(&tracked[j].state, Ok(p) if p.table.changelog == first.table.changelog
                    && p.outcome.schema == first.outcome.schema)
            {
                j += 1;
            }
            let requests: Vec<LoadRequest<'_>> = tracked[i..j]
                .iter()
                .filter_map(|t| t.state.as_ref().ok())
                .map(|p| p.request(bucket))
                .collect();
            // A panic while loading a group is retried object by object, so that only the
            // object that panics fails.
            let one = |k: usize| {
                contain(bucket, &tracked[i + k].key, || {
                    self.warehouse.load(&requests[k])
                })
                .unwrap_or_else(|_| Err(PortError::permanent(PANICKED)))
            };
            let outcomes = if requests.len() == 1 {
                vec![one(0)]
            } else {
                contain(bucket, &tracked[i].key, || {
                    self.warehouse.load_group(&requests)
                })
                .unwrap_or_else(|_| (0..requests.len()).map(one).collect())
            };
            for (k, outcome) in outcomes.into_iter().enumerate() {
                let t = &tracked[i + k];
                let Ok(p) = &t.state else { continue };
                results[i + k] = Some(match outcome {
                    Ok(LoadOutcome::Loaded { job_id }) => ObjectResult::Loaded {
                        job_id,
                        rows: p.outcome.rows,
                        table: p.table.source_table(),
                        source: p.source.name.clone(),
                        commit_ts_max: p.outcome.commit_ts_max,
                        warnings: p.warnings.clone(),
                    },
                    Ok(LoadOutcome::AlreadyLoaded { job_id }) => ObjectResult::AlreadyLoaded {
                        job_id,
                        table: p.table.source_table(),
                        source: p.source.name.clone(),
                    },
                    Err(e) if e.later => ObjectResult::Deferred {
                        reason: format!("s3://{bucket}/{}: {}", t.key, e.message),
                    },
                    Err(e) => ObjectResult::Failed {
                        reason: format!("s3://{bucket}/{}: {}", t.key, e.message),
                        retryable: e.retryable,
                    },
                });
            }
            i = j;
        }
        tracked
            .iter_mut()
            .zip(results)
            .map(|(t, result)| {
                let result = result.unwrap_or(ObjectResult::Failed {
                    reason: format!("s3://{bucket}/{}: the warehouse gave no result", t.key),
                    retryable: true,
                });
                self.finish(t, &result);
                result
            })
            .collect()
    }

    fn new_event(&self, bucket: &str, key: &str) -> StatusEvent {
        let plan = plan_object(&self.catalog, Some(bucket), key, None);
        StatusEvent {
            at_micros: now_micros(),
            kind: String::new(),
            source: plan.source.map(|s| s.name.clone()),
            table: plan.object.as_ref().map(|o| o.source_table()),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            code: None,
            job_id: None,
            rows: 0,
            bytes: 0,
            commit_ts_max: None,
            message: None,
            warnings: Vec::new(),
        }
    }

    /// Plans, reads and converts one object; `Err` is its final result (skipped or failed).
    fn prepare(
        &self,
        bucket: &str,
        key: &str,
        event: &mut StatusEvent,
    ) -> Result<Prepared<'_>, ObjectResult> {
        let plan = plan_object(&self.catalog, Some(bucket), key, None);
        let (source, table, object) = match (&plan.skip, plan.source, plan.table, plan.object) {
            (Some(skip), ..) if skip.is_poison() => {
                return Err(ObjectResult::Failed {
                    reason: format!(
                        "s3://{bucket}/{key}: not a key DMS writes ({}): {skip}",
                        skip.code()
                    ),
                    retryable: false,
                });
            }
            (Some(skip), ..) => {
                return Err(ObjectResult::Skipped {
                    code: skip.code().to_owned(),
                    reason: skip.to_string(),
                });
            }
            (None, Some(source), Some(table), Some(object)) => (source, table, object),
            _ => {
                return Err(ObjectResult::Failed {
                    reason: format!("s3://{bucket}/{key}: planning failed"),
                    retryable: false,
                });
            }
        };
        let failed = |e: PortError| ObjectResult::Failed {
            reason: format!("s3://{bucket}/{key}: {}", e.message),
            retryable: e.retryable,
        };
        let meta = self
            .store
            .head(bucket, key)
            .map_err(failed)?
            .ok_or_else(|| {
                failed(PortError::permanent(
                    "the object no longer exists (deleted by a DMS truncate or by hand); nothing was removed from the warehouse",
                ))
            })?;
        event.bytes = meta.size;
        let job_id = JobId::for_object(bucket, &object, Some(&meta.etag), &table.changelog, 0);
        let known = self.warehouse.table_schema(table).map_err(failed)?;
        let input = RangeReader::new(self.store.open(bucket, key, &meta).map_err(failed)?);
        let request = ConvertRequest {
            source,
            table,
            object: &object,
            object_time_micros: meta.last_modified_micros,
            known: known.as_ref(),
        };
        let classify = |e: ferry_convert::ConvertError| {
            failed(PortError {
                message: e.to_string(),
                retryable: e.is_retryable(),
                later: false,
            })
        };
        let conversion = match Conversion::plan(&input, &request) {
            Ok(c) => c,
            // `on_type_change: stop`: the table takes no file with the changed type; the file
            // stays in S3 for a backfill once the mapping says what to do.
            Err(e @ ferry_convert::ConvertError::SchemaConflict { .. })
                if table.on_type_change == OnTypeChange::Stop =>
            {
                return Err(ObjectResult::Skipped {
                    code: TYPE_CHANGED.to_owned(),
                    reason: format!(
                        "s3://{bucket}/{key}: {e}; the table stops (on_type_change: stop): set on_type_change to new_column or fix the source, then backfill"
                    ),
                });
            }
            Err(e) => return Err(classify(e)),
        };
        let (outcome, file, scratch) = if meta.size <= IN_MEMORY_MAX {
            let mut buf = Vec::with_capacity(usize::try_from(meta.size).unwrap_or(0) + (64 << 10));
            let outcome = conversion
                .write(&input, &request, &mut buf)
                .map_err(classify)?;
            (outcome, Converted::InMemory(buf.into()), None)
        } else {
            let scratch = Scratch::new(&self.work_dir, job_id.base()).map_err(failed)?;
            let file = BufWriter::with_capacity(
                1 << 20,
                File::create(&scratch.0).map_err(|e| failed(io_retryable(e)))?,
            );
            let outcome = conversion.write(&input, &request, file).map_err(classify)?;
            (outcome, Converted::OnDisk(scratch.0.clone()), Some(scratch))
        };
        event.rows = outcome.rows;
        event.commit_ts_max = outcome.commit_ts_max;
        let warnings = conversion_warnings(source, &outcome);
        for w in &warnings {
            tracing::warn!(warning = %w, "loaded with a warning");
        }
        event.warnings = warnings.clone();
        Ok(Prepared {
            source,
            table,
            object,
            job_id,
            outcome,
            file,
            warnings,
            _scratch: scratch,
        })
    }

    /// Records and logs one object's result.
    fn finish(&self, t: &mut Tracked<'_>, result: &ObjectResult) {
        let span = tracing::info_span!("object", bucket = %t.event.bucket, key = %t.key);
        let _entered = span.enter();
        let event = &mut t.event;
        event.at_micros = now_micros();
        match result {
            ObjectResult::Loaded { job_id, .. } => {
                event.kind = "loaded".into();
                event.job_id = Some(job_id.clone());
            }
            ObjectResult::AlreadyLoaded { job_id, .. } => {
                event.kind = "already_loaded".into();
                event.job_id = Some(job_id.clone());
                event.rows = 0;
            }
            ObjectResult::Skipped { code, reason } => {
                event.kind = "skipped".into();
                event.code = Some(code.clone());
                event.message = Some(reason.clone());
            }
            ObjectResult::Deferred { reason } => {
                event.kind = "deferred".into();
                event.message = Some(reason.clone());
            }
            ObjectResult::Failed { reason, retryable } => {
                event.kind = if *retryable {
                    "failed_retryable"
                } else {
                    "failed_permanent"
                }
                .into();
                event.message = Some(reason.clone());
            }
        }
        let ms = u64::try_from(t.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let table = event.table.as_deref().unwrap_or("");
        let job_id = event.job_id.as_deref().unwrap_or("");
        match result {
            ObjectResult::Failed { reason, retryable } => tracing::warn!(
                outcome = %event.kind, table, retryable, reason = %reason, bytes = event.bytes, ms, "object failed"
            ),
            ObjectResult::Deferred { reason } => tracing::info!(
                outcome = %event.kind, table, reason = %reason, bytes = event.bytes, ms, "object deferred"
            ),
            _ => tracing::info!(
                outcome = %event.kind, table, job_id, rows = event.rows, bytes = event.bytes, ms, "object done"
            ),
        }
        if let Err(e) = self.warehouse.record(event) {
            tracing::warn!(key = %t.key, error = %e, "status not recorded");
        }
    }
}

/// The skip code of a file refused by a table whose `on_type_change` is `stop`.
pub const TYPE_CHANGED: &str = "type_changed";

/// What a conversion noticed and could not fix, as `code: detail` lines for status and logs.
fn conversion_warnings(source: &Source, outcome: &ConvertOutcome) -> Vec<String> {
    let mut out = Vec::new();
    if outcome.timestamp_column_missing {
        out.push(format!(
            "timestamp_column_missing: the mapping's DMS timestamp column {:?} is not in the file; its rows took the file's time (check the endpoint's TimestampColumnName)",
            source.timestamp_column.as_deref().unwrap_or("")
        ));
    }
    if outcome.commit_ts_clamped > 0 {
        out.push(format!(
            "commit_ts_clamped: {} commit times after the file's own time were taken as the file's time",
            outcome.commit_ts_clamped
        ));
    }
    if outcome.lob_at_limit > 0 {
        out.push(format!(
            "lob_at_limit: {} values of {} reach the task's LobMaxSize ({} KB), where DMS cuts LOBs; raise LobMaxSize (source.dms.lob_max_size_kb) and reload the table",
            outcome.lob_at_limit,
            outcome.lob_columns.join(", "),
            source.lob_max_size_kb
        ));
    }
    if !outcome.excluded_arrived.is_empty() {
        out.push(format!(
            "excluded_arrived: excluded column(s) {} reached S3 and were dropped; the DMS task's table mappings are older than the mapping: apply infra/dms (infra/apply-generated.sh)",
            outcome.excluded_arrived.join(", ")
        ));
    }
    if !outcome.hints_unused.is_empty() {
        out.push(format!(
            "hint_unused: the mapping hints column(s) {} that this file does not have; a misspelt hint leaves the real column's type to the data (check the names, or run ferry mappings check --against)",
            outcome.hints_unused.join(", ")
        ));
    }
    out
}

impl Prepared<'_> {
    fn request<'a>(&'a self, bucket: &'a str) -> LoadRequest<'a> {
        LoadRequest {
            job_id: &self.job_id,
            source: self.source,
            table: self.table,
            object: &self.object,
            bucket,
            file_seq: &self.outcome.file_seq,
            schema: &self.outcome.schema,
            added: &self.outcome.added,
            file: &self.file,
            rows: self.outcome.rows,
            ops: self.outcome.ops,
            commit_ts_min: self.outcome.commit_ts_min,
            commit_ts_max: self.outcome.commit_ts_max,
        }
    }
}

fn io_retryable(e: std::io::Error) -> PortError {
    PortError::retryable(format!("scratch file: {e}"))
}

/// A converted file in the work folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(dir: &Path, base: &str) -> Result<Scratch, PortError> {
        std::fs::create_dir_all(dir).map_err(io_retryable)?;
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        Ok(Scratch(dir.join(format!(
            "{base}-{}-{n}.parquet",
            std::process::id()
        ))))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
