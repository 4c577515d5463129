//! KeyTalk certificate enrolment, sans-IO: RCDP v2 (2.0.0 to 2.4.1), the
//! public API and the CA download, over keypipe's CA and user store. The
//! HTTP adapter (`api::keytalk` of the server) parses requests into
//! [`RcdpRequest`]s and writes [`RcdpReply`]s; nothing here touches a
//! socket.
//!
//! One concept per file: [`version`] (what each version adds), [`params`]
//! (lenient request reading, the cookie, times), [`phase`] (the clients'
//! transition table), [`session`] (ids, expiry), [`credentials`]
//! (passwords, devices, delays and locks), [`csr`] (CSR checks),
//! [`cert`] (issuing and delivering), [`package`] (PEM and P12),
//! [`oob`] (one-time downloads), [`public`] (the public API), [`answer`]
//! (JSON typing rules) and [`config`] (services).
//!
//! Sessions, one-time downloads and failure counts live in this process
//! ([`KeyTalk::new`]) or, when several processes share the store
//! (PostgreSQL, behind a load balancer that does not pin clients), in its
//! `ephemeral` table ([`KeyTalk::with_shared`]), so each call of an
//! enrolment may reach another process ([`shared`] says how); users,
//! devices and issued certificates live in the store. A failure of that
//! table answers RCDP error 1000 "retry" (HTTP 200, as every RCDP answer)
//! and is logged.

pub mod answer;
pub mod cert;
pub mod config;
pub mod credentials;
pub mod csr;
pub mod oob;
pub mod package;
pub mod params;
pub mod phase;
pub mod public;
pub mod session;
pub mod shared;
pub mod version;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::ca::LoadedCa;
use crate::login::password;
use crate::store::{CaStore, EphemeralStore, KeyTalkStore, StoreError, UserStore};
use answer::{Answer, ERR_DIGEST, ERR_PROTOCOL, ERR_RESOLVED_IP, ERR_TIME_OUT_OF_SYNC};
use config::{KeyTalkConfig, Service};
use credentials::{Attempt, AuthResult, Failures};
use oob::{Download, Downloads};
use params::Params;
use phase::{Action, Phase};
use session::{Holder, Pending, Session, Sessions, Taken};
use shared::TableError;
use version::Version;

/// Longest `USERID` and `HWSIG` accepted (bytes).
pub const MAX_FIELD: usize = 256;

/// Authenticated sessions one user keeps at most (the ones unused
/// longest end).
pub const MAX_SESSIONS_PER_USER: usize = 16;

/// Certificates one session may have issued.
pub const MAX_CERTIFICATES_PER_SESSION: u32 = 8;

/// Out-of-band downloads waiting at most.
pub const MAX_DOWNLOADS: usize = 10_000;

/// What the KeyTalk service needs of the store.
pub trait KeyTalkBackend: UserStore + KeyTalkStore + CaStore {}
impl<T: UserStore + KeyTalkStore + CaStore> KeyTalkBackend for T {}

/// The time of a request: monotonic (sessions, delays) and wall clock
/// (handshake, expiry, messages).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic.
    pub instant: Instant,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: i64,
}

impl Now {
    /// The current time.
    pub fn current() -> Now {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Now {
            instant: Instant::now(),
            unix_ms,
        }
    }
}

/// One RCDP request, parsed.
pub struct RcdpRequest<'a> {
    /// The version in the path (`2.4.1`).
    pub version: &'a str,
    /// The call (`hello`, …).
    pub action: &'a str,
    /// Query and form parameters, merged.
    pub params: Params,
    /// The session id from the `Cookie` header.
    pub sid: Option<String>,
}

impl std::fmt::Debug for RcdpRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The session id is a secret; parameters show their names only.
        f.debug_struct("RcdpRequest")
            .field("version", &self.version)
            .field("action", &self.action)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// One RCDP answer and the session cookie to send with it.
pub struct RcdpReply {
    /// The JSON answer (always sent with HTTP 200).
    pub answer: Answer,
    /// The session id for `Set-Cookie: keytalkcookie=…`, when the request
    /// belongs to a live session.
    pub sid: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for RcdpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RcdpReply")
            .field("answer", &self.answer.status_text())
            .finish_non_exhaustive()
    }
}

/// What a login proved before its device is checked.
struct Verified<'a> {
    user: &'a str,
    /// The device's signature, when the service asks for one.
    hwsig: Option<String>,
    /// The password's validity, seconds (-1: forever).
    validity: i64,
}

