//! One node of a QKD link: the sans-IO stream manager.
//!
//! A [`Node`] is a plain state machine. Its inputs are API calls
//! (`open_connect`, `get_key`, `close`), link-sync messages from the peer
//! node, the key ring (an in-memory queue of device blocks) and the current
//! time; its outputs are replies and link-sync messages in its outbox. It
//! never blocks, sleeps or touches a socket: the [`super::Engine`] (and
//! later the HTTP server) drives it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;
use zeroize::Zeroizing;

use super::link::{LinkMsg, Role};
use super::qos::{Qos, QosLimits, negotiate};
use super::stream::{Side, Stream};
use super::{GetKeyError, GetKeyReply, Metadata, OpenReply, Status, StreamError};
use crate::key::{DeviceBlock, KeyCounters, RingConsumer, Stamp};

/// Result of one non-blocking `get_key` attempt.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// A final answer.
    Reply(GetKeyReply),
    /// The key is not here yet (ring empty, or the leader's lease pending).
    NeedKey,
    /// The peer side has not opened the stream yet.
    NeedPeer,
}

/// The stream manager of one node.
#[derive(Debug)]
pub struct Node {
    role: Role,
    block_size: u64,
    limits: QosLimits,
    counters: Arc<KeyCounters>,
    streams: HashMap<Uuid, Stream>,
    /// Follower: leases received, in block-id order, whose block has not
    /// come out of the ring yet.
    pending_leases: VecDeque<(Uuid, u64, u64)>,
    /// Follower: a block taken from the ring ahead of its lease.
    spare: Option<DeviceBlock>,
    /// Leader: the follower's lease requests not served yet.
    lease_requests: VecDeque<(Uuid, u64)>,
    outbox: Vec<LinkMsg>,
    /// Blocks from this node's device, in id order.
    ring: RingConsumer,
}

impl Node {
    /// A node with `role` on its link, device blocks of `block_size` bytes
    /// arriving through `ring`.
    pub fn new(
        role: Role,
        block_size: usize,
        limits: QosLimits,
        counters: Arc<KeyCounters>,
        ring: RingConsumer,
    ) -> Self {
        Self {
            role,
            block_size: block_size as u64,
            limits,
            counters,
            streams: HashMap::new(),
            pending_leases: VecDeque::new(),
            spare: None,
            lease_requests: VecDeque::new(),
            outbox: Vec::new(),
            ring,
        }
    }

    /// Messages for the peer node produced since the last call.
    pub fn take_outbox(&mut self) -> Vec<LinkMsg> {
        std::mem::take(&mut self.outbox)
    }

    /// True when work waits on key from the ring (a background tick helps).
    pub fn has_pending(&self) -> bool {
        !self.pending_leases.is_empty() || !self.lease_requests.is_empty()
    }

    /// Blocks waiting in this node's ring, and its capacity.
    pub fn ring_fill(&self) -> (usize, usize) {
        (self.ring.len(), self.ring.capacity())
    }

    /// Number of streams known to this node.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The `timeout` (ms) of stream `ksid`, if this node knows it.
    pub fn stream_timeout_ms(&self, ksid: &Uuid) -> Option<u32> {
        self.streams.get(ksid).map(|s| s.qos.timeout)
    }

    /// True when this node knows stream `ksid` (opened here or announced
    /// by the peer).
    pub fn knows(&self, ksid: &Uuid) -> bool {
        self.streams.contains_key(ksid)
    }

    /// Leader only: takes the next device block for this node's own use
    /// (KMS entropy), outside every stream. The follower skips the same
    /// block on its side (it drops blocks no lease names), so this key is
    /// never delivered to any stream on either node. `None` on the follower
    /// or when the ring is empty.
    pub fn take_local_block(&mut self) -> Option<Zeroizing<Vec<u8>>> {
        if self.role != Role::Leader {
            return None;
        }
        let block = self.ring.pop()?;
        self.counters.consumed(1);
        Some(Zeroizing::new(block.key.bytes().to_vec()))
    }

