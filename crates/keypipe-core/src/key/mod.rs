//! Key material: the zeroizing arena of fixed-size slots, the handles that
//! reach them, and the lock-free ring that carries handles from a device to
//! the stream manager; locked memory for the other secrets. No I/O here,
//! and no key byte outside locked memory.

mod arena;
mod counters;
pub mod locked;
mod ring;
mod stamp;

pub use arena::{ArenaError, KeyArena, KeyBlock, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, Protection};
pub use counters::{CounterSnapshot, KeyCounters};
pub use ring::{DeviceBlock, RingConsumer, RingProducer, ring};
pub use stamp::Stamp;

/// Writes `src` to the start of `dst` (possibly uninitialised memory, such
/// as a C caller's fresh buffer); `dst` holds at least `src.len()` bytes.
pub fn write_bytes(dst: &mut [std::mem::MaybeUninit<u8>], src: &[u8]) {
    for (d, &s) in dst[..src.len()].iter_mut().zip(src) {
        d.write(s);
    }
}

/// `bytes` as possibly-uninitialised bytes, for the key writers that take
/// those. Crate-private: nothing here ever writes an uninitialised byte
/// through it (that would leave `bytes` holding one).
pub(crate) fn as_uninit(bytes: &mut [u8]) -> &mut [std::mem::MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`; the crate only
    // writes initialised bytes through the result (see above).
    unsafe { &mut *(std::ptr::from_mut::<[u8]>(bytes) as *mut [std::mem::MaybeUninit<u8>]) }
}
