//! A BigQuery test server that keeps the load-job contract as BigQuery documents it, with
//! fault injection. No emulator keeps this contract (bqemulator ignores client job ids and never
//! answers 409), so the exactly-once tests run against this one.
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
//! - every other call (`tables.get`, `queries`) is forwarded to an emulator when one is given
//!   (the SQL is the emulator's business); without one, queries are recorded and succeed, and
//!   every table exists with no columns (so the client's column additions are exercised).
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
}

#[derive(Default)]
struct Session {
    resource: Value,
    total: u64,
    data: Vec<u8>,
}

/// The shared state, for assertions.
#[derive(Default)]
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
            polls_left: 0,
            data: Vec::new(),
            kind: "QUERY",
            query: Some(sql.to_owned()),
            created_millis,
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
        status["errorResult"] = json!({"reason": reason, "message": format!("injected {reason}")});
        status["errors"] = json!([{"reason": reason, "message": format!("injected {reason}")}]);
    }
    let mut configuration = json!({ "jobType": job.kind });
    if let Some(q) = &job.query {
        configuration["query"] = json!({ "query": q, "useLegacySql": false });
    }
    json!({
        "kind": "bigquery#job",
        "jobReference": {"projectId": project, "jobId": job.id},
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
        Fault::JobFails(_) | Fault::JobFailsOn(..) => false,
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

fn create_job(state: &Mutex<State>, resource: &Value, data: Vec<u8>) -> Response {
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
    let error = match st
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
    let job = Job {
        id,
        table,
        error,
        polls_left: if kind == "LOAD" { st.running_polls } else { 0 },
        data,
        kind,
        query,
        created_millis: now_millis(),
    };
    let body = job_json(&job, &project);
    st.jobs.push(job);
    Response::json(200, body)
}

fn process(state: &Mutex<State>, url: &str, emulator: Option<&str>, req: &Request) -> Response {
    let path = req.target.split('?').next().unwrap_or("");
    let query = req.target.split_once('?').map(|(_, q)| q).unwrap_or("");
    match route_of(req) {
        Some(Route::Insert) if query.contains("uploadType=multipart") => {
            let ct = req.headers.get("content-type").cloned().unwrap_or_default();
            match multipart_parts(&ct, &req.body) {
                Some((meta, data)) => create_job(state, &meta, data),
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
                create_job(state, &resource, Vec::new())
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
            create_job(state, &resource, data)
        }
        Some(Route::GetJob) => {
            let id = path.rsplit('/').next().unwrap_or("");
            let mut st = state.lock().unwrap();
            match st.jobs.iter_mut().find(|j| j.id == id) {
                Some(job) => {
                    job.polls_left = job.polls_left.saturating_sub(1);
                    let project = path.split('/').nth(4).unwrap_or("p").to_owned();
                    let body = job_json(job, &project);
                    Response::json(200, body)
                }
                None => Response::error(404, "notFound", &format!("Not found: Job {id}")),
            }
        }
        Some(Route::Query) => {
            let mut count_answer = None;
            if let Ok(v) = serde_json::from_slice::<Value>(&req.body)
                && let Some(q) = v.get("query").and_then(Value::as_str)
            {
                let mut st = state.lock().unwrap();
                st.queries.push(q.to_owned());
                if q.contains("INFORMATION_SCHEMA.JOBS_BY_PROJECT") {
                    count_answer = st.load_job_count;
                }
            }
            if let Some(n) = count_answer {
                return Response::json(
                    200,
                    json!({"kind": "bigquery#queryResponse", "jobComplete": true,
                           "jobReference": {"jobId": "count"},
                           "schema": {"fields": [{"name": "jobs", "type": "INTEGER"}]},
                           "rows": [{"f": [{"v": n.to_string()}]}], "totalRows": "1"}),
                );
            }
            match emulator {
                Some(e) => forward(e, req),
                None => Response::json(
                    200,
                    json!({"kind": "bigquery#queryResponse", "jobComplete": true,
                           "jobReference": {"jobId": "q"}, "rows": [], "totalRows": "0"}),
                ),
            }
        }
        None => match emulator {
            Some(e) => forward(e, req),
            // Without an emulator every table exists with no columns yet: the client adds the
            // file's columns (its ALTER statements are recorded with the queries).
            None if req.method == "GET" && path.contains("/tables/") => Response::json(
                200,
                json!({"kind": "bigquery#table", "schema": {"fields": []}}),
            ),
            None if req.method == "POST" && path.ends_with("/datasets") => {
                Response::json(200, json!({"kind": "bigquery#dataset"}))
            }
            None => Response::error(404, "notFound", &format!("Not found: {path}")),
        },
    }
}
