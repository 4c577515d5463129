//! Link sync: the messages two nodes of a QKD link exchange so they agree
//! which device blocks belong to which stream, without a message per key.
//!
//! The protocol is sans-IO: a node emits [`LinkMsg`]s into its outbox and
//! consumes the peer's; a [`LinkTransport`] carries them. This module has the
//! in-process transport (both nodes in one process); the network transport
//! comes with the HTTP server.
//!
//! Rules (one node of the link is the *leader*, the other the *follower*):
//! - `Open` announces that this side opened a stream (with its QoS). The
//!   first `Open` creates the stream on the peer; a stream is usable once
//!   both sides opened it. The follower adopts the leader's QoS.
//! - Only the leader assigns blocks. It takes blocks from its ring in id
//!   order and sends `Lease { ksid, stream_block, block_id }` in that same
//!   order, so the follower takes the same ids from its own ring.
//! - The follower asks for a missing stream block with `LeaseRequest`; the
//!   leader answers with `Lease`, or `LeaseRefused` once the stream no longer
//!   gets new key (closed on either side).
//! - `Close` tells the peer this side closed the stream.
//!
//! Transports must deliver messages in order and must not block the sender.

use std::sync::{Arc, Weak};

use crossbeam::channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Qos;

/// Which node of the link assigns blocks to streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Assigns device blocks to streams.
    Leader,
    /// Takes the leader's assignments.
    Follower,
}

/// One link-sync message. Carries stream bookkeeping only, never key bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LinkMsg {
    /// The sender's side opened `ksid`.
    Open {
        /// The stream.
        ksid: Uuid,
        /// Its QoS on the sender's side.
        qos: Qos,
        /// Source URI given at open.
        source: String,
        /// Destination URI given at open.
        destination: String,
    },
    /// Leader to follower: stream block `stream_block` of `ksid` is device
    /// block `block_id`.
    Lease {
        /// The stream.
        ksid: Uuid,
        /// Position of the block in the stream's key.
        stream_block: u64,
        /// Device block id on the link.
        block_id: u64,
    },
    /// Follower to leader: please assign `stream_block` of `ksid`.
    LeaseRequest {
        /// The stream.
        ksid: Uuid,
        /// Position of the block in the stream's key.
        stream_block: u64,
    },
    /// Leader to follower: `stream_block` of `ksid` will never be assigned.
    LeaseRefused {
        /// The stream.
        ksid: Uuid,
        /// Position of the block in the stream's key.
        stream_block: u64,
    },
    /// The sender's side closed `ksid`.
    Close {
        /// The stream.
        ksid: Uuid,
    },
}

/// The peer node cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer node unreachable")]
pub struct LinkDown;

/// Carries link-sync messages to the peer node, in order, without blocking.
pub trait LinkTransport: Send + Sync {
    /// Queues `msg` for the peer.
    fn send(&self, msg: LinkMsg) -> Result<(), LinkDown>;
    /// True while the peer is believed reachable.
    fn is_up(&self) -> bool;
}

/// The receiving end of a link: messages from the peer, and the token that
/// tells the peer this node is alive (dropping the inbox takes the link down).
#[derive(Debug)]
pub struct Inbox {
    rx: Receiver<LinkMsg>,
    _alive: Arc<()>,
}

impl Inbox {
    /// An inbox fed by `rx`, alive while it exists.
    pub fn new(rx: Receiver<LinkMsg>) -> Self {
        Self {
            rx,
            _alive: Arc::new(()),
        }
    }

    /// The channel the peer's messages arrive on.
    pub fn receiver(&self) -> &Receiver<LinkMsg> {
        &self.rx
    }
}

/// In-process transport: a channel into the peer engine's inbox. It is down
/// once the peer engine (its inbox) is gone.
#[derive(Debug)]
pub struct ChannelTransport {
    to_peer: Sender<LinkMsg>,
    peer_alive: Weak<()>,
}

impl ChannelTransport {
    /// Two connected ends, each the transport to the other node and its own
    /// inbox.
    pub fn pair() -> ((ChannelTransport, Inbox), (ChannelTransport, Inbox)) {
        let (to_b, rx_b) = crossbeam::channel::unbounded();
        let (to_a, rx_a) = crossbeam::channel::unbounded();
        let (inbox_a, inbox_b) = (Inbox::new(rx_a), Inbox::new(rx_b));
        let a = ChannelTransport {
            to_peer: to_b,
            peer_alive: Arc::downgrade(&inbox_b._alive),
        };
        let b = ChannelTransport {
            to_peer: to_a,
            peer_alive: Arc::downgrade(&inbox_a._alive),
        };
        ((a, inbox_a), (b, inbox_b))
    }
}

impl LinkTransport for ChannelTransport {
    fn send(&self, msg: LinkMsg) -> Result<(), LinkDown> {
        if !self.is_up() {
            return Err(LinkDown);
        }
        self.to_peer.send(msg).map_err(|_| LinkDown)
    }

    fn is_up(&self) -> bool {
        self.peer_alive.strong_count() > 0
    }
}

/// A node with no peer: every send fails, the link is down.
#[derive(Debug, Default)]
pub struct NoPeer;

impl LinkTransport for NoPeer {
    fn send(&self, _: LinkMsg) -> Result<(), LinkDown> {
        Err(LinkDown)
    }
    fn is_up(&self) -> bool {
        false
    }
}
