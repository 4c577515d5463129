//! A running node: its engine side (engine, network link, pushes and
//! outbound thread: [`LinkedEngine`]) when it fronts a QKD device, its
//! HTTP listener serving the configured protocols, and its own ETSI 014
//! and KeyTalk listeners when it serves them.

use std::sync::{Arc, OnceLock};

use crate::api::{AgreementApi, Etsi014Api, KeyTalkApi, NcpApi};
use crate::api::{Etsi004, HealthSources, KmsAccess, RequestMetrics, Router};
use crate::config::{Etsi014Settings, NodeConfig, Protocol};
use crate::http::{Pool, Server};
use crate::kms::donau::Donau;
use crate::kms::entropy::{Entropy, QkdSource};
use crate::kms::keys::StoreKeys;
use crate::kms::ncp::{KeySource, NcpService};
use crate::kms::replay::ReplayCache;
use crate::kms_side::ReceivedKeys;
use crate::linked::{LinkedEngine, LinkedSettings, StartError};
use crate::qkd::{Engine, EngineError};
use crate::tls::{Revoked, TlsAcceptor};

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
    /// KeyTalk enrolment (for `keytalk`).
    pub keytalk: Option<KeyTalkApi>,
    /// What ETSI 014 offers (for `etsi014`).
    pub etsi014: Etsi014Settings,
    /// Revoked client certificates, for every TLS listener.
    pub revoked: Arc<Revoked>,
    /// Signed NCP requests seen (each is accepted once), for every listener.
    pub ncp_replay: Arc<ReplayCache>,
}

/// The engine as a source of QKD key for local use (KMS entropy).
struct EngineEntropy(Arc<Engine>);

impl QkdSource for EngineEntropy {
    fn take_block(&self) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        self.0.take_local_block()
    }
}

