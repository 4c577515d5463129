//! Link sync between the two nodes of a QKD link over HTTP: the routes
//! (`POST /api/v1/link/hello`, `POST /api/v1/link/messages`) and the
//! outbound side, over the sans-IO [`LinkSession`].
//!
//! The session (handshake, sequence numbers, MACs) is `keypipe-core`'s:
//! see `qkd::link::session` there.
//!
//! The engine sends through [`NetTransport`]; messages from the peer go to
//! the engine's inbox, in order. Session events reach the engine: a new
//! session of this node starts with its sync; a new session of the peer
//! gets this node's sync; a restarted peer gets a new session.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam::channel::{Sender, unbounded};
use mio::Waker;
use zeroize::Zeroizing;

use crate::http::{Client, Method, OriginId, Outgoing, Reply, Request, Response, Verdict};
use crate::router::{Handler, Router};
use keypipe_core::qkd::link::session::{
    AnswerVerdict, HELLO_PATH, LinkEvent, LinkRequest, LinkSession, LocalParams, MAC_HEADER,
    MAX_BATCHES, MESSAGES_PATH, SEQ_HEADER, SESSION_HEADER,
};
use keypipe_core::qkd::{Engine, Inbox, LinkDown, LinkMsg, LinkTransport, Role};

/// The lane of link requests in the outbound client (pushes use lane 0).
pub const LINK_LANE: u8 = 1;
/// The peer is down when nothing was acknowledged for this long.
const UP_WINDOW: Duration = Duration::from_millis(1500);

/// One node's end of a network link.
pub struct NetLink {
    session: Mutex<LinkSession>,
    engine: OnceLock<Weak<Engine>>,
    waker: Arc<Waker>,
    inbox: Sender<LinkMsg>,
    epoch: Instant,
    /// ms since `epoch` of the last acknowledged batch, plus one (0: never).
    last_ack: AtomicU64,
    refused: AtomicBool,
    /// The peer's name: a client certificate on link sync must name it.
    peer_name: Option<String>,
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
        if self.0.lock().send(msg) {
            let _ = self.0.waker.wake();
        }
        Ok(())
    }

    fn is_up(&self) -> bool {
        self.0.is_up()
    }
}

impl NetLink {
    /// The link of node `name` (`role`) keyed by the shared `secret`;
    /// `peer_name`, when given, is the only peer accepted; `max_body_bytes`
    /// is this node's request limit; `waker` wakes the outbound thread.
    /// Returns the link and the engine's inbox.
    pub fn new(
        name: &str,
        role: Role,
        peer_name: Option<String>,
        secret: Zeroizing<[u8; 32]>,
        max_body_bytes: usize,
        waker: Arc<Waker>,
    ) -> (Arc<NetLink>, Inbox) {
        let (inbox_tx, inbox_rx) = unbounded();
        let now = Instant::now();
        let link = Arc::new(NetLink {
            peer_name: peer_name.clone(),
            session: Mutex::new(LinkSession::new(
                name,
                role,
                peer_name,
                &secret,
                max_body_bytes,
                now,
            )),
            engine: OnceLock::new(),
            waker,
            inbox: inbox_tx,
            epoch: now,
            last_ack: AtomicU64::new(0),
            refused: AtomicBool::new(false),
        });
        (link, Inbox::new(inbox_rx))
    }

    /// The engine this link serves (set once it is built).
    pub fn attach(&self, engine: &Arc<Engine>) {
        let _ = self.engine.set(Arc::downgrade(engine));
    }

    fn lock(&self) -> MutexGuard<'_, LinkSession> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport to hand the engine.
    pub fn transport(self: &Arc<Self>) -> Box<dyn LinkTransport> {
        Box::new(NetTransport(Arc::clone(self)))
    }

    /// True while the peer acknowledges this node's batches.
    pub fn is_up(&self) -> bool {
        match self.last_ack.load(Ordering::Acquire) {
            0 => false,
            t => {
                !self.refused.load(Ordering::Acquire)
                    && self.epoch.elapsed() < Duration::from_millis(t - 1) + UP_WINDOW
            }
        }
    }

    /// Why pairing with the peer is refused, if it is.
    pub fn refusal(&self) -> Option<String> {
        self.lock().refused().map(str::to_owned)
    }

    fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.get().and_then(Weak::upgrade)
    }

    fn local(&self) -> Option<LocalParams> {
        let engine = self.engine()?;
        Some(LocalParams {
            device: engine.device_params(),
            paired_before: engine.paired_before(),
        })
    }

    /// Acts on a session event, with no lock held.
    fn on_event(&self, event: LinkEvent) {
        let Some(engine) = self.engine() else {
            return;
        };
        match event {
            LinkEvent::None => {}
            LinkEvent::SessionOpen { peer_position } => {
                self.refused.store(false, Ordering::Release);
                self.note_ack();
                engine.adopt_position(peer_position);
                engine.mark_paired();
                engine.begin_session();
            }
            LinkEvent::PeerSession { restarted: true } => {
                self.lock().resync(Instant::now());
                let _ = self.waker.wake();
            }
            LinkEvent::PeerSession { restarted: false } => engine.begin_session(),
            LinkEvent::Refused(_) => self.refused.store(true, Ordering::Release),
        }
    }

    fn note_ack(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.last_ack.fetch_max(ms, Ordering::AcqRel);
    }

    /// Adds the link-sync routes.
    pub fn mount(self: &Arc<Self>, router: &mut Router) {
        let me = Arc::clone(self);
        let hello: Handler = Arc::new(move |req| Reply::Now(me.receive(&req, true)));
        let me = Arc::clone(self);
        let batch: Handler = Arc::new(move |req| Reply::Now(me.receive(&req, false)));
        router
            .route(Method::Post, HELLO_PATH, hello)
            .route(Method::Post, MESSAGES_PATH, batch);
    }

    /// Who may send link sync: over TLS, a node certificate (`OU=node`)
    /// naming the peer (`CN` = `peer_name`, when set); without a client
    /// certificate, only a caller on loopback (link sync between hosts
    /// needs mutual TLS). The HMAC of every message is checked as well.
    fn check_caller(&self, req: &Request) -> Result<(), String> {
        let Some(peer) = req.peer.as_deref() else {
            return Ok(()); // not from a socket (in-process)
        };
        match &peer.identity {
            Some(id) if id.role != "node" => Err(format!(
                "link sync: the client certificate ({}) is not a QKD node's (OU=node)",
                id.name
            )),
            Some(id) => match &self.peer_name {
                Some(name) if &id.name != name => Err(format!(
                    "link sync: the client certificate names {}, not the peer node {name}",
                    id.name
                )),
                _ => Ok(()),
            },
            None if peer.addr.ip().is_loopback() => Ok(()),
            None => Err(
                "link sync from another host needs mutual TLS: a node certificate (OU=node)".into(),
            ),
        }
    }

    fn receive(&self, req: &Request, hello: bool) -> Response {
        if let Err(why) = self.check_caller(req) {
            tracing::warn!(peer = ?req.peer.as_ref().map(|p| p.addr), "{why}");
            return Response::json(403, serde_json::json!({ "message": why }).to_string());
        }
        let Some(local) = self.local() else {
            return Response::json(503, r#"{"message":"node starting"}"#);
        };
        let answer = {
            let mut session = self.lock();
            if hello {
                session.receive_hello(&req.body, req.header(MAC_HEADER), &local)
            } else {
                session.receive_batch(
                    req.header(SESSION_HEADER),
                    req.header(SEQ_HEADER),
                    &req.body,
                    req.header(MAC_HEADER),
                )
            }
        };
        for msg in answer.msgs {
            let _ = self.inbox.send(msg);
        }
        self.on_event(answer.event);
        let mut response = if answer.body.is_empty() {
            Response::empty(answer.status)
        } else {
            Response::json(answer.status, answer.body)
        };
        if let Some(mac) = answer.mac {
            response = response.header("X-Keypipe-Link-Mac", mac);
        }
        response
    }

    /// Outbound thread: queues hellos, batches and heartbeats for the peer.
    pub fn fill<T: Copy>(
        &self,
        client: &mut Client<T>,
        peer: OriginId,
        now: Instant,
        id: impl Fn(LinkRequest) -> T,
    ) {
        let Some(local) = self.local() else {
            return;
        };
        let mut session = self.lock();
        while client.queued(peer) < MAX_BATCHES + 1 {
            let Some(out) = session.poll_transmit(now, &local) else {
                break;
            };
            let headers: Vec<(&str, &str)> =
                out.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let bytes = crate::http::request_bytes(
                "POST",
                client.origin_of(peer),
                out.path,
                "application/json",
                &headers,
                &out.body,
            );
            client.enqueue(
                peer,
                Outgoing {
                    bytes,
                    id: id(out.id),
                },
            );
        }
    }

    /// Outbound thread: the peer answered link request `id`.
    pub fn answer(
        &self,
        id: LinkRequest,
        status: u16,
        body: &[u8],
        mac: Option<&[u8]>,
        now: Instant,
    ) -> Verdict {
        let Some(local) = self.local() else {
            return Verdict::Retry;
        };
        let (verdict, event) = self.lock().on_answer(id, status, body, mac, now, &local);
        if verdict == AnswerVerdict::Accept && matches!(id, LinkRequest::Batch(..)) && status == 204
        {
            self.note_ack();
        }
        self.on_event(event);
        match verdict {
            AnswerVerdict::Accept | AnswerVerdict::Reset => Verdict::Accept,
            AnswerVerdict::Retry => Verdict::Retry,
        }
    }
}