    /// The QoS of `ksid` when it is open on this node.
    pub fn open_qos(&self, ksid: &Uuid) -> Result<Qos, GetKeyError> {
        match self.streams.get(ksid) {
            Some(s) if s.local == Side::Open && s.conflict => Err(GetKeyError::QosConflict),
            Some(s) if s.local == Side::Open => Ok(s.qos.clone()),
            _ => Err(GetKeyError::UnknownStream),
        }
    }

    /// The QoS limits of this node.
    pub fn limits(&self) -> &QosLimits {
        &self.limits
    }

    /// OPEN_CONNECT. `link_ok` is false when the device or the peer node is
    /// down (status 4, nothing created).
    pub fn open_connect(
        &mut self,
        source: &str,
        destination: &str,
        qos: &Qos,
        ksid: Option<Uuid>,
        link_ok: bool,
    ) -> OpenReply {
        let ksid = ksid.filter(|k| !k.is_nil());
        let reply = |status, ksid, qos| OpenReply { status, ksid, qos };
        if !link_ok {
            return reply(Status::NoQkdConnection, ksid, qos.clone());
        }
        if let Some(stream) = ksid.and_then(|k| self.streams.get_mut(&k)) {
            if stream.local != Side::Absent {
                return reply(Status::KsidInUse, ksid, qos.clone());
            }
            // The peer opened it first: this side inherits its QoS.
            stream.local = Side::Open;
            let status = if stream.peer == Side::Open {
                Status::Successful
            } else {
                Status::PeerNotConnected
            };
            let msg = open_msg(ksid.expect("present"), stream);
            let qos = stream.qos.clone();
            self.outbox.push(msg);
            return reply(status, ksid, qos);
        }
        let qos = match negotiate(qos, &self.limits) {
            Ok(qos) => qos,
            Err(counter) => return reply(Status::QosNotMet, ksid, counter),
        };
        let ksid = ksid.unwrap_or_else(Uuid::new_v4);
        let mut stream = Stream::new(qos.clone(), source, destination);
        stream.local = Side::Open;
        self.outbox.push(open_msg(ksid, &stream));
        self.streams.insert(ksid, stream);
        reply(Status::PeerNotConnected, Some(ksid), qos)
    }

    /// One non-blocking GET_KEY attempt for wire `index`, writing the chunk
    /// into `out`. `metadata_capacity` is the caller's metadata buffer size
    /// (`None`: no metadata wanted).
    pub(crate) fn get_key(
        &mut self,
        now: Instant,
        ksid: &Uuid,
        index: u32,
        out: &mut [u8],
        metadata_capacity: Option<usize>,
    ) -> Result<Attempt, GetKeyError> {
        if self.role == Role::Follower {
            self.pump_leases(now);
        }
        let block_size = self.block_size;
        let stream = self
            .streams
            .get_mut(ksid)
            .ok_or(GetKeyError::UnknownStream)?;
        if stream.local != Side::Open {
            return Err(GetKeyError::UnknownStream);
        }
        if stream.conflict {
            return Err(GetKeyError::QosConflict);
        }
        let chunk = stream.qos.key_chunk_size as usize;
        if out.len() < chunk {
            return Err(GetKeyError::BufferTooSmall { needed: chunk });
        }
        if stream.peer == Side::Absent {
            return Ok(Attempt::NeedPeer);
        }
        let a = stream.absolute(index);
        if stream.delivered.contains(a) {
            return Err(GetKeyError::Consumed);
        }
        // First pass: what of the chunk is here, gone, or missing.
        let mut missing = 0;
        for sb in stream.blocks_of(a, block_size) {
            if let Some(held) = stream.held.get(&sb) {
                if held.expires <= now {
                    stream.held.remove(&sb);
                    self.counters.expired(1);
                    return Err(GetKeyError::Consumed);
                }
            } else if stream.assigned.contains(sb) {
                // Assigned to this node once, and since released or expired.
                return Err(GetKeyError::Consumed);
            } else if !stream.allocating() {
                let status = Status::PeerNotConnectedGetKey;
                return Ok(Attempt::Reply(GetKeyReply::Status(status)));
            } else {
                missing += 1;
            }
        }
        // Second pass: get the missing blocks, all or none, so streams
        // waiting for key never each hold part of what they need.
        if missing > 0 {
            if self.role == Role::Leader && self.ring.len() < missing {
                return Ok(Attempt::NeedKey);
            }
            for sb in stream.blocks_of(a, block_size) {
                if stream.held.contains_key(&sb) {
                    continue;
                }
                match self.role {
                    Role::Leader => {
                        // Only this node pops its ring: the blocks counted
                        // above are there.
                        let assigned = assign(
                            ksid,
                            stream,
                            sb,
                            now,
                            &mut self.ring,
                            &self.counters,
                            &mut self.outbox,
                        );
                        debug_assert!(assigned);
                    }
                    Role::Follower => {
                        if stream.requested.insert(sb) {
                            self.outbox.push(LinkMsg::LeaseRequest {
                                ksid: *ksid,
                                stream_block: sb,
                            });
                        }
                    }
                }
            }
            if self.role == Role::Follower {
                return Ok(Attempt::NeedKey);
            }
        }
        let metadata = match metadata_capacity {
            None => None,
            Some(capacity) => {
                let oldest = stream
                    .blocks_of(a, block_size)
                    .filter_map(|sb| stream.held.get(&sb))
                    .map(|h| h.born)
                    .min();
                let metadata =
                    Metadata::new(oldest.map_or(Duration::ZERO, |b| b.until(Stamp::at(now))));
                if capacity < metadata.len() {
                    return Ok(Attempt::Reply(GetKeyReply::MetadataTooSmall {
                        needed: metadata.len(),
                    }));
                }
                Some(metadata)
            }
        };
        stream.take_chunk(a, block_size, &mut out[..chunk]);
        Ok(Attempt::Reply(GetKeyReply::Key { index, metadata }))
    }

