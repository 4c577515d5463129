//! One key stream as seen by one node: its QoS, who has opened it, the
//! device blocks it holds on this node, and which chunks this node has
//! already handed out or lost.
//!
//! Geometry: the stream's reserved key is the sequence of its *stream
//! blocks* (each one device block, `block_size` bytes). Chunk `c` (an
//! absolute chunk number, see [`Stream::absolute`]) is the `key_chunk_size`
//! bytes at offset `c * key_chunk_size` of that key; wire index = `c mod
//! 2^32`. Stream blocks are assigned sparsely, on demand, so any access
//! order works.
//!
//! Every chunk is handed out at most once (`taken`), or never (`lost`:
//! expired, dropped because the peer node cannot deliver it, or below a
//! restart): `done` is the union of both.
//!
//! This file is long because it is one concept: a stream's state and the
//! geometry mapping its chunks onto held blocks, which every operation
//! here (take, lose, expire, settle) must keep consistent together.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Qos;
use super::ledger::StreamRecord;
use super::link::{Role, StreamState};
use super::rangeset::RangeSet;
use crate::key::{DeviceBlock, KeyBlock, Stamp};

/// Most runs kept in a chunk set; beyond, the smallest gaps are filled
/// (their chunks count as done: never handed out, the safe direction).
const MAX_RUNS: usize = 4096;

/// Blocks a directed stream keeps supplied ahead at least (see `ahead`).
pub(crate) const MIN_AHEAD: u64 = 4;

/// Blocks one directed stream may hold on a node whose window is
/// `window`: half of it, at least 4.
pub fn directed_window(window: u64) -> u64 {
    (window / 2).max(4)
}

/// Whether one side (this node's application, or the peer's) has the
/// stream open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Never opened.
    Absent,
    /// Opened and not closed.
    Open,
    /// Closed.
    Closed,
}

/// A device block this node holds for a stream.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) key: KeyBlock,
    pub(crate) born: Stamp,
    pub(crate) expires: Instant,
    pub(crate) block_id: u64,
    /// The lease's check value (the block's bytes are wiped as chunks go).
    pub(crate) check: u64,
}

/// Per-node state of one stream.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) qos: Qos,
    pub(crate) source: String,
    pub(crate) destination: String,
    /// This node created the KSID.
    pub(crate) created_here: bool,
    pub(crate) local: Side,
    pub(crate) peer: Side,
    /// Blocks held on this node, by stream block number.
    pub(crate) held: BTreeMap<u64, Held>,
    /// Leader: stream blocks ever assigned (after a restart, everything
    /// below the floor counts). Follower: stream blocks ever leased to it.
    pub(crate) assigned: RangeSet,
    /// Chunks handed out on this node.
    pub(crate) taken: RangeSet,
    /// Chunks handed out or lost.
    pub(crate) done: RangeSet,
    /// Chunks the consumer confirmed (pushed and acknowledged, or handed to
    /// a caller): what the ledger records.
    pub(crate) delivered: RangeSet,
    /// Leader: no stream block below this is assigned (it was reserved
    /// before a restart). Follower: the leader's floor at the last sync.
    pub(crate) floor: u64,
    /// Follower: the stream blocks the leader held at the last sync (it
    /// may lease them again below its floor).
    pub(crate) peer_held: RangeSet,
    /// Leader: the chunks the follower had delivered at the last sync.
    pub(crate) peer_taken: RangeSet,
    /// Leader: stream blocks below this are reserved or being reserved in
    /// the ledger.
    pub(crate) reserved: u64,
    /// Leader: stream blocks below this are durably reserved.
    pub(crate) durable: u64,
    /// Leader: blocks the next reservation adds (grows for a fast stream,
    /// so the ledger writes about five times a second at most).
    pub(crate) reserve_step: u64,
    /// Leader: when the last reservation was asked for.
    pub(crate) reserved_at: Option<Instant>,
    /// Follower: stream blocks asked of the leader and not answered yet.
    pub(crate) requested: BTreeSet<u64>,
    /// Follower: stream blocks leased whose block has not come out of the
    /// ring yet.
    pub(crate) pending: BTreeSet<u64>,
    /// Leased stream blocks must lie below this (leader: as granted by the
    /// follower; follower: as granted so far).
    pub(crate) credit: u64,
    /// Follower: the leader refused to assign more blocks.
    pub(crate) refused: bool,
    /// Both sides opened the KSID independently with different chunk sizes.
    pub(crate) conflict: bool,
    /// The peer's QoS is outside this node's limits.
    pub(crate) qos_refused: bool,
    /// Key confirmation failed: stopped for good.
    pub(crate) failed: bool,
    /// Absolute number of the last chunk asked for on this node.
    pub(crate) cursor: u64,
    /// The consumer is pushed to.
    pub(crate) pushing: bool,
    /// Last time this node's side did anything with the stream.
    pub(crate) last_active: Instant,
    /// Earliest `expires` among held blocks (none: nothing held).
    next_expiry: Option<Instant>,
    /// A directed stream: the role of the node that issues its key (see
    /// `qkd::node::directed`); `None` for an ETSI 004 stream.
    pub(crate) issuer: Option<Role>,
    /// Directed, leader issuing: stream blocks the follower acknowledged
    /// holding (key is issued only from those).
    pub(crate) mirrored: RangeSet,
    /// Directed, issuing node: the next chunk to issue.
    pub(crate) next_issue: u64,
    /// Directed, issuing node: blocks kept supplied ahead of `next_issue`
    /// (grows while requests find no key ready, shrinks when idle).
    pub(crate) ahead: u64,
    /// Directed, a follower redeeming: held blocks whose `Held` waits for
    /// the ledger to record them as leased.
    pub(crate) unacked: BTreeSet<u64>,
}

