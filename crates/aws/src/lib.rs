//! ferry's AWS adapters.
//!
//! # Layout
//! - [`s3`]: S3 as the pipeline's object store (ranged reads pinned to one version).
//! - [`sqs`]: the dead-letter queue port, `dlq inspect` / `dlq redrive`, and the backfill's
//!   enqueue.
//! - [`lock`]: the replica apply lock, the schedule's slot claims and the pending sets of files
//!   waiting for their table's next load slot, on DynamoDB.
//! - [`config`]: SDK clients from the environment (endpoint overrides for moto and friends).

pub mod config;
pub mod lock;
pub mod s3;
pub mod sqs;

pub use lock::{DynamoDbLock, DynamoDbPending};
pub use s3::S3Store;
pub use sqs::{SqsDeadLetters, SqsRequeue};
