//! Link sync over the network, sans-IO: sessions, sequence numbers and
//! MACs around the [`LinkMsg`]s of two nodes.
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
//! Every request and every answer carries `X-Keypipe-Link-Mac`: HMAC-SHA256
//! under the sender's (answerer's) direction key over the kind, both node
//! names, both nonces, the sequence number (and, for answers, the status)
//! and the body. Direction keys are BLAKE3 `derive_key("keypipe link-sync v2
//! from leader" | "… from follower", link.secret)`, so a node's own
//! messages reflected back never verify; the nonces make a captured batch
//! worthless in any other session; the names keep two links that share a
//! secret apart. An answer that does not verify counts as no answer.
//!
//! A 4xx answer is never retried as is: the sender logs it and opens a new
//! session (a new hello, a new sync). An idle session sends an empty batch
//! every 250 ms; the peer is down after 1.5 s without an acknowledgement.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use super::{LinkMsg, Role};
use crate::qkd::confirm::hex;
use crate::qkd::engine::DeviceParams;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Path of the handshake.
pub const HELLO_PATH: &str = "/api/v1/link/hello";
/// Path of batches.
pub const MESSAGES_PATH: &str = "/api/v1/link/messages";
/// Header carrying the MAC (requests and answers).
pub const MAC_HEADER: &str = "x-keypipe-link-mac";
/// Header naming the session (the sender's nonce).
pub const SESSION_HEADER: &str = "x-keypipe-link-session";
/// Header carrying the batch's sequence number.
pub const SEQ_HEADER: &str = "x-keypipe-link-seq";
/// Protocol version.
const VERSION: u32 = 3;
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

/// The device parameters as they travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Params {
    block_size: usize,
    fingerprint: String,
    position: u64,
    #[serde(default)]
    reserved: u64,
    ledger_new: bool,
    paired_before: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    version: u32,
    from: String,
    #[serde(default)]
    to: String,
    role: Role,
    incarnation: String,
    nonce: String,
    params: Params,
}

#[derive(Debug, Serialize, Deserialize)]
struct Welcome {
    from: String,
    nonce: String,
    params: Params,
    max_body_bytes: usize,
}

