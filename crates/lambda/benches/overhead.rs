//! The loader's per-object overhead: the Lambda handler (library) on batches of 10 S3
//! notifications, objects in moto's S3, loads into ferry's BigQuery test server. Prints wall
//! time per object (round trips to moto and the server included) and CPU time per object (the
//! work ferry does outside the round trips; an upper bound, as the in-process test server's
//! CPU counts too). Run with `scripts/bench lambda` (it provides moto).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../../tests/support/bqrules.rs"]
#[allow(dead_code, unreachable_pub)]
mod bqrules;
#[path = "../../../tests/support/bqserver.rs"]
#[allow(dead_code, unreachable_pub)]
mod bqserver;
#[path = "../../../tests/support/stand_ins.rs"]
#[allow(dead_code, unreachable_pub)]
mod stand_ins;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_bigquery::{Auth, Client, ClientConfig, WarehouseOptions};
use ferry_core::event::{SqsEvent, s3_event_body};
use ferry_lambda::{Loader, LoaderParts};
use serde_json::json;

const BUCKET: &str = "acme-casino-dms-cdc";

/// CPU time of this process (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let catalog = ferry_core::Catalog::load_dir(&repo.join("mappings")).unwrap();
    let tree = std::env::temp_dir().join(format!("ferry-overhead-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tree);
    let tables: Vec<String> = catalog.sources()[0]
        .tables
        .iter()
        .filter(|t| t.enabled)
        .take(4)
        .map(|t| t.source_table())
        .collect();
    let manifest = ferry_sim::simulate(
        &catalog,
        &ferry_sim::SimOptions {
            rows: 2_000,
            minutes: 50,
            changes_per_minute: 270,
            only: tables,
            add_column: false,
            ..ferry_sim::SimOptions::default()
        },
        &tree,
    )
    .unwrap();
    // The simulator's manifest lists every object it wrote.
    let mut keys: Vec<String> = manifest
        .tables
        .iter()
        .flat_map(|t| t.files.clone())
        .collect();
    keys.sort();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (s3, sqs) = rt.block_on(stand_ins::moto_clients());
    let dlq = rt.block_on(async {
        s3.create_bucket().bucket(BUCKET).send().await.unwrap();
        for key in &keys {
            let body = std::fs::read(tree.join(key)).unwrap();
            s3.put_object()
                .bucket(BUCKET)
                .key(key)
                .body(body.into())
                .send()
                .await
                .unwrap();
        }
        sqs.create_queue()
            .queue_name("overhead-dlq")
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap()
    });
    let server = bqserver::BqServer::start(None);
    let bigquery = Client::new(
        ClientConfig {
            base_url: server.url.clone(),
            ..ClientConfig::default()
        },
        Auth::None,
        "acme-casino-analytics",
    )
    .unwrap();
    let loader = Loader::new(LoaderParts {
        catalog,
        s3,
        sqs,
        dlq_url: dlq,
        bigquery,
        handle: rt.handle().clone(),
        work_dir: tree.join("work"),
        max_parallel: 4,
        warehouse: WarehouseOptions::default(),
        lock: None,
        pending: None,
        schedule: None,
    });
    let batches: Vec<SqsEvent> = keys
        .chunks(10)
        .enumerate()
        .map(|(b, chunk)| {
            let records: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    json!({
                        "messageId": format!("m{b}-{i}"),
                        "receiptHandle": "rh",
                        "body": s3_event_body(BUCKET, k, 1, "e", "2026-11-26T00:00:00.000Z"),
                        "attributes": {"ApproximateReceiveCount": "1"},
                    })
                })
                .collect();
            serde_json::from_value(json!({ "Records": records })).unwrap()
        })
        .collect();
    let (wall0, cpu0) = (Instant::now(), cpu_time());
    let mut failed = 0;
    for event in batches {
        let report = rt
            .block_on(loader.handle(event, Some(Duration::from_secs(900))))
            .unwrap();
        failed += report.response.batch_item_failures.len() + report.dead_lettered.len();
    }
    let (wall, cpu) = (wall0.elapsed(), cpu_time() - cpu0);
    let objects = keys.len() as f64;
    let rows: u64 = manifest.tables.iter().map(|t| t.changes.total()).sum();
    let bytes: u64 = keys
        .iter()
        .map(|k| {
            std::fs::metadata(tree.join(k))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let loads = server.state.lock().unwrap().succeeded().len();
    println!(
        "{} objects ({} rows, {:.1} MB) in batches of 10: {} load jobs, {} failed",
        keys.len(),
        rows,
        bytes as f64 / 1e6,
        loads,
        failed
    );
    println!(
        "wall  {:>7.1} ms per object (S3 range reads from moto and BigQuery round trips included)",
        wall.as_secs_f64() * 1000.0 / objects
    );
    println!(
        "cpu   {:>7.1} ms per object (ferry's own work: parse, plan, convert, upload; test server included)",
        cpu.as_secs_f64() * 1000.0 / objects
    );
    let _ = std::fs::remove_dir_all(&tree);
}
