//! keypipe's engine: everything a node of a QKD link needs that touches no
//! socket and no SQL.
//!
//! Layers, bottom up (a layer only calls the ones below it):
//! - [`key`]: the zeroizing key arena, its handles and the lock-free ring;
//! - [`device`]: the polled QKD device trait, its drivers and the poller;
//! - [`qkd`]: one node of a QKD link with ETSI GS QKD 004 stream semantics,
//!   its sans-IO link sync and push state machines, and its durable key
//!   ledger;
//! - [`rangeset`]: sets of `u64` as sorted runs (spent ranges, indexes).

pub mod device;
/// Fuzz entry points, for `fuzz/` and the fuzz regression tests.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod key;
pub mod qkd;
pub mod rangeset;
