//! Link sync between the two nodes of a QKD link over HTTP:
//! `POST /api/v1/link/messages` carries a batch of [`LinkMsg`]s
//! (bookkeeping only, never key bytes).
//!
//! Body: `{"session": S, "seq": N, "msgs": [...]}`. `session` is the
//! sender's start time (µs since the Unix epoch), `seq` numbers its batches
//! from 0. Authentication: header `X-Keypipe-Link-Mac` is the hex
//! HMAC-SHA256 of `"keypipe-link-v1\n" + path + "\n" + body` under the
//! sender's direction key, BLAKE3 `derive_key("keypipe link-sync v1 2026
//! from leader" | "… from follower", link.secret)`, checked in constant
//! time (a node's own batches reflected back to it do not verify).
//! Replays are ignored: a batch is applied only if its session is the
//! newest seen and its `seq` is the next expected (a resent batch already
//! applied is acknowledged again, not re-applied); an older session is 409.
//!
//! The sender batches whatever the node emitted, keeps at most a few
//! batches in flight (the client resends them in order until answered),
//! and sends an empty batch as a heartbeat when idle. The peer counts as
//! up while heartbeats are acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, Sender, unbounded};
use hmac::{KeyInit, Mac};
use mio::Waker;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use super::{Handler, Router};
use crate::http::{Client, Method, OriginId, Outgoing, PushOutcome, Reply, Request, Response};
use crate::qkd::{Inbox, LinkDown, LinkMsg, LinkTransport, Role};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Path of the link-sync endpoint.
pub const LINK_PATH: &str = "/api/v1/link/messages";
/// Header carrying the MAC.
pub const MAC_HEADER: &str = "x-keypipe-link-mac";
/// Tag bit marking link requests in the outbound client.
pub(crate) const LINK_TAG: u64 = 1 << 63;
/// Heartbeat period when idle.
const HEARTBEAT: Duration = Duration::from_millis(250);
/// The peer is down when nothing was acknowledged for this long.
const UP_WINDOW: Duration = Duration::from_millis(1500);
/// Batches in flight at most.
const MAX_BATCHES: usize = 4;
/// Messages per batch at most.
const MAX_BATCH_MSGS: usize = 4096;

#[derive(Serialize, Deserialize)]
struct Batch {
    session: u64,
    seq: u64,
    msgs: Vec<LinkMsg>,
}

#[derive(Default)]
struct Received {
    session: u64,
    next_seq: u64,
}

struct Sent {
    session: u64,
    next_seq: u64,
    last_sent: Option<Instant>,
}

/// One node's end of a network link.
pub struct NetLink {
    /// MAC key of what this node sends.
    send_key: Zeroizing<[u8; 32]>,
    /// MAC key of what the peer sends.
    recv_key: Zeroizing<[u8; 32]>,
    out_tx: Sender<LinkMsg>,
    out_rx: Receiver<LinkMsg>,
    waker: Arc<Waker>,
    epoch: Instant,
    /// ms since `epoch` of the last acknowledged batch, plus one (0: never).
    last_ack: AtomicU64,
    inbox: Sender<LinkMsg>,
    received: Mutex<Received>,
    sent: Mutex<Sent>,
}

impl std::fmt::Debug for NetLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetLink")
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// The [`LinkTransport`] the engine sends through.
#[derive(Debug)]
pub struct NetTransport(Arc<NetLink>);

impl LinkTransport for NetTransport {
    fn send(&self, msg: LinkMsg) -> Result<(), LinkDown> {
        self.0.out_tx.send(msg).map_err(|_| LinkDown)?;
        let _ = self.0.waker.wake();
        Ok(())
    }

    fn is_up(&self) -> bool {
        self.0.is_up()
    }
}