    /// CLOSE: no new key for the stream; this node's undelivered key of it
    /// is zeroized now (the peer keeps its own copy for its application
    /// until it closes or the TTL ends).
    pub fn close(&mut self, ksid: &Uuid) -> Result<Status, StreamError> {
        let stream = self
            .streams
            .get_mut(ksid)
            .filter(|s| s.local == Side::Open)
            .ok_or(StreamError::UnknownStream)?;
        stream.local = Side::Closed;
        let dropped = std::mem::take(&mut stream.held).len() as u64;
        self.counters.expired(dropped);
        self.outbox.push(LinkMsg::Close { ksid: *ksid });
        self.forget_if_finished(ksid);
        Ok(Status::Successful)
    }

    /// Applies a message from the peer node.
    pub fn handle(&mut self, now: Instant, msg: LinkMsg) {
        match msg {
            LinkMsg::Open {
                ksid,
                qos,
                source,
                destination,
            } => {
                let stream = self
                    .streams
                    .entry(ksid)
                    .or_insert_with(|| Stream::new(qos.clone(), &source, &destination));
                stream.peer = Side::Open;
                if stream.local == Side::Absent {
                    stream.qos = qos; // not told to an application yet: take the peer's
                } else if stream.qos.key_chunk_size != qos.key_chunk_size {
                    // Both sides opened this KSID on their own, with different
                    // chunk sizes: their keys cannot line up. Both detect it.
                    tracing::warn!(%ksid, "both sides opened the stream with different key_chunk_size");
                    stream.conflict = true;
                }
            }
            LinkMsg::Close { ksid } => {
                if let Some(stream) = self.streams.get_mut(&ksid) {
                    stream.peer = Side::Closed;
                    stream.requested.clear();
                    self.forget_if_finished(&ksid);
                }
            }
            LinkMsg::Lease {
                ksid,
                stream_block,
                block_id,
            } => {
                if let Some(stream) = self.streams.get_mut(&ksid) {
                    // On its way: the block comes out of this node's ring.
                    stream.requested.insert(stream_block);
                }
                self.pending_leases
                    .push_back((ksid, stream_block, block_id));
                self.pump_leases(now);
            }
            LinkMsg::LeaseRequest { ksid, stream_block } => {
                self.lease_requests.push_back((ksid, stream_block));
                self.serve_requests(now);
            }
            LinkMsg::LeaseRefused { ksid, stream_block } => {
                if let Some(stream) = self.streams.get_mut(&ksid) {
                    stream.requested.remove(&stream_block);
                    stream.refused = true;
                }
            }
        }
    }

