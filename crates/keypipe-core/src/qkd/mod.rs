//! One node of a QKD link with ETSI GS QKD 004 semantics: streams (KSID,
//! QoS negotiation, index addressing, TTL, close), link sync with the peer
//! node (sessions, key confirmation, flow control), the key ledger, the
//! push scheduler, and the [`Engine`] that runs a node with its device.
//!
//! [`Node`], [`link::session`] and [`push`] are sans-IO; [`Engine`] adds
//! the threads (device poller, link thread, ledger writer) and the
//! blocking-with-timeout GET_KEY. The HTTP server and the C ABI are thin
//! adapters over the engine.

mod config;
pub mod confirm;
mod engine;
pub mod ledger;
pub mod link;
mod node;
pub mod push;
mod qos;
pub use crate::rangeset;
mod status;
mod stream;

use std::fmt;

use uuid::Uuid;

pub use config::{
    ConfigError, DeviceConfig, EngineConfig, LinkConfig, MAX_TTL_S, TlsFiles, parse_secret,
    url_is_loopback,
};
pub use engine::{Engine, EngineError, EngineStats, SideChanged};
pub use ledger::{Ledger, LedgerError};
pub use link::{Inbox, LinkDown, LinkMsg, LinkTransport, Role};
pub use node::{DirectedError, MAX_URI_LEN, Node, Tuning};
pub use qos::{METADATA_MIMETYPE, Qos, QosLimits, negotiate};
pub use status::Status;
pub use stream::{Side, directed_window};

/// The KMS URIs of a stream as a node knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUris {
    /// The creating KMS's `source` (pushed to by the creating node).
    pub source: String,
    /// Its `destination` (pushed to by the other node).
    pub destination: String,
    /// This node created the stream (else the peer announced it).
    pub created_here: bool,
    /// A KMS opened it on this node.
    pub open_here: bool,
}

impl StreamUris {
    /// The URI this node pushes the stream to.
    pub fn target(&self) -> &str {
        if self.created_here {
            &self.source
        } else {
            &self.destination
        }
    }
}

/// Answer to OPEN_CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReply {
    /// 0 (both sides open), 1 (waiting for the peer side), 4, 5 or 7.
    pub status: Status,
    /// The stream's KSID (assigned when the request had none); `None` only
    /// when nothing was created and none was given.
    pub ksid: Option<Uuid>,
    /// The stream's QoS, or the counter-proposal with status 7.
    pub qos: Qos,
    /// Why, when the status alone does not say it.
    pub detail: Option<&'static str>,
}

/// Metadata of a delivered chunk: `{"age_ms":N,"hops":0}` (JSON, ASCII).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    buf: [u8; 48],
    len: u8,
}

impl Metadata {
    /// The JSON text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("{}")
    }
    /// Length of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// Never true (kept for symmetry with `len`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Answer to GET_KEY that ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetKeyReply {
    /// Status 0: the chunk is in the caller's buffer (`key_chunk_size`
    /// bytes); metadata when it was asked for.
    Key {
        /// The index delivered.
        index: u32,
        /// The chunk's metadata, if asked for.
        metadata: Option<Metadata>,
    },
    /// Status 8: the metadata buffer is too small; nothing was consumed.
    MetadataTooSmall {
        /// Bytes of metadata text needed.
        needed: usize,
    },
    /// Status 2, 3, 4 or 6: no key delivered, nothing consumed.
    Status(Status),
}

impl GetKeyReply {
    /// The ETSI status of this reply.
    pub fn status(&self) -> Status {
        match self {
            GetKeyReply::Key { .. } => Status::Successful,
            GetKeyReply::MetadataTooSmall { .. } => Status::MetadataTooSmall,
            GetKeyReply::Status(s) => *s,
        }
    }
}

/// GET_KEY misuse: no ETSI status fits, the call did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GetKeyError {
    /// No stream with this KSID is open on this node.
    #[error("no key stream with this KSID is open on this node")]
    UnknownStream,
    /// The index was already delivered on this node, or its key expired.
    #[error("this index was already delivered on this node, or its key expired")]
    Consumed,
    /// Both sides opened this KSID on their own with different chunk sizes;
    /// close it and open it again.
    #[error(
        "both sides opened this KSID with different key_chunk_size: close it and open it again"
    )]
    QosConflict,
    /// The stream is stopped for good: key confirmation failed (the two
    /// nodes' devices gave different bytes for a block of it), or the
    /// leader's ledger was reset and lost the stream's history. Open a new
    /// stream.
    #[error(
        "this stream was stopped for good: key confirmation failed (the two nodes' devices \
         disagree: check both are fed the same key from the same position), or the leader's \
         key ledger was reset and lost its history; open a new stream"
    )]
    StreamFailed,
    /// The key buffer is shorter than the stream's chunk size.
    #[error("key buffer too small: the stream's chunks are {needed} bytes")]
    BufferTooSmall {
        /// The stream's `key_chunk_size`.
        needed: usize,
    },
}

/// CLOSE misuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No stream with this KSID is open on this node.
    #[error("no key stream with this KSID is open on this node")]
    UnknownStream,
}
