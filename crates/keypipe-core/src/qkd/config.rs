//! Engine configuration (TOML). Every key has a default; unknown keys are
//! refused so a typo never silently falls back to a default.
//!
//! ```toml
//! name = "node-a"            # this node's name (in the link handshake; the ledger file's name)
//! data_dir = "/var/lib/keypipe"  # where the key ledger lives: {data_dir}/ledger/{name}.redb
//! role = "leader"            # "leader" assigns key blocks to streams; its peer is "follower"
//! block_size = 4096          # bytes per device block, 16..=65536 (both nodes alike)
//! arena_blocks = 1024        # key slots pre-allocated (and mlocked) for this node
//! ring_blocks = 256          # device-to-stream ring capacity, blocks (< arena_blocks)
//! max_key_chunk_size = 65536 # largest key_chunk_size a stream may ask for; also at most
//!                            # (ring_blocks - 1) * block_size and half of
//!                            # (arena_blocks - ring_blocks) * block_size
//! max_timeout_ms = 60000     # longest GET_KEY wait a stream may ask for
//! default_ttl_s = 300        # TTL given to streams that ask for 0
//! max_ttl_s = 86400          # longest TTL a stream may ask for
//! window_blocks = 0          # flow control: blocks of one stream held on a node at most
//!                            # (0: half the arena's room beside the ring, at most 128)
//! max_streams = 1024         # streams opened on this node at most (as many again from the peer)
//! stream_idle_timeout_s = 3600  # a stream unused this long on a node is closed there
//! reserve_blocks = 1024      # leader: most stream blocks reserved in the ledger per write
//!
//! [device]
//! driver = "simulated"       # or "file"
//! rate_bps = 0               # simulated: secret-key rate, bit/s (0 = as fast as possible)
//! link_secret = "…64 hex…"   # simulated: shared by both nodes; random per pair when absent
//! # path = "/run/qkd/keys"   # file: key file or named pipe
//! # format = "raw"           # file: "raw" key bytes, or "framed" (8-byte id + block per record)
//!
//! [tls]                      # this node's outbound TLS (https:// peer and KMS URIs)
//! ca = "pki/ca.crt"          # the CA bundle peers' and KMSes' certificates chain to
//! cert = "pki/node-a.crt"    # this node's client certificate (keypipe ca issue-client --role node)
//! key = "pki/node-a.key"     # its key (mode 0600)
//!
//! [link]                     # optional: the peer node, over HTTP(S)
//! peer = "https://10.0.0.2:7005"  # the peer node's base URL (https needs [tls])
//! secret = "…64 hex…"        # HMAC-SHA256 key authenticating link sync, shared
//! # peer_name = "node-b"     # the peer's name; refuse to pair with another, and over
//! #                          # https the peer's certificate must name it (CN)
//! # peer_spki_sha256 = "…"   # https: also pin the peer's public key (hex SHA-256 of its SPKI)
//! # insecure_plaintext = false  # allow an http:// peer that is not on loopback (never for real key)
//! # listen = "0.0.0.0:7004"  # C ABI only: where this node receives link sync
//! # listen_cert = "pki/node-a-server.crt"  # C ABI only: TLS of that listener (clients need
//! # listen_key = "pki/node-a-server.key"   # a certificate chaining to [tls] ca)
//! ```

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::link::Role;
use super::node::Tuning;
use super::qos::QosLimits;
use crate::device::FileFormat;
use crate::key::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};

/// Largest chunk size a configuration may allow (1 MiB).
const CHUNK_CEILING: u32 = 1 << 20;
/// Largest `max_ttl_s`: a day, below the 25 h a KMS side remembers the
/// indexes it received (a node never resends past a chunk's TTL).
pub const MAX_TTL_S: u32 = 86_400;

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid engine configuration: {0}")]
pub struct ConfigError(pub String);

