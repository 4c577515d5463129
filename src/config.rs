//! The server's configuration file (TOML): one `[[node]]` table per
//! listener. Unknown keys are refused so a typo never silently falls back
//! to a default. [`DEFAULT_CONFIG`] is the embedded default, documented key
//! by key; `keypipe serve --print-default-config` prints it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::http::{Limits, ServerConfig};
use crate::kms::agreement::{AgreementConfig, Scheme};
use crate::kms::donau::amount::check_currency;
use crate::kms::donau::{Amount, Cipher, DonauConfig, UnitConfig};
use crate::kms::login::LoginConfig;
use crate::qkd::EngineConfig;
use crate::store::StoreOptions;
use crate::tls::ServerTlsFiles;

mod etsi014;
mod keytalk;
pub use etsi014::{Etsi014Listener, Etsi014Settings};
pub use keytalk::{Addresses, KeyTalkListener, KeyTalkSettings};

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

/// `[store]`: the database of the durable store. `Debug` never shows the
/// URL (it may hold a password).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// A PostgreSQL database shared by several keypipe processes of one
    /// site (`postgres://user@host/db`, or `host=… user=… dbname=…`);
    /// absent: the embedded SQLite file in `data_dir`.
    #[serde(default)]
    pub url: Option<String>,
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A currency code, checked as it is read (1 to 11 letters `A-Z`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency(pub String);

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        check_currency(&code)
            .map_err(|why| serde::de::Error::custom(format!("invalid currency {code:?}: {why}")))?;
        Ok(Currency(code))
    }
}

/// `[donau]`: what the Donau publishes (served by nodes with `donau`).
/// Fields are kept with their place in the file, for error messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DonauSettings {
    /// The currency of every donation unit.
    pub currency: Currency,
    /// The legal/financial domain shown to donors.
    pub legal_domain: String,
    /// The Donau's public base URL (`http(s)://…/`).
    pub base_url: Spanned<String>,
    /// Where `keys` is served: `{base_path}keys` (default `/`).
    #[serde(default = "default_base_path")]
    pub base_path: Spanned<String>,
    /// RSA modulus size of new RSA keys (1024 to 8192, multiple of 256).
    #[serde(default = "default_rsa_bits")]
    pub rsa_bits: Spanned<usize>,
    /// Years with a signing key (omitted: the current year at start-up).
    #[serde(default)]
    pub signkey_years: Option<Spanned<Vec<u16>>>,
    /// The donation units.
    pub donation_units: Spanned<Vec<Spanned<DonationUnitSettings>>>,
}

fn default_base_path() -> Spanned<String> {
    Spanned::new(0..0, "/".into())
}

fn default_rsa_bits() -> Spanned<usize> {
    Spanned::new(0..0, 2048)
}

/// Years a Donau key may be for.
const DONAU_YEARS: std::ops::RangeInclusive<u16> = 1970..=9999;

/// One donation unit of `[donau]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DonationUnitSettings {
    /// Its value, e.g. `"EUR:10"`.
    pub value: Amount,
    /// `"RSA"` or `"CS"`.
    pub cipher: Cipher,
    /// Years with a key (omitted: the current year at start-up).
    #[serde(default)]
    pub years: Option<Vec<u16>>,
}

impl DonauSettings {
    /// The service settings (omitted years become the current year).
    pub fn service_config(&self) -> DonauConfig {
        let current = crate::kms::donau::current_year();
        let years = |y: Option<&Vec<u16>>| y.cloned().unwrap_or_else(|| vec![current]);
        DonauConfig {
            currency: self.currency.0.clone(),
            legal_domain: self.legal_domain.clone(),
            base_url: self.base_url.get_ref().clone(),
            units: self
                .donation_units
                .get_ref()
                .iter()
                .map(|u| {
                    let u = u.get_ref();
                    UnitConfig {
                        value: u.value.clone(),
                        cipher: u.cipher,
                        years: years(u.years.as_ref()),
                    }
                })
                .collect(),
            signkey_years: years(self.signkey_years.as_ref().map(Spanned::get_ref)),
            rsa_bits: *self.rsa_bits.get_ref(),
        }
    }

