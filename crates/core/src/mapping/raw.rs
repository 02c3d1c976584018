//! The mapping file format exactly as analysts write it. These types only parse JSON; the checks
//! that make a mapping valid live in [`super::validate`], which turns them into the domain types
//! of [`super::model`]. The JSON Schema in `mappings/schema/` is generated from these types, so
//! the doc comments below are what editors show.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::partition::DatePartitioning;

/// The DMS timestamp column ferry expects when a mapping does not name one.
pub const DEFAULT_TIMESTAMP_COLUMN: &str = "dms_commit_ts";

/// One mapping file: one DMS source (a task replicating one cluster), where its BigQuery tables
/// live, and the source tables ferry loads from it.
#[derive(Debug, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ferry mapping file")]
pub struct RawMappingFile {
    /// Path or URL of this JSON Schema, for editor completion. ferry ignores it.
    #[serde(rename = "$schema", default)]
    pub schema: Option<String>,
    /// The DMS source this file maps: one DMS task, one MySQL/Aurora cluster.
    pub source: RawSource,
    /// Where the tables of this source land in BigQuery.
    pub bigquery: RawBigQuery,
    /// Settings every table of this file takes unless it says otherwise.
    #[serde(default)]
    pub defaults: RawDefaults,
    /// The source tables to load, keyed by `"schema.table"` as in MySQL. A table that is not
    /// listed here is not loaded (its files are acknowledged and counted as unmapped).
    #[schemars(extend("propertyNames" = {"pattern": "^[^./]+\\.[^/]+$"}, "minProperties" = 1))]
    pub tables: Entries<RawTable>,
}

/// The DMS task and where it writes in S3.
#[derive(Debug, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// A short name for the source, the same as the file name without `.json`, e.g.
    /// `slots-account`. Lowercase letters, digits and `-`.
    pub name: String,
    /// The S3 bucket the DMS task writes to (the endpoint's `BucketName`).
    pub bucket: String,
    /// The DMS endpoint's `BucketFolder`: the prefix the task writes under, without leading or
    /// trailing `/`. Empty when the task writes at the bucket root.
    #[serde(default)]
    pub folder: String,
    /// DMS S3 endpoint settings ferry relies on. They are generated into the DMS endpoint from
    /// here, so the task and the loader cannot disagree.
    #[serde(default)]
    pub dms: RawDms,
    /// A mapped table (`schema.table`) that the source updates every minute (a MySQL event
    /// writing the time into one row), so that an idle source can be told from a stalled
    /// pipeline: the deployment alarms when its changes stop arriving. DMS has no heartbeat of
    /// its own for MySQL sources.
    #[serde(default)]
    pub heartbeat: Option<String>,
}

/// DMS S3 endpoint settings that change what ferry reads.
#[derive(Debug, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDms {
    /// The endpoint's `TimestampColumnName`: the column holding each change's source commit time
    /// (full load: the transfer time). `null` when the task writes none; ferry then takes the
    /// commit time from the file name, which is coarser.
    #[serde(default = "default_timestamp_column")]
    pub timestamp_column: Option<String>,
    /// The endpoint's date partitioning (`DatePartitionEnabled`, `DatePartitionSequence`,
    /// `DatePartitionDelimiter`). Absent or `null`: not partitioned.
    #[serde(default)]
    pub date_partitioning: Option<DatePartitioning>,
    /// The task's `LobMaxSize` in KB (limited LOB mode, the only one S3 targets support; DMS
    /// default 32). DMS cuts longer LOB values (JSON, TEXT, BLOB) at this size without an
    /// error; ferry counts and reports the values that reach it.
    #[serde(default = "default_lob_max_size_kb")]
    pub lob_max_size_kb: u32,
}

impl Default for RawDms {
    fn default() -> Self {
        RawDms {
            timestamp_column: default_timestamp_column(),
            date_partitioning: None,
            lob_max_size_kb: default_lob_max_size_kb(),
        }
    }
}

fn default_lob_max_size_kb() -> u32 {
    32
}

fn default_timestamp_column() -> Option<String> {
    Some(DEFAULT_TIMESTAMP_COLUMN.to_owned())
}

/// BigQuery destination of a source.
#[derive(Debug, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBigQuery {
    /// Google Cloud project id, e.g. `acme-casino-analytics`.
    pub project: String,
    /// Dataset the tables are created in, e.g. `slots_account`.
    pub dataset: String,
    /// Dataset location, e.g. `US`, `EU` or `asia-northeast3`. Used when ferry creates the dataset.
    #[serde(default)]
    pub location: Option<String>,
}

/// Defaults for the tables of one file.
#[derive(Debug, Default, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Mode of tables that do not set one (default `replica`).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Whether replica tables keep deleted rows, flagged, instead of removing them (default false).
    #[serde(default)]
    pub soft_delete: Option<bool>,
    /// What a source column's type change does to tables that do not set it (default
    /// `new_column`).
    #[serde(default)]
    pub on_type_change: Option<OnTypeChange>,
    /// What removing a table's full-load files (how a source TRUNCATE shows) does to tables that
    /// do not set it (default `keep`).
    #[serde(default)]
    pub on_truncate: Option<OnTruncate>,
    /// How often replica tables that do not set it are brought up to date, e.g. `15m`
    /// (default: the loader's, 15 minutes).
    #[serde(default)]
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub apply_every: Option<String>,
}

/// What ferry does when a file brings a column with another BigQuery type than the table has
/// (the source column's type changed).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnTypeChange {
    /// The column continues under `<column>__<type>` (e.g. `level__string`), added to the change
    /// log and the replica; the original column keeps every value from before the change.
    /// Nothing is rewritten, nothing is refused (BigQuery changes a column's type in place for
    /// a few numeric pairs only).
    #[default]
    NewColumn,
    /// The table stops: files with the changed type are not loaded (they stay in S3 for a
    /// backfill), each is counted as skipped with code `type_changed`, and one alarm fires.
    Stop,
}

