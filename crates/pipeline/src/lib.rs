//! ferry's use cases over small ports, shared by the Lambda, the backfill and local mode, so
//! that each does exactly what production does.
//!
//! # Layout
//! - [`ports`]: the object store, the warehouse and the dead-letter queue, with their contracts.
//! - [`process`]: one object: plan, read, convert, load, record.
//! - [`backfill`]: replaying a table and time range through the same per-object path.
//! - [`handler`]: one SQS batch: per-message parsing, per-table order, partial-batch failures.
//! - [`schedule`]: load and apply slots per table, so BigQuery's quotas and bill hold.
//! - [`waiting`]: work waiting for its table's next slot: pending sets, wake-ups, bundles.

pub mod backfill;
pub mod handler;
pub mod ports;
pub mod process;
pub mod schedule;
pub mod waiting;

pub use handler::{BatchReport, HandlerOptions, handle_batch, handle_batch_scheduled};
pub use ports::{
    ApplyLock, Converted, DeadLetters, LoadOutcome, LoadRequest, ObjectMeta, ObjectStore,
    PendingSets, PortError, Requeue, StatusEvent, Warehouse,
};
pub use process::{ObjectResult, Pipeline, TYPE_CHANGED, now_micros};
pub use waiting::Scheduler;
