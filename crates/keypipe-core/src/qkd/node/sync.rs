//! Reconciliation at session start: each node sends its whole view
//! (`sync_begin`, one `stream` each, `sync_end`) and applies the peer's to
//! its own.
//!
//! The rule, the same on both nodes: a chunk this node holds is kept only
//! if the peer can deliver it too — the peer delivered it already, holds
//! every block of it, or (the peer being the follower) can still take the
//! block from its device because it was never leased to it and its id is
//! not below the follower's position. Every other held chunk is lost:
//! wiped, never handed out, on both nodes. The rule only ever drops key, so
//! whatever the timing of the two syncs, no index gets two values and no
//! block is handed out twice; races only cost key.
//!
//! Streams are merged too: a stream the peer lists is created here if
//! missing (like an `Open`), and a stream the peer does not list is unknown
//! to it (its side is absent; this node announces it again if open here).

use std::collections::HashSet;
use std::time::Instant;

use uuid::Uuid;

use super::Node;
use super::lifecycle::{adopt_qos, open_msg};
use crate::qkd::link::{LinkMsg, Role, StreamState};
use crate::qkd::rangeset::RangeSet;
use crate::qkd::stream::{Side, Stream};

/// What the peer can deliver, as its sync says.
struct PeerView<'a> {
    held: &'a RangeSet,
    assigned: &'a RangeSet,
    taken: &'a RangeSet,
    /// The peer is the follower, which can still take unleased blocks with
    /// ids from here on.
    follower_position: Option<u64>,
}

impl Node {
    /// This node's whole view for the peer: sent first in each new session,
    /// and whenever the peer started one.
    pub fn begin_sync(&mut self) {
        if self.role == Role::Follower {
            // Requests of an old session may never have arrived: they are
            // asked again when needed.
            for s in self.streams.values_mut() {
                s.requested.clear();
            }
        }
        self.outbox.push(LinkMsg::SyncBegin {
            position: self.next_position,
        });
        let role = self.role;
        for (k, s) in &self.streams {
            let mut state = s.state(*k, role);
            if role == Role::Leader && s.issuer == Some(Role::Leader) {
                // A leader issuing: nothing below its next key is ever
                // wanted of the follower again (the follower's credit
                // starts from here, even if it restarted and forgot).
                state.floor = state
                    .floor
                    .max(s.next_issue / self.block_size)
                    .max(s.assigned.end());
            }
            self.outbox.push(LinkMsg::Stream(state));
        }
        self.outbox.push(LinkMsg::SyncEnd);
    }

