//! The threads of an engine besides the device poller: the link thread
//! (the peer's messages, background work) and the ledger writer (stream
//! records), and how dropping the engine stops them all.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Select};
use uuid::Uuid;

use super::shared::Shared;
use super::{Engine, WAIT_SLICE};

/// Link thread wake-up period when nothing waits on key.
const IDLE_TICK: Duration = Duration::from_millis(20);
/// The ledger writer records changed streams at least this often.
const LEDGER_PERIOD: Duration = Duration::from_millis(50);

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        *self
            .shared
            .poller_skip
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.poller.take();
        if let Some(t) = self.link_thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let _ = self.shared.commit_now.try_send(());
        if let Some(t) = self.ledger_thread.take() {
            let _ = t.join();
        }
    }
}

/// The link thread: applies the peer's messages and does background work.
pub(super) fn link_loop(shared: &Shared) {
    let mut peer_gone = false;
    while !shared.stop.load(Ordering::Acquire) {
        let wait = if shared.lock().has_pending() {
            WAIT_SLICE
        } else {
            IDLE_TICK
        };
        match &shared.inbox {
            Some(inbox) if !peer_gone => {
                let mut select = Select::new();
                select.recv(inbox.receiver());
                let _ = select.ready_timeout(wait);
            }
            _ => thread::park_timeout(wait),
        }
        let now = Instant::now();
        let mut node = shared.lock();
        peer_gone = shared.inbox.is_some() && shared.drain_inbox(&mut node, now).is_none();
        node.tick(now);
        shared.flush(&mut node);
        drop(node);
        shared.key_arrived.notify_all();
    }
}

/// The ledger writer: records changed streams every period, or at once
/// when a reservation is awaited; a last time when the engine stops.
pub(super) fn ledger_loop(shared: &Shared, wake: &Receiver<()>) {
    let mut failing = false;
    loop {
        let _ = wake.recv_timeout(LEDGER_PERIOD);
        let stopping = shared.stop.load(Ordering::Acquire);
        let (records, removed) = shared.lock().take_records();
        if !records.is_empty() || !removed.is_empty() {
            match shared.ledger.write_streams(&records, &removed) {
                Ok(()) => {
                    let reset_over = {
                        let mut node = shared.lock();
                        node.committed(&records);
                        // Acknowledgements that waited for this write.
                        shared.flush(&mut node);
                        node.reset_committed()
                    };
                    if reset_over {
                        shared.reset_synced.store(true, Ordering::Release);
                        shared.finish_reset();
                    }
                    shared.key_arrived.notify_all();
                    if failing {
                        failing = false;
                        shared.ledger_failed.store(false, Ordering::Release);
                        tracing::info!("key ledger writable again");
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "key ledger write failed: streams wait until it can be written");
                    }
                    failing = true;
                    shared.ledger_failed.store(true, Ordering::Release);
                    let ksids: Vec<Uuid> = records.iter().map(|r| r.ksid).collect();
                    shared.lock().redirty(&ksids, removed);
                    if stopping {
                        return;
                    }
                    thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        }
        if records.is_empty() && removed.is_empty() && shared.lock().reset_committed() {
            shared.reset_synced.store(true, Ordering::Release);
            shared.finish_reset();
        }
        if stopping {
            return;
        }
    }
}
