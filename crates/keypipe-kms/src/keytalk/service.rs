//! The KeyTalk service of one process, [`KeyTalk`]: what it needs of the
//! store, where its sessions, downloads and failure counts live (memory or
//! the shared store), its counters, and the download and CA entry points.
//!
//! Sessions, one-time downloads and failure counts live in this process
//! ([`KeyTalk::new`]) or, when several processes share the store
//! (PostgreSQL, behind a load balancer that does not pin clients), in its
//! `ephemeral` table ([`KeyTalk::with_shared`]), so each call of an
//! enrolment may reach another process ([`shared`] says how); users,
//! devices and issued certificates live in the store. A failure of that
//! table answers RCDP error 1000 "retry" (HTTP 200, as every RCDP answer)
//! and is logged.
//!
//! [`shared`]: super::shared

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use super::MAX_DOWNLOADS;
use super::answer::{Answer, ERR_PROTOCOL};
use super::config::KeyTalkConfig;
use super::credentials::Failures;
use super::oob::{Download, Downloads};
use super::session::Sessions;
use crate::ca::LoadedCa;
use crate::store::{CaStore, EphemeralStore, KeyTalkStore, StoreError, UserStore};

/// What the KeyTalk service needs of the store.
pub trait KeyTalkBackend: UserStore + KeyTalkStore + CaStore {}
impl<T: UserStore + KeyTalkStore + CaStore> KeyTalkBackend for T {}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct KeyTalkStats {
    /// Certificates delivered.
    pub certificates: AtomicU64,
    /// Failed authentications.
    pub auth_failures: AtomicU64,
    /// CSRs refused (each ended its session).
    pub csr_refused: AtomicU64,
}

/// The KeyTalk service of one process.
pub struct KeyTalk {
    pub(super) config: KeyTalkConfig,
    pub(super) store: Arc<dyn KeyTalkBackend>,
    pub(super) ca: LoadedCa,
    pub(super) sessions: Sessions,
    pub(super) downloads: Downloads,
    pub(super) failures: Failures,
    /// The three tables above are in the store.
    pub(super) shared: bool,
    pub(super) stats: KeyTalkStats,
    pub(super) resolver: Resolver,
}

/// Resolves a service URI's host to its addresses (text form), for the
/// `resolved` check.
pub type Resolver = Box<dyn Fn(&str) -> Vec<String> + Send + Sync>;

impl std::fmt::Debug for KeyTalk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTalk")
            .field("services", &self.config.services.len())
            .finish_non_exhaustive()
    }
}

/// The answer when the shared tables' store fails (logged, never shown to
/// the client): retry, as when the server is busy.
pub(super) fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Answer {
    tracing::error!("keytalk: {what} store: {e}");
    Answer::error(ERR_PROTOCOL, "temporarily unavailable: retry in a second")
}

impl KeyTalk {
    /// The service over `store` and the CA loaded from it; sessions,
    /// downloads and failure counts in this process.
    pub fn new(config: KeyTalkConfig, store: Arc<dyn KeyTalkBackend>, ca: LoadedCa) -> KeyTalk {
        KeyTalk::with_shared(config, store, ca, None)
    }

    /// The service over `store` and the CA loaded from it; sessions,
    /// downloads and failure counts in `shared` (every process of the
    /// site, given the same store, sees them), or in this process when
    /// `None` (as [`KeyTalk::new`]).
    pub fn with_shared(
        config: KeyTalkConfig,
        store: Arc<dyn KeyTalkBackend>,
        ca: LoadedCa,
        shared: Option<Arc<dyn EphemeralStore>>,
    ) -> KeyTalk {
        let (idle, max_age, max_sessions) = (
            config.session_idle,
            config.session_max_age,
            config.max_sessions,
        );
        let (delay, max_failures, lock) =
            (config.failure_delay, config.max_failures, config.lock_time);
        let is_shared = shared.is_some();
        let (sessions, downloads, failures) = match shared {
            None => (
                Sessions::new(idle, max_age, max_sessions),
                Downloads::new(config.download_ttl, MAX_DOWNLOADS),
                Failures::new(delay, max_failures, lock),
            ),
            Some(shared) => (
                Sessions::shared(idle, max_age, max_sessions, Arc::clone(&shared)),
                Downloads::shared(config.download_ttl, MAX_DOWNLOADS, Arc::clone(&shared)),
                Failures::shared(delay, max_failures, lock, shared),
            ),
        };
        KeyTalk {
            sessions,
            downloads,
            failures,
            shared: is_shared,
            config,
            store,
            ca,
            stats: KeyTalkStats::default(),
            resolver: Box::new(resolve),
        }
    }

    /// Resolves service URIs with `resolver` instead of the system's
    /// resolver (blocking, run on the pool).
    pub fn with_resolver(mut self, resolver: Resolver) -> KeyTalk {
        self.resolver = resolver;
        self
    }

    /// The counters.
    pub fn stats(&self) -> &KeyTalkStats {
        &self.stats
    }

    /// True when sessions, downloads and failure counts are shared
    /// through the store (every call may then touch the database).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Sessions held, for metrics. Shared: those of every process as of
    /// this process's last `hello` (a figure kept in memory, never a
    /// query: metrics never wait for the store).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Takes the out-of-band download of `token` (once, in time); an
    /// error when the shared store failed (the caller answers 503).
    pub fn download(&self, token: &str, now: Instant) -> Result<Option<Download>, StoreError> {
        self.downloads.try_take(token, now)
    }

    /// A CA certificate as PEM for `GET /ca/1.0.0/{which}`: `primary`,
    /// `signing`; `None` for `root` (keypipe's Primary CA is its root) and
    /// anything else.
    pub fn ca_pem(&self, which: &str) -> Option<String> {
        let der = match which {
            "primary" => self.ca.primary_der(),
            "signing" => self.ca.signing_der(),
            _ => return None,
        };
        Some(crate::ca::pem("CERTIFICATE", der))
    }
}

/// The addresses `uri`'s host resolves to here (blocking; a pool thread).
fn resolve(uri: &str) -> Vec<String> {
    use std::net::ToSocketAddrs;
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let has_port = if authority.starts_with('[') {
        authority.contains("]:")
    } else {
        authority.contains(':')
    };
    let host_port = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    host_port
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip().to_string()).collect())
        .unwrap_or_default()
}
