//! A stream's life on one node: OPEN_CONNECT, the peer's announcement of
//! it (and the QoS this node takes from it), CLOSE here or by the peer, a
//! stream stopped for good, and when a finished stream is forgotten.

use std::time::Instant;

use uuid::Uuid;

use super::Node;
use crate::qkd::link::{LinkMsg, Role};
use crate::qkd::qos::{Qos, QosLimits, negotiate};
use crate::qkd::stream::{Side, Stream};
use crate::qkd::{GetKeyError, OpenReply, Status, StreamError};

/// Longest source or destination URI accepted (bytes).
pub const MAX_URI_LEN: usize = 2048;

impl Node {
    /// The QoS of `ksid` when it is open on this node.
    pub fn open_qos(&self, ksid: &Uuid) -> Result<Qos, GetKeyError> {
        match self.streams.get(ksid) {
            Some(s) if s.issuer.is_some() => Err(GetKeyError::UnknownStream),
            Some(s) if s.local == Side::Open && s.conflict => Err(GetKeyError::QosConflict),
            Some(s) if s.local == Side::Open && s.failed => Err(GetKeyError::StreamFailed),
            Some(s) if s.local == Side::Open => Ok(s.qos.clone()),
            _ => Err(GetKeyError::UnknownStream),
        }
    }

    /// OPEN_CONNECT. `link_ok` is false when the device or the peer node is
    /// down (status 4, nothing created).
    pub fn open_connect(
        &mut self,
        now: Instant,
        source: &str,
        destination: &str,
        qos: &Qos,
        ksid: Option<Uuid>,
        link_ok: bool,
    ) -> OpenReply {
        let ksid = ksid.filter(|k| !k.is_nil());
        let reply = |status, ksid, qos| OpenReply {
            status,
            ksid,
            qos,
            detail: None,
        };
        if !link_ok {
            return reply(Status::NoQkdConnection, ksid, qos.clone());
        }
        if let Some(stream) = ksid.and_then(|k| self.streams.get_mut(&k)) {
            if stream.local != Side::Absent || stream.issuer.is_some() {
                return reply(Status::KsidInUse, ksid, qos.clone());
            }
            if stream.qos_refused {
                // The peer's QoS is beyond this node: say what it can do.
                let counter = negotiate(&stream.qos, &self.limits).unwrap_or_else(|c| c);
                return reply(Status::QosNotMet, ksid, counter);
            }
            // The peer opened it first: this side inherits its QoS.
            stream.local = Side::Open;
            stream.last_active = now;
            let status = if stream.peer == Side::Open {
                Status::Successful
            } else {
                Status::PeerNotConnected
            };
            let k = ksid.expect("present");
            let msg = open_msg(k, stream);
            let qos = stream.qos.clone();
            self.outbox.push(msg);
            self.reservations.touch(k);
            return reply(status, ksid, qos);
        }
        let opened_here = self.streams.values().filter(|s| s.created_here).count();
        if opened_here >= self.tuning.max_streams {
            let mut r = reply(Status::NoQkdConnection, ksid, qos.clone());
            r.detail = Some("this node has max_streams key streams open: close one first");
            return r;
        }
        let qos = match negotiate(qos, &self.limits) {
            Ok(qos) => qos,
            Err(counter) => return reply(Status::QosNotMet, ksid, counter),
        };
        let ksid = ksid.unwrap_or_else(Uuid::new_v4);
        let mut stream = Stream::new(qos.clone(), source, destination, true, now);
        stream.local = Side::Open;
        self.outbox.push(open_msg(ksid, &stream));
        self.streams.insert(ksid, stream);
        if self.role == Role::Follower {
            self.grant_credit(ksid, 0);
        }
        self.reservations.touch(ksid);
        reply(Status::PeerNotConnected, Some(ksid), qos)
    }

    /// CLOSE: no new key for the stream; this node's undelivered key of it
    /// is zeroized now (the peer keeps its own copy for its application
    /// until it closes or the TTL ends).
    pub fn close(&mut self, ksid: &Uuid) -> Result<Status, StreamError> {
        if !self
            .streams
            .get(ksid)
            .is_some_and(|s| s.local == Side::Open && s.issuer.is_none())
        {
            return Err(StreamError::UnknownStream);
        }
        self.close_local(*ksid);
        Ok(Status::Successful)
    }

