//! `[etsi014]` (key sizes and counts every node's ETSI GS QKD 014 service
//! offers) and `[node.etsi014]` (a node's 014 listener and its SAEs).

use std::net::SocketAddr;

use serde::Deserialize;

use crate::kms::etsi014::Etsi014Config;
use crate::tls::ServerTlsFiles;

tunables! {
    /// `[etsi014]`: what every node's 014 service offers.
    pub struct Etsi014Settings => Etsi014Config {
        /// Default key size, bits (`key_size` in the status).
        key_size: u32 = same(key_size),
        /// Smallest key size, bits.
        min_key_size: u32 = same(min_key_size),
        /// Largest key size, bits.
        max_key_size: u32 = same(max_key_size),
        /// Most keys per request.
        max_key_per_request: u32 = same(max_key_per_request),
        /// Most `additional_slave_SAE_IDs` (0: no multicast).
        #[serde(rename = "max_SAE_ID_count")]
        max_sae_id_count: u32 = same(max_sae_id_count),
        /// Key not redeemed by its slave within this many seconds is
        /// zeroized (60 to 86400, at most the node's `max_ttl_s`).
        key_ttl_s: u32 = same(key_ttl_s),
        /// `enc_keys` waits at most this long for key before answering 503.
        wait_ms: u64 = millis(wait),
        /// `enc_keys` calls waiting for key at once (more: 503 at once).
        max_waiting: usize = local(64),
        /// A multicast key one slave redeemed waits this long for the others.
        copies_ttl_s: u64 = secs(copies_ttl),
        /// Multicast keys held for slaves at most.
        max_copies: usize = same(max_copies),
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
        let mut config = Etsi014Config {
            kme_id: kme_id.to_owned(),
            peer_kme_id: peer_kme_id.to_owned(),
            saes: listener.saes.clone(),
            peer_saes: listener.peer_saes.clone(),
            ..Etsi014Config::default()
        };
        self.apply(&mut config);
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
