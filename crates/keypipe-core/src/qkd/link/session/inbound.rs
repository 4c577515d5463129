//! The receiving end of a session: the peer's hellos (checked, then a
//! pending session this node welcomes) and its batches (applied once, in
//! sequence), each answered with this node's MAC.

use hmac::Mac;
use serde_json::json;

use super::mac::{self, MacScope};
use super::wire::{Batch, Hello, Params, Welcome, random_nonce, unhex32};
use super::{Answer, Inbound, LinkEvent, LinkSession, LocalParams};
use crate::qkd::confirm::hex;

impl LinkSession {
    /// This node's signed answer to the peer (`peer` is its name as the
    /// request gave it) with `status` and `body`, for the request `scope`
    /// describes.
    pub(super) fn answer(
        &self,
        scope: &MacScope<'_>,
        peer: &str,
        status: u16,
        body: Vec<u8>,
    ) -> Answer {
        self.answer_under(&self.send_key, scope, peer, status, body)
    }

    /// As [`Self::answer`], MAC'd under `key`.
    fn answer_under(
        &self,
        key: &[u8; 32],
        scope: &MacScope<'_>,
        peer: &str,
        status: u16,
        body: Vec<u8>,
    ) -> Answer {
        let mac = scope.answer(key, &self.me, peer, status, &body).finalize();
        Answer {
            status,
            body,
            mac: Some(hex(&mac.into_bytes())),
            msgs: Vec::new(),
            event: LinkEvent::None,
        }
    }

    /// The signed 409 refusing to pair with `peer` (a welcome's scope),
    /// MAC'd under `key`.
    fn pairing_refused(&self, key: &[u8; 32], peer: &str, nonce_s: &[u8; 32], why: &str) -> Answer {
        let body = json!({ "message": why, "refused": true, "from": self.me })
            .to_string()
            .into_bytes();
        let scope = MacScope {
            kind: b"welcome",
            nonce_s,
            nonce_r: &[0; 32],
            seq: 0,
        };
        self.answer_under(key, &scope, peer, 409, body)
    }

    /// An answer without a MAC (the request could not be authenticated).
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
        let verified = mac::verifies(mac, || mac::hello(&self.recv_key, body));
        if !verified {
            // Signed with this node's own direction key: the peer has the
            // same role. Say so, signed so that such a peer can check it.
            let same_role = mac::verifies(mac, || mac::hello(&self.send_key, body));
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
                // Under the key such a peer verifies with: its own.
                return self.pairing_refused(&self.recv_key, &hello.from, &nonce_s, &why);
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
        let mine = Params::of(local);
        let problem = self.hello_problem(&hello, &mine);
        if let Some(why) = problem {
            // Only the asker's side records it (see above): a replayed
            // hello must not stop this node's link.
            tracing::error!(peer = %hello.from, "pairing refused: {why}");
            return self.pairing_refused(&self.send_key, &hello.from, &nonce_s, &why);
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
        let scope = MacScope {
            kind: b"welcome",
            nonce_s: &nonce_s,
            nonce_r: &nonce_r,
            seq: 0,
        };
        self.answer(&scope, &hello.from, 200, body)
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
            let scope = MacScope {
                kind: b"unknown-session",
                nonce_s: &nonce_s,
                nonce_r: &request_mac,
                seq,
            };
            return self.answer(&scope, "", 409, body);
        };
        let peer = session.peer.clone();
        let nonce_r = session.nonce_r;
        let scope = MacScope {
            kind: b"batch",
            nonce_s: &nonce_s,
            nonce_r: &nonce_r,
            seq,
        };
        let verified = mac::verifies(mac, || scope.request(&self.recv_key, &peer, &self.me, body));
        if !verified {
            return Self::unauthenticated(401, "bad link MAC");
        }
        let ok = |me: &Self| me.answer(&scope, &peer, 204, Vec::new());
        if seq < session.next_seq {
            return ok(self); // a resend of a batch applied already
        }
        if seq > session.next_seq {
            let body =
                json!({ "message": "link batch out of sequence", "expected": session.next_seq })
                    .to_string()
                    .into_bytes();
            return self.answer(&scope, &peer, 409, body);
        }
        let batch: Batch = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                let body = json!({ "message": format!("invalid link batch: {e}") })
                    .to_string()
                    .into_bytes();
                return self.answer(&scope, &peer, 400, body);
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