/// What ferry does when a mapped table's full-load files are removed from the bucket: DMS
/// deletes the table's folder when the source table is truncated.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnTruncate {
    /// Nothing changes in BigQuery; the removal is recorded, counted and alarmed.
    #[default]
    Keep,
    /// The replica is emptied as of the removal: every row from before it is removed
    /// (tombstoned), and the changes DMS writes afterwards apply. Replica tables only.
    Empty,
}

/// How a table lands in BigQuery.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The current state of the source table (updates and deletes applied, by primary key),
    /// next to its full change log `<target>_changelog`. Needs `primary_key`.
    Replica,
    /// Only the change log: every insert, update and delete appended as a row, in `<target>`.
    Changelog,
}

impl Mode {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Replica => "replica",
            Mode::Changelog => "changelog",
        }
    }
}

/// BigQuery time-partitioning granularity.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Granularity {
    /// One partition per hour.
    Hour,
    /// One partition per day.
    Day,
    /// One partition per month.
    Month,
    /// One partition per year.
    Year,
}

impl Granularity {
    /// The name BigQuery's SQL and REST API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "HOUR",
            Granularity::Day => "DAY",
            Granularity::Month => "MONTH",
            Granularity::Year => "YEAR",
        }
    }
}

/// One source table. `{}` is a complete entry for a change-log table, and
/// `{ "primary_key": ["id"] }` for a replica.
#[derive(Debug, Default, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    /// BigQuery table name (default: the source table's name).
    #[serde(default)]
    pub target: Option<String>,
    /// `replica` (current state plus change log) or `changelog` (change log only). Default: the
    /// file's `defaults.mode`, else `replica`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Primary key columns, in key order. Required for `replica`; used to cluster the tables.
    #[serde(default)]
    pub primary_key: Option<Vec<String>>,
    /// Column to partition the table by (a DATE, DATETIME or TIMESTAMP column). Default: a
    /// replica is not partitioned; a change log is partitioned by the day of each change's commit.
    #[serde(default)]
    pub partition_by: Option<String>,
    /// Partition granularity for `partition_by` (default `DAY`).
    #[serde(default)]
    pub partition_granularity: Option<Granularity>,
    /// Up to 4 columns to cluster by (default: the first 4 primary key columns).
    #[serde(default)]
    pub cluster_by: Option<Vec<String>>,
    /// Keep deleted rows in the replica with `_ferry_deleted = true` instead of removing them.
    #[serde(default)]
    pub soft_delete: Option<bool>,
    /// What a source column's type change does: `new_column` (default) or `stop`.
    #[serde(default)]
    pub on_type_change: Option<OnTypeChange>,
    /// What removing the table's full-load files (a source TRUNCATE) does: `keep` (default)
    /// or `empty` (replica tables).
    #[serde(default)]
    pub on_truncate: Option<OnTruncate>,
    /// How often the replica is brought up to date from the change log (one MERGE, billed for
    /// the whole replica), e.g. `5m`, `15m`, `1h`: from 1 minute to 24 hours. The `<target>_live`
    /// view shows the newest state in between. Default: the loader's (15 minutes).
    #[serde(default)]
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub apply_every: Option<String>,
    /// `false` stops loading this table; its files are acknowledged and counted as disabled.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// MySQL types of columns whose type parquet loses, keyed by column name, e.g.
    /// `{"is_vip": "tinyint(1)", "created_at": "datetime", "settings": "json"}`. Other columns
    /// need no entry: their type comes from the data.
    #[serde(default)]
    pub columns: Entries<TypeHint>,
    /// Table description shown in BigQuery.
    #[serde(default)]
    pub description: Option<String>,
    /// Columns that must never leave the source (KYC documents, card numbers): DMS drops them
    /// (a `remove-column` transformation rule generated into the task's table mappings), so
    /// the values never reach S3. Should one arrive anyway, the loader drops it and counts it
    /// as a warning.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Columns analysts may join on but must not read (e-mail, phone): stored as the hex
    /// HMAC-SHA256 of the value under the deployment's hash key (a secret, never in the
    /// mappings), as STRING. The same value hashes the same in every table and file.
    #[serde(default)]
    pub hash: Vec<String>,
}

/// A column's MySQL type, as `SHOW CREATE TABLE` prints it, for the types parquet blurs.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct TypeHint(pub String);

impl JsonSchema for TypeHint {
    fn schema_name() -> Cow<'static, str> {
        "TypeHint".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "The column's MySQL type, for types parquet blurs: tinyint(1) | boolean -> BOOL; bit(n) -> BOOL (n=1), INT64 (n<=63), NUMERIC (n=64); datetime[(fsp)] -> DATETIME (wall clock); timestamp[(fsp)] -> TIMESTAMP (UTC); json -> JSON; time[(fsp)] -> TIME; bigint unsigned -> NUMERIC.",
            "examples": ["tinyint(1)", "boolean", "bit(8)", "datetime", "datetime(6)", "timestamp", "json", "time", "bigint unsigned"]
        })
    }
}

/// A JSON object read as an ordered list of entries, keeping duplicate keys so that validation
/// can report them (a plain map would silently keep the last one).
#[derive(Debug)]
pub struct Entries<T>(pub Vec<(String, T)>);

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for EntriesVisitor<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<T>()?;
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for Entries<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("Entries_of_{}", T::schema_name()).into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let value = generator.subschema_for::<T>();
        json_schema!({ "type": "object", "additionalProperties": value })
    }
}
