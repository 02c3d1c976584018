//! ferry's pure core: what an S3 object written by AWS DMS is, where its rows go, and the name
//! of the BigQuery load job that puts them there.
//!
//! Nothing here does I/O beyond reading the mappings folder, and nothing depends on an async
//! runtime or a cloud SDK: the Lambda, the CLI and the tests share this logic as plain functions.
//!
//! # Layout
//! - [`key`]: decoding S3 event keys, parsing DMS object keys, the apply order of a table's files.
//! - [`partition`]: DMS date partition folders, every sequence and delimiter.
//! - [`mapping`]: the `mappings/*.json` files analysts edit, validated into a [`mapping::Catalog`].
//! - [`jobid`]: deterministic BigQuery load job ids with attempt numbers.
//! - [`event`]: SQS events carrying S3 notifications, and the partial-batch response.
//! - [`plan`]: the decision for one object: load (where, under which job id) or skip (why).
//! - [`names`]: BigQuery, S3 and ferry naming rules.
//! - [`bqtype`]: BigQuery column types.
//! - [`deploy`]: deployment files derived from the mappings (DMS table mappings, S3 access,
//!   bucket notifications).
//! - [`schema`]: BigQuery table schemas and ferry's change metadata columns.
//! - [`sql`]: the BigQuery DDL and replica MERGE ferry runs.

pub mod bqtype;
pub mod civil;
pub mod deploy;
pub mod event;
pub mod hashkey;
pub mod jobid;
pub mod key;
pub mod mapping;
pub mod names;
pub mod partition;
pub mod plan;
pub mod schema;
pub mod sql;
pub mod text;

pub use jobid::JobId;
pub use key::{DmsFile, DmsObject, FileKind, SkipReason, decode_event_key};
pub use mapping::{Catalog, Problem, Source, TableMapping, TableRef};
pub use plan::{Plan, PlanSkip, plan_object};
