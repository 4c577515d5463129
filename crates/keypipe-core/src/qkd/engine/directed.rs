//! The engine's directed-stream calls (what ETSI GS QKD 014 needs): open
//! a directed stream, issue its key on one node (waiting at most a given
//! time), redeem it on the other, and the key ids both nodes agree on.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Engine;
use crate::qkd::Role;
use crate::qkd::node::{DirectedError, Issue};

impl Engine {
    /// Opens directed stream `ksid` on this node (idempotent): the node of
    /// role `issuer` issues its key, the other redeems it (see
    /// `docs/etsi014.md`). The other node's side opens when the
    /// announcement reaches it. Key not handed out within `ttl_s` seconds
    /// is zeroized.
    pub fn open_directed(
        &self,
        ksid: Uuid,
        source: &str,
        destination: &str,
        issuer: Role,
        ttl_s: u32,
    ) -> Result<(), DirectedError> {
        let mut node = self.shared.lock();
        self.shared.drain_inbox(&mut node, Instant::now());
        let opened = node.open_directed(Instant::now(), ksid, source, destination, issuer, ttl_s);
        self.shared.flush(&mut node);
        opened
    }

    /// Issues the next `out.len()` bytes of directed stream `ksid` into
    /// `out`, all or nothing, waiting at most `wait` for key; returns the
    /// stream offset of the first byte. Never while the link is down.
    pub fn issue(&self, ksid: &Uuid, out: &mut [u8], wait: Duration) -> Result<u64, DirectedError> {
        let start = Instant::now();
        let mut node = self.shared.lock();
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(DirectedError::NoLink);
            }
            let now = Instant::now();
            let attempt = node.issue(now, ksid, out, self.shared.link_ok());
            self.shared.flush(&mut node);
            let peer_missing = match attempt? {
                Issue::Issued(first) => return Ok(first),
                Issue::NeedKey => false,
                Issue::NeedPeer => true,
            };
            if self
                .shared
                .drain_inbox(&mut node, now)
                .is_some_and(|n| n > 0)
            {
                continue;
            }
            let elapsed = start.elapsed();
            if elapsed >= wait {
                return Err(match peer_missing {
                    true if !self.shared.link_ok() => DirectedError::NoLink,
                    _ => DirectedError::InsufficientKey,
                });
            }
            node = self.wait(node, wait - elapsed);
        }
    }

    /// Redeems every span (KSID, offset of the first byte, length) of
    /// directed streams into `out`, one after the other, all or nothing, at
    /// once (works while the link is down).
    pub fn redeem(&self, spans: &[(Uuid, u64, u64)], out: &mut [u8]) -> Result<(), DirectedError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(DirectedError::NoLink);
        }
        let mut node = self.shared.lock();
        let now = Instant::now();
        self.shared.drain_inbox(&mut node, now);
        let redeemed = node.redeem(now, spans, out);
        self.shared.flush(&mut node);
        redeemed
    }

    /// Bytes of directed stream `ksid` this node could issue at once, or
    /// `None` when it does not issue it.
    pub fn issuable(&self, ksid: &Uuid) -> Option<u64> {
        self.shared.lock().issuable(ksid, Instant::now())
    }

    /// The directed streams this node knows: KSID, source, destination.
    pub fn directed_streams(&self) -> Vec<(Uuid, String, String)> {
        let mut node = self.shared.lock();
        self.shared.drain_inbox(&mut node, Instant::now());
        node.directed_streams()
    }

    /// The KSID of the directed stream `name` describes, the same on both
    /// nodes of the link (see [`ConfirmKeys::directed_ksid`]).
    ///
    /// [`ConfirmKeys::directed_ksid`]: crate::qkd::confirm::ConfirmKeys::directed_ksid
    pub fn directed_ksid(&self, name: &[u8]) -> Uuid {
        self.keys.directed_ksid(name)
    }

    /// How many directed streams this node knows.
    pub fn directed_count(&self) -> usize {
        let mut node = self.shared.lock();
        self.shared.drain_inbox(&mut node, Instant::now());
        node.directed_count()
    }

    /// A keyed tag of the run of `len` bytes at `first` of directed stream
    /// `ksid`, the same on both nodes of the link (see
    /// [`ConfirmKeys::key_id_tag`]).
    ///
    /// [`ConfirmKeys::key_id_tag`]: crate::qkd::confirm::ConfirmKeys::key_id_tag
    pub fn key_id_tag(&self, ksid: &Uuid, first: u64, len: u64) -> u64 {
        self.keys.key_id_tag(ksid, first, len)
    }
}
