//! `[etsi014]` (key sizes and counts every node's ETSI GS QKD 014 service
//! offers) and `[node.etsi014]` (a node's 014 listener and its SAEs).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::kms::etsi014::Etsi014Config;
use crate::tls::ServerTlsFiles;

/// `[etsi014]`: what every node's 014 service offers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Etsi014Settings {
    /// Default key size, bits (`key_size` in the status).
    pub key_size: u32,
    /// Smallest key size, bits.
    pub min_key_size: u32,
    /// Largest key size, bits.
    pub max_key_size: u32,
    /// Most keys per request.
    pub max_key_per_request: u32,
    /// Most `additional_slave_SAE_IDs` (0: no multicast).
    #[serde(rename = "max_SAE_ID_count")]
    pub max_sae_id_count: u32,
    /// Key not redeemed by its slave within this many seconds is
    /// zeroized (1 to 86400).
    pub key_ttl_s: u32,
    /// `enc_keys` waits at most this long for key before answering 503.
    pub wait_ms: u64,
    /// `enc_keys` calls waiting for key at once (more: 503 at once).
    pub max_waiting: usize,
    /// A multicast key one slave redeemed waits this long for the others.
    pub copies_ttl_s: u64,
    /// Multicast keys held for slaves at most.
    pub max_copies: usize,
}

impl Default for Etsi014Settings {
    fn default() -> Self {
        let d = Etsi014Config::default();
        Etsi014Settings {
            key_size: d.key_size,
            min_key_size: d.min_key_size,
            max_key_size: d.max_key_size,
            max_key_per_request: d.max_key_per_request,
            max_sae_id_count: d.max_sae_id_count,
            key_ttl_s: d.key_ttl_s,
            wait_ms: d.wait.as_millis() as u64,
            max_waiting: 64,
            copies_ttl_s: d.copies_ttl.as_secs(),
            max_copies: d.max_copies,
        }
    }
}

/// `[node.etsi014]`: a node's 014 listener (HTTPS, client certificates
/// required) and the SAEs it and its peer serve.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Etsi014Listener {
    /// Where SAEs connect (TLS only).
    pub listen: SocketAddr,
    /// Host names (and IP addresses) SAEs use to reach `listen`, for the
    /// certificate keypipe issues itself (`localhost`, 127.0.0.1 and the
    /// listen address are always in it).
    #[serde(default)]
    pub names: Vec<String>,
    /// SAEs attached to this node: the CN of their client certificates
    /// (`keypipe ca issue-client NAME --role sae`).
    pub saes: Vec<String>,
    /// SAEs attached to the peer node (the other end of this node's link).
    pub peer_saes: Vec<String>,
    /// Certificate and key of `listen`, and the CA bundle SAE certificates
    /// must chain to (absent: issued by keypipe's Server CA into
    /// `data_dir/etsi014/`, with keypipe's CA bundle as client CA).
    #[serde(default)]
    pub tls: Option<ServerTlsFiles>,
}

impl Etsi014Settings {
    /// The service configuration of node `kme_id`, linked to `peer_kme_id`,
    /// with `listener`'s SAEs.
    pub fn service_config(
        &self,
        kme_id: &str,
        peer_kme_id: &str,
        listener: &Etsi014Listener,
    ) -> Result<Etsi014Config, String> {
        let config = Etsi014Config {
            kme_id: kme_id.to_owned(),
            peer_kme_id: peer_kme_id.to_owned(),
            saes: listener.saes.clone(),
            peer_saes: listener.peer_saes.clone(),
            key_size: self.key_size,
            min_key_size: self.min_key_size,
            max_key_size: self.max_key_size,
            max_key_per_request: self.max_key_per_request,
            max_sae_id_count: self.max_sae_id_count,
            key_ttl_s: self.key_ttl_s,
            wait: Duration::from_millis(self.wait_ms),
            copies_ttl: Duration::from_secs(self.copies_ttl_s),
            max_copies: self.max_copies,
        };
        config
            .validate()
            .map_err(|e| format!("node {kme_id}: {e}"))?;
        if self.wait_ms > 60_000 {
            return Err("etsi014.wait_ms: at most 60000".into());
        }
        if !(1..=86_400).contains(&self.copies_ttl_s) || self.max_copies == 0 {
            return Err("etsi014: copies_ttl_s 1 to 86400, max_copies at least 1".into());
        }
        Ok(config)
    }
}
