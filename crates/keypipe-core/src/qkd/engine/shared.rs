//! What an engine's threads and its callers share: the node under its
//! lock, the condition variable waiting GET_KEYs sleep on, the link, the
//! ledger and the flags that stop or pause service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crossbeam::channel::{Sender, TryRecvError};

use crate::device::DeviceState;
use crate::key::{KeyArena, KeyCounters};
use crate::qkd::ledger::Ledger;
use crate::qkd::link::{Inbox, LinkTransport};
use crate::qkd::node::Node;

/// Moves the device forward (the poller's `skip_to`).
type Skipper = Box<dyn Fn(u64) + Send>;

/// The state of one engine its threads and its callers share.
pub(super) struct Shared {
    pub(super) node: Mutex<Node>,
    pub(super) key_arrived: Condvar,
    pub(super) arena: KeyArena,
    pub(super) counters: Arc<KeyCounters>,
    pub(super) device: Arc<DeviceState>,
    pub(super) transport: Box<dyn LinkTransport>,
    /// The peer's messages. Only ever read with the node locked, so they
    /// are applied in order whichever thread reads them.
    pub(super) inbox: Option<Inbox>,
    pub(super) stop: AtomicBool,
    /// [`Engine::shut_down`](super::Engine::shut_down) was called: calls answer at once.
    pub(super) closed: AtomicBool,
    pub(super) ledger: Arc<Ledger>,
    /// Wakes the ledger writer (a reservation is awaited).
    pub(super) commit_now: Sender<()>,
    pub(super) ledger_failed: AtomicBool,
    pub(super) poller_skip: Mutex<Option<Skipper>>,
    /// The ledger records a completed session with the peer.
    pub(super) paired: AtomicBool,
    /// After a reset: the first sync's outcome is durable.
    pub(super) reset_synced: AtomicBool,
}

impl Shared {
    /// The node, locked.
    pub(super) fn lock(&self) -> MutexGuard<'_, Node> {
        // A panic under the lock is caught at the API boundary; the node's
        // state is updated in steps that each leave it consistent.
        self.node.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the node's outbox to the peer (non-blocking), wakes the ledger
    /// writer if a reservation is awaited, and moves the device forward if
    /// the peer is far ahead.
    pub(super) fn flush(&self, node: &mut Node) {
        for msg in node.take_outbox() {
            if self.transport.send(msg).is_err() {
                tracing::debug!("link-sync message not sent: peer node unreachable");
            }
        }
        if node.wants_commit() {
            let _ = self.commit_now.try_send(());
        }
        if let Some(position) = node.take_skip()
            && let Some(skip) = self
                .poller_skip
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
        {
            skip(position);
        }
    }

    /// Applies every message waiting in the inbox; `None` when the peer's
    /// side of the channel is gone, else how many were applied.
    pub(super) fn drain_inbox(&self, node: &mut Node, now: Instant) -> Option<usize> {
        let inbox = self.inbox.as_ref()?;
        let mut applied = 0;
        loop {
            match inbox.receiver().try_recv() {
                Ok(msg) => {
                    node.handle(now, msg);
                    applied += 1;
                }
                Err(TryRecvError::Empty) => return Some(applied),
                Err(TryRecvError::Disconnected) => return (applied > 0).then_some(applied),
            }
        }
    }

    /// A reset is over once the node paired (its adopted position durable)
    /// and its first sync's outcome is durable: the ledger's mark goes.
    pub(super) fn finish_reset(&self) {
        if self.paired.load(Ordering::Acquire)
            && self.reset_synced.swap(false, Ordering::AcqRel)
            && let Err(e) = self.ledger.clear_reset()
        {
            tracing::error!(error = %e, "could not clear the key ledger's reset mark");
        }
    }

    /// True while key may flow: the engine is not shut down, the device
    /// is up, the peer reachable and the ledger writable.
    pub(super) fn link_ok(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.device.is_up()
            && self.transport.is_up()
            && !self.ledger_failed.load(Ordering::Acquire)
    }
}