impl Stream {
    pub(crate) fn new(
        qos: Qos,
        source: &str,
        destination: &str,
        created_here: bool,
        now: Instant,
    ) -> Self {
        Self {
            qos,
            source: source.into(),
            destination: destination.into(),
            created_here,
            local: Side::Absent,
            peer: Side::Absent,
            held: BTreeMap::new(),
            assigned: RangeSet::default(),
            taken: RangeSet::default(),
            done: RangeSet::default(),
            delivered: RangeSet::default(),
            floor: 0,
            peer_held: RangeSet::default(),
            peer_taken: RangeSet::default(),
            reserved: 0,
            durable: 0,
            reserve_step: 4,
            reserved_at: None,
            requested: BTreeSet::new(),
            pending: BTreeSet::new(),
            credit: 0,
            refused: false,
            conflict: false,
            qos_refused: false,
            failed: false,
            cursor: 0,
            pushing: false,
            last_active: now,
            next_expiry: None,
            issuer: None,
            mirrored: RangeSet::default(),
            next_issue: 0,
            ahead: MIN_AHEAD,
            unacked: BTreeSet::new(),
        }
    }

    /// The stream as the ledger recorded it before a restart: nothing is
    /// held, only what was confirmed counts as handed out, and a leader
    /// never assigns below what it had reserved.
    pub(crate) fn restore(r: &StreamRecord, role: Role, block_size: u64, now: Instant) -> Self {
        let mut s = Stream::new(
            r.qos.clone(),
            &r.source,
            &r.destination,
            r.created_here,
            now,
        );
        s.local = r.local;
        s.peer = r.peer;
        s.taken = r.delivered.clone();
        s.done = r.delivered.clone();
        s.delivered = r.delivered.clone();
        s.cursor = r.cursor;
        s.pushing = r.pushing;
        s.failed = r.failed;
        s.issuer = r.issuer;
        if role == Role::Leader {
            s.floor = r.reserved;
            s.reserved = r.reserved;
            s.durable = r.reserved;
            s.assigned.insert_range(0, r.reserved);
        } else if r.issuer.is_some() {
            // A follower on a directed stream: everything it may have been
            // leased counts as gone (it may have issued from it, or told
            // the leader it holds it), and its sync tells a leader whose
            // ledger was reset.
            s.assigned.insert_range(0, r.reserved);
            s.floor = r.reserved;
            s.reserved = r.reserved;
            s.durable = r.reserved;
        }
        // An issuer resumes after what it recorded, and a leader above
        // everything it may have assigned before the restart.
        if !s.taken.is_empty() {
            s.next_issue = s.cursor + 1;
        }
        s.next_issue = s.next_issue.max(s.floor * block_size / s.chunk_size());
        s
    }

    /// What the ledger keeps of this stream.
    pub(crate) fn record(&self, ksid: Uuid) -> StreamRecord {
        StreamRecord {
            ksid,
            qos: self.qos.clone(),
            source: self.source.clone(),
            destination: self.destination.clone(),
            created_here: self.created_here,
            local: self.local,
            peer: self.peer,
            // A follower keeps, for a directed stream, how far it was ever
            // leased (see `restore`).
            reserved: match self.issuer {
                Some(_) => self.reserved.max(self.assigned.end()),
                None => self.reserved,
            },
            cursor: self.cursor,
            delivered: self.delivered.clone(),
            pushing: self.pushing,
            failed: self.failed,
            issuer: self.issuer,
        }
    }

