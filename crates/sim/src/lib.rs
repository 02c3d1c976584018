//! A DMS simulator. For the tables of a mapping catalog it writes the S3 tree an AWS DMS task
//! would (keys, full-load then CDC files, `Op`, the timestamp column, the parquet types DMS uses
//! for each MySQL type, date partition folders) with inserts, updates, deletes, re-inserted
//! keys, a column added mid-stream and nasty values, deterministic for a seed; and a manifest of
//! what each BigQuery table must hold afterwards.
//!
//! # Layout
//! - [`stream`]: the change streams, the files and the manifest.
//! - [`model`]: simulated MySQL columns, their DMS parquet types, values and expected readings.
//! - [`values`]: source values and their canonical BigQuery rendering.
//! - [`rng`]: the deterministic generator.
//! - [`legacy`]: parquet with the legacy converted-type annotations real DMS files carry.

pub mod legacy;
pub mod model;
pub mod rng;
pub mod stream;
pub mod values;

pub use stream::{Manifest, SimOptions, TableManifest, checksum, row_hash, simulate};