    /// Checks what deserialization could not; `text` is the file, for line
    /// numbers.
    fn validate(&self, text: &str) -> Result<(), String> {
        let line = |span: std::ops::Range<usize>| {
            text.get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1
        };
        let at = |span| format!("line {}: donau.", line(span));
        let bits = *self.rsa_bits.get_ref();
        if !(1024..=8192).contains(&bits) || !bits.is_multiple_of(256) {
            return Err(format!(
                "{}rsa_bits = {bits}: must be 1024 to 8192, a multiple of 256",
                at(self.rsa_bits.span())
            ));
        }
        let path = self.base_path.get_ref();
        if !path.starts_with('/') || !path.ends_with('/') {
            return Err(format!(
                "{}base_path = {path:?}: must start and end with '/'",
                at(self.base_path.span())
            ));
        }
        let url = self.base_url.get_ref();
        if !(url.starts_with("http://") || url.starts_with("https://")) || !url.ends_with('/') {
            return Err(format!(
                "{}base_url = {url:?}: must be an http:// or https:// URL ending in '/'",
                at(self.base_url.span())
            ));
        }
        let years_ok =
            |years: &[u16]| !years.is_empty() && years.iter().all(|y| DONAU_YEARS.contains(y));
        if let Some(years) = &self.signkey_years
            && !years_ok(years.get_ref())
        {
            return Err(format!(
                "{}signkey_years: list 1 or more years from 1970 to 9999 (or omit it)",
                at(years.span())
            ));
        }
        let units = self.donation_units.get_ref();
        if units.is_empty() {
            return Err(format!(
                "{}donation_units: list at least one unit",
                at(self.donation_units.span())
            ));
        }
        let mut seen = Vec::new();
        for unit in units {
            let at = at(unit.span());
            let u = unit.get_ref();
            if u.value.currency != self.currency.0 {
                return Err(format!(
                    "{at}donation_units: unit {} is not in the Donau's currency {}",
                    u.value, self.currency.0
                ));
            }
            if u.years.as_deref().is_some_and(|y| !years_ok(y)) {
                return Err(format!(
                    "{at}donation_units: unit {}: list 1 or more years from 1970 to 9999 (or omit them)",
                    u.value
                ));
            }
            if seen.contains(&(&u.value, u.cipher)) {
                return Err(format!(
                    "{at}donation_units: unit {} with cipher {:?} is listed twice",
                    u.value, u.cipher
                ));
            }
            seen.push((&u.value, u.cipher));
        }
        Ok(())
    }
}

/// `[ncp]`: the NCP KMS API, shared by every listener that serves it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NcpSettings {
    /// Signed requests remembered (each is accepted once) per 5 minutes:
    /// this bounds the sustained rate of signed requests (capacity / 300
    /// per second); beyond, 503 until entries age out. About 30 bytes each.
    pub replay_cache_entries: usize,
}

impl Default for NcpSettings {
    fn default() -> Self {
        Self {
            replay_cache_entries: crate::kms::replay::DEFAULT_CAPACITY,
        }
    }
}

/// `[key_agreement]`: the key-agreement service, shared by every listener
/// serving `key-agreement`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyAgreementSettings {
    /// The server's identifier (`id_S`, sent Base64-encoded).
    pub identifier: String,
    /// Enabled schemes, most preferred first.
    pub schemes: Vec<Scheme>,
    /// Seconds a `client_reference_id` waits for its login.
    pub reference_ttl_s: u64,
    /// Most agreements awaiting their login at once (more: the oldest is
    /// dropped).
    pub max_pending: usize,
    /// Key-agreement and login requests on the pool at once (more: 503).
    pub max_queued: usize,
}

impl Default for KeyAgreementSettings {
    fn default() -> Self {
        let d = AgreementConfig::default();
        Self {
            identifier: String::from_utf8_lossy(&d.identifier).into_owned(),
            schemes: d.schemes,
            reference_ttl_s: d.reference_ttl.as_secs(),
            max_pending: d.max_pending,
            max_queued: 64,
        }
    }
}

impl KeyAgreementSettings {
    /// The service settings.
    pub fn service_config(&self) -> AgreementConfig {
        AgreementConfig {
            identifier: self.identifier.as_bytes().to_vec(),
            schemes: self.schemes.clone(),
            reference_ttl: Duration::from_secs(self.reference_ttl_s),
            max_pending: self.max_pending,
        }
    }
}