    /// Background work: serve waiting lease requests or leases from the
    /// ring, and zeroize key whose TTL ended.
    pub fn tick(&mut self, now: Instant) {
        match self.role {
            Role::Leader => self.serve_requests(now),
            Role::Follower => self.pump_leases(now),
        }
        let expired: u64 = self.streams.values_mut().map(|s| s.expire(now)).sum();
        self.counters.expired(expired);
    }

    /// Leader: assigns blocks for the follower's requests, in order, while
    /// the ring has blocks.
    fn serve_requests(&mut self, now: Instant) {
        while let Some(&(ksid, sb)) = self.lease_requests.front() {
            match self.streams.get_mut(&ksid) {
                Some(stream) if stream.assigned.contains(sb) => {}
                Some(stream) if stream.allocating() => {
                    if !assign(
                        &ksid,
                        stream,
                        sb,
                        now,
                        &mut self.ring,
                        &self.counters,
                        &mut self.outbox,
                    ) {
                        return;
                    }
                }
                _ => self.outbox.push(LinkMsg::LeaseRefused {
                    ksid,
                    stream_block: sb,
                }),
            }
            self.lease_requests.pop_front();
        }
    }

    /// Follower: matches received leases with blocks from the ring, which
    /// come in the same id order. Blocks the leader skipped are discarded;
    /// a lease whose block this node no longer has is lost (its chunks are
    /// refused as consumed).
    fn pump_leases(&mut self, now: Instant) {
        while let Some(&(ksid, sb, id)) = self.pending_leases.front() {
            let Some(block) = self.spare.take().or_else(|| self.ring.pop()) else {
                return;
            };
            if block.id < id {
                self.counters.consumed(1);
                continue; // dropped: zeroized
            }
            self.pending_leases.pop_front();
            let mut stream = self.streams.get_mut(&ksid);
            if let Some(stream) = stream.as_deref_mut() {
                stream.requested.remove(&sb);
                stream.assigned.insert(sb);
            }
            if block.id > id {
                tracing::warn!(
                    block_id = id,
                    "leased block missing on this node; its chunks are lost"
                );
                self.spare = Some(block);
                continue;
            }
            self.counters.consumed(1);
            match stream.filter(|s| s.local != Side::Closed) {
                Some(stream) => stream.hold(sb, block, now),
                None => self.counters.expired(1),
            }
        }
    }

    fn forget_if_finished(&mut self, ksid: &Uuid) {
        if self.streams.get(ksid).is_some_and(Stream::finished)
            && let Some(stream) = self.streams.remove(ksid)
        {
            self.counters.expired(stream.held.len() as u64);
        }
    }
}

/// Leader: takes the next ring block for stream block `sb` and tells the
/// follower. False when the ring is empty.
fn assign(
    ksid: &Uuid,
    stream: &mut Stream,
    sb: u64,
    now: Instant,
    ring: &mut RingConsumer,
    counters: &KeyCounters,
    outbox: &mut Vec<LinkMsg>,
) -> bool {
    let Some(block) = ring.pop() else {
        return false;
    };
    counters.consumed(1);
    outbox.push(LinkMsg::Lease {
        ksid: *ksid,
        stream_block: sb,
        block_id: block.id,
    });
    stream.assigned.insert(sb);
    stream.hold(sb, block, now);
    true
}

fn open_msg(ksid: Uuid, stream: &Stream) -> LinkMsg {
    LinkMsg::Open {
        ksid,
        qos: stream.qos.clone(),
        source: stream.source.clone(),
        destination: stream.destination.clone(),
    }
}

