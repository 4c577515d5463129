//! One node of a QKD link: the sans-IO stream manager.
//!
//! A [`Node`] is a plain state machine. Its inputs are API calls
//! (`open_connect`, `get_key`, `close`), link-sync messages from the peer
//! node, the key ring (an in-memory queue of device blocks) and the current
//! time; its outputs are replies, link-sync messages in its outbox, and
//! stream records for the ledger. It never blocks, sleeps or touches a
//! socket or a file: the [`super::Engine`] drives it.
//!
//! The leader's half (assigning blocks, reservations, answering lease
//! requests) is in `leader.rs`, the follower's (leases, key confirmation,
//! credits) in `follower.rs`, and the session-start reconciliation in
//! `sync.rs`.

mod directed;
mod follower;
mod leader;
mod sync;

pub use directed::DirectedError;
pub(crate) use directed::Issue;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;
use zeroize::Zeroizing;

use super::confirm::ConfirmKeys;
use super::ledger::StreamRecord;
use super::link::{LinkMsg, Role, StreamState};
use super::qos::{Qos, QosLimits, negotiate};
use super::stream::{Side, Stream};
use super::{GetKeyError, GetKeyReply, Metadata, OpenReply, Status, StreamError};
use crate::key::{DeviceBlock, KeyCounters, RingConsumer, Stamp};

/// Longest source or destination URI accepted (bytes).
pub const MAX_URI_LEN: usize = 2048;

/// No stream is longer (bytes of key): stream block numbers from the peer
/// beyond it are refused, so no arithmetic on them can overflow.
const MAX_STREAM_BYTES: u64 = 1 << 62;

/// Result of one non-blocking `get_key` attempt.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// A final answer.
    Reply(GetKeyReply),
    /// The key is not here yet (ring empty, the leader's lease pending,
    /// flow control, or the ledger's reservation being written).
    NeedKey,
    /// The peer side has not opened the stream yet.
    NeedPeer,
}

/// Limits and rhythms of a node beyond the QoS limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Blocks of one stream a node holds (or the leader may lease ahead of
    /// the follower) at most: the flow-control window.
    pub window_blocks: u64,
    /// Streams opened on this node at most (as many again may be announced
    /// by the peer).
    pub max_streams: usize,
    /// A stream nobody used on this node for this long is closed.
    pub idle_timeout: Duration,
    /// Leader: stream blocks reserved in the ledger per write.
    pub reserve_blocks: u64,
    /// Blocks all streams together may hold on this node.
    pub budget_blocks: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            window_blocks: 128,
            max_streams: 1024,
            idle_timeout: Duration::from_secs(3600),
            reserve_blocks: 1024,
            budget_blocks: 256,
        }
    }
}

/// The stream manager of one node.
#[derive(Debug)]
pub struct Node {
    role: Role,
    block_size: u64,
    limits: QosLimits,
    tuning: Tuning,
    counters: Arc<KeyCounters>,
    keys: ConfirmKeys,
    streams: HashMap<Uuid, Stream>,
    outbox: Vec<LinkMsg>,
    /// Blocks from this node's device, in id order.
    ring: RingConsumer,
    /// Device block ids below this are gone from this node (popped, or
    /// spent before a restart).
    next_position: u64,
    /// Blocks held by all streams.
    held_total: u64,
    /// Leader: blocks popped ahead of an assignment (kept until used).
    staged: VecDeque<DeviceBlock>,
    /// Leader: the follower's position; blocks below it are discarded.
    peer_position: u64,
    /// Leader: the follower's lease requests not served yet.
    requests: BTreeMap<Uuid, BTreeSet<u64>>,
    /// Follower: leases received, by device block id, whose block has not
    /// come out of the ring yet: (stream, stream block, check value).
    pending: BTreeMap<u64, (Uuid, u64, u64)>,
    /// Follower: a block taken from the ring ahead of its lease.
    spare: Option<DeviceBlock>,
    /// A sync from the peer being received.
    sync_in: Option<(u64, Vec<StreamState>)>,
    /// The device should move forward to this position.
    skip: Option<u64>,
    /// This node's ledger was reset and has not completed a session since:
    /// it adopts the peer's device position when that is ahead.
    adopt: bool,
    /// Leader: this node's ledger was reset and no sync from the follower
    /// was applied since: the streams the follower lists are pre-reset.
    was_reset: bool,
    /// The first sync after a reset was applied / is in the records the
    /// ledger writer took: once they are durable the reset is over.
    reset_synced: bool,
    reset_in_records: bool,
    /// Streams changed since the ledger last took them.
    dirty: HashSet<Uuid>,
    /// Streams forgotten since the ledger last took them.
    removed: Vec<Uuid>,
    /// A stream waits for its ledger reservation.
    urgent: bool,
    /// Reused by `get_key` for the blocks a chunk misses.
    scratch: Vec<u64>,
}

