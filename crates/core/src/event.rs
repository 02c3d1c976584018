//! The messages the loader receives: SQS events whose bodies are S3 event notifications (sent
//! directly or wrapped in an SNS envelope), S3's `s3:TestEvent`, and the partial-batch response.
//!
//! Each body is parsed on its own: one bad body fails only its own message.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::key::{KeyDecodeError, decode_event_key};

/// An SQS event as Lambda delivers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqsEvent {
    /// The messages of the batch.
    #[serde(rename = "Records", default)]
    pub records: Vec<SqsMessage>,
}

/// One SQS message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqsMessage {
    /// The message id, reported back in `batchItemFailures`.
    #[serde(rename = "messageId")]
    pub message_id: String,
    /// The receipt handle (ignored by the handler, kept for tools).
    #[serde(
        rename = "receiptHandle",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub receipt_handle: String,
    /// The body: an S3 notification, an SNS envelope around one, or an S3 test event.
    #[serde(default)]
    pub body: String,
    /// SQS attributes (`ApproximateReceiveCount`, `SentTimestamp`, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub attributes: serde_json::Map<String, Value>,
    /// The queue's ARN.
    #[serde(
        rename = "eventSourceARN",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub event_source_arn: String,
}

impl SqsMessage {
    /// How many times SQS has delivered this message (1 on the first delivery; 1 when the
    /// attribute is missing, as the count stored).
    pub fn receive_count(&self) -> u32 {
        match self.attributes.get("ApproximateReceiveCount") {
            Some(Value::String(s)) => s.parse().unwrap_or(1),
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(1),
            _ => 1,
        }
    }
}

/// The partial-batch response: the messages to deliver again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqsBatchResponse {
    /// Failed messages; every other message of the batch is deleted by SQS.
    #[serde(rename = "batchItemFailures")]
    pub batch_item_failures: Vec<BatchItemFailure>,
}

/// One failed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItemFailure {
    /// The message id.
    #[serde(rename = "itemIdentifier")]
    pub item_identifier: String,
}

impl SqsBatchResponse {
    /// Adds a failed message.
    pub fn add_failure(&mut self, message_id: impl Into<String>) {
        self.batch_item_failures.push(BatchItemFailure {
            item_identifier: message_id.into(),
        });
    }
}

/// An object that was created, as the notification names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEvent {
    /// Bucket.
    pub bucket: String,
    /// Key, decoded (`+` and `%XX` resolved).
    pub key: String,
    /// Size in bytes, when given.
    pub size: Option<u64>,
    /// ETag, when given (without quotes).
    pub etag: Option<String>,
    /// `ObjectCreated:Put`, `ObjectCreated:CompleteMultipartUpload`, ...
    pub event_name: String,
    /// When S3 says it happened (ISO-8601), when given.
    pub event_time: Option<String>,
}

/// What a message body holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notification {
    /// Created objects to load.
    pub objects: Vec<ObjectEvent>,
    /// Removed objects (`ObjectRemoved:*`, EventBridge `Object Deleted`): nothing is loaded or
    /// deleted for them, but a DMS truncate or reload removes a table's files, so they are
    /// recorded per table and raise an alarm.
    pub removed: Vec<ObjectEvent>,
    /// Records that are not object creations (removals, restores, ...), with why they are ignored.
    pub ignored: Vec<String>,
    /// Whether this is S3's `s3:TestEvent` (sent when notifications are configured).
    pub test_event: bool,
    /// Set when ferry itself deferred these objects to a later load slot of their table.
    pub deferred: Option<Deferral>,
    /// Set when the message wakes a table's next load or apply slot: its work waits in the
    /// table's pending set.
    pub wake: Option<Wake>,
}

/// A table whose next load or apply slot has work waiting in its pending set (see
/// [`wake_body`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wake {
    /// The source's name.
    pub source: String,
    /// `schema.table` in the source.
    pub table: String,
    /// What waits: `load` (objects) or `apply` (change-log files not applied yet).
    pub work: WakeFor,
    /// When it is due, µs since the epoch: one that arrives sooner (SQS delays a message at
    /// most 15 minutes) is sent on to that time.
    #[serde(default)]
    pub at_micros: i64,
}

/// What a wake-up is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeFor {
    /// Objects wait for the table's next load slot.
    Load,
    /// Loaded files wait for the table's next apply slot.
    Apply,
}

