//! One key stream as seen by one node: its QoS, who has opened it, the
//! device blocks it holds on this node, and which chunks this node has
//! already handed out.
//!
//! Geometry: the stream's reserved key is the sequence of its *stream
//! blocks* (each one device block, `block_size` bytes). Chunk `a` (an
//! absolute chunk number, see [`Stream::absolute`]) is the `key_chunk_size`
//! bytes at offset `a * key_chunk_size` of that key; wire index = `a mod 2^32`.
//! Stream blocks are assigned sparsely, on demand, so any access order works.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::Qos;
use super::rangeset::RangeSet;
use crate::key::{DeviceBlock, KeyBlock, Stamp};

/// Whether one side (this node's application, or the peer's) has the
/// stream open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
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
}

/// Per-node state of one stream.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) qos: Qos,
    pub(crate) source: String,
    pub(crate) destination: String,
    pub(crate) local: Side,
    pub(crate) peer: Side,
    /// Blocks held on this node, by stream block number.
    pub(crate) held: BTreeMap<u64, Held>,
    /// Stream blocks ever assigned (never assigned twice).
    pub(crate) assigned: RangeSet,
    /// Follower: stream blocks asked of the leader and not answered yet.
    pub(crate) requested: BTreeSet<u64>,
    /// Follower: the leader refused to assign more blocks.
    pub(crate) refused: bool,
    /// Both sides opened the KSID independently with different chunk sizes.
    pub(crate) conflict: bool,
    /// Chunks handed out on this node.
    pub(crate) delivered: RangeSet,
    /// Absolute number of the last chunk asked for on this node.
    pub(crate) cursor: u64,
    /// Earliest `expires` among held blocks (none: nothing held).
    next_expiry: Option<Instant>,
}

impl Stream {
    pub(crate) fn new(qos: Qos, source: &str, destination: &str) -> Self {
        Self {
            qos,
            source: source.into(),
            destination: destination.into(),
            local: Side::Absent,
            peer: Side::Absent,
            held: BTreeMap::new(),
            assigned: RangeSet::default(),
            requested: BTreeSet::new(),
            refused: false,
            conflict: false,
            delivered: RangeSet::default(),
            cursor: 0,
            next_expiry: None,
        }
    }

    /// True while new blocks may be assigned (neither side closed).
    pub(crate) fn allocating(&self) -> bool {
        self.local != Side::Closed && self.peer != Side::Closed && !self.refused && !self.conflict
    }

    /// True once neither side will ask for key again.
    pub(crate) fn finished(&self) -> bool {
        let done = |s: Side| s != Side::Open;
        done(self.local)
            && done(self.peer)
            && (self.local == Side::Closed || self.peer == Side::Closed)
    }

    fn chunk_size(&self) -> u64 {
        u64::from(self.qos.key_chunk_size)
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

    /// Stream blocks chunk `a` spans.
    pub(crate) fn blocks_of(&self, a: u64, block_size: u64) -> RangeInclusive<u64> {
        let start = a * self.chunk_size();
        start / block_size..=(start + self.chunk_size() - 1) / block_size
    }

    /// Chunks overlapping stream block `sb`.
    fn chunks_of(&self, sb: u64, block_size: u64) -> (u64, u64) {
        (
            sb * block_size / self.chunk_size(),
            ((sb + 1) * block_size - 1) / self.chunk_size(),
        )
    }

    /// Copies chunk `a` into `out`, wipes its bytes from the held blocks,
    /// records it as delivered, and releases (zeroizes) blocks whose chunks
    /// are all delivered. Every block it spans must be held.
    pub(crate) fn take_chunk(&mut self, a: u64, block_size: u64, out: &mut [u8]) {
        let c = self.chunk_size();
        let mut offset = a * c;
        let mut written = 0usize;
        while written < c as usize {
            let sb = offset / block_size;
            let in_block = (offset % block_size) as usize;
            let len = (block_size as usize - in_block).min(c as usize - written);
            let held = self
                .held
                .get_mut(&sb)
                .expect("caller checked the block is held");
            out[written..written + len]
                .copy_from_slice(&held.key.bytes()[in_block..in_block + len]);
            held.key.wipe_range(in_block..in_block + len);
            written += len;
            offset += len as u64;
        }
        self.delivered.insert(a);
        self.cursor = a;
        for sb in self.blocks_of(a, block_size) {
            let (lo, hi) = self.chunks_of(sb, block_size);
            if self.delivered.covers(lo, hi) {
                self.held.remove(&sb);
            }
        }
    }

    /// Holds `block` as stream block `sb` until the stream's TTL ends.
    pub(crate) fn hold(&mut self, sb: u64, block: DeviceBlock, now: Instant) {
        let expires = now + Duration::from_secs(u64::from(self.qos.ttl));
        self.next_expiry = Some(self.next_expiry.map_or(expires, |t| t.min(expires)));
        self.held.insert(
            sb,
            Held {
                key: block.key,
                born: block.born,
                expires,
            },
        );
    }

    /// Drops held blocks whose TTL ended; returns how many. Costs nothing
    /// until the earliest expiry is due.
    pub(crate) fn expire(&mut self, now: Instant) -> u64 {
        if self.next_expiry.is_none_or(|t| now < t) {
            return 0;
        }
        let before = self.held.len();
        self.held.retain(|_, h| h.expires > now);
        self.next_expiry = self.held.values().map(|h| h.expires).min();
        (before - self.held.len()) as u64
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
}
