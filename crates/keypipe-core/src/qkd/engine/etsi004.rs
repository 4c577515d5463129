//! The engine's ETSI GS QKD 004 calls: OPEN_CONNECT (waiting for the
//! peer's announcement of a named stream), GET_KEY (waiting at most the
//! stream's timeout for key, or not at all for pushers), CLOSE, and what
//! push mode records through the engine.

use std::mem::MaybeUninit;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{Engine, SideChanged};
use crate::qkd::node::{Attempt, KeyRequest, Node};
use crate::qkd::{GetKeyError, GetKeyReply, OpenReply, Qos, Status, StreamError, StreamUris};

impl Engine {
    /// OPEN_CONNECT: opens `ksid` (a new UUIDv4 when `None` or nil) on this
    /// node with `qos` negotiated; see [`OpenReply`].
    pub fn open_connect(
        &self,
        source: &str,
        destination: &str,
        qos: &Qos,
        ksid: Option<Uuid>,
    ) -> OpenReply {
        let link_ok = self.shared.link_ok();
        // A KSID named by the caller is usually the peer side's: wait (at
        // most the requested timeout) for the peer's announcement so this
        // side inherits the source's QoS instead of racing it.
        let mut node = match ksid.filter(|k| link_ok && !k.is_nil()) {
            Some(k) => self.wait_known(&k, qos.timeout),
            None => self.shared.lock(),
        };
        let reply = node.open_connect(Instant::now(), source, destination, qos, ksid, link_ok);
        self.shared.flush(&mut node);
        reply
    }

    /// OPEN_CONNECT of a caller authorized for one side: `joining` says
    /// whether it joins a stream the peer announced (else it creates one).
    /// Checked under the engine's lock, so the side cannot change between
    /// the check and the open: `Err(SideChanged)` (nothing opened) when the
    /// peer's announcement came or went meanwhile. Does not wait for an
    /// announcement (the caller waited with [`Engine::announced`]).
    pub fn open_connect_as(
        &self,
        source: &str,
        destination: &str,
        qos: &Qos,
        ksid: Option<Uuid>,
        joining: bool,
    ) -> Result<OpenReply, SideChanged> {
        let link_ok = self.shared.link_ok();
        let mut node = self.shared.lock();
        let ksid = ksid.filter(|k| !k.is_nil());
        let announced = ksid
            .and_then(|k| node.stream_uris(&k))
            .is_some_and(|u| !u.created_here);
        if announced != joining {
            return Err(SideChanged);
        }
        let reply = node.open_connect(Instant::now(), source, destination, qos, ksid, link_ok);
        self.shared.flush(&mut node);
        Ok(reply)
    }

