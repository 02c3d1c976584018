//! A small BigQuery REST client: the calls ferry makes and nothing else.
//!
//! - load jobs through the upload endpoint: `multipart` for files in memory, `resumable` in
//!   chunks (multiples of 256 KiB) for files on disk, so memory stays bounded by the chunk size;
//! - `jobs.get`, `tables.get`, `jobs.query` / `getQueryResults`.
//!
//! Every call is retried with exponential backoff and jitter on retryable failures (429, 5xx,
//! `backendError`, `rateLimitExceeded`, transport errors, malformed bodies). Retrying is safe for
//! each of them: job inserts carry their job id (a repeat answers 409), queries carry a request
//! id, DDL is `IF NOT EXISTS` and the replica MERGE is idempotent. The HTTP status is kept with
//! every error, also for bodies without BigQuery's `errors` array.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, LOCATION, RANGE};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::auth::Auth;
use crate::error::BqError;

/// The public BigQuery endpoint.
pub const DEFAULT_BASE_URL: &str = "https://bigquery.googleapis.com";

/// Resumable upload chunks must be multiples of this.
pub const CHUNK_QUANTUM: usize = 256 << 10;

/// Data from this size on is uploaded resumably, also from memory: multipart is meant for small
/// files, and the official clients switch at 5 MiB (BigQuery "Loading data with the upload API";
/// google-cloud-python's resumable threshold).
pub const RESUMABLE_FROM: usize = 5 << 20;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Scheme, host and port of the REST API (override for test servers and emulators).
    pub base_url: String,
    /// Tries per call (the first included) for retryable failures.
    pub max_tries: u32,
    /// Backoff before the second try; doubled each time, with jitter.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Resumable upload chunk size (rounded up to a multiple of 256 KiB).
    pub chunk_size: usize,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            base_url: DEFAULT_BASE_URL.to_owned(),
            max_tries: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            chunk_size: 8 << 20,
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// The state of a job, as `jobs.get` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    /// The job id.
    pub job_id: String,
    /// `PENDING`, `RUNNING` or `DONE`.
    pub state: String,
    /// The error that ended a `DONE` job, if it failed.
    pub error: Option<JobError>,
    /// Rows a load job wrote, when reported.
    pub output_rows: Option<u64>,
    /// `LOAD`, `QUERY`, ... (`configuration.jobType`), when reported.
    pub job_type: Option<String>,
    /// A query job's SQL.
    pub query: Option<String>,
    /// When the job was created, ms since the epoch.
    pub created_millis: Option<i64>,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_done(&self) -> bool {
        self.state == "DONE"
    }
}

/// `status.errorResult` of a job.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JobError {
    /// BigQuery's reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// The message.
    #[serde(default)]
    pub message: String,
}

/// A load job's data.
#[derive(Debug, Clone, Copy)]
pub enum Upload<'a> {
    /// Bytes in memory: one multipart request.
    Bytes(&'a Bytes),
    /// A file: a resumable session, streamed in chunks.
    File(&'a Path),
}

/// The result rows of a query, as JSON (`rows[].f[].v`), with the schema's column names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each cell as BigQuery returned it (strings, nulls, nested records).
    pub rows: Vec<Vec<Value>>,
    /// Rows a DML statement changed.
    pub dml_affected_rows: Option<u64>,
}

/// The BigQuery REST client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    config: ClientConfig,
    auth: Auth,
    project: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<ErrorItem>,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    reason: Option<String>,
}