    pub(super) fn apply_sync(&mut self, now: Instant, position: u64, states: Vec<StreamState>) {
        let ring = self.ring.capacity() as u64;
        if self.adopt {
            self.adopt_position(position);
        } else if position > self.next_position + ring {
            // The peer's device is far ahead: move this one forward.
            self.skip = Some(position);
        }
        if self.role == Role::Leader {
            // Blocks below the follower's position can never be leased.
            self.peer_position = position;
        }
        let mut listed = HashSet::with_capacity(states.len());
        let mut lost_total = (0, 0);
        for st in states {
            listed.insert(st.ksid);
            let ksid = st.ksid;
            let known = self.streams.contains_key(&ksid);
            // Closed there, unknown here: nothing to do.
            if !known
                && (st.local == Side::Closed
                    || !self.admit_announced(
                        now,
                        ksid,
                        &st.qos,
                        &st.source,
                        &st.destination,
                        st.issuer,
                    ))
            {
                continue;
            }
            let stream = self.streams.get_mut(&ksid).expect("present");
            stream.peer = st.local;
            if stream.local == Side::Absent {
                adopt_qos(stream, st.qos.clone(), &self.limits, &ksid);
            } else if stream.qos.key_chunk_size != st.qos.key_chunk_size
                || stream.issuer != st.issuer
            {
                stream.conflict = true;
            }
            match self.role {
                Role::Leader => {
                    stream.peer_taken = st.taken.clone();
                    stream.credit = st.credit;
                    // The follower was leased blocks this node forgot (an
                    // idle stream forgotten here): as after a restart,
                    // nothing below its highest one is assigned again, so
                    // no index of the stream gets another value.
                    let forgot = st
                        .assigned
                        .iter()
                        .any(|(lo, hi)| !stream.assigned.covers(lo, hi - 1));
                    if forgot {
                        let top = st.assigned.end();
                        stream.assigned.insert_range(0, top);
                        stream.floor = stream.floor.max(top);
                        stream.reserved = stream.reserved.max(top);
                        self.reservations.touch(ksid);
                    }
                    self.requests.remove(&ksid);
                }
                Role::Follower => {
                    stream.floor = st.floor;
                    stream.peer_held = st.held.clone();
                }
            }
            let view = PeerView {
                held: &st.held,
                assigned: &st.assigned,
                taken: &st.taken,
                follower_position: (self.role == Role::Leader).then_some(position),
            };
            let lost = self.reconcile(&ksid, &view);
            lost_total.0 += lost.0;
            lost_total.1 += lost.1;
            if self.role == Role::Leader {
                self.peer_holds_only(&ksid, &st.held, &st.confirmed);
            }
            self.join_directed(ksid);
            if st.failed {
                self.fail(ksid);
            }
            let directed = self.streams.get(&ksid).is_some_and(|s| s.issuer.is_some());
            if !known && self.was_reset && self.role == Role::Leader && !directed {
                // This node's ledger was reset: it forgot what it handed
                // out of this stream, including leases the follower never
                // got. Nothing more of it is handed out, on either node.
                tracing::warn!(%ksid, "stream unknown to this node's reset key ledger: stopped for good (its KMSes open a new one)");
                self.fail(ksid);
            }
        }
        if self.was_reset {
            self.was_reset = false;
            self.reservations.reset_synced();
        }
        let empty = RangeSet::default();
        let unlisted: Vec<Uuid> = self
            .streams
            .keys()
            .filter(|k| !listed.contains(k))
            .copied()
            .collect();
        for ksid in unlisted {
            let stream = self.streams.get_mut(&ksid).expect("present");
            stream.peer = Side::Absent;
            if stream.local == Side::Open {
                let msg = open_msg(ksid, stream);
                self.outbox.push(msg);
            }
            self.requests.remove(&ksid);
            let view = PeerView {
                held: &empty,
                assigned: &empty,
                taken: &empty,
                follower_position: (self.role == Role::Leader).then_some(position),
            };
            let lost = self.reconcile(&ksid, &view);
            lost_total.0 += lost.0;
            lost_total.1 += lost.1;
        }
        self.counters.lost(lost_total.0);
        if lost_total.0 > 0 {
            tracing::warn!(
                chunks = lost_total.0,
                "sync with the peer node: chunks only this node still had are dropped on both"
            );
        }
        let ksids: Vec<Uuid> = self.streams.keys().copied().collect();
        for ksid in ksids {
            self.reservations.touch(ksid);
            if self.role == Role::Follower {
                self.grant_credit(ksid, 0);
            }
            self.forget_if_finished(&ksid);
        }
    }

    /// Drops what of `ksid` this node holds (or awaits) that the peer
    /// cannot deliver; returns (chunks lost, blocks released).
    fn reconcile(&mut self, ksid: &Uuid, peer: &PeerView<'_>) -> (u64, u64) {
        let block_size = self.block_size;
        let role = self.role;
        let Some(stream) = self.streams.get_mut(ksid) else {
            return (0, 0);
        };
        if super::directed::redeems(stream, role) {
            // A redeemer keeps all it holds: the issuer may have handed
            // any of it out (see `directed`).
            return (0, 0);
        }
        // The peer can deliver stream block `b` (a whole one).
        let peer_has = |stream: &Stream, b: u64| {
            peer.held.contains(b)
                || peer.follower_position.is_some_and(|position| {
                    !peer.assigned.contains(b)
                        && stream.held.get(&b).is_some_and(|h| h.block_id >= position)
                })
        };
        let mine: Vec<u64> = stream
            .held
            .keys()
            .chain(stream.pending.iter())
            .copied()
            .collect();
        let (mut lost, mut released) = (0, 0);
        let mut cancelled = Vec::new();
        for sb in mine {
            let (lo, hi) = stream.chunks_of(sb, block_size);
            let mut kept_any = false;
            for c in lo..=hi {
                if stream.done.contains(c) {
                    continue;
                }
                let keep = peer.taken.contains(c)
                    || stream.blocks_of(c, block_size).all(|b| peer_has(stream, b));
                if keep {
                    kept_any = true;
                } else if let Some(r) = stream.lose_chunk(c, block_size) {
                    lost += 1;
                    released += r;
                }
            }
            if !kept_any && stream.pending.remove(&sb) {
                cancelled.push(sb);
            }
        }
        if !cancelled.is_empty() {
            self.pending
                .retain(|_, (k, sb, _)| k != ksid || !cancelled.contains(sb));
        }
        self.held_total -= released;
        self.counters.expired(released);
        (lost, released)
    }
}
