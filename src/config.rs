//! The server's configuration file (TOML): one `[[node]]` table per
//! listener, one file under `config/` per section. Unknown keys are
//! refused so a typo never silently falls back to a default.
//! [`DEFAULT_CONFIG`] is the embedded default, documented key by key;
//! `keypipe serve --print-default-config` prints it.

use std::path::PathBuf;

use serde::Deserialize;

use crate::store::StoreOptions;

#[macro_use]
mod tunables;
mod agreement;
mod check;
mod donau;
mod etsi014;
mod keytalk;
mod ncp;
mod node;
mod store;

pub use agreement::{KeyAgreementSettings, LoginSettings};
pub use donau::{Currency, DonationUnitSettings, DonauSettings};
pub use etsi014::{Etsi014Listener, Etsi014Settings};
pub use keytalk::{Addresses, KeyTalkListener, KeyTalkSettings};
pub use ncp::NcpSettings;
pub use node::{HttpSettings, KmsEntrySettings, KmsSideSettings, NodeConfig, PushSettings};
pub use store::StoreSettings;

/// The embedded default: a whole simulated QKD link in one process.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A protocol a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// ETSI GS QKD 004 push mode, QKD side (`/api/v1/kms/etsi004/…`).
    #[serde(rename = "etsi004-qkd")]
    Etsi004Qkd,
    /// ETSI GS QKD 004 push mode, KMS side (`/api/v1/qkd/etsi004/key-material`).
    #[serde(rename = "etsi004-kms")]
    Etsi004Kms,
    /// NCP-KMS-compatible encryption API (`/keys/v1|v2/{keyTag}/{action}`).
    #[serde(rename = "ncp-kms")]
    NcpKms,
    /// DH/ECDH key agreement and the login that uses it (`/rest/…`).
    #[serde(rename = "key-agreement")]
    KeyAgreement,
    /// GNU Taler Donau `GET /keys`.
    #[serde(rename = "donau")]
    Donau,
    /// KeyTalk certificate enrolment (RCDP v2, public API, CA download)
    /// on the node's own listeners (`[node.keytalk]`).
    #[serde(rename = "keytalk")]
    KeyTalk,
    /// ETSI GS QKD 014 key delivery to SAEs (`/api/v1/keys/…`) on the
    /// node's own TLS listener (`[node.etsi014]`).
    #[serde(rename = "etsi014")]
    Etsi014,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Threads for slow handlers, shared by all listeners.
    #[serde(default = "default_pool_threads")]
    pub pool_threads: usize,
    /// The durable store's directory (`--data-dir` overrides it).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The key-encryption key file (default: `data_dir/kek.key`).
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// Environment variable that, when set, holds the KEK (64 hex digits)
    /// and wins over the file.
    #[serde(default = "default_kek_env")]
    pub kek_env: String,
    /// Which database the store uses (`[store]`).
    #[serde(default)]
    pub store: StoreSettings,
    /// The key-agreement service (`key-agreement` protocol).
    #[serde(default)]
    pub key_agreement: KeyAgreementSettings,
    /// The login service (`key-agreement` protocol).
    #[serde(default)]
    pub login: LoginSettings,
    /// The Donau (`donau` protocol).
    #[serde(default)]
    pub donau: Option<DonauSettings>,
    /// The NCP KMS API (`ncp-kms` protocol).
    #[serde(default)]
    pub ncp: NcpSettings,
    /// KeyTalk enrolment (`keytalk` protocol).
    #[serde(default)]
    pub keytalk: KeyTalkSettings,
    /// ETSI GS QKD 014 (`etsi014` protocol).
    #[serde(default)]
    pub etsi014: Etsi014Settings,
    /// How the process protects its memory (core dumps, locking).
    #[serde(default)]
    pub process: crate::process::ProcessSettings,
    /// The nodes (listeners).
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
}

fn default_pool_threads() -> usize {
    8
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./keypipe-data")
}

fn default_kek_env() -> String {
    "KEYPIPE_KEK".into()
}

/// The public demo secrets of keypipe's first embedded default (device,
/// link). Anyone can compute the keys of a node that uses them.
pub const DEMO_SECRETS: [&str; 2] = [
    "6b6579706970652d64656d6f2d6465766963652d7365637265742d3332627974",
    "6b6579706970652d64656d6f2d6c696e6b2d686d61632d6b65792d3332627974",
];

/// Name of the generated simulated-device secret in the store.
pub const GENERATED_DEVICE_SECRET: &str = "simulated-device";
/// Name of the generated link secret in the store.
pub const GENERATED_LINK_SECRET: &str = "link";

impl Config {
    /// Gives every engine without a `data_dir` of its own the
    /// configuration's (call after `--data-dir`).
    pub fn apply_data_dir(&mut self) {
        for node in &mut self.nodes {
            if let Some(engine) = &mut node.engine {
                engine.data_dir.get_or_insert_with(|| self.data_dir.clone());
            }
        }
    }

