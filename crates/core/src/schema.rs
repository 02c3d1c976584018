//! BigQuery table schemas as ferry derives them, and ferry's change metadata columns.

use serde::{Deserialize, Serialize};

use crate::bqtype::BqType;

/// Whether a column may hold NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FieldMode {
    /// May be NULL (every source column: deletes may carry only the key).
    Nullable,
    /// Never NULL (ferry's metadata columns).
    Required,
}

/// One column of a BigQuery table, shaped like the REST API's `TableFieldSchema`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BqField {
    /// Column name.
    pub name: String,
    /// Column type.
    #[serde(rename = "type", with = "bq_type_serde")]
    pub bq_type: BqType,
    /// NULLABLE or REQUIRED.
    pub mode: FieldMode,
    /// Column description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A table's columns in table order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    /// The columns.
    pub fields: Vec<BqField>,
}

impl TableSchema {
    /// The column named `name`.
    pub fn field(&self, name: &str) -> Option<&BqField> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Rows by change operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    /// Full-load rows.
    pub load: u64,
    /// Inserts.
    pub insert: u64,
    /// Updates.
    pub update: u64,
    /// Deletes.
    pub delete: u64,
}

impl OpCounts {
    /// All rows.
    pub fn total(&self) -> u64 {
        self.load + self.insert + self.update + self.delete
    }
}

/// ferry's change metadata columns, first in every change-log table.
pub mod meta {
    /// `LOAD` (full-load row), `INSERT`, `UPDATE` or `DELETE`.
    pub const OP: &str = "_ferry_op";
    /// The change's source commit time (full load: the time DMS read the row).
    pub const COMMIT_TS: &str = "_ferry_commit_ts";
    /// The file's place in its table's source order (see `DmsObject::file_seq`).
    pub const FILE_SEQ: &str = "_ferry_file_seq";
    /// DMS's `AR_H_CHANGE_SEQ` header (a rule ferry generates adds it to every CDC row): the
    /// change's place in the task's whole stream; empty for full-load rows and older tasks.
    pub const CHANGE_SEQ: &str = "_ferry_change_seq";
    /// The row's 0-based position in its file.
    pub const ROW: &str = "_ferry_row";
    /// The S3 key of the file the row came from.
    pub const FILE: &str = "_ferry_file";
    /// The mapping source (DMS task / cluster) the row came from.
    pub const SOURCE: &str = "_ferry_source";

    /// Every metadata column, in table order.
    pub const ALL: [&str; 7] = [OP, COMMIT_TS, FILE_SEQ, CHANGE_SEQ, ROW, FILE, SOURCE];

    /// A change's version, compared in this order: the file's place, then the change sequence,
    /// then the row's place. The commit timestamp is not part of it: MySQL's has whole seconds
    /// and the statement's start, and a full-load row's is when it was read.
    pub const VERSION: [&str; 3] = [FILE_SEQ, CHANGE_SEQ, ROW];

    /// `_ferry_op` values.
    pub mod op {
        /// A row copied by the full load.
        pub const LOAD: &str = "LOAD";
        /// An inserted row.
        pub const INSERT: &str = "INSERT";
        /// A row after an update.
        pub const UPDATE: &str = "UPDATE";
        /// A deleted row (as it was before the delete; other columns may be NULL).
        pub const DELETE: &str = "DELETE";
    }

    /// The metadata columns in table order, with their types and descriptions.
    pub fn fields() -> Vec<super::BqField> {
        use super::{BqField, FieldMode};
        use crate::bqtype::BqType;
        let f = |name: &str, bq_type, description: &str| BqField {
            name: name.to_owned(),
            bq_type,
            mode: FieldMode::Required,
            description: Some(description.to_owned()),
        };
        vec![
            f(
                OP,
                BqType::String,
                "ferry: LOAD (full load), INSERT, UPDATE or DELETE",
            ),
            f(
                COMMIT_TS,
                BqType::Timestamp,
                "ferry: source commit time of the change (full load: read time)",
            ),
            f(
                FILE_SEQ,
                BqType::String,
                "ferry: the file's place in the table's source order (when DMS wrote it)",
            ),
            f(
                CHANGE_SEQ,
                BqType::String,
                "ferry: DMS AR_H_CHANGE_SEQ of the change; empty for full-load rows",
            ),
            f(
                ROW,
                BqType::Int64,
                "ferry: the row's position in its file; source order is (_ferry_file_seq, _ferry_change_seq, _ferry_row)",
            ),
            f(FILE, BqType::String, "ferry: S3 key of the source file"),
            f(
                SOURCE,
                BqType::String,
                "ferry: the source (DMS task / cluster)",
            ),
        ]
    }
}

mod bq_type_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::bqtype::BqType;

    pub(super) fn serialize<S: Serializer>(t: &BqType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BqType, D::Error> {
        let name = String::deserialize(d)?;
        BqType::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown BigQuery type {name:?}")))
    }
}
