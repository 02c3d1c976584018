//! SQS: the dead-letter queue the handler sends permanent failures to, the loader's own queue
//! for work sent back to a later slot, and the ops tools
//! around it (inspect, redrive) and the backfill's enqueue.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use ferry_core::event::SqsMessage;
use ferry_pipeline::ports::{DeadLetters, PortError, Requeue};
use tokio::runtime::Handle;

use crate::s3::{describe, sdk_retryable};

/// The message attribute that carries why a message was dead-lettered.
pub const REASON_ATTRIBUTE: &str = "ferry_reason";
/// The message attribute with the id of the message that failed.
pub const ORIGINAL_ID_ATTRIBUTE: &str = "ferry_original_message_id";

/// SQS attribute values are at most 256 KiB with the body; reasons are cut well below.
const REASON_MAX: usize = 4096;

fn string_attribute(value: &str) -> Result<MessageAttributeValue, PortError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| PortError::permanent(e.to_string()))
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The loader's dead-letter queue.
#[derive(Debug, Clone)]
pub struct SqsDeadLetters {
    client: Client,
    handle: Handle,
    queue_url: String,
}

impl SqsDeadLetters {
    /// Dead letters go to `queue_url`.
    pub fn new(client: Client, handle: Handle, queue_url: impl Into<String>) -> SqsDeadLetters {
        SqsDeadLetters {
            client,
            handle,
            queue_url: queue_url.into(),
        }
    }
}

impl DeadLetters for SqsDeadLetters {
    fn send(&self, message: &SqsMessage, reason: &str) -> Result<(), PortError> {
        let request = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(&message.body)
            .message_attributes(
                REASON_ATTRIBUTE,
                string_attribute(&ferry_core::text::escape_controls(cut(reason, REASON_MAX)))?,
            )
            .message_attributes(
                ORIGINAL_ID_ATTRIBUTE,
                string_attribute(&message.message_id)?,
            );
        self.handle
            .block_on(request.send())
            .map(|_| ())
            .map_err(|e| PortError {
                message: format!("SendMessage to the dead-letter queue: {}", describe(&e)),
                retryable: sdk_retryable(&e),
                later: false,
            })
    }
}

/// The loader's own queue, for work sent back to a later slot (deferred loads, apply markers).
#[derive(Debug, Clone)]
pub struct SqsRequeue {
    client: Client,
    handle: Handle,
    queue_url: String,
}

impl SqsRequeue {
    /// Work goes back to `queue_url` (the queue the loader consumes).
    pub fn new(client: Client, handle: Handle, queue_url: impl Into<String>) -> SqsRequeue {
        SqsRequeue {
            client,
            handle,
            queue_url: queue_url.into(),
        }
    }
}

impl Requeue for SqsRequeue {
    fn send_later(&self, body: &str, delay: std::time::Duration) -> Result<(), PortError> {
        // `DelaySeconds`: 0 to 900 (SendMessage API reference).
        let seconds = i32::try_from(delay.as_secs().min(900)).unwrap_or(900);
        let request = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .delay_seconds(seconds);
        self.handle
            .block_on(request.send())
            .map(|_| ())
            .map_err(|e| PortError {
                message: format!("SendMessage to the loader queue: {}", describe(&e)),
                retryable: sdk_retryable(&e),
                later: false,
            })
    }
}

/// A message waiting in a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Its id in the dead-letter queue.
    pub message_id: String,
    /// Why it was dead-lettered (ferry's reason, or SQS's `maxReceiveCount`).
    pub reason: String,
    /// The objects its body names (`s3://bucket/key`).
    pub objects: Vec<String>,
    /// Times it was received from the dead-letter queue.
    pub receive_count: u32,
    /// When it was first sent, ms since the epoch.
    pub sent_at_millis: Option<i64>,
    /// The body, as received.
    pub body: String,
}

/// The objects an SQS body names, as `s3://bucket/key`.
pub fn objects_of(body: &str) -> Vec<String> {
    match ferry_core::event::parse_body(body) {
        Ok(n) => n
            .objects
            .iter()
            .map(|o| format!("s3://{}/{}", o.bucket, o.key))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Reads up to `max` messages of a dead-letter queue without removing them: each becomes
/// visible again after `visibility_secs` (0: at once).
pub async fn inspect(
    client: &Client,
    dlq_url: &str,
    max: usize,
    visibility_secs: i32,
) -> Result<Vec<DeadLetter>, String> {
    let mut out: Vec<DeadLetter> = Vec::new();
    let mut empty_polls = 0;
    while out.len() < max && empty_polls < 2 {
        let batch = client
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(i32::try_from((max - out.len()).min(10)).unwrap_or(10))
            .visibility_timeout(visibility_secs.max(1))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| format!("ReceiveMessage {dlq_url}: {}", describe(&e)))?;
        let messages = batch.messages();
        if messages.is_empty() {
            empty_polls += 1;
            continue;
        }
        for m in messages {
            let id = m.message_id().unwrap_or_default().to_owned();
            if out.iter().any(|d| d.message_id == id) {
                continue;
            }
            let attrs = m.attributes();
            let body = m.body().unwrap_or_default().to_owned();
            out.push(DeadLetter {
                reason: m
                    .message_attributes()
                    .and_then(|a| a.get(REASON_ATTRIBUTE))
                    .and_then(|v| v.string_value())
                    .unwrap_or(
                        "failed maxReceiveCount times (retryable failures; see the loader's logs)",
                    )
                    .to_owned(),
                objects: objects_of(&body),
                receive_count: attrs
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                sent_at_millis: attrs
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|v| v.parse().ok()),
                message_id: id,
                body,
            });
            if visibility_secs == 0
                && let Some(handle) = m.receipt_handle()
            {
                // Put it straight back for the next reader.
                let _ = client
                    .change_message_visibility()
                    .queue_url(dlq_url)
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .send()
                    .await;
            }
        }
    }
    Ok(out)
}

