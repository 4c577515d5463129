//! The engine: one node's [`Node`] running with its device poller, link
//! thread and ledger writer. This file owns the [`Engine`] handle, its
//! public types and its stats.
//!
//! Threads per engine: the device poller (fills the ring, reserving device
//! positions in the ledger first), the link thread (applies the peer's
//! link-sync messages, serves lease requests, expires key) and the ledger
//! writer (records streams; a leader's stream reservations are written
//! before blocks below them are assigned). API calls run on the caller's
//! thread under one mutex; a waiting GET_KEY sleeps on a condition variable
//! the other threads signal, re-checking the ring at least every
//! millisecond.
//!
//! Beside this file: how an engine starts (`start.rs`), its threads and
//! how they stop (`threads.rs`), the state they share (`shared.rs`), and
//! its calls: ETSI 004 with the GET_KEY that waits (`etsi004.rs`),
//! directed streams (`directed.rs`) and the link session's (`session.rs`).

mod directed;
mod etsi004;
mod session;
mod shared;
mod start;
mod threads;

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use zeroize::Zeroizing;

use super::Role;
use super::confirm::ConfirmKeys;
use super::ledger::LedgerError;
use super::node::Node;
use crate::device::{LinkControl, Poller};
use crate::key::{ArenaError, CounterSnapshot, KeyArena, Protection};
use shared::Shared;

/// Longest sleep of a waiting GET_KEY before it looks at the ring again.
const WAIT_SLICE: Duration = Duration::from_millis(1);

/// The peer announced a stream, or forgot it, between an authorization
/// and the open it was for ([`Engine::open_connect_as`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer node announced this stream meanwhile; retry the open-connect")]
pub struct SideChanged;

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] super::ConfigError),
    /// The key arena could not be allocated.
    #[error("key arena: {0}")]
    Arena(#[from] ArenaError),
    /// The device could not be opened, or a thread not started.
    #[error("device: {0}")]
    Io(#[from] std::io::Error),
    /// The key ledger could not be used.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A snapshot of an engine's counters and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Block counters.
    pub counters: CounterSnapshot,
    /// Blocks waiting in the ring.
    pub ring_len: usize,
    /// Ring capacity.
    pub ring_capacity: usize,
    /// Arena slots not in use.
    pub arena_free: usize,
    /// Arena slots.
    pub arena_capacity: usize,
    /// Streams known to this node.
    pub streams: usize,
    /// Blocks held by streams.
    pub held_blocks: u64,
    /// The lowest device block id this node can still take.
    pub position: u64,
    /// The device is producing (no outage, not exhausted) and the ledger
    /// is writable.
    pub device_up: bool,
    /// The key ledger cannot be written (no key flows until it can).
    pub ledger_failed: bool,
    /// The peer node is reachable.
    pub link_up: bool,
    /// Memory protection the OS granted the arena.
    pub protection: Protection,
}

/// What a node tells its peer about its device at session start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceParams {
    /// Bytes per block.
    pub block_size: usize,
    /// Keyed hash of the device's identity (see `qkd::confirm`).
    pub fingerprint: String,
    /// The lowest block id the node can still take.
    pub position: u64,
    /// The device position the ledger reserved (at least `position`): a
    /// peer with a new ledger adopts it, so it never takes a block this
    /// node's device read, used or not.
    pub reserved: u64,
    /// The ledger had no record of this device at start (and no reset was
    /// asked for).
    pub ledger_new: bool,
}

/// One node of a QKD link, running. Thread-safe; dropping it stops its
/// threads, records its streams and zeroizes all its key.
pub struct Engine {
    shared: Arc<Shared>,
    link_thread: Option<JoinHandle<()>>,
    ledger_thread: Option<JoinHandle<()>>,
    poller: Option<Poller>,
    control: Option<LinkControl>,
    params: DeviceParams,
    /// The device's id in the ledger.
    device_id: [u8; 16],
    name: String,
    role: Role,
    /// Keys shared with the peer node (directed key-id tags).
    keys: ConfirmKeys,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.name)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Ends service without stopping the threads: every call waiting in
    /// GET_KEY or OPEN_CONNECT returns at once, and later calls answer
    /// status 4 (no QKD connection). For embedders that must make their
    /// own threads leave the engine before freeing it. Idempotent.
    pub fn shut_down(&self) {
        self.shared.closed.store(true, Ordering::Release);
        // Taking the lock orders the flag before any waiter's next check.
        drop(self.shared.lock());
        self.shared.key_arrived.notify_all();
    }

    /// The outage switch of a simulated link (`None` for other devices).
    pub fn link_control(&self) -> Option<&LinkControl> {
        self.control.as_ref()
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This node's role on the link.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Leader only: fresh QKD key for this node's own use, never delivered
    /// to a stream (see [`Node::take_local_block`]).
    pub fn take_local_block(&self) -> Option<Zeroizing<Vec<u8>>> {
        self.shared.lock().take_local_block()
    }

    /// Sleeps until another thread signals, at most `max` (and at most a
    /// slice, so the ring is looked at again soon).
    fn wait<'a>(&'a self, node: MutexGuard<'a, Node>, max: Duration) -> MutexGuard<'a, Node> {
        self.shared
            .key_arrived
            .wait_timeout(node, max.min(WAIT_SLICE))
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    /// Counters and health.
    pub fn stats(&self) -> EngineStats {
        let (streams, (ring_len, ring_capacity), held_blocks, position) = {
            let node = self.shared.lock();
            (
                node.stream_count(),
                node.ring_fill(),
                node.held_blocks(),
                node.position(),
            )
        };
        let ledger_failed =
            self.shared.device.ledger_failed() || self.shared.ledger_failed.load(Ordering::Acquire);
        EngineStats {
            counters: self.shared.counters.snapshot(),
            ring_len,
            ring_capacity,
            arena_free: self.shared.arena.free_slots(),
            arena_capacity: self.shared.arena.capacity(),
            streams,
            held_blocks,
            position,
            device_up: self.shared.device.is_up() && !ledger_failed,
            ledger_failed,
            link_up: self.shared.transport.is_up(),
            protection: self.shared.arena.protection(),
        }
    }

    /// The arena, for tests that check released slots are wiped.
    #[doc(hidden)]
    pub fn arena(&self) -> &KeyArena {
        &self.shared.arena
    }
}
