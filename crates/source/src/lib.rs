//! Reading the MySQL source, read-only: the preflight DMS and ferry need (`ferry source check`),
//! the mapping entries the source decides (`ferry mappings sync`), and reconciliation of each
//! replica with its source table (`ferry reconcile`).
//!
//! # Layout
//! - [`conn`]: the read-only connection, its URL and timeouts.
//! - [`catalog`]: tables, columns and keys from `information_schema`.
//! - [`check`]: the preflight.
//! - [`sync`]: primary keys and hints from the source, and the mapping file rewritten.
//! - [`canon`]: the canonical row both sides hash.
//! - [`reconcile`]: the comparison, segment by segment, down to keys.
//! - [`table`]: mapped tables reconciled, and their results recorded.
//! - [`repair`]: the source's rows for differing keys, as a DMS object ferry loads.

pub mod canon;
pub mod catalog;
pub mod check;
pub mod conn;
pub mod reconcile;
pub mod repair;
pub mod sync;
pub mod table;
