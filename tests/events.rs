//! Real AWS event shapes (SQS wrapping S3 notifications, an SNS envelope, S3's test event) as
//! the loader receives them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use ferry_core::event::{EventError, SqsBatchResponse, SqsEvent, parse_body, s3_event_body};
use ferry_tests::repo_root;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("tests/fixtures/events").join(name)).unwrap()
}

#[test]
fn sqs_event_with_s3_notifications() {
    let event: SqsEvent = serde_json::from_str(&fixture("sqs-s3-put.json")).unwrap();
    assert_eq!(event.records.len(), 2);
    assert_eq!(
        event.records[0].message_id,
        "059f36b4-87a3-44ab-83d2-661975830a7d"
    );
    assert_eq!(event.records[0].receive_count(), 2);

    let first = parse_body(&event.records[0].body).unwrap();
    assert!(!first.test_event);
    assert_eq!(first.objects.len(), 1);
    let o = &first.objects[0];
    assert_eq!(o.bucket, "acme-casino-dms-cdc");
    assert_eq!(
        o.key,
        "slots/game/slots_game/spins/2026/11/26/20261126-101500123.parquet"
    );
    assert_eq!(
        (o.size, o.etag.as_deref()),
        (Some(1_048_576), Some("d41d8cd98f00b204e9800998ecf8427e"))
    );
    assert_eq!(o.event_name, "ObjectCreated:Put");

    // Form-encoded key (%2F for '/', '+' for a space, UTF-8 escapes) and a quoted multipart ETag.
    let second = parse_body(&event.records[1].body).unwrap();
    let o = &second.objects[0];
    assert_eq!(
        o.key,
        "poker/game/poker_game/vip room 😊/LOAD00000001.parquet"
    );
    assert_eq!(
        o.etag.as_deref(),
        Some("9b2cf535f27731c974343645a3985328-2")
    );
    assert_eq!(o.event_name, "ObjectCreated:CompleteMultipartUpload");
}

#[test]
fn sns_envelope_test_event_and_removals() {
    let sns = parse_body(&fixture("sns-envelope-body.json")).unwrap();
    assert_eq!(sns.objects.len(), 1);
    assert_eq!(
        sns.objects[0].key,
        "slots/account/slots_account/players/LOAD00000001.parquet"
    );

    let test = parse_body(&fixture("s3-test-event-body.json")).unwrap();
    assert!(test.test_event);
    assert!(test.objects.is_empty());

    // Removals are not loaded, but reported (a DMS truncate removes a table's files).
    let removed = parse_body(&fixture("s3-removed-body.json")).unwrap();
    assert!(removed.objects.is_empty() && removed.ignored.is_empty());
    assert_eq!(removed.removed.len(), 1);
    assert_eq!(
        removed.removed[0].key,
        "slots/account/slots_account/players/LOAD00000001.parquet"
    );
    assert_eq!(removed.removed[0].event_name, "ObjectRemoved:Delete");
}

#[test]
fn malformed_bodies_are_errors_of_their_own_message() {
    assert!(matches!(
        parse_body("not json"),
        Err(EventError::NotJson(_))
    ));
    assert_eq!(parse_body("{\"hello\": 1}"), Err(EventError::UnknownShape));
    let no_key = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{}}}]}"#;
    assert_eq!(
        parse_body(no_key),
        Err(EventError::BadRecord {
            index: 0,
            reason: "no s3.object.key".into()
        })
    );
    let bad_key = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"a%zz"}}}]}"#;
    assert!(matches!(
        parse_body(bad_key),
        Err(EventError::BadKey { index: 0, .. })
    ));
    let future = r#"{"Records":[{"eventVersion":"3.0","eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{}}]}"#;
    assert!(
        parse_body(future)
            .unwrap_err()
            .to_string()
            .contains("eventVersion \"3.0\"")
    );
    // An SNS envelope inside an SNS envelope is not something S3 sends.
    let nested =
        serde_json::json!({"Type": "Notification", "Message": fixture("sns-envelope-body.json")})
            .to_string();
    assert_eq!(parse_body(&nested), Err(EventError::UnknownShape));
}

#[test]
fn generated_bodies_round_trip_hostile_keys() {
    for key in [
        "a b/c+d/100%/LOAD00000001.parquet",
        "플레이어/😊/x.parquet",
        "plain/key.parquet",
    ] {
        let body = s3_event_body("bucket", key, 10, "etag", "2026-11-26T00:00:00Z");
        let parsed = parse_body(&body).unwrap();
        assert_eq!(parsed.objects[0].key, key);
    }
}

#[test]
fn batch_response_shape() {
    let mut response = SqsBatchResponse::default();
    response.add_failure("m-1");
    assert_eq!(
        serde_json::to_string(&response).unwrap(),
        r#"{"batchItemFailures":[{"itemIdentifier":"m-1"}]}"#
    );
    assert_eq!(
        serde_json::to_string(&SqsBatchResponse::default()).unwrap(),
        r#"{"batchItemFailures":[]}"#
    );
}

#[test]
fn eventbridge_s3_events_as_the_s3_user_guide_shows_them() {
    // "Object Created": loaded; the key is not URL-encoded (a `+` and `%2F` stay as they are).
    let created = parse_body(&fixture("eventbridge-object-created.json")).unwrap();
    assert_eq!(created.objects.len(), 1, "{created:?}");
    let o = &created.objects[0];
    assert_eq!(o.bucket, "acme-casino-dms-cdc");
    assert_eq!(
        o.key,
        "slots/account/slots_account/players/we ird+%2F 你好 😊.parquet"
    );
    assert_eq!(
        (o.size, o.etag.as_deref(), o.event_name.as_str()),
        (
            Some(5),
            Some("b1946ac92492d2347c6235b4d2611184"),
            "ObjectCreated:PutObject"
        )
    );
    assert_eq!(o.event_time.as_deref(), Some("2026-11-26T12:00:01Z"));
    // "Object Deleted": reported like ObjectRemoved, never loaded.
    let deleted = parse_body(&fixture("eventbridge-object-deleted.json")).unwrap();
    assert!(deleted.objects.is_empty());
    assert_eq!(deleted.removed.len(), 1, "{deleted:?}");
    assert_eq!(
        deleted.removed[0].key,
        "slots/account/slots_account/players/LOAD00000001.parquet"
    );
    assert_eq!(deleted.removed[0].event_name, "ObjectRemoved:DeleteObject");
    // A created event without a key is refused.
    let mut broken: serde_json::Value =
        serde_json::from_str(&fixture("eventbridge-object-created.json")).unwrap();
    broken["detail"]["object"]
        .as_object_mut()
        .unwrap()
        .remove("key");
    assert!(matches!(
        parse_body(&broken.to_string()),
        Err(EventError::BadRecord { .. })
    ));
}