/// How a redrive went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redrive {
    /// `native` (StartMessageMoveTask) or `copy` (receive, send, delete).
    pub method: String,
    /// Messages moved by the copy fallback (the native task reports its own progress).
    pub moved: usize,
    /// The native task's handle.
    pub task: Option<String>,
}

/// Moves messages from the dead-letter queue back to the loader's queue: SQS's own
/// `StartMessageMoveTask` where available, else receive, send, then delete, so that a message
/// exists in at least one queue at every moment (a crash can duplicate one, which the job ids
/// absorb, but never lose one).
pub async fn redrive(
    client: &Client,
    dlq_url: &str,
    queue_url: &str,
    max: Option<usize>,
    prefer_native: bool,
) -> Result<Redrive, String> {
    if prefer_native {
        let arn = |url: &str| {
            let url = url.to_owned();
            async move {
                client
                    .get_queue_attributes()
                    .queue_url(&url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .ok()
                    .and_then(|a| {
                        a.attributes()
                            .and_then(|m| m.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
                            .cloned()
                    })
            }
        };
        if let (Some(source), Some(destination)) = (arn(dlq_url).await, arn(queue_url).await) {
            let mut task = client
                .start_message_move_task()
                .source_arn(source)
                .destination_arn(destination);
            if let Some(m) = max {
                // The native task limits by rate, not count: a count limit needs the copy path.
                let _ = m;
                task = task.max_number_of_messages_per_second(10);
            }
            match (max, task.send().await) {
                (None, Ok(out)) => {
                    return Ok(Redrive {
                        method: "native".into(),
                        moved: 0,
                        task: out.task_handle().map(str::to_owned),
                    });
                }
                (None, Err(e)) => {
                    tracing::warn!(error = %describe(&e), "StartMessageMoveTask unavailable; copying messages instead")
                }
                (Some(_), _) => {}
            }
        }
    }
    let mut moved = 0;
    let limit = max.unwrap_or(usize::MAX);
    let mut empty_polls = 0;
    while moved < limit && empty_polls < 2 {
        let batch = client
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(i32::try_from((limit - moved).min(10)).unwrap_or(10))
            .visibility_timeout(60)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| format!("ReceiveMessage {dlq_url}: {}", describe(&e)))?;
        if batch.messages().is_empty() {
            empty_polls += 1;
            continue;
        }
        for m in batch.messages() {
            let body = m.body().unwrap_or_default();
            // Send first; delete only what arrived.
            client
                .send_message()
                .queue_url(queue_url)
                .message_body(body)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "SendMessage {queue_url}: {} (the message stays in the dead-letter queue)",
                        describe(&e)
                    )
                })?;
            if let Some(handle) = m.receipt_handle() {
                client
                    .delete_message()
                    .queue_url(dlq_url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "DeleteMessage {dlq_url}: {} (the message was sent; a copy may remain)",
                            describe(&e)
                        )
                    })?;
            }
            moved += 1;
        }
    }
    Ok(Redrive {
        method: "copy".into(),
        moved,
        task: None,
    })
}

/// Sends S3-notification-shaped messages (one object each) to the loader's queue, ten per
/// request. Returns how many were sent.
pub async fn enqueue(client: &Client, queue_url: &str, bodies: &[String]) -> Result<usize, String> {
    let mut sent = 0;
    for chunk in bodies.chunks(10) {
        let mut request = client.send_message_batch().queue_url(queue_url);
        for (i, body) in chunk.iter().enumerate() {
            request = request.entries(
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
        let out = request
            .send()
            .await
            .map_err(|e| format!("SendMessageBatch {queue_url}: {}", describe(&e)))?;
        if let Some(f) = out.failed().first() {
            return Err(format!(
                "SendMessageBatch {queue_url}: {} of {} failed ({}: {})",
                out.failed().len(),
                chunk.len(),
                f.code(),
                f.message().unwrap_or_default()
            ));
        }
        sent += chunk.len();
    }
    Ok(sent)
}

/// A dead-letter queue at a glance: its depth and its oldest message (among up to 100 read
/// without removing them).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DlqSummary {
    /// `ApproximateNumberOfMessages`.
    pub depth: u64,
    /// The oldest message seen, with its reason.
    pub oldest: Option<DeadLetter>,
}

/// Reads a dead-letter queue's depth and oldest message; the messages stay.
pub async fn dlq_summary(client: &Client, dlq_url: &str) -> Result<DlqSummary, String> {
    let attrs = client
        .get_queue_attributes()
        .queue_url(dlq_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(|e| format!("GetQueueAttributes {dlq_url}: {}", describe(&e)))?;
    let depth = attrs
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let oldest = if depth == 0 {
        None
    } else {
        inspect(client, dlq_url, 100, 0)
            .await?
            .into_iter()
            .min_by_key(|d| d.sent_at_millis.unwrap_or(i64::MAX))
    };
    Ok(DlqSummary { depth, oldest })
}
