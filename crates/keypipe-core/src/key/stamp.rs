//! Compact timestamps for key blocks.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