/// Configuration of one node's engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// This node's name: told to the peer at session start, and the name
    /// of its ledger file.
    pub name: String,
    /// Where the key ledger lives (`{data_dir}/ledger/{name}.redb`).
    /// Required unless the device can never repeat key (a simulated link
    /// with a random secret).
    pub data_dir: Option<PathBuf>,
    /// Leader or follower on the link.
    pub role: Role,
    /// Bytes per device block.
    pub block_size: usize,
    /// Key slots in the arena.
    pub arena_blocks: usize,
    /// Capacity of the ring, in blocks.
    pub ring_blocks: usize,
    /// Largest `key_chunk_size`, bytes.
    pub max_key_chunk_size: u32,
    /// Longest `timeout`, ms.
    pub max_timeout_ms: u32,
    /// TTL for streams asking 0, s.
    pub default_ttl_s: u32,
    /// Longest TTL, s.
    pub max_ttl_s: u32,
    /// Blocks of one stream a node holds at most (flow control); 0: half
    /// the arena's room beside the ring, at most 128.
    pub window_blocks: u64,
    /// Streams opened on this node at most.
    pub max_streams: usize,
    /// A stream unused this long on a node is closed there, s.
    pub stream_idle_timeout_s: u64,
    /// Leader: stream blocks reserved in the ledger per write.
    pub reserve_blocks: u64,
    /// The QKD device.
    pub device: DeviceConfig,
    /// The peer node over the network (none: no peer, or in-process).
    pub link: Option<LinkConfig>,
    /// This node's outbound TLS: trust and client certificate for an
    /// `https://` peer and `https://` KMS URIs.
    pub tls: Option<TlsFiles>,
    /// Start with a fresh ledger (`--reset-ledger`): the node adopts the
    /// peer's position instead of refusing to pair. Not a file key.
    #[serde(skip)]
    pub reset_ledger: bool,
}

/// The peer node, reached over HTTP (`/api/v1/link/…`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Base URL of the peer node, `http://host:port`.
    pub peer: String,
    /// Hex of the 32-byte key both nodes use to authenticate link sync
    /// (the server generates one per data directory when absent).
    #[serde(default)]
    pub secret: Option<Zeroizing<String>>,
    /// The peer's name: pairing with a node of another name is refused.
    #[serde(default)]
    pub peer_name: Option<String>,
    /// Where this node receives link sync when embedded through the C ABI
    /// (the server uses its own listener instead).
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// `https://` peer: its public key must also hash to this (hex SHA-256
    /// of its SubjectPublicKeyInfo).
    #[serde(default)]
    pub peer_spki_sha256: Option<String>,
    /// Allow an `http://` peer that is not on loopback (link sync then
    /// crosses the network in clear; a warning is logged at every start).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// C ABI only: the server certificate of the link listener (TLS; the
    /// peer must present a client certificate chaining to `[tls] ca`).
    #[serde(default)]
    pub listen_cert: Option<PathBuf>,
    /// C ABI only: its key (mode 0600).
    #[serde(default)]
    pub listen_key: Option<PathBuf>,
}

/// Certificate files of a node's outbound TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA bundle servers' certificates must chain to (PEM).
    pub ca: PathBuf,
    /// This node's client certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600 or 0400).
    pub key: PathBuf,
}

/// True when `url`'s host is a loopback address (or `localhost`).
pub fn url_is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkConfig")
            .field("peer", &self.peer)
            .field("secret", &"<redacted>")
            .field("peer_name", &self.peer_name)
            .field("listen", &self.listen)
            .field("peer_spki_sha256", &self.peer_spki_sha256)
            .field("insecure_plaintext", &self.insecure_plaintext)
            .finish_non_exhaustive()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            name: "node".into(),
            data_dir: None,
            role: Role::Leader,
            block_size: 4096,
            arena_blocks: 1024,
            ring_blocks: 256,
            max_key_chunk_size: 65536,
            max_timeout_ms: 60_000,
            default_ttl_s: 300,
            max_ttl_s: 86_400,
            window_blocks: 0,
            max_streams: 1024,
            stream_idle_timeout_s: 3600,
            reserve_blocks: 1024,
            device: DeviceConfig::default(),
            link: None,
            tls: None,
            reset_ledger: false,
        }
    }
}

/// Which device driver feeds the node.
#[derive(Clone, Deserialize)]
#[serde(tag = "driver", rename_all = "lowercase", deny_unknown_fields)]
pub enum DeviceConfig {
    /// A simulated link (see `device::SimulatedLink`).
    Simulated {
        /// Secret-key rate, bit/s (0: as fast as possible).
        #[serde(default)]
        rate_bps: u64,
        /// Hex of the 32-byte link secret both nodes share.
        #[serde(default)]
        link_secret: Option<Zeroizing<String>>,
    },
    /// Blocks read from a file or named pipe.
    File {
        /// Path of the file or pipe.
        path: PathBuf,
        /// Raw key bytes, or framed records with the device's block ids.
        #[serde(default)]
        format: FileFormat,
    },
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig::Simulated {
            rate_bps: 0,
            link_secret: None,
        }
    }
}

impl fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceConfig::Simulated {
                rate_bps,
                link_secret,
            } => f
                .debug_struct("Simulated")
                .field("rate_bps", rate_bps)
                .field("link_secret", &link_secret.as_ref().map(|_| "<redacted>"))
                .finish(),
            DeviceConfig::File { path, format } => f
                .debug_struct("File")
                .field("path", path)
                .field("format", format)
                .finish(),
        }
    }
}

