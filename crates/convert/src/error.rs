//! Conversion errors, each either retryable (the same object may convert next time) or
//! permanent (it never will: the object goes to the dead-letter queue with this message).

use ferry_core::bqtype::BqType;
use parquet::errors::ParquetError;

/// A conversion failure.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The object is not a readable parquet file: truncated, corrupt or not parquet at all.
    #[error("not a readable parquet file: {message}")]
    Corrupt {
        /// What the parquet reader said.
        message: String,
    },
    /// Reading the object's bytes failed (network, throttling): worth retrying.
    #[error("reading the object failed: {message}")]
    Read {
        /// The I/O error.
        message: String,
    },
    /// The mapping hashes a column and the loader was given no hash key.
    #[error(
        "column {column:?} is hashed (\"hash\" in the mapping) but no hash key is configured: set FERRY_HASH_KEY_SECRET (the Lambda: a Secrets Manager secret) or pass --hash-key-file (local mode)"
    )]
    NoHashKey {
        /// The column.
        column: String,
    },
    /// A column whose parquet type ferry has no BigQuery type for.
    #[error("column {column:?}: parquet type {parquet} has no BigQuery type ferry can load")]
    UnsupportedType {
        /// The column.
        column: String,
        /// Its parquet type.
        parquet: String,
    },
    /// The mapping hints a MySQL type the column's parquet type cannot be.
    #[error(
        "column {column:?}: the mapping's hint {hint:?} does not fit its parquet type {parquet}; correct or remove the hint"
    )]
    HintMismatch {
        /// The column.
        column: String,
        /// The hint.
        hint: String,
        /// The column's parquet type.
        parquet: String,
    },
    /// A column this file has with another type than the table.
    #[error(
        "column {column:?}: the table has it as {table_type}, this file as {file_type}; BigQuery cannot change a column's type on load. Fix: if a hint was added or corrected after the table was created, drop the table and backfill it (ferry backfill --source S --table T --direct) so that the column is created with the hinted type; if the source's type really changed, set \"on_type_change\": \"new_column\" (the default) to continue in {column}__<type>"
    )]
    SchemaConflict {
        /// The column.
        column: String,
        /// The type in the table.
        table_type: BqType,
        /// The type this file derives.
        file_type: BqType,
    },
    /// A source column whose name BigQuery does not accept.
    #[error("column {column:?} cannot be a BigQuery column: {reason}")]
    InvalidColumnName {
        /// The column.
        column: String,
        /// Why.
        reason: String,
    },
    /// A DMS `Op` value other than I, U or D.
    #[error("row {row}: DMS Op is {value:?}, expected I, U or D")]
    BadOp {
        /// Row in the file.
        row: u64,
        /// The value.
        value: String,
    },
    /// A value a hinted conversion cannot carry over exactly.
    #[error("column {column:?} row {row}: {value} cannot be converted: {reason}")]
    BadValue {
        /// The column.
        column: String,
        /// Row in the file.
        row: u64,
        /// The value, rendered.
        value: String,
        /// Why.
        reason: String,
    },
    /// The file claims more than a cap allows (rows, page sizes, decompressed bytes): refused
    /// before anything is decoded (see [`crate::limits`]).
    #[error("{what}: the file claims {claim}, over the cap of {cap} ({setting})")]
    LimitExceeded {
        /// What the claim is about.
        what: String,
        /// What the file claims.
        claim: u64,
        /// The cap.
        cap: u64,
        /// The setting that raises the cap.
        setting: String,
    },
    /// Writing the output failed.
    #[error("writing the converted file failed: {message}")]
    Write {
        /// The writer's error.
        message: String,
    },
}

/// Results of this crate.
pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

impl ConvertError {
    /// Whether trying the same object again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConvertError::Read { .. } | ConvertError::Write { .. })
    }

    pub(crate) fn write(e: impl std::fmt::Display) -> ConvertError {
        ConvertError::Write {
            message: e.to_string(),
        }
    }

    pub(crate) fn corrupt(message: impl Into<String>) -> ConvertError {
        ConvertError::Corrupt {
            message: message.into(),
        }
    }
}

/// Sorts a parquet error met while reading: an I/O failure of the source is retryable, except a
/// read past the end (a truncated object); anything else means the bytes are not valid parquet.
pub(crate) fn classify_read(e: ParquetError) -> ConvertError {
    if let ParquetError::External(inner) = &e
        && let Some(io) = inner.downcast_ref::<std::io::Error>()
        && io.kind() != std::io::ErrorKind::UnexpectedEof
    {
        return ConvertError::Read {
            message: io.to_string(),
        };
    }
    ConvertError::Corrupt {
        message: e.to_string(),
    }
}

/// [`classify_read`] for errors the Arrow reader wraps.
pub(crate) fn classify_arrow(e: arrow_schema::ArrowError) -> ConvertError {
    match e {
        arrow_schema::ArrowError::ExternalError(inner) => match inner.downcast::<ParquetError>() {
            Ok(parquet) => classify_read(*parquet),
            Err(other) => classify_read(ParquetError::External(other)),
        },
        arrow_schema::ArrowError::ParquetError(message) => ConvertError::Corrupt { message },
        other => ConvertError::Corrupt {
            message: other.to_string(),
        },
    }
}
