//! Work that waits for a table's next slot (see [`crate::schedule`]): the pending sets, the
//! wake-ups that bring a slot's claimer, and the bundles that send objects back to the queue.
//!
//! Every step that lets go of a message first makes its work durable elsewhere: objects are
//! added to the table's pending set and a wake-up is sent before the batch acknowledges them
//! (or, without the set, they travel in one delayed message); a claimer removes from a set only
//! what reached a final state. What fails in between comes back through SQS.

use ferry_core::event::{Deferral, ObjectEvent, Wake, WakeFor, deferred_body, wake_body};
use ferry_core::mapping::{Source, TableMapping};
use ferry_core::sql::ApplyWindow;

use crate::ports::{ApplyLock, PendingSets, PortError, Requeue};
use crate::schedule::{Schedule, delay_until};

/// What the scheduled handler needs besides the pipeline (see [`crate::schedule`]).
pub struct Scheduler<'a> {
    /// Every table's load and apply slots.
    pub schedule: &'a Schedule,
    /// Where slots are claimed (the lock table in production).
    pub slots: &'a dyn ApplyLock,
    /// The loader's own queue, for wake-ups and work sent back to a later slot.
    pub requeue: &'a dyn Requeue,
    /// Where work waits for its table's next slot (the lock table in production).
    pub pending: &'a dyn PendingSets,
    /// Now, µs since the epoch.
    pub clock: &'a (dyn Fn() -> i64 + Sync),
}

/// A load set's objects, each with its item, and the items naming no new object.
pub type Waiting = (Vec<(String, ObjectEvent)>, Vec<String>);

/// The pending set of a table's objects waiting to load.
pub fn load_set(table: &TableMapping) -> String {
    format!("load/{}", table.changelog)
}

/// The pending set of a table's loaded files waiting to be applied.
pub fn apply_set(table: &TableMapping) -> String {
    format!("apply/{}", table.changelog)
}

impl Scheduler<'_> {
    /// Now.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Sends a wake-up for `table`'s slot at `at_micros`, unless another batch has sent that
    /// one already (one wake-up per table, kind and time: a claim in the lock table, given up
    /// again when the send fails).
    pub fn wake(
        &self,
        source: &Source,
        table: &TableMapping,
        work: WakeFor,
        at_micros: i64,
        owner: &str,
    ) -> Result<(), PortError> {
        let kind = match work {
            WakeFor::Load => "load",
            WakeFor::Apply => "apply",
        };
        let name = format!("ferry-wake/{kind}/{}/{at_micros}", table.changelog);
        let until = u64::try_from((at_micros - self.now()).max(0)).unwrap_or(0);
        let ttl = std::time::Duration::from_micros(until) + std::time::Duration::from_secs(3600);
        if !self.slots.try_acquire(&name, owner, ttl)? {
            return Ok(());
        }
        self.forward(&Wake {
            source: source.name.clone(),
            table: table.source_table(),
            work,
            at_micros,
        })
        .inspect_err(|_| {
            let _ = self.slots.release(&name, owner);
        })
    }

    /// Sends a wake-up (again) to be delivered when it is due.
    pub fn forward(&self, wake: &Wake) -> Result<(), PortError> {
        self.requeue
            .send_later(&wake_body(wake), delay_until(self.now(), wake.at_micros))
    }

    /// Adds objects to the table's load set and wakes its slot at `at_micros`.
    pub fn park_objects(
        &self,
        source: &Source,
        table: &TableMapping,
        objects: &[ObjectEvent],
        at_micros: i64,
        owner: &str,
    ) -> Result<(), PortError> {
        let items: Vec<String> = objects.iter().map(encode_object).collect();
        self.pending.add(&load_set(table), &items)?;
        self.wake(source, table, WakeFor::Load, at_micros, owner)
    }

    /// The table's waiting objects, each with its item (for `remove`), and the items that
    /// name no new object (a second spelling of one, or not an S3 event), to remove at once.
    pub fn waiting_objects(&self, table: &TableMapping) -> Result<Waiting, PortError> {
        let mut out: Vec<(String, ObjectEvent)> = Vec::new();
        let mut spare = Vec::new();
        for item in self.pending.read(&load_set(table))? {
            match serde_json::from_str::<ObjectEvent>(&item) {
                Ok(o)
                    if !out
                        .iter()
                        .any(|(_, x)| x.bucket == o.bucket && x.key == o.key) =>
                {
                    out.push((item, o))
                }
                Ok(_) => spare.push(item),
                Err(e) => {
                    tracing::warn!(table = %table.source_table(), error = %e, "pending set item that is not an S3 event; dropped");
                    spare.push(item);
                }
            }
        }
        Ok((out, spare))
    }

    /// Adds an apply window to the table's apply set and wakes its apply slot at `at_micros`.
    pub fn park_window(
        &self,
        source: &Source,
        table: &TableMapping,
        window: &ApplyWindow,
        at_micros: i64,
        owner: &str,
    ) -> Result<(), PortError> {
        if !window.is_empty() {
            let item = serde_json::to_string(window)
                .map_err(|e| PortError::permanent(format!("apply window: {e}")))?;
            self.pending.add(&apply_set(table), &[item])?;
        }
        self.wake(source, table, WakeFor::Apply, at_micros, owner)
    }

    /// The table's waiting apply windows, merged, with their items (for `remove`).
    pub fn waiting_window(
        &self,
        table: &TableMapping,
    ) -> Result<(ApplyWindow, Vec<String>), PortError> {
        let items = self.pending.read(&apply_set(table))?;
        let mut window = ApplyWindow::empty();
        for item in &items {
            match serde_json::from_str::<ApplyWindow>(item) {
                Ok(w) => window.merge(&w),
                Err(e) => {
                    tracing::warn!(table = %table.source_table(), error = %e, "apply set item that is not a window; dropped");
                }
            }
        }
        Ok((window, items))
    }

    /// Sends objects back to the queue in one message, to be delivered at `at_micros` (used
    /// without a pending set, and past a used-up quota).
    pub fn send_back(
        &self,
        objects: &[(Option<Deferral>, ObjectEvent)],
        at_micros: i64,
    ) -> Result<(), PortError> {
        let now = self.now();
        let since = objects
            .iter()
            .filter_map(|(d, _)| d.map(|d| d.since_micros))
            .min()
            .unwrap_or(now);
        let times = objects
            .iter()
            .filter_map(|(d, _)| d.map(|d| d.times))
            .max()
            .unwrap_or(0)
            + 1;
        let events: Vec<ObjectEvent> = objects.iter().map(|(_, o)| o.clone()).collect();
        let body = deferred_body(
            Deferral {
                since_micros: since,
                times,
            },
            &events,
        );
        self.requeue.send_later(&body, delay_until(now, at_micros))
    }
}

/// An object as a pending-set item: its S3 event as JSON (one spelling per event, so that
/// adding it twice keeps one).
pub fn encode_object(o: &ObjectEvent) -> String {
    serde_json::to_string(o).unwrap_or_default()
}
