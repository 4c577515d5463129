//! The fuzz entry point of the link-sync session, [`link_session`]: a
//! genuine leader session, crafted hellos and batches, replays and late
//! answers driven against a follower's session, checked against a model.

mod model;
mod wire;

use std::time::{Duration, Instant};

use super::Input;
use crate::qkd::link::session::{
    AnswerVerdict, LinkEvent, LinkRequest, LinkSession, LocalParams, MAC_HEADER, MESSAGES_PATH,
    SEQ_HEADER, SESSION_HEADER,
};
use crate::qkd::{LinkMsg, Role};
use model::{Model, ModelSession};
use wire::{
    ME, PEER, SECRET, Wire, WireBatch, WireHello, WireParams, direction_key, lenient_unhex32,
    link_mac, link_msg, local_params, to_hex,
};

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
