//! The load-job budget and group loads.
//!
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
//! Guarantees: no table is sent more than `load_jobs_per_table_day` load jobs in a rolling 24
//! hours by this writer's count; grouped objects keep the exactly-once guarantee of
//! [`super::chain`] through their claims.

use super::*;

/// Combined files up to this size are built in memory; larger ones in a temporary file.
pub(super) const COMBINE_IN_MEMORY_MAX: u64 = 32 << 20;

/// Whether a table with `used` load jobs in the last 24 hours loads a batch's files as one job
/// (from `combine_from` of the budget on).
pub fn combines(options: &WarehouseOptions, used: u64) -> bool {
    used as f64 >= options.combine_from * f64::from(options.load_jobs_per_table_day)
}

/// Whether a table with `used` load jobs in the last 24 hours gets no new one (the objects are
/// deferred: retry later).
pub fn over_budget(options: &WarehouseOptions, used: u64) -> bool {
    used >= u64::from(options.load_jobs_per_table_day)
}

/// Per-table load-job counting for the budget.
#[derive(Debug, Default)]
pub(super) struct Counter {
    seed: u64,
    seeded_at: Option<std::time::Instant>,
    local: std::collections::VecDeque<std::time::Instant>,
}

/// A temporary file removed on drop.
pub(super) struct ScratchFile(std::path::PathBuf);

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The group load job id a claim names, from the claim's SQL.
pub(super) fn claimed_group(sql: &str) -> Option<String> {
    let rest = sql.strip_prefix("SELECT '")?;
    let (id, tail) = rest.split_once('\'')?;
    (tail == " AS ferry_group_load" && id.starts_with("ferry_")).then(|| id.to_owned())
}

/// The group load's job id: the table's readable name and a hash of the members' job ids.
pub(super) fn group_job_id(table: &TableRef, member_ids: &[String]) -> String {
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

pub(super) fn destination_of(configuration: &Value) -> Option<TableRef> {
    let d = configuration.pointer("/load/destinationTable")?;
    Some(TableRef {
        project: d.get("projectId")?.as_str()?.to_owned(),
        dataset: d.get("datasetId")?.as_str()?.to_owned(),
        table: d.get("tableId")?.as_str()?.to_owned(),
    })
}

impl BigQueryWarehouse {
    /// Counts a load job against its table's budget.
    pub(super) fn count_job(&self, configuration: &Value) {
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
    pub(super) async fn jobs_last_day(&self, table: &TableRef, location: Option<&str>) -> u64 {
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
    pub(super) async fn check_budget(
        &self,
        table: &TableRef,
        location: Option<&str>,
    ) -> Result<u64, BqError> {
        let used = self.jobs_last_day(table, location).await;
        if over_budget(&self.options, used) {
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
            // A group load carries several objects: its labels name the group and its size.
            let mut configuration = self.configuration_for(last);
            if let Some(labels) = configuration
                .get_mut("labels")
                .and_then(Value::as_object_mut)
            {
                labels.insert("ferry_key".into(), Value::from("group"));
                labels.insert("ferry_files".into(), Value::from(files.len().to_string()));
            }
            let outcome = self
                .load_combined(&group, location, &configuration, &files)
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

    /// The group's load job over the concatenated files (no attempts: a failed group load is
    /// retried as a new group, under the members' next ids).
    pub(super) async fn load_combined(
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
}
