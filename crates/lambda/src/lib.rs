//! The loader Lambda's library: cold-start setup from the environment and the per-invocation
//! handler, so that tests drive exactly what the `bootstrap` binary runs.
//!
//! # Configuration (environment)
//! - `FERRY_MAPPINGS`: the mappings folder (default: `mappings` beside the binary, i.e. in the
//!   deployment package). Loaded and validated at cold start; a bad set fails init.
//! - `FERRY_DLQ_URL`: the dead-letter queue permanent failures are sent to (required).
//! - `FERRY_LOCK_TABLE`: the DynamoDB table of replica apply locks (required: two invocations
//!   must never apply one replica at once, see `ferry_aws::lock`).
//! - GCP credentials, first found: `FERRY_GCP_CREDENTIALS_SECRET` (a Secrets Manager secret id
//!   holding a credential JSON), `FERRY_GCP_CREDENTIALS` (the JSON itself, from the environment),
//!   `FERRY_GCP_CREDENTIALS_FILE` or `GOOGLE_APPLICATION_CREDENTIALS`
//!   (a credential file, e.g. the packaged workload-identity `external_account` configuration,
//!   which holds no secret), `FERRY_BQ_TOKEN` (a bearer token, for emulators; `none` sends none).
//! - `FERRY_HASH_KEY_SECRET`: the Secrets Manager secret holding the key of the mappings'
//!   `hash` columns (required when a mapping hashes one).
//! - `FERRY_BQ_BASE_URL`: BigQuery endpoint override (test servers, emulators).
//! - `FERRY_BQ_PROJECT`: the project load jobs run in (default: the first mapping's project).
//! - `FERRY_MAX_PARALLEL` (tables at once, default 4), `FERRY_WORK_DIR` (default `/tmp/ferry`).
//! - `FERRY_LOAD_JOBS_PER_TABLE_DAY` (default 1,000), `FERRY_COMBINE_FROM` (default 0.5): the
//!   load-job budget (see `ferry_bigquery::warehouse`).
//! - `FERRY_QUEUE_URL`: the loader's own queue. When set, batches run on the schedule of
//!   `ferry_pipeline::schedule` (one load job per table per load slot, one apply per apply
//!   slot; what waits is sent back to this queue), with `FERRY_PROJECT_LOAD_JOBS_PER_DAY`
//!   (default 45,000) and `FERRY_APPLY_EVERY` (default `15m`, a mapping's `apply_every` wins).
//!
//! # Layout
//! - [`Loader`]: the set-up pipeline and its handler.
//! - [`metrics`]: CloudWatch Embedded Metric Format lines per table.

pub mod integrity;
pub mod metrics;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_aws::{DynamoDbLock, DynamoDbPending, S3Store, SqsDeadLetters, SqsRequeue};
use ferry_bigquery::{Auth, BigQueryWarehouse, Client, ClientConfig, WarehouseOptions};
use ferry_core::Catalog;
use ferry_core::event::SqsEvent;
use ferry_pipeline::ports::{ApplyLock, PendingSets, ProcessLock, ProcessPending, Requeue};
use ferry_pipeline::schedule::{Schedule, ScheduleSettings};
use ferry_pipeline::{
    BatchReport, HandlerOptions, Pipeline, Scheduler, handle_batch, handle_batch_scheduled,
};

/// The pipeline as deployed: S3 in, BigQuery out, SQS for dead letters.
pub type LoaderPipeline = Pipeline<S3Store, Arc<BigQueryWarehouse>>;

/// Everything one container needs, built once at cold start.
pub struct Loader {
    /// The pipeline.
    pub pipeline: Arc<LoaderPipeline>,
    /// Where permanent failures go.
    pub dead_letters: Arc<SqsDeadLetters>,
    /// Tables processed at once.
    pub max_parallel: usize,
    /// The schedule, when batches run on one.
    pub scheduled: Option<Scheduled>,
}