/// `[login]`: the login service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginSettings {
    /// Accept a login without `client_reference_id` (plain password).
    pub allow_plain_password: bool,
    /// Seconds an access token lives.
    pub access_token_ttl_s: u64,
    /// Seconds a session (its refresh token) lives.
    pub refresh_token_ttl_s: u64,
    /// Milliseconds a first failed login is held; doubles per failure.
    pub failure_delay_ms: u64,
    /// Longest hold, milliseconds.
    pub max_failure_delay_ms: u64,
}

impl Default for LoginSettings {
    fn default() -> Self {
        let d = LoginConfig::default();
        Self {
            allow_plain_password: d.allow_plain_password,
            access_token_ttl_s: d.access_ttl.as_secs(),
            refresh_token_ttl_s: d.refresh_ttl.as_secs(),
            failure_delay_ms: d.failure_delay.as_millis() as u64,
            max_failure_delay_ms: d.max_failure_delay.as_millis() as u64,
        }
    }
}

impl LoginSettings {
    /// The service settings.
    pub fn service_config(&self) -> LoginConfig {
        LoginConfig {
            allow_plain_password: self.allow_plain_password,
            access_ttl: Duration::from_secs(self.access_token_ttl_s),
            refresh_ttl: Duration::from_secs(self.refresh_token_ttl_s),
            failure_delay: Duration::from_millis(self.failure_delay_ms),
            max_failure_delay: Duration::from_millis(self.max_failure_delay_ms),
        }
    }
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

/// HTTP limits and timeouts of a listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Most open connections (more: 503 and closed).
    pub max_connections: usize,
    /// Most open connections from one address that is not loopback.
    pub max_connections_per_ip: usize,
    /// Longest request line + headers, bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Longest request body, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// A request must arrive whole within this many ms of its first byte (408).
    pub request_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this many ms.
    pub idle_timeout_ms: u64,
    /// On shutdown, in-flight requests and pushes get this many ms.
    pub shutdown_grace_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        let d = ServerConfig::default();
        Self {
            max_connections: d.max_connections,
            max_connections_per_ip: d.max_connections_per_ip,
            max_header_bytes: d.limits.max_header_bytes,
            max_body_bytes: d.limits.max_body_bytes,
            request_timeout_ms: d.request_timeout.as_millis() as u64,
            idle_timeout_ms: d.idle_timeout.as_millis() as u64,
            shutdown_grace_ms: d.shutdown_grace.as_millis() as u64,
        }
    }
}

impl HttpSettings {
    /// The server settings for a listener on `listen` with `workers`.
    pub fn server_config(&self, listen: SocketAddr, workers: usize) -> ServerConfig {
        ServerConfig {
            listen,
            workers,
            limits: Limits {
                max_header_bytes: self.max_header_bytes,
                max_body_bytes: self.max_body_bytes,
                ..Limits::default()
            },
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            tls: None,
        }
    }
}

/// Key pushes to KMSes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSettings {
    /// Most chunks per KMS taken ahead of their 201 (the bounded queue).
    pub queue_chunks: usize,
    /// Most requests pipelined on one connection.
    pub max_in_flight: usize,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            queue_chunks: 1024,
            max_in_flight: 64,
        }
    }
}

/// The KMS side (`[node.kms_side]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KmsSideSettings {
    /// Most key bytes held for local consumers (more: 503, the node retries).
    pub received_capacity_bytes: usize,
    /// The QKD nodes that may push key here: the names (`CN`, `OU=node`)
    /// of their client certificates. Empty: pushes are taken only from
    /// loopback callers without a certificate.
    pub nodes: Vec<String>,
}

