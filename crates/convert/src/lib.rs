//! DMS parquet to BigQuery-ready parquet.
//!
//! One DMS object becomes one file BigQuery can load as-is into the table's change log: source
//! columns in table order with the types the mapping's hints and the data decide, plus ferry's
//! change metadata (`_ferry_op`, `_ferry_commit_ts`, `_ferry_file_seq`, `_ferry_row`,
//! `_ferry_file`, `_ferry_source`). It streams row group by row group from any byte source with
//! range reads, and copies column chunks that need no change without decoding them.
//!
//! # Layout
//! - [`canonical`]: how converted values read in BigQuery, for exact comparisons.
//! - [`source`]: range-read byte sources and the parquet reader over them.
//! - `derive`: per-column type planning (copy, relabel or convert).
//! - `transform`: value conversions (BIT, unsigned, TINYINT(1), TIME, text dates).
//! - [`convert`]: the streaming converter.
//! - [`concat`]: several converted files of a table as one, chunks copied (one load job).
//! - [`error`]: errors, retryable or permanent.
//! - [`limits`]: what a file may claim (rows, page sizes), checked before decoding.
//! - `timefmt`: date and time text.

pub mod canonical;
pub mod concat;
pub mod convert;
mod derive;
pub mod error;
pub mod fuzzing;
pub mod limits;
pub mod source;
pub mod timefmt;
mod transform;

pub use concat::concat;
pub use convert::{Conversion, ConvertOutcome, ConvertRequest, convert, convert_with};
pub use error::ConvertError;
pub use ferry_core::schema::OpCounts;
pub use limits::Limits;
pub use source::{RangeReader, RangeSource};
