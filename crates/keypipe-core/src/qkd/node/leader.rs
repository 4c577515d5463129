//! The leader's half of a node: it alone assigns device blocks to stream
//! blocks, within the follower's credit, its own window and budget, and
//! only below what the ledger has durably reserved for the stream; and it
//! answers every lease request.

use std::collections::BTreeSet;
use std::time::Instant;

use uuid::Uuid;

use super::Node;
use crate::qkd::link::LinkMsg;
use crate::qkd::rangeset::RangeSet;
use crate::qkd::stream::Side;

/// What the leader can do about one stream block now.
enum Assignable {
    /// Assign it.
    Yes,
    /// Not now (credit, window, budget, reservation or ring).
    Wait,
    /// Never: the stream no longer allocates.
    Never,
}

impl Node {
    /// Pops ring blocks into `staged` until `n` usable ones are there,
    /// discarding those the follower can no longer take; false when the
    /// ring runs dry first.
    pub(super) fn gather(&mut self, n: usize) -> bool {
        while self.staged.len() < n {
            let Some(block) = self.ring.pop() else {
                return false;
            };
            // Below this node's position: adopted past it (a new ledger).
            let passed = block.id < self.next_position;
            self.next_position = self.next_position.max(block.id + 1);
            if passed || block.id < self.peer_position {
                self.counters.consumed(1);
                continue; // dropped: zeroized
            }
            self.staged.push_back(block);
        }
        true
    }

    /// Whether stream blocks `sbs` of `ksid` can be assigned now; asks the
    /// ledger for more reservation as a side effect.
    fn assignable(&mut self, ksid: &Uuid, sbs: &[u64], now: Instant) -> Assignable {
        let (window, reserve, budget) = (
            self.tuning.window_blocks,
            self.tuning.reserve_blocks,
            self.tuning.budget_blocks,
        );
        let Some(stream) = self.streams.get_mut(ksid) else {
            return Assignable::Never;
        };
        if !stream.allocating() {
            return Assignable::Never;
        }
        let top = sbs.iter().copied().max().unwrap_or(0);
        if !self.reservations.cover(*ksid, stream, top, now, reserve) {
            return Assignable::Wait;
        }
        let n = sbs.len() as u64;
        if top >= stream.credit
            || stream.held.len() as u64 + n > stream.window(window)
            || self.held_total + n > budget
        {
            return Assignable::Wait;
        }
        if !self.gather(sbs.len()) {
            return Assignable::Wait;
        }
        Assignable::Yes
    }

    /// Assigns stream blocks `sbs` of `ksid` (all or none) and tells the
    /// follower; false when they cannot all be assigned now.
    pub(super) fn assign(&mut self, ksid: &Uuid, sbs: &[u64], now: Instant) -> bool {
        if !matches!(self.assignable(ksid, sbs, now), Assignable::Yes) {
            return false;
        }
        let stream = self.streams.get_mut(ksid).expect("assignable");
        for &sb in sbs {
            debug_assert!(
                !stream.assigned.contains(sb),
                "a stream block is assigned once"
            );
            let block = self.staged.pop_front().expect("gathered");
            let check = self.keys.check(ksid, sb, block.id, block.digest);
            self.outbox.push(LinkMsg::Lease {
                ksid: *ksid,
                stream_block: sb,
                block_id: block.id,
                check,
            });
            stream.assigned.insert(sb);
            stream.hold(sb, block, check, now);
            self.held_total += 1;
            self.counters.consumed(1);
        }
        true
    }

    /// Serves the follower's waiting lease requests, stream by stream, in
    /// stream-block order; a stream that must wait holds up no other.
    pub(super) fn serve_requests(&mut self, now: Instant) {
        let ksids: Vec<Uuid> = self.requests.keys().copied().collect();
        for ksid in ksids {
            while let Some(sb) = self.requests.get(&ksid).and_then(|r| r.first().copied()) {
                let leased = self
                    .streams
                    .get(&ksid)
                    .is_some_and(|s| s.assigned.contains(sb));
                if leased {
                    // Assigned meanwhile (for this node's own consumer):
                    // that lease is on its way to the follower already.
                    if let Some(r) = self.requests.get_mut(&ksid) {
                        r.remove(&sb);
                    }
                    continue;
                }
                match self.assignable(&ksid, &[sb], now) {
                    Assignable::Yes => {
                        self.assign(&ksid, &[sb], now);
                    }
                    Assignable::Wait => break,
                    Assignable::Never => self.outbox.push(LinkMsg::LeaseRefused {
                        ksid,
                        stream_block: sb,
                    }),
                }
                if let Some(r) = self.requests.get_mut(&ksid) {
                    r.remove(&sb);
                }
            }
            if self.requests.get(&ksid).is_some_and(|r| r.is_empty()) {
                self.requests.remove(&ksid);
            }
        }
    }

