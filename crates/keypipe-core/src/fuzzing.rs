//! Fuzz entry points (feature `fuzzing`): each takes raw bytes, never
//! panics on any input unless an invariant of the code under test breaks,
//! and is called both by a cargo-fuzz target (`fuzz/fuzz_targets/`) and by
//! the root package's `tests/fuzz_regressions.rs`, which replays the
//! checked-in seeds and regressions.
//!
//! Structured inputs are read with a small byte cursor (the same idea as
//! `arbitrary::Unstructured`): a short input simply reads as zeros, so
//! every byte string is a valid input.

use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::device::{LinkControl, SimulatedDevice};
use crate::qkd::link::NoPeer;
use crate::qkd::link::session::{
    AnswerVerdict, LinkEvent, LinkRequest, LinkSession, LocalParams, MAC_HEADER, MESSAGES_PATH,
    SEQ_HEADER, SESSION_HEADER,
};
use crate::qkd::{Engine, EngineConfig, LinkMsg, Qos, Role};
use crate::rangeset::RangeSet;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Reads fuzzer bytes as structured values; past the end everything is 0.
/// Shared by the fuzz entry functions of every crate.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// One byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }

    /// The low bit of one byte.
    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed (one byte) slice.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.bytes(n)
    }

    /// A length-prefixed (one byte) text, lossily UTF-8.
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.chunk()).into_owned()
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

// --- link sync sessions -------------------------------------------------

/// The link secret of the fuzzed pair.
const SECRET: [u8; 32] = [7; 32];
/// Name of the fuzzed (receiving) node.
const ME: &str = "node-b";
/// Name of its genuine peer.
const PEER: &str = "node-a";

/// The session MAC as `session.rs` computes it (domain tag, then each
/// field length-prefixed); checked against the genuine peer's own MACs, so
/// a change of the construction fails loudly here.
fn link_mac(key: &[u8; 32], fields: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(&key[..]).expect("HMAC takes any key length");
    mac.update(b"keypipe-link-v2");
    for f in fields {
        mac.update(&(f.len() as u64).to_be_bytes());
        mac.update(f);
    }
    mac.finalize().into_bytes().into()
}

fn direction_key(from: Role) -> [u8; 32] {
    let context = match from {
        Role::Leader => "keypipe link-sync v2 from leader",
        Role::Follower => "keypipe link-sync v2 from follower",
    };
    blake3::derive_key(context, &SECRET)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex as `session.rs` reads it (pairs through `u8::from_str_radix`).
fn lenient_unhex(text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?;
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn lenient_unhex32(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    lenient_unhex(text)?.try_into().ok()
}

/// The device parameters both fuzzed nodes report. `DeviceParams` is only
/// reachable through an engine, so one (tiny, device switched off) is
/// started once and its parameters are then overwritten field by field.
fn local_params() -> LocalParams {
    static BASE: std::sync::OnceLock<LocalParams> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| {
        let config = EngineConfig {
            name: "fuzz".into(),
            block_size: 64,
            arena_blocks: 64,
            ring_blocks: 16,
            ..EngineConfig::default()
        };
        let control = LinkControl::default();
        control.set_down(true);
        let device = SimulatedDevice::new(&[1; 32], 64, 8, control, 0);
        let engine = Engine::with_parts(
            &config,
            Role::Follower,
            Box::new(device),
            Box::new(NoPeer),
            None,
        )
        .expect("a small engine starts");
        LocalParams {
            device: engine.device_params(),
            paired_before: false,
        }
    });
    let mut local = base.clone();
    local.device.block_size = 64;
    local.device.fingerprint = "fuzz-fingerprint".into();
    local.device.position = 0;
    local.device.reserved = 0;
    local.device.ledger_new = false;
    local.paired_before = false;
    local
}

/// `Params` of a hello, as on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireParams {
    block_size: usize,
    fingerprint: String,
    position: u64,
    #[serde(default)]
    reserved: u64,
    ledger_new: bool,
    paired_before: bool,
}

/// A hello, as on the wire (same fields and serde attributes as the
/// session's own, so both accept the same bodies).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireHello {
    version: u32,
    from: String,
    #[serde(default)]
    to: String,
    role: Role,
    incarnation: String,
    nonce: String,
    params: WireParams,
}

/// A batch body, as on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct WireBatch {
    msgs: Vec<LinkMsg>,
}

