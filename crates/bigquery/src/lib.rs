//! ferry's BigQuery adapter: the `Warehouse` port over BigQuery's REST API.
//!
//! # Layout
//! - [`client`]: a small REST client (upload-endpoint load jobs, `jobs.get`, `tables.get`,
//!   queries) with retries and backoff; base URL overridable for test servers and emulators.
//! - [`auth`]: service-account keys and workload identity federation (AWS -> GCP).
//! - [`error`]: failures classified as retryable, retry-later or permanent.
//! - [`warehouse`]: exactly-once loads over job-id chains, the load-job budget and group loads,
//!   table creation and evolution, the replica MERGE under a one-writer lock.

pub mod auth;
pub mod client;
pub mod error;
pub mod status;
pub mod warehouse;

pub use auth::Auth;
pub use client::{Client, ClientConfig};
pub use error::{BqError, ErrorClass};
pub use warehouse::{BigQueryWarehouse, WarehouseOptions, combines, over_budget};
