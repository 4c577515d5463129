//! `[[node]]`: one listener, what it serves, and its per-listener
//! sections: `[node.http]`, `[node.push]`, `[node.kms_side]` and
//! `[[node.kms]]` (the engine, TLS, KeyTalk and ETSI 014 ones have their
//! own types).

use std::net::SocketAddr;

use serde::Deserialize;

use super::{Etsi014Listener, KeyTalkListener, Protocol};
use crate::http::ServerConfig;
use crate::linked::LinkedSettings;
use crate::qkd::EngineConfig;
use crate::tls::ServerTlsFiles;

/// One listener and what it serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name in logs and metrics.
    pub name: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Event-loop threads (0: one per core).
    #[serde(default)]
    pub workers: usize,
    /// Protocols served (`/healthz`, `/metrics` and, with `[node.engine.link]`,
    /// the link-sync route are always served).
    #[serde(default)]
    pub serve: Vec<Protocol>,
    /// HTTP limits and timeouts.
    #[serde(default)]
    pub http: HttpSettings,
    /// Key pushes.
    #[serde(default)]
    pub push: PushSettings,
    /// KMS side (`etsi004-kms`): capacity and who may push.
    #[serde(default)]
    pub kms_side: KmsSideSettings,
    /// The KMSes that may use this node's ETSI 004 QKD side (`[[node.kms]]`).
    #[serde(default)]
    pub kms: Vec<KmsEntrySettings>,
    /// The QKD node (needed for `etsi004-qkd`).
    #[serde(default)]
    pub engine: Option<EngineConfig>,
    /// TLS on this listener: certificate, key, client CA and client-auth
    /// mode (without it: plain HTTP).
    #[serde(default)]
    pub tls: Option<ServerTlsFiles>,
    /// Allow plain HTTP on an address that is not loopback (everything it
    /// serves then crosses the network in clear; a warning is logged at
    /// every start).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// KeyTalk's listeners (needed for `keytalk`).
    #[serde(default)]
    pub keytalk: Option<KeyTalkListener>,
    /// The ETSI 014 listener and SAEs (needed for `etsi014`).
    #[serde(default)]
    pub etsi014: Option<Etsi014Listener>,
}

impl NodeConfig {
    /// The KME id of the peer node, for ETSI 014: its name on the link
    /// (`[node.engine.link] peer_name`).
    pub fn etsi014_peer(&self) -> Option<&str> {
        self.engine.as_ref()?.link.as_ref()?.peer_name.as_deref()
    }
}

tunables! {
    /// HTTP limits and timeouts of a listener.
    pub struct HttpSettings => ServerConfig {
        /// Most open connections (more: 503 and closed).
        max_connections: usize = same(max_connections),
        /// Most open connections from one address that is not loopback.
        max_connections_per_ip: usize = same(max_connections_per_ip),
        /// Longest request line + headers, bytes (431 beyond).
        max_header_bytes: usize = same(limits.max_header_bytes),
        /// Longest request body, bytes (413 beyond).
        max_body_bytes: usize = same(limits.max_body_bytes),
        /// A request must arrive whole within this many ms of its first byte (408).
        request_timeout_ms: u64 = millis(request_timeout),
        /// An idle keep-alive connection is closed after this many ms.
        idle_timeout_ms: u64 = millis(idle_timeout),
        /// On shutdown, in-flight requests and pushes get this many ms.
        shutdown_grace_ms: u64 = millis(shutdown_grace),
    }
}

impl HttpSettings {
    /// The server settings for a listener on `listen` with `workers`.
    pub fn server_config(&self, listen: SocketAddr, workers: usize) -> ServerConfig {
        let mut config = ServerConfig {
            listen,
            workers,
            ..ServerConfig::default()
        };
        self.apply(&mut config);
        config
    }
}

tunables! {
    /// Key pushes to KMSes.
    pub struct PushSettings => LinkedSettings {
        /// Most chunks per KMS taken ahead of their 201 (the bounded queue).
        queue_chunks: usize = same(queue_chunks),
        /// Most requests pipelined on one connection.
        max_in_flight: usize = same(max_in_flight),
    }
}

tunables! {
    /// The KMS side (`[node.kms_side]`).
    pub struct KmsSideSettings {
        /// Most key bytes held for local consumers (more: 503, the node retries).
        received_capacity_bytes: usize = local(64 << 20),
        /// The QKD nodes that may push key here: the names (`CN`, `OU=node`)
        /// of their client certificates. Empty: pushes are taken only from
        /// loopback callers without a certificate.
        nodes: Vec<String> = local(Vec::new()),
    }
}

/// One KMS allowed to use a node's ETSI 004 QKD side (`[[node.kms]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsEntrySettings {
    /// The KMS's name: the `CN` of its client certificate (`OU=kms`).
    pub name: String,
    /// Its base URIs the node may push its streams to (each KMS names its
    /// own `source` or `destination`).
    pub uris: Vec<String>,
    /// Allow `http://` URIs that are not on loopback (key then crosses
    /// the network in clear; a warning is logged at every start).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Streams this KMS may have open on the node at once.
    #[serde(default = "default_kms_streams")]
    pub max_streams: usize,
}

fn default_kms_streams() -> usize {
    64
}
