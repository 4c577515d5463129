//! The engine's side of a link session: the device parameters a node
//! tells its peer, whether it paired before (and recording that it did),
//! adopting the peer's device position, and starting a session's sync.

use std::sync::atomic::Ordering;

use super::{DeviceParams, Engine};

impl Engine {
    /// What this node tells its peer about its device at session start
    /// (the positions are the current ones).
    pub fn device_params(&self) -> DeviceParams {
        let mut params = self.params.clone();
        params.position = self.shared.lock().position();
        let reserved = self
            .shared
            .ledger
            .device(&self.device_id, params.block_size)
            .map_or(0, |d| d.position);
        params.reserved = params.position.max(reserved);
        // Once paired, this node's ledger is the link's, new or not.
        params.ledger_new &= !self.paired_before();
        params
    }

    /// True once this node's ledger records a completed session with its
    /// peer.
    pub fn paired_before(&self) -> bool {
        self.shared.paired.load(Ordering::Acquire)
    }

    /// Records (once, durably) that this node completed a session with its
    /// peer; first makes the device position it adopted durable (a pairing
    /// on record means the position is too).
    pub fn mark_paired(&self) {
        if self.shared.paired.load(Ordering::Acquire) {
            return;
        }
        let position = {
            let mut node = self.shared.lock();
            node.set_adopt(false);
            node.position()
        };
        let recorded = self
            .shared
            .ledger
            .reserve_device(&self.device_id, self.params.block_size, position)
            .and_then(|()| self.shared.ledger.mark_paired());
        match recorded {
            Ok(()) => {
                self.shared.paired.store(true, Ordering::Release);
                self.shared.finish_reset();
            }
            Err(e) => {
                tracing::error!(error = %e, "could not record the pairing in the key ledger")
            }
        }
    }

    /// The peer's device is at `position` (its welcome): a node whose
    /// ledger never completed a session moves past it before anything else
    /// (see `docs/ledger.md`, "A lost ledger").
    pub fn adopt_position(&self, position: u64) {
        let mut node = self.shared.lock();
        node.adopt_position(position);
        self.shared.flush(&mut node);
    }

    /// A new session with the peer starts (or the peer started one): this
    /// node's whole view goes to the peer first.
    pub fn begin_session(&self) {
        let mut node = self.shared.lock();
        node.begin_sync();
        self.shared.flush(&mut node);
    }
}