/// An inbound session as the model tracks it.
#[derive(Debug, Clone)]
struct ModelSession {
    nonce_s: [u8; 32],
    nonce_r: [u8; 32],
    next_seq: u64,
    incarnation: String,
    peer: String,
}

/// What the receiving node should hold: its current and pending inbound
/// sessions.
#[derive(Debug, Default)]
struct Model {
    current: Option<ModelSession>,
    pending: Option<ModelSession>,
}

/// A request as it travels: path, the three headers, body.
#[derive(Debug, Clone)]
struct Wire {
    hello: bool,
    session: Option<Vec<u8>>,
    seq: Option<Vec<u8>>,
    mac: Option<Vec<u8>>,
    body: Vec<u8>,
}

/// A link message chosen by the fuzzer (every kind but `Stream`).
fn link_msg(input: &mut Input<'_>) -> LinkMsg {
    let ksid = Uuid::from_u128(u128::from(input.byte() % 4));
    let block = u64::from(input.byte());
    match input.byte() % 12 {
        0 => LinkMsg::SyncBegin {
            position: input.u64(),
        },
        1 => LinkMsg::SyncEnd,
        2 => LinkMsg::Open {
            ksid,
            qos: Qos::default(),
            source: String::from_utf8_lossy(input.chunk()).into_owned(),
            destination: "http://127.0.0.1:9".into(),
            issuer: input.bool().then_some(Role::Leader),
        },
        3 => LinkMsg::Close { ksid },
        4 => LinkMsg::Lease {
            ksid,
            stream_block: block,
            block_id: input.u64(),
            check: input.u64(),
        },
        5 => LinkMsg::LeaseRequest {
            ksid,
            stream_block: block,
            position: input.u64(),
        },
        6 => LinkMsg::LeaseRefused {
            ksid,
            stream_block: block,
        },
        7 => {
            let mut delivered = RangeSet::default();
            for _ in 0..input.byte() % 4 {
                let lo = input.u64();
                delivered.insert_range(lo, lo.saturating_add(u64::from(input.byte())));
            }
            LinkMsg::LeaseLost {
                ksid,
                stream_block: block,
                delivered,
            }
        }
        8 => LinkMsg::Credit {
            ksid,
            below: input.u64(),
        },
        9 => LinkMsg::Held {
            ksid,
            stream_block: block,
        },
        _ => LinkMsg::Mismatch {
            ksid,
            stream_block: block,
        },
    }
}

/// Every message of a batch survives a JSON round trip unchanged.
fn assert_round_trip(msgs: &[LinkMsg]) {
    for msg in msgs {
        let text = serde_json::to_vec(msg).expect("link messages serialize");
        let back: LinkMsg = serde_json::from_slice(&text).expect("a serialized message parses");
        assert_eq!(&back, msg, "link message JSON round trip");
    }
}

/// The state of one fuzzed exchange: the genuine peer (leader), the node
/// under test (follower), the model of the node's inbound sessions.
struct LinkHarness {
    now: Instant,
    local: LocalParams,
    peer: LinkSession,
    me: LinkSession,
    model: Model,
    /// Requests seen on the wire, for replays.
    seen: Vec<Wire>,
    /// Answers to the peer's requests not handed back yet.
    answers: Vec<(LinkRequest, u16, Vec<u8>, Option<String>)>,
    leader_key: [u8; 32],
    follower_key: [u8; 32],
    /// The genuine peer's open outbound session: its nonce and the node's.
    peer_open: Option<([u8; 32], [u8; 32])>,
}

impl LinkHarness {
    fn new() -> Self {
        let now = Instant::now();
        LinkHarness {
            now,
            local: local_params(),
            peer: LinkSession::new(PEER, Role::Leader, Some(ME.into()), &SECRET, 1 << 20, now),
            me: LinkSession::new(ME, Role::Follower, None, &SECRET, 1 << 20, now),
            model: Model::default(),
            seen: Vec::new(),
            answers: Vec::new(),
            leader_key: direction_key(Role::Leader),
            follower_key: direction_key(Role::Follower),
            peer_open: None,
        }
    }

    fn record(&mut self, wire: &Wire) {
        if self.seen.len() < 16 {
            self.seen.push(wire.clone());
        }
    }