    /// True when some engine has no configured secret, so the server
    /// generates one (kept in the store).
    pub fn needs_generated_secrets(&self) -> bool {
        self.nodes
            .iter()
            .filter_map(|n| n.engine.as_ref())
            .any(|e| {
                matches!(
                    e.device,
                    crate::qkd::DeviceConfig::Simulated {
                        link_secret: None,
                        ..
                    }
                ) || e.link.as_ref().is_some_and(|l| l.secret.is_none())
            })
    }

    /// Fills every missing secret: `device` for simulated devices, `link`
    /// for links (the same for all nodes of this configuration, so the
    /// nodes of one process pair with each other).
    pub fn fill_secrets(&mut self, device: &[u8; 32], link: &[u8; 32]) {
        let hex = |b: &[u8; 32]| zeroize::Zeroizing::new(crate::qkd::confirm::hex(b));
        for engine in self.nodes.iter_mut().filter_map(|n| n.engine.as_mut()) {
            if let crate::qkd::DeviceConfig::Simulated { link_secret, .. } = &mut engine.device
                && link_secret.is_none()
            {
                *link_secret = Some(hex(device));
            }
            if let Some(l) = &mut engine.link
                && l.secret.is_none()
            {
                l.secret = Some(hex(link));
            }
        }
    }

    /// The nodes whose configuration still holds a public demo secret.
    pub fn demo_secret_users(&self) -> Vec<String> {
        let demo = |hex: &str| DEMO_SECRETS.iter().any(|d| d.eq_ignore_ascii_case(hex));
        self.nodes
            .iter()
            .filter(|n| {
                n.engine.as_ref().is_some_and(|e| {
                    let device = matches!(&e.device, crate::qkd::DeviceConfig::Simulated { link_secret: Some(s), .. } if demo(s));
                    let link = e.link.as_ref().is_some_and(|l| l.secret.as_deref().is_some_and(|s| demo(s)));
                    device || link
                })
            })
            .map(|n| n.name.clone())
            .collect()
    }

    /// True when every listener is on a loopback address.
    pub fn all_loopback(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.listen.ip().is_loopback()
                && n.keytalk.as_ref().is_none_or(|k| {
                    k.listen.all().iter().all(|a| a.ip().is_loopback())
                        && k.ca_listen.ip().is_loopback()
                })
        })
    }

    /// The store options this configuration names.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            data_dir: self.data_dir.clone(),
            kek_file: self.kek_file.clone(),
            kek_env: Some(self.kek_env.clone()),
            url: self.store.url.clone(),
        }
    }

    /// True when some listener serves a store-backed service, or the
    /// store must keep generated secrets.
    pub fn needs_store(&self) -> bool {
        self.serves(Protocol::NcpKms)
            || self.serves(Protocol::KeyAgreement)
            || self.serves(Protocol::KeyTalk)
            || self.serves(Protocol::Etsi014)
            || self.serves(Protocol::Donau)
            || self.needs_generated_secrets()
            || self.checks_client_certificates()
    }

    /// True when some listener asks for client certificates (revocations
    /// are then read from the store's CA).
    pub fn checks_client_certificates(&self) -> bool {
        self.nodes.iter().any(|n| {
            n.etsi014.is_some()
                || n.tls
                    .as_ref()
                    .is_some_and(|t| t.client_auth != crate::tls::ClientAuth::None)
        })
    }

    /// True when some listener serves `protocol`.
    pub fn serves(&self, protocol: Protocol) -> bool {
        self.nodes.iter().any(|n| n.serve.contains(&protocol))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parses() {
        let c = Config::from_toml(DEFAULT_CONFIG).unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[0].listen.port(), 7004);
        assert_eq!(c.nodes[1].listen.port(), 7005);
    }

    #[test]
    fn the_store_url_reaches_the_options_and_never_debug() {
        let c = Config::from_toml(
            "[store]\nurl = \"postgres://keypipe:Pa55word@db/keypipe\"\n\
             [[node]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nserve = [\"ncp-kms\"]",
        )
        .unwrap();
        assert_eq!(
            c.store_options().url.as_deref(),
            Some("postgres://keypipe:Pa55word@db/keypipe")
        );
        let text = format!("{c:?}");
        assert!(
            !text.contains("Pa55word") && text.contains("redacted"),
            "{text}"
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Config::from_toml(
            "[[node]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nserve = [\"etsi004-qkd\"]",
        )
        .unwrap_err();
        assert!(e.contains("engine"), "{e}");
        let e = Config::from_toml("[[node]]\nname = \"a\"\nlisten = \"x\"").unwrap_err();
        assert!(e.contains("listen"), "{e}");
        let e = Config::from_toml(
            "[[node]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nserve = [\"ftp\"]",
        )
        .unwrap_err();
        assert!(e.contains("ftp"), "{e}");
    }
}