#[derive(Debug, Deserialize)]
struct Batch {
    msgs: Vec<LinkMsg>,
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

fn random_nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).expect("the OS random source works");
    n
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The MAC input, field by field (lengths first, so fields never run into
/// each other).
fn mac_of(key: &[u8; 32], fields: &[&[u8]]) -> HmacSha256 {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(&key[..]).expect("HMAC takes any key length");
    mac.update(b"keypipe-link-v2");
    for f in fields {
        mac.update(&(f.len() as u64).to_be_bytes());
        mac.update(f);
    }
    mac
}

/// Why two nodes cannot pair, or `None`.
fn pairing_problem(me: &str, mine: &Params, peer: &str, theirs: &Params) -> Option<String> {
    if mine.block_size != theirs.block_size {
        return Some(format!(
            "block_size differs: {me} uses {}, {peer} uses {}; both nodes must cut the key into the same blocks",
            mine.block_size, theirs.block_size
        ));
    }
    if mine.fingerprint != theirs.fingerprint {
        return Some(format!(
            "device fingerprints differ between {me} and {peer}: the two nodes are not fed the same key \
             stream (another device secret, another key file, or the same file from another offset)"
        ));
    }
    for (fresh_name, fresh, other_name, other) in
        [(me, mine, peer, theirs), (peer, theirs, me, mine)]
    {
        if fresh.ledger_new && other.paired_before && other.position > 0 {
            return Some(format!(
                "{fresh_name} has no key ledger for its device (a new or lost data directory, or another \
                 host's device), but {other_name}'s ledger shows this link already spent key up to block {}: \
                 starting from block 0 could deliver that key again. If {fresh_name}'s device is really \
                 aligned with {other_name}'s, start {fresh_name} with --reset-ledger {fresh_name}",
                other.position
            ));
        }
    }
    None
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
        let direction_key = |from: Role| {
            let context = match from {
                Role::Leader => "keypipe link-sync v2 from leader",
                Role::Follower => "keypipe link-sync v2 from follower",
            };
            Zeroizing::new(blake3::derive_key(context, &secret[..]))
        };
        let mut incarnation = [0u8; 16];
        getrandom::fill(&mut incarnation).expect("the OS random source works");
        Self {
            me: me.to_owned(),
            role,
            peer_name,
            send_key: direction_key(role),
            recv_key: direction_key(role.peer()),
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

    fn params(local: &LocalParams) -> Params {
        Params {
            block_size: local.device.block_size,
            fingerprint: local.device.fingerprint.clone(),
            position: local.device.position,
            reserved: local.device.reserved,
            ledger_new: local.device.ledger_new,
            paired_before: local.paired_before,
        }
    }

    /// The next request to send, if any: a hello, a batch, or a heartbeat.
    pub fn poll_transmit(&mut self, now: Instant, local: &LocalParams) -> Option<Outgoing> {
        match &mut self.out {
            Out::Closed { hello_at } if now >= *hello_at => {
                let nonce = random_nonce();
                let hello = Hello {
                    version: VERSION,
                    from: self.me.clone(),
                    to: self.peer_name.clone().unwrap_or_default(),
                    role: self.role,
                    incarnation: self.incarnation.clone(),
                    nonce: hex(&nonce),
                    params: Self::params(local),
                };
                let body = serde_json::to_vec(&hello).expect("hello serializes");
                let mac = mac_of(&self.send_key, &[b"hello", &body]).finalize();
                self.out = Out::Hello { nonce };
                Some(Outgoing {
                    id: LinkRequest::Hello(nonce),
                    path: HELLO_PATH,
                    headers: vec![("X-Keypipe-Link-Mac", hex(&mac.into_bytes()))],
                    body,
                })
            }
            Out::Open {
                nonce_s,
                nonce_r,
                next_seq,
                in_flight,
                max_batch,
            } if *in_flight < MAX_BATCHES => {
                let idle = *in_flight == 0
                    && self
                        .last_sent
                        .is_none_or(|t| now.duration_since(t) >= HEARTBEAT);
                if self.queue.is_empty() && !idle {
                    return None;
                }
                let mut body = Vec::with_capacity(256);
                body.extend_from_slice(b"{\"msgs\":[");
                let mut first = true;
                while let Some(msg) = self.queue.front() {
                    let text = serde_json::to_vec(msg).expect("link messages serialize");
                    if !first && body.len() + text.len() + 2 > *max_batch {
                        break;
                    }
                    if !first {
                        body.push(b',');
                    }
                    body.extend_from_slice(&text);
                    first = false;
                    self.queue.pop_front();
                }
                body.extend_from_slice(b"]}");
                let seq = *next_seq;
                let peer = self.learnt_peer.clone().unwrap_or_default();
                let mac = mac_of(
                    &self.send_key,
                    &[
                        b"batch",
                        self.me.as_bytes(),
                        peer.as_bytes(),
                        nonce_s,
                        nonce_r,
                        &seq.to_be_bytes(),
                        &body,
                    ],
                )
                .finalize()
                .into_bytes();
                *next_seq += 1;
                *in_flight += 1;
                self.last_sent = Some(now);
                Some(Outgoing {
                    id: LinkRequest::Batch(*nonce_s, seq, mac.into()),
                    path: MESSAGES_PATH,
                    headers: vec![
                        ("X-Keypipe-Link-Session", hex(nonce_s)),
                        ("X-Keypipe-Link-Seq", seq.to_string()),
                        ("X-Keypipe-Link-Mac", hex(&mac)),
                    ],
                    body,
                })
            }
            _ => None,
        }
    }

    /// Starts over: a new hello soon, everything queued dropped (the next
    /// session's sync supersedes it).
    fn restart(&mut self, now: Instant, after: Duration) {
        self.out = Out::Closed {
            hello_at: now + after,
        };
        self.queue.clear();
        self.gap_retries = 0;
    }

    /// Drops the outbound session (the peer restarted): a new hello now.
    pub fn resync(&mut self, now: Instant) {
        if !matches!(self.out, Out::Hello { .. }) {
            self.restart(now, Duration::ZERO);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn verify_answer(
        &self,
        kind: &[u8],
        asker: &str,
        nonce_s: &[u8; 32],
        nonce_r: &[u8; 32],
        seq: u64,
        status: u16,
        body: &[u8],
        mac: Option<&[u8]>,
    ) -> bool {
        let Some(mac) = mac
            .and_then(|m| std::str::from_utf8(m).ok())
            .and_then(unhex)
        else {
            return false;
        };
        let peer = self.learnt_peer.clone().unwrap_or_default();
        mac_of(
            &self.recv_key,
            &[
                kind,
                peer.as_bytes(),
                asker.as_bytes(),
                nonce_s,
                nonce_r,
                &seq.to_be_bytes(),
                &status.to_be_bytes(),
                body,
            ],
        )
        .verify_slice(&mac)
        .is_ok()
    }

    /// The peer answered request `id`.
    pub fn on_answer(
        &mut self,
        id: LinkRequest,
        status: u16,
        body: &[u8],
        mac: Option<&[u8]>,
        now: Instant,
        local: &LocalParams,
    ) -> (AnswerVerdict, LinkEvent) {
        match id {
            LinkRequest::Hello(nonce) => self.on_welcome(nonce, status, body, mac, now, local),
            LinkRequest::Batch(nonce_s, seq, request_mac) => {
                self.on_batch_answer(nonce_s, seq, &request_mac, status, body, mac, now)
            }
        }
    }

    fn on_welcome(
        &mut self,
        nonce: [u8; 32],
        status: u16,
        body: &[u8],
        mac: Option<&[u8]>,
        now: Instant,
        local: &LocalParams,
    ) -> (AnswerVerdict, LinkEvent) {
        if !matches!(self.out, Out::Hello { nonce: n } if n == nonce) {
            return (AnswerVerdict::Accept, LinkEvent::None); // an old hello
        }
        // The welcome names its nonce in the body; the MAC covers both.
        let welcome: Option<Welcome> = serde_json::from_slice(body).ok();
        let nonce_r = welcome
            .as_ref()
            .and_then(|w| unhex32(&w.nonce))
            .unwrap_or([0; 32]);
        if let Some(w) = &welcome {
            self.learnt_peer = Some(w.from.clone());
        }
        // A refusal names its sender too (the MAC covers it).
        let refuser = || {
            serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["from"].as_str().map(str::to_owned))
        };
        let answerer = welcome
            .as_ref()
            .map(|w| w.from.clone())
            .or_else(refuser)
            .or_else(|| self.peer_name.clone())
            .unwrap_or_default();
        let verified = mac
            .and_then(|m| std::str::from_utf8(m).ok())
            .and_then(unhex)
            .is_some_and(|m| {
                mac_of(
                    &self.recv_key,
                    &[
                        b"welcome",
                        answerer.as_bytes(),
                        self.me.as_bytes(),
                        &nonce,
                        &nonce_r,
                        &0u64.to_be_bytes(),
                        &status.to_be_bytes(),
                        body,
                    ],
                )
                .verify_slice(&m)
                .is_ok()
            });
        if !verified {
            let why = match status {
                401 => "the peer node refused this node's link MAC: link.secret differs between the nodes"
                    .to_owned(),
                _ => format!(
                    "the peer node's answer to the link hello (HTTP {status}) is not authenticated: \
                     link.secret differs, or something between the nodes answers in its place"
                ),
            };
            tracing::error!("{why}");
            if status == 401 {
                self.refused = Some(why.clone());
            }
            self.restart(now, HELLO_RETRY);
            return (AnswerVerdict::Accept, LinkEvent::Refused(why));
        }
        if status == 409 {
            let why = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "pairing refused by the peer node".into());
            tracing::error!(peer = %answerer, "pairing refused: {why}");
            self.refused = Some(why.clone());
            self.restart(now, HELLO_RETRY);
            return (AnswerVerdict::Accept, LinkEvent::Refused(why));
        }
        let Some(welcome) = welcome.filter(|_| status == 200) else {
            tracing::error!(
                status,
                "the peer node did not accept the link hello; trying again"
            );
            self.restart(now, HELLO_RETRY);
            return (AnswerVerdict::Accept, LinkEvent::None);
        };
        let mine = Self::params(local);
        if let Some(why) = pairing_problem(&self.me, &mine, &welcome.from, &welcome.params) {
            tracing::error!("pairing refused: {why}");
            self.refused = Some(why.clone());
            self.restart(now, HELLO_RETRY);
            return (AnswerVerdict::Accept, LinkEvent::Refused(why));
        }
        if let Some(expected) = &self.peer_name
            && *expected != welcome.from
        {
            let why = format!(
                "this node expects its peer to be {expected}, but {} answered",
                welcome.from
            );
            self.refused = Some(why.clone());
            self.restart(now, HELLO_RETRY);
            return (AnswerVerdict::Accept, LinkEvent::Refused(why));
        }
        self.refused = None;
        let max_batch = MAX_BATCH_BYTES.min(welcome.max_body_bytes / 4).max(4096);
        self.out = Out::Open {
            nonce_s: nonce,
            nonce_r,
            next_seq: 0,
            in_flight: 0,
            max_batch,
        };
        self.queue.clear();
        self.gap_retries = 0;
        self.last_ack = Some(now);
        tracing::info!(peer = %welcome.from, "link session open");
        (
            AnswerVerdict::Accept,
            LinkEvent::SessionOpen {
                peer_position: welcome.params.position.max(welcome.params.reserved),
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn on_batch_answer(
        &mut self,
        nonce_s: [u8; 32],
        seq: u64,
        request_mac: &[u8; 32],
        status: u16,
        body: &[u8],
        mac: Option<&[u8]>,
        now: Instant,
    ) -> (AnswerVerdict, LinkEvent) {
        let Out::Open {
            nonce_s: current,
            nonce_r,
            ..
        } = self.out
        else {
            return (AnswerVerdict::Reset, LinkEvent::None);
        };
        if current != nonce_s {
            return (AnswerVerdict::Reset, LinkEvent::None); // an old session's
        }
        // A node that lost the session does not know who asks; its answer
        // echoes this very request's MAC, so it cannot be obtained ahead
        // (a request forged with a seen session nonce has another MAC).
        if status == 409
            && self.verify_answer(
                b"unknown-session",
                "",
                &nonce_s,
                request_mac,
                seq,
                status,
                body,
                mac,
            )
        {
            tracing::warn!(
                "the peer node does not know this link session (it restarted): new session"
            );
            self.restart(now, Duration::ZERO);
            return (AnswerVerdict::Reset, LinkEvent::None);
        }
        let me = self.me.clone();
        if !self.verify_answer(b"batch", &me, &nonce_s, &nonce_r, seq, status, body, mac) {
            tracing::warn!(
                status,
                "unauthenticated answer to a link batch: ignored, the batch is resent"
            );
            return (AnswerVerdict::Retry, LinkEvent::None);
        }
        match status {
            204 => {
                if let Out::Open { in_flight, .. } = &mut self.out {
                    *in_flight = in_flight.saturating_sub(1);
                }
                self.last_ack = Some(now);
                self.gap_retries = 0;
                (AnswerVerdict::Accept, LinkEvent::None)
            }
            409 if self.gap_retries < MAX_GAP_RETRIES => {
                self.gap_retries += 1;
                tracing::warn!(
                    seq,
                    "the peer node missed a link batch: resending from the one it expects"
                );
                (AnswerVerdict::Retry, LinkEvent::None)
            }
            400..=499 => {
                tracing::error!(status, body = %String::from_utf8_lossy(body), "the peer node refused a link batch: new session");
                self.restart(now, Duration::from_millis(100));
                (AnswerVerdict::Reset, LinkEvent::None)
            }
            _ => (AnswerVerdict::Retry, LinkEvent::None),
        }
    }

    /// The client resends every unanswered link request after a broken
    /// connection: they are still in flight.
    pub fn in_flight(&self) -> usize {
        match self.out {
            Out::Open { in_flight, .. } => in_flight,
            _ => 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        kind: &[u8],
        peer: &str,
        nonce_s: &[u8; 32],
        nonce_r: &[u8; 32],
        seq: u64,
        status: u16,
        body: Vec<u8>,
    ) -> Answer {
        let mac = mac_of(
            &self.send_key,
            &[
                kind,
                self.me.as_bytes(),
                peer.as_bytes(),
                nonce_s,
                nonce_r,
                &seq.to_be_bytes(),
                &status.to_be_bytes(),
                &body,
            ],
        )
        .finalize();
        Answer {
            status,
            body,
            mac: Some(hex(&mac.into_bytes())),
            msgs: Vec::new(),
            event: LinkEvent::None,
        }
    }

    fn unauthenticated(status: u16, message: &str) -> Answer {
        Answer {
            status,
            body: json!({ "message": message }).to_string().into_bytes(),
            mac: None,
            msgs: Vec::new(),
            event: LinkEvent::None,
        }
    }

    /// A hello from the peer: checks the MAC and the pairing; opens a
    /// pending session (it becomes current with its first batch).
    pub fn receive_hello(
        &mut self,
        body: &[u8],
        mac: Option<&[u8]>,
        local: &LocalParams,
    ) -> Answer {
        let verified = mac
            .and_then(|m| std::str::from_utf8(m).ok())
            .and_then(unhex)
            .is_some_and(|m| {
                mac_of(&self.recv_key, &[b"hello", body])
                    .verify_slice(&m)
                    .is_ok()
            });
        if !verified {
            // Signed with this node's own direction key: the peer has the
            // same role. Say so, signed so that such a peer can check it.
            let same_role = mac
                .and_then(|m| std::str::from_utf8(m).ok())
                .and_then(unhex)
                .is_some_and(|m| {
                    mac_of(&self.send_key, &[b"hello", body])
                        .verify_slice(&m)
                        .is_ok()
                });
            let hello = serde_json::from_slice::<Hello>(body)
                .ok()
                .filter(|h| h.from != self.me); // this node's own, reflected
            if let (true, Some(hello)) = (same_role, hello)
                && let Some(nonce_s) = unhex32(&hello.nonce)
            {
                let why = format!(
                    "both {} and {} are configured as {}: one node of a link must be the leader, \
                     the other the follower",
                    self.me,
                    hello.from,
                    self.role.as_str()
                );
                // Told to the asker, which records the refusal on its
                // side (its own hello is fresh); a hello can be replayed,
                // so it changes no state here.
                tracing::error!("pairing refused: {why}");
                let body = json!({ "message": why, "refused": true, "from": self.me })
                    .to_string()
                    .into_bytes();
                let mac = mac_of(
                    &self.recv_key,
                    &[
                        b"welcome",
                        self.me.as_bytes(),
                        hello.from.as_bytes(),
                        &nonce_s,
                        &[0; 32],
                        &0u64.to_be_bytes(),
                        &409u16.to_be_bytes(),
                        &body,
                    ],
                )
                .finalize();
                return Answer {
                    status: 409,
                    body,
                    mac: Some(hex(&mac.into_bytes())),
                    msgs: Vec::new(),
                    event: LinkEvent::None,
                };
            }
            return Self::unauthenticated(
                401,
                "bad link MAC: link.secret differs between the nodes",
            );
        }
        let hello: Hello = match serde_json::from_slice(body) {
            Ok(h) => h,
            Err(e) => return Self::unauthenticated(400, &format!("invalid link hello: {e}")),
        };
        let Some(nonce_s) = unhex32(&hello.nonce) else {
            return Self::unauthenticated(400, "invalid link hello: bad nonce");
        };
        let nonce_r = random_nonce();
        let mine = Self::params(local);
        let problem = if hello.version != VERSION {
            Some(format!(
                "link protocol version {} is not this node's ({VERSION}): run the same keypipe on both nodes",
                hello.version
            ))
        } else if hello.role == self.role {
            Some(format!(
                "both {} and {} are configured as {}: one node of a link must be the leader, the other the follower",
                self.me,
                hello.from,
                self.role.as_str()
            ))
        } else if !hello.to.is_empty() && hello.to != self.me {
            Some(format!(
                "{} expects its peer to be {}, but this is {}",
                hello.from, hello.to, self.me
            ))
        } else if let Some(expected) = self.peer_name.as_ref().filter(|e| **e != hello.from) {
            Some(format!(
                "{} expects its peer to be {expected}, not {}",
                self.me, hello.from
            ))
        } else {
            pairing_problem(&self.me, &mine, &hello.from, &hello.params)
        };
        if let Some(why) = problem {
            // Only the asker's side records it (see above): a replayed
            // hello must not stop this node's link.
            tracing::error!(peer = %hello.from, "pairing refused: {why}");
            let body = json!({ "message": why, "refused": true, "from": self.me })
                .to_string()
                .into_bytes();
            return self.answer(b"welcome", &hello.from, &nonce_s, &[0; 32], 0, 409, body);
        }
        self.learnt_peer = Some(hello.from.clone());
        self.pending = Some(Inbound {
            nonce_s,
            nonce_r,
            next_seq: 0,
            incarnation: hello.incarnation,
            peer: hello.from.clone(),
        });
        let welcome = Welcome {
            from: self.me.clone(),
            nonce: hex(&nonce_r),
            params: mine,
            max_body_bytes: self.max_body_bytes,
        };
        let body = serde_json::to_vec(&welcome).expect("welcome serializes");
        self.answer(b"welcome", &hello.from, &nonce_s, &nonce_r, 0, 200, body)
    }

    /// A batch from the peer, with its session and sequence headers.
    pub fn receive_batch(
        &mut self,
        session: Option<&[u8]>,
        seq: Option<&[u8]>,
        body: &[u8],
        mac: Option<&[u8]>,
    ) -> Answer {
        let nonce_s = session
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(unhex32);
        let seq = seq
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u64>().ok());
        let (Some(nonce_s), Some(seq)) = (nonce_s, seq) else {
            return Self::unauthenticated(400, "link batch without session or sequence number");
        };
        let session = [&self.current, &self.pending]
            .into_iter()
            .flatten()
            .find(|s| s.nonce_s == nonce_s)
            .cloned();
        let Some(mut session) = session else {
            let Some(request_mac) = mac
                .and_then(|m| std::str::from_utf8(m).ok())
                .and_then(unhex32)
            else {
                return Self::unauthenticated(401, "bad link MAC");
            };
            let body = json!({ "message": "unknown link session" })
                .to_string()
                .into_bytes();
            return self.answer(
                b"unknown-session",
                "",
                &nonce_s,
                &request_mac,
                seq,
                409,
                body,
            );
        };
        let verified = mac
            .and_then(|m| std::str::from_utf8(m).ok())
            .and_then(unhex)
            .is_some_and(|m| {
                mac_of(
                    &self.recv_key,
                    &[
                        b"batch",
                        session.peer.as_bytes(),
                        self.me.as_bytes(),
                        &session.nonce_s,
                        &session.nonce_r,
                        &seq.to_be_bytes(),
                        body,
                    ],
                )
                .verify_slice(&m)
                .is_ok()
            });
        if !verified {
            return Self::unauthenticated(401, "bad link MAC");
        }
        let peer = session.peer.clone();
        let nonce_r = session.nonce_r;
        let ok = |me: &Self| me.answer(b"batch", &peer, &nonce_s, &nonce_r, seq, 204, Vec::new());
        if seq < session.next_seq {
            return ok(self); // a resend of a batch applied already
        }
        if seq > session.next_seq {
            let body =
                json!({ "message": "link batch out of sequence", "expected": session.next_seq })
                    .to_string()
                    .into_bytes();
            return self.answer(b"batch", &peer, &nonce_s, &session.nonce_r, seq, 409, body);
        }
        let batch: Batch = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                let body = json!({ "message": format!("invalid link batch: {e}") })
                    .to_string()
                    .into_bytes();
                return self.answer(b"batch", &peer, &nonce_s, &session.nonce_r, seq, 400, body);
            }
        };
        session.next_seq += 1;
        let mut event = LinkEvent::None;
        if self.pending.as_ref().is_some_and(|p| p.nonce_s == nonce_s) {
            let previous = self.current.take();
            let restarted = previous.is_some_and(|p| p.incarnation != session.incarnation);
            if restarted {
                tracing::warn!(peer = %peer, "the peer node restarted: new link session");
            }
            self.pending = None;
            event = LinkEvent::PeerSession { restarted };
        }
        self.current = Some(session);
        let mut a = ok(self);
        a.msgs = batch.msgs;
        a.event = event;
        a
    }
}

#[cfg(test)]
mod tests;
