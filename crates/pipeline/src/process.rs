//! One object, from "it landed" to "its rows are in the warehouse": plan, read, convert, load.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_convert::{Conversion, ConvertRequest, RangeReader};
use ferry_core::mapping::{Catalog, TableMapping};
use ferry_core::plan_object;

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
const IN_MEMORY_MAX: u64 = 16 << 20;

/// Microseconds since the epoch, now.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl<S: ObjectStore, W: Warehouse> Pipeline<S, W> {
    /// Processes one object and records what happened (except for retryable failures of the
    /// status store itself, which cannot be recorded).
    pub fn process_object(&self, bucket: &str, key: &str) -> ObjectResult {
        let started = std::time::Instant::now();
        let span = tracing::info_span!("object", bucket, key);
        let _entered = span.enter();
        let plan = plan_object(&self.catalog, Some(bucket), key, None);
        let mut event = StatusEvent {
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
        };
        let result = match (&plan.skip, plan.source, plan.table, plan.object.as_ref()) {
            (Some(skip), ..) => ObjectResult::Skipped {
                code: skip.code().to_owned(),
                reason: skip.to_string(),
            },
            (None, Some(source), Some(table), Some(object)) => {
                match self.load(bucket, key, source, table, object, &mut event) {
                    Ok(LoadOutcome::Loaded { job_id }) => ObjectResult::Loaded {
                        job_id,
                        rows: event.rows,
                        table: table.source_table(),
                        source: source.name.clone(),
                    },
                    Ok(LoadOutcome::AlreadyLoaded { job_id }) => ObjectResult::AlreadyLoaded {
                        job_id,
                        table: table.source_table(),
                        source: source.name.clone(),
                    },
                    Err(e) => ObjectResult::Failed {
                        reason: format!("s3://{bucket}/{key}: {}", e.message),
                        retryable: e.retryable,
                    },
                }
            }
            _ => ObjectResult::Failed {
                reason: format!("s3://{bucket}/{key}: planning failed"),
                retryable: false,
            },
        };
        event.at_micros = now_micros();
        match &result {
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
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let table = event.table.as_deref().unwrap_or("");
        let job_id = event.job_id.as_deref().unwrap_or("");
        match &result {
            ObjectResult::Failed { reason, retryable } => tracing::warn!(
                outcome = %event.kind, table, retryable, reason = %reason, bytes = event.bytes, ms, "object failed"
            ),
            _ => tracing::info!(
                outcome = %event.kind, table, job_id, rows = event.rows, bytes = event.bytes, ms, "object done"
            ),
        }
        if let Err(e) = self.warehouse.record(&event) {
            // Status is best-effort; the data path's result stands.
            tracing::warn!(bucket, key, error = %e, "status not recorded");
        }
        result
    }

    fn load(
        &self,
        bucket: &str,
        key: &str,
        source: &ferry_core::Source,
        table: &TableMapping,
        object: &ferry_core::DmsObject,
        event: &mut StatusEvent,
    ) -> Result<LoadOutcome, PortError> {
        let meta = self.store.head(bucket, key)?.ok_or_else(|| {
            PortError::permanent(
                "the object no longer exists (deleted by a DMS truncate or by hand); nothing was removed from the warehouse",
            )
        })?;
        event.bytes = meta.size;
        let job_id =
            ferry_core::JobId::for_object(bucket, object, Some(&meta.etag), &table.changelog, 0);
        let known = self.warehouse.table_schema(table)?;
        let input = RangeReader::new(self.store.open(bucket, key, &meta)?);
        let request = ConvertRequest {
            source,
            table,
            object,
            object_time_micros: meta.last_modified_micros,
            known: known.as_ref(),
        };
        let classify = |e: ferry_convert::ConvertError| PortError {
            message: e.to_string(),
            retryable: e.is_retryable(),
        };
        let conversion = Conversion::plan(&input, &request).map_err(classify)?;
        // Small objects convert in memory; large ones to a scratch file, so memory stays bounded.
        let scratch;
        let (outcome, converted) = if meta.size <= IN_MEMORY_MAX {
            let mut buf = Vec::with_capacity(usize::try_from(meta.size).unwrap_or(0) + (64 << 10));
            let outcome = conversion
                .write(&input, &request, &mut buf)
                .map_err(classify)?;
            (outcome, Converted::InMemory(buf.into()))
        } else {
            scratch = Scratch::new(&self.work_dir, job_id.base())?;
            let file =
                BufWriter::with_capacity(1 << 20, File::create(&scratch.0).map_err(io_retryable)?);
            let outcome = conversion.write(&input, &request, file).map_err(classify)?;
            (outcome, Converted::OnDisk(scratch.0.clone()))
        };
        event.rows = outcome.rows;
        event.commit_ts_max = outcome.commit_ts_max;
        self.warehouse.load(&LoadRequest {
            job_id: &job_id,
            source,
            table,
            object,
            bucket,
            schema: &outcome.schema,
            added: &outcome.added,
            file: &converted,
            rows: outcome.rows,
            ops: outcome.ops,
            commit_ts_min: outcome.commit_ts_min,
            commit_ts_max: outcome.commit_ts_max,
        })
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
