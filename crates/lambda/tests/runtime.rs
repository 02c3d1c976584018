//! The deployed artifact, end to end: the real `bootstrap` binary polls a Lambda Runtime API
//! (a stand-in written from AWS's documented protocol: `GET .../invocation/next` hands out an
//! event with its request id and deadline headers, `POST .../invocation/{id}/response` takes the
//! answer), reads objects from moto's S3, dead-letters to moto's SQS, and loads into ferry's
//! BigQuery test server. It checks the wiring `main.rs` adds to the library: configuration from
//! the environment, the event and response JSON, JSON logs and metrics on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/support/bqrules.rs"]
#[allow(dead_code, unreachable_pub)]
mod bqrules;
#[path = "../../../tests/support/bqserver.rs"]
#[allow(dead_code, unreachable_pub)]
mod bqserver;
#[path = "../../../tests/support/crafted.rs"]
#[allow(dead_code, unreachable_pub)]
mod crafted;
#[path = "../../../tests/support/stand_ins.rs"]
#[allow(dead_code, unreachable_pub)]
mod stand_ins;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bqserver::{BqServer, Fault, Route};
use ferry_core::event::s3_event_body;
use serde_json::{Value, json};

const BUCKET: &str = "acme-casino-dms-cdc";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What the Runtime API stand-in saw.
#[derive(Default)]
struct Seen {
    next_calls: usize,
    response: Option<(String, Value)>,
    error: Option<String>,
}

fn read_body(reader: &mut BufReader<TcpStream>, headers: &[(String, String)]) -> Vec<u8> {
    let get = |k: &str| {
        headers
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        return body;
    }
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    body
}

/// Serves one invocation of `event`, then holds further `next` polls open.
fn runtime_api(event: Value, seen: Arc<Mutex<Seen>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (event, seen) = (event.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (
                        parts.next().unwrap_or("").to_owned(),
                        parts.next().unwrap_or("").to_owned(),
                    );
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.push((k.trim().to_owned(), v.trim().to_owned()));
                        }
                    }
                    let body = read_body(&mut reader, &headers);
                    let reply = |stream: &mut TcpStream, status: &str, extra: &str, body: &str| {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.flush();
                    };
                    if method == "GET" && path.ends_with("/runtime/invocation/next") {
                        let first = {
                            let mut s = seen.lock().unwrap();
                            s.next_calls += 1;
                            s.next_calls == 1
                        };
                        if !first {
                            // No more events: hold the poll open, as the service does.
                            std::thread::sleep(Duration::from_secs(3600));
                            return;
                        }
                        let deadline = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_millis()
                            + 120_000;
                        let extra = format!(
                            "Lambda-Runtime-Aws-Request-Id: req-1\r\nLambda-Runtime-Deadline-Ms: {deadline}\r\nLambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:ferry-test-loader\r\nLambda-Runtime-Trace-Id: Root=1-00000000-000000000000000000000000\r\n"
                        );
                        reply(&mut stream, "200 OK", &extra, &event.to_string());
                    } else if method == "POST"
                        && path.contains("/runtime/invocation/")
                        && path.ends_with("/response")
                    {
                        let id = path.split('/').nth(4).unwrap_or("").to_owned();
                        seen.lock().unwrap().response =
                            Some((id, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                        reply(&mut stream, "202 Accepted", "", "{}");
                    } else if method == "POST" && path.ends_with("/error") {
                        seen.lock().unwrap().error =
                            Some(String::from_utf8_lossy(&body).into_owned());
                        reply(&mut stream, "202 Accepted", "", "{}");
                    } else {
                        reply(&mut stream, "404 Not Found", "", "{}");
                    }
                }
            });
        }
    });
    addr
}

fn message(id: &str, key: &str) -> Value {
    json!({
        "messageId": id,
        "receiptHandle": format!("rh-{id}"),
        "body": s3_event_body(BUCKET, key, 1, "etag", "2026-11-26T00:00:00.000Z"),
        "attributes": {"ApproximateReceiveCount": "1"},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:ferry-test-loader",
        "awsRegion": "us-east-1",
    })
}