/// An HTTP response, read whole (BigQuery's JSON answers are small).
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self, context: &str) -> Result<Value, BqError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            BqError::malformed(
                context,
                format!("HTTP {} with an unreadable body: {e}", self.status.as_u16()),
            )
        })
    }

    fn error(&self, context: &str) -> BqError {
        let parsed: Option<ErrorBody> = serde_json::from_slice(&self.body).ok();
        let detail = parsed.and_then(|b| b.error);
        let (reason, message) = match detail {
            Some(d) => (
                d.errors.into_iter().find_map(|e| e.reason).or(d
                    .status
                    .filter(|s| s == "ALREADY_EXISTS")
                    .map(|_| "duplicate".to_owned())),
                d.message,
            ),
            None => (
                None,
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned(),
            ),
        };
        BqError::from_response(context, Some(self.status.as_u16()), reason, message)
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn location_param(location: Option<&str>) -> String {
    location
        .map(|l| format!("location={}", encode(l)))
        .unwrap_or_default()
}

/// Milliseconds since the epoch.
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A pseudo-random fraction in [0.5, 1.0) for backoff jitter (no RNG dependency needed).
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    0.5 + f64::from(nanos % 1000) / 2000.0
}

impl Client {
    /// A client for `project` (the project jobs run and are billed in).
    pub fn new(config: ClientConfig, auth: Auth, project: &str) -> Result<Client, BqError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| BqError::permanent("BigQuery client", e.to_string()))?;
        Ok(Client {
            http,
            config,
            auth,
            project: project.to_owned(),
        })
    }

    /// The project jobs run in.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn api(&self, path: &str) -> String {
        format!(
            "{}/bigquery/v2/{path}",
            self.config.base_url.trim_end_matches('/')
        )
    }

    fn upload_api(&self, path: &str) -> String {
        format!(
            "{}/upload/bigquery/v2/{path}",
            self.config.base_url.trim_end_matches('/')
        )
    }

    pub(crate) async fn backoff(&self, try_no: u32) {
        let base = self.config.initial_backoff.as_secs_f64() * 2f64.powi(try_no as i32);
        let wait = base.min(self.config.max_backoff.as_secs_f64()) * jitter();
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }

    /// Sends one request (no retry) and reads the whole reply.
    async fn send_once(
        &self,
        context: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Reply, BqError> {
        let request = match self.auth.header().await? {
            Some(h) => request.header(AUTHORIZATION, h),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| BqError::transport(context, describe(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| BqError::transport(context, describe(&e)))?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Sends a request built by `build`, retrying retryable failures; returns the successful
    /// (2xx) reply, or the last error. Statuses in `pass` are returned as replies too.
    async fn send(
        &self,
        context: &str,
        pass: &[u16],
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Reply, BqError> {
        let mut try_no = 0;
        loop {
            let e = match self.send_once(context, build()).await {
                Ok(r) if pass.contains(&r.status.as_u16()) => return Ok(r),
                // A 2xx with a body must be JSON; a garbled one (a proxy's page, a cut-off
                // body) is retried like a transport error.
                Ok(r) if r.status.is_success() => match r.body.is_empty() {
                    true => return Ok(r),
                    false => match r.json(context) {
                        Ok(_) => return Ok(r),
                        Err(e) => e,
                    },
                },
                Ok(r) => r.error(context),
                Err(e) => e,
            };
            try_no += 1;
            if e.class != crate::error::ErrorClass::Retryable || try_no >= self.config.max_tries {
                return Err(e);
            }
            tracing::debug!(context, error = %e, try_no, "retrying");
            self.backoff(try_no - 1).await;
        }
    }

    fn job_resource(&self, job_id: &str, location: Option<&str>, configuration: &Value) -> Value {
        let mut reference = json!({ "projectId": self.project, "jobId": job_id });
        if let Some(l) = location {
            reference["location"] = json!(l);
        }
        json!({ "jobReference": reference, "configuration": configuration })
    }

    /// Inserts a load job with its data. `Ok(None)` means BigQuery answered 409: a job with this
    /// id exists already (look it up with [`Client::get_job`]).
    pub async fn insert_load_job(
        &self,
        job_id: &str,
        location: Option<&str>,
        configuration: &Value,
        data: Upload<'_>,
    ) -> Result<Option<JobState>, BqError> {
        let resource = self.job_resource(job_id, location, configuration);
        let context = format!("load job {job_id}");
        let reply = match data {
            Upload::Bytes(bytes) if bytes.len() < RESUMABLE_FROM => {
                self.multipart(&context, &resource, bytes).await?
            }
            data => self.resumable(&context, &resource, data).await?,
        };
        if reply.status == StatusCode::CONFLICT {
            return Ok(None);
        }
        parse_job(&context, &reply.json(&context)?).map(Some)
    }

    async fn multipart(
        &self,
        context: &str,
        resource: &Value,
        data: &Bytes,
    ) -> Result<Reply, BqError> {
        let metadata =
            serde_json::to_vec(resource).map_err(|e| BqError::permanent(context, e.to_string()))?;
        let boundary = boundary_for(data);
        let mut body = Vec::with_capacity(data.len() + metadata.len() + 256);
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(&metadata);
        body.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let body = Bytes::from(body);
        let url = self.upload_api(&format!(
            "projects/{}/jobs?uploadType=multipart",
            encode(&self.project)
        ));
        self.send(context, &[409], || {
            self.http
                .post(&url)
                .header(
                    CONTENT_TYPE,
                    format!("multipart/related; boundary={boundary}"),
                )
                .body(body.clone())
        })
        .await
    }

    async fn resumable(
        &self,
        context: &str,
        resource: &Value,
        data: Upload<'_>,
    ) -> Result<Reply, BqError> {
        let name = match data {
            Upload::File(path) => path.display().to_string(),
            Upload::Bytes(_) => "data in memory".to_owned(),
        };
        let io = |e: std::io::Error| BqError::transport(context, format!("{name}: {e}"));
        let total = match data {
            Upload::File(path) => tokio::fs::metadata(path).await.map_err(io)?.len(),
            Upload::Bytes(b) => b.len() as u64,
        };
        let metadata = Bytes::from(
            serde_json::to_vec(resource).map_err(|e| BqError::permanent(context, e.to_string()))?,
        );
        let url = self.upload_api(&format!(
            "projects/{}/jobs?uploadType=resumable",
            encode(&self.project)
        ));
        let start = self
            .send(context, &[409], || {
                self.http
                    .post(&url)
                    .header(CONTENT_TYPE, "application/json; charset=UTF-8")
                    .header("X-Upload-Content-Type", "application/octet-stream")
                    .header("X-Upload-Content-Length", total.to_string())
                    .body(metadata.clone())
            })
            .await?;
        if start.status == StatusCode::CONFLICT {
            return Ok(start);
        }
        let session = start
            .headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                BqError::malformed(context, "resumable upload started without a Location")
            })?
            .to_owned();
        let chunk = self.config.chunk_size.div_ceil(CHUNK_QUANTUM).max(1) * CHUNK_QUANTUM;
        let mut file = match data {
            Upload::File(path) => Some(tokio::fs::File::open(path).await.map_err(io)?),
            Upload::Bytes(_) => None,
        };
        let mut offset: u64 = 0;
        let mut buf = vec![0u8; if file.is_some() { chunk } else { 0 }];
        let mut failures = 0;
        loop {
            // Read the next chunk from `offset` (the server may have kept less than was sent).
            let want = usize::try_from((total - offset).min(chunk as u64)).unwrap_or(chunk);
            let body = match (&mut file, data) {
                (Some(file), _) => {
                    use tokio::io::AsyncSeekExt;
                    file.seek(std::io::SeekFrom::Start(offset))
                        .await
                        .map_err(io)?;
                    file.read_exact(&mut buf[..want]).await.map_err(io)?;
                    Bytes::copy_from_slice(&buf[..want])
                }
                (None, Upload::Bytes(b)) => {
                    let from = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                    b.slice(from..(from + want).min(b.len()))
                }
                (None, Upload::File(_)) => Bytes::new(),
            };
            let range = if want == 0 {
                format!("bytes */{total}")
            } else {
                format!("bytes {}-{}/{total}", offset, offset + want as u64 - 1)
            };
            let sent = self
                .send_once(
                    context,
                    self.http
                        .put(&session)
                        .header(CONTENT_RANGE, range)
                        .body(body),
                )
                .await;
            let e = match sent {
                Ok(r) if r.status.as_u16() == 308 => {
                    offset = persisted(&r.headers);
                    failures = 0;
                    continue;
                }
                Ok(r) if r.status.is_success() || r.status == StatusCode::CONFLICT => return Ok(r),
                Ok(r) => r.error(context),
                Err(e) => e,
            };
            failures += 1;
            if !e.is_retryable() || failures >= self.config.max_tries {
                return Err(e);
            }
            // Ask the session how much it kept, then go on from there.
            self.backoff(failures - 1).await;
            let status = self
                .send_once(
                    context,
                    self.http
                        .put(&session)
                        .header(CONTENT_RANGE, format!("bytes */{total}"))
                        .body(Bytes::new()),
                )
                .await;
            match status {
                Ok(r) if r.status.as_u16() == 308 => offset = persisted(&r.headers),
                Ok(r) if r.status.is_success() || r.status == StatusCode::CONFLICT => return Ok(r),
                Ok(r) if r.status == StatusCode::NOT_FOUND || r.status == StatusCode::GONE => {
                    // The session expired: the job was never created; the caller starts over.
                    return Err(BqError::transport(
                        context,
                        "resumable upload session expired",
                    ));
                }
                _ => {}
            }
        }
    }

    /// Inserts a query job with a chosen id (metadata only). `Ok(None)` means 409: a job with
    /// this id exists.
    pub async fn insert_query_job(
        &self,
        job_id: &str,
        location: Option<&str>,
        sql: &str,
        labels: &Value,
    ) -> Result<Option<JobState>, BqError> {
        let context = format!("query job {job_id}");
        let configuration = json!({
            "query": { "query": sql, "useLegacySql": false },
            "labels": labels,
        });
        let body = Bytes::from(
            self.job_resource(job_id, location, &configuration)
                .to_string(),
        );
        let url = self.api(&format!("projects/{}/jobs", encode(&self.project)));
        let reply = self
            .send(&context, &[409], || {
                self.http
                    .post(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        if reply.status == StatusCode::CONFLICT {
            return Ok(None);
        }
        parse_job(&context, &reply.json(&context)?).map(Some)
    }

    /// `jobs.get`.
    pub async fn get_job(&self, job_id: &str, location: Option<&str>) -> Result<JobState, BqError> {
        let context = format!("jobs.get {job_id}");
        let url = self.api(&format!(
            "projects/{}/jobs/{}?{}",
            encode(&self.project),
            encode(job_id),
            location_param(location)
        ));
        let reply = self.send(&context, &[], || self.http.get(&url)).await?;
        parse_job(&context, &reply.json(&context)?)
    }

    /// Polls a job until it is done, with backoff between polls (at most `max_wait`).
    pub async fn wait_job(
        &self,
        mut state: JobState,
        location: Option<&str>,
        max_wait: Duration,
    ) -> Result<JobState, BqError> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(200)
            .min(self.config.initial_backoff.max(Duration::from_millis(1)));
        while !state.is_done() {
            if started.elapsed() >= max_wait {
                return Err(BqError::still_running(
                    format!("job {}", state.job_id),
                    format!("still {} after {:?}", state.state, max_wait),
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            state = self.get_job(&state.job_id, location).await?;
        }
        Ok(state)
    }

    /// The dataset, created where missing: `datasets.get` first (Data Editor on the dataset is
    /// enough when it exists), `datasets.insert` only after a 404 (that needs
    /// `bigquery.datasets.create` on the project; a 409 means another caller created it).
    pub async fn ensure_dataset(
        &self,
        project: &str,
        dataset: &str,
        location: Option<&str>,
    ) -> Result<(), BqError> {
        let get = format!("datasets.get {project}.{dataset}");
        let url = self.api(&format!(
            "projects/{}/datasets/{}",
            encode(project),
            encode(dataset)
        ));
        let found = self.send(&get, &[404], || self.http.get(&url)).await?;
        if found.status != StatusCode::NOT_FOUND {
            return Ok(());
        }
        let context = format!("datasets.insert {project}.{dataset}");
        let mut body =
            json!({ "datasetReference": { "projectId": project, "datasetId": dataset } });
        if let Some(l) = location {
            body["location"] = json!(l);
        }
        let body = Bytes::from(body.to_string());
        let url = self.api(&format!("projects/{}/datasets", encode(project)));
        self.send(&context, &[409], || {
            self.http
                .post(&url)
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
        .map(|_| ())
    }

    /// `tables.get`: the table's schema fields as JSON, or `None` when it does not exist.
    pub async fn get_table_fields(
        &self,
        project: &str,
        dataset: &str,
        table: &str,
    ) -> Result<Option<Value>, BqError> {
        let context = format!("tables.get {project}.{dataset}.{table}");
        let url = self.api(&format!(
            "projects/{}/datasets/{}/tables/{}",
            encode(project),
            encode(dataset),
            encode(table)
        ));
        let reply = self.send(&context, &[404], || self.http.get(&url)).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let table = reply.json(&context)?;
        Ok(Some(
            table
                .pointer("/schema/fields")
                .cloned()
                .unwrap_or(Value::Array(Vec::new())),
        ))
    }

    /// Runs a GoogleSQL statement and waits for it (`jobs.query`, then `getQueryResults`).
    /// `request_id` makes a retried request run the statement once.
    pub async fn query(
        &self,
        sql: &str,
        location: Option<&str>,
        request_id: &str,
        max_wait: Duration,
    ) -> Result<QueryResult, BqError> {
        let context = format!("query {request_id}");
        let mut body = json!({
            "query": sql,
            "useLegacySql": false,
            "requestId": request_id,
            "timeoutMs": 10_000,
        });
        if let Some(l) = location {
            body["location"] = json!(l);
        }
        let body = Bytes::from(body.to_string());
        let url = self.api(&format!("projects/{}/queries", encode(&self.project)));
        let reply = self
            .send(&context, &[], || {
                self.http
                    .post(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        let mut response = reply.json(&context)?;
        let started = tokio::time::Instant::now();
        while response.get("jobComplete").and_then(Value::as_bool) == Some(false) {
            query_errors(&context, &response)?;
            let job_id = response
                .pointer("/jobReference/jobId")
                .and_then(Value::as_str)
                .ok_or_else(|| BqError::malformed(&context, "incomplete query without a job id"))?
                .to_owned();
            if started.elapsed() >= max_wait {
                return Err(BqError::still_running(
                    &context,
                    format!("query job {job_id} still running"),
                ));
            }
            let url = self.api(&format!(
                "projects/{}/queries/{}?timeoutMs=10000&{}",
                encode(&self.project),
                encode(&job_id),
                location_param(location)
            ));
            response = self
                .send(&context, &[], || self.http.get(&url))
                .await?
                .json(&context)?;
        }
        query_errors(&context, &response)?;
        Ok(parse_query_result(&response))
    }
}

/// Query failures: `status.errorResult` in the body. BigQuery answers a failed statement with
/// an HTTP error; `errors` in a successful response holds warnings (BigQuery v2 discovery
/// document, `QueryResponse.errors`: "may contain ... warnings even when the query succeeded"),
/// which are logged, never taken for a failure.
fn query_errors(context: &str, response: &Value) -> Result<(), BqError> {
    if let Some(e) = response
        .pointer("/status/errorResult")
        .filter(|v| !v.is_null())
    {
        let e: JobError = serde_json::from_value(e.clone()).unwrap_or(JobError {
            reason: None,
            message: e.to_string(),
        });
        return Err(
            BqError::from_response(context, None, e.reason.clone(), e.message).with_status_none(),
        );
    }
    if let Some(warnings) = response.get("errors").and_then(Value::as_array) {
        for w in warnings {
            let text = |k: &str| w.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
            let (reason, message) = (text("reason"), text("message"));
            tracing::warn!(context, reason, message, "BigQuery warning");
        }
    }
    Ok(())
}

impl BqError {
    fn with_status_none(mut self) -> BqError {
        // A statement that failed is not retried by status (there is none): its reason decides,
        // and a reason-less statement error is a problem with the statement.
        if self.reason.is_none() {
            self.class = crate::error::ErrorClass::Permanent;
        }
        self
    }
}

fn parse_query_result(response: &Value) -> QueryResult {
    let columns = response
        .pointer("/schema/fields")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(|f| f.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let rows = response
        .get("rows")
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.get("f")
                        .and_then(Value::as_array)
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| c.get("v").cloned().unwrap_or(Value::Null))
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let dml_affected_rows = response.get("numDmlAffectedRows").and_then(|v| {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v.as_u64())
    });
    QueryResult {
        columns,
        rows,
        dml_affected_rows,
    }
}

fn parse_job(context: &str, job: &Value) -> Result<JobState, BqError> {
    let job_id = job
        .pointer("/jobReference/jobId")
        .and_then(Value::as_str)
        .ok_or_else(|| BqError::malformed(context, "job without jobReference.jobId"))?
        .to_owned();
    let state = job
        .pointer("/status/state")
        .and_then(Value::as_str)
        .ok_or_else(|| BqError::malformed(context, "job without status.state"))?
        .to_owned();
    let error = match job.pointer("/status/errorResult") {
        Some(Value::Null) | None => None,
        Some(e) => Some(
            serde_json::from_value(e.clone())
                .map_err(|err| BqError::malformed(context, format!("status.errorResult: {err}")))?,
        ),
    };
    let output_rows = job.pointer("/statistics/load/outputRows").and_then(|v| {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v.as_u64())
    });
    let number = |p: &str| {
        job.pointer(p).and_then(|v| {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| v.as_i64())
        })
    };
    Ok(JobState {
        job_id,
        state,
        error,
        output_rows,
        job_type: job
            .pointer("/configuration/jobType")
            .and_then(Value::as_str)
            .map(str::to_owned),
        query: job
            .pointer("/configuration/query/query")
            .and_then(Value::as_str)
            .map(str::to_owned),
        created_millis: number("/statistics/creationTime"),
    })
}

/// Bytes the server kept, from a 308's `Range: bytes=0-N` (none: 0).
fn persisted(headers: &HeaderMap) -> u64 {
    headers
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit('-').next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map(|last| last + 1)
        .unwrap_or(0)
}

/// A multipart boundary that does not occur in the data.
fn boundary_for(data: &[u8]) -> String {
    let mut n: u64 = 0;
    loop {
        let b = format!("ferry_boundary_{n:016x}_{}", data.len());
        if !data.windows(b.len()).any(|w| w == b.as_bytes()) {
            return b;
        }
        n += 1;
    }
}

/// A transport error's chain of causes, without the URL's query (which names nothing secret,
/// but is noise).
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisted_reads_the_range_header() {
        let mut h = HeaderMap::new();
        assert_eq!(persisted(&h), 0);
        h.insert(RANGE, "bytes=0-262143".parse().unwrap());
        assert_eq!(persisted(&h), 262_144);
    }

    #[test]
    fn boundary_avoids_the_data() {
        let b = boundary_for(b"abc");
        let data = format!("xx{b}yy");
        assert_ne!(boundary_for(data.as_bytes()), b);
    }

    #[test]
    fn job_parsing_tolerates_numbers_as_strings_and_rejects_missing_state() {
        let j = json!({"jobReference":{"jobId":"a"},"status":{"state":"DONE"},"statistics":{"load":{"outputRows":"12"}}});
        let s = parse_job("t", &j).unwrap();
        assert_eq!(s.output_rows, Some(12));
        assert!(s.is_done() && s.error.is_none());
        let e = parse_job("t", &json!({"jobReference":{"jobId":"a"}})).unwrap_err();
        assert_eq!(e.reason.as_deref(), Some("malformedResponse"));
    }

    #[test]
    fn error_results_fail_and_errors_alone_are_warnings() {
        let failed =
            json!({"status":{"errorResult":{"reason":"invalidQuery","message":"Syntax error"}}});
        let e = query_errors("q", &failed).unwrap_err();
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("Syntax error"));
        let warned = json!({"jobComplete":true,"errors":[{"reason":"invalidQuery","message":"Not all rows were scanned"}]});
        assert!(query_errors("q", &warned).is_ok());
    }
}
