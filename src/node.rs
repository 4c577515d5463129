//! A running node: its engine (when it fronts a QKD device), the network
//! link to its peer node, the outbound thread (link sync and key pushes),
//! and its HTTP listener serving the configured protocols.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::Waker;

use crate::api::link::{LINK_LANE, NetLink};
use crate::api::push::Pushes;
use crate::api::{AgreementApi, NcpApi};
use crate::api::{Etsi004, HealthSources, RequestMetrics, Router};
use crate::config::{NodeConfig, Protocol};
use crate::http::{Answer, Client, Origin, OriginId, Pool, Server};
use crate::kms::ReceivedKeys;
use crate::kms::donau::Donau;
use crate::kms::entropy::{Entropy, QkdSource};
use crate::kms::keys::StoreKeys;
use crate::kms::ncp::{KeySource, NcpService};
use crate::qkd::link::session::{LinkRequest, MAC_HEADER};
use crate::qkd::push::PushId;
use crate::qkd::{Engine, EngineConfig, EngineError, parse_secret};

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

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is inconsistent.
    #[error("node {node}: {message}")]
    Config {
        /// The node's name.
        node: String,
        /// What is wrong.
        message: String,
    },
    /// The engine could not start.
    #[error("node {0}: {1}")]
    Engine(String, EngineError),
    /// A socket or thread could not be set up.
    #[error("node {0}: {1}")]
    Io(String, std::io::Error),
}

/// Process-wide services a node may serve.
#[derive(Debug, Clone, Default)]
pub struct Services {
    /// The store's master keys and access keys (for `ncp-kms`).
    pub keys: Option<Arc<StoreKeys>>,
    /// Key agreement and login (for `key-agreement`).
    pub agreement: Option<AgreementApi>,
    /// The Donau and the base path of its `keys` (for `donau`).
    pub donau: Option<(Arc<Donau>, String)>,
}

/// The engine as a source of QKD key for local use (KMS entropy).
struct EngineEntropy(Arc<Engine>);

impl QkdSource for EngineEntropy {
    fn take_block(&self) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        self.0.take_local_block()
    }
}

/// The engine side of a node: engine, link, push table, outbound thread.
struct Core {
    engine: Arc<Engine>,
    link: Option<Arc<NetLink>>,
    push: Arc<Pushes>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    outbound: Option<JoinHandle<()>>,
}

/// One running node.
pub struct RunningNode {
    name: String,
    core: Option<Core>,
    server: Option<Server>,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("name", &self.name)
            .field("addr", &self.server.as_ref().map(Server::local_addr))
            .finish_non_exhaustive()
    }
}

impl RunningNode {
    /// Starts the node `config` describes; slow handlers run on `pool`.
    pub fn start(config: &NodeConfig, pool: &Pool) -> Result<RunningNode, NodeError> {
        RunningNode::start_with(config, pool, &Services::default())
    }