    /// This stream as told to the peer in a sync.
    pub(crate) fn state(&self, ksid: Uuid, role: Role) -> StreamState {
        let mut held = RangeSet::default();
        for sb in self.held.keys().chain(self.pending.iter()) {
            held.insert(*sb);
        }
        let mut taken = self.taken.clone();
        taken.cap_runs(256);
        let (assigned, floor, credit) = match role {
            Role::Leader => (RangeSet::default(), self.floor, 0),
            Role::Follower => {
                let mut a = self.assigned.clone();
                a.cap_runs(256);
                (a, 0, self.credit)
            }
        };
        StreamState {
            ksid,
            qos: self.qos.clone(),
            source: self.source.clone(),
            destination: self.destination.clone(),
            created_here: self.created_here,
            local: self.local,
            held,
            assigned,
            taken,
            floor,
            credit,
            failed: self.failed,
            issuer: self.issuer,
            confirmed: match (role, self.issuer) {
                (Role::Follower, Some(_)) => {
                    let mut confirmed = RangeSet::default();
                    for sb in self.held.keys() {
                        confirmed.insert(*sb);
                    }
                    confirmed
                }
                _ => RangeSet::default(),
            },
        }
    }

    /// True while new blocks may be assigned (neither side closed).
    pub(crate) fn allocating(&self) -> bool {
        self.local != Side::Closed
            && self.peer != Side::Closed
            && !self.refused
            && !self.conflict
            && !self.failed
            && !self.qos_refused
    }

    /// True once neither side will ask for key again.
    pub(crate) fn finished(&self) -> bool {
        let done = |s: Side| s != Side::Open;
        done(self.local)
            && done(self.peer)
            && (self.local == Side::Closed || self.peer == Side::Closed)
    }

    /// Blocks this stream may hold on a node: `window`, or half of
    /// it for a directed stream (many pairs share a node's budget, and
    /// their slaves may leave key unfetched).
    pub(crate) fn window(&self, window: u64) -> u64 {
        match self.issuer {
            Some(_) => directed_window(window),
            None => window,
        }
    }

    pub(crate) fn chunk_size(&self) -> u64 {
        u64::from(self.qos.key_chunk_size.max(1))
    }

    /// The absolute chunk a wire `index` names: the one congruent to it mod
    /// 2^32 nearest to this node's cursor (so indexes wrap at `u32::MAX`).
    /// Both nodes agree while their cursors are less than 2^31 chunks apart.
    pub(crate) fn absolute(&self, index: u32) -> u64 {
        let delta = i64::from(index.wrapping_sub(self.cursor as u32) as i32);
        let a = self.cursor as i64 + delta;
        if a < 0 {
            (a + (1i64 << 32)) as u64
        } else {
            a as u64
        }
    }

    /// Stream blocks chunk `c` spans.
    pub(crate) fn blocks_of(&self, c: u64, block_size: u64) -> RangeInclusive<u64> {
        let start = c * self.chunk_size();
        start / block_size..=(start + self.chunk_size() - 1) / block_size
    }

    /// Chunks overlapping stream block `sb`, first and last.
    pub(crate) fn chunks_of(&self, sb: u64, block_size: u64) -> (u64, u64) {
        (
            sb * block_size / self.chunk_size(),
            ((sb + 1) * block_size - 1) / self.chunk_size(),
        )
    }

    /// Copies chunk `c` into `out`, wipes its bytes from the held blocks,
    /// records it as taken, and releases (zeroizes) blocks whose chunks are
    /// all done. Every block it spans must be held. Returns the blocks
    /// released.
    pub(crate) fn take_chunk(
        &mut self,
        c: u64,
        block_size: u64,
        out: &mut [std::mem::MaybeUninit<u8>],
    ) -> u64 {
        let size = self.chunk_size();
        let mut offset = c * size;
        let mut written = 0usize;
        while written < size as usize {
            let sb = offset / block_size;
            let in_block = (offset % block_size) as usize;
            let len = (block_size as usize - in_block).min(size as usize - written);
            let held = self
                .held
                .get_mut(&sb)
                .expect("caller checked the block is held");
            crate::key::write_bytes(
                &mut out[written..written + len],
                &held.key.bytes()[in_block..in_block + len],
            );
            held.key.wipe_range(in_block..in_block + len);
            written += len;
            offset += len as u64;
        }
        self.taken.insert(c);
        self.done.insert(c);
        self.cap_sets();
        self.cursor = c;
        self.blocks_of(c, block_size)
            .map(|sb| u64::from(self.settle(sb, block_size)))
            .sum()
    }

