//! Link sync: the messages two nodes of a QKD link exchange so they agree
//! which device blocks belong to which stream, without a message per key.
//!
//! The protocol is sans-IO: a node emits [`LinkMsg`]s into its outbox and
//! consumes the peer's; a [`LinkTransport`] carries them. This module has
//! the in-process transport (both nodes in one process) and the one of a
//! node with no peer; [`session`] frames them for the network (handshake,
//! sequence numbers, MACs).
//!
//! Rules (one node of the link is the *leader*, the other the *follower*):
//! - A sync (`sync_begin`, one `stream` per stream, `sync_end`) opens every
//!   session: each node tells the other what it holds and delivered, and
//!   each zeroizes the key the other can no longer deliver (see
//!   `qkd::node::sync`).
//! - `Open` announces that this side opened a stream (with its QoS). The
//!   first `Open` creates the stream on the peer; a stream is usable once
//!   both sides opened it. The follower adopts the leader's QoS.
//! - Only the leader assigns blocks. It takes blocks from its ring in id
//!   order and sends `Lease { ksid, stream_block, block_id, check }`; the
//!   follower takes the same id from its own ring and checks the bytes
//!   before any of them reach its consumer (key confirmation).
//! - The follower asks for a missing stream block with `LeaseRequest`; the
//!   leader always answers: `Lease` (again, if the follower can still take
//!   the block), `LeaseLost` (it cannot: the block is dropped on both),
//!   or `LeaseRefused` (the stream no longer gets key).
//! - `Credit` is the follower's flow control: the leader assigns a stream
//!   block only below the follower's credit, so a stream read on one side
//!   only never fills the other node.
//! - `Close` tells the peer this side closed the stream.
//!
//! Transports must deliver messages in order and must not block the sender.

mod msg;
pub mod session;

use std::sync::{Arc, Weak};

use crossbeam::channel::{Receiver, Sender};

pub use msg::{LinkMsg, Role, StreamState};

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
