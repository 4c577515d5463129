//! What one node's 014 service serves: its KME id, the SAEs attached to it
//! and to its peer node, and the key sizes and counts it offers.

use std::time::Duration;

use super::key_id::MAX_KEY_BYTES;

/// One node's ETSI GS QKD 014 service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etsi014Config {
    /// This KME's id (the node's name).
    pub kme_id: String,
    /// The peer node's id (the KME of every remote SAE).
    pub peer_kme_id: String,
    /// SAEs attached to this node (the CN of their client certificates).
    pub saes: Vec<String>,
    /// SAEs attached to the peer node.
    pub peer_saes: Vec<String>,
    /// Default key size, bits.
    pub key_size: u32,
    /// Smallest key size, bits.
    pub min_key_size: u32,
    /// Largest key size, bits.
    pub max_key_size: u32,
    /// Most keys per `enc_keys` or `dec_keys`.
    pub max_key_per_request: u32,
    /// Most `additional_slave_SAE_IDs` (0: no multicast).
    pub max_sae_id_count: u32,
    /// Key not redeemed within this many seconds is zeroized.
    pub key_ttl_s: u32,
    /// How long `enc_keys` waits for key before answering 503.
    pub wait: Duration,
    /// A multicast key redeemed by one slave waits this long for the
    /// others attached to the same node.
    pub copies_ttl: Duration,
    /// Multicast keys held for slaves at most (more: the oldest go).
    pub max_copies: usize,
}

impl Default for Etsi014Config {
    fn default() -> Self {
        Etsi014Config {
            kme_id: String::new(),
            peer_kme_id: String::new(),
            saes: Vec::new(),
            peer_saes: Vec::new(),
            key_size: 256,
            min_key_size: 64,
            max_key_size: 4096,
            max_key_per_request: 128,
            max_sae_id_count: 4,
            key_ttl_s: 3600,
            wait: Duration::from_millis(2000),
            copies_ttl: Duration::from_secs(3600),
            max_copies: 100_000,
        }
    }
}

/// Longest SAE id, bytes.
pub const MAX_SAE_ID_LEN: usize = 256;

/// Why `id` is not a usable SAE id, if it is not.
pub fn sae_id_problem(id: &str) -> Option<&'static str> {
    if id.trim().is_empty() {
        Some("is empty or blank")
    } else if id.len() > MAX_SAE_ID_LEN {
        Some("is longer than 256 bytes")
    } else if id.chars().any(char::is_control) {
        Some("contains control characters")
    } else {
        None
    }
}

impl Etsi014Config {
    /// Checks the sizes and the SAE lists.
    pub fn validate(&self) -> Result<(), String> {
        let bits = |name: &str, v: u32| {
            if v == 0 || !v.is_multiple_of(8) || u64::from(v) > MAX_KEY_BYTES * 8 {
                Err(format!(
                    "etsi014.{name} = {v}: a multiple of 8 from 8 to {}",
                    MAX_KEY_BYTES * 8
                ))
            } else {
                Ok(())
            }
        };
        bits("key_size", self.key_size)?;
        bits("min_key_size", self.min_key_size)?;
        bits("max_key_size", self.max_key_size)?;
        if !(self.min_key_size <= self.key_size && self.key_size <= self.max_key_size) {
            return Err("etsi014: min_key_size <= key_size <= max_key_size is required".into());
        }
        if !(1..=4096).contains(&self.max_key_per_request) {
            return Err("etsi014.max_key_per_request: 1 to 4096".into());
        }
        if u64::from(self.max_key_per_request) * u64::from(self.max_key_size / 8) > 1 << 20 {
            return Err(
                "etsi014: max_key_per_request * max_key_size may be at most 1 MiB (8 Mibit)".into(),
            );
        }
        if self.max_sae_id_count > 64 {
            return Err("etsi014.max_SAE_ID_count: at most 64".into());
        }
        if !(60..=86_400).contains(&self.key_ttl_s) {
            return Err("etsi014.key_ttl_s: 60 to 86400".into());
        }
        let mut all: Vec<&str> = Vec::new();
        for id in self.saes.iter().chain(&self.peer_saes) {
            if let Some(why) = sae_id_problem(id) {
                return Err(format!("SAE id {id:?} {why}"));
            }
            if all.contains(&id.as_str()) {
                return Err(format!("SAE id {id:?} is listed twice"));
            }
            all.push(id);
        }
        Ok(())
    }
}