impl NetLink {
    /// A link keyed by the shared `secret`, for the node with `role`;
    /// `waker` wakes the outbound thread. Returns the link and the engine's
    /// inbox.
    pub fn new(
        secret: Zeroizing<[u8; 32]>,
        role: Role,
        waker: Arc<Waker>,
    ) -> (Arc<NetLink>, Inbox) {
        // One MAC key per direction, so a node's own batches reflected back
        // to it never verify.
        let direction_key = |from: Role| {
            let context = match from {
                Role::Leader => "keypipe link-sync v1 2026 from leader",
                Role::Follower => "keypipe link-sync v1 2026 from follower",
            };
            Zeroizing::new(blake3::derive_key(context, &secret[..]))
        };
        let peer_role = match role {
            Role::Leader => Role::Follower,
            Role::Follower => Role::Leader,
        };
        let (out_tx, out_rx) = unbounded();
        let (inbox_tx, inbox_rx) = unbounded();
        let session = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let link = Arc::new(NetLink {
            send_key: direction_key(role),
            recv_key: direction_key(peer_role),
            out_tx,
            out_rx,
            waker,
            epoch: Instant::now(),
            last_ack: AtomicU64::new(0),
            inbox: inbox_tx,
            received: Mutex::new(Received::default()),
            sent: Mutex::new(Sent {
                session,
                next_seq: 0,
                last_sent: None,
            }),
        });
        (link, Inbox::new(inbox_rx))
    }

    /// The transport to hand the engine.
    pub fn transport(self: &Arc<Self>) -> Box<dyn LinkTransport> {
        Box::new(NetTransport(Arc::clone(self)))
    }

    /// True while the peer acknowledges our batches.
    pub fn is_up(&self) -> bool {
        match self.last_ack.load(Ordering::Acquire) {
            0 => false,
            t => self.epoch.elapsed() < Duration::from_millis(t - 1) + UP_WINDOW,
        }
    }

    fn mac(key: &[u8; 32], body: &[u8]) -> HmacSha256 {
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(&key[..]).expect("HMAC takes any key length");
        mac.update(b"keypipe-link-v1\n");
        mac.update(LINK_PATH.as_bytes());
        mac.update(b"\n");
        mac.update(body);
        mac
    }

    /// Adds the link-sync route.
    pub fn mount(self: &Arc<Self>, router: &mut Router) {
        let me = Arc::clone(self);
        let handler: Handler = Arc::new(move |req| Reply::Now(me.receive(&req)));
        router.route(Method::Post, LINK_PATH, handler);
    }

    fn receive(&self, req: &Request) -> Response {
        let refuse = |status, message: &str| super::json(status, &json!({ "message": message }));
        let Some(mac) = req
            .header(MAC_HEADER)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(decode_hex)
        else {
            return refuse(401, "missing or malformed link MAC");
        };
        if Self::mac(&self.recv_key, &req.body)
            .verify_slice(&mac)
            .is_err()
        {
            return refuse(401, "bad link MAC");
        }
        let batch: Batch = match serde_json::from_slice(&req.body) {
            Ok(b) => b,
            Err(e) => return refuse(400, &format!("invalid link batch: {e}")),
        };
        let mut state = self.received.lock().unwrap_or_else(|p| p.into_inner());
        if batch.session < state.session {
            return refuse(409, "stale link session");
        }
        if batch.session > state.session {
            if state.session != 0 {
                tracing::warn!("peer node restarted: new link session");
            }
            *state = Received {
                session: batch.session,
                next_seq: batch.seq,
            };
        }
        // A batch below `next_seq` is a resend already applied. One above
        // it cannot happen with an in-order sender; should it, applying it
        // beats dropping it.
        if batch.seq >= state.next_seq {
            if batch.seq > state.next_seq {
                tracing::warn!(
                    missing = batch.seq - state.next_seq,
                    "link-sync batches missing"
                );
            }
            state.next_seq = batch.seq + 1;
            for msg in batch.msgs {
                let _ = self.inbox.send(msg);
            }
        }
        Response::empty(204)
    }