    /// Starts the node with process-wide `services` (the store's keys).
    pub fn start_with(
        config: &NodeConfig,
        pool: &Pool,
        services: &Services,
    ) -> Result<RunningNode, NodeError> {
        let name = config.name.clone();
        let bad = |message: String| NodeError::Config {
            node: name.clone(),
            message,
        };
        let needs_engine = config.serve.contains(&Protocol::Etsi004Qkd);
        if needs_engine && config.engine.is_none() {
            return Err(bad(
                "serving etsi004-qkd needs an [node.engine] section".into()
            ));
        }
        let core = match &config.engine {
            Some(engine) => {
                let mut engine = engine.clone();
                engine.name = name.clone();
                Some(start_core(
                    &name,
                    &engine,
                    config.push.queue_chunks,
                    config.push.max_in_flight,
                    config.http.max_body_bytes,
                )?)
            }
            None => None,
        };
        let requests = Arc::new(RequestMetrics::default());
        let mut router = Router::new(Arc::clone(&requests));
        let received = config
            .serve
            .contains(&Protocol::Etsi004Kms)
            .then(|| Arc::new(ReceivedKeys::new(config.kms.received_capacity_bytes)));
        let server_stats = Arc::new(OnceLock::new());
        let health = HealthSources {
            node: name.clone(),
            node_json: serde_json::Value::from(name.as_str()).to_string(),
            engine: core.as_ref().map(|c| Arc::clone(&c.engine)),
            link: core.as_ref().and_then(|c| c.link.clone()),
            push: core.as_ref().map(|c| Arc::clone(&c.push)),
            received: received.clone(),
            agreement: services
                .agreement
                .as_ref()
                .filter(|_| config.serve.contains(&Protocol::KeyAgreement))
                .map(|a| Arc::clone(a.service())),
            requests: Arc::clone(&requests),
            server: Arc::clone(&server_stats),
        };
        crate::api::healthz_route(&mut router, health.clone());
        crate::api::metrics_route(&mut router, health);
        if let Some(core) = &core {
            if let Some(link) = &core.link {
                link.mount(&mut router);
            }
            if config.serve.contains(&Protocol::Etsi004Qkd) {
                // Keep one pool thread free of open-connect waits.
                let max_waiting = pool.threads().saturating_sub(1);
                Etsi004::new(
                    Arc::clone(&core.engine),
                    Arc::clone(&core.push),
                    max_waiting,
                )
                .mount(&mut router);
            }
        }
        if let Some(store) = &received {
            crate::api::key_material_route(&mut router, Arc::clone(store));
        }
        if config.serve.contains(&Protocol::NcpKms) {
            let keys = services
                .keys
                .clone()
                .ok_or_else(|| bad("serving ncp-kms needs the store (data_dir)".into()))?;
            // New key material mixes in this node's QKD key when it has a
            // device (leader side; see kms::entropy).
            let entropy = match &core {
                Some(c) => Entropy::with_qkd(Box::new(EngineEntropy(Arc::clone(&c.engine)))),
                None => Entropy::os_only(),
            };
            let service = NcpService::new(Arc::clone(&keys) as Arc<dyn KeySource>)
                .with_entropy(Arc::new(entropy));
            NcpApi::new(keys, Arc::new(service)).mount(&mut router);
        }
        if config.serve.contains(&Protocol::KeyAgreement) {
            services
                .agreement
                .as_ref()
                .ok_or_else(|| bad("serving key-agreement needs the store (data_dir)".into()))?
                .mount(&mut router);
        }
        if config.serve.contains(&Protocol::Donau) {
            let (donau, base_path) = services
                .donau
                .as_ref()
                .ok_or_else(|| bad("serving donau needs a [donau] section and the store".into()))?;
            crate::api::donau_route(&mut router, base_path, Arc::clone(donau));
        }
        let server = Server::start(
            &name,
            &config.http.server_config(config.listen, config.workers),
            Arc::new(router),
            pool.clone(),
        )
        .map_err(|e| {
            let context = format!("cannot listen on {}: {e}", config.listen);
            NodeError::Io(name.clone(), std::io::Error::new(e.kind(), context))
        })?;
        let _ = server_stats.set(Arc::clone(server.stats()));
        Ok(RunningNode {
            name,
            core,
            server: Some(server),
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the node's listener is.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server
            .as_ref()
            .map(Server::local_addr)
            .expect("running until shut down")
    }

    /// The node's engine, if it fronts a device.
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.core.as_ref().map(|c| &c.engine)
    }

    /// Shutdown, step 1: take no more key for pushes.
    pub fn stop_pushing(&self) {
        if let Some(core) = &self.core {
            core.push.stop_all();
        }
    }

    /// Chunks taken for pushes and not yet acknowledged.
    pub fn pushes_pending(&self) -> usize {
        self.core.as_ref().map_or(0, |c| c.push.unacked())
    }

    /// Shutdown, step 2: stop the outbound thread and the listener (which
    /// finishes its in-flight requests), and wait for them. Dropping the
    /// node does the same.
    pub fn shut_down(self) {
        drop(self);
    }

    fn stop(&mut self) {
        if let Some(core) = self.core.as_mut() {
            core.stop.store(true, Ordering::Release);
            let _ = core.waker.wake();
            if let Some(t) = core.outbound.take() {
                let _ = t.join();
            }
        }
        if let Some(server) = self.server.take() {
            server.shutdown_handle().trigger();
            server.join();
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds the engine, its network link and the outbound thread, and
/// resumes the pushes a restart interrupted.
fn start_core(
    name: &str,
    config: &EngineConfig,
    queue_chunks: usize,
    max_in_flight: usize,
    max_body_bytes: usize,
) -> Result<Core, NodeError> {
    let io = |e| NodeError::Io(name.to_owned(), e);
    let bad = |m: String| NodeError::Config {
        node: name.to_owned(),
        message: m,
    };
    let mut client: Client<RequestId> = Client::new(max_in_flight, Some(MAC_HEADER)).map_err(io)?;
    let waker = client.waker();
    let (link, engine) = match &config.link {
        Some(l) => {
            let secret = l
                .secret
                .as_ref()
                .ok_or_else(|| bad("engine.link.secret is required".into()))?;
            let key = parse_secret(secret, "link.secret")
                .map_err(|e| NodeError::Engine(name.to_owned(), e.into()))?;
            let (link, inbox) = NetLink::new(
                name,
                config.role,
                l.peer_name.clone(),
                key,
                max_body_bytes,
                Arc::clone(&waker),
            );
            let engine = Engine::with_link(config, link.transport(), Some(inbox));
            (Some(link), engine)
        }
        None => (None, Engine::new(config)),
    };
    let engine = Arc::new(engine.map_err(|e| NodeError::Engine(name.to_owned(), e))?);
    if let Some(link) = &link {
        link.attach(&engine);
    }
    let peer = match (&config.link, &link) {
        (Some(l), Some(_)) => {
            let mut peer = Origin::parse(&l.peer).map_err(|m| bad(format!("link.peer: {m}")))?;
            peer.resolve().map_err(|e| bad(format!("link.peer: {e}")))?;
            Some(client.origin_lane(&peer, LINK_LANE))
        }
        _ => None,
    };
    let push = Arc::new(Pushes::new(
        Arc::clone(&engine),
        queue_chunks,
        Arc::clone(&waker),
    ));
    push.resume();
    let stop = Arc::new(AtomicBool::new(false));
    let outbound = {
        let (link, push, stop) = (link.clone(), Arc::clone(&push), Arc::clone(&stop));
        thread::Builder::new()
            .name(format!("{name}-out"))
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let step = || outbound_step(link.as_deref(), peer, &push, &mut client);
                    if catch_unwind(AssertUnwindSafe(step)).is_err() {
                        // A bug, not bad input: keep the link and the other
                        // pushes going rather than stop them all.
                        tracing::error!("outbound step panicked; continuing");
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            })
            .map_err(io)?
    };
    Ok(Core {
        engine,
        link,
        push,
        stop,
        waker,
        outbound: Some(outbound),
    })
}

/// One turn of a node's outbound thread: queue link sync and pushes, then
/// move bytes until something is due (at most [`OUTBOUND_IDLE`]).
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
                None => crate::http::Verdict::Accept,
            },
            RequestId::Push(id) => push.answer(id, a.status, now),
        }
    };
    if let Err(e) = client.run(wait, &mut on_answer) {
        tracing::error!("outbound poll failed: {e}");
        thread::sleep(Duration::from_millis(10));
    }
}
