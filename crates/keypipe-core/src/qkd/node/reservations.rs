//! The node's side of its key ledger: which streams the ledger writer
//! records next (changed or forgotten), the stream reservations that must
//! be durable before key below them goes out, and whether the writer
//! should write at once rather than at its next period.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Node;
use crate::qkd::ledger::StreamRecord;
use crate::qkd::link::Role;
use crate::qkd::stream::Stream;

/// What the ledger writer must record next, and how soon.
#[derive(Debug, Default)]
pub(super) struct Reservations {
    /// Streams changed since the ledger last took them.
    dirty: HashSet<Uuid>,
    /// Streams forgotten since the ledger last took them.
    removed: Vec<Uuid>,
    /// A stream waits for its ledger reservation.
    urgent: bool,
    /// The first sync after a reset was applied / is in the records the
    /// ledger writer took: once they are durable the reset is over.
    reset_synced: bool,
    reset_in_records: bool,
}

impl Reservations {
    /// Stream `ksid` changed: its record is written next time.
    pub(super) fn touch(&mut self, ksid: Uuid) {
        self.dirty.insert(ksid);
    }

    /// Stream `ksid` is forgotten: its record is deleted next time.
    pub(super) fn drop_record(&mut self, ksid: Uuid) {
        self.removed.push(ksid);
    }

    /// Reserves `stream` (`ksid`) below `end` at least, written at once.
    pub(super) fn reserve(&mut self, ksid: Uuid, stream: &mut Stream, end: u64) {
        stream.reserved = stream.reserved.max(end);
        self.dirty.insert(ksid);
        self.urgent = true;
    }

    /// Leader: stream blocks of `stream` (`ksid`) up to `top` are wanted
    /// now. Reserves ahead so the ledger write is done before it is needed;
    /// a fast stream reserves more per write (up to `most` blocks), a slow
    /// one less (what a restart skips is about a fifth of a second of the
    /// stream's key). True when `top` is durably reserved; else the ledger
    /// is asked to write at once.
    pub(super) fn cover(
        &mut self,
        ksid: Uuid,
        stream: &mut Stream,
        top: u64,
        now: Instant,
        most: u64,
    ) -> bool {
        if top + stream.reserve_step / 2 >= stream.reserved {
            if stream
                .reserved_at
                .is_some_and(|t| now.duration_since(t) < Duration::from_millis(200))
            {
                stream.reserve_step = (stream.reserve_step * 2).min(most.max(4));
            } else if stream
                .reserved_at
                .is_some_and(|t| now.duration_since(t) > Duration::from_secs(2))
            {
                stream.reserve_step = (stream.reserve_step / 2).max(4);
            }
            stream.reserved_at = Some(now);
            stream.reserved = stream.reserved.max(top + 1 + stream.reserve_step);
            self.dirty.insert(ksid);
            // Written now, ahead of need (not at the ledger's next period).
            self.urgent = true;
        }
        if top >= stream.durable {
            self.urgent = true;
            return false;
        }
        true
    }

    /// The first sync after a reset was applied: once the records the
    /// ledger writer takes next are durable, the reset is over.
    pub(super) fn reset_synced(&mut self) {
        self.reset_synced = true;
    }

    /// The records to write (`record` makes one of a KSID, `None` when the
    /// stream is gone) and the KSIDs to delete.
    fn take(
        &mut self,
        record: impl Fn(Uuid) -> Option<StreamRecord>,
    ) -> (Vec<StreamRecord>, Vec<Uuid>) {
        // Whatever is asked for after this waits for the next write.
        self.urgent = false;
        self.reset_in_records |= std::mem::take(&mut self.reset_synced);
        let records = self.dirty.drain().filter_map(record).collect();
        (records, std::mem::take(&mut self.removed))
    }
}

impl Node {
    /// Streams changed since the last call, as ledger records, and the
    /// KSIDs forgotten.
    pub(crate) fn take_records(&mut self) -> (Vec<StreamRecord>, Vec<Uuid>) {
        let streams = &self.streams;
        self.reservations
            .take(|k| streams.get(&k).map(|s| s.record(k)))
    }

    /// True when a stream waits for its ledger reservation (the ledger
    /// should write now rather than at its next period).
    pub(crate) fn wants_commit(&self) -> bool {
        self.reservations.urgent
    }

    /// The ledger could not write these streams: they are taken again next
    /// time.
    pub(crate) fn redirty(&mut self, ksids: &[Uuid], removed: Vec<Uuid>) {
        self.reservations.dirty.extend(ksids.iter().copied());
        self.reservations.removed.extend(removed);
    }

    /// The ledger durably holds these records.
    pub(crate) fn committed(&mut self, records: &[StreamRecord]) {
        for r in records {
            if let Some(s) = self.streams.get_mut(&r.ksid) {
                s.durable = s.durable.max(r.reserved);
                if self.role == Role::Follower && s.issuer.is_some() {
                    self.ack_recorded(&r.ksid);
                }
            }
        }
    }

    /// True once (after a reset) when the first sync's outcome is durable:
    /// the ledger's reset mark can go.
    pub(crate) fn reset_committed(&mut self) -> bool {
        std::mem::take(&mut self.reservations.reset_in_records)
    }
}