    /// Outbound thread: queues a batch (or a heartbeat) for the peer.
    pub fn fill(&self, client: &mut Client, peer: OriginId, now: Instant) {
        if client.queued(peer) >= MAX_BATCHES {
            return;
        }
        let msgs: Vec<LinkMsg> = self.out_rx.try_iter().take(MAX_BATCH_MSGS).collect();
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let idle = client.queued(peer) == 0
            && sent
                .last_sent
                .is_none_or(|t| now.duration_since(t) >= HEARTBEAT);
        if msgs.is_empty() && !idle {
            return;
        }
        let batch = Batch {
            session: sent.session,
            seq: sent.next_seq,
            msgs,
        };
        let body = serde_json::to_vec(&batch).expect("link messages serialize");
        let mac = hex(&Self::mac(&self.send_key, &body).finalize().into_bytes());
        let bytes = crate::http::request_bytes(
            "POST",
            client.origin_of(peer),
            LINK_PATH,
            &[("X-Keypipe-Link-Mac", &mac)],
            &body,
        );
        client.enqueue(
            peer,
            Outgoing {
                bytes,
                tag: LINK_TAG | batch.seq,
            },
        );
        sent.next_seq += 1;
        sent.last_sent = Some(now);
    }

    /// Outbound thread: the peer answered a batch.
    pub fn answer(&self, status: u16, now: Instant) -> PushOutcome {
        if status == 204 {
            let ms = now.duration_since(self.epoch).as_millis() as u64 + 1;
            self.last_ack.fetch_max(ms, Ordering::AcqRel);
            PushOutcome::Accepted
        } else {
            tracing::error!(status, "peer node refused link sync (check link.secret)");
            PushOutcome::Retry
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Limits, Parsed, parse};

    fn link(role: Role) -> (Arc<NetLink>, Inbox) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        NetLink::new(Zeroizing::new([7u8; 32]), role, waker)
    }

    fn signed_request(from: &NetLink, batch: &Batch) -> Request {
        let body = serde_json::to_vec(batch).unwrap();
        let mac = hex(&NetLink::mac(&from.send_key, &body).finalize().into_bytes());
        let mut raw = format!(
            "POST {LINK_PATH} HTTP/1.1\r\nX-Keypipe-Link-Mac: {mac}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        match parse(&raw, &Limits::default()).unwrap() {
            Parsed::Complete(req, _) => req,
            Parsed::Partial { .. } => unreachable!(),
        }
    }

    #[test]
    fn batches_verify_one_way_apply_once_and_refuse_reflection() {
        let (leader, _leader_inbox) = link(Role::Leader);
        let (follower, follower_inbox) = link(Role::Follower);
        let msg = LinkMsg::Close {
            ksid: uuid::Uuid::new_v4(),
        };
        let batch = Batch {
            session: 10,
            seq: 0,
            msgs: vec![msg.clone()],
        };
        let req = signed_request(&leader, &batch);
        // Reflected back to its sender: refused.
        assert_eq!(leader.receive(&req).status, 401);
        // At the peer: applied once, a resend acknowledged but not re-applied.
        assert_eq!(follower.receive(&req).status, 204);
        assert_eq!(follower.receive(&req).status, 204);
        let got: Vec<LinkMsg> = follower_inbox.receiver().try_iter().collect();
        assert_eq!(got, vec![msg]);
        // An older session is refused; a tampered body does not verify.
        let old = signed_request(
            &leader,
            &Batch {
                session: 9,
                seq: 0,
                msgs: vec![],
            },
        );
        assert_eq!(follower.receive(&old).status, 409);
        let mut tampered = signed_request(
            &leader,
            &Batch {
                session: 10,
                seq: 1,
                msgs: vec![],
            },
        );
        tampered.body[5] ^= 1;
        assert_eq!(follower.receive(&tampered).status, 401);
    }
}
