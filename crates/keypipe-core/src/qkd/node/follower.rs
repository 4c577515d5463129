//! The follower's half of a node: it takes the leader's leases, matching
//! them with blocks of its own ring (same ids, in order), checks each
//! block's bytes against the lease's check value before any of them can
//! reach its consumer, asks for blocks its consumer needs, and grants the
//! leader credit (flow control).

use std::time::Instant;

use uuid::Uuid;

use super::Node;
use crate::qkd::link::{LinkMsg, Role};
use crate::qkd::rangeset::RangeSet;
use crate::qkd::stream::Side;

impl Node {
    /// A lease from the leader: stream block `sb` of `ksid` is device block
    /// `block_id`.
    pub(super) fn leased(&mut self, now: Instant, ksid: Uuid, sb: u64, block_id: u64, check: u64) {
        let Some(stream) = self.streams.get_mut(&ksid) else {
            // Unknown here: its block is discarded when it comes out.
            return;
        };
        if stream.assigned.contains(sb) {
            return; // a lease sent again: already taken care of
        }
        if sb >= stream.credit {
            // The leader assigns only below the credit this node granted.
            tracing::warn!(%ksid, stream_block = sb, "lease beyond the credit granted ignored");
            return;
        }
        stream.assigned.insert(sb);
        stream.requested.remove(&sb);
        if stream.issuer.is_some() {
            // A directed stream's record keeps how far it was leased.
            self.reservations.touch(ksid);
        }
        let available =
            block_id >= self.next_position || self.spare.as_ref().is_some_and(|b| b.id == block_id);
        if !available {
            // This node read past that block already: it can never hold it.
            self.lease_gone(ksid, sb);
            return;
        }
        stream.pending.insert(sb);
        self.pending.insert(block_id, (ksid, sb, check));
        self.pump_leases(now);
    }

    /// Matches received leases with blocks from the ring, which come in the
    /// same id order. Blocks the leader skipped are discarded; a lease
    /// whose block this node no longer has is lost (on both nodes); a block
    /// whose bytes do not match its lease's check value stops the stream.
    pub(super) fn pump_leases(&mut self, now: Instant) {
        while let Some((&id, &(ksid, sb, check))) = self.pending.first_key_value() {
            let Some(block) = self.spare.take().or_else(|| self.ring.pop()) else {
                return;
            };
            if block.id < id {
                self.next_position = self.next_position.max(block.id + 1);
                self.counters.consumed(1);
                continue; // dropped: zeroized
            }
            if block.id > id {
                // The leased block is gone from this node's stream.
                self.next_position = self.next_position.max(block.id);
                self.spare = Some(block);
                self.pending.remove(&id);
                tracing::warn!(%ksid, block_id = id, "leased block missing on this node; its chunks are dropped on both nodes");
                self.lease_gone(ksid, sb);
                continue;
            }
            self.pending.remove(&id);
            self.next_position = self.next_position.max(id + 1);
            self.counters.consumed(1);
            let matches = self.keys.check(&ksid, sb, id, block.digest) == check;
            let Some(stream) = self.streams.get_mut(&ksid) else {
                self.counters.expired(1);
                continue;
            };
            stream.pending.remove(&sb);
            if !matches {
                drop(block); // zeroized, never delivered
                tracing::error!(
                    %ksid,
                    stream_block = sb,
                    block_id = id,
                    "key confirmation failed: this node's device block differs from the leader's; \
                     the stream is stopped on both nodes (are both devices fed the same key from \
                     the same position?)"
                );
                self.outbox.push(LinkMsg::Mismatch {
                    ksid,
                    stream_block: sb,
                });
                self.counters.mismatch();
                self.fail(ksid);
                continue;
            }
            if stream.local == Side::Closed || stream.failed {
                self.counters.expired(1);
                continue;
            }
            stream.hold(sb, block, check, now);
            self.held_total += 1;
            self.held_now(ksid, sb);
        }
    }