impl Metadata {
    /// `{"age_ms":N,"hops":0}` for key of that age.
    pub(crate) fn new(age: Duration) -> Self {
        let mut m = Metadata {
            buf: [0; 48],
            len: 0,
        };
        let mut w = &mut m.buf[..];
        let _ = std::io::Write::write_fmt(
            &mut w,
            format_args!(
                "{{\"age_ms\":{},\"hops\":0}}",
                age.as_millis().min(u128::from(u64::MAX))
            ),
        );
        m.len = (48 - w.len()) as u8;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QosLimits = QosLimits {
        max_key_chunk_size: 1024,
        link_rate_bps: 0,
        max_timeout_ms: 1000,
        default_ttl_s: 60,
        max_ttl_s: 60,
    };

    fn node(role: Role) -> (Node, crate::key::RingProducer) {
        let (tx, rx) = crate::key::ring(8);
        (
            Node::new(role, 64, LIMITS, Arc::new(KeyCounters::default()), rx),
            tx,
        )
    }

    fn deliver(from: &mut Node, to: &mut Node) {
        for msg in from.take_outbox() {
            to.handle(Instant::now(), msg);
        }
    }

    #[test]
    fn independent_opens_with_different_chunk_sizes_are_a_conflict_on_both_sides() {
        let ((mut a, _), (mut b, _)) = (node(Role::Leader), node(Role::Follower));
        let ksid = Uuid::new_v4();
        let qos = |c| Qos {
            key_chunk_size: c,
            ..Qos::default()
        };
        assert_eq!(
            a.open_connect("s", "d", &qos(32), Some(ksid), true).status,
            Status::PeerNotConnected
        );
        assert_eq!(
            b.open_connect("s", "d", &qos(64), Some(ksid), true).status,
            Status::PeerNotConnected
        );
        deliver(&mut a, &mut b);
        deliver(&mut b, &mut a);
        let mut out = [0u8; 64];
        for n in [&mut a, &mut b] {
            let got = n.get_key(Instant::now(), &ksid, 0, &mut out, None);
            assert!(matches!(got, Err(GetKeyError::QosConflict)), "{got:?}");
        }
        assert_eq!(out, [0u8; 64]);
        // Equal chunk sizes opened independently are fine.
        let other = Uuid::new_v4();
        a.open_connect("s", "d", &qos(32), Some(other), true);
        b.open_connect("s", "d", &qos(32), Some(other), true);
        deliver(&mut a, &mut b);
        deliver(&mut b, &mut a);
        let got = a.get_key(Instant::now(), &other, 0, &mut out, None);
        assert!(matches!(got, Ok(Attempt::NeedKey)), "{got:?}");
    }

    #[test]
    fn a_chunk_reserves_all_its_blocks_or_none() {
        let ((mut a, mut ring), (mut b, _)) = (node(Role::Leader), node(Role::Follower));
        let arena = crate::key::KeyArena::new(64, 8).unwrap();
        let mut push = |id| {
            ring.push(DeviceBlock {
                id,
                born: Stamp::now(),
                key: arena.alloc().unwrap(),
            })
            .unwrap()
        };
        let qos = Qos {
            key_chunk_size: 256,
            ..Qos::default()
        }; // 4 blocks of 64
        let ksid = a.open_connect("s", "d", &qos, None, true).ksid.unwrap();
        deliver(&mut a, &mut b);
        b.open_connect("s", "d", &qos, Some(ksid), true);
        deliver(&mut b, &mut a);
        (0..3).for_each(&mut push);
        let mut out = [0u8; 256];
        let got = a.get_key(Instant::now(), &ksid, 0, &mut out, None);
        assert!(matches!(got, Ok(Attempt::NeedKey)), "{got:?}");
        assert_eq!(
            a.ring_fill().0,
            3,
            "no block taken while the chunk cannot be whole"
        );
        push(3);
        let got = a.get_key(Instant::now(), &ksid, 0, &mut out, None);
        assert!(
            matches!(got, Ok(Attempt::Reply(GetKeyReply::Key { index: 0, .. }))),
            "{got:?}"
        );
        assert_eq!(a.ring_fill().0, 0);
        assert_eq!(
            arena.free_slots(),
            8,
            "all four blocks released once the chunk is delivered"
        );
    }
}
