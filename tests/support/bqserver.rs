//! A strict BigQuery test server: it keeps the load-job contract as BigQuery documents it, with
//! fault injection, and refuses what BigQuery refuses, by the rules in [`crate::bqrules`] (each
//! next to its documentation). No emulator keeps this contract (bqemulator ignores client job ids,
//! never answers 409 and accepts any DDL and any parquet), so the BigQuery tests run against this
//! one; with an emulator behind it, statements that pass the rules are executed there.
//!
//! What it checks: DDL grammar and types (PARTITION BY, CLUSTER BY, reserved column names), the
//! catalogue of tables that DDL built, every load's parquet footer against its destination and
//! its `schema` (JSON columns, DATETIME without a schema, ENUM), `requestId` length, `location`
//! on `jobs.get`, table metadata updates per 10 s, load jobs per table and per project (failed
//! ones included), the mutating-DML queue per table and overlapping DML, `datasets.insert`
//! permission, and warnings in successful query responses.
//!
//! What it implements, from the REST reference:
//! - `POST /upload/bigquery/v2/projects/{p}/jobs?uploadType=multipart` (`multipart/related`:
//!   JSON metadata part, then the data part);
//! - `POST ...?uploadType=resumable` (answers 200 with a `Location` session URI), then `PUT`
//!   chunks with `Content-Range: bytes a-b/total`, each a multiple of 256 KiB except the last
//!   (308 `Resume Incomplete` with `Range: bytes=0-n` until the last; a chunk not starting where
//!   the session stands gets 308 with the persisted range), `bytes */total` asks for the state;
//! - a job id used before: HTTP 409, reason `duplicate`, status `ALREADY_EXISTS`, at insert
//!   time (multipart) or when the upload completes (resumable);
//! - `GET .../jobs/{id}`: `PENDING`/`RUNNING` for a configurable number of polls, then `DONE`,
//!   with `status.errorResult` when the job failed (a failed job wrote nothing);
//! - `tables.get` answers from the catalogue; `datasets.get`/`insert` from the datasets created;
//!   queries pass the rules, then go to the emulator when one is given (its failures, which it
//!   reports as HTTP 200 with `errors`, are answered as BigQuery does: HTTP 400), else are
//!   recorded and succeed.
//!
//! Faults are queued and consumed by the first matching request: an HTTP error with a reason,
//! a malformed body, a dropped connection after the request was processed (the client never
//! sees the answer), or a job that ends in error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::bqrules;

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Job inserts (multipart, resumable start).
    Insert,
    /// Metadata-only job inserts (query jobs).
    InsertJob,
    /// Resumable chunk uploads.
    Chunk,
    /// `jobs.get`.
    GetJob,
    /// Queries.
    Query,
}

