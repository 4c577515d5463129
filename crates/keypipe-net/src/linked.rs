//! The engine side of a node: the engine, its network link to the peer
//! node, the push table, and the outbound thread that moves link sync and
//! pushes.
//!
//! The server's node and the C library both run one; neither
//! needs the other's parts (the server adds its listener and protocols,
//! the C library a listener with the link route only).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use keypipe_core::qkd::link::session::{LinkRequest, MAC_HEADER};
use keypipe_core::qkd::push::PushId;
use keypipe_core::qkd::{Engine, EngineConfig, EngineError, parse_secret};
use mio::Waker;

use crate::http::{Answer, Client, Origin, OriginId, Verdict};
use crate::link::{LINK_LANE, NetLink};
use crate::push::Pushes;
use crate::router::Router;
use crate::tls::{Pin, Revoked, client_config};

/// What a request of the outbound client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestId {
    /// Link sync.
    Link(LinkRequest),
    /// A key push.
    Push(PushId),
}

/// Longest wait of the outbound thread when nothing is due.
const OUTBOUND_IDLE: Duration = Duration::from_millis(50);

/// Why the engine side of a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// The engine could not start.
    #[error("{0}")]
    Engine(#[from] EngineError),
    /// A socket or thread could not be set up.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Limits of the outbound side.
#[derive(Debug, Clone)]
pub struct LinkedSettings {
    /// Most chunks per KMS taken ahead of their 201.
    pub queue_chunks: usize,
    /// Most requests in flight per destination.
    pub max_in_flight: usize,
    /// This node's request body limit (link batches stay well below the
    /// peer's, which is configured alike).
    pub max_body_bytes: usize,
    /// Revoked certificates: a peer node or KMS presenting one is refused.
    pub revoked: Option<Arc<Revoked>>,
}

impl Default for LinkedSettings {
    fn default() -> Self {
        Self {
            queue_chunks: 1024,
            max_in_flight: 64,
            max_body_bytes: crate::http::Limits::default().max_body_bytes,
            revoked: None,
        }
    }
}

/// A running engine with its link and pushes. Dropping it stops the
/// outbound thread (and with the last handle, the engine).
pub struct LinkedEngine {
    engine: Arc<Engine>,
    link: Option<Arc<NetLink>>,
    push: Arc<Pushes>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    outbound: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LinkedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkedEngine")
            .field("linked", &self.link.is_some())
            .finish_non_exhaustive()
    }
}

impl LinkedEngine {
    /// Builds the engine `config` describes (with its network link when it
    /// has a `[link]`), starts the outbound thread, and resumes the pushes
    /// a restart interrupted.
    pub fn start(config: &EngineConfig, settings: LinkedSettings) -> Result<Self, StartError> {
        let name = &config.name;
        let mut client: Client<RequestId> = Client::new(settings.max_in_flight, Some(MAC_HEADER))?;
        let waker = client.waker();
        let tls_error = |e: crate::tls::TlsError| StartError::Config(format!("tls: {e}"));
        if let Some(files) = &config.tls {
            // https:// KMS URIs: the URL's host must be named by the KMS's
            // certificate; this node presents its own.
            let config = client_config(files, Pin::default(), settings.revoked.clone());
            client.set_tls(Some(config.map_err(tls_error)?));
        }
        let (link, engine) = match &config.link {
            Some(l) => {
                let secret = l
                    .secret
                    .as_ref()
                    .ok_or_else(|| StartError::Config("engine.link.secret is required".into()))?;
                let key = parse_secret(secret, "link.secret").map_err(EngineError::from)?;
                let (link, inbox) = NetLink::new(
                    name,
                    config.role,
                    l.peer_name.clone(),
                    key,
                    settings.max_body_bytes,
                    Arc::clone(&waker),
                );
                let engine = Engine::with_link(config, link.transport(), Some(inbox));
                (Some(link), engine)
            }
            None => (None, Engine::new(config)),
        };
        let engine = Arc::new(engine?);
        if let Some(link) = &link {
            link.attach(&engine);
        }
        let peer = match (&config.link, &link) {
            (Some(l), Some(_)) => {
                let bad = |m: String| StartError::Config(format!("link.peer: {m}"));
                let mut peer = Origin::parse(&l.peer).map_err(bad)?;
                peer.resolve().map_err(|e| bad(e.to_string()))?;
                if !peer.tls && l.insecure_plaintext && !peer.is_loopback() {
                    tracing::warn!(
                        peer = %l.peer,
                        "link.insecure_plaintext: link sync crosses the network in clear"
                    );
                }
                // The peer's certificate must name the peer node (and match
                // its pinned key, when one is configured).
                let tls = match &config.tls {
                    Some(files) if peer.tls => {
                        let pin = Pin {
                            name: l.peer_name.clone(),
                            spki_sha256: l
                                .peer_spki_sha256
                                .as_deref()
                                .map(Pin::spki_from_hex)
                                .transpose()
                                .map_err(tls_error)?,
                        };
                        Some(
                            client_config(files, pin, settings.revoked.clone())
                                .map_err(tls_error)?,
                        )
                    }
                    _ => None,
                };
                Some(client.origin_lane(&peer, LINK_LANE, tls))
            }
            _ => None,
        };
        Self::run(engine, link, peer, client, waker, settings)
    }