impl EngineConfig {
    /// Parses and checks a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: EngineConfig =
            toml::from_str(text).map_err(|e| ConfigError(e.to_string().trim_end().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size) {
            return bad(format!(
                "block_size = {} is outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}",
                self.block_size
            ));
        }
        if self.ring_blocks == 0
            || self.arena_blocks <= self.ring_blocks
            || self.arena_blocks > u32::MAX as usize
        {
            return bad(format!(
                "arena_blocks = {} must exceed ring_blocks = {} (>= 1): streams hold blocks too",
                self.arena_blocks, self.ring_blocks
            ));
        }
        if self.max_key_chunk_size == 0 || self.max_key_chunk_size > CHUNK_CEILING {
            return bad(format!(
                "max_key_chunk_size = {} is outside 1..={CHUNK_CEILING}",
                self.max_key_chunk_size
            ));
        }
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return bad(format!(
                "name = {:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        let budget = self.budget_blocks();
        if self.window_blocks != 0 && (self.window_blocks < 2 || self.window_blocks > budget) {
            return bad(format!(
                "window_blocks = {} must be 0 (automatic) or 2..={budget} (the arena's room beside the ring)",
                self.window_blocks
            ));
        }
        if self.max_streams == 0 || self.max_streams > 1_000_000 {
            return bad(format!(
                "max_streams = {} must be 1..=1000000",
                self.max_streams
            ));
        }
        if self.stream_idle_timeout_s == 0 || self.stream_idle_timeout_s > 30 * 86_400 {
            return bad(format!(
                "stream_idle_timeout_s = {} must be 1..=2592000",
                self.stream_idle_timeout_s
            ));
        }
        if self.reserve_blocks == 0 || self.reserve_blocks > 1 << 20 {
            return bad(format!(
                "reserve_blocks = {} must be 1..=1048576",
                self.reserve_blocks
            ));
        }
        if self.max_ttl_s == 0 || self.max_ttl_s > MAX_TTL_S {
            return bad(format!(
                "max_ttl_s = {} must be 1..={MAX_TTL_S}: a KMS side remembers the indexes it \
                 received for 25 h, and a resend must never outlive that memory",
                self.max_ttl_s
            ));
        }
        if self.default_ttl_s == 0 || self.default_ttl_s > self.max_ttl_s {
            return bad(format!(
                "default_ttl_s = {} must be in 1..=max_ttl_s ({})",
                self.default_ttl_s, self.max_ttl_s
            ));
        }
        if let DeviceConfig::Simulated {
            link_secret: Some(hex),
            ..
        } = &self.device
        {
            parse_secret(hex, "device.link_secret")?;
        }
        if let Some(link) = &self.link {
            let https = link.peer.starts_with("https://");
            if !https && !link.peer.starts_with("http://") {
                return bad(format!(
                    "link.peer = {:?} must be an http:// or https:// URL",
                    link.peer
                ));
            }
            if https && self.tls.is_none() {
                return bad(format!(
                    "link.peer = {:?} is https: [tls] (ca, cert, key) is required",
                    link.peer
                ));
            }
            if !https && !link.insecure_plaintext && !url_is_loopback(&link.peer) {
                return bad(format!(
                    "link.peer = {:?} is plain http to another host: link sync would cross the \
                     network in clear. Use https:// with [tls], or set link.insecure_plaintext = true",
                    link.peer
                ));
            }
            if let Some(pin) = &link.peer_spki_sha256
                && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return bad("link.peer_spki_sha256: 64 hex digits (SHA-256)".into());
            }
            if link.listen_cert.is_some() != link.listen_key.is_some() {
                return bad("link.listen_cert and link.listen_key go together".into());
            }
            if link.listen_cert.is_some() && self.tls.is_none() {
                return bad(
                    "link.listen_cert: [tls] ca is needed to check the peer's certificate".into(),
                );
            }
            if let Some(secret) = &link.secret {
                parse_secret(secret, "link.secret")?;
            }
        }
        Ok(())
    }

    /// True when this configuration's device can give the same key again
    /// after a restart (a key file, or a simulated link with a configured
    /// secret): such an engine needs `data_dir` for its ledger.
    pub fn repeats_key(&self) -> bool {
        match &self.device {
            DeviceConfig::File { .. } => true,
            DeviceConfig::Simulated { link_secret, .. } => link_secret.is_some(),
        }
    }

    /// The flow-control window in blocks (see `window_blocks`).
    pub fn window(&self) -> u64 {
        match self.window_blocks {
            0 => (self.budget_blocks() / 2).clamp(2, 128),
            w => w,
        }
    }

    /// Blocks one directed stream (ETSI 014) may hold on this node.
    pub fn directed_window(&self) -> u64 {
        super::directed_window(self.window())
    }

    /// Blocks all streams of a node may hold together: the arena beside a
    /// full ring, with one slot for the poller.
    pub fn budget_blocks(&self) -> u64 {
        self.arena_blocks.saturating_sub(self.ring_blocks + 1) as u64
    }

    /// Flow control, caps and rhythms of the node.
    pub fn tuning(&self) -> Tuning {
        Tuning {
            window_blocks: self.window(),
            max_streams: self.max_streams,
            idle_timeout: std::time::Duration::from_secs(self.stream_idle_timeout_s),
            reserve_blocks: self.reserve_blocks,
            budget_blocks: self.budget_blocks(),
        }
    }

    /// The QoS limits this configuration gives streams.
    pub fn limits(&self) -> QosLimits {
        let link_rate_bps = match self.device {
            DeviceConfig::Simulated { rate_bps, .. } => rate_bps,
            DeviceConfig::File { .. } => 0,
        };
        // A chunk must fit in the key a node can hold beside a full ring,
        // with room to spare for other streams: at most half of it.
        // It is reserved all at once from the ring, and spans at most one
        // block more than its size: it must fit in ring_blocks - 1 blocks.
        // And it must fit in one stream's window (less one block: a chunk
        // spans at most one block more than its size).
        let holdable = ((self.arena_blocks - self.ring_blocks).saturating_mul(self.block_size) / 2)
            .min((self.ring_blocks - 1).saturating_mul(self.block_size))
            .min((self.window().saturating_sub(1) as usize).saturating_mul(self.block_size));
        QosLimits {
            max_key_chunk_size: self
                .max_key_chunk_size
                .min(holdable.clamp(1, u32::MAX as usize) as u32),
            link_rate_bps,
            max_timeout_ms: self.max_timeout_ms,
            default_ttl_s: self.default_ttl_s,
            max_ttl_s: self.max_ttl_s,
        }
    }
}

/// Decodes a 64-hex-digit secret; `key` names it in the error.
pub fn parse_secret(hex: &str, key: &str) -> Result<Zeroizing<[u8; 32]>, ConfigError> {
    let err = || ConfigError(format!("{key} must be 64 hex digits (32 bytes)"));
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return Err(err());
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let nibble = |c: u8| (c as char).to_digit(16).ok_or_else(err);
        out[i] = (nibble(pair[0])? << 4 | nibble(pair[1])?) as u8;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = EngineConfig::from_toml("").unwrap();
        assert_eq!(c.block_size, 4096);
        assert_eq!(c.role, Role::Leader);
    }