impl Node {
    /// A node with `role` on its link, device blocks of `block_size` bytes
    /// arriving through `ring` (the first with an id of at least
    /// `position`), resuming the streams the ledger recorded.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        role: Role,
        block_size: usize,
        limits: QosLimits,
        tuning: Tuning,
        counters: Arc<KeyCounters>,
        ring: RingConsumer,
        keys: ConfirmKeys,
        position: u64,
        records: &[StreamRecord],
        now: Instant,
    ) -> Self {
        let mut streams = HashMap::new();
        for r in records {
            let s = Stream::restore(r, role, block_size as u64, now);
            if !s.finished() {
                streams.insert(r.ksid, s);
            }
        }
        Self {
            role,
            block_size: block_size as u64,
            limits,
            tuning,
            counters,
            keys,
            streams,
            outbox: Vec::new(),
            ring,
            next_position: position,
            held_total: 0,
            staged: VecDeque::new(),
            peer_position: 0,
            requests: BTreeMap::new(),
            pending: BTreeMap::new(),
            spare: None,
            sync_in: None,
            skip: None,
            adopt: false,
            was_reset: false,
            reset_synced: false,
            reset_in_records: false,
            dirty: HashSet::new(),
            removed: Vec::new(),
            urgent: false,
            scratch: Vec::new(),
        }
    }

    /// Messages for the peer node produced since the last call.
    pub fn take_outbox(&mut self) -> Vec<LinkMsg> {
        std::mem::take(&mut self.outbox)
    }

    /// True when work waits on key from the ring (a background tick helps).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.requests.values().any(|r| !r.is_empty())
    }

    /// Blocks waiting in this node's ring, and its capacity.
    pub fn ring_fill(&self) -> (usize, usize) {
        (self.ring.len(), self.ring.capacity())
    }

    /// Number of streams known to this node.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Blocks held by all streams.
    pub fn held_blocks(&self) -> u64 {
        self.held_total
    }

    /// The lowest device block id this node can still take.
    pub fn position(&self) -> u64 {
        self.next_position
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

    /// Whether this node adopts its peer's device position (its ledger was
    /// reset with `--reset-ledger` and has not completed a session since).
    pub fn set_adopt(&mut self, adopt: bool) {
        self.adopt = adopt;
    }

    /// Whether this node's ledger was reset (`--reset-ledger`) and its
    /// first sync since is not durable yet. A leader then stops for good
    /// every stream the follower's first sync lists that this node has no
    /// record of: the forgotten process may have handed out key of it that
    /// the follower never heard of, so no index of it is given again.
    pub fn set_was_reset(&mut self, was_reset: bool) {
        self.was_reset = was_reset;
    }

    /// True once (after a reset) when the first sync's outcome is durable:
    /// the ledger's reset mark can go.
    pub(crate) fn reset_committed(&mut self) -> bool {
        std::mem::take(&mut self.reset_in_records)
    }

    /// The peer's device is at `position` (from its hello or sync). A node
    /// with a new ledger moves past it at once: its own device, its ring
    /// (blocks below are discarded as they come out) and, on the follower,
    /// the leases waiting for such blocks (lost, on both nodes). So a node
    /// whose ledger was lost never takes a block the link may have used.
    pub fn adopt_position(&mut self, position: u64) {
        if !self.adopt || position <= self.next_position {
            return;
        }
        tracing::info!(
            from = self.next_position,
            to = position,
            "new key ledger: this node's device moves to the peer's position"
        );
        self.next_position = position;
        self.skip = Some(position);
        match self.role {
            Role::Leader => {
                self.peer_position = self.peer_position.max(position);
                let before = self.staged.len();
                self.staged.retain(|b| b.id >= position);
                self.counters.consumed((before - self.staged.len()) as u64);
            }
            Role::Follower => self.drop_leases_below(position),
        }
    }

    /// The device should skip forward to this position (taken once).
    pub fn take_skip(&mut self) -> Option<u64> {
        self.skip.take()
    }

    /// Leader only: takes the next device block for this node's own use
    /// (KMS entropy), outside every stream. The follower skips the same
    /// block on its side (it drops blocks no lease names), so this key is
    /// never delivered to any stream on either node. `None` on the follower
    /// or when the ring is empty.
    pub fn take_local_block(&mut self) -> Option<Zeroizing<Vec<u8>>> {
        if self.role != Role::Leader || !self.gather(1) {
            return None;
        }
        let block = self.staged.pop_front()?;
        self.counters.consumed(1);
        Some(Zeroizing::new(block.key.bytes().to_vec()))
    }

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

    /// The QoS limits of this node.
    pub fn limits(&self) -> &QosLimits {
        &self.limits
    }

    fn touch(&mut self, ksid: Uuid) {
        self.dirty.insert(ksid);
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
            self.touch(k);
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
        self.touch(ksid);
        reply(Status::PeerNotConnected, Some(ksid), qos)
    }

    /// One non-blocking GET_KEY attempt for wire `index`, writing the chunk
    /// into `out`. `metadata_capacity` is the caller's metadata buffer size
    /// (`None`: no metadata wanted). `confirmed`: the caller has the chunk
    /// once this returns (a pusher confirms later, see [`Node::confirm`]).
    /// `link_ok`: false pauses delivery (a node cut off from its peer
    /// cannot tell whether the peer still delivers the same key).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn get_key(
        &mut self,
        now: Instant,
        ksid: &Uuid,
        index: u32,
        out: &mut [std::mem::MaybeUninit<u8>],
        metadata_capacity: Option<usize>,
        confirmed: bool,
        link_ok: bool,
    ) -> Result<Attempt, GetKeyError> {
        if self.role == Role::Follower {
            self.pump_leases(now);
        }
        let block_size = self.block_size;
        let role = self.role;
        let stream = self
            .streams
            .get_mut(ksid)
            .ok_or(GetKeyError::UnknownStream)?;
        if stream.local != Side::Open || stream.issuer.is_some() {
            return Err(GetKeyError::UnknownStream);
        }
        if stream.conflict {
            return Err(GetKeyError::QosConflict);
        }
        if stream.failed {
            return Err(GetKeyError::StreamFailed);
        }
        let chunk = stream.chunk_size() as usize;
        if out.len() < chunk {
            return Err(GetKeyError::BufferTooSmall { needed: chunk });
        }
        if stream.peer == Side::Absent {
            return Ok(Attempt::NeedPeer);
        }
        stream.last_active = now;
        let c = stream.absolute(index);
        if stream.done.contains(c) {
            return Err(GetKeyError::Consumed);
        }
        // Locate: what of the chunk is here, gone, awaited or missing.
        let mut missing = std::mem::take(&mut self.scratch);
        missing.clear();
        let mut awaited = false;
        let mut gone = false;
        for sb in stream.blocks_of(c, block_size) {
            if let Some(held) = stream.held.get(&sb) {
                gone |= held.expires <= now;
            } else if role == Role::Follower
                && (stream.pending.contains(&sb) || stream.requested.contains(&sb))
            {
                awaited = true;
            } else if stream.assigned.contains(sb)
                || (role == Role::Follower && sb < stream.floor && !stream.peer_held.contains(sb))
            {
                // Assigned once and since released, expired or lost; or
                // below the leader's restart floor: never again.
                gone = true;
            } else {
                missing.push(sb);
            }
        }
        let stream_missing = !missing.is_empty();
        if gone {
            self.scratch = missing;
            let (lost, released) = lose(stream, c, block_size);
            self.note_lost(lost, released);
            self.touch(*ksid);
            return Err(GetKeyError::Consumed);
        }
        if !link_ok {
            self.scratch = missing;
            return Ok(Attempt::Reply(GetKeyReply::Status(Status::NoQkdConnection)));
        }
        if stream_missing {
            if !stream.allocating() {
                self.scratch = missing;
                let status = Status::PeerNotConnectedGetKey;
                return Ok(Attempt::Reply(GetKeyReply::Status(status)));
            }
            let ready = match self.role {
                Role::Leader => self.assign(ksid, &missing, now),
                Role::Follower => {
                    self.request(ksid, &missing);
                    false
                }
            };
            self.scratch = missing;
            if !ready {
                return Ok(Attempt::NeedKey);
            }
        } else if awaited {
            self.scratch = missing;
            return Ok(Attempt::NeedKey);
        } else {
            self.scratch = missing;
        }
        let stream = self.streams.get_mut(ksid).expect("present");
        let metadata = match metadata_capacity {
            None => None,
            Some(capacity) => {
                let oldest = stream
                    .blocks_of(c, block_size)
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
        let released = stream.take_chunk(c, block_size, &mut out[..chunk]);
        if confirmed {
            stream.delivered.insert(c);
        }
        self.held_total -= released;
        self.touch(*ksid);
        if self.role == Role::Follower && released > 0 {
            self.grant_credit(*ksid, 0);
        }
        Ok(Attempt::Reply(GetKeyReply::Key { index, metadata }))
    }

    /// The consumer of `ksid` confirmed these wire indexes (a KMS answered
    /// 201): the ledger records them as delivered.
    pub fn confirm(&mut self, ksid: &Uuid, indexes: &[u32]) {
        if let Some(s) = self.streams.get_mut(ksid) {
            for &i in indexes {
                let c = s.absolute(i);
                if s.taken.contains(c) {
                    s.delivered.insert(c);
                }
            }
            self.dirty.insert(*ksid);
        }
    }

    /// Records whether `ksid` is pushed to its KMS (so a restart resumes
    /// pushing).
    pub fn set_pushing(&mut self, ksid: &Uuid, pushing: bool) {
        if let Some(s) = self.streams.get_mut(ksid)
            && s.pushing != pushing
        {
            s.pushing = pushing;
            self.dirty.insert(*ksid);
        }
    }

    /// What this node knows of stream `ksid`'s KMS URIs: opened here, or
    /// announced by the peer (then as the creating KMS gave them).
    pub fn stream_uris(&self, ksid: &Uuid) -> Option<super::StreamUris> {
        self.streams.get(ksid).map(|s| super::StreamUris {
            source: s.source.clone(),
            destination: s.destination.clone(),
            created_here: s.created_here,
            open_here: s.local == Side::Open,
        })
    }

    /// The URI each stream open here is pushed to (the source on the
    /// creating node, the destination on the other).
    pub fn target_uris(&self) -> Vec<String> {
        self.streams
            .values()
            .filter(|s| s.local == Side::Open && s.issuer.is_none())
            .map(|s| {
                if s.created_here {
                    s.source.clone()
                } else {
                    s.destination.clone()
                }
            })
            .collect()
    }

    /// Streams open here that were being pushed (after a restart): KSID,
    /// the URI to push to, QoS, and the wire index to resume at.
    pub fn pushing_streams(&self) -> Vec<(Uuid, String, Qos, u32)> {
        self.streams
            .iter()
            .filter(|(_, s)| s.local == Side::Open && s.pushing && !s.failed && s.issuer.is_none())
            .map(|(k, s)| {
                let target = if s.created_here {
                    &s.source
                } else {
                    &s.destination
                };
                (*k, target.clone(), s.qos.clone(), resume_index(s) as u32)
            })
            .collect()
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

    fn close_local(&mut self, ksid: Uuid) {
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
        self.touch(ksid);
        self.forget_if_finished(&ksid);
    }

    /// Applies a message from the peer node.
    pub fn handle(&mut self, now: Instant, msg: LinkMsg) {
        if let Some(sb) = msg.stream_block()
            && sb >= MAX_STREAM_BYTES / self.block_size
        {
            tracing::warn!(
                stream_block = sb,
                "link message for a stream block beyond any stream's end ignored"
            );
            return;
        }
        match msg {
            LinkMsg::SyncBegin { position } => self.sync_in = Some((position, Vec::new())),
            LinkMsg::Stream(state) => {
                let cap = 2 * self.tuning.max_streams + 16;
                match &mut self.sync_in {
                    Some((_, states)) if states.len() < cap => states.push(state),
                    Some(_) => {
                        tracing::warn!("sync from the peer lists too many streams; extra ignored")
                    }
                    None => tracing::warn!("stream state outside a sync ignored"),
                }
            }
            LinkMsg::SyncEnd => {
                if let Some((position, states)) = self.sync_in.take() {
                    self.apply_sync(now, position, states);
                }
            }
            LinkMsg::Open {
                ksid,
                qos,
                source,
                destination,
                issuer,
            } => self.peer_opened(now, ksid, qos, &source, &destination, issuer),
            LinkMsg::Close { ksid } => {
                if let Some(stream) = self.streams.get_mut(&ksid) {
                    stream.peer = Side::Closed;
                    stream.requested.clear();
                    self.requests.remove(&ksid);
                    self.touch(ksid);
                    self.forget_if_finished(&ksid);
                }
            }
            LinkMsg::Lease {
                ksid,
                stream_block,
                block_id,
                check,
            } => self.leased(now, ksid, stream_block, block_id, check),
            LinkMsg::LeaseRequest {
                ksid,
                stream_block,
                position,
            } => self.lease_requested(now, ksid, stream_block, position),
            LinkMsg::LeaseRefused { ksid, stream_block } => {
                if let Some(stream) = self.streams.get_mut(&ksid) {
                    stream.requested.remove(&stream_block);
                    stream.refused = true;
                }
            }
            LinkMsg::LeaseLost {
                ksid,
                stream_block,
                delivered,
            } => self.block_lost(ksid, stream_block, &delivered),
            LinkMsg::Credit { ksid, below } => {
                let most = MAX_STREAM_BYTES / self.block_size;
                if let Some(stream) = self.streams.get_mut(&ksid) {
                    stream.credit = stream.credit.max(below.min(most));
                }
                self.serve_requests(now);
            }
            LinkMsg::Held { ksid, stream_block } => self.peer_holds(ksid, stream_block),
            LinkMsg::Mismatch { ksid, stream_block } => {
                tracing::error!(%ksid, stream_block, "the peer node's key confirmation failed for a block of this stream: stream stopped");
                if self.streams.get(&ksid).is_some_and(|s| !s.failed) {
                    self.counters.mismatch();
                }
                self.fail(ksid);
            }
        }
    }

    /// The peer opened `ksid` on its side.
    fn peer_opened(
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
        self.touch(ksid);
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
    fn fail(&mut self, ksid: Uuid) {
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
        self.touch(ksid);
    }

    /// Background work: serve waiting lease requests or leases from the
    /// ring, zeroize key whose TTL ended, close idle streams.
    pub fn tick(&mut self, now: Instant) {
        match self.role {
            Role::Leader => self.serve_requests(now),
            Role::Follower => self.pump_leases(now),
        }
        self.top_up(now);
        let block_size = self.block_size;
        let idle = self.tuning.idle_timeout;
        let mut lost_total = (0, 0);
        let mut idle_streams = Vec::new();
        let mut changed = Vec::new();
        for (ksid, s) in &mut self.streams {
            let (lost, released) = s.expire(now, block_size);
            if lost + released > 0 {
                changed.push(*ksid);
            }
            lost_total.0 += lost;
            lost_total.1 += released;
            if now.duration_since(s.last_active) > idle
                && s.local != Side::Closed
                && s.issuer.is_none()
            {
                idle_streams.push(*ksid);
            }
        }
        self.note_lost(lost_total.0, lost_total.1);
        for ksid in changed {
            self.touch(ksid);
            if self.role == Role::Follower {
                self.grant_credit(ksid, 0);
            }
        }
        for ksid in idle_streams {
            let opened = self
                .streams
                .get(&ksid)
                .is_some_and(|s| s.local == Side::Open);
            tracing::info!(%ksid, idle_s = idle.as_secs(), "stream unused for too long: closed on this node");
            if opened {
                self.close_local(ksid);
            } else if let Some(s) = self.streams.remove(&ksid) {
                // Announced by the peer and never opened here.
                self.held_total -= s.held.len() as u64;
                self.counters.expired(s.held.len() as u64);
                self.drop_pending(&ksid);
                self.requests.remove(&ksid);
                self.removed.push(ksid);
            }
        }
    }

    /// Counts chunks lost and blocks released by them.
    fn note_lost(&mut self, lost: u64, released: u64) {
        self.counters.lost(lost);
        self.counters.expired(released);
        self.held_total -= released;
    }

    fn forget_if_finished(&mut self, ksid: &Uuid) {
        if self.streams.get(ksid).is_some_and(Stream::finished)
            && let Some(stream) = self.streams.remove(ksid)
        {
            self.held_total -= stream.held.len() as u64;
            self.counters.expired(stream.held.len() as u64);
            self.drop_pending(ksid);
            self.requests.remove(ksid);
            self.removed.push(*ksid);
        }
    }

    /// Streams changed since the last call, as ledger records, and the
    /// KSIDs forgotten.
    pub(crate) fn take_records(&mut self) -> (Vec<StreamRecord>, Vec<Uuid>) {
        // Whatever is asked for after this waits for the next write.
        self.urgent = false;
        self.reset_in_records |= std::mem::take(&mut self.reset_synced);
        let records = self
            .dirty
            .drain()
            .filter_map(|k| self.streams.get(&k).map(|s| s.record(k)))
            .collect();
        (records, std::mem::take(&mut self.removed))
    }

    /// True when a stream waits for its ledger reservation (the ledger
    /// should write now rather than at its next period).
    pub(crate) fn wants_commit(&self) -> bool {
        self.urgent
    }

    /// The ledger could not write these streams: they are taken again next
    /// time.
    pub(crate) fn redirty(&mut self, ksids: &[Uuid], removed: Vec<Uuid>) {
        self.dirty.extend(ksids.iter().copied());
        self.removed.extend(removed);
    }

    /// The ledger durably holds these records.
    pub(crate) fn committed(&mut self, records: &[StreamRecord]) {
        for r in records {
            if let Some(s) = self.streams.get_mut(&r.ksid) {
                s.durable = s.durable.max(r.reserved);
                if self.role == Role::Follower && s.issuer.is_some() {
                    self.ack_recorded(&r.ksid);
                }
            }
        }
    }

    /// This node's whole view for the peer: sent first in each new session,
    /// and whenever the peer started one.
    pub fn begin_sync(&mut self) {
        if self.role == Role::Follower {
            // Requests of an old session may never have arrived: they are
            // asked again when needed.
            for s in self.streams.values_mut() {
                s.requested.clear();
            }
        }
        self.outbox.push(LinkMsg::SyncBegin {
            position: self.next_position,
        });
        let role = self.role;
        for (k, s) in &self.streams {
            let mut state = s.state(*k, role);
            if role == Role::Leader && s.issuer == Some(Role::Leader) {
                // A leader issuing: nothing below its next key is ever
                // wanted of the follower again (the follower's credit
                // starts from here, even if it restarted and forgot).
                state.floor = state
                    .floor
                    .max(s.next_issue / self.block_size)
                    .max(s.assigned.end());
            }
            self.outbox.push(LinkMsg::Stream(state));
        }
        self.outbox.push(LinkMsg::SyncEnd);
    }
}

/// Marks chunk `c` lost; (chunks lost, blocks released).
fn lose(stream: &mut Stream, c: u64, block_size: u64) -> (u64, u64) {
    match stream.lose_chunk(c, block_size) {
        Some(released) => (1, released),
        None => (0, 0),
    }
}

/// The wire index a restarted pusher resumes at: the first chunk not
/// confirmed, from the start of the run of confirmed chunks the cursor is
/// in (chunks in between that are gone are skipped as the pusher meets
/// them).
fn resume_index(s: &Stream) -> u64 {
    let mut next = s.cursor;
    for (start, end) in s.delivered.iter() {
        if start <= s.cursor && s.cursor < end {
            next = end;
        }
    }
    if s.delivered.is_empty() { 0 } else { next }
}

/// Takes the peer's QoS for a stream not opened here yet, within this
/// node's limits (a peer asking more than this node gives is flagged).
fn adopt_qos(stream: &mut Stream, qos: Qos, limits: &QosLimits, ksid: &Uuid) {
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

fn open_msg(ksid: Uuid, stream: &Stream) -> LinkMsg {
    LinkMsg::Open {
        ksid,
        qos: stream.qos.clone(),
        source: stream.source.clone(),
        destination: stream.destination.clone(),
        issuer: stream.issuer,
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
mod tests;