/// A fault to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and reason instead of processing the request.
    Http(Route, u16, &'static str),
    /// Process the request, then answer 200 with a body that is not JSON.
    Malformed(Route),
    /// Process the request, then close the connection without answering.
    DropAfter(Route),
    /// The next job created ends `DONE` with this error reason.
    JobFails(&'static str),
    /// The next load job into a table whose id contains the first string ends `DONE` with the
    /// second as its error reason.
    JobFailsOn(&'static str, &'static str),
    /// The next successful query answers with this warning in `errors`.
    Warning(&'static str),
}

/// A job the server knows.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job id.
    pub id: String,
    /// `projectId.datasetId.tableId` of the destination.
    pub table: String,
    /// The error it ended with, if any.
    pub error: Option<&'static str>,
    /// The error's message.
    pub error_message: Option<String>,
    /// `jobReference.location`.
    pub location: Option<String>,
    /// Polls left before it is DONE.
    pub polls_left: u32,
    /// The uploaded bytes.
    pub data: Vec<u8>,
    /// `LOAD` or `QUERY`.
    pub kind: &'static str,
    /// A query job's SQL.
    pub query: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_millis: i64,
    /// `configuration.labels`, as INFORMATION_SCHEMA.JOBS lists them.
    pub labels: Vec<(String, String)>,
}

#[derive(Default)]
struct Session {
    resource: Value,
    total: u64,
    data: Vec<u8>,
}

/// The shared state, for assertions.
pub struct State {
    /// Jobs by id, in creation order.
    pub jobs: Vec<Job>,
    sessions: HashMap<String, Session>,
    faults: VecDeque<Fault>,
    /// Polls a new job stays RUNNING.
    pub running_polls: u32,
    /// Requests seen: method, path, status answered.
    pub log: Vec<(String, String, u16)>,
    /// Queries received (also when forwarded).
    pub queries: Vec<String>,
    /// Resumable chunk sizes received.
    pub chunks: Vec<usize>,
    /// The answer to the load-job count query (INFORMATION_SCHEMA.JOBS_BY_PROJECT), if set.
    pub load_job_count: Option<u64>,
    /// Tables created by DDL, by `project.dataset.table`.
    pub tables: HashMap<String, bqrules::Table>,
    /// Datasets, by `project.dataset`.
    pub datasets: std::collections::HashSet<String>,
    /// Whether the caller holds `bigquery.datasets.create` (default true).
    pub can_create_datasets: bool,
    /// Load-job quotas.
    pub quota: bqrules::LoadQuota,
    /// Mutating DML in flight, and overlaps seen.
    pub dml: bqrules::DmlTracker,
    /// How long a mutating DML statement runs (so that overlaps can happen).
    pub dml_hold: std::time::Duration,
    /// Answer a mutating statement that overlaps another on its table with BigQuery's
    /// "concurrent update" error (the outcome when both change the same rows).
    pub conflict_on_overlap: bool,
    /// Every refusal by a rule: the request's route and what was answered.
    pub refusals: Vec<bqrules::Refusal>,
}

impl Default for State {
    fn default() -> State {
        State {
            jobs: Vec::new(),
            sessions: HashMap::new(),
            faults: VecDeque::new(),
            running_polls: 0,
            log: Vec::new(),
            queries: Vec::new(),
            chunks: Vec::new(),
            load_job_count: None,
            tables: HashMap::new(),
            datasets: Default::default(),
            can_create_datasets: true,
            quota: bqrules::LoadQuota::default(),
            dml: bqrules::DmlTracker::default(),
            dml_hold: std::time::Duration::ZERO,
            conflict_on_overlap: false,
            refusals: Vec::new(),
        }
    }
}

impl State {
    /// Load jobs that ended DONE without an error: what BigQuery holds.
    pub fn succeeded(&self) -> Vec<&Job> {
        self.jobs
            .iter()
            .filter(|j| j.error.is_none() && j.kind == "LOAD")
            .collect()
    }

    /// Load jobs created (failed ones included: they count against the table's quota too).
    pub fn load_jobs(&self) -> usize {
        self.jobs.iter().filter(|j| j.kind == "LOAD").count()
    }

    /// Adds a query job as another client would (e.g. a claim by a delivery that died).
    pub fn add_query_job(&mut self, id: &str, sql: &str, created_millis: i64) {
        self.jobs.push(Job {
            id: id.to_owned(),
            table: String::new(),
            error: None,
            error_message: None,
            location: None,
            polls_left: 0,
            data: Vec::new(),
            kind: "QUERY",
            query: Some(sql.to_owned()),
            created_millis,
            labels: Vec::new(),
        });
    }
}

/// The running server.
pub struct BqServer {
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// Its state.
    pub state: Arc<Mutex<State>>,
    emulator: Option<String>,
}

struct Request {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, v: Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: v.to_string().into_bytes(),
        }
    }

    fn error(status: u16, reason: &str, message: &str) -> Response {
        let grpc = match status {
            409 => "ALREADY_EXISTS",
            404 => "NOT_FOUND",
            429 => "RESOURCE_EXHAUSTED",
            400 => "INVALID_ARGUMENT",
            _ => "UNAVAILABLE",
        };
        Response::json(
            status,
            json!({"error": {"code": status, "message": message,
                "errors": [{"reason": reason, "message": message, "domain": "global"}],
                "status": grpc}}),
        )
    }
}

