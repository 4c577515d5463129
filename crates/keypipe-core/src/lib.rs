//! keypipe's engine: everything a node of a QKD link needs that touches no
//! socket and no SQL.
//!
//! Layers, bottom up (a layer only calls the ones below it):
//! - [`rangeset`]: sets of `u64` as sorted runs (spent ranges, indexes);
//! - [`key`]: the zeroizing key arena, its handles and the lock-free ring,
//!   and locked memory for the other long-lived secrets;
//! - [`device`]: the polled QKD device trait, its drivers and the poller;
//! - [`qkd`]: one node of a QKD link with ETSI GS QKD 004 stream semantics
//!   and directed streams, its sans-IO link sync and push state machines,
//!   its durable key ledger, and the engine that runs it.
//!
//! With the `fuzzing` feature, `fuzzing` holds the fuzz entry points of
//! this crate (the link-sync session) and the byte cursor every crate's
//! entry points read their input with.

pub mod device;
/// Fuzz entry points, for `fuzz/` and the fuzz regression tests.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod key;
pub mod qkd;
pub mod rangeset;