/// What a scheduled loader keeps: the schedule, its slot claims and its own queue.
pub struct Scheduled {
    /// Every table's slots.
    pub schedule: Schedule,
    /// Where slots are claimed.
    pub slots: Arc<dyn ApplyLock>,
    /// The loader's own queue.
    pub requeue: Arc<dyn Requeue>,
    /// Where files wait for their table's next load slot.
    pub pending: Arc<dyn PendingSets>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The mappings folder: `FERRY_MAPPINGS`, else `mappings` beside the executable.
pub fn mappings_dir() -> PathBuf {
    if let Some(dir) = env("FERRY_MAPPINGS") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mappings")))
        .unwrap_or_else(|| PathBuf::from("mappings"))
}

/// Loads and validates the mappings; every problem is listed with file and field.
pub fn load_catalog(dir: &std::path::Path) -> Result<Catalog, String> {
    Catalog::load_dir(dir).map_err(|problems| {
        let mut msg = format!(
            "{} problem(s) in the mappings at {}:",
            problems.len(),
            dir.display()
        );
        for p in problems {
            msg.push_str(&format!(
                "\n  {}: {}: {} ({})",
                p.file, p.path, p.message, p.fix
            ));
        }
        msg
    })
}

/// BigQuery credentials from the environment (see the crate docs). Never logged.
pub async fn auth_from_env(aws: &ferry_aws::config::SdkConfig) -> Result<Auth, String> {
    if let Some(secret) = env("FERRY_GCP_CREDENTIALS_SECRET") {
        let client = ferry_aws::config::secrets(aws);
        let json = ferry_aws::config::secret_string(&client, &secret).await?;
        return Auth::from_credentials_json(&json).map_err(|e| e.to_string());
    }
    if let Some(json) = env("FERRY_GCP_CREDENTIALS") {
        return Auth::from_credentials_json(&json).map_err(|e| e.to_string());
    }
    if let Some(path) =
        env("FERRY_GCP_CREDENTIALS_FILE").or_else(|| env("GOOGLE_APPLICATION_CREDENTIALS"))
    {
        let json = std::fs::read_to_string(&path)
            .map_err(|e| format!("GCP credential file {path}: {e}"))?;
        return Auth::from_credentials_json(&json).map_err(|e| e.to_string());
    }
    match env("FERRY_BQ_TOKEN").as_deref() {
        Some("none") => Ok(Auth::None),
        Some(token) => Ok(Auth::Static(token.to_owned())),
        None => Err("no GCP credentials: set FERRY_GCP_CREDENTIALS_SECRET, FERRY_GCP_CREDENTIALS, FERRY_GCP_CREDENTIALS_FILE or GOOGLE_APPLICATION_CREDENTIALS".into()),
    }
}

/// The key for the mappings' `hash` columns: the Secrets Manager secret
/// `FERRY_HASH_KEY_SECRET`, read when a mapping hashes a column. A mapping that hashes without
/// a configured key fails cold start, rather than dead-lettering every file of the table.
pub async fn hash_key_from_env(
    aws: &ferry_aws::config::SdkConfig,
    catalog: &Catalog,
) -> Result<Option<ferry_core::hashkey::HashKey>, String> {
    if !catalog.hashes_columns() {
        return Ok(None);
    }
    let secret = env("FERRY_HASH_KEY_SECRET").ok_or(
        "a mapping hashes columns but FERRY_HASH_KEY_SECRET (the Secrets Manager secret holding the hash key) is not set",
    )?;
    let client = ferry_aws::config::secrets(aws);
    let value = ferry_aws::config::secret_string(&client, &secret).await?;
    ferry_core::hashkey::HashKey::new(value.trim_end().as_bytes())
        .map(Some)
        .map_err(|e| format!("secret {secret}: {e}"))
}

/// A BigQuery client for `project` with the credentials of [`auth_from_env`] and
/// `FERRY_BQ_BASE_URL` (test servers and emulators), as the CLI's BigQuery commands use it.
pub async fn bigquery_client_from_env(
    aws: &ferry_aws::config::SdkConfig,
    project: &str,
) -> Result<Client, String> {
    let auth = auth_from_env(aws).await?;
    let mut config = ClientConfig::default();
    if let Some(url) = env("FERRY_BQ_BASE_URL") {
        config.base_url = url;
    }
    Client::new(config, auth, project).map_err(|e| e.to_string())
}

/// What a [`Loader`] is built from.
pub struct LoaderParts {
    /// The validated mappings.
    pub catalog: Catalog,
    /// S3, where DMS writes.
    pub s3: aws_sdk_s3::Client,
    /// SQS, for the dead-letter queue.
    pub sqs: aws_sdk_sqs::Client,
    /// The dead-letter queue's URL.
    pub dlq_url: String,
    /// BigQuery.
    pub bigquery: Client,
    /// The runtime the blocking ports run their I/O on.
    pub handle: tokio::runtime::Handle,
    /// Scratch space for large converted files.
    pub work_dir: PathBuf,
    /// Tables processed at once.
    pub max_parallel: usize,
    /// Load attempts, waits and the load-job budget.
    pub warehouse: WarehouseOptions,
    /// The replica apply lock shared by every invocation (DynamoDB in production); the
    /// schedule claims its slots there too.
    pub lock: Option<Arc<dyn ApplyLock>>,
    /// The pending sets of the schedule (DynamoDB in production; in-process without).
    pub pending: Option<Arc<dyn PendingSets>>,
    /// Run batches on a schedule: its settings and the loader's own queue URL.
    pub schedule: Option<(ScheduleSettings, String)>,
}

impl Loader {
    /// Builds the loader from its parts.
    pub fn new(parts: LoaderParts) -> Loader {
        let mut options = parts.warehouse;
        if let Some((settings, _)) = &parts.schedule {
            // A slot's files always share one load job; the live view reads back far enough
            // for the apply interval.
            options.combine_from = 0.0;
            options.apply_every = settings.apply_every;
        }
        let mut warehouse = BigQueryWarehouse::new(parts.bigquery, parts.handle.clone(), options);
        let slots: Arc<dyn ApplyLock> = match &parts.lock {
            Some(lock) => lock.clone(),
            None => Arc::new(ProcessLock::default()),
        };
        if let Some(lock) = parts.lock {
            warehouse = warehouse.with_lock(lock);
        }
        let pending = parts
            .pending
            .unwrap_or_else(|| Arc::new(ProcessPending::default()));
        let scheduled = parts.schedule.map(|(settings, queue_url)| Scheduled {
            schedule: Schedule::new(&parts.catalog, settings),
            slots,
            pending,
            requeue: Arc::new(SqsRequeue::new(
                parts.sqs.clone(),
                parts.handle.clone(),
                queue_url,
            )),
        });
        let warehouse = Arc::new(warehouse);
        Loader {
            pipeline: Arc::new(Pipeline {
                catalog: Arc::new(parts.catalog),
                store: S3Store::new(parts.s3, parts.handle.clone()),
                warehouse,
                work_dir: parts.work_dir,
            }),
            dead_letters: Arc::new(SqsDeadLetters::new(parts.sqs, parts.handle, parts.dlq_url)),
            max_parallel: parts.max_parallel,
            scheduled,
        }
    }

