//! The model of the node under test: its current and pending inbound
//! sessions, and the checks that predict its answer to every request
//! delivered (status, MAC, the messages applied, the session event).

use super::LinkHarness;
use super::wire::{
    ME, Wire, WireBatch, WireHello, assert_round_trip, lenient_unhex, lenient_unhex32, link_mac,
    to_hex,
};
use crate::qkd::Role;
use crate::qkd::link::session::{Answer, LinkEvent};

/// An inbound session as the model tracks it.
#[derive(Debug, Clone)]
pub(super) struct ModelSession {
    pub(super) nonce_s: [u8; 32],
    pub(super) nonce_r: [u8; 32],
    pub(super) next_seq: u64,
    pub(super) incarnation: String,
    pub(super) peer: String,
}

/// What the receiving node should hold: its current and pending inbound
/// sessions.
#[derive(Debug, Default)]
pub(super) struct Model {
    pub(super) current: Option<ModelSession>,
    pub(super) pending: Option<ModelSession>,
}

impl LinkHarness {
    /// Delivers `wire` to the node under test and checks its answer
    /// against the model; returns the answer.
    pub(super) fn deliver(&mut self, wire: &Wire) -> (u16, Vec<u8>, Option<String>) {
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
        let reply = |a: &Answer| (a.status, a.body.clone(), a.mac.clone());
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
}