impl Default for KmsSideSettings {
    fn default() -> Self {
        Self {
            received_capacity_bytes: 64 << 20,
            nodes: Vec::new(),
        }
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

impl Config {
    /// Parses and checks a configuration file's text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        for node in &mut config.nodes {
            // The engine is the node's: its name is the node's.
            if let Some(engine) = &mut node.engine {
                engine.name = node.name.clone();
            }
        }
        if config.nodes.is_empty() {
            return Err("no [[node]] configured".into());
        }
        for node in &config.nodes {
            if node
                .keytalk
                .as_ref()
                .is_some_and(|k| k.listen.all().is_empty())
            {
                return Err(format!(
                    "node {}: [node.keytalk] listen is empty",
                    node.name
                ));
            }
            if node.serve.contains(&Protocol::KeyTalk) != node.keytalk.is_some() {
                return Err(format!(
                    "node {}: serve = [\"keytalk\"] and [node.keytalk] go together",
                    node.name
                ));
            }
            if node.serve.contains(&Protocol::Etsi014) != node.etsi014.is_some() {
                return Err(format!(
                    "node {}: serve = [\"etsi014\"] and [node.etsi014] go together",
                    node.name
                ));
            }
            if let Some(listener) = &node.etsi014 {
                let peer = node.etsi014_peer().ok_or_else(|| {
                    format!(
                        "node {}: etsi014 needs [node.engine.link] with peer_name (the peer \
                         node serves the remote SAEs)",
                        node.name
                    )
                })?;
                config.etsi014.service_config(&node.name, peer, listener)?;
            }
        }
        if config.serves(Protocol::KeyTalk) {
            config.keytalk.validate()?;
        }
        match &config.donau {
            Some(donau) => donau.validate(text)?,
            None if config.serves(Protocol::Donau) => {
                return Err("serve = [\"donau\"] needs a [donau] section".into());
            }
            None => {}
        }
        let ka = &config.key_agreement;
        if ka.identifier.is_empty() || ka.identifier.len() > 256 {
            return Err("key_agreement.identifier: must be 1 to 256 bytes".into());
        }
        if ka.schemes.is_empty() {
            return Err("key_agreement.schemes: enable at least one scheme".into());
        }
        let within = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} = {v}: must be {lo} to {hi}"))
            }
        };
        within(
            "key_agreement.reference_ttl_s",
            ka.reference_ttl_s,
            1,
            86_400,
        )?;
        within(
            "key_agreement.max_pending",
            ka.max_pending as u64,
            1,
            10_000_000,
        )?;
        within("key_agreement.max_queued", ka.max_queued as u64, 1, 100_000)?;
        within(
            "ncp.replay_cache_entries",
            config.ncp.replay_cache_entries as u64,
            1000,
            1_000_000_000,
        )?;
        let lg = &config.login;
        within(
            "login.access_token_ttl_s",
            lg.access_token_ttl_s,
            1,
            366 * 86_400,
        )?;
        within(
            "login.refresh_token_ttl_s",
            lg.refresh_token_ttl_s,
            1,
            366 * 86_400,
        )?;
        within("login.failure_delay_ms", lg.failure_delay_ms, 1, 3_600_000)?;
        within(
            "login.max_failure_delay_ms",
            lg.max_failure_delay_ms,
            lg.failure_delay_ms,
            3_600_000,
        )?;
        for node in &config.nodes {
            if node.name.is_empty()
                || !node
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(format!(
                    "node name {:?}: use letters, digits, '-', '_' or '.'",
                    node.name
                ));
            }
            if let Some(engine) = &node.engine {
                engine
                    .validate()
                    .map_err(|e| format!("node {}: {e}", node.name))?;
                if engine.link.as_ref().is_some_and(|l| l.listen.is_some()) {
                    return Err(format!(
                        "node {}: engine.link.listen is for the C ABI; the server receives link sync on node.listen",
                        node.name
                    ));
                }
            }
            if node.tls.is_none() {
                crate::tls::allow_plaintext(
                    "listen",
                    node.listen,
                    node.insecure_plaintext,
                    "[node.tls]",
                    "insecure_plaintext",
                )
                .map_err(|e| format!("node {}: {e}", node.name))?;
            }
            for kms in &node.kms {
                let bad = |what: String| format!("node {}: kms {:?}: {what}", node.name, kms.name);
                if kms.name.is_empty() {
                    return Err(bad("name is empty".into()));
                }
                if kms.uris.is_empty() {
                    return Err(bad("uris: list at least one base URI".into()));
                }
                if !(1..=100_000).contains(&kms.max_streams) {
                    return Err(bad(format!(
                        "max_streams = {}: must be 1 to 100000",
                        kms.max_streams
                    )));
                }
                for uri in &kms.uris {
                    let origin = crate::http::Origin::parse(uri).map_err(&bad)?;
                    if !origin.tls && !origin.is_loopback() && !kms.insecure_plaintext {
                        return Err(bad(format!(
                            "uri {uri:?} is plain http to another host: pushed key would cross \
                             the network in clear. Use https://, or set insecure_plaintext = true \
                             on this kms"
                        )));
                    }
                }
            }
            if node.serve.contains(&Protocol::Etsi004Qkd) && node.engine.is_none() {
                return Err(format!(
                    "node {}: serve = [\"etsi004-qkd\"] needs a [node.engine] section",
                    node.name
                ));
            }
        }
        Ok(config)
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