    /// Copies the `out.len()` one-byte chunks from `first` on (a directed
    /// stream's key) into `out`, wipes them from the held blocks, records
    /// them as taken (and as delivered when `record`), and releases the
    /// blocks whose chunks are all done. Every block the span touches must
    /// be held. Returns the blocks released.
    pub(crate) fn take_span(
        &mut self,
        first: u64,
        block_size: u64,
        out: &mut [u8],
        record: bool,
    ) -> u64 {
        debug_assert_eq!(self.chunk_size(), 1, "spans are of one-byte chunks");
        let len = out.len() as u64;
        if len == 0 {
            return 0;
        }
        let mut offset = first;
        let mut written = 0usize;
        while written < out.len() {
            let sb = offset / block_size;
            let in_block = (offset % block_size) as usize;
            let n = (block_size as usize - in_block).min(out.len() - written);
            let held = self
                .held
                .get_mut(&sb)
                .expect("caller checked the block is held");
            out[written..written + n].copy_from_slice(&held.key.bytes()[in_block..in_block + n]);
            held.key.wipe_range(in_block..in_block + n);
            written += n;
            offset += n as u64;
        }
        self.taken.insert_range(first, first + len);
        self.done.insert_range(first, first + len);
        if record {
            self.delivered.insert_range(first, first + len);
        }
        self.cap_sets();
        self.cursor = self.cursor.max(first + len - 1);
        (first / block_size..=(first + len - 1) / block_size)
            .map(|sb| u64::from(self.settle(sb, block_size)))
            .sum()
    }

    /// Marks chunk `c` lost (never handed out here), wiping what this node
    /// holds of it. Returns the blocks released, or `None` when the chunk
    /// was done already.
    pub(crate) fn lose_chunk(&mut self, c: u64, block_size: u64) -> Option<u64> {
        if self.done.contains(c) {
            return None;
        }
        self.done.insert(c);
        self.cap_sets();
        let size = self.chunk_size();
        let (start, end) = (c * size, (c + 1) * size);
        let mut released = 0;
        for sb in self.blocks_of(c, block_size) {
            if let Some(held) = self.held.get_mut(&sb) {
                let lo = start.max(sb * block_size) - sb * block_size;
                let hi = end.min((sb + 1) * block_size) - sb * block_size;
                held.key.wipe_range(lo as usize..hi as usize);
            }
            released += u64::from(self.settle(sb, block_size));
        }
        Some(released)
    }

    /// Marks every chunk of stream block `sb` not yet done as lost; returns
    /// (chunks lost, blocks released).
    pub(crate) fn lose_block(&mut self, sb: u64, block_size: u64) -> (u64, u64) {
        let (lo, hi) = self.chunks_of(sb, block_size);
        if self.chunk_size() == 1 {
            // One byte per chunk (a directed stream): whole ranges at once.
            let lost = (hi + 1 - lo) - self.done.count_within(lo, hi + 1);
            self.done.insert_range(lo, hi + 1);
            self.cap_sets();
            // Dropping the block zeroizes it.
            let released = u64::from(self.held.remove(&sb).is_some());
            return (lost, released);
        }
        let (mut lost, mut released) = (0, 0);
        for c in lo..=hi {
            if let Some(r) = self.lose_chunk(c, block_size) {
                lost += 1;
                released += r;
            }
        }
        // A block may stay held only for chunks done elsewhere: release it.
        if self.held.remove(&sb).is_some() {
            released += 1;
        }
        (lost, released)
    }

    /// Releases (zeroizes) block `sb` when every chunk overlapping it is
    /// done; true when it was released.
    pub(crate) fn settle(&mut self, sb: u64, block_size: u64) -> bool {
        let (lo, hi) = self.chunks_of(sb, block_size);
        self.done.covers(lo, hi) && self.held.remove(&sb).is_some()
    }

    /// Holds `block` as stream block `sb` until the stream's TTL ends.
    pub(crate) fn hold(&mut self, sb: u64, block: DeviceBlock, check: u64, now: Instant) {
        let expires = now + Duration::from_secs(u64::from(self.qos.ttl.max(1)));
        self.next_expiry = Some(self.next_expiry.map_or(expires, |t| t.min(expires)));
        self.held.insert(
            sb,
            Held {
                key: block.key,
                born: block.born,
                expires,
                block_id: block.id,
                check,
            },
        );
    }

