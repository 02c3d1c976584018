//! What ferry does with one object: which source and table it belongs to, where it lands and
//! under which job id, or why it is skipped. The Lambda, the backfill and `ferry plan` all decide
//! through [`plan_object`].

use std::fmt;

use crate::jobid::JobId;
use crate::key::{self, DmsObject, SkipReason};
use crate::mapping::{Catalog, Source, TableMapping};

/// Why an object is not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanSkip {
    /// No mapped source owns the bucket and folder of the key.
    NoSource,
    /// More than one source could own the key (only when the bucket is unknown).
    AmbiguousSource {
        /// The candidate sources' names.
        sources: Vec<String>,
    },
    /// The key is not a DMS data file.
    Key(SkipReason),
    /// The source table has no mapping.
    Unmapped,
    /// The source table's mapping has `"enabled": false`.
    Disabled,
}

impl PlanSkip {
    /// Whether the key has a shape no DMS task writes under a mapped folder (a foreign or
    /// hostile key, an ambiguous mapping): a poison object for the dead-letter queue, not a
    /// quiet skip. Folder markers, transaction files, other formats and unmapped or disabled
    /// tables are ordinary skips: acknowledged and counted.
    pub fn is_poison(&self) -> bool {
        matches!(
            self,
            PlanSkip::AmbiguousSource { .. }
                | PlanSkip::Key(
                    SkipReason::UnknownFileName { .. }
                        | SkipReason::NotUnderTableFolder
                        | SkipReason::OutsideBucketFolder { .. }
                        | SkipReason::UnexpectedFolders { .. }
                )
        )
    }

    /// A stable snake-case code for metrics and status.
    pub fn code(&self) -> &'static str {
        match self {
            PlanSkip::NoSource => "no_source",
            PlanSkip::AmbiguousSource { .. } => "ambiguous_source",
            PlanSkip::Key(SkipReason::Folder) => "folder",
            PlanSkip::Key(SkipReason::TransactionFile) => "transaction_file",
            PlanSkip::Key(SkipReason::NotParquet { .. }) => "not_parquet",
            PlanSkip::Key(SkipReason::UnknownFileName { .. }) => "unknown_file_name",
            PlanSkip::Key(SkipReason::NotUnderTableFolder) => "not_under_table_folder",
            PlanSkip::Key(SkipReason::OutsideBucketFolder { .. }) => "outside_bucket_folder",
            PlanSkip::Key(SkipReason::UnexpectedFolders { .. }) => "unexpected_folders",
            PlanSkip::Unmapped => "unmapped_table",
            PlanSkip::Disabled => "disabled_table",
        }
    }
}

impl fmt::Display for PlanSkip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanSkip::NoSource => write!(f, "no mapping file's source owns this bucket and folder"),
            PlanSkip::AmbiguousSource { sources } => {
                write!(
                    f,
                    "sources {} all match this key; give the bucket (s3://bucket/key)",
                    sources.join(", ")
                )
            }
            PlanSkip::Key(reason) => reason.fmt(f),
            PlanSkip::Unmapped => write!(
                f,
                "table is not mapped; add it to the source's mapping file to load it"
            ),
            PlanSkip::Disabled => {
                write!(f, "table is disabled in its mapping (\"enabled\": false)")
            }
        }
    }
}

/// The decision for one object.
#[derive(Debug, Clone)]
pub struct Plan<'c> {
    /// The decoded key.
    pub key: String,
    /// The bucket: as given, else the owning source's.
    pub bucket: Option<String>,
    /// The owning source, when one was found.
    pub source: Option<&'c Source>,
    /// The parsed object, whenever the key parses (also for unmapped tables).
    pub object: Option<DmsObject>,
    /// The table mapping, when the table is mapped (also when disabled).
    pub table: Option<&'c TableMapping>,
    /// The load job id of attempt 0, when the object is to be loaded.
    pub job_id: Option<JobId>,
    /// Why the object is not loaded, or `None` when it is.
    pub skip: Option<PlanSkip>,
}

/// Decides what to do with the object `key` (decoded) in `bucket` (when known), version `etag`.
pub fn plan_object<'c>(
    catalog: &'c Catalog,
    bucket: Option<&str>,
    key: &str,
    etag: Option<&str>,
) -> Plan<'c> {
    let mut plan = Plan {
        key: key.to_owned(),
        bucket: bucket.map(str::to_owned),
        source: None,
        object: None,
        table: None,
        job_id: None,
        skip: None,
    };
    let candidates: Vec<&Source> = catalog
        .sources()
        .iter()
        .filter(|s| bucket.is_none_or(|b| b == s.bucket) && s.owns_key(key))
        .collect();
    let source = match candidates.as_slice() {
        [one] => *one,
        [] => {
            plan.object = key::parse_key_unanchored(key).ok();
            plan.skip = Some(match key::parse_key_unanchored(key) {
                Err(reason) => PlanSkip::Key(reason),
                Ok(_) => PlanSkip::NoSource,
            });
            return plan;
        }
        many => {
            plan.object = key::parse_key_unanchored(key).ok();
            plan.skip = Some(PlanSkip::AmbiguousSource {
                sources: many.iter().map(|s| s.name.clone()).collect(),
            });
            return plan;
        }
    };
    plan.source = Some(source);
    plan.bucket = Some(source.bucket.clone());
    let object = match source.parse_key(key) {
        Ok(object) => object,
        Err(reason) => {
            plan.skip = Some(PlanSkip::Key(reason));
            return plan;
        }
    };
    let table = source.table(&object.schema, &object.table);
    plan.table = table;
    plan.skip = match table {
        None => Some(PlanSkip::Unmapped),
        Some(t) if !t.enabled => Some(PlanSkip::Disabled),
        Some(t) => {
            plan.job_id = Some(JobId::for_object(
                &source.bucket,
                &object,
                etag,
                &t.changelog,
                0,
            ));
            None
        }
    };
    plan.object = Some(object);
    plan
}