    #[test]
    fn errors_name_the_key() {
        let e = EngineConfig::from_toml("block_size = 8").unwrap_err();
        assert!(e.0.contains("block_size = 8"), "{e}");
        let e = EngineConfig::from_toml("blok_size = 64").unwrap_err();
        assert!(e.0.contains("blok_size"), "{e}");
        let e = EngineConfig::from_toml("role = \"boss\"").unwrap_err();
        assert!(e.0.contains("role") || e.0.contains("boss"), "{e}");
        let e = EngineConfig::from_toml("[device]\ndriver = \"simulated\"\nlink_secret = \"abc\"")
            .unwrap_err();
        assert!(e.0.contains("link_secret"), "{e}");
        let e = EngineConfig::from_toml("arena_blocks = 10\nring_blocks = 10").unwrap_err();
        assert!(e.0.contains("arena_blocks"), "{e}");
        assert!(EngineConfig::from_toml("this is not toml").is_err());
        // A TTL past what a KMS side remembers could let a resend of a
        // taken index be stored again (issue-12 review).
        let e = EngineConfig::from_toml("max_ttl_s = 86401").unwrap_err();
        assert!(e.0.contains("max_ttl_s = 86401"), "{e}");
        assert!(EngineConfig::from_toml("max_ttl_s = 0").is_err());
        assert!(EngineConfig::from_toml("max_ttl_s = 86400").is_ok());
    }

    #[test]
    fn secret_is_redacted_in_debug() {
        let hex = "ab".repeat(32);
        let c = EngineConfig::from_toml(&format!(
            "[device]\ndriver = \"simulated\"\nlink_secret = \"{hex}\""
        ))
        .unwrap();
        assert!(!format!("{c:?}").contains(&hex));
        assert_eq!(*parse_secret(&hex, "k").unwrap(), [0xab; 32]);
    }
}