/// One running node.
pub struct RunningNode {
    name: String,
    core: Option<LinkedEngine>,
    server: Option<Server>,
    tls: Option<Arc<TlsAcceptor>>,
    /// KeyTalk's TLS and plain listeners, with the TLS one's acceptor.
    keytalk: Vec<Server>,
    keytalk_tls: Option<Arc<TlsAcceptor>>,
    /// The ETSI 014 listener and its TLS.
    etsi014: Option<(Server, Arc<TlsAcceptor>)>,
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
                let mut settings = LinkedSettings {
                    max_body_bytes: config.http.max_body_bytes,
                    revoked: Some(Arc::clone(&services.revoked)),
                    ..LinkedSettings::default()
                };
                config.push.apply(&mut settings);
                Some(LinkedEngine::start(&engine, settings).map_err(|e| match e {
                    StartError::Config(message) => bad(message),
                    StartError::Engine(e) => NodeError::Engine(name.clone(), e),
                    StartError::Io(e) => NodeError::Io(name.clone(), e),
                })?)
            }
            None => None,
        };
        let requests = Arc::new(RequestMetrics::default());
        let mut router = Router::new(Arc::clone(&requests));
        let received = config
            .serve
            .contains(&Protocol::Etsi004Kms)
            .then(|| ReceivedKeys::new(config.kms_side.received_capacity_bytes).map(Arc::new))
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        let server_stats = Arc::new(OnceLock::new());
        let health = HealthSources {
            node: name.clone(),
            node_json: serde_json::Value::from(name.as_str()).to_string(),
            engine: core.as_ref().map(|c| Arc::clone(c.engine())),
            link: core.as_ref().and_then(|c| c.link().cloned()),
            push: core.as_ref().map(|c| Arc::clone(c.pushes())),
            received: received.clone(),
            agreement: services
                .agreement
                .as_ref()
                .filter(|_| config.serve.contains(&Protocol::KeyAgreement))
                .map(|a| Arc::clone(a.service())),
            keytalk: services
                .keytalk
                .as_ref()
                .filter(|_| config.serve.contains(&Protocol::KeyTalk))
                .map(|k| Arc::clone(k.service())),
            requests: Arc::clone(&requests),
            server: Arc::clone(&server_stats),
        };
        crate::api::healthz_route(&mut router, health.clone());
        crate::api::metrics_route(&mut router, health);
        if let Some(core) = &core {
            core.mount(&mut router);
            if config.serve.contains(&Protocol::Etsi004Qkd) {
                // Keep one pool thread free of open-connect waits.
                let max_waiting = pool.threads().saturating_sub(1);
                Etsi004::new(
                    Arc::clone(core.engine()),
                    Arc::clone(core.pushes()),
                    KmsAccess::new(&name, &config.kms, forbidden_targets(config)),
                    max_waiting,
                )
                .mount(&mut router);
            }
        }
        if let Some(store) = &received {
            let pushers = crate::kms_side::Pushers {
                nodes: config.kms_side.nodes.clone(),
            };
            crate::api::key_material_route(&mut router, Arc::clone(store), pushers);
        }
        if config.serve.contains(&Protocol::NcpKms) {
            let keys = services
                .keys
                .clone()
                .ok_or_else(|| bad("serving ncp-kms needs the store (data_dir)".into()))?;
            // New key material mixes in this node's QKD key when it has a
            // device (leader side; see kms::entropy).
            let entropy = match &core {
                Some(c) => Entropy::with_qkd(Box::new(EngineEntropy(Arc::clone(c.engine())))),
                None => Entropy::os_only(),
            };
            let service = NcpService::new(Arc::clone(&keys) as Arc<dyn KeySource>)
                .with_entropy(Arc::new(entropy));
            NcpApi::new(keys, Arc::new(service), Arc::clone(&services.ncp_replay))
                .mount(&mut router);
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
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(
                TlsAcceptor::new(files.clone(), Arc::clone(&services.revoked))
                    .map_err(|e| bad(format!("tls: {e}")))?,
            )),
            None => None,
        };
        let mut server_config = config.http.server_config(config.listen, config.workers);
        server_config.tls = tls.clone();
        let server = start_listener(&name, &name, &server_config, Arc::new(router), pool)?;
        let _ = server_stats.set(Arc::clone(server.stats()));
        let mut node = RunningNode {
            name,
            core,
            server: Some(server),
            tls,
            keytalk: Vec::new(),
            keytalk_tls: None,
            etsi014: None,
        };
        if config.serve.contains(&Protocol::KeyTalk) {
            node.start_keytalk(config, pool, services, Arc::clone(&requests))?;
        }
        if config.serve.contains(&Protocol::Etsi014) {
            node.start_etsi014(config, pool, services, requests)?;
        }
        Ok(node)
    }

    /// ETSI 014 on its own TLS listener (client certificates required),
    /// over directed streams of this node's engine.
    fn start_etsi014(
        &mut self,
        config: &NodeConfig,
        pool: &Pool,
        services: &Services,
        metrics: Arc<RequestMetrics>,
    ) -> Result<(), NodeError> {
        let bad = |message: String| self.config_error(message);
        let engine = self
            .engine()
            .cloned()
            .ok_or_else(|| bad("serving etsi014 needs a [node.engine] with a link".into()))?;
        let listener = config
            .etsi014
            .as_ref()
            .ok_or_else(|| bad("serving etsi014 needs [node.etsi014]".into()))?;
        let peer = config
            .etsi014_peer()
            .ok_or_else(|| bad("etsi014 needs [node.engine.link] peer_name".into()))?;
        let settings = &services.etsi014;
        let service_config = settings
            .service_config(&self.name, peer, listener)
            .map_err(bad)?;
        let engine_config = config.engine.as_ref().expect("the engine runs");
        let capacity = engine_config.directed_window() * engine_config.block_size as u64;
        // The largest request must fit in a pair's window (with a block to
        // spare: a key may start inside one), or it could never be served.
        let largest = u64::from(service_config.max_key_per_request)
            * u64::from(service_config.max_key_size / 8);
        let room = capacity.saturating_sub(engine_config.block_size as u64);
        if largest > room {
            return Err(bad(format!(
                "etsi014: max_key_per_request x max_key_size ({largest} bytes) must fit in one \
                 pair's window ({room} bytes: half of window_blocks, less a block): lower \
                 them or raise window_blocks"
            )));
        }
        if service_config.key_ttl_s > engine_config.max_ttl_s {
            return Err(bad(format!(
                "etsi014.key_ttl_s ({}) is above this node's max_ttl_s ({})",
                service_config.key_ttl_s, engine_config.max_ttl_s
            )));
        }
        let supply =
            crate::etsi014_supply::EngineSupply::new(engine, service_config.key_ttl_s, capacity);
        let service =
            crate::kms::etsi014::Etsi014::new(service_config, Arc::new(supply)).map_err(bad)?;
        let files = listener
            .tls
            .clone()
            .ok_or_else(|| bad("[node.etsi014] has no TLS certificate".into()))?;
        if files.client_ca.is_none() || files.client_auth != crate::tls::ClientAuth::Required {
            return Err(bad(
                "[node.etsi014.tls] needs client_ca and client_auth = \"required\": SAEs are \
                 known by their client certificates"
                    .into(),
            ));
        }
        let tls = Arc::new(
            TlsAcceptor::new(files, Arc::clone(&services.revoked))
                .map_err(|e| bad(format!("etsi014 tls: {e}")))?,
        );
        let mut router = Router::new(metrics);
        // Waiting enc_keys never take the whole pool: one thread stays free
        // for the other protocols' slow work.
        let max_waiting = settings
            .max_waiting
            .min(pool.threads().saturating_sub(1))
            .max(1);
        Etsi014Api::new(Arc::new(service), max_waiting).mount(&mut router);
        let mut server_config = config.http.server_config(listener.listen, config.workers);
        server_config.tls = Some(Arc::clone(&tls));
        let name = format!("{}-etsi014", self.name);
        let server = start_listener(&self.name, &name, &server_config, Arc::new(router), pool)?;
        self.etsi014 = Some((server, tls));
        Ok(())
    }

    /// A configuration error of this node.
    fn config_error(&self, message: String) -> NodeError {
        NodeError::Config {
            node: self.name.clone(),
            message,
        }
    }

    /// The ETSI 014 listener's address and TLS, when it serves 014.
    pub fn etsi014(&self) -> Option<(std::net::SocketAddr, &Arc<TlsAcceptor>)> {
        self.etsi014.as_ref().map(|(s, t)| (s.local_addr(), t))
    }

    /// KeyTalk's two listeners: RCDP and the public API over TLS, the CA
    /// and out-of-band downloads over plain HTTP (by design, on any
    /// address).
    fn start_keytalk(
        &mut self,
        config: &NodeConfig,
        pool: &Pool,
        services: &Services,
        metrics: Arc<RequestMetrics>,
    ) -> Result<(), NodeError> {
        let bad = |message: String| self.config_error(message);
        let api = services
            .keytalk
            .as_ref()
            .ok_or_else(|| bad("serving keytalk needs the store and a CA".into()))?;
        let listeners = config
            .keytalk
            .as_ref()
            .ok_or_else(|| bad("serving keytalk needs [node.keytalk]".into()))?;
        let files = listeners
            .tls
            .clone()
            .ok_or_else(|| bad("[node.keytalk] has no TLS certificate".into()))?;
        let tls = Arc::new(
            TlsAcceptor::new(files, Arc::clone(&services.revoked))
                .map_err(|e| bad(format!("keytalk tls: {e}")))?,
        );
        // Counted in the node's /metrics. Over TLS: RCDP, the public API and the CA download (iOS fetches
        // it over https); plain: the CA download and one-time links.
        let mut secure = Router::new(Arc::clone(&metrics));
        api.mount(&mut secure);
        api.mount_downloads(&mut secure);
        let secure = Arc::new(secure);
        let mut plain = Router::new(metrics);
        api.mount_downloads(&mut plain);
        let mut listeners_of: Vec<(std::net::SocketAddr, Arc<Router>, Option<Arc<TlsAcceptor>>)> =
            listeners
                .listen
                .all()
                .into_iter()
                .map(|a| (a, Arc::clone(&secure), Some(Arc::clone(&tls))))
                .collect();
        listeners_of.push((listeners.ca_listen, Arc::new(plain), None));
        for (listen, router, tls) in listeners_of {
            let secure = tls.is_some();
            let mut server_config = config.http.server_config(listen, config.workers);
            server_config.tls = tls;
            let name = format!("{}-keytalk{}", self.name, if secure { "" } else { "-ca" });
            let server = start_listener(&self.name, &name, &server_config, router, pool)?;
            self.keytalk.push(server);
        }
        self.keytalk_tls = Some(tls);
        Ok(())
    }

    /// KeyTalk's listeners: the TLS ones, then the plain one (empty when
    /// it does not serve KeyTalk).
    pub fn keytalk_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.keytalk.iter().map(Server::local_addr).collect()
    }

    /// The TLS of KeyTalk's listener (to reload it on SIGHUP).
    pub fn keytalk_tls(&self) -> Option<&Arc<TlsAcceptor>> {
        self.keytalk_tls.as_ref()
    }

    /// The listener's TLS, if any (to reload it on SIGHUP).
    pub fn tls(&self) -> Option<&Arc<TlsAcceptor>> {
        self.tls.as_ref()
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
        self.core.as_ref().map(LinkedEngine::engine)
    }

    /// Shutdown, step 1: take no more key for pushes.
    pub fn stop_pushing(&self) {
        if let Some(core) = &self.core {
            core.pushes().stop_all();
        }
    }

    /// Chunks taken for pushes and not yet acknowledged.
    pub fn pushes_pending(&self) -> usize {
        self.core.as_ref().map_or(0, |c| c.pushes().unacked())
    }

    /// Shutdown, step 2: stop the outbound thread and the listener (which
    /// finishes its in-flight requests), and wait for them. Dropping the
    /// node does the same.
    pub fn shut_down(self) {
        drop(self);
    }

    fn stop(&mut self) {
        if let Some(core) = self.core.as_mut() {
            core.stop();
        }
        let etsi014 = self.etsi014.take().map(|(s, _)| s);
        for server in self
            .server
            .take()
            .into_iter()
            .chain(self.keytalk.drain(..))
            .chain(etsi014)
        {
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

/// Starts listener `name` of node `node` on `listen` serving `router`.
fn start_listener(
    node: &str,
    name: &str,
    server_config: &crate::http::ServerConfig,
    router: Arc<Router>,
    pool: &Pool,
) -> Result<Server, NodeError> {
    Server::start(name, server_config, router, pool.clone()).map_err(|e| {
        let context = format!("cannot listen on {}: {e}", server_config.listen);
        NodeError::Io(node.to_owned(), std::io::Error::new(e.kind(), context))
    })
}

/// The addresses no stream of `config`'s node may be pushed to: its peer
/// node's listener, and its own unless it serves the KMS side itself.
fn forbidden_targets(config: &NodeConfig) -> Vec<std::net::SocketAddr> {
    let mut out = Vec::new();
    if !config.serve.contains(&Protocol::Etsi004Kms) {
        out.push(config.listen);
    }
    if let Some(link) = config.engine.as_ref().and_then(|e| e.link.as_ref())
        && let Ok(mut peer) = crate::http::Origin::parse(&link.peer)
        && peer.resolve().is_ok()
        && let Some(addr) = peer.addr
    {
        out.push(addr);
    }
    if config.kms.is_empty() && config.serve.contains(&Protocol::Etsi004Qkd) {
        tracing::warn!(
            node = %config.name,
            "no [[node.kms]]: any process on this host may open key streams (pushed to loopback URIs only)"
        );
    }
    out
}