    /// Cold start: mappings, AWS clients, BigQuery client, from the environment.
    pub async fn from_env() -> Result<Loader, String> {
        let mut catalog = load_catalog(&mappings_dir())?;
        let aws = ferry_aws::config::load().await;
        if let Some(key) = hash_key_from_env(&aws, &catalog).await? {
            catalog = catalog.with_hash_key(key);
        }
        let dlq_url = env("FERRY_DLQ_URL").ok_or("FERRY_DLQ_URL is not set")?;
        let lock_table = env("FERRY_LOCK_TABLE").ok_or(
            "FERRY_LOCK_TABLE is not set: the DynamoDB table that makes replica applies one writer at a time",
        )?;
        let auth = auth_from_env(&aws).await?;
        let project = env("FERRY_BQ_PROJECT")
            .or_else(|| catalog.sources().first().map(|s| s.project.clone()))
            .ok_or("no BigQuery project: the mappings are empty and FERRY_BQ_PROJECT is not set")?;
        let mut config = ClientConfig::default();
        if let Some(url) = env("FERRY_BQ_BASE_URL") {
            config.base_url = url;
        }
        let bigquery = Client::new(config, auth, &project).map_err(|e| e.to_string())?;
        let max_parallel = env("FERRY_MAX_PARALLEL")
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        let work_dir = PathBuf::from(env("FERRY_WORK_DIR").unwrap_or_else(|| "/tmp/ferry".into()));
        let warehouse = warehouse_options_from_env()?;
        let schedule = match env("FERRY_QUEUE_URL") {
            Some(url) => Some((schedule_settings_from_env(&warehouse)?, url)),
            None => None,
        };
        Ok(Loader::new(LoaderParts {
            catalog,
            s3: ferry_aws::config::s3(&aws),
            sqs: ferry_aws::config::sqs(&aws),
            dlq_url,
            bigquery,
            handle: tokio::runtime::Handle::current(),
            work_dir,
            max_parallel,
            warehouse,
            lock: Some(Arc::new(DynamoDbLock::new(
                ferry_aws::config::dynamodb(&aws),
                tokio::runtime::Handle::current(),
                lock_table.clone(),
            ))),
            pending: Some(Arc::new(DynamoDbPending::new(
                ferry_aws::config::dynamodb(&aws),
                tokio::runtime::Handle::current(),
                lock_table,
            ))),
            schedule,
        }))
    }

