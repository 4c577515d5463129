//! One node of a QKD link: the sans-IO stream manager. This file owns the
//! [`Node`] with the state its parts share, its dispatch of the peer's
//! link-sync messages and its background tick.
//!
//! A [`Node`] is a plain state machine. Its inputs are API calls
//! (`open_connect`, `get_key`, `close`, the directed-stream calls),
//! link-sync messages from the peer node, the key ring (an in-memory queue
//! of device blocks) and the current time; its outputs are replies,
//! link-sync messages in its outbox, and stream records for the ledger. It
//! never blocks, sleeps or touches a socket or a file: the
//! [`super::Engine`] drives it.
//!
//! Beside this file: a stream's life (open, announce, close) in
//! `lifecycle.rs`, GET_KEY in `get_key.rs`, what push mode needs in
//! `pushing.rs`, directed streams in `directed.rs`, the leader's half
//! (assigning blocks, answering lease requests) in `leader.rs`, the
//! follower's (leases, key confirmation, credits) in `follower.rs`, what
//! the ledger must record next (stream records, reservations) in
//! `reservations.rs`, and the session-start sync in `sync.rs`.

mod directed;
mod follower;
mod get_key;
mod leader;
mod lifecycle;
mod pushing;
mod reservations;
mod sync;

pub use directed::DirectedError;
pub(crate) use directed::Issue;
pub(crate) use get_key::{Attempt, KeyRequest};
pub use lifecycle::MAX_URI_LEN;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;
use zeroize::Zeroizing;

use super::confirm::ConfirmKeys;
use super::ledger::StreamRecord;
use super::link::{LinkMsg, Role, StreamState};
use super::qos::QosLimits;
use super::stream::{Side, Stream};
use crate::key::{DeviceBlock, KeyCounters, RingConsumer};
use reservations::Reservations;

/// No stream is longer (bytes of key): stream block numbers from the peer
/// beyond it are refused, so no arithmetic on them can overflow.
const MAX_STREAM_BYTES: u64 = 1 << 62;

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

/// What a node is: its role on the link, the size of its device's blocks,
/// and its limits.
#[derive(Debug, Clone)]
pub(crate) struct NodeShape {
    /// The node's role on its link.
    pub(crate) role: Role,
    /// Bytes per device block.
    pub(crate) block_size: usize,
    /// The QoS limits of its streams.
    pub(crate) limits: QosLimits,
    /// Its limits and rhythms beyond the QoS limits.
    pub(crate) tuning: Tuning,
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
    /// What the ledger must record next.
    reservations: Reservations,
    /// Reused by `get_key` for the blocks a chunk misses.
    scratch: Vec<u64>,
}

impl Node {
    /// A node as `config` describes it, device blocks arriving through
    /// `ring` (counted in `counters`, their check values keyed by `keys`),
    /// with no stream and at device position 0 until it [`Node::resumed`].
    pub(crate) fn new(
        config: NodeShape,
        counters: Arc<KeyCounters>,
        ring: RingConsumer,
        keys: ConfirmKeys,
    ) -> Self {
        let NodeShape {
            role,
            block_size,
            limits,
            tuning,
        } = config;
        Self {
            role,
            block_size: block_size as u64,
            limits,
            tuning,
            counters,
            keys,
            streams: HashMap::new(),
            outbox: Vec::new(),
            ring,
            next_position: 0,
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
            reservations: Reservations::default(),
            scratch: Vec::new(),
        }
    }

    /// The node resuming what its ledger recorded: device blocks below
    /// `position` are spent (the first it takes has an id of at least
    /// `position`), and the streams of `records` that were not finished
    /// come back.
    pub(crate) fn resumed(mut self, position: u64, records: &[StreamRecord], now: Instant) -> Self {
        for r in records {
            let s = Stream::restore(r, self.role, self.block_size, now);
            if !s.finished() {
                self.streams.insert(r.ksid, s);
            }
        }
        self.next_position = position;
        self
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

    /// The QoS limits of this node.
    pub fn limits(&self) -> &QosLimits {
        &self.limits
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
                    self.reservations.touch(ksid);
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
            self.reservations.touch(ksid);
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
                self.reservations.drop_record(ksid);
            }
        }
    }

    /// Counts chunks lost and blocks released by them.
    fn note_lost(&mut self, lost: u64, released: u64) {
        self.counters.lost(lost);
        self.counters.expired(released);
        self.held_total -= released;
    }
}

#[cfg(test)]
mod tests;