/// When and how often objects were deferred (see [`deferred_body`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferral {
    /// When the objects were first deferred, µs since the epoch.
    pub since_micros: i64,
    /// How many times they have been deferred.
    pub times: u32,
}

/// ferry's own messages on the loader queue, told apart from S3's by their `ferry` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ferry", rename_all = "snake_case")]
enum FerryMessage {
    Deferred {
        #[serde(flatten)]
        deferral: Deferral,
        objects: Vec<ObjectEvent>,
    },
    Wake(Wake),
}

/// The body of a message that wakes a table's next load or apply slot (sent with a delay).
pub fn wake_body(wake: &Wake) -> String {
    serde_json::to_string(&FerryMessage::Wake(wake.clone())).unwrap_or_default()
}

/// The body of a message that brings deferred objects back to the loader (sent with a delay).
pub fn deferred_body(deferral: Deferral, objects: &[ObjectEvent]) -> String {
    serde_json::to_string(&FerryMessage::Deferred {
        deferral,
        objects: objects.to_vec(),
    })
    .unwrap_or_default()
}

/// Why a message body cannot be read. Permanent: the same body never parses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not JSON at all.
    #[error("message body is not JSON: {0}")]
    NotJson(String),
    /// JSON, but neither an S3 notification, an EventBridge S3 event, an SNS envelope nor an S3
    /// test event.
    #[error(
        "message body is not an S3 event notification (no Records, EventBridge aws.s3 event, Event or SNS Message)"
    )]
    UnknownShape,
    /// A record without the fields every S3 record has.
    #[error("record {index}: {reason}")]
    BadRecord {
        /// Position of the record in `Records`.
        index: usize,
        /// What is missing or wrong.
        reason: String,
    },
    /// A record's key cannot be decoded.
    #[error("record {index}: object key {key:?}: {source}")]
    BadKey {
        /// Position of the record in `Records`.
        index: usize,
        /// The key as sent.
        key: String,
        /// Why.
        source: KeyDecodeError,
    },
}

/// Parses one message body.
pub fn parse_body(body: &str) -> Result<Notification, EventError> {
    let value: Value =
        serde_json::from_str(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    parse_value(&value, true)
}

fn parse_value(value: &Value, allow_envelope: bool) -> Result<Notification, EventError> {
    if value.get("ferry").is_some() {
        return match FerryMessage::deserialize(value) {
            Ok(FerryMessage::Deferred { deferral, objects }) => Ok(Notification {
                objects,
                deferred: Some(deferral),
                ..Notification::default()
            }),
            Ok(FerryMessage::Wake(wake)) => Ok(Notification {
                wake: Some(wake),
                ..Notification::default()
            }),
            Err(e) => Err(EventError::BadRecord {
                index: 0,
                reason: format!("ferry message: {e}"),
            }),
        };
    }
    if let Some(records) = value.get("Records").and_then(Value::as_array) {
        return parse_records(records);
    }
    if value.get("source").and_then(Value::as_str) == Some("aws.s3")
        && let Some(detail_type) = value.get("detail-type").and_then(Value::as_str)
    {
        return parse_eventbridge(value, detail_type);
    }
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Notification {
            test_event: true,
            ..Notification::default()
        });
    }
    if allow_envelope
        && value.get("Type").and_then(Value::as_str) == Some("Notification")
        && let Some(message) = value.get("Message").and_then(Value::as_str)
    {
        let inner: Value = serde_json::from_str(message)
            .map_err(|e| EventError::NotJson(format!("SNS Message: {e}")))?;
        return parse_value(&inner, false);
    }
    Err(EventError::UnknownShape)
}

