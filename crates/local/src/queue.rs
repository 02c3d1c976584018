//! An in-process queue with SQS's delivery semantics: batches of up to 10 messages, failed
//! messages delivered again with a growing receive count, and moved to the dead-letter queue
//! (with their last failure) once they reach `max_receives`.

use std::collections::VecDeque;

use ferry_core::event::{SqsEvent, SqsMessage};
use ferry_pipeline::{BatchReport, DeadLetters, ObjectResult};
use serde_json::Value;

/// SQS's largest batch for a Lambda event source with no batching window.
pub const BATCH_SIZE: usize = 10;

/// The queue.
pub struct LocalQueue {
    messages: VecDeque<SqsMessage>,
    next_id: u64,
    /// Deliveries after which a failing message goes to the dead-letter queue.
    pub max_receives: u32,
}

/// What draining the queue did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Batches handed to the handler.
    pub batches: u64,
    /// Deliveries (a message delivered twice counts twice).
    pub deliveries: u64,
    /// Messages moved to the dead-letter queue because they kept failing.
    pub dead_lettered: u64,
}

impl LocalQueue {
    /// An empty queue.
    pub fn new(max_receives: u32) -> LocalQueue {
        LocalQueue {
            messages: VecDeque::new(),
            next_id: 1,
            max_receives: max_receives.max(1),
        }
    }

    /// Sends a message body; returns its id.
    pub fn send(&mut self, body: String) -> String {
        let id = format!("local-{:08}", self.next_id);
        self.next_id += 1;
        let mut message = SqsMessage {
            message_id: id.clone(),
            body,
            ..SqsMessage::default()
        };
        message
            .attributes
            .insert("ApproximateReceiveCount".into(), Value::String("0".into()));
        self.messages.push_back(message);
        id
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Delivers batches to `handle` until the queue is empty, `stop` says so, or every message
    /// left has failed `max_receives` times (then they go to `dead_letters`).
    pub fn drain(
        &mut self,
        dead_letters: &dyn DeadLetters,
        mut stop: impl FnMut() -> bool,
        mut handle: impl FnMut(&SqsEvent) -> BatchReport,
    ) -> Drained {
        let mut drained = Drained::default();
        while !self.messages.is_empty() && !stop() {
            let n = self.messages.len().min(BATCH_SIZE);
            let mut batch: Vec<SqsMessage> = self.messages.drain(..n).collect();
            for m in &mut batch {
                let count = m.receive_count() + 1;
                m.attributes.insert(
                    "ApproximateReceiveCount".into(),
                    Value::String(count.to_string()),
                );
            }
            let event = SqsEvent { records: batch };
            let report = handle(&event);
            drained.batches += 1;
            drained.deliveries += event.records.len() as u64;
            for message in event.records {
                let failed = report
                    .response
                    .batch_item_failures
                    .iter()
                    .any(|f| f.item_identifier == message.message_id);
                if !failed {
                    continue;
                }
                if message.receive_count() >= self.max_receives {
                    let reason = last_reason(&report, &message.message_id);
                    let reason = format!(
                        "maxReceiveCount ({}) reached; last failure: {reason}",
                        self.max_receives
                    );
                    if dead_letters.send(&message, &reason).is_ok() {
                        drained.dead_lettered += 1;
                        continue;
                    }
                }
                self.messages.push_back(message);
            }
        }
        drained
    }
}

fn last_reason(report: &BatchReport, message_id: &str) -> String {
    report
        .objects
        .iter()
        .filter(|(id, _, _)| id == message_id)
        .filter_map(|(_, _, r)| match r {
            ObjectResult::Failed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("; ")
}