    /// Delivers `wire` to the node under test and checks its answer
    /// against the model; returns the answer.
    fn deliver(&mut self, wire: &Wire) -> (u16, Vec<u8>, Option<String>) {
        if wire.hello {
            self.deliver_hello(wire)
        } else {
            self.deliver_batch(wire)
        }
    }

    fn deliver_hello(&mut self, wire: &Wire) -> (u16, Vec<u8>, Option<String>) {
        let answer = self
            .me
            .receive_hello(&wire.body, wire.mac.as_deref(), &self.local);
        assert!(answer.msgs.is_empty() && answer.event == LinkEvent::None);
        let given = wire.mac.as_deref().and_then(lenient_unhex);
        let signed_by = |key: &[u8; 32]| {
            given
                .as_deref()
                .is_some_and(|m| m == link_mac(key, &[b"hello", &wire.body]))
        };
        let hello: Option<WireHello> = serde_json::from_slice(&wire.body).ok();
        let nonce_s = hello
            .as_ref()
            .and_then(|h| lenient_unhex32(h.nonce.as_bytes()));
        if !signed_by(&self.leader_key) {
            let same_role = signed_by(&self.follower_key)
                && hello.as_ref().is_some_and(|h| h.from != ME)
                && nonce_s.is_some();
            let want = if same_role { 409 } else { 401 };
            assert_eq!(answer.status, want, "unauthenticated hello");
            assert_eq!(answer.mac.is_some(), same_role);
            return (answer.status, answer.body, answer.mac);
        }
        let (Some(hello), Some(nonce_s)) = (hello, nonce_s) else {
            assert_eq!(answer.status, 400, "malformed authenticated hello");
            assert!(answer.mac.is_none());
            return (answer.status, answer.body, answer.mac);
        };
        let must_refuse = hello.version != 3
            || hello.role == Role::Follower
            || (!hello.to.is_empty() && hello.to != ME)
            || hello.params.block_size != self.local.device.block_size
            || hello.params.fingerprint != self.local.device.fingerprint;
        assert!(
            answer.mac.is_some(),
            "an authenticated hello is answered signed"
        );
        match answer.status {
            200 => {
                assert!(!must_refuse, "hello that must be refused was welcomed");
                let welcome: serde_json::Value =
                    serde_json::from_slice(&answer.body).expect("a welcome is JSON");
                assert_eq!(welcome["from"], ME);
                let nonce_r = welcome["nonce"]
                    .as_str()
                    .and_then(|n| lenient_unhex32(n.as_bytes()))
                    .expect("a welcome names its nonce");
                let mac = link_mac(
                    &self.follower_key,
                    &[
                        b"welcome",
                        ME.as_bytes(),
                        hello.from.as_bytes(),
                        &nonce_s,
                        &nonce_r,
                        &0u64.to_be_bytes(),
                        &200u16.to_be_bytes(),
                        &answer.body,
                    ],
                );
                assert_eq!(answer.mac.as_deref(), Some(to_hex(&mac).as_str()));
                self.model.pending = Some(ModelSession {
                    nonce_s,
                    nonce_r,
                    next_seq: 0,
                    incarnation: hello.incarnation,
                    peer: hello.from,
                });
            }
            409 => {}
            other => panic!("authenticated, well-formed hello answered {other}"),
        }
        (answer.status, answer.body, answer.mac)
    }

