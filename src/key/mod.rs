//! Key material: the zeroizing arena of fixed-size slots, the handles that
//! reach them, and the lock-free ring that carries handles from a device to
//! the stream manager. No I/O here, and no key byte outside the arena.

mod arena;
mod counters;
mod ring;
mod stamp;

pub use arena::{ArenaError, KeyArena, KeyBlock, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, Protection};
pub use counters::{CounterSnapshot, KeyCounters};
pub use ring::{DeviceBlock, RingConsumer, RingProducer, ring};
pub use stamp::Stamp;