    /// Asks the leader for stream blocks `sbs` of `ksid` (those not asked
    /// yet), granting the credit they need.
    pub(super) fn request(&mut self, ksid: &Uuid, sbs: &[u64]) {
        let top = sbs.iter().copied().max().unwrap_or(0);
        self.grant_credit(*ksid, top + 1);
        let position = self.next_position;
        let Some(stream) = self.streams.get_mut(ksid) else {
            return;
        };
        for &sb in sbs {
            if stream.requested.insert(sb) {
                self.outbox.push(LinkMsg::LeaseRequest {
                    ksid: *ksid,
                    stream_block: sb,
                    position,
                });
            }
        }
    }

    /// Raises the leader's credit for `ksid` to at least `needed`, and
    /// ahead to a window past the lowest block this node still needs when
    /// its budget has room; sends it when it moved enough to matter.
    pub(super) fn grant_credit(&mut self, ksid: Uuid, needed: u64) {
        let (window, budget, block_size) = (
            self.tuning.window_blocks,
            self.tuning.budget_blocks,
            self.block_size,
        );
        let outstanding = self.held_total + self.pending.len() as u64;
        let Some(stream) = self.streams.get_mut(&ksid) else {
            return;
        };
        if !stream.allocating() {
            return;
        }
        let stream_window = stream.window(window);
        let (frontier, room) = if stream.issuer == Some(Role::Leader) {
            // Redeeming a directed stream: how much it holds counts, not
            // where (one unfetched key must not hold the stream back).
            let holding = (stream.held.len() + stream.pending.len()) as u64;
            (
                stream.assigned.end().max(stream.floor),
                stream_window.saturating_sub(holding),
            )
        } else {
            // Nothing below the leader's floor is assigned again.
            (stream.frontier(block_size).max(stream.floor), stream_window)
        };
        // Credit ahead only while the node's budget has room for this
        // stream's window beside what it holds.
        let ahead = if outstanding + stream_window <= budget {
            frontier + room
        } else {
            0
        };
        let target = needed.max(ahead);
        if target <= stream.credit {
            return;
        }
        // Coalesce small steps, unless the leader would otherwise stall.
        let starving = stream.credit <= frontier + 1 || needed > stream.credit;
        if !starving && target - stream.credit < (window / 4).max(1) {
            return;
        }
        stream.credit = target;
        self.outbox.push(LinkMsg::Credit {
            ksid,
            below: target,
        });
    }

    /// Stream block `sb` of `ksid` was leased to this node, which can never
    /// hold its device block: tells the leader and drops its chunks here.
    fn lease_gone(&mut self, ksid: Uuid, sb: u64) {
        self.outbox.push(LinkMsg::LeaseLost {
            ksid,
            stream_block: sb,
            delivered: RangeSet::default(),
        });
        let block_size = self.block_size;
        if let Some(stream) = self.streams.get_mut(&ksid) {
            stream.pending.remove(&sb);
            let (lost, released) = stream.lose_block(sb, block_size);
            self.note_lost(lost, released);
            self.reservations.touch(ksid);
        }
        // The leader may lease further now.
        self.grant_credit(ksid, 0);
    }

    /// Follower: device blocks below `position` will never come out of
    /// this node's ring; the leases waiting for them are gone.
    pub(super) fn drop_leases_below(&mut self, position: u64) {
        if self.spare.as_ref().is_some_and(|b| b.id < position) {
            self.spare = None; // zeroized
        }
        while let Some((&id, &(ksid, sb, _))) = self.pending.first_key_value() {
            if id >= position {
                break;
            }
            self.pending.remove(&id);
            self.lease_gone(ksid, sb);
        }
    }

    /// Forgets the leases of `ksid` still waiting for their block (those
    /// blocks are discarded when they come out of the ring).
    pub(super) fn drop_pending(&mut self, ksid: &Uuid) {
        self.pending.retain(|_, (k, _, _)| k != ksid);
        if let Some(s) = self.streams.get_mut(ksid) {
            s.pending.clear();
        }
    }
}