/// A session taken by a call: released when dropped (an early return or a
/// panic), so the session is never left held.
struct Lease<'a> {
    sessions: &'a Sessions,
    sid: &'a str,
    /// The call: a session another call took since is not its to release.
    holder: Holder,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.sessions.release(self.sid, self.holder);
    }
}

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
    config: KeyTalkConfig,
    store: Arc<dyn KeyTalkBackend>,
    ca: LoadedCa,
    sessions: Sessions,
    downloads: Downloads,
    failures: Failures,
    /// The three tables above are in the store.
    shared: bool,
    stats: KeyTalkStats,
    resolver: Resolver,
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
fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Answer {
    tracing::error!("keytalk: {what} store: {e}");
    Answer::error(ERR_PROTOCOL, "temporarily unavailable: retry in a second")
}

fn auth_answer(result: &AuthResult, version: Version) -> Answer {
    let a = Answer::status("auth-result");
    match result {
        AuthResult::Ok(validity) => a
            .text("auth-status", "OK")
            .number("password-validity", *validity),
        AuthResult::Delay(secs) => a
            .text("auth-status", "DELAY")
            .number("delay", i64::try_from(*secs).unwrap_or(i64::MAX)),
        AuthResult::Locked(secs) => {
            let a = a.text("auth-status", "LOCKED");
            if version.has_locked_delay() {
                a.number("delay", i64::try_from(*secs).unwrap_or(i64::MAX))
            } else {
                a
            }
        }
        AuthResult::Expired => a.text("auth-status", "EXPIRED"),
        AuthResult::Challenge(name, prompt) => a
            .text("auth-status", "CHALLENGE")
            .value("challenges", json!([{ "name": name, "value": prompt }])),
    }
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

    /// Serves one RCDP call.
    pub fn rcdp(&self, req: RcdpRequest<'_>, now: Now) -> RcdpReply {
        let none = |answer| RcdpReply { answer, sid: None };
        let Some(action) = Action::parse(req.action) else {
            return none(Answer::error(
                ERR_PROTOCOL,
                format!("unknown call {:?}", req.action),
            ));
        };
        match action {
            Action::Hello => {
                let Some(version) = Version::propose(req.version) else {
                    return none(Answer::error(
                        ERR_PROTOCOL,
                        format!(
                            "RCDP {} is not supported (2.0.0 to {})",
                            req.version,
                            Version::NEWEST
                        ),
                    ));
                };
                let sid = match self.sessions.try_open(version, now.instant) {
                    Ok(sid) => sid,
                    Err(TableError::NoRandomness) => {
                        return none(Answer::error(ERR_PROTOCOL, "no randomness for a session"));
                    }
                    // Not produced by sessions (a full table makes room);
                    // only downloads are ever full.
                    Err(TableError::Full) => {
                        return none(Answer::error(
                            ERR_PROTOCOL,
                            "too many sessions: retry later",
                        ));
                    }
                    Err(TableError::Store(e)) => return none(unavailable("session", &e)),
                };
                return RcdpReply {
                    answer: Answer::status("hello").text("version", version.as_str()),
                    sid: Some(sid),
                };
            }
            Action::Eoc | Action::Error => {
                if let Some(sid) = &req.sid
                    && let Err(e) = self.sessions.try_end(sid)
                {
                    return none(unavailable("session", &e));
                }
                return none(Answer::eoc());
            }
            _ => {}
        }
        if Version::parse(req.version).is_none() {
            return none(Answer::error(
                ERR_PROTOCOL,
                format!("RCDP {} is not supported", req.version),
            ));
        }
        let Some(sid) = req.sid.map(Zeroizing::new) else {
            return none(Answer::error(
                ERR_PROTOCOL,
                "no session (no keytalkcookie): start with hello",
            ));
        };
        let mut session = match self.sessions.try_take(&sid, now.instant) {
            Err(e) => return none(unavailable("session", &e)),
            Ok(Taken::Session(s)) => s,
            Ok(Taken::Gone) => {
                return none(Answer::error(
                    ERR_PROTOCOL,
                    "unknown or expired session: start with hello",
                ));
            }
            Ok(Taken::Busy) => {
                return RcdpReply {
                    answer: Answer::error(
                        ERR_PROTOCOL,
                        "another call of this session is running: one at a time",
                    ),
                    sid: Some(sid),
                };
            }
        };
        // Gives the session back if the call below panics.
        let lease = Lease {
            sessions: &self.sessions,
            sid: &sid,
            holder: session.holder(),
        };
        if !action.allowed_in(session.phase) {
            let phase = match session.phase {
                Phase::Hello => "hello",
                Phase::Connected => "handshake",
                Phase::Authenticated => "authentication",
            };
            let answer = Answer::error(
                ERR_PROTOCOL,
                format!("{} is not allowed after {phase}", action.as_str()),
            );
            drop(lease);
            return RcdpReply {
                answer,
                sid: Some(sid),
            };
        }
        let (answer, keep) = self.dispatch(action, &sid, &mut session, &req.params, now);
        if !keep {
            let closed = self.sessions.try_close(&sid, lease.holder);
            // Not given back even when it could not be deleted: it stays
            // held until it expires (or, shared, its mark goes stale).
            std::mem::forget(lease);
            return none(match closed {
                Ok(()) => answer,
                Err(e) => unavailable("session", &e),
            });
        }
        let mut saved = Ok(());
        if action == Action::Authentication
            && session.phase == Phase::Authenticated
            && let Some(user) = &session.user
        {
            saved = self
                .sessions
                .try_limit_user(user, &sid, MAX_SESSIONS_PER_USER - 1);
        }
        let saved = saved.and_then(|()| self.sessions.try_put(&sid, session));
        if let Err(e) = saved {
            // The lease gives the session back as it was, if it can.
            drop(lease);
            return none(unavailable("session", &e));
        }
        std::mem::forget(lease);
        RcdpReply {
            answer,
            sid: Some(sid),
        }
    }

    /// Runs an allowed call: the answer, and whether the session goes on.
    fn dispatch(
        &self,
        action: Action,
        sid: &str,
        session: &mut Session,
        params: &Params,
        now: Now,
    ) -> (Answer, bool) {
        match action {
            Action::Handshake => (self.handshake(session, params, now), true),
            Action::AuthRequirements => (self.auth_requirements(session, params), true),
            Action::Authentication => self.authentication(session, params, now),
            Action::ChangePassword => self.change_password(session, params, now),
            Action::LastMessages => (self.last_messages(session, params), true),
            Action::CsrRequirements => (self.csr_requirements(session), true),
            Action::Cert => cert::deliver(self, sid, session, params, now),
            Action::Hello | Action::Eoc | Action::Error => (Answer::eoc(), false),
        }
    }

    fn handshake(&self, session: &mut Session, params: &Params, now: Now) -> Answer {
        let Some(raw) = params.non_empty("caller-utc") else {
            return Answer::error(ERR_PROTOCOL, "caller-utc is required");
        };
        let Some(caller) = params::parse_utc(raw) else {
            return Answer::error(ERR_PROTOCOL, "caller-utc: an ISO 8601 UTC time");
        };
        let server = now.unix_ms.div_euclid(1000);
        let diff = caller - server;
        if diff.unsigned_abs() > self.config.max_clock_skew.as_secs() {
            return Answer::error(ERR_TIME_OUT_OF_SYNC, diff.to_string());
        }
        session.phase = Phase::Connected;
        Answer::status("handshake").text("server-utc", params::format_utc(server))
    }

    fn service_of(&self, session: &Session, params: &Params) -> Result<&Service, Answer> {
        let name = params
            .non_empty("service")
            .or(session.service.as_deref())
            .ok_or_else(|| Answer::error(ERR_PROTOCOL, "service is required"))?;
        self.config
            .service(name)
            .ok_or_else(|| Answer::error(ERR_PROTOCOL, format!("unknown service {name:?}")))
    }

    fn auth_requirements(&self, session: &mut Session, params: &Params) -> Answer {
        let service = match self.service_of(session, params) {
            Ok(s) => s,
            Err(a) => return a,
        };
        session.service = Some(service.name().to_owned());
        let c = &service.config;
        let types: Vec<&str> = c.credential_types.iter().map(|t| t.as_str()).collect();
        let mut a = Answer::status("auth-requirements")
            .value("credential-types", json!(types))
            .text("password-prompt", c.password_prompt.clone());
        if let Some(formula) = &c.hwsig_formula {
            a = a.text("hwsig_formula", formula.clone());
        }
        if !c.service_uris.is_empty() {
            a = a
                .value("service-uris", json!(c.service_uris))
                .flag("resolve-service-uris", c.resolve_service_uris)
                .flag("calc-service-uris-digest", c.calc_service_uris_digest);
        }
        if session.version.has_csr() {
            a = a.flag("use-tpm-vsc-authentication", false);
        }
        if session.version.has_locked_delay() {
            a = a.flag("use-kerberos-authentication", false);
        }
        a
    }

    /// The checks of `resolved` and `digests`, when the service asks.
    fn check_uris(&self, service: &Service, params: &Params) -> Result<(), Answer> {
        let c = &service.config;
        if c.resolve_service_uris && !c.service_uris.is_empty() {
            let resolved: Value = params
                .get("resolved")
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null);
            let ok = c.service_uris.iter().all(|uri| {
                let theirs: Vec<String> = resolved
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e.get("uri").and_then(Value::as_str) == Some(uri))
                    .flat_map(|e| {
                        e.get("ips")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .filter_map(|ip| ip.as_str().map(|s| s.trim_matches(['[', ']']).to_owned()))
                    .collect();
                let ours = (self.resolver)(uri);
                theirs.iter().any(|ip| ours.iter().any(|o| o == ip))
            });
            if !ok {
                return Err(Answer::error(
                    ERR_RESOLVED_IP,
                    "none of the resolved addresses matches the server's",
                ));
            }
        }
        if c.calc_service_uris_digest && !c.service_uris.is_empty() {
            let digests: Value = params
                .get("digests")
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null);
            let ok = c.service_uris.iter().all(|uri| {
                let theirs = digests
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|e| e.get("uri").and_then(Value::as_str) == Some(uri))
                    .and_then(|e| e.get("digest").and_then(Value::as_str));
                theirs.is_some_and(|d| {
                    c.uri_digests
                        .get(uri)
                        .is_some_and(|want| want.eq_ignore_ascii_case(d))
                })
            });
            if !ok {
                return Err(Answer::error(ERR_DIGEST, "a service file's digest differs"));
            }
        }
        Ok(())
    }

    fn authentication(&self, session: &mut Session, params: &Params, now: Now) -> (Answer, bool) {
        let service = match self.service_of(session, params) {
            Ok(s) => s,
            Err(a) => return (a, true),
        };
        let answering_challenge = matches!(session.pending, Pending::Challenge { .. })
            && params.non_empty("responses").is_some();
        let missing = credentials::missing(service, |name| params.non_empty(name).is_some());
        if !missing.is_empty() && !answering_challenge {
            return (
                Answer::error(
                    ERR_PROTOCOL,
                    format!("missing credentials: {}", missing.join(", ")),
                ),
                true,
            );
        }
        if let Err(a) = self.check_uris(service, params) {
            return (a, true);
        }
        let user = match (&session.pending, params.non_empty("USERID")) {
            (Pending::Challenge { user, .. }, None) => user.clone(),
            (_, Some(u)) => u.to_owned(),
            (_, None) => return (Answer::error(ERR_PROTOCOL, "USERID is required"), true),
        };
        let hwsig = credentials::wants_hwsig(service)
            .then(|| credentials::normalize_hwsig(params.get("HWSIG").unwrap_or("")));
        if user.len() > MAX_FIELD || hwsig.as_ref().is_some_and(|h| h.len() > MAX_FIELD) {
            return (
                Answer::error(
                    ERR_PROTOCOL,
                    format!("USERID and HWSIG: at most {MAX_FIELD} bytes"),
                ),
                true,
            );
        }
        session.service = Some(service.name().to_owned());
        let result = self.authenticate(session, service, &user, hwsig, params, now);
        let keep = !matches!(result, AuthResult::Locked(_));
        (auth_answer(&result, session.version), keep)
    }

    /// A failed attempt: nothing half done stays in the session.
    fn fail(
        &self,
        session: &mut Session,
        attempt: Attempt<'_>,
        user: &str,
        now: Now,
    ) -> AuthResult {
        session.pending = Pending::None;
        session.device = None;
        self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::info!(user, "keytalk: authentication failed");
        attempt.failed(now.instant)
    }

    fn authenticate(
        &self,
        session: &mut Session,
        service: &Service,
        user: &str,
        hwsig: Option<String>,
        params: &Params,
        now: Now,
    ) -> AuthResult {
        let attempt = match self.failures.begin(user, now.instant) {
            Ok(a) => a,
            Err(held) => return held,
        };
        let domain = &self.config.domain;
        // The challenge step: the password was checked in the previous
        // round, for this user and this service; now its answer (as
        // PASSWD, or the first of `responses`).
        if let Pending::Challenge {
            user: u,
            service: s,
            hwsig: first,
        } = &session.pending
            && u == user
        {
            let (same_service, first) = (s == service.name(), first.clone());
            let answer = params
                .get("responses")
                .and_then(params::responses)
                .and_then(|r| r.into_iter().next().map(|(_, v)| v))
                .or_else(|| params.get("PASSWD").map(str::to_owned))
                .unwrap_or_default();
            let answer = Zeroizing::new(answer);
            if !same_service || !credentials::challenge_answered(service, &answer) {
                return self.fail(session, attempt, user, now);
            }
            // Membership and expiry may have changed since the password.
            if !self.member(user, service) {
                return self.fail(session, attempt, user, now);
            }
            let Some(validity) = self.validity(user, now) else {
                session.pending = Pending::Expired(user.to_owned());
                return AuthResult::Expired;
            };
            let verified = Verified {
                user,
                hwsig: first,
                validity,
            };
            return self.authenticated(session, service, verified, attempt, now);
        }
        let given = Zeroizing::new(params.get("PASSWD").unwrap_or("").to_owned());
        let record = match self.store.user(domain, user) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("keytalk: user store: {e}");
                return AuthResult::Delay(1);
            }
        };
        let hash = record
            .as_ref()
            .map_or(password::decoy(), |r| &r.password_hash);
        let password_ok = password::verify(hash, given.as_bytes()) && record.is_some();
        if !password_ok
            || !self.member(user, service)
            || hwsig.as_ref().is_some_and(String::is_empty)
        {
            return self.fail(session, attempt, user, now);
        }
        let Some(validity) = self.validity(user, now) else {
            // The count stays; only a changed password clears it.
            session.pending = Pending::Expired(user.to_owned());
            return AuthResult::Expired;
        };
        if let Some(c) = &service.config.challenge {
            session.pending = Pending::Challenge {
                user: user.to_owned(),
                service: service.name().to_owned(),
                hwsig,
            };
            return AuthResult::Challenge(c.name.clone(), c.prompt.clone());
        }
        let verified = Verified {
            user,
            hwsig,
            validity,
        };
        self.authenticated(session, service, verified, attempt, now)
    }

    fn member(&self, user: &str, service: &Service) -> bool {
        self.store
            .is_member(&self.config.domain, user, service.name())
            .unwrap_or(false)
    }

    /// Seconds the user's password stays valid (-1: forever), or `None`
    /// when it has expired (or cannot be read).
    fn validity(&self, user: &str, now: Now) -> Option<i64> {
        match self.store.password_expiry(&self.config.domain, user) {
            Ok(expires) => credentials::validity(expires, now.unix_ms),
            Err(_) => None,
        }
    }

    /// Every check passed (password, membership, expiry, challenge) but
    /// the device's: registers it on first use (only now, so a password
    /// alone never claims a device), checks it, and opens the service.
    fn authenticated(
        &self,
        session: &mut Session,
        service: &Service,
        verified: Verified<'_>,
        attempt: Attempt<'_>,
        now: Now,
    ) -> AuthResult {
        let Verified {
            user,
            hwsig,
            validity,
        } = verified;
        if let Some(hwsig) = &hwsig {
            match self
                .store
                .register_device(&self.config.domain, user, service.name(), hwsig)
            {
                Ok(r) if credentials::same_hwsig(&r, hwsig) => {}
                Ok(_) => {
                    tracing::info!(
                        user,
                        "keytalk: device signature differs from the registered one"
                    );
                    return self.fail(session, attempt, user, now);
                }
                Err(e) => {
                    tracing::error!("keytalk: device store: {e}");
                    return AuthResult::Delay(1);
                }
            }
        }
        attempt.succeeded();
        session.phase = Phase::Authenticated;
        session.pending = Pending::None;
        session.user = Some(user.to_owned());
        session.service = Some(service.name().to_owned());
        session.device = hwsig;
        session.certificates = 0;
        AuthResult::Ok(validity)
    }

    fn change_password(&self, session: &mut Session, params: &Params, now: Now) -> (Answer, bool) {
        let user = match (&session.pending, session.phase, &session.user) {
            (Pending::Expired(u), _, _) => u.clone(),
            (_, Phase::Authenticated, Some(u)) => u.clone(),
            _ => {
                return (
                    Answer::error(
                        1005,
                        "change-password needs an authenticated user or an expired password",
                    ),
                    true,
                );
            }
        };
        let (Some(old), Some(new)) = (params.get("old-password"), params.get("new-password"))
        else {
            return (
                Answer::error(ERR_PROTOCOL, "old-password and new-password are required"),
                true,
            );
        };
        if new.len() > 1024 {
            return (
                Answer::error(ERR_PROTOCOL, "new-password: at most 1024 bytes"),
                true,
            );
        }
        let (old, new) = (
            Zeroizing::new(old.to_owned()),
            Zeroizing::new(new.to_owned()),
        );
        let result = self.set_password(session, &user, &old, &new, now);
        let keep = !matches!(result, AuthResult::Locked(_));
        (auth_answer(&result, session.version), keep)
    }

    fn set_password(
        &self,
        session: &mut Session,
        user: &str,
        old: &str,
        new: &str,
        now: Now,
    ) -> AuthResult {
        let attempt = match self.failures.begin(user, now.instant) {
            Ok(a) => a,
            Err(held) => return held,
        };
        let domain = &self.config.domain;
        let ok = self
            .store
            .user(domain, user)
            .ok()
            .flatten()
            .is_some_and(|r| password::verify(&r.password_hash, old.as_bytes()));
        if !ok {
            // The session stays where it was (expired or authenticated).
            self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(user, "keytalk: change-password with a wrong old password");
            return attempt.failed(now.instant);
        }
        if new.chars().count() < self.config.min_password_length || new == old {
            // Not a failure of the user's: retry at once.
            return AuthResult::Delay(0);
        }
        let Some(hash) = password::hash(new.as_bytes()) else {
            return AuthResult::Delay(1);
        };
        let max_age = session
            .service
            .as_deref()
            .and_then(|s| self.config.service(s))
            .and_then(|s| s.config.password_max_age_days);
        let expires = max_age.map(|d| now.unix_ms + i64::from(d) * 86_400_000);
        match self.store.set_password(domain, user, &hash, expires) {
            Ok(true) => {}
            _ => return AuthResult::Delay(1),
        }
        attempt.succeeded();
        tracing::info!(user, "keytalk: password changed");
        // The user authenticates again with the new password.
        session.phase = Phase::Connected;
        session.pending = Pending::None;
        session.user = None;
        session.device = None;
        AuthResult::Ok(credentials::validity(expires, now.unix_ms).unwrap_or(-1))
    }

    fn last_messages(&self, session: &Session, params: &Params) -> Answer {
        let from = params.non_empty("from-utc").and_then(params::parse_utc);
        let service = session
            .service
            .as_deref()
            .and_then(|s| self.config.service(s));
        let messages: Vec<Value> = service
            .map(|s| s.messages.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|(t, _)| from.is_none_or(|f| *t >= f))
            .map(|(t, text)| json!({ "text": text, "utc": params::format_utc(*t) }))
            .collect();
        Answer::status("last-messages").value("messages", Value::Array(messages))
    }

    fn csr_requirements(&self, session: &Session) -> Answer {
        if !session.version.has_csr() {
            return Answer::error(ERR_PROTOCOL, "csr-requirements needs RCDP 2.2.0 or later");
        }
        let Some((service, user)) = self.authenticated_service(session) else {
            return Answer::error(ERR_PROTOCOL, "not authenticated");
        };
        match cert::csr_requirements(service, user) {
            Ok(req) => {
                // Only the fields the certificate has: the vendor's Python
                // client sets every field it is given on its CSR, and an
                // empty `c` makes OpenSSL refuse it.
                let subject: serde_json::Map<String, Value> = req
                    .subject
                    .fields()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), Value::from(v)))
                    .collect();
                Answer::status("csr-requirements")
                    .number("key-size", i64::from(req.key_size))
                    .text("signing-algo", req.signing_algo.clone())
                    .value("subject", Value::Object(subject))
            }
            Err(e) => Answer::error(ERR_PROTOCOL, e),
        }
    }

    /// The service and user of an authenticated session.
    fn authenticated_service<'s>(&self, session: &'s Session) -> Option<(&Service, &'s str)> {
        let service = self.config.service(session.service.as_deref()?)?;
        Some((service, session.user.as_deref()?))
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

#[cfg(test)]
mod tests;