    /// Drops held blocks whose TTL ended, their undelivered chunks lost;
    /// returns (chunks lost, blocks released). Costs nothing until the
    /// earliest expiry is due.
    pub(crate) fn expire(&mut self, now: Instant, block_size: u64) -> (u64, u64) {
        if self.next_expiry.is_none_or(|t| now < t) {
            return (0, 0);
        }
        let due: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.expires <= now)
            .map(|(sb, _)| *sb)
            .collect();
        let (mut lost, mut released) = (0, 0);
        for sb in due {
            let (l, r) = self.lose_block(sb, block_size);
            lost += l;
            released += r;
        }
        self.next_expiry = self.held.values().map(|h| h.expires).min();
        (lost, released)
    }

    /// The lowest stream block this node still needs: the lowest one held,
    /// awaited or asked for, else the one after the last chunk asked for.
    pub(crate) fn frontier(&self, block_size: u64) -> u64 {
        let waiting = [
            self.held.keys().next(),
            self.pending.iter().next(),
            self.requested.iter().next(),
        ];
        waiting
            .into_iter()
            .flatten()
            .min()
            .copied()
            .unwrap_or_else(|| {
                let next = if self.taken.is_empty() {
                    0
                } else {
                    self.cursor + 1
                };
                next * self.chunk_size() / block_size
            })
    }

    fn cap_sets(&mut self) {
        if self.done.runs() > MAX_RUNS {
            self.done.cap_runs(MAX_RUNS);
        }
        if self.taken.runs() > MAX_RUNS {
            self.taken.cap_runs(MAX_RUNS);
            self.done.union_with(&self.taken);
        }
        if self.delivered.runs() > MAX_RUNS {
            self.delivered.cap_runs(MAX_RUNS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunk: u32) -> Stream {
        Stream::new(
            Qos {
                key_chunk_size: chunk,
                ..Qos::default()
            },
            "a",
            "b",
            true,
            Instant::now(),
        )
    }

    #[test]
    fn index_wraps_around_the_cursor() {
        let mut s = stream(32);
        assert_eq!(s.absolute(7), 7);
        assert_eq!(
            s.absolute(u32::MAX),
            (1 << 32) - 1,
            "behind 0 means the top of the first lap"
        );
        s.cursor = (1 << 32) - 1;
        assert_eq!(s.absolute(0), 1 << 32, "after u32::MAX comes the next lap");
        assert_eq!(s.absolute(u32::MAX - 5), (1 << 32) - 6);
    }

    #[test]
    fn geometry_of_straddling_chunks() {
        let s = stream(24);
        assert_eq!(s.blocks_of(0, 64), 0..=0);
        assert_eq!(s.blocks_of(2, 64), 0..=1, "bytes 48..72 straddle");
        assert_eq!(
            s.chunks_of(1, 64),
            (2, 5),
            "bytes 64..128 hold parts of chunks 2..=5"
        );
    }

    #[test]
    fn lost_chunks_are_wiped_and_release_their_blocks() {
        let arena = crate::key::KeyArena::new(64, 4).unwrap();
        let mut s = stream(48);
        let now = Instant::now();
        for sb in 0..2 {
            let mut key = arena.alloc().unwrap();
            key.bytes_mut().fill(0xAA);
            s.hold(
                sb,
                DeviceBlock {
                    id: 10 + sb,
                    born: Stamp::now(),
                    digest: 0,
                    key,
                },
                0,
                now,
            );
        }
        // Chunk 1 is bytes 48..96: the end of block 0 and the start of 1.
        assert_eq!(s.lose_chunk(1, 64), Some(0));
        assert_eq!(s.lose_chunk(1, 64), None, "once");
        assert!(s.held[&0].key.bytes()[48..].iter().all(|&b| b == 0));
        assert!(s.held[&1].key.bytes()[..32].iter().all(|&b| b == 0));
        assert!(s.held[&0].key.bytes()[..48].iter().all(|&b| b == 0xAA));
        let mut out = [0u8; 48];
        assert_eq!(
            s.take_chunk(0, 64, crate::key::as_uninit(&mut out)),
            1,
            "block 0 is all done"
        );
        assert_eq!(out, [0xAA; 48]);
        assert_eq!(
            s.lose_block(1, 64),
            (1, 1),
            "chunk 2 lost, block 1 released"
        );
        assert!(s.held.is_empty());
        assert_eq!(arena.free_slots(), 4);
        assert!(s.taken.contains(0) && !s.taken.contains(1) && s.done.covers(0, 2));
    }
}