    /// Handles one invocation. `remaining` is the time left before its deadline. An `Err`
    /// fails the invocation, so SQS delivers the whole batch again (only on a panic: every
    /// other failure is reported per message).
    pub async fn handle(
        &self,
        event: SqsEvent,
        remaining: Option<Duration>,
    ) -> Result<BatchReport, String> {
        let started = Instant::now();
        let options = HandlerOptions {
            max_parallel: self.max_parallel,
            deadline: remaining.map(|r| started + r),
            ..HandlerOptions::default()
        };
        let pipeline = self.pipeline.clone();
        let dead_letters = self.dead_letters.clone();
        let messages = event.records.len();
        let scheduled = self.scheduled.as_ref().map(|s| {
            (
                s.schedule.clone(),
                s.slots.clone(),
                s.requeue.clone(),
                s.pending.clone(),
            )
        });
        let report = tokio::task::spawn_blocking(move || match scheduled {
            Some((schedule, slots, requeue, pending)) => {
                let clock = ferry_pipeline::now_micros;
                let scheduler = Scheduler {
                    schedule: &schedule,
                    slots: slots.as_ref(),
                    requeue: requeue.as_ref(),
                    pending: pending.as_ref(),
                    clock: &clock,
                };
                handle_batch_scheduled(
                    &pipeline,
                    dead_letters.as_ref(),
                    &scheduler,
                    &event,
                    options,
                )
            }
            None => handle_batch(&pipeline, dead_letters.as_ref(), &event, options),
        })
        .await
        .map_err(|e| format!("the handler panicked; the whole batch will be retried: {e}"))?;
        for line in metrics::lines(&report, started.elapsed(), now_millis()) {
            println!("{line}");
        }
        tracing::info!(
            messages,
            failed = report.response.batch_item_failures.len(),
            dead_lettered = report.dead_lettered.len(),
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "batch done"
        );
        Ok(report)
    }
}

/// The load-job budget from the environment: `FERRY_LOAD_JOBS_PER_TABLE_DAY` (default 1,000)
/// and `FERRY_COMBINE_FROM` (share of the budget from which a batch's files of a table share one
/// load job, default 0.5).
pub fn warehouse_options_from_env() -> Result<WarehouseOptions, String> {
    let mut o = WarehouseOptions::default();
    if let Some(v) = env("FERRY_LOAD_JOBS_PER_TABLE_DAY") {
        o.load_jobs_per_table_day = v
            .parse()
            .map_err(|_| format!("FERRY_LOAD_JOBS_PER_TABLE_DAY={v:?} is not a number"))?;
    }
    if let Some(v) = env("FERRY_COMBINE_FROM") {
        o.combine_from = v
            .parse()
            .ok()
            .filter(|f: &f64| (0.0..=1.0).contains(f))
            .ok_or_else(|| format!("FERRY_COMBINE_FROM={v:?} is not a share between 0 and 1"))?;
    }
    Ok(o)
}

/// The schedule from the environment: `FERRY_PROJECT_LOAD_JOBS_PER_DAY` (default 45,000),
/// `FERRY_APPLY_EVERY` (default `15m`), and the per-table budget of `warehouse`.
pub fn schedule_settings_from_env(
    warehouse: &WarehouseOptions,
) -> Result<ScheduleSettings, String> {
    let mut s = ScheduleSettings {
        table_load_jobs_per_day: warehouse.load_jobs_per_table_day,
        ..ScheduleSettings::default()
    };
    if let Some(v) = env("FERRY_PROJECT_LOAD_JOBS_PER_DAY") {
        s.project_load_jobs_per_day = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            format!("FERRY_PROJECT_LOAD_JOBS_PER_DAY={v:?} is not a positive number")
        })?;
    }
    if let Some(v) = env("FERRY_APPLY_EVERY") {
        s.apply_every = ferry_core::mapping::parse_interval(&v)
            .filter(|d| d.as_secs() >= 1)
            .ok_or_else(|| format!("FERRY_APPLY_EVERY={v:?} is not an interval such as 15m"))?;
    }
    Ok(s)
}

