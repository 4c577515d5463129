//! Link sync over the network, sans-IO: sessions, sequence numbers and
//! MACs around the [`LinkMsg`]s of two nodes. This file owns a node's
//! [`LinkSession`] state and the session's public types.
//!
//! Each direction is a session the sending node opens:
//! 1. `POST /api/v1/link/hello` with `{version, from, to, role,
//!    incarnation, nonce, params}`; the receiver checks the pairing (block
//!    size, device fingerprint, ledger position, role, names) and answers
//!    200 `{from, nonce, params, max_body_bytes}` with a nonce of its own,
//!    or 409 naming what differs (pairing refused on both sides).
//! 2. `POST /api/v1/link/messages` carries batches of messages, headers
//!    `X-Keypipe-Link-Session` (the sender's nonce) and
//!    `X-Keypipe-Link-Seq`. A batch is applied only at exactly the next
//!    sequence number: an older one is acknowledged again (a resend), a gap
//!    is refused (409 with the expected number; the sender resends from
//!    there). The first batch of a new session starts with the sender's
//!    sync. Batches stay well below the receiver's body limit.
//!
//! Every batch and every answer other than a refusal carries
//! `X-Keypipe-Link-Mac`: HMAC-SHA256 under the sender's (answerer's)
//! direction key over the kind, both node names, both nonces, the
//! sequence number (and, for answers, the status) and the body. A hello's
//! MAC covers its kind and body, which carries the sender's name and
//! nonce; a refusal (400, 401) carries none and changes nothing. Direction
//! keys are BLAKE3 `derive_key("keypipe link-sync v2
//! from leader" | "… from follower", link.secret)`, so a node's own
//! messages reflected back never verify; the nonces make a captured batch
//! worthless in any other session; the names keep two links that share a
//! secret apart. An answer that does not verify counts as no answer.
//!
//! A 4xx answer is never retried as is: the sender logs it and opens a new
//! session (a new hello, a new sync). An idle session sends an empty batch
//! every 250 ms; the peer is down after 1.5 s without an acknowledgement.
//!
//! Beside this file: what travels (`wire.rs`), the MACs (`mac.rs`), the
//! pairing checks (`pairing.rs`), and the sending (`outbound.rs`) and
//! receiving (`inbound.rs`) ends of a session.

mod inbound;
mod mac;
mod outbound;
mod pairing;
mod wire;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::{LinkMsg, Role};
use crate::qkd::confirm::hex;
use crate::qkd::engine::DeviceParams;
use mac::direction_key;
pub use wire::{HELLO_PATH, MAC_HEADER, MESSAGES_PATH, SEQ_HEADER, SESSION_HEADER};

/// Heartbeat period when idle.
const HEARTBEAT: Duration = Duration::from_millis(250);
/// The peer is down when nothing was acknowledged for this long.
const UP_WINDOW: Duration = Duration::from_millis(1500);
/// Batches in flight at most.
pub const MAX_BATCHES: usize = 4;
/// Largest batch body, bytes (and at most a quarter of the peer's limit).
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Wait before a new hello after a refusal or a failed one.
const HELLO_RETRY: Duration = Duration::from_secs(2);
/// Gaps answered in a row before the session is started anew.
const MAX_GAP_RETRIES: u32 = 3;

/// What a link request is, for matching its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRequest {
    /// A hello with this nonce.
    Hello([u8; 32]),
    /// Batch `seq` of the session with this nonce, and the batch's MAC
    /// (an "unknown session" answer must echo it).
    Batch([u8; 32], u64, [u8; 32]),
}

/// A request to send: path, extra headers, body.
#[derive(Debug)]
pub struct Outgoing {
    /// What it is.
    pub id: LinkRequest,
    /// `HELLO_PATH` or `MESSAGES_PATH`.
    pub path: &'static str,
    /// Headers: (name, value).
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// What to do with the request after its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerVerdict {
    /// Done with it.
    Accept,
    /// Send it (and everything after it) again.
    Retry,
    /// The session is over: drop it and every queued link request.
    Reset,
}

