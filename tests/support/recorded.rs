//! Ports that record what the handler sends, for tests and the production model: the loader's
//! own queue and the dead-letter queue. They keep everything; nothing is decided here.

use std::sync::Mutex;
use std::time::Duration;

use ferry_core::event::SqsMessage;
use ferry_pipeline::ports::{DeadLetters, PortError, Requeue};

/// The loader's own queue: each body sent, with its delay.
#[derive(Debug, Default)]
pub struct Sent(pub Mutex<Vec<(String, Duration)>>);

impl Sent {
    /// What was sent since the last call.
    pub fn take(&self) -> Vec<(String, Duration)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Requeue for Sent {
    fn send_later(&self, body: &str, delay: Duration) -> Result<(), PortError> {
        self.0.lock().unwrap().push((body.to_owned(), delay));
        Ok(())
    }
}

/// The dead-letter queue: each reason.
#[derive(Debug, Default)]
pub struct Dlq(pub Mutex<Vec<String>>);

impl Dlq {
    /// Messages dead-lettered so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DeadLetters for Dlq {
    fn send(&self, _message: &SqsMessage, reason: &str) -> Result<(), PortError> {
        self.0.lock().unwrap().push(reason.to_owned());
        Ok(())
    }
}