    fn deliver_batch(&mut self, wire: &Wire) -> (u16, Vec<u8>, Option<String>) {
        let answer = self.me.receive_batch(
            wire.session.as_deref(),
            wire.seq.as_deref(),
            &wire.body,
            wire.mac.as_deref(),
        );
        let reply =
            |a: &crate::qkd::link::session::Answer| (a.status, a.body.clone(), a.mac.clone());
        let nonce_s = wire.session.as_deref().and_then(lenient_unhex32);
        let seq = wire
            .seq
            .as_deref()
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u64>().ok());
        let (Some(nonce_s), Some(seq)) = (nonce_s, seq) else {
            assert_eq!(answer.status, 400);
            assert!(answer.mac.is_none() && answer.msgs.is_empty());
            return reply(&answer);
        };
        let found = [&self.model.current, &self.model.pending]
            .into_iter()
            .flatten()
            .find(|s| s.nonce_s == nonce_s)
            .cloned();
        let Some(mut session) = found else {
            let echo = wire.mac.as_deref().and_then(lenient_unhex32).is_some();
            assert_eq!(
                answer.status,
                if echo { 409 } else { 401 },
                "unknown session"
            );
            assert_eq!(answer.mac.is_some(), echo);
            assert!(answer.msgs.is_empty());
            return reply(&answer);
        };
        let expected = link_mac(
            &self.leader_key,
            &[
                b"batch",
                session.peer.as_bytes(),
                ME.as_bytes(),
                &session.nonce_s,
                &session.nonce_r,
                &seq.to_be_bytes(),
                &wire.body,
            ],
        );
        let verified = wire
            .mac
            .as_deref()
            .and_then(lenient_unhex)
            .is_some_and(|m| m == expected);
        if !verified {
            assert_eq!(answer.status, 401, "a batch with a wrong MAC");
            assert!(answer.msgs.is_empty() && answer.mac.is_none());
            return reply(&answer);
        }
        assert!(
            answer.mac.is_some(),
            "an authenticated batch is answered signed"
        );
        if seq < session.next_seq {
            assert_eq!(answer.status, 204, "a resend is acknowledged");
            assert!(answer.msgs.is_empty(), "a resend is not applied again");
            return reply(&answer);
        }
        if seq > session.next_seq {
            assert_eq!(answer.status, 409, "a gap is refused");
            assert!(answer.msgs.is_empty());
            return reply(&answer);
        }
        let Ok(batch) = serde_json::from_slice::<WireBatch>(&wire.body) else {
            assert_eq!(answer.status, 400, "an invalid batch body");
            assert!(answer.msgs.is_empty());
            return reply(&answer);
        };
        assert_eq!(answer.status, 204, "the next batch is applied");
        assert_eq!(answer.msgs, batch.msgs, "the batch's messages, in order");
        assert_round_trip(&answer.msgs);
        session.next_seq += 1;
        let promoted = self
            .model
            .pending
            .as_ref()
            .is_some_and(|p| p.nonce_s == nonce_s);
        if promoted {
            let previous = self.model.current.take();
            let restarted = previous.is_some_and(|p| p.incarnation != session.incarnation);
            self.model.pending = None;
            assert_eq!(answer.event, LinkEvent::PeerSession { restarted });
        } else {
            assert_eq!(answer.event, LinkEvent::None);
        }
        self.model.current = Some(session);
        reply(&answer)
    }

    /// Hands an answer back to the genuine peer; remembers the session it
    /// opens (its nonces), to check the MACs of its batches.
    fn answer_peer(
        &mut self,
        id: LinkRequest,
        status: u16,
        body: &[u8],
        mac: Option<&str>,
    ) -> (AnswerVerdict, LinkEvent) {
        let (verdict, event) = self.peer.on_answer(
            id,
            status,
            body,
            mac.map(str::as_bytes),
            self.now,
            &self.local,
        );
        if let (LinkRequest::Hello(nonce_s), LinkEvent::SessionOpen { .. }) = (id, &event) {
            let nonce_r = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|w| {
                    w["nonce"]
                        .as_str()
                        .and_then(|n| lenient_unhex32(n.as_bytes()))
                })
                .expect("the welcome that opened the session names its nonce");
            self.peer_open = Some((nonce_s, nonce_r));
        }
        (verdict, event)
    }

    /// The peer's next request (hello, batch or heartbeat), delivered;
    /// its answer handed back now or kept for later.
    fn genuine(&mut self, input: &mut Input<'_>) {
        let Some(out) = self.peer.poll_transmit(self.now, &self.local) else {
            return;
        };
        let header = |name: &str| {
            out.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes().to_vec())
        };
        let wire = Wire {
            hello: out.path != MESSAGES_PATH,
            session: header(SESSION_HEADER),
            seq: header(SEQ_HEADER),
            mac: header(MAC_HEADER),
            body: out.body.clone(),
        };
        // The harness computes MACs as the session does.
        let mac = match out.id {
            LinkRequest::Hello(_) => Some(link_mac(&self.leader_key, &[b"hello", &out.body])),
            LinkRequest::Batch(nonce_s, seq, request_mac) => {
                assert_eq!(
                    wire.session.as_deref(),
                    Some(to_hex(&nonce_s).as_bytes()),
                    "the session header names the session"
                );
                assert_eq!(wire.seq.as_deref(), Some(seq.to_string().as_bytes()));
                if let Some((open_s, open_r)) = self.peer_open.filter(|(s, _)| *s == nonce_s) {
                    let mac = link_mac(
                        &self.leader_key,
                        &[
                            b"batch",
                            PEER.as_bytes(),
                            ME.as_bytes(),
                            &open_s,
                            &open_r,
                            &seq.to_be_bytes(),
                            &out.body,
                        ],
                    );
                    assert_eq!(mac, request_mac, "the batch MAC as computed here");
                }
                Some(request_mac)
            }
        };
        assert_eq!(
            wire.mac.as_deref(),
            mac.map(|m| to_hex(&m).into_bytes()).as_deref(),
            "the MAC header"
        );
        let (status, body, mac) = self.deliver(&wire);
        self.record(&wire);
        if let LinkRequest::Hello(_) = out.id {
            assert_eq!(status, 200, "a genuine hello is welcomed");
        }
        if input.bool() {
            self.answers.push((out.id, status, body, mac));
            return;
        }
        let (verdict, event) = self.answer_peer(out.id, status, &body, mac.as_deref());
        match out.id {
            LinkRequest::Hello(_) => {
                assert_eq!(verdict, AnswerVerdict::Accept);
                assert!(
                    matches!(event, LinkEvent::SessionOpen { .. }),
                    "the peer opens its session on a genuine welcome: {event:?}"
                );
            }
            LinkRequest::Batch(..) if status == 204 => {
                assert_eq!(
                    (verdict, event),
                    (AnswerVerdict::Accept, LinkEvent::None),
                    "the peer accepts a genuine acknowledgement"
                );
            }
            LinkRequest::Batch(..) => {}
        }
    }

    /// A hello the fuzzer wrote, signed as it chose.
    fn crafted_hello(&mut self, input: &mut Input<'_>) {
        let body = if input.bool() {
            input.chunk().to_vec()
        } else {
            let mut params = WireParams {
                block_size: self.local.device.block_size,
                fingerprint: self.local.device.fingerprint.clone(),
                position: 0,
                reserved: 0,
                ledger_new: false,
                paired_before: false,
            };
            let flags = input.byte();
            if flags & 1 != 0 {
                params.block_size = usize::from(input.byte());
            }
            if flags & 2 != 0 {
                params.fingerprint = String::from_utf8_lossy(input.chunk()).into_owned();
            }
            if flags & 4 != 0 {
                params.position = input.u64();
                params.ledger_new = input.bool();
                params.paired_before = input.bool();
            }
            let nonce = if flags & 8 != 0 {
                String::from_utf8_lossy(input.chunk()).into_owned()
            } else {
                to_hex(&[input.byte(); 32])
            };
            let hello = WireHello {
                version: if flags & 16 != 0 {
                    u32::from(input.byte())
                } else {
                    3
                },
                from: if flags & 32 != 0 {
                    String::from_utf8_lossy(input.chunk()).into_owned()
                } else {
                    PEER.into()
                },
                to: if flags & 64 != 0 {
                    "node-c".into()
                } else {
                    ME.into()
                },
                role: if flags & 128 != 0 {
                    Role::Follower
                } else {
                    Role::Leader
                },
                incarnation: to_hex(&[input.byte() % 2; 16]),
                nonce,
                params,
            };
            serde_json::to_vec(&hello).expect("a hello serializes")
        };
        let mac = self.crafted_mac(input, &[b"hello", &body]);
        let wire = Wire {
            hello: true,
            session: None,
            seq: None,
            mac,
            body,
        };
        self.deliver(&wire);
        self.record(&wire);
    }

    /// The MAC header of a crafted request: right, under the wrong
    /// direction key, damaged, arbitrary, or none.
    fn crafted_mac(&self, input: &mut Input<'_>, fields: &[&[u8]]) -> Option<Vec<u8>> {
        match input.byte() % 6 {
            0 | 1 => Some(to_hex(&link_mac(&self.leader_key, fields)).into_bytes()),
            2 => Some(to_hex(&link_mac(&self.follower_key, fields)).into_bytes()),
            3 => {
                let mut mac = link_mac(&self.leader_key, fields);
                let at = usize::from(input.byte()) % mac.len();
                mac[at] ^= 1 << (input.byte() % 8);
                Some(to_hex(&mac[..32 - usize::from(input.byte() % 2)]).into_bytes())
            }
            4 => Some(input.chunk().to_vec()),
            _ => None,
        }
    }

    /// A batch the fuzzer wrote: for a session the node knows or not, at a
    /// sequence number near the expected one, signed as it chose.
    fn crafted_batch(&mut self, input: &mut Input<'_>) {
        let known: Vec<ModelSession> = self
            .model
            .current
            .iter()
            .chain(&self.model.pending)
            .cloned()
            .collect();
        let choice = input.byte();
        let session = known.get(usize::from(choice % 4)).cloned();
        let nonce_s = match &session {
            Some(s) => s.nonce_s,
            None => [input.byte(); 32],
        };
        let seq = match &session {
            Some(s) => s
                .next_seq
                .wrapping_add(u64::from(input.byte() % 5))
                .wrapping_sub(2),
            None => u64::from(input.byte()),
        };
        let body = match input.byte() % 3 {
            0 => input.chunk().to_vec(),
            1 => {
                let msgs: Vec<LinkMsg> = (0..input.byte() % 4).map(|_| link_msg(input)).collect();
                serde_json::to_vec(&WireBatch { msgs }).expect("batches serialize")
            }
            _ => {
                // A valid batch with fuzzer bytes spliced in.
                let msgs = vec![link_msg(input)];
                let mut body = serde_json::to_vec(&WireBatch { msgs }).expect("serializes");
                let at = usize::from(input.byte()) % (body.len() + 1);
                let junk = input.chunk();
                body.splice(at..at, junk.iter().copied());
                body
            }
        };
        let (peer_name, nonce_r) = session
            .as_ref()
            .map_or((PEER.to_owned(), [0; 32]), |s| (s.peer.clone(), s.nonce_r));
        let mac = self.crafted_mac(
            input,
            &[
                b"batch",
                peer_name.as_bytes(),
                ME.as_bytes(),
                &nonce_s,
                &nonce_r,
                &seq.to_be_bytes(),
                &body,
            ],
        );
        let headers = input.byte();
        let wire = Wire {
            hello: false,
            session: match headers % 8 {
                0 => None,
                1 => Some(input.chunk().to_vec()),
                _ => Some(to_hex(&nonce_s).into_bytes()),
            },
            seq: match (headers >> 3) % 8 {
                0 => None,
                1 => Some(input.chunk().to_vec()),
                _ => Some(seq.to_string().into_bytes()),
            },
            mac,
            body,
        };
        self.deliver(&wire);
        self.record(&wire);
    }
}

