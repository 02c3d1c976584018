//! The replica apply.
//!
//! Every object loaded (or found already loaded) joins its table's pending apply window; `apply`
//! runs the MERGE statements over exactly those files and their commit-time range, then clears
//! the window. A failed apply keeps the window and reports a retryable error, so the messages
//! come back and apply again (MERGE is idempotent).
//!
//! Guarantees: with a lock ([`BigQueryWarehouse::with_lock`]) no two writers run the apply
//! statements of one replica at once, across processes; an apply whose statements may still run
//! in BigQuery keeps the lock until it expires.

use super::*;
use ferry_core::sql::Rebuild;

/// How long an apply lock outlives the wait for its statements: a MERGE whose wait ran out may
/// still run in BigQuery, and no other writer may start one on the table meanwhile.
pub(super) const LOCK_GRACE: Duration = Duration::from_secs(600);

/// The longest wait for another writer's apply lock before the apply is left to the next
/// delivery.
pub(super) const LOCK_WAIT: Duration = Duration::from_secs(60);

impl BigQueryWarehouse {
    /// Runs `apply` holding the replica's apply lock, waiting up to [`LOCK_WAIT`] (and the time
    /// the invocation has) for another writer to finish.
    pub(super) fn locked<T>(
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

    pub(super) fn remember_for_apply(&self, request: &LoadRequest<'_>) {
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
                        rebuild: Rebuild::No,
                    },
                    request.source.location.clone(),
                )
            });
        if !w.files.iter().any(|f| f == &request.object.key) {
            w.files.push(request.object.key.clone());
        }
        // A load run's first file rebuilds the replica from that run (the newest one wins).
        if request.object.is_run_start() {
            let newer = match &w.rebuild {
                Rebuild::From(seq) => request.file_seq > seq.as_str(),
                _ => true,
            };
            if newer {
                w.rebuild = Rebuild::From(request.file_seq.to_owned());
            }
        }
        let widen = |cur: Option<i64>, new: Option<i64>, min: bool| match (cur, new) {
            (Some(a), Some(b)) => Some(if min { a.min(b) } else { a.max(b) }),
            (a, b) => a.or(b),
        };
        w.commit_ts_min = widen(w.commit_ts_min, request.commit_ts_min, true);
        w.commit_ts_max = widen(w.commit_ts_max, request.commit_ts_max, false);
    }

    /// Runs the replica statements for a window (also usable for a full re-apply).
    pub async fn run_apply(
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
            changed += self.run(&statement, location, "merge").await?;
        }
        Ok(changed)
    }
}