/// The log filter for Lambda's `AWS_LAMBDA_LOG_LEVEL` (TRACE, DEBUG, INFO, WARN, ERROR, FATAL):
/// the level applies to ferry's own crates only; every dependency stays at `warn`, so that
/// raising the level never makes the HTTP, TLS or SDK crates log requests, headers or
/// credentials. An unknown or missing level is `info`.
pub fn log_filter(level: Option<&str>) -> String {
    let level = match level.map(str::to_ascii_lowercase).as_deref() {
        Some(l @ ("trace" | "debug" | "info" | "warn" | "error")) => l.to_owned(),
        Some("fatal") => "error".to_owned(),
        _ => "info".to_owned(),
    };
    let crates = [
        "bootstrap",
        "ferry_lambda",
        "ferry_pipeline",
        "ferry_convert",
        "ferry_core",
        "ferry_bigquery",
        "ferry_aws",
    ];
    let mut filter = "warn".to_owned();
    for c in crates {
        filter.push_str(&format!(",{c}={level}"));
    }
    filter
}

/// Milliseconds since the epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod log_tests {
    #[test]
    fn the_log_level_reaches_ferry_only() {
        let f = super::log_filter(Some("DEBUG"));
        assert!(f.starts_with("warn,"), "{f}");
        assert!(
            f.contains("ferry_bigquery=debug") && f.contains("bootstrap=debug"),
            "{f}"
        );
        assert!(!f.contains("hyper") && !f.contains("aws_smithy"), "{f}");
        assert_eq!(super::log_filter(None), super::log_filter(Some("nonsense")));
        assert!(super::log_filter(Some("fatal")).contains("ferry_core=error"));
    }
}
