//! When each table loads and applies, so that BigQuery's quotas and bill hold at DMS's cadence.
//!
//! DMS writes one CDC file per table per `CdcMaxBatchInterval` (60 s by default): 1,440 files a
//! day, against BigQuery's 1,500 load jobs per table per day and 100,000 per project, failed
//! jobs included (page "Quotas and limits", Load jobs). And every MERGE with an UPDATE or DELETE
//! clause is billed for the whole replica (page "DML", On-demand pricing). So the scheduled
//! handler ([`crate::handler::handle_batch_scheduled`]) follows this module:
//!
//! - **Load slots.** A table's time is cut into slots of [`Schedule::load_every`]. The first
//!   batch holding the table's work in a slot claims the slot (a conditional write in the lock
//!   table, see [`ApplyLock`]) and loads, as one job, its files and every file waiting in the
//!   table's pending set ([`crate::ports::PendingLoads`]). A batch that finds the slot taken adds
//!   its files to the pending set and sends a wake-up for the next slot's start (both before
//!   the originals are acknowledged); whoever claims that slot first, a wake-up or a new file,
//!   loads the set. So a table gets at most one load job per slot, however SQS spreads its
//!   messages over invocations, and a file waits at most one window. A table whose files come
//!   less often than the window loads each one at once.
//! - **The window** is the longer of the table's share of its own budget (a day over
//!   [`ScheduleSettings::table_load_jobs_per_day`]) and its share of the project's (a day times
//!   the enabled tables over [`ScheduleSettings::project_load_jobs_per_day`]).
//! - **Apply slots**, the same with [`Schedule::apply_every`] (the mapping's `apply_every`, else
//!   [`ScheduleSettings::apply_every`]): files loaded and not applied travel to the table's next
//!   apply slot in one message (an apply marker) and are applied there, under the replica's
//!   lease. The `<target>_live` view shows the newest state in between.
//! - **Quotas.** An object the warehouse refuses because a quota that resets with time is used
//!   up is sent again [`QUOTA_DELAY`] later: deferral never counts toward SQS's
//!   `maxReceiveCount`, so nothing reaches the dead-letter queue for waiting.
//!
//! Everything here is a pure function of the clock it is given and of the slot claims, so the
//! production model (`scripts/bench scale`) runs these decisions with a simulated clock.

use std::time::Duration;

use ferry_core::mapping::{Catalog, TableMapping, TableRef};

use crate::ports::{ApplyLock, PortError};

/// The longest delay SQS gives a message (`DelaySeconds` up to 900, page "Amazon SQS delay
/// queues"): a message deferred further comes back early and is deferred again.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// How long an object refused for a used-up quota waits before it is tried again.
pub const QUOTA_DELAY: Duration = MAX_DELAY;

/// Settings of the schedule (environment of the Lambda; the model's parameters).
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    /// Load jobs the whole deployment may start per day (BigQuery allows 100,000 per project,
    /// failed ones included; the default keeps more than half of that free for retries,
    /// backfills and other loaders in the project).
    pub project_load_jobs_per_day: u32,
    /// Load jobs one table may get per day (BigQuery allows 1,500, failed ones included).
    pub table_load_jobs_per_day: u32,
    /// How long after a load slot starts its wake-up comes: long enough for the table's next
    /// DMS file (one per `CdcMaxBatchInterval`, 60 s by default) to claim the slot first and
    /// take the waiting files with it, so that they load together with no extra wait; the
    /// wake-up loads them when no file comes.
    pub wake_after: Duration,
    /// How often a replica is applied when its mapping does not say.
    pub apply_every: Duration,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings {
            project_load_jobs_per_day: 45_000,
            table_load_jobs_per_day: 1_000,
            wake_after: Duration::from_secs(75),
            apply_every: Duration::from_secs(15 * 60),
        }
    }
}

/// One slot of a table's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Its number (slots since the epoch, shifted by the table's offset).
    pub index: i64,
    /// When it starts, µs since the epoch.
    pub start_micros: i64,
    /// When it ends (the next one starts), µs since the epoch.
    pub end_micros: i64,
}

/// What to do with a table's work now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Do it in this batch.
    Now,
    /// Send it back to the queue, to be delivered at this time (µs since the epoch).
    Later {
        /// When.
        at_micros: i64,
    },
}

/// The schedule of every mapped table.
#[derive(Debug, Clone)]
pub struct Schedule {
    settings: ScheduleSettings,
    load_every: Duration,
}

const MICROS: i64 = 1_000_000;
const DAY_SECS: f64 = 86_400.0;

