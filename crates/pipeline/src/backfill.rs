//! Backfill: replay a source's (or one table's) objects for a time range, through the same
//! per-object path as the Lambda. Safe to repeat: loaded objects are recognised by their job ids.

use ferry_core::key::DmsObject;
use ferry_core::mapping::{Catalog, Source};
use ferry_core::{DmsFile, plan_object};

use crate::ports::{ObjectMeta, ObjectStore, PortError, Warehouse};
use crate::process::{ObjectResult, Pipeline};

/// Which objects to replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only this table (`schema.table`).
    pub table: Option<String>,
    /// CDC files from this time on, as [`compact_time`] writes it. Without it, full-load files
    /// are included too.
    pub since: Option<String>,
    /// CDC files before this time.
    pub until: Option<String>,
}

/// `2026-11-26T09:30` -> `20261126T093000000000000`, comparable with `CdcTimestamp::compact(9)`.
pub fn compact_time(s: &str) -> Result<String, String> {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 8 || digits.len() > 23 {
        return Err(format!(
            "{s:?} is not a time: use 2026-11-26, 2026-11-26T09:30 or 2026-11-26T09:30:00 (UTC)"
        ));
    }
    let padded = format!("{digits:0<23}");
    Ok(format!("{}T{}", &padded[..8], &padded[8..]))
}

/// Lists the source's objects and keeps the mapped, enabled data files the selection names,
/// in apply order.
pub fn select(
    catalog: &Catalog,
    store: &dyn ObjectStore,
    source: &Source,
    selection: &Selection,
) -> Result<Vec<(DmsObject, ObjectMeta)>, PortError> {
    let prefix = match &selection.table {
        Some(t) => format!("{}{}/", source.prefix(), t.replace('.', "/")),
        None => source.prefix(),
    };
    let mut objects = Vec::new();
    for meta in store.list(&source.bucket, &prefix)? {
        let plan = plan_object(catalog, Some(&source.bucket), &meta.key, Some(&meta.etag));
        let (Some(object), Some(table), None) = (plan.object, plan.table, plan.skip) else {
            continue;
        };
        if selection
            .table
            .as_ref()
            .is_some_and(|t| *t != table.source_table())
        {
            continue;
        }
        let keep = match &object.file {
            DmsFile::FullLoad { .. } => selection.since.is_none(),
            DmsFile::Cdc { timestamp, .. } => {
                let t = timestamp.compact(9);
                selection.since.as_ref().is_none_or(|s| t >= *s)
                    && selection.until.as_ref().is_none_or(|u| t < *u)
            }
        };
        if keep {
            objects.push((object, meta));
        }
    }
    objects.sort_by(|a, b| a.0.apply_order(&b.0));
    Ok(objects)
}

/// Progress and result of a direct backfill.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Objects done so far.
    pub done: usize,
    /// Objects selected.
    pub total: usize,
    /// Loaded now.
    pub loaded: usize,
    /// Found loaded already.
    pub already_loaded: usize,
    /// Failed (each reported to `progress` with its reason).
    pub failed: usize,
    /// Rows loaded now.
    pub rows: u64,
    /// Bytes of the objects done.
    pub bytes_done: u64,
    /// Bytes of all selected objects.
    pub bytes_total: u64,
    /// Failure reasons.
    pub failures: Vec<String>,
}

/// Loads the selected objects one by one in apply order, then applies each touched replica.
/// `progress` is called after every object.
pub fn run_direct<S: ObjectStore, W: Warehouse>(
    pipeline: &Pipeline<S, W>,
    source: &Source,
    objects: &[(DmsObject, ObjectMeta)],
    progress: &mut dyn FnMut(&Summary),
) -> Summary {
    let mut s = Summary {
        total: objects.len(),
        bytes_total: objects.iter().map(|(_, m)| m.size).sum(),
        ..Summary::default()
    };
    let mut tables = std::collections::BTreeSet::new();
    for (object, meta) in objects {
        match pipeline.process_object(&source.bucket, &meta.key) {
            ObjectResult::Loaded { rows, .. } => {
                s.loaded += 1;
                s.rows += rows;
                tables.insert(object.source_table());
            }
            ObjectResult::AlreadyLoaded { .. } => {
                s.already_loaded += 1;
                tables.insert(object.source_table());
            }
            ObjectResult::Skipped { .. } => {}
            ObjectResult::Failed { reason, .. } | ObjectResult::Deferred { reason } => {
                s.failed += 1;
                s.failures.push(reason);
            }
        }
        s.done += 1;
        s.bytes_done += meta.size;
        progress(&s);
    }
    for t in &tables {
        if let Some(m) = source.tables.iter().find(|m| m.source_table() == *t)
            && m.replica.is_some()
            && let Err(e) = pipeline.warehouse.apply(m)
        {
            s.failed += 1;
            s.failures
                .push(format!("applying {t} to its replica: {}", e.message));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::compact_time;

    #[test]
    fn times_compare_with_file_timestamps() {
        assert_eq!(
            compact_time("2026-11-26").unwrap(),
            "20261126T000000000000000"
        );
        assert_eq!(
            compact_time("2026-11-26T09:30").unwrap(),
            "20261126T093000000000000"
        );
        assert!(compact_time("yesterday").is_err());
    }
}
