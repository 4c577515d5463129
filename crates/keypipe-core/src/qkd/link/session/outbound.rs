//! The sending end of a session: this node's hello and batches (and
//! heartbeats), and what the peer's answers to them do: open the session,
//! acknowledge, ask for a resend, refuse the pairing, or start over.

use std::time::{Duration, Instant};

use hmac::Mac;

use super::mac::{self, MacScope};
use super::pairing::pairing_problem;
use super::wire::{
    HELLO_PATH, Hello, MESSAGES_PATH, Params, VERSION, Welcome, random_nonce, unhex32,
};
use super::{
    AnswerVerdict, HEARTBEAT, HELLO_RETRY, LinkEvent, LinkRequest, LinkSession, LocalParams,
    MAX_BATCH_BYTES, MAX_BATCHES, MAX_GAP_RETRIES, Out, Outgoing,
};
use crate::qkd::confirm::hex;

/// The peer's answer to one of this node's requests, as received.
#[derive(Clone, Copy)]
struct Received<'a> {
    /// HTTP status.
    status: u16,
    /// The body.
    body: &'a [u8],
    /// The MAC header (hex), if any.
    mac: Option<&'a [u8]>,
}

impl LinkSession {
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
                    params: Params::of(local),
                };
                let body = serde_json::to_vec(&hello).expect("hello serializes");
                let mac = mac::hello(&self.send_key, &body).finalize();
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
                let scope = MacScope {
                    kind: b"batch",
                    nonce_s,
                    nonce_r,
                    seq,
                };
                let mac = scope
                    .request(&self.send_key, &self.me, &peer, &body)
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

    /// True when the peer's `answer` to this node's request (`asker` is
    /// the name the request gave this node) carries the peer's MAC.
    fn verify_answer(&self, scope: &MacScope<'_>, asker: &str, answer: &Received<'_>) -> bool {
        let peer = self.learnt_peer.clone().unwrap_or_default();
        mac::verifies(answer.mac, || {
            scope.answer(&self.recv_key, &peer, asker, answer.status, answer.body)
        })
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
        let answer = Received { status, body, mac };
        match id {
            LinkRequest::Hello(nonce) => self.on_welcome(nonce, &answer, now, local),
            LinkRequest::Batch(nonce_s, seq, request_mac) => {
                self.on_batch_answer(nonce_s, seq, &request_mac, &answer, now)
            }
        }
    }

    /// The peer's answer to this node's hello with `nonce`: the session
    /// opens, or the pairing is refused, or a new hello goes later.
    fn on_welcome(
        &mut self,
        nonce: [u8; 32],
        answer: &Received<'_>,
        now: Instant,
        local: &LocalParams,
    ) -> (AnswerVerdict, LinkEvent) {
        let Received { status, body, mac } = *answer;
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
        let scope = MacScope {
            kind: b"welcome",
            nonce_s: &nonce,
            nonce_r: &nonce_r,
            seq: 0,
        };
        let verified = mac::verifies(mac, || {
            scope.answer(&self.recv_key, &answerer, &self.me, status, body)
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
        let mine = Params::of(local);
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

    /// The peer's answer to batch `seq` of the session with `nonce_s`
    /// (whose MAC was `request_mac`).
    fn on_batch_answer(
        &mut self,
        nonce_s: [u8; 32],
        seq: u64,
        request_mac: &[u8; 32],
        answer: &Received<'_>,
        now: Instant,
    ) -> (AnswerVerdict, LinkEvent) {
        let Received { status, body, .. } = *answer;
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
        let unknown_session = MacScope {
            kind: b"unknown-session",
            nonce_s: &nonce_s,
            nonce_r: request_mac,
            seq,
        };
        if status == 409 && self.verify_answer(&unknown_session, "", answer) {
            tracing::warn!(
                "the peer node does not know this link session (it restarted): new session"
            );
            self.restart(now, Duration::ZERO);
            return (AnswerVerdict::Reset, LinkEvent::None);
        }
        let scope = MacScope {
            kind: b"batch",
            nonce_s: &nonce_s,
            nonce_r: &nonce_r,
            seq,
        };
        if !self.verify_answer(&scope, &self.me, answer) {
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
}
