//! The bounded lock-free ring between a device poller and the consumers.
//!
//! It carries [`DeviceBlock`]s: a block id, its production time and the
//! handle of the arena slot holding the bytes. The bytes themselves never
//! enter the queue.

use std::time::Instant;

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
    pub born: Instant,
    /// The key bytes.
    pub key: KeyBlock,
}

/// Bounded multi-producer multi-consumer ring of device blocks.
#[derive(Debug)]
pub struct KeyRing {
    queue: ArrayQueue<DeviceBlock>,
}

impl KeyRing {
    /// A ring holding at most `capacity` blocks (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self { queue: ArrayQueue::new(capacity.max(1)) }
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
