//! Local mode: ferry's pipeline on one machine, with the Lambda's handler and stand-ins behind
//! the same ports as production: a directory as the bucket, an in-process queue with SQS's
//! retry and dead-letter semantics, and a SQLite warehouse that behaves like the BigQuery writer.
//!
//! # Layout
//! - [`store`]: the directory bucket.
//! - [`warehouse`]: the SQLite warehouse, its ledger, merge and dead-letter table.
//! - [`queue`]: the in-process queue.
//! - [`run`]: `ferry local run` and `ferry local invoke`.
//! - [`status`]: `ferry status` over the warehouse's records.
//! - [`verify`]: checking the warehouse against a simulator manifest.

pub mod queue;
pub mod run;
pub mod status;
pub mod store;
pub mod verify;
pub mod warehouse;

pub use run::{LocalPipeline, Progress, RunOptions, RunSummary, invoke, run};
pub use status::{Status, TableStatus, status};
pub use store::DirStore;
pub use verify::{TableCheck, verify};
pub use warehouse::{QueryResult, SqliteWarehouse};
