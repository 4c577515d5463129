//! The messages two nodes of a link exchange. Bookkeeping only, never key
//! bytes: a lease names a device block by id and carries a short keyed check
//! value of its bytes (key confirmation), nothing the key can be learnt from.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::qkd::Qos;
use crate::qkd::rangeset::RangeSet;
use crate::qkd::stream::Side;

/// Which node of the link assigns blocks to streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Assigns device blocks to streams.
    Leader,
    /// Takes the leader's assignments.
    Follower,
}

impl Role {
    /// The other end's role.
    pub fn peer(self) -> Role {
        match self {
            Role::Leader => Role::Follower,
            Role::Follower => Role::Leader,
        }
    }

    /// `"leader"` or `"follower"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
        }
    }
}

/// One stream as the sender sees it, in a sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// The stream.
    pub ksid: Uuid,
    /// Its QoS on the sender.
    pub qos: Qos,
    /// Source URI given at open.
    pub source: String,
    /// Destination URI given at open.
    pub destination: String,
    /// The sender created the KSID.
    pub created_here: bool,
    /// The sender's application side.
    pub local: Side,
    /// Stream blocks the sender holds now.
    pub held: RangeSet,
    /// Follower: stream blocks it was ever leased (so the leader never
    /// re-leases one of them).
    pub assigned: RangeSet,
    /// Chunks the sender delivered to its consumer (after a restart: those
    /// it had recorded as delivered).
    pub taken: RangeSet,
    /// Leader: it never assigns a stream block below this (everything
    /// below was reserved before its last restart).
    pub floor: u64,
    /// Follower: the leader may assign stream blocks below this.
    pub credit: u64,
    /// Key confirmation failed on the sender: the stream is stopped.
    pub failed: bool,
    /// A directed stream: only the node of this role issues its key (see
    /// `qkd::directed`); `None` for an ETSI 004 stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<Role>,
    /// Follower, directed streams: the stream blocks it holds with their
    /// check value verified (`held` also counts leases still awaiting
    /// their block).
    #[serde(default, skip_serializing_if = "RangeSet::is_empty")]
    pub confirmed: RangeSet,
}

/// One link-sync message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LinkMsg {
    /// A sync starts: the sender's whole view follows as `stream` messages,
    /// then `sync_end`. Sent first in every new outbound session, and
    /// whenever the peer started a new one.
    SyncBegin {
        /// The lowest device block id the sender can still produce.
        position: u64,
    },
    /// One stream of a sync.
    Stream(StreamState),
    /// The sync is complete: streams not listed are unknown to the sender.
    SyncEnd,
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
        /// A directed stream: the role of the node that issues its key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        issuer: Option<Role>,
    },
    /// The sender's side closed `ksid`.
    Close {
        /// The stream.
        ksid: Uuid,
    },
    /// Leader to follower: stream block `stream_block` of `ksid` is device
    /// block `block_id`, whose check value is `check`.
    Lease {
        /// The stream.
        ksid: Uuid,
        /// Position of the block in the stream's key.
        stream_block: u64,
        /// Device block id on the link.
        block_id: u64,
        /// Key confirmation: keyed check value of the block's bytes.
        check: u64,
    },
    /// Follower to leader: please assign (or lease again) `stream_block`.
    LeaseRequest {
        /// The stream.
        ksid: Uuid,
        /// Position of the block in the stream's key.
        stream_block: u64,
        /// The lowest device block id the follower can still take.
        position: u64,
    },
    /// Leader to follower: `stream_block` of `ksid` will never be assigned
    /// (the stream no longer allocates).
    LeaseRefused {
        /// The stream.
        ksid: Uuid,
        /// Position of the block in the stream's key.
        stream_block: u64,
    },
    /// Either way: the sender has no undelivered copy of this stream block
    /// and never will; of its chunks, only those the sender delivered may
    /// still be delivered by the receiver (the others are lost on both: the
    /// receiver zeroizes its copy of them).
    LeaseLost {
        /// The stream.
        ksid: Uuid,
        /// Position of the block in the stream's key.
        stream_block: u64,
        /// The block's chunks the sender delivered.
        delivered: RangeSet,
    },
    /// Follower to leader: stream blocks below `below` may be assigned
    /// (flow control; only ever grows).
    Credit {
        /// The stream.
        ksid: Uuid,
        /// The new bound.
        below: u64,
    },
    /// Follower to leader, directed streams the leader issues: the
    /// follower holds stream block `stream_block` (its check value
    /// matched), so the leader may issue key from it.
    Held {
        /// The stream.
        ksid: Uuid,
        /// The block now held on the follower.
        stream_block: u64,
    },
    /// Follower to leader: the check value of a leased block did not match
    /// the follower's bytes; the stream is stopped on both nodes.
    Mismatch {
        /// The stream.
        ksid: Uuid,
        /// The block that did not match.
        stream_block: u64,
    },
}

impl LinkMsg {
    /// The stream block the message names, if it names one.
    pub fn stream_block(&self) -> Option<u64> {
        match self {
            LinkMsg::Lease { stream_block, .. }
            | LinkMsg::LeaseRequest { stream_block, .. }
            | LinkMsg::LeaseRefused { stream_block, .. }
            | LinkMsg::LeaseLost { stream_block, .. }
            | LinkMsg::Held { stream_block, .. }
            | LinkMsg::Mismatch { stream_block, .. } => Some(*stream_block),
            _ => None,
        }
    }
}