    /// Pushes for an engine built elsewhere (an in-process pair, whose
    /// link sync needs no network).
    pub fn around(engine: Arc<Engine>, settings: LinkedSettings) -> Result<Self, StartError> {
        let client: Client<RequestId> = Client::new(settings.max_in_flight, Some(MAC_HEADER))?;
        let waker = client.waker();
        Self::run(engine, None, None, client, waker, settings)
    }

    fn run(
        engine: Arc<Engine>,
        link: Option<Arc<NetLink>>,
        peer: Option<OriginId>,
        mut client: Client<RequestId>,
        waker: Arc<Waker>,
        settings: LinkedSettings,
    ) -> Result<Self, StartError> {
        let push = Arc::new(Pushes::new(
            Arc::clone(&engine),
            settings.queue_chunks,
            Arc::clone(&waker),
        ));
        push.resume();
        let stop = Arc::new(AtomicBool::new(false));
        let outbound = {
            let (link, push, stop) = (link.clone(), Arc::clone(&push), Arc::clone(&stop));
            thread::Builder::new()
                .name(format!("{}-out", engine.name()))
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let step = || outbound_step(link.as_deref(), peer, &push, &mut client);
                        if catch_unwind(AssertUnwindSafe(step)).is_err() {
                            // A bug, not bad input: keep the link and the
                            // other pushes going rather than stop them all.
                            tracing::error!("outbound step panicked; continuing");
                            thread::sleep(Duration::from_millis(10));
                        }
                    }
                })?
        };
        Ok(Self {
            engine,
            link,
            push,
            stop,
            waker,
            outbound: Some(outbound),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The network link, when the engine has a peer node.
    pub fn link(&self) -> Option<&Arc<NetLink>> {
        self.link.as_ref()
    }

    /// The push table.
    pub fn pushes(&self) -> &Arc<Pushes> {
        &self.push
    }

    /// Adds the link-sync routes (the peer's hello and messages), if linked.
    pub fn mount(&self, router: &mut Router) {
        if let Some(link) = &self.link {
            link.mount(router);
        }
    }

    /// Stops the outbound thread and waits for it (idempotent; dropping
    /// does the same).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.outbound.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LinkedEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One turn of the outbound thread: queue link sync and pushes, then move
/// bytes until something is due (at most [`OUTBOUND_IDLE`]).
fn outbound_step(
    link: Option<&NetLink>,
    peer: Option<OriginId>,
    push: &Pushes,
    client: &mut Client<RequestId>,
) {
    let now = Instant::now();
    if let (Some(link), Some(peer)) = (link, peer) {
        link.fill(client, peer, now, RequestId::Link);
    }
    let due = push.fill(
        client,
        now,
        RequestId::Push,
        |id, stream| matches!(id, RequestId::Push(p) if p.stream == stream),
    );
    let wait = due.map_or(OUTBOUND_IDLE, |t| {
        t.saturating_duration_since(now).min(OUTBOUND_IDLE)
    });
    let mut on_answer = |a: Answer<'_, RequestId>| {
        let now = Instant::now();
        match a.id {
            RequestId::Link(id) => match link {
                Some(l) => l.answer(id, a.status, a.body, a.header, now),
                None => Verdict::Accept,
            },
            RequestId::Push(id) => push.answer(id, a.status, now),
        }
    };
    if let Err(e) = client.run(wait, &mut on_answer) {
        tracing::error!("outbound poll failed: {e}");
        thread::sleep(Duration::from_millis(10));
    }
}
