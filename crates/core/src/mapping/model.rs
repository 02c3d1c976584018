//! Validated mappings. Values of these types exist only through [`super::Catalog::load_dir`] or
//! [`super::Catalog::from_files`], so the rest of ferry never sees an invalid mapping.

use std::fmt;

use super::hint::ColumnHint;
use super::raw::{Granularity, Mode, OnTruncate, OnTypeChange};
use crate::key::{self, ParsedKey};
use crate::partition::DatePartitioning;

/// A BigQuery table: project, dataset, table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableRef {
    /// Project id.
    pub project: String,
    /// Dataset id.
    pub dataset: String,
    /// Table id.
    pub table: String,
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.project, self.dataset, self.table)
    }
}

/// Time partitioning of a table by one of its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    /// The column.
    pub column: String,
    /// The granularity.
    pub granularity: Granularity,
}

/// One DMS source: a task replicating one cluster into one bucket folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The source's name (also its mapping file's name).
    pub name: String,
    /// The mapping file it was read from, as given to the loader.
    pub file: String,
    /// The bucket DMS writes to.
    pub bucket: String,
    /// The bucket folder, without slashes at either end; empty for the bucket root.
    pub folder: String,
    /// The DMS timestamp column, when the task writes one.
    pub timestamp_column: Option<String>,
    /// The DMS date partition layout, when the task partitions by date.
    pub date_partitioning: Option<DatePartitioning>,
    /// The task's `LobMaxSize` in KB: LOB values DMS cut are this long.
    pub lob_max_size_kb: u32,
    /// BigQuery project.
    pub project: String,
    /// BigQuery dataset.
    pub dataset: String,
    /// BigQuery dataset location, when set.
    pub location: Option<String>,
    /// The mapped tables, in file order.
    pub tables: Vec<TableMapping>,
    /// The table (`schema.table`) the source updates every minute, if any.
    pub heartbeat: Option<String>,
    /// The key hashed columns are hashed with (from the secret store; see
    /// [`crate::mapping::Catalog::with_hash_key`]). `None` until set.
    pub hash_key: Option<crate::hashkey::HashKey>,
}

impl Source {
    /// The key prefix this source's objects share: `folder/`, or empty at the bucket root.
    pub fn prefix(&self) -> String {
        if self.folder.is_empty() {
            String::new()
        } else {
            format!("{}/", self.folder)
        }
    }

    /// Whether a key lies under this source's folder.
    pub fn owns_key(&self, key: &str) -> bool {
        key.starts_with(&self.prefix())
    }

    /// Parses a decoded key of this source with its folder and date layout.
    pub fn parse_key(&self, key: &str) -> ParsedKey {
        key::parse_key(key, &self.folder, self.date_partitioning)
    }

    /// The mapping of source table `schema.table`, enabled or not.
    pub fn table(&self, schema: &str, table: &str) -> Option<&TableMapping> {
        self.tables
            .iter()
            .find(|t| t.schema == schema && t.table == table)
    }
}

/// How one source table lands in BigQuery.
#[derive(Debug, Clone, PartialEq)]
pub struct TableMapping {
    /// Source schema (MySQL database).
    pub schema: String,
    /// Source table.
    pub table: String,
    /// Replica or change log.
    pub mode: Mode,
    /// The change-log table every load appends to.
    pub changelog: TableRef,
    /// The current-state table (replica mode only).
    pub replica: Option<TableRef>,
    /// Primary key columns (empty only in change-log mode).
    pub primary_key: Vec<String>,
    /// Partitioning by a source column; `None` means the default for the table kind.
    pub partition: Option<PartitionSpec>,
    /// Clustering columns (at most 4).
    pub cluster_by: Vec<String>,
    /// Deleted rows stay in the replica, flagged.
    pub soft_delete: bool,
    /// What a column type change does.
    pub on_type_change: OnTypeChange,
    /// What removing the table's full-load files does.
    pub on_truncate: OnTruncate,
    /// How often the replica is applied; `None`: the loader's default.
    pub apply_every: Option<std::time::Duration>,
    /// Whether files of this table are loaded.
    pub enabled: bool,
    /// Type hints by column name.
    pub columns: Vec<(String, ColumnHint)>,
    /// Table description.
    pub description: Option<String>,
    /// Columns DMS removes at the source (and the loader drops, should one arrive).
    pub exclude: Vec<String>,
    /// Columns stored as a keyed hash (HMAC-SHA256, hex).
    pub hash: Vec<String>,
}

impl TableMapping {
    /// `schema.table`.
    pub fn source_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Whether DMS removes this column (MySQL column names are case-insensitive).
    pub fn excludes(&self, column: &str) -> bool {
        self.exclude.iter().any(|c| c.eq_ignore_ascii_case(column))
    }

    /// Whether this column is stored as a keyed hash.
    pub fn hashes(&self, column: &str) -> bool {
        self.hash.iter().any(|c| c.eq_ignore_ascii_case(column))
    }

    /// The hint for a column, if the mapping gives one.
    pub fn hint(&self, column: &str) -> Option<ColumnHint> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, h)| *h)
    }

    /// The table analysts query: the replica in replica mode, else the change log.
    pub fn primary_target(&self) -> &TableRef {
        self.replica.as_ref().unwrap_or(&self.changelog)
    }

    /// Every BigQuery table this mapping writes.
    pub fn targets(&self) -> impl Iterator<Item = &TableRef> {
        self.replica.iter().chain(std::iter::once(&self.changelog))
    }
}