fn write_response(stream: &mut TcpStream, r: &Response) {
    let reason = match r.status {
        200 => "OK",
        308 => "Resume Incomplete",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", r.status);
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        r.body.len()
    ));
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&r.body);
    let _ = stream.flush();
}

fn job_json(job: &Job, project: &str) -> Value {
    let state = if job.polls_left > 0 {
        "RUNNING"
    } else {
        "DONE"
    };
    let mut status = json!({ "state": state });
    if state == "DONE"
        && let Some(reason) = job.error
    {
        let message = job
            .error_message
            .clone()
            .unwrap_or_else(|| format!("injected {reason}"));
        status["errorResult"] = json!({"reason": reason, "message": message});
        status["errors"] = json!([{"reason": reason, "message": message}]);
    }
    let mut configuration = json!({ "jobType": job.kind });
    if let Some(q) = &job.query {
        configuration["query"] = json!({ "query": q, "useLegacySql": false });
    }
    json!({
        "kind": "bigquery#job",
        "jobReference": {"projectId": project, "jobId": job.id, "location": job.location},
        "configuration": configuration,
        "status": status,
        "statistics": {"creationTime": job.created_millis.to_string(), "load": {"outputRows": "0"}},
    })
}

fn multipart_parts(content_type: &str, body: &[u8]) -> Option<(Value, Vec<u8>)> {
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let delim = format!("--{boundary}");
    let find = |hay: &[u8], from: usize, needle: &[u8]| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let first = find(body, 0, delim.as_bytes())?;
    let meta_start = find(body, first, b"\r\n\r\n")? + 4;
    let second = find(body, meta_start, delim.as_bytes())?;
    let meta: Value = serde_json::from_slice(&body[meta_start..second - 2]).ok()?;
    let data_start = find(body, second, b"\r\n\r\n")? + 4;
    let end = find(body, data_start, format!("\r\n{delim}--").as_bytes())?;
    Some((meta, body[data_start..end].to_vec()))
}

/// A minimal HTTP/1.1 client call (for forwarding to the emulator).
fn forward(base: &str, req: &Request) -> Response {
    let addr = base.trim_start_matches("http://");
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Response::error(503, "backendError", "emulator unreachable");
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        req.method,
        req.target,
        req.body.len()
    );
    if let Some(ct) = req.headers.get("content-type") {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&req.body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let mut body = raw[(split + 4).min(raw.len())..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
    out
}

impl BqServer {
    /// Starts a server; `emulator` (`http://host:port`) receives the calls that are not loads.
    pub fn start(emulator: Option<String>) -> BqServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let server = BqServer {
            url: url.clone(),
            state: state.clone(),
            emulator: emulator.clone(),
        };
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let state = state.clone();
                let url = url.clone();
                let emulator = emulator.clone();
                std::thread::spawn(move || {
                    let Some(req) = read_request(&mut stream) else {
                        return;
                    };
                    let (resp, drop_it) = handle(&state, &url, emulator.as_deref(), &req);
                    state.lock().unwrap().log.push((
                        req.method.clone(),
                        req.target.clone(),
                        if drop_it { 0 } else { resp.status },
                    ));
                    if !drop_it {
                        write_response(&mut stream, &resp);
                    }
                });
            }
        });
        server
    }

    /// Queues faults, consumed in order by the requests they match.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().faults.extend(faults);
    }

    /// Drops the faults not consumed yet.
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Faults not consumed yet.
    pub fn faults_left(&self) -> usize {
        self.state.lock().unwrap().faults.len()
    }

    /// Whether calls other than loads go to an emulator.
    pub fn has_emulator(&self) -> bool {
        self.emulator.is_some()
    }
}