/// Drives the link-sync session of a follower node (`receive_hello`,
/// `receive_batch`) with a fuzzer-chosen sequence of genuine requests of
/// a leader session, crafted hellos and batches (any body, any MAC, any
/// session and sequence headers), replays, late answers and time steps.
/// A model of the node's inbound sessions (current, pending, next sequence
/// number) predicts every answer: status, MAC presence, the messages
/// applied and the session event. Among the invariants: nothing is applied
/// without the right MAC, a batch is applied once and only in sequence,
/// and the genuine peer accepts the node's signed answers.
pub fn link_session(data: &[u8]) {
    let mut input = Input::new(data);
    let mut h = LinkHarness::new();
    for _ in 0..48 {
        if input.is_empty() {
            break;
        }
        match input.byte() % 8 {
            0 => {
                h.peer.resync(h.now);
                h.genuine(&mut input);
            }
            1 => {
                for _ in 0..input.byte() % 4 {
                    let msg = link_msg(&mut input);
                    h.peer.send(msg);
                }
                h.genuine(&mut input);
            }
            2 => h.crafted_hello(&mut input),
            3 => h.crafted_batch(&mut input),
            4 => {
                if !h.seen.is_empty() {
                    let i = usize::from(input.byte()) % h.seen.len();
                    let wire = h.seen[i].clone();
                    h.deliver(&wire);
                }
            }
            5 => {
                if !h.answers.is_empty() {
                    let i = usize::from(input.byte()) % h.answers.len();
                    let (id, status, body, mac) = h.answers.remove(i);
                    h.answer_peer(id, status, &body, mac.as_deref());
                }
            }
            6 => h.peer.resync(h.now),
            _ => h.now += Duration::from_millis(u64::from(input.u16())),
        }
    }
}
