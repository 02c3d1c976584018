//! The exactly-once job-id chain walk.
//!
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
//! Guarantees: at most one attempt of an object's load succeeds, whatever the sequence of
//! crashes, timeouts, duplicate deliveries and redrives; an object already loaded uploads
//! nothing.

use super::*;

/// What a used job id amounts to for an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fate {
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
    pub(super) fn of(job: &JobState) -> Fate {
        match (job.is_done(), &job.error) {
            (false, _) => Fate::Running,
            (true, Some(_)) => Fate::Failed,
            (true, None) => Fate::Loaded(job.job_id.clone()),
        }
    }
}

/// Where an object's chain stands.
pub(super) enum Walk {
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

impl BigQueryWarehouse {
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
            let mut labelled = configuration.clone();
            if let Some(labels) = labelled.get_mut("labels").and_then(Value::as_object_mut) {
                labels.insert(
                    "ferry_attempt".into(),
                    Value::from(id.attempt().to_string()),
                );
            }
            let Some(state) = self
                .client
                .insert_load_job(&name, location, &labelled, data)
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
    pub(super) async fn fate(&self, id: &str, location: Option<&str>) -> Result<Fate, BqError> {
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
    pub(super) async fn settle(&self, id: &str, location: Option<&str>) -> Result<Fate, BqError> {
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
    pub(super) async fn walk(&self, base: &JobId, location: Option<&str>) -> Result<Walk, BqError> {
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

    /// One object through its own chain, from its first unused id.
    pub(super) async fn load_one(
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

    pub(super) async fn load_async(
        &self,
        request: &LoadRequest<'_>,
    ) -> Result<LoadOutcome, BqError> {
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
}