#[test]
fn bootstrap_answers_a_real_invocation_with_the_partial_batch_response() {
    let moto = stand_ins::moto();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Two simulated tables in moto's S3, and a dead-letter queue.
    let catalog = ferry_core::Catalog::load_dir(&repo().join("mappings")).unwrap();
    let tree = std::env::temp_dir().join(format!("ferry-runtime-tree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tree);
    let manifest = ferry_sim::simulate(
        &catalog,
        &ferry_sim::SimOptions {
            rows: 30,
            minutes: 1,
            only: vec![
                "slots_account.players".into(),
                "slots_account.wallets".into(),
            ],
            ..ferry_sim::SimOptions::default()
        },
        &tree,
    )
    .unwrap();
    let players = manifest
        .tables
        .iter()
        .find(|t| t.table == "slots_account.players")
        .unwrap()
        .files[0]
        .clone();
    let wallets = manifest
        .tables
        .iter()
        .find(|t| t.table == "slots_account.wallets")
        .unwrap()
        .files[0]
        .clone();
    let corrupt = "slots/account/slots_account/players/20261126-235900000.parquet";
    // A crafted object: a valid file whose Op page header claims 2 GiB.
    let crafted_key = "slots/account/slots_account/players/20261126-235800000.parquet";
    let dlq = rt.block_on(async {
        let (s3, sqs) = stand_ins::moto_clients().await;
        s3.create_bucket().bucket(BUCKET).send().await.unwrap();
        for key in [&players, &wallets] {
            let body = std::fs::read(tree.join(key)).unwrap();
            s3.put_object()
                .bucket(BUCKET)
                .key(key)
                .body(body.into())
                .send()
                .await
                .unwrap();
        }
        s3.put_object()
            .bucket(BUCKET)
            .key(corrupt)
            .body(b"not parquet".to_vec().into())
            .send()
            .await
            .unwrap();
        s3.put_object()
            .bucket(BUCKET)
            .key(crafted_key)
            .body(crafted::page_claims_2_gib().into())
            .send()
            .await
            .unwrap();
        stand_ins::moto_lock_table("runtime-locks").await;
        sqs.create_queue()
            .queue_name("runtime-dlq")
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap()
    });
    // BigQuery fails every attempt (3 per delivery) at the wallets table's load: that message
    // must come back; one 503 on the way is retried in place.
    let server = BqServer::start(None);
    server.inject([
        Fault::JobFailsOn("wallets", "backendError"),
        Fault::JobFailsOn("wallets", "backendError"),
        Fault::JobFailsOn("wallets", "backendError"),
        Fault::Http(Route::GetJob, 503, "backendError"),
    ]);
    let event = json!({"Records": [message("m-players", &players), message("m-corrupt", corrupt), message("m-crafted", crafted_key), message("m-wallets", &wallets)]});
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api = runtime_api(event, seen.clone());
    // Under a 1.5 GiB address-space limit: a file that made the loader allocate what it claims
    // would abort the process and lose the whole batch.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1572864; exec \"$0\"")
        .arg(env!("CARGO_BIN_EXE_bootstrap"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", &api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "ferry-test-loader")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("FERRY_MAPPINGS", repo().join("mappings"))
        .env("FERRY_DLQ_URL", &dlq)
        .env("FERRY_LOCK_TABLE", "runtime-locks")
        .env("FERRY_BQ_BASE_URL", &server.url)
        .env("FERRY_BQ_TOKEN", "none")
        .env(
            "FERRY_WORK_DIR",
            std::env::temp_dir().join("ferry-runtime-work"),
        )
        .env("AWS_ENDPOINT_URL", moto)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while seen.lock().unwrap().response.is_none() && seen.lock().unwrap().error.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no response from bootstrap"
        );
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("bootstrap exited with {status}: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.error, None, "{out}");
    let (id, response) = seen.response.clone().unwrap();
    assert_eq!(id, "req-1");
    // The corrupt object went to the dead-letter queue (acknowledged), players loaded, the
    // wallets message is reported for SQS to deliver again.
    assert_eq!(
        response,
        json!({"batchItemFailures": [{"itemIdentifier": "m-wallets"}]}),
        "{out}"
    );
    let st = server.state.lock().unwrap();
    assert_eq!(st.succeeded().len(), 1, "{out}");
    assert_eq!(st.load_jobs(), 4, "players once, wallets three attempts");
    drop(st);
    // JSON logs with one line per object, and EMF metrics per table.
    let lines: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "object done"
            && l["job_id"]
                .as_str()
                .is_some_and(|j| j.starts_with("ferry_slots_account_players_"))),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l["message"] == "object failed"
            && l["reason"].as_str().is_some_and(|r| r.contains(corrupt))),
        "{out}"
    );
    // The crafted object was refused by the caps, dead-lettered (not in batchItemFailures), and
    // the rest of the batch went on.
    assert!(
        lines.iter().any(|l| l["message"] == "object failed"
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.contains(crafted_key) && r.contains("FERRY_MAX_PAGE_MIB"))),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l["Table"] == "slots_account.players"
            && l["Files"] == 1
            && l["_aws"]["CloudWatchMetrics"].is_array()),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&tree);
}
