//! End to end on moto: a bucket with notifications to a queue with a dead-letter queue, DMS-style
//! objects from the simulator put into it, the loader's handler run on what the queue delivers,
//! loads going to ferry's BigQuery test server. The delivery loop below plays the part of the
//! Lambda event source mapping (moto has no Lambda): receive up to 10 messages, invoke, delete
//! the messages not reported in `batchItemFailures`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use bytes::Bytes;
use ferry_bigquery::{Auth, Client, ClientConfig};
use ferry_core::event::SqsEvent;
use ferry_lambda::Loader;
use ferry_pipeline::backfill::{Selection, run_direct, select};
use ferry_tests::bqserver::{BqServer, Fault, Route};
use ferry_tests::stand_ins::moto_clients;
use ferry_tests::{TempDir, mappings_dir};
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::json;

const BUCKET: &str = "acme-casino-dms-cdc";
const TABLES: [&str; 2] = ["slots_account.players", "slots_account.wallet_transactions"];

struct Aws {
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    queue: String,
    dlq: String,
    dynamodb: aws_sdk_dynamodb::Client,
    lock_table: String,
}

async fn aws(rt_label: &str) -> Aws {
    let (s3, sqs) = moto_clients().await;
    let dlq = sqs
        .create_queue()
        .queue_name(format!("{rt_label}-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = queue_arn(&sqs, &dlq).await;
    let queue = sqs
        .create_queue()
        .queue_name(rt_label.to_owned())
        .attributes(QueueAttributeName::VisibilityTimeout, "1")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "6"}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue_arn = queue_arn(&sqs, &queue).await;
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let filter = aws_sdk_s3::types::NotificationConfigurationFilter::builder()
        .key(
            aws_sdk_s3::types::S3KeyFilter::builder()
                .filter_rules(
                    aws_sdk_s3::types::FilterRule::builder()
                        .name(aws_sdk_s3::types::FilterRuleName::Prefix)
                        .value("slots/account/")
                        .build(),
                )
                .build(),
        )
        .build();
    s3.put_bucket_notification_configuration()
        .bucket(BUCKET)
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder()
                .queue_configurations(
                    aws_sdk_s3::types::QueueConfiguration::builder()
                        .queue_arn(queue_arn)
                        .events(aws_sdk_s3::types::Event::S3ObjectCreated)
                        .filter(filter)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let lock_table = format!("{rt_label}-locks");
    let dynamodb = ferry_tests::stand_ins::moto_lock_table(&lock_table).await;
    Aws {
        s3,
        sqs,
        queue,
        dlq,
        dynamodb,
        lock_table,
    }
}

async fn put(aws: &Aws, key: &str, body: Vec<u8>) {
    aws.s3
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap();
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone()
}

/// One delivery round: what the event source mapping does. `ack` false leaves even the
/// successful messages in the queue (an invocation that died before answering).
/// Objects the schedule sent back to the queue, and applies it carried to a later slot.
static DEFERRED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static APPLIES_CARRIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn deliver(aws: &Aws, loader: &Loader, ack: bool) -> usize {
    let got = aws
        .sqs
        .receive_message()
        .queue_url(&aws.queue)
        .max_number_of_messages(10)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let messages = got.messages();
    if messages.is_empty() {
        return 0;
    }
    let records: Vec<_> = messages
        .iter()
        .map(|m| {
            let count = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .cloned()
                .unwrap_or_else(|| "1".into());
            json!({
                "messageId": m.message_id().unwrap(),
                "receiptHandle": m.receipt_handle().unwrap(),
                "body": m.body().unwrap(),
                "attributes": {"ApproximateReceiveCount": count},
                "eventSource": "aws:sqs",
            })
        })
        .collect();
    let event: SqsEvent = serde_json::from_value(json!({ "Records": records })).unwrap();
    let report = loader
        .handle(event, Some(Duration::from_secs(300)))
        .await
        .unwrap();
    for (_, key, result) in &report.objects {
        if let ferry_pipeline::ObjectResult::Failed { reason, .. } = result {
            eprintln!("delivery: {key}: {reason}");
        }
    }
    DEFERRED.fetch_add(report.deferred.len(), std::sync::atomic::Ordering::Relaxed);
    APPLIES_CARRIED.fetch_add(
        report.apply_deferred.len(),
        std::sync::atomic::Ordering::Relaxed,
    );
    if ack {
        for m in messages {
            let id = m.message_id().unwrap();
            if !report
                .response
                .batch_item_failures
                .iter()
                .any(|f| f.item_identifier == id)
            {
                aws.sqs
                    .delete_message()
                    .queue_url(&aws.queue)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
    messages.len()
}

async fn drain(aws: &Aws, loader: &Loader) {
    let mut idle = 0;
    let mut rounds = 0;
    while idle < 3 {
        rounds += 1;
        assert!(rounds < 400, "the queue never drained");
        // Messages sent back with a delay (wake-ups of a later slot) still count as work.
        if deliver(aws, loader, true).await == 0 && delayed(aws).await == 0 {
            idle += 1;
        } else {
            idle = 0;
        }
    }
}

async fn delayed(aws: &Aws) -> usize {
    let a = aws
        .sqs
        .get_queue_attributes()
        .queue_url(&aws.queue)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .unwrap();
    a.attributes().unwrap()[&QueueAttributeName::ApproximateNumberOfMessagesDelayed]
        .parse::<usize>()
        .unwrap()
}

async fn queue_depth(aws: &Aws, url: &str) -> usize {
    let a = aws
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let m = a.attributes().unwrap();
    m[&QueueAttributeName::ApproximateNumberOfMessages]
        .parse::<usize>()
        .unwrap()
        + m[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible]
            .parse::<usize>()
            .unwrap()
}

/// Rows per `_ferry_file` in each succeeded load job's parquet: file -> list of (job, rows).
fn loaded_files(server: &BqServer) -> BTreeMap<String, Vec<(String, usize)>> {
    let st = server.state.lock().unwrap();
    let mut out: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
    for job in st.succeeded() {
        let reader = SerializedFileReader::new(Bytes::from(job.data.clone())).unwrap();
        let mut per_file: HashMap<String, usize> = HashMap::new();
        for row in reader.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            let file = row
                .get_column_iter()
                .find(|(n, _)| n.as_str() == "_ferry_file")
                .map(|(_, v)| v.to_string().trim_matches('"').to_owned())
                .unwrap();
            *per_file.entry(file).or_default() += 1;
        }
        for (file, rows) in per_file {
            out.entry(file).or_default().push((job.id.clone(), rows));
        }
    }
    out
}

#[test]
fn moto_end_to_end_rows_land_once_bad_objects_reach_the_dlq_and_redrive_loads_them() {
    let rt = ferry_tests::runtime();
    let aws = rt.block_on(aws("loader-e2e"));

    // The simulator writes the DMS tree of two mapped tables.
    let catalog = ferry_core::Catalog::load_dir(&mappings_dir()).unwrap();
    let tree = TempDir::new("e2e-tree");
    let manifest = ferry_sim::simulate(
        &catalog,
        &ferry_sim::SimOptions {
            rows: 60,
            minutes: 3,
            changes_per_minute: 12,
            only: TABLES.iter().map(|t| t.to_string()).collect(),
            ..ferry_sim::SimOptions::default()
        },
        tree.path(),
    )
    .unwrap();
    // The simulator's manifest lists every object it wrote.
    let mut keys: Vec<String> = manifest
        .tables
        .iter()
        .flat_map(|t| t.files.clone())
        .collect();
    keys.sort();
    assert!(keys.len() >= 4, "{keys:?}");

    let server = BqServer::start(None);
    // BigQuery trouble for a while: 5xx and throttling, a lost answer, failed jobs.
    server.inject([
        Fault::Http(Route::Insert, 503, "backendError"),
        Fault::Http(Route::Insert, 503, "backendError"),
        Fault::Http(Route::Insert, 503, "backendError"),
        Fault::Http(Route::Insert, 503, "backendError"),
        Fault::Http(Route::Insert, 429, "rateLimitExceeded"),
        Fault::DropAfter(Route::Insert),
        Fault::JobFails("backendError"),
        Fault::Http(Route::GetJob, 500, "internalError"),
    ]);
    let bq = Client::new(
        ClientConfig {
            base_url: server.url.clone(),
            max_tries: 2,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            ..ClientConfig::default()
        },
        Auth::None,
        "acme-casino-analytics",
    )
    .unwrap();
    let work = TempDir::new("e2e-work");
    let loader = Loader::new(ferry_lambda::LoaderParts {
        catalog: catalog.clone(),
        s3: aws.s3.clone(),
        sqs: aws.sqs.clone(),
        dlq_url: aws.dlq.clone(),
        bigquery: bq,
        handle: rt.handle().clone(),
        work_dir: work.path().to_path_buf(),
        max_parallel: 2,
        // Every batch's files of a table share one load job (the budget's combining path).
        warehouse: ferry_bigquery::WarehouseOptions {
            combine_from: 0.0,
            ..ferry_bigquery::WarehouseOptions::default()
        },
        lock: Some(std::sync::Arc::new(
            ferry_pipeline::ports::ProcessLock::default(),
        )),
        // On the production schedule, with one-second slots: files that find their table's
        // slot taken go back to the queue and come back for the next one; applies travel to
        // their slot in apply markers.
        // The pending sets in moto's DynamoDB, as in production.
        pending: Some(std::sync::Arc::new(ferry_aws::DynamoDbPending::new(
            aws.dynamodb.clone(),
            rt.handle().clone(),
            aws.lock_table.clone(),
        ))),
        schedule: Some((
            ferry_pipeline::schedule::ScheduleSettings {
                table_load_jobs_per_day: 86_400,
                project_load_jobs_per_day: 10_000_000,
                wake_after: Duration::from_secs(1),
                apply_every: Duration::from_secs(1),
            },
            aws.queue.clone(),
        )),
    });

    let corrupt = "slots/account/slots_account/players/20261126-235900000.parquet";
    let unmapped = "slots/account/slots_account/not_mapped_here/LOAD00000001.parquet";
    let hostile = "slots/account/slots_account/players/we ird+%2F 你好 😊.parquet";
    rt.block_on(async {
        for key in &keys {
            let body = std::fs::read(tree.path().join(key)).unwrap();
            put(&aws, key, body).await;
        }
        for (key, body) in [
            (corrupt, b"PAR1 this is not parquet PAR1".to_vec()),
            (unmapped, std::fs::read(tree.path().join(&keys[0])).unwrap()),
            (hostile, b"not parquet either".to_vec()),
        ] {
            put(&aws, key, body).await;
        }
        // One invocation dies after loading, before answering: its messages come back.
        deliver(&aws, &loader, false).await;
        drain(&aws, &loader).await;
    });

    {
        let st = server.state.lock().unwrap();
        eprintln!(
            "e2e: {} objects, {} jobs ({} succeeded)",
            keys.len(),
            st.jobs.len(),
            st.succeeded().len()
        );
    }
    // Every simulated file is in BigQuery exactly once, with all its rows.
    let loaded = loaded_files(&server);
    for t in &manifest.tables {
        for file in &t.files {
            let jobs = loaded
                .get(file)
                .unwrap_or_else(|| panic!("{file} was never loaded"));
            assert_eq!(jobs.len(), 1, "{file} loaded by {jobs:?}");
        }
        let rows: usize = t.files.iter().map(|f| loaded[f][0].1).sum();
        assert_eq!(
            rows as u64,
            t.changes.total(),
            "{}: rows in BigQuery",
            t.table
        );
    }
    assert!(
        !loaded.contains_key(unmapped),
        "unmapped tables are not loaded"
    );
    assert_eq!(server.faults_left(), 0, "every injected fault was hit");
    // The schedule at work (how often depends on timing; the handler tests pin it down): files
    // that waited for their table's next slot still loaded exactly once (above).
    eprintln!(
        "e2e: {} objects deferred, {} applies carried to their slot",
        DEFERRED.load(std::sync::atomic::Ordering::Relaxed),
        APPLIES_CARRIED.load(std::sync::atomic::Ordering::Relaxed)
    );

    // The corrupt object waits in the dead-letter queue with its reason.
    let letters = rt
        .block_on(ferry_aws::sqs::inspect(&aws.sqs, &aws.dlq, 10, 0))
        .unwrap();
    let bad = letters
        .iter()
        .find(|d| d.objects.iter().any(|o| o.ends_with(corrupt)))
        .unwrap_or_else(|| panic!("corrupt object not dead-lettered: {letters:#?}"));
    assert!(bad.reason.contains(corrupt), "{}", bad.reason);
    assert!(
        bad.reason.to_lowercase().contains("parquet"),
        "{}",
        bad.reason
    );
    assert!(
        !letters
            .iter()
            .any(|d| d.objects.iter().any(|o| o.ends_with(unmapped))),
        "unmapped objects are acknowledged, not dead-lettered"
    );
    let foreign = letters
        .iter()
        .find(|d| d.objects.iter().any(|o| o.ends_with(hostile)))
        .unwrap_or_else(|| panic!("hostile key not dead-lettered: {letters:#?}"));
    assert!(
        foreign.reason.contains("not a key DMS writes"),
        "{}",
        foreign.reason
    );
    assert_eq!(rt.block_on(queue_depth(&aws, &aws.queue)), 0);

    // A backfill of one table, directly and through the queue, replays through the same path
    // and loads nothing twice; a time range selects by the files' CDC timestamps.
    let source = catalog.source("slots-account").unwrap();
    let store = ferry_aws::S3Store::new(aws.s3.clone(), rt.handle().clone());
    let table = "slots_account.wallet_transactions";
    let selection = Selection {
        table: Some(table.into()),
        ..Selection::default()
    };
    let objects = select(&catalog, &store, source, &selection).unwrap();
    let expected_files = &manifest
        .tables
        .iter()
        .find(|t| t.table == table)
        .unwrap()
        .files;
    let mut selected: Vec<&str> = objects.iter().map(|(_, m)| m.key.as_str()).collect();
    selected.sort_unstable();
    let mut want: Vec<&str> = expected_files.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(selected, want);
    let jobs_before = server.state.lock().unwrap().jobs.len();
    let summary = run_direct(&loader.pipeline, source, &objects, &mut |_| {});
    assert_eq!(
        (summary.loaded, summary.already_loaded, summary.failed),
        (0, objects.len(), 0),
        "{summary:?}"
    );
    let bodies: Vec<String> = objects
        .iter()
        .map(|(_, m)| {
            ferry_core::event::s3_event_body(
                BUCKET,
                &m.key,
                m.size,
                &m.etag,
                "2026-11-26T00:00:00.000Z",
            )
        })
        .collect();
    rt.block_on(async {
        assert_eq!(
            ferry_aws::sqs::enqueue(&aws.sqs, &aws.queue, &bodies)
                .await
                .unwrap(),
            bodies.len()
        );
        drain(&aws, &loader).await;
    });
    assert_eq!(
        server.state.lock().unwrap().jobs.len(),
        jobs_before,
        "a repeated backfill starts no load job"
    );
    let late = Selection {
        since: Some(ferry_pipeline::backfill::compact_time("2026-11-26T00:02").unwrap()),
        ..selection
    };
    let recent = select(&catalog, &store, source, &late).unwrap();
    assert!(
        !recent.is_empty() && recent.len() < objects.len(),
        "{} of {}",
        recent.len(),
        objects.len()
    );

    // Ops fix the object (DMS rewrote it) and redrive: moto has no StartMessageMoveTask, so the
    // copy fallback runs; the object then loads once.
    let good = keys
        .iter()
        .find(|k| k.contains("/players/") && !k.contains("LOAD"))
        .unwrap();
    rt.block_on(async {
        let body = std::fs::read(tree.path().join(good)).unwrap();
        put(&aws, corrupt, body).await;
        // The overwrite's own notification is delivered and loads the new version.
        drain(&aws, &loader).await;
        let r = ferry_aws::sqs::redrive(&aws.sqs, &aws.dlq, &aws.queue, None, true)
            .await
            .unwrap();
        assert_eq!(r.method, "copy");
        assert!(r.moved >= 1, "{r:?}");
        drain(&aws, &loader).await;
    });
    let loaded = loaded_files(&server);
    assert_eq!(
        loaded[corrupt].len(),
        1,
        "the fixed object is loaded once: {:?}",
        loaded[corrupt]
    );
    let left = rt
        .block_on(ferry_aws::sqs::inspect(&aws.sqs, &aws.dlq, 10, 0))
        .unwrap();
    assert!(
        !left
            .iter()
            .any(|d| d.objects.iter().any(|o| o.ends_with(corrupt))),
        "{left:#?}"
    );

    // An object announced through EventBridge (the deployment's `eventSource: eventbridge`). The
    // S3 -> EventBridge -> SQS routing itself is not exercised on moto: the body the stack's rule
    // would deliver (the S3 User Guide's "Object Created" shape) is sent to the queue directly.
    // The folder is one the bucket's notifications do not cover, so only this body announces it.
    let eb_tree = TempDir::new("e2e-eventbridge");
    let eb = ferry_sim::simulate(
        &catalog,
        &ferry_sim::SimOptions {
            rows: 20,
            minutes: 1,
            changes_per_minute: 3,
            only: vec!["slots_game.spins".into()],
            ..ferry_sim::SimOptions::default()
        },
        eb_tree.path(),
    )
    .unwrap();
    let eb_key = eb.tables[0].files[0].clone();
    assert!(eb_key.starts_with("slots/game/"), "{eb_key}");
    rt.block_on(async {
        put(
            &aws,
            &eb_key,
            std::fs::read(eb_tree.path().join(&eb_key)).unwrap(),
        )
        .await;
        let body = json!({
            "version": "0", "id": "e2e-1", "detail-type": "Object Created", "source": "aws.s3",
            "account": "123456789012", "time": "2026-11-26T12:00:00Z", "region": "us-east-1",
            "resources": [format!("arn:aws:s3:::{BUCKET}")],
            "detail": {"version": "0", "bucket": {"name": BUCKET},
                "object": {"key": eb_key, "size": 1, "etag": "x", "sequencer": "1"},
                "reason": "PutObject"}
        });
        aws.sqs
            .send_message()
            .queue_url(&aws.queue)
            .message_body(body.to_string())
            .send()
            .await
            .unwrap();
        drain(&aws, &loader).await;
    });
    assert_eq!(
        loaded_files(&server).get(&eb_key).map(Vec::len),
        Some(1),
        "the EventBridge-announced object is loaded once"
    );
}
