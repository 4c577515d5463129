//! Block counters shared by the device poller and the stream manager.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::utils::CachePadded;

/// Monotonic counters of key blocks. Each sits on its own cache line so the
/// producer and the consumers do not contend on one line.
#[derive(Debug, Default)]
pub struct KeyCounters {
    produced: CachePadded<AtomicU64>,
    consumed: CachePadded<AtomicU64>,
    expired: CachePadded<AtomicU64>,
    ring_full_stalls: CachePadded<AtomicU64>,
    lost: CachePadded<AtomicU64>,
    mismatches: CachePadded<AtomicU64>,
}

/// A snapshot of [`KeyCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Blocks the device produced into the ring.
    pub produced: u64,
    /// Blocks taken from the ring and assigned to a stream (or discarded to
    /// stay in step with the peer node).
    pub consumed: u64,
    /// Blocks zeroized because their stream's TTL ended or the stream closed
    /// before they were delivered.
    pub expired: u64,
    /// Times the poller found the ring (or the arena) full and paused.
    pub ring_full_stalls: u64,
    /// Chunks that will never be handed out on this node: expired, lost in
    /// a restart of either node, or dropped because the peer node could not
    /// deliver them.
    pub lost_chunks: u64,
    /// Leased blocks whose key confirmation failed (the stream stopped).
    pub mismatches: u64,
}

impl KeyCounters {
    /// Counts one produced block.
    pub fn produced(&self) {
        self.produced.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts `n` consumed blocks.
    pub fn consumed(&self, n: u64) {
        self.consumed.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts `n` expired blocks.
    pub fn expired(&self, n: u64) {
        self.expired.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts one stall of the poller.
    pub fn stalled(&self) {
        self.ring_full_stalls.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts `n` lost chunks.
    pub fn lost(&self, n: u64) {
        if n > 0 {
            self.lost.fetch_add(n, Ordering::Relaxed);
        }
    }
    /// Counts one key confirmation failure.
    pub fn mismatch(&self) {
        self.mismatches.fetch_add(1, Ordering::Relaxed);
    }
    /// Reads all counters.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            produced: self.produced.load(Ordering::Relaxed),
            consumed: self.consumed.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            ring_full_stalls: self.ring_full_stalls.load(Ordering::Relaxed),
            lost_chunks: self.lost.load(Ordering::Relaxed),
            mismatches: self.mismatches.load(Ordering::Relaxed),
        }
    }
}