    /// The node, once it knows `ksid` (the peer announced it) or after at
    /// most `timeout_ms` (capped at the node's `max_timeout_ms`).
    fn wait_known(&self, ksid: &Uuid, timeout_ms: u32) -> MutexGuard<'_, Node> {
        let start = Instant::now();
        let mut node = self.shared.lock();
        let wait = Duration::from_millis(u64::from(timeout_ms.min(node.limits().max_timeout_ms)));
        while !node.knows(ksid)
            && start.elapsed() < wait
            && !self.shared.closed.load(Ordering::Acquire)
        {
            if self
                .shared
                .drain_inbox(&mut node, Instant::now())
                .is_some_and(|n| n > 0)
            {
                continue;
            }
            node = self.wait(node, wait.saturating_sub(start.elapsed()));
        }
        node
    }

    /// The KMS URIs of stream `ksid`, waiting at most `timeout_ms` for the
    /// peer's announcement of it; `None` when this node does not know it.
    pub fn announced(&self, ksid: &Uuid, timeout_ms: u32) -> Option<StreamUris> {
        let node = if self.shared.link_ok() {
            self.wait_known(ksid, timeout_ms)
        } else {
            self.shared.lock()
        };
        node.stream_uris(ksid)
    }

    /// The KMS URIs of stream `ksid`, if this node knows it.
    pub fn stream_uris(&self, ksid: &Uuid) -> Option<StreamUris> {
        self.shared.lock().stream_uris(ksid)
    }

    /// The URI each stream open on this node is pushed to.
    pub fn target_uris(&self) -> Vec<String> {
        self.shared.lock().target_uris()
    }

    /// GET_KEY: writes chunk `index` of stream `ksid` into `out` (at least
    /// `key_chunk_size` bytes), waiting at most the stream's timeout for
    /// key. `metadata_capacity`: the caller's metadata buffer size, or
    /// `None` when no metadata is wanted. The chunk counts as delivered.
    pub fn get_key(
        &self,
        ksid: &Uuid,
        index: u32,
        out: &mut [u8],
        metadata_capacity: Option<usize>,
    ) -> Result<GetKeyReply, GetKeyError> {
        let out = crate::key::as_uninit(out);
        self.get_key_within(ksid, index, out, metadata_capacity, true)
    }

    /// [`Engine::get_key`] into possibly uninitialised memory (a C caller's
    /// buffer): only the chunk's bytes are written, and only when the
    /// chunk is delivered; on any other answer `out` is untouched.
    pub fn get_key_uninit(
        &self,
        ksid: &Uuid,
        index: u32,
        out: &mut [MaybeUninit<u8>],
        metadata_capacity: Option<usize>,
    ) -> Result<GetKeyReply, GetKeyError> {
        self.get_key_within(ksid, index, out, metadata_capacity, true)
    }

    /// GET_KEY that never waits: status 2 (no key yet) or 3 (peer side not
    /// open) instead of waiting. For pushers that poll many streams: the
    /// chunk counts as delivered once [`Engine::confirm`] says so.
    pub fn try_get_key(
        &self,
        ksid: &Uuid,
        index: u32,
        out: &mut [u8],
    ) -> Result<GetKeyReply, GetKeyError> {
        self.get_key_within(ksid, index, crate::key::as_uninit(out), None, false)
    }

    /// The consumer of `ksid` acknowledged these wire indexes (a KMS
    /// answered 201): the ledger records them as delivered.
    pub fn confirm(&self, ksid: &Uuid, indexes: &[u32]) {
        self.shared.lock().confirm(ksid, indexes);
    }

    /// Records whether `ksid` is pushed to its KMS (a restart resumes it).
    pub fn set_pushing(&self, ksid: &Uuid, pushing: bool) {
        self.shared.lock().set_pushing(ksid, pushing);
    }

    /// Streams that were being pushed when the node last stopped: KSID,
    /// URI to push to, QoS, and the wire index to resume at.
    pub fn pushing_streams(&self) -> Vec<(Uuid, String, Qos, u32)> {
        self.shared.lock().pushing_streams()
    }

    /// True when this node knows stream `ksid` (opened here or announced by
    /// the peer); waits for no one.
    pub fn knows(&self, ksid: &Uuid) -> bool {
        let mut node = self.shared.lock();
        // The announcement may be waiting in the inbox.
        self.shared.drain_inbox(&mut node, Instant::now());
        node.knows(ksid)
    }

    /// The QoS of stream `ksid` when it is open on this node.
    pub fn stream_qos(&self, ksid: &Uuid) -> Result<Qos, GetKeyError> {
        self.shared.lock().open_qos(ksid)
    }

    /// GET_KEY of chunk `index` of `ksid` into `out`: `may_wait` waits at
    /// most the stream's timeout for key (and the chunk counts as
    /// delivered at once), else it answers at once (and the chunk counts
    /// once [`Engine::confirm`] says so).
    fn get_key_within(
        &self,
        ksid: &Uuid,
        index: u32,
        out: &mut [MaybeUninit<u8>],
        metadata_capacity: Option<usize>,
        may_wait: bool,
    ) -> Result<GetKeyReply, GetKeyError> {
        let request = KeyRequest {
            ksid,
            index,
            metadata_capacity,
            confirmed: may_wait,
        };
        let start = Instant::now();
        let mut now = start;
        let mut node = self.shared.lock();
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Ok(GetKeyReply::Status(Status::NoQkdConnection));
            }
            let link_ok = self.shared.link_ok();
            let attempt = node.get_key(now, request, out, link_ok);
            self.shared.flush(&mut node);
            // What to answer if the wait ends empty-handed.
            let (now_answer, late_answer) = match attempt? {
                Attempt::Reply(reply) => return Ok(reply),
                Attempt::NeedPeer => (
                    Status::PeerNotConnectedGetKey,
                    Status::PeerNotConnectedGetKey,
                ),
                Attempt::NeedKey => (Status::InsufficientKey, Status::Timeout),
            };
            if self
                .shared
                .drain_inbox(&mut node, now)
                .is_some_and(|n| n > 0)
            {
                continue; // the peer's messages may have brought what was missing
            }
            if !self.shared.link_ok() {
                return Ok(GetKeyReply::Status(Status::NoQkdConnection));
            }
            let timeout = match may_wait {
                true => Duration::from_millis(u64::from(node.stream_timeout_ms(ksid).unwrap_or(0))),
                false => Duration::ZERO,
            };
            if timeout.is_zero() {
                return Ok(GetKeyReply::Status(now_answer));
            }
            let elapsed = now - start;
            if elapsed >= timeout {
                return Ok(GetKeyReply::Status(late_answer));
            }
            node = self.wait(node, timeout - elapsed);
            now = Instant::now();
        }
    }

    /// CLOSE: stops allocation for `ksid` on this node.
    pub fn close(&self, ksid: &Uuid) -> Result<Status, StreamError> {
        let mut node = self.shared.lock();
        let status = node.close(ksid);
        self.shared.flush(&mut node);
        status
    }
}