fn route_of(req: &Request) -> Option<Route> {
    let t = &req.target;
    if t.contains("upload_id=") {
        Some(Route::Chunk)
    } else if t.starts_with("/upload/") {
        Some(Route::Insert)
    } else if t.contains("/jobs/") && req.method == "GET" {
        Some(Route::GetJob)
    } else if t.split('?').next().is_some_and(|p| p.ends_with("/jobs")) && req.method == "POST" {
        Some(Route::InsertJob)
    } else if t.contains("/queries") {
        Some(Route::Query)
    } else {
        None
    }
}

/// Takes the first queued fault matching `route` (JobFails faults match job creation only).
fn take_fault(state: &mut State, route: Option<Route>) -> Option<Fault> {
    let i = state.faults.iter().position(|f| match f {
        Fault::Http(r, ..) | Fault::Malformed(r) | Fault::DropAfter(r) => Some(*r) == route,
        Fault::JobFails(_) | Fault::JobFailsOn(..) | Fault::Warning(_) => false,
    })?;
    state.faults.remove(i)
}

fn handle(
    state: &Mutex<State>,
    url: &str,
    emulator: Option<&str>,
    req: &Request,
) -> (Response, bool) {
    let route = route_of(req);
    let fault = take_fault(&mut state.lock().unwrap(), route);
    if let Some(Fault::Http(_, status, reason)) = fault {
        return (
            Response::error(status, reason, &format!("injected {reason}")),
            false,
        );
    }
    let resp = process(state, url, emulator, req);
    match fault {
        Some(Fault::Malformed(_)) => (
            Response {
                status: 200,
                headers: vec![],
                body: b"<html>upstream hiccup</html>".to_vec(),
            },
            false,
        ),
        Some(Fault::DropAfter(_)) => (resp, true),
        _ => (resp, false),
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn refusal(st: &mut State, r: bqrules::Refusal) -> Response {
    let resp = Response::error(r.status, r.reason, &r.message);
    st.refusals.push(r);
    resp
}

fn create_job(
    state: &Mutex<State>,
    emulator: Option<&str>,
    resource: &Value,
    data: Vec<u8>,
) -> Response {
    let mut st = state.lock().unwrap();
    let project = resource
        .pointer("/jobReference/projectId")
        .and_then(Value::as_str)
        .unwrap_or("p")
        .to_owned();
    let Some(id) = resource
        .pointer("/jobReference/jobId")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Response::error(
            400,
            "invalid",
            "jobReference.jobId is required by this server",
        );
    };
    // Job ids: letters, digits, `_` and `-`, at most 1,024 characters (discovery document,
    // JobReference.jobId).
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        || id.len() > 1024
    {
        return Response::error(400, "invalid", "invalid job id");
    }
    if st.jobs.iter().any(|j| j.id == id) {
        return Response::error(
            409,
            "duplicate",
            &format!("Already Exists: Job {project}:{id}"),
        );
    }
    if let Err(r) = bqrules::labels(resource.pointer("/configuration/labels")) {
        return refusal(&mut st, r);
    }
    let labels = resource
        .pointer("/configuration/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let location = resource
        .pointer("/jobReference/location")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let dest = resource
        .pointer("/configuration/load/destinationTable")
        .cloned()
        .unwrap_or(Value::Null);
    let table = format!(
        "{}.{}.{}",
        dest["projectId"].as_str().unwrap_or(""),
        dest["datasetId"].as_str().unwrap_or(""),
        dest["tableId"].as_str().unwrap_or("")
    );
    let query = resource
        .pointer("/configuration/query/query")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let kind = if query.is_some() { "QUERY" } else { "LOAD" };
    if kind == "LOAD" {
        let into_table = st
            .jobs
            .iter()
            .filter(|j| j.kind == "LOAD" && j.table == table)
            .count();
        let in_project = st.jobs.iter().filter(|j| j.kind == "LOAD").count();
        if let Err(r) = st.quota.check(&table, into_table, in_project) {
            return refusal(&mut st, r);
        }
    }
    let injected = match st
        .faults
        .iter()
        .position(|f| match f {
            Fault::JobFails(_) => true,
            Fault::JobFailsOn(t, _) => table.contains(t),
            _ => false,
        })
        .filter(|_| kind == "LOAD")
    {
        Some(i) => match st.faults.remove(i) {
            Some(Fault::JobFails(r) | Fault::JobFailsOn(_, r)) => Some(r),
            _ => None,
        },
        None => None,
    };
    // A load that BigQuery would refuse ends DONE with that error; nothing is written.
    let (mut error, mut error_message) = (injected, None);
    if kind == "LOAD" && error.is_none() {
        let load = resource
            .pointer("/configuration/load")
            .cloned()
            .unwrap_or(Value::Null);
        let checked = match st.tables.get(&table) {
            None => Err(bqrules::Refusal {
                status: 404,
                reason: "notFound",
                message: format!("Not found: Table {table}"),
            }),
            Some(t) => bqrules::load(t, &table, &load, &data),
        };
        // A load the rules accept is executed on the emulator too (with the schema it was
        // given: the emulator matches columns by position and needs one), so that SQL run
        // afterwards sees its rows.
        let checked = match (checked, emulator) {
            (Ok(added), Some(e)) if load.pointer("/schema/fields").is_some() => {
                drop(st);
                let executed = emulator_load(e, resource, &data);
                st = state.lock().unwrap();
                executed.map(|()| added)
            }
            (checked, _) => checked,
        };
        match checked {
            Ok(added) => {
                if let Some(t) = st.tables.get_mut(&table) {
                    t.columns.extend(added);
                }
            }
            Err(r) => {
                error = Some(r.reason);
                error_message = Some(r.message.clone());
                st.refusals.push(r);
            }
        }
    }
    let job = Job {
        id,
        table,
        error,
        error_message,
        location,
        polls_left: if kind == "LOAD" { st.running_polls } else { 0 },
        data,
        kind,
        query,
        created_millis: now_millis(),
        labels,
    };
    let body = job_json(&job, &project);
    st.jobs.push(job);
    Response::json(200, body)
}

/// Runs an accepted load on the emulator (multipart); its failure is the job's.
fn emulator_load(emulator: &str, resource: &Value, data: &[u8]) -> Result<(), bqrules::Refusal> {
    let boundary = "ferry_test_server_boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{resource}\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let project = resource
        .pointer("/jobReference/projectId")
        .and_then(Value::as_str)
        .unwrap_or("p");
    let req = Request {
        method: "POST".into(),
        target: format!("/upload/bigquery/v2/projects/{project}/jobs?uploadType=multipart"),
        headers: [(
            "content-type".to_owned(),
            format!("multipart/related; boundary={boundary}"),
        )]
        .into_iter()
        .collect(),
        body,
    };
    let resp = forward(emulator, &req);
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let error = v
        .pointer("/status/errorResult")
        .or_else(|| v.pointer("/error"))
        .filter(|e| !e.is_null());
    match (resp.status, error) {
        (200, None) => Ok(()),
        (status, e) => Err(bqrules::Refusal {
            status: 400,
            reason: "invalid",
            message: format!(
                "the emulator refused the load (HTTP {status}): {}",
                e.and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
            ),
        }),
    }
}

/// A table's REST resource from the catalogue.
fn table_json(t: &bqrules::Table) -> Value {
    let fields: Vec<Value> = t
        .columns
        .iter()
        .map(|c| json!({"name": c.name, "type": c.ty, "mode": if c.required { "REQUIRED" } else { "NULLABLE" }}))
        .collect();
    json!({"kind": "bigquery#table", "schema": {"fields": fields}})
}

/// `project.dataset.table` from `/bigquery/v2/projects/P/datasets/D/tables/T`.
fn table_of_path(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').collect();
    let at = |k: &str| {
        parts
            .iter()
            .position(|p| *p == k)
            .and_then(|i| parts.get(i + 1))
    };
    Some(format!(
        "{}.{}.{}",
        at("projects")?,
        at("datasets")?,
        at("tables")?
    ))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

/// A statement's answer from the emulator, as BigQuery gives it: the emulator reports failures
/// as HTTP 200 with `errors` (its gap); BigQuery answers HTTP 400.
fn from_emulator(resp: Response) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&resp.body) else {
        return resp;
    };
    match v.pointer("/errors/0") {
        Some(e) if resp.status == 200 => {
            let reason = match e.get("reason").and_then(Value::as_str) {
                Some("invalidQuery") => "invalidQuery",
                Some("notFound") => "notFound",
                _ => "invalid",
            };
            Response::error(
                400,
                reason,
                e.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("query failed"),
            )
        }
        _ => resp,
    }
}

/// A query through the rules: request id, DDL, mutating DML; then the engine.
fn run_query(
    state: &Mutex<State>,
    emulator: Option<&str>,
    req: &Request,
    body: &Value,
) -> Response {
    let q = body
        .get("query")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let mut st = state.lock().unwrap();
    st.queries.push(q.clone());
    if let Err(r) = bqrules::request_id(body.get("requestId").and_then(Value::as_str)) {
        return refusal(&mut st, r);
    }
    if q.contains("INFORMATION_SCHEMA.JOBS_BY_PROJECT")
        && let Some(n) = st.load_job_count
    {
        return Response::json(
            200,
            json!({"kind": "bigquery#queryResponse", "jobComplete": true,
                   "jobReference": {"jobId": "count"},
                   "schema": {"fields": [{"name": "jobs", "type": "INTEGER"}]},
                   "rows": [{"f": [{"v": n.to_string()}]}], "totalRows": "1"}),
        );
    }
    if let Some(Err(r)) = bqrules::view(&q) {
        return refusal(&mut st, r);
    }
    let parsed = match bqrules::ddl(&q) {
        Some(Err(r)) => return refusal(&mut st, r),
        Some(Ok(d)) => Some(d),
        None => None,
    };
    // The metadata-update limit is checked before the engine runs the statement; the catalogue
    // changes only once the engine has run it.
    let ddl = match &parsed {
        Some(d) => {
            let mut probe = st.tables.clone();
            if let Err(r) = bqrules::apply_ddl(&mut probe, d.clone(), std::time::Instant::now()) {
                return refusal(&mut st, r);
            }
            Some(probe)
        }
        None => None,
    };
    let dml = bqrules::dml_target(&q);
    if let Some(t) = &dml {
        match st.dml.start(t) {
            Err(r) => return refusal(&mut st, r),
            Ok(true) if st.conflict_on_overlap => {
                st.dml.end(t);
                let r = bqrules::concurrent_update(t);
                return refusal(&mut st, r);
            }
            Ok(_) => {}
        }
    }
    let warning = st
        .faults
        .iter()
        .position(|f| matches!(f, Fault::Warning(_)))
        .and_then(|i| st.faults.remove(i));
    let hold = st.dml_hold;
    drop(st);
    if dml.is_some() {
        std::thread::sleep(hold);
    }
    // DuckDB takes one ALTER command per statement (the emulator's gap; BigQuery takes
    // several): an ALTER with several ADD COLUMN clauses is run there one clause at a time.
    let split = match &parsed {
        Some(bqrules::Ddl::AddColumns { table, columns }) if columns.len() > 1 => Some(
            columns
                .iter()
                .map(|(c, _)| {
                    let path: Vec<String> = table.split('.').map(|p| format!("`{p}`")).collect();
                    format!(
                        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS `{}` {}",
                        path.join("."),
                        c.name,
                        c.ty
                    )
                })
                .collect::<Vec<_>>(),
        ),
        _ => None,
    };
    let resp = match (emulator, split) {
        (Some(e), Some(statements)) => {
            let mut last = Response::json(200, json!({}));
            for sql in statements {
                let mut b = body.clone();
                b["query"] = json!(sql);
                let one = Request {
                    method: req.method.clone(),
                    target: req.target.clone(),
                    headers: req.headers.clone(),
                    body: b.to_string().into_bytes(),
                };
                last = from_emulator(forward(e, &one));
                if last.status != 200 {
                    break;
                }
            }
            last
        }
        (Some(e), None) => from_emulator(forward(e, req)),
        (None, _) => Response::json(
            200,
            json!({"kind": "bigquery#queryResponse", "jobComplete": true,
                   "jobReference": {"jobId": "q"}, "rows": [], "totalRows": "0"}),
        ),
    };
    let mut st = state.lock().unwrap();
    if let Some(t) = &dml {
        st.dml.end(t);
    }
    if resp.status == 200
        && let Some(tables) = ddl
    {
        st.tables = tables;
    }
    match warning {
        Some(Fault::Warning(w)) if resp.status == 200 => {
            let mut v: Value = serde_json::from_slice(&resp.body).unwrap_or(json!({}));
            v["errors"] = json!([{"reason": "invalidQuery", "message": w, "location": "query"}]);
            Response::json(200, v)
        }
        _ => resp,
    }
}

fn process(state: &Mutex<State>, url: &str, emulator: Option<&str>, req: &Request) -> Response {
    let path = req.target.split('?').next().unwrap_or("");
    let query = req.target.split_once('?').map(|(_, q)| q).unwrap_or("");
    match route_of(req) {
        Some(Route::Insert) if query.contains("uploadType=multipart") => {
            let ct = req.headers.get("content-type").cloned().unwrap_or_default();
            match multipart_parts(&ct, &req.body) {
                Some((meta, data)) => create_job(state, emulator, &meta, data),
                None => Response::error(400, "invalid", "malformed multipart body"),
            }
        }
        Some(Route::Insert) if query.contains("uploadType=resumable") => {
            let Ok(meta) = serde_json::from_slice::<Value>(&req.body) else {
                return Response::error(400, "invalid", "metadata is not JSON");
            };
            let total = req
                .headers
                .get("x-upload-content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut st = state.lock().unwrap();
            let sid = format!("s{}", st.sessions.len() + 1);
            st.sessions.insert(
                sid.clone(),
                Session {
                    resource: meta,
                    total,
                    data: Vec::new(),
                },
            );
            Response {
                status: 200,
                headers: vec![(
                    "Location".into(),
                    format!("{url}{path}?uploadType=resumable&upload_id={sid}"),
                )],
                body: Vec::new(),
            }
        }
        Some(Route::Insert) => Response::error(400, "invalid", "unknown uploadType"),
        Some(Route::InsertJob) => match serde_json::from_slice::<Value>(&req.body) {
            Ok(resource) if resource.pointer("/configuration/query").is_some() => {
                create_job(state, emulator, &resource, Vec::new())
            }
            Ok(_) => Response::error(
                400,
                "invalid",
                "only query jobs can be inserted without data here (loads from gs:// are not served)",
            ),
            Err(_) => Response::error(400, "invalid", "job resource is not JSON"),
        },
        Some(Route::Chunk) => {
            let sid = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("upload_id="))
                .unwrap_or("")
                .to_owned();
            let range = req
                .headers
                .get("content-range")
                .cloned()
                .unwrap_or_default();
            let mut st = state.lock().unwrap();
            let Some(session) = st.sessions.get_mut(&sid) else {
                return Response::error(404, "notFound", "no such upload session");
            };
            let persisted = |s: &Session| {
                let mut h = vec![];
                if !s.data.is_empty() {
                    h.push(("Range".to_owned(), format!("bytes=0-{}", s.data.len() - 1)));
                }
                Response {
                    status: 308,
                    headers: h,
                    body: Vec::new(),
                }
            };
            let spec = range.trim_start_matches("bytes ");
            let (span, total) = spec.split_once('/').unwrap_or(("", ""));
            let total: u64 = total.parse().unwrap_or(session.total);
            if span == "*" {
                if session.data.len() as u64 == total && total > 0 {
                    // Completed before: the job exists; answer as the completion did.
                } else {
                    return persisted(session);
                }
            } else {
                let (a, b) = span.split_once('-').unwrap_or(("0", "0"));
                let (a, b): (u64, u64) = (a.parse().unwrap_or(0), b.parse().unwrap_or(0));
                if a != session.data.len() as u64 || b + 1 - a != req.body.len() as u64 {
                    return persisted(session);
                }
                let last = b + 1 == total;
                if !last && !req.body.len().is_multiple_of(256 << 10) {
                    return Response::error(
                        400,
                        "invalid",
                        "chunk size is not a multiple of 256 KiB",
                    );
                }
                session.data.extend_from_slice(&req.body);
                let n = req.body.len();
                st.chunks.push(n);
                if !last {
                    let session = st.sessions.get(&sid).unwrap();
                    return persisted(session);
                }
            }
            let session = st.sessions.get(&sid).unwrap();
            let (resource, data) = (session.resource.clone(), session.data.clone());
            drop(st);
            create_job(state, emulator, &resource, data)
        }
        Some(Route::GetJob) => {
            let id = path.rsplit('/').next().unwrap_or("");
            let mut st = state.lock().unwrap();
            let asked = query_param(query, "location").map(str::to_owned);
            match st.jobs.iter_mut().find(|j| j.id == id) {
                Some(job)
                    if bqrules::job_location(job.location.as_deref(), asked.as_deref(), id)
                        .is_err() =>
                {
                    let r = bqrules::job_location(job.location.as_deref(), asked.as_deref(), id)
                        .unwrap_err();
                    refusal(&mut st, r)
                }
                Some(job) => {
                    job.polls_left = job.polls_left.saturating_sub(1);
                    let project = path.split('/').nth(4).unwrap_or("p").to_owned();
                    let body = job_json(job, &project);
                    Response::json(200, body)
                }
                None => Response::error(404, "notFound", &format!("Not found: Job {id}")),
            }
        }
        Some(Route::Query) if req.method == "POST" => {
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(body) => run_query(state, emulator, req, &body),
                Err(_) => Response::error(400, "invalid", "query request is not JSON"),
            }
        }
        Some(Route::Query) => match emulator {
            Some(e) => from_emulator(forward(e, req)),
            None => Response::error(404, "notFound", "Not found: query job"),
        },
        None => {
            // Tables: the catalogue first (the emulator does not show columns added by ALTER).
            if req.method == "GET"
                && let Some(t) = table_of_path(path)
            {
                let st = state.lock().unwrap();
                if let Some(table) = st.tables.get(&t) {
                    return Response::json(200, table_json(table));
                }
                if emulator.is_none() {
                    return Response::error(404, "notFound", &format!("Not found: Table {t}"));
                }
            }
            let parts: Vec<&str> = path.split('/').collect();
            let dataset_path = match parts.as_slice() {
                ["", "bigquery", "v2", "projects", p, "datasets", d] => Some(format!("{p}.{d}")),
                _ => None,
            };
            let project = parts.get(4).copied().unwrap_or("p").to_owned();
            if req.method == "POST" && path.ends_with("/datasets") {
                let mut st = state.lock().unwrap();
                if let Err(r) = bqrules::dataset_create(&project, st.can_create_datasets) {
                    return refusal(&mut st, r);
                }
                let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                let d = body
                    .pointer("/datasetReference/datasetId")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let name = format!("{project}.{d}");
                if !st.datasets.insert(name.clone()) && emulator.is_none() {
                    return Response::error(
                        409,
                        "duplicate",
                        &format!("Already Exists: Dataset {project}:{d}"),
                    );
                }
            }
            match (emulator, dataset_path) {
                (Some(e), _) => forward(e, req),
                (None, Some(d)) if req.method == "GET" => {
                    if state.lock().unwrap().datasets.contains(&d) {
                        Response::json(200, json!({"kind": "bigquery#dataset"}))
                    } else {
                        Response::error(404, "notFound", &format!("Not found: Dataset {d}"))
                    }
                }
                (None, _) if req.method == "POST" && path.ends_with("/datasets") => {
                    Response::json(200, json!({"kind": "bigquery#dataset"}))
                }
                (None, _) => Response::error(404, "notFound", &format!("Not found: {path}")),
            }
        }
    }
}
