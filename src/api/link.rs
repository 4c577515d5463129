//! Link sync between the two nodes of a QKD link over HTTP:
//! `POST /api/v1/link/messages` carries a batch of [`LinkMsg`]s
//! (bookkeeping only, never key bytes).
//!
//! Body: `{"session": S, "seq": N, "msgs": [...]}`. `session` is the
//! sender's start time (µs since the Unix epoch), `seq` numbers its batches
//! from 0. Authentication: header `X-Keypipe-Link-Mac` is the hex
//! HMAC-SHA256, under the shared `link.secret`, of
//! `"keypipe-link-v1\n" + path + "\n" + body`, checked in constant time.
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
use crate::qkd::{Inbox, LinkDown, LinkMsg, LinkTransport};

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
    key: Zeroizing<[u8; 32]>,
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
    /// A link keyed by `key`; `waker` wakes the outbound thread. Returns the
    /// link and the engine's inbox.
    pub fn new(key: Zeroizing<[u8; 32]>, waker: Arc<Waker>) -> (Arc<NetLink>, Inbox) {
        let (out_tx, out_rx) = unbounded();
        let (inbox_tx, inbox_rx) = unbounded();
        let session = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let link = Arc::new(NetLink {
            key,
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

    fn mac(&self, body: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.key[..])
            .expect("HMAC takes any key length");
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
        if self.mac(&req.body).verify_slice(&mac).is_err() {
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
        let mac = hex(&self.mac(&body).finalize().into_bytes());
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