impl Schedule {
    /// The schedule of the catalog's enabled tables.
    pub fn new(catalog: &Catalog, settings: ScheduleSettings) -> Schedule {
        let tables: Vec<&TableMapping> = catalog
            .sources()
            .iter()
            .flat_map(|s| s.tables.iter())
            .filter(|t| t.enabled)
            .collect();
        let n = tables.len().max(1);
        let per_table = DAY_SECS / f64::from(settings.table_load_jobs_per_day.max(1));
        let per_project =
            DAY_SECS * n as f64 / f64::from(settings.project_load_jobs_per_day.max(1));
        Schedule {
            load_every: Duration::from_secs_f64(per_table.max(per_project).ceil()),
            settings,
        }
    }

    /// Each table's load window: at most one load job per window (two with the overflow).
    pub fn load_every(&self) -> Duration {
        self.load_every
    }

    /// How often a table's replica is applied.
    pub fn apply_every(&self, table: &TableMapping) -> Duration {
        table.apply_every.unwrap_or(self.settings.apply_every)
    }

    /// The load slot of `table` at `now_micros`.
    pub fn load_slot(&self, table: &TableMapping, now_micros: i64) -> Slot {
        slot(&table.changelog, self.load_every, now_micros)
    }

    /// The apply slot of `table` at `now_micros`.
    pub fn apply_slot(&self, table: &TableMapping, now_micros: i64) -> Slot {
        slot(&table.changelog, self.apply_every(table), now_micros)
    }

    /// Whether a batch loads `table` now: it claims the table's current load slot in `slots`
    /// for `owner`. `Later` names when the wake-up of the waiting files comes: the next slot's
    /// start plus [`ScheduleSettings::wake_after`] (at most half a window).
    pub fn decide_load(
        &self,
        table: &TableMapping,
        now_micros: i64,
        slots: &dyn ApplyLock,
        owner: &str,
    ) -> Result<Decision, PortError> {
        let after = self.settings.wake_after.min(self.load_every / 2);
        let s = self.load_slot(table, now_micros);
        decide(("ferry-load", table, &s, after), now_micros, slots, owner)
    }

    /// Whether a batch applies `table`'s replica now (it claims the current apply slot);
    /// `Later` names the next apply slot's start.
    pub fn decide_apply(
        &self,
        table: &TableMapping,
        now_micros: i64,
        slots: &dyn ApplyLock,
        owner: &str,
    ) -> Result<Decision, PortError> {
        let s = self.apply_slot(table, now_micros);
        decide(
            ("ferry-apply", table, &s, Duration::ZERO),
            now_micros,
            slots,
            owner,
        )
    }
}

/// Claims `kind`'s slot `s` of `table`: `Now` when this owner holds it, else `Later` at the
/// next slot's start plus `after`.
fn decide(
    (kind, table, s, after): (&str, &TableMapping, &Slot, Duration),
    now_micros: i64,
    slots: &dyn ApplyLock,
    owner: &str,
) -> Result<Decision, PortError> {
    let name = format!("{kind}/{}/{}", table.changelog, s.index);
    if claim(slots, &name, owner, s, now_micros)? {
        return Ok(Decision::Now);
    }
    Ok(Decision::Later {
        at_micros: s.end_micros + i64::try_from(after.as_micros()).unwrap_or(0),
    })
}

/// Takes a slot's claim until the slot ends (plus a minute for clocks that disagree).
fn claim(
    slots: &dyn ApplyLock,
    name: &str,
    owner: &str,
    slot: &Slot,
    now_micros: i64,
) -> Result<bool, PortError> {
    let left = u64::try_from((slot.end_micros - now_micros).max(0)).unwrap_or(0);
    slots.try_acquire(
        name,
        owner,
        Duration::from_micros(left) + Duration::from_secs(60),
    )
}

/// The slot of width `every` holding `now_micros`, for `table`: slots of different tables are
/// shifted by a stable offset, so that their deferred files do not all come back at once.
fn slot(table: &TableRef, every: Duration, now_micros: i64) -> Slot {
    let width = i64::try_from(every.as_micros())
        .unwrap_or(i64::MAX)
        .max(MICROS);
    let offset = i64::try_from(stable_hash(&table.to_string()) % width.unsigned_abs()).unwrap_or(0);
    let index = (now_micros - offset).div_euclid(width);
    let start = offset + index * width;
    Slot {
        index,
        start_micros: start,
        end_micros: start + width,
    }
}