    /// The follower asks for `sb` of `ksid`, and can still take device
    /// blocks from `position` on. Always answered: a lease (new, or again
    /// when the follower can still take it), lost, or refused.
    pub(super) fn lease_requested(&mut self, now: Instant, ksid: Uuid, sb: u64, position: u64) {
        self.peer_position = self.peer_position.max(position);
        let block_size = self.block_size;
        let Some(stream) = self.streams.get_mut(&ksid) else {
            self.outbox.push(LinkMsg::LeaseRefused {
                ksid,
                stream_block: sb,
            });
            return;
        };
        if stream.assigned.contains(sb) {
            match stream.held.get(&sb) {
                Some(h) if h.block_id >= position => {
                    // The lease went astray (a session ended): again.
                    self.outbox.push(LinkMsg::Lease {
                        ksid,
                        stream_block: sb,
                        block_id: h.block_id,
                        check: h.check,
                    });
                }
                _ if super::directed::redeems(stream, self.role) => {
                    // A redeemer keeps its copy (the follower issuing may
                    // have handed it out before it restarted); the
                    // follower takes nothing more of the block.
                    self.outbox.push(LinkMsg::LeaseLost {
                        ksid,
                        stream_block: sb,
                        delivered: RangeSet::default(),
                    });
                }
                _ => {
                    // Not again from this node: either its chunks went to
                    // this node's consumer (the follower may deliver those,
                    // if its lease is still on the way), or the follower can
                    // never take it; the rest is dropped on both, except
                    // chunks the follower already delivered.
                    let (lo, hi) = stream.chunks_of(sb, block_size);
                    let (mut lost, mut released) = (0, 0);
                    for c in lo..=hi {
                        if !stream.peer_taken.contains(c)
                            && let Some(r) = stream.lose_chunk(c, block_size)
                        {
                            lost += 1;
                            released += r;
                        }
                    }
                    let delivered = taken_within(&stream.taken, lo, hi);
                    self.note_lost(lost, released);
                    self.reservations.touch(ksid);
                    self.outbox.push(LinkMsg::LeaseLost {
                        ksid,
                        stream_block: sb,
                        delivered,
                    });
                }
            }
            return;
        }
        if !stream.allocating() || stream.local == Side::Closed {
            self.outbox.push(LinkMsg::LeaseRefused {
                ksid,
                stream_block: sb,
            });
            return;
        }
        // A follower asks only below the credit it granted (its Credit
        // goes first), for a window at a time: anything else is ignored,
        // so a broken peer cannot grow this node's request table.
        let window = self.tuning.window_blocks;
        let waiting = self.requests.get(&ksid).map_or(0, BTreeSet::len) as u64;
        if sb >= stream.credit.saturating_add(window) || waiting >= 4 * window {
            tracing::warn!(%ksid, stream_block = sb, "lease request beyond the follower's credit ignored");
            return;
        }
        self.requests.entry(ksid).or_default().insert(sb);
        self.serve_requests(now);
    }

    /// The other node has no undelivered copy of stream block `sb` of
    /// `ksid`: of its chunks, only those it `delivered` may still be
    /// delivered here.
    pub(super) fn block_lost(&mut self, ksid: Uuid, sb: u64, delivered: &RangeSet) {
        let block_size = self.block_size;
        let Some(stream) = self.streams.get_mut(&ksid) else {
            return;
        };
        stream.requested.remove(&sb);
        if !stream.pending.contains(&sb) {
            stream.assigned.insert(sb);
        }
        let (lo, hi) = stream.chunks_of(sb, block_size);
        let (mut lost, mut released) = (0, 0);
        for c in lo..=hi {
            if !delivered.contains(c)
                && let Some(r) = stream.lose_chunk(c, block_size)
            {
                lost += 1;
                released += r;
            }
        }
        if !stream.held.contains_key(&sb) && !stream.pending.contains(&sb) {
            // Nothing of it will ever be here: the chunks the other node
            // delivered cannot be delivered here either.
            for c in lo..=hi {
                if let Some(r) = stream.lose_chunk(c, block_size) {
                    lost += 1;
                    released += r;
                }
            }
        }
        self.note_lost(lost, released);
        self.reservations.touch(ksid);
        if lost > 0 {
            tracing::warn!(%ksid, stream_block = sb, chunks = lost, "a block of this stream is not on both nodes: its undelivered chunks are dropped on both");
        }
    }
}

/// The chunks of `lo..=hi` in `taken`.
pub(super) fn taken_within(taken: &RangeSet, lo: u64, hi: u64) -> RangeSet {
    let mut out = RangeSet::default();
    for (s, e) in taken.iter() {
        let (a, b) = (s.max(lo), e.min(hi + 1));
        if a < b {
            out.insert_range(a, b);
        }
    }
    out
}