fn parse_records(records: &[Value]) -> Result<Notification, EventError> {
    let mut out = Notification::default();
    for (index, record) in records.iter().enumerate() {
        let bad = |reason: &str| EventError::BadRecord {
            index,
            reason: reason.to_owned(),
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let source = text(record.get("eventSource")).unwrap_or_default();
        if source != "aws:s3" {
            out.ignored.push(format!(
                "record {index}: event source {source:?} is not aws:s3"
            ));
            continue;
        }
        let version = text(record.get("eventVersion")).unwrap_or_default();
        if !version.starts_with("2.") {
            return Err(bad(&format!("eventVersion {version:?} is not 2.x")));
        }
        let event_name = text(record.get("eventName")).ok_or_else(|| bad("no eventName"))?;
        let removed = event_name.starts_with("ObjectRemoved:");
        if !event_name.starts_with("ObjectCreated:") && !removed {
            out.ignored.push(format!(
                "record {index}: {event_name} is not an object creation"
            ));
            continue;
        }
        let s3 = record.get("s3").ok_or_else(|| bad("no s3 section"))?;
        let bucket = text(s3.pointer("/bucket/name")).ok_or_else(|| bad("no s3.bucket.name"))?;
        let raw_key = text(s3.pointer("/object/key")).ok_or_else(|| bad("no s3.object.key"))?;
        let key = decode_event_key(&raw_key).map_err(|source| EventError::BadKey {
            index,
            key: raw_key.clone(),
            source,
        })?;
        let event = ObjectEvent {
            bucket,
            key,
            size: s3.pointer("/object/size").and_then(Value::as_u64),
            etag: text(s3.pointer("/object/eTag")).map(|e| e.trim_matches('"').to_owned()),
            event_name,
            event_time: text(record.get("eventTime")),
        };
        if removed {
            out.removed.push(event);
        } else {
            out.objects.push(event);
        }
    }
    Ok(out)
}

/// An S3 event delivered through Amazon EventBridge (S3 User Guide, "EventBridge event message
/// structure"): `source` `aws.s3`, `detail-type` `Object Created` (loaded like
/// `ObjectCreated:*`), `Object Deleted` (recorded like `ObjectRemoved:*`) or another type
/// (acknowledged). Bucket and object are under `detail`; unlike S3 notifications, the key is not
/// URL-encoded, so it is taken as it is.
fn parse_eventbridge(value: &Value, detail_type: &str) -> Result<Notification, EventError> {
    let bad = |reason: &str| EventError::BadRecord {
        index: 0,
        reason: format!("EventBridge {detail_type} event: {reason}"),
    };
    let text = |p: &str| value.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let mut out = Notification::default();
    match detail_type {
        "Object Created" => {
            let bucket = text("/detail/bucket/name").ok_or_else(|| bad("no detail.bucket.name"))?;
            let key = text("/detail/object/key").ok_or_else(|| bad("no detail.object.key"))?;
            if key.is_empty() {
                return Err(bad("an empty detail.object.key"));
            }
            out.objects.push(ObjectEvent {
                bucket,
                key,
                size: value.pointer("/detail/object/size").and_then(Value::as_u64),
                etag: text("/detail/object/etag").map(|e| e.trim_matches('"').to_owned()),
                event_name: format!(
                    "ObjectCreated:{}",
                    text("/detail/reason").unwrap_or_else(|| "EventBridge".into())
                ),
                event_time: text("/time"),
            });
        }
        "Object Deleted" => match (text("/detail/bucket/name"), text("/detail/object/key")) {
            (Some(bucket), Some(key)) => out.removed.push(ObjectEvent {
                bucket,
                key,
                size: None,
                etag: text("/detail/object/etag"),
                event_name: format!(
                    "ObjectRemoved:{}",
                    text("/detail/reason").unwrap_or_else(|| "EventBridge".into())
                ),
                event_time: text("/time"),
            }),
            _ => return Err(bad("no detail.bucket.name or detail.object.key")),
        },
        other => out.ignored.push(format!(
            "EventBridge {other} event for {}: not an object creation",
            text("/detail/object/key").unwrap_or_default()
        )),
    }
    Ok(out)
}

/// An S3 notification body for one created object, as S3 writes it (the key URL-encoded).
/// The backfill and local mode send these, so they travel the same path as real events.
pub fn s3_event_body(bucket: &str, key: &str, size: u64, etag: &str, event_time: &str) -> String {
    serde_json::json!({
        "Records": [{
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventTime": event_time,
            "eventName": "ObjectCreated:Put",
            "s3": {
                "s3SchemaVersion": "1.0",
                "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
                "object": {"key": encode_event_key(key), "size": size, "eTag": etag}
            }
        }]
    })
    .to_string()
}

/// Encodes a key as S3 event notifications do: unreserved characters and `/` as they are, a
/// space as `+`, every other byte as `%XX`.
pub fn encode_event_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
