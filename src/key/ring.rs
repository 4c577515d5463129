//! The bounded lock-free ring between a device poller and the consumers.
//!
//! It carries [`DeviceBlock`]s: a block id, its production time and the
//! handle of the arena slot holding the bytes. The bytes themselves never
//! enter the queue.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;

use super::KeyBlock;

/// One block as produced by a device: its id on the link, when it was
/// produced, and the slot holding its bytes.
#[derive(Debug)]
pub struct DeviceBlock {
    /// Block id on the link; both devices of a link give the same bytes for
    /// the same id.
    pub id: u64,
    /// When the device produced it (for key age in metadata).
    pub born: Stamp,
    /// The key bytes.
    pub key: KeyBlock,
}

/// A point in time as microseconds since the process's first stamp: 8
/// bytes instead of an `Instant`'s 16, so a ring entry fits 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

static EPOCH: OnceLock<Instant> = OnceLock::new();

impl Stamp {
    /// The stamp of `at` (instants before the epoch count as the epoch).
    pub fn at(at: Instant) -> Stamp {
        let epoch = *EPOCH.get_or_init(Instant::now);
        Stamp(at.saturating_duration_since(epoch).as_micros() as u64)
    }

    /// The stamp of now.
    pub fn now() -> Stamp {
        Stamp::at(Instant::now())
    }

    /// Time from `self` to `later` (zero if `later` is earlier).
    pub fn until(self, later: Stamp) -> Duration {
        Duration::from_micros(later.0.saturating_sub(self.0))
    }
}

/// Bounded multi-producer multi-consumer ring of device blocks.
#[derive(Debug)]
pub struct KeyRing {
    queue: ArrayQueue<DeviceBlock>,
}

impl KeyRing {
    /// A ring holding at most `capacity` blocks (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity.max(1)),
        }
    }

    /// Appends a block, or gives it back when the ring is full (it is never
    /// dropped or overwritten).
    pub fn push(&self, block: DeviceBlock) -> Result<(), DeviceBlock> {
        self.queue.push(block)
    }

    /// Takes the oldest block.
    pub fn pop(&self) -> Option<DeviceBlock> {
        self.queue.pop()
    }

    /// Blocks waiting in the ring.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no block waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// True when a push would be refused.
    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// Maximum number of blocks.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }
}