/// Something the node must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Nothing.
    None,
    /// This node's new outbound session is open: its sync goes first.
    SessionOpen {
        /// The peer's device position (its ledger's reservation), from its
        /// welcome.
        peer_position: u64,
    },
    /// The peer opened a new session towards this node (`restarted`: it
    /// is a new process): this node sends its sync too.
    PeerSession {
        /// The peer process is not the one of the previous session.
        restarted: bool,
    },
    /// Pairing refused (by either side): the reason.
    Refused(String),
}

/// The answer to an incoming request.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body (empty for 204).
    pub body: Vec<u8>,
    /// Hex MAC for the answer header (absent when unauthenticated).
    pub mac: Option<String>,
    /// Messages to apply, in order.
    pub msgs: Vec<LinkMsg>,
    /// What the node must do.
    pub event: LinkEvent,
}

/// One session in which this node receives.
#[derive(Debug, Clone)]
struct Inbound {
    nonce_s: [u8; 32],
    nonce_r: [u8; 32],
    next_seq: u64,
    incarnation: String,
    peer: String,
}

#[derive(Debug)]
enum Out {
    /// No session; a hello may go at this time.
    Closed { hello_at: Instant },
    /// A hello is out.
    Hello { nonce: [u8; 32] },
    /// Open.
    Open {
        nonce_s: [u8; 32],
        nonce_r: [u8; 32],
        next_seq: u64,
        in_flight: usize,
        max_batch: usize,
    },
}

/// This node's own parameters, and its pairing state.
#[derive(Debug, Clone)]
pub struct LocalParams {
    /// The device as the engine reports it.
    pub device: DeviceParams,
    /// The ledger records a completed pairing before.
    pub paired_before: bool,
}

/// One node's end of a network link: its outbound session and the
/// peer's inbound ones.
pub struct LinkSession {
    me: String,
    role: Role,
    peer_name: Option<String>,
    send_key: Zeroizing<[u8; 32]>,
    recv_key: Zeroizing<[u8; 32]>,
    incarnation: String,
    max_body_bytes: usize,
    out: Out,
    queue: VecDeque<LinkMsg>,
    last_sent: Option<Instant>,
    last_ack: Option<Instant>,
    gap_retries: u32,
    current: Option<Inbound>,
    pending: Option<Inbound>,
    refused: Option<String>,
    /// The peer's name as learnt (for messages).
    learnt_peer: Option<String>,
}

impl std::fmt::Debug for LinkSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSession")
            .field("me", &self.me)
            .field("out", &self.out)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl LinkSession {
    /// The session state of node `me` (with `role`) on a link keyed by
    /// `secret`; `peer_name`, when given, is the only peer accepted;
    /// `max_body_bytes` is this node's request body limit.
    pub fn new(
        me: &str,
        role: Role,
        peer_name: Option<String>,
        secret: &[u8; 32],
        max_body_bytes: usize,
        now: Instant,
    ) -> Self {
        let mut incarnation = [0u8; 16];
        getrandom::fill(&mut incarnation).expect("the OS random source works");
        Self {
            me: me.to_owned(),
            role,
            peer_name,
            send_key: direction_key(secret, role),
            recv_key: direction_key(secret, role.peer()),
            incarnation: hex(&incarnation),
            max_body_bytes,
            out: Out::Closed { hello_at: now },
            queue: VecDeque::new(),
            last_sent: None,
            last_ack: None,
            gap_retries: 0,
            current: None,
            pending: None,
            refused: None,
            learnt_peer: None,
        }
    }

    /// Queues a message for the peer; true when the queue was empty (the
    /// sender needs waking; otherwise it is awake or will be).
    pub fn send(&mut self, msg: LinkMsg) -> bool {
        self.queue.push_back(msg);
        self.queue.len() == 1
    }

    /// True while the peer acknowledges this node's batches.
    pub fn is_up(&self, now: Instant) -> bool {
        matches!(self.out, Out::Open { .. })
            && self.refused.is_none()
            && self
                .last_ack
                .is_some_and(|t| now.duration_since(t) < UP_WINDOW)
    }

    /// Why pairing is refused, if it is.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// The peer's name, once known.
    pub fn peer(&self) -> Option<&str> {
        self.learnt_peer.as_deref().or(self.peer_name.as_deref())
    }
}

#[cfg(test)]
mod tests;