/// FNV-1a: the same on every machine and build (the offsets of every invocation agree).
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The delay to send a message with so that it is delivered inside the slot starting at
/// `at_micros`: whole seconds (SQS's `DelaySeconds`), rounded up, plus one, so that a message
/// never arrives before its slot; at least a second, at most [`MAX_DELAY`].
pub fn delay_until(now_micros: i64, at_micros: i64) -> Duration {
    let micros = (at_micros - now_micros).max(0);
    let secs =
        u64::try_from(micros.div_euclid(MICROS) + i64::from(micros % MICROS != 0) + 1).unwrap_or(1);
    Duration::from_secs(secs).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::ProcessLock;

    fn catalog(tables: usize) -> Catalog {
        let entries: Vec<String> = (0..tables)
            .map(|i| format!(r#""s.t{i}": {{"primary_key": ["id"]}}"#))
            .collect();
        let text = format!(
            r#"{{"source": {{"name": "s", "bucket": "dms-bucket", "folder": "f"}}, "bigquery": {{"project": "my-project", "dataset": "d"}}, "tables": {{{}}}}}"#,
            entries.join(", ")
        );
        let file = ferry_core::mapping::MappingFile {
            path: "s.json".into(),
            text,
        };
        Catalog::from_files(&[file]).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn schedule(tables: usize, project: u32) -> Schedule {
        Schedule::new(
            &catalog(tables),
            ScheduleSettings {
                project_load_jobs_per_day: project,
                ..ScheduleSettings::default()
            },
        )
    }

    fn table(s: &Schedule, i: usize) -> TableMapping {
        let _ = s;
        catalog(i + 1).sources()[0].tables[i].clone()
    }

    #[test]
    fn the_window_is_the_larger_share() {
        let s = schedule(68, 45_000);
        assert_eq!(s.load_every(), Duration::from_secs(131));
        assert_eq!(
            schedule(680, 45_000).load_every(),
            Duration::from_secs(1306)
        );
        // Few tables: the per-table budget decides (a day over 1,000 jobs).
        assert_eq!(schedule(2, 45_000).load_every(), Duration::from_secs(87));
    }

    #[test]
    fn slots_tile_time_and_differ_between_tables() {
        let s = schedule(68, 45_000);
        let a = table(&s, 0);
        let first = s.load_slot(&a, 1_000 * MICROS);
        assert!(first.start_micros <= 1_000 * MICROS && 1_000 * MICROS < first.end_micros);
        let next = s.load_slot(&a, first.end_micros);
        assert_eq!(next.index, first.index + 1);
        assert_eq!(next.start_micros, first.end_micros);
        let b = table(&s, 1);
        assert_ne!(
            s.load_slot(&b, 1_000 * MICROS).start_micros,
            first.start_micros,
            "offsets spread the tables"
        );
    }

    #[test]
    fn one_load_per_slot() {
        let s = schedule(68, 45_000);
        let t = table(&s, 2);
        let lock = ProcessLock::default();
        let slot = s.load_slot(&t, 10_000 * MICROS);
        let now = slot.start_micros + MICROS;
        assert_eq!(s.decide_load(&t, now, &lock, "a").unwrap(), Decision::Now);
        // The same batch may claim again (one group, several calls); another one waits for the
        // next slot.
        assert_eq!(s.decide_load(&t, now, &lock, "a").unwrap(), Decision::Now);
        // Another one parks its files; their wake-up comes after the next slot starts, when
        // the table's next file has usually claimed it already.
        let Decision::Later { at_micros } =
            s.decide_load(&t, now + 5 * MICROS, &lock, "b").unwrap()
        else {
            panic!("the slot is taken")
        };
        assert!(at_micros > slot.end_micros && at_micros <= slot.end_micros + 75 * MICROS);
        // Another table's slot is its own.
        let other = table(&s, 3);
        assert_eq!(
            s.decide_load(&other, now, &lock, "b").unwrap(),
            Decision::Now
        );
        // The next slot is free again.
        assert_eq!(
            s.decide_load(&t, slot.end_micros, &lock, "b").unwrap(),
            Decision::Now
        );
    }

    #[test]
    fn applies_follow_the_mapping_interval() {
        let s = schedule(68, 45_000);
        let mut t = table(&s, 4);
        assert_eq!(s.apply_every(&t), Duration::from_secs(900));
        t.apply_every = Some(Duration::from_secs(300));
        assert_eq!(s.apply_every(&t), Duration::from_secs(300));
        let lock = ProcessLock::default();
        let slot = s.apply_slot(&t, 50_000 * MICROS);
        assert_eq!(
            s.decide_apply(&t, slot.start_micros, &lock, "a").unwrap(),
            Decision::Now
        );
        assert_eq!(
            s.decide_apply(&t, slot.start_micros + MICROS, &lock, "b")
                .unwrap(),
            Decision::Later {
                at_micros: slot.end_micros
            }
        );
    }

    #[test]
    fn delays_are_capped_by_sqs() {
        assert_eq!(delay_until(0, 30 * MICROS), Duration::from_secs(31));
        // Never early: a fraction of a second rounds up.
        assert_eq!(delay_until(0, 30 * MICROS + 1), Duration::from_secs(32));
        assert_eq!(delay_until(0, 5_000 * MICROS), MAX_DELAY);
        assert_eq!(delay_until(10 * MICROS, 0), Duration::from_secs(1));
    }
}