    /// Closes this node's side of `ksid` (CLOSE, or idle): what it holds
    /// is zeroized and the peer is told.
    pub(super) fn close_local(&mut self, ksid: Uuid) {
        let Some(stream) = self.streams.get_mut(&ksid) else {
            return;
        };
        stream.local = Side::Closed;
        stream.pushing = false;
        let dropped = std::mem::take(&mut stream.held).len() as u64;
        self.held_total -= dropped;
        self.counters.expired(dropped);
        self.drop_pending(&ksid);
        self.requests.remove(&ksid);
        self.outbox.push(LinkMsg::Close { ksid });
        self.reservations.touch(ksid);
        self.forget_if_finished(&ksid);
    }

    /// The peer opened `ksid` on its side.
    pub(super) fn peer_opened(
        &mut self,
        now: Instant,
        ksid: Uuid,
        qos: Qos,
        source: &str,
        destination: &str,
        issuer: Option<Role>,
    ) {
        if !self.admit_announced(now, ksid, &qos, source, destination, issuer) {
            return;
        }
        let stream = self.streams.get_mut(&ksid).expect("present");
        stream.peer = Side::Open;
        if stream.local == Side::Absent {
            adopt_qos(stream, qos, &self.limits, &ksid);
        } else if stream.qos.key_chunk_size != qos.key_chunk_size || stream.issuer != issuer {
            // Both sides opened this KSID on their own, with different
            // chunk sizes: their keys cannot line up. Both detect it.
            tracing::warn!(%ksid, "both sides opened the stream with different key_chunk_size");
            stream.conflict = true;
        }
        self.reservations.touch(ksid);
        if self.role == Role::Follower {
            self.grant_credit(ksid, 0);
        }
        self.join_directed(ksid);
    }

    /// Creates `ksid` as the peer announced it (an `Open`, or a sync entry)
    /// unless it is known already; false when refused: an over-long URI, or
    /// the peer announced `max_streams` streams already.
    pub(super) fn admit_announced(
        &mut self,
        now: Instant,
        ksid: Uuid,
        qos: &Qos,
        source: &str,
        destination: &str,
        issuer: Option<Role>,
    ) -> bool {
        if source.len() > MAX_URI_LEN || destination.len() > MAX_URI_LEN {
            tracing::warn!(%ksid, "the peer announced a stream with an over-long URI; ignored");
            return false;
        }
        if self.streams.contains_key(&ksid) {
            return true;
        }
        let announced = self.streams.values().filter(|s| !s.created_here).count();
        if announced >= self.tuning.max_streams {
            tracing::warn!(%ksid, "the peer announced more than max_streams streams; this one is ignored");
            return false;
        }
        let mut stream = Stream::new(qos.clone(), source, destination, false, now);
        stream.issuer = issuer;
        self.streams.insert(ksid, stream);
        true
    }

    /// Key confirmation failed for `ksid`: stop it for good on this node,
    /// zeroizing all it holds.
    pub(super) fn fail(&mut self, ksid: Uuid) {
        let Some(stream) = self.streams.get_mut(&ksid) else {
            return;
        };
        stream.failed = true;
        let dropped = std::mem::take(&mut stream.held).len() as u64;
        stream.requested.clear();
        self.held_total -= dropped;
        self.counters.expired(dropped);
        self.drop_pending(&ksid);
        self.requests.remove(&ksid);
        self.reservations.touch(ksid);
    }

    /// Forgets `ksid` once neither side will ask for its key again (what
    /// it still holds is zeroized, the ledger deletes its record).
    pub(super) fn forget_if_finished(&mut self, ksid: &Uuid) {
        if self.streams.get(ksid).is_some_and(Stream::finished)
            && let Some(stream) = self.streams.remove(ksid)
        {
            self.held_total -= stream.held.len() as u64;
            self.counters.expired(stream.held.len() as u64);
            self.drop_pending(ksid);
            self.requests.remove(ksid);
            self.reservations.drop_record(*ksid);
        }
    }
}

/// Takes the peer's QoS for a stream not opened here yet, within this
/// node's limits (a peer asking more than this node gives is flagged).
pub(super) fn adopt_qos(stream: &mut Stream, qos: Qos, limits: &QosLimits, ksid: &Uuid) {
    match negotiate(&qos, limits) {
        Ok(q) => {
            stream.qos = q;
            stream.qos_refused = false;
        }
        Err(_) => {
            tracing::warn!(%ksid, key_chunk_size = qos.key_chunk_size, "the peer's QoS for this stream is beyond this node's limits; it cannot be opened here");
            stream.qos = qos;
            stream.qos_refused = true;
        }
    }
}

/// The `Open` announcing `ksid` to the peer, as this node has it.
pub(super) fn open_msg(ksid: Uuid, stream: &Stream) -> LinkMsg {
    LinkMsg::Open {
        ksid,
        qos: stream.qos.clone(),
        source: stream.source.clone(),
        destination: stream.destination.clone(),
        issuer: stream.issuer,
    }
}
