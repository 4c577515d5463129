//! The bounded lock-free ring between a device poller and the consumers.
//!
//! It carries [`DeviceBlock`]s: a block id, its production time and the
//! handle of the arena slot holding the bytes. The bytes themselves never
//! enter the queue.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, Thread};
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

/// Bounded multi-consumer ring of device blocks, fed by one producer
/// thread that sleeps while the ring is full and is woken by the next pop.
#[derive(Debug)]
pub struct KeyRing {
    queue: ArrayQueue<DeviceBlock>,
    producer: OnceLock<Thread>,
    producer_waiting: AtomicBool,
}

impl KeyRing {
    /// A ring holding at most `capacity` blocks (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity.max(1)),
            producer: OnceLock::new(),
            producer_waiting: AtomicBool::new(false),
        }
    }

    /// Appends a block, or gives it back when the ring is full (it is never
    /// dropped or overwritten).
    pub fn push(&self, block: DeviceBlock) -> Result<(), DeviceBlock> {
        self.queue.push(block)
    }

    /// Takes the oldest block, waking the producer if it waits for room.
    pub fn pop(&self) -> Option<DeviceBlock> {
        let block = self.queue.pop()?;
        // SeqCst pairs with `wait_for_room`: either the producer sees the
        // room made here, or this sees it waiting and wakes it.
        if self.producer_waiting.load(Ordering::SeqCst)
            && self.producer_waiting.swap(false, Ordering::SeqCst)
            && let Some(producer) = self.producer.get()
        {
            producer.unpark();
        }
        Some(block)
    }

    /// Producer side: sleeps while the ring is full, until a pop makes room
    /// or `max` passes (or the thread is unparked). Always called from the
    /// same producer thread.
    pub fn wait_for_room(&self, max: Duration) {
        self.producer.get_or_init(thread::current);
        self.producer_waiting.store(true, Ordering::SeqCst);
        if self.queue.is_full() {
            thread::park_timeout(max);
        }
        self.producer_waiting.store(false, Ordering::SeqCst);
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
