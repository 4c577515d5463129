//! QKD devices: the polled [`QkdDevice`] trait, its drivers, and the poller
//! thread that feeds a device's blocks into the key ring with backpressure.
//! Devices know nothing of streams or protocols.
//!
//! Block ids are positions in the device's key stream (block `n` is the
//! `n`-th block the device ever produced, or the device's own key id), never
//! a count of reads by this process: a driver opened at position `p`
//! produces ids from `p` on, so a node that restarts resumes exactly past
//! the key it already spent.

mod file;
mod poller;
mod simulated;

use std::time::Duration;

use zeroize::Zeroizing;

pub use file::{FileFormat, FileSource};
pub use poller::{BlockDigest, DeviceState, Poller, PollerConfig, Reserve};
pub use simulated::{LinkControl, SimulatedDevice, SimulatedLink};

/// What one non-blocking [`QkdDevice::poll`] gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePoll {
    /// A whole block with this id was written into the buffer.
    Ready(u64),
    /// No block yet; poll again after about this long.
    Pending(Duration),
    /// The device (or its quantum link) is down; poll again after about this
    /// long.
    Down(Duration),
    /// The device will never produce another block (end of a key file).
    Exhausted,
}

/// A source of post-processed QKD key, polled without blocking.
///
/// Both devices of one link produce byte-identical blocks under identical
/// block ids, in increasing id order.
pub trait QkdDevice: Send {
    /// Bytes per block; fixed for the device's lifetime.
    fn block_size(&self) -> usize;

    /// Tries to produce the next block into `out` (`block_size` bytes).
    ///
    /// Never blocks. Until it returns [`DevicePoll::Ready`], the caller
    /// hands the *same* buffer back on every call, so a device may fill it
    /// across several polls; a partially filled buffer is never handed out.
    fn poll(&mut self, out: &mut [u8]) -> DevicePoll;

    /// Material that identifies this device's key stream (the same on both
    /// ends of a link, different for another stream). It may be derived
    /// from key (the first block of a key file), so it is only ever
    /// published through a keyed hash, never as is.
    fn identity(&self) -> Zeroizing<Vec<u8>>;

    /// Moves forward so the next block produced has an id of at least
    /// `position` (ids in between are never produced). Drivers that cannot
    /// seek ignore it; their blocks below `position` are then discarded by
    /// whoever reads them.
    fn skip_to(&mut self, position: u64) {
        let _ = position;
    }
}
