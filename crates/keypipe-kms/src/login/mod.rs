//! Login (`POST /rest/login`, `/rest/refresh`, `/rest/logout`), sans-IO.
//!
//! - **Password transport.** With `?client_reference_id=…` the password is
//!   encrypted under that agreement's `k_enc`
//!   (`Base64(iv12 ‖ AES-GCM(k_enc, password, aad = client_reference_id))`,
//!   see `SessionKey::open`); the reference is used up by the attempt,
//!   whatever its outcome. Without one the password is plain, which is
//!   refused unless `allow_plain_password` is set (default: refused).
//! - **Users** are `(domain, name)`, both case-sensitive, with an Argon2id
//!   hash ([`password`]); `keypipe user add|list|remove` manages them.
//! - **Wrong credentials** answer 401 after a growing delay per name and
//!   source address ([`throttle`]: every attempt is charged before its
//!   check, so parallel guesses from one source are checked one per hold;
//!   only the source that guessed wrong backs off, so nobody can lock a
//!   user out from elsewhere); an unknown user costs the same Argon2 work
//!   (a decoy hash) and the same delay, and gets the same answer. The
//!   caller passes the source: the address of the connection the request
//!   came on.
//! - **Tokens** are 32 random bytes, Base64url without padding (43
//!   characters). Only their SHA-256 is stored. A login opens a session
//!   (its refresh token) with a first access token; `refresh` adds an
//!   access token to a live session; `logout` ends the session and every
//!   access token issued under it.
//! - **Several processes** sharing a PostgreSQL store share the throttle
//!   through it ([`LoginService::with_store`]); one process keeps it in
//!   memory ([`LoginService::new`]).

pub mod password;
pub mod throttle;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::agreement::{AgreementService, ReferenceError};
use crate::store::{EphemeralStore, StoreError, TokenHash, UserStore};
use throttle::{Gate, Throttle};

/// Longest domain or user name, bytes.
pub const MAX_NAME: usize = 256;
/// Sources (per name) tracked by the failure throttle at most, and names.
const THROTTLE_CAPACITY: usize = 100_000;

/// Settings of the login service.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// Accept a login without `client_reference_id` (plain password).
    pub allow_plain_password: bool,
    /// Lifetime of an access token.
    pub access_ttl: Duration,
    /// Lifetime of a session (its refresh token).
    pub refresh_ttl: Duration,
    /// Delay after the first failure of a name from a source (doubling
    /// after each).
    pub failure_delay: Duration,
    /// Longest delay.
    pub max_failure_delay: Duration,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            allow_plain_password: false,
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(24 * 3600),
            failure_delay: Duration::from_millis(500),
            max_failure_delay: Duration::from_secs(30),
        }
    }
}

/// `POST /rest/login` body. The password is zeroized on drop.
#[derive(Deserialize)]
pub struct LoginRequest {
    /// The user's domain.
    pub domain: String,
    /// The user's name.
    pub username: String,
    /// The password: encrypted (with a reference) or plain.
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("domain", &self.domain)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `POST /rest/refresh` and `/rest/logout` body.
#[derive(Deserialize)]
pub struct RefreshRequest {
    /// The session's refresh token.
    pub refresh_token: Zeroizing<String>,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshRequest(<redacted>)")
    }
}

/// A successful login's answer.
#[derive(Serialize)]
pub struct Tokens {
    /// Bearer token for API calls.
    pub access_token: Zeroizing<String>,
    /// Token for `refresh` and `logout`.
    pub refresh_token: Zeroizing<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(<redacted>)")
    }
}

/// Why a login, refresh or logout failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Malformed request, undecryptable password, plain password refused
    /// (400).
    #[error("{0}")]
    BadRequest(String),
    /// The reference is unknown (404), used or expired (410).
    #[error("{0}")]
    Reference(ReferenceError),
    /// Wrong or unknown credentials (401), to be answered at `answer_at`.
    #[error("invalid credentials")]
    Unauthorized {
        /// When the answer is due (the throttle's delay).
        answer_at: Instant,
    },
    /// Unknown, expired or ended token (401, at once).
    #[error("invalid or expired token")]
    InvalidToken,
    /// The store cannot be reached now (503); the message is logged, not
    /// sent.
    #[error("service temporarily unavailable; retry")]
    Unavailable(String),
    /// The store failed (500); the message is logged, not sent.
    #[error("internal error")]
    Store(String),
}

impl From<StoreError> for LoginError {
    /// A store that cannot be reached now is 503; any other failure 500.
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            LoginError::Unavailable(e.to_string())
        } else {
            LoginError::Store(e.to_string())
        }
    }
}

impl From<ReferenceError> for LoginError {
    /// What taking a reference can fail with.
    fn from(e: ReferenceError) -> Self {
        match e {
            ReferenceError::Unavailable(detail) => LoginError::Unavailable(detail),
            ReferenceError::Store(detail) => LoginError::Store(detail),
            ReferenceError::Unknown | ReferenceError::Used | ReferenceError::Expired => {
                LoginError::Reference(e)
            }
        }
    }
}

/// The login service.
pub struct LoginService {
    users: Arc<dyn UserStore>,
    agreement: Arc<AgreementService>,
    config: LoginConfig,
    throttle: Throttle,
}

impl std::fmt::Debug for LoginService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

fn new_token() -> Result<(Zeroizing<String>, TokenHash), LoginError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut raw[..]).map_err(|_| LoginError::Store("random source failed".into()))?;
    let token = Zeroizing::new(URL_SAFE_NO_PAD.encode(&raw[..]));
    let hash = token_hash(&token);
    Ok((token, hash))
}

fn expiry_ms(ttl: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from((now + ttl).as_millis()).unwrap_or(u64::MAX)
}

fn check_name(field: &str, value: &str) -> Result<(), LoginError> {
    if value.is_empty() || value.len() > MAX_NAME {
        return Err(LoginError::BadRequest(format!(
            "{field} must be 1 to {MAX_NAME} bytes"
        )));
    }
    Ok(())
}

impl LoginService {
    /// A service over `users`, opening passwords with `agreement`'s
    /// references, throttling failures in memory (one process).
    pub fn new(
        users: Arc<dyn UserStore>,
        agreement: Arc<AgreementService>,
        config: LoginConfig,
    ) -> Self {
        let throttle = Throttle::new(
            config.failure_delay,
            config.max_failure_delay,
            THROTTLE_CAPACITY,
        );
        Self::with_throttle(users, agreement, config, throttle)
    }

    /// A service over `users`, opening passwords with `agreement`'s
    /// references, throttling failures in `ephemeral`, shared with every
    /// process using it (for a store where `Store::is_shared()`; usually
    /// the same store as `users`).
    pub fn with_store(
        users: Arc<dyn UserStore>,
        agreement: Arc<AgreementService>,
        config: LoginConfig,
        ephemeral: Arc<dyn EphemeralStore>,
    ) -> Self {
        let throttle = Throttle::shared(config.failure_delay, config.max_failure_delay, ephemeral);
        Self::with_throttle(users, agreement, config, throttle)
    }

    fn with_throttle(
        users: Arc<dyn UserStore>,
        agreement: Arc<AgreementService>,
        config: LoginConfig,
        throttle: Throttle,
    ) -> Self {
        // Made now, so the first unknown user costs no more than a known one.
        password::decoy();
        LoginService {
            users,
            agreement,
            config,
            throttle,
        }
    }

    /// One login attempt from `source`, the address of the connection it
    /// came on (the throttle backs off per name and source). Argon2 work:
    /// run it off the event loop.
    pub fn login(
        &self,
        reference: Option<&str>,
        req: &LoginRequest,
        source: IpAddr,
        now: Instant,
    ) -> Result<Tokens, LoginError> {
        check_name("domain", &req.domain)?;
        check_name("username", &req.username)?;
        let password = match reference {
            Some(reference) => {
                let (issued, key) = self.agreement.take(reference, now)?;
                key.open("password", &req.password, &issued)
                    .map_err(|e| LoginError::BadRequest(e.to_string()))?
            }
            None if self.config.allow_plain_password => {
                Zeroizing::new(req.password.as_bytes().to_vec())
            }
            None => {
                return Err(LoginError::BadRequest(
                    "plain passwords are refused: agree on a key with POST /rest/key-agreement \
                     and pass its client_reference_id"
                        .into(),
                ));
            }
        };
        let answer_at = match self
            .throttle
            .attempt(&req.domain, &req.username, source, now)
        {
            Gate::Held(answer_at) => return Err(LoginError::Unauthorized { answer_at }),
            Gate::Check(answer_at) => answer_at,
            // Logged by the throttle.
            Gate::StoreFailed { unavailable: true } => {
                return Err(LoginError::Unavailable("login throttle store".into()));
            }
            Gate::StoreFailed { unavailable: false } => {
                return Err(LoginError::Store("login throttle store".into()));
            }
        };
        let user = self.users.user(&req.domain, &req.username)?;
        let hash = user
            .as_ref()
            .map_or(password::decoy(), |u| &u.password_hash);
        let matches = password::verify(hash, &password) && user.is_some();
        if matches {
            let (refresh, refresh_hash) = new_token()?;
            let (access, access_hash) = new_token()?;
            let opened = self.users.create_session(
                &req.domain,
                &req.username,
                (&refresh_hash, expiry_ms(self.config.refresh_ttl)),
                (&access_hash, expiry_ms(self.config.access_ttl)),
            )?;
            if opened {
                self.throttle
                    .succeeded(&req.domain, &req.username, source, now);
                return Ok(Tokens {
                    access_token: access,
                    refresh_token: refresh,
                });
            }
        }
        Err(LoginError::Unauthorized { answer_at })
    }

    /// A new access token for the live session of `refresh_token`.
    pub fn refresh(&self, refresh_token: &str) -> Result<Zeroizing<String>, LoginError> {
        let (access, access_hash) = new_token()?;
        let added = self.users.add_access_token(
            &token_hash(refresh_token),
            (&access_hash, expiry_ms(self.config.access_ttl)),
        )?;
        if added {
            Ok(access)
        } else {
            Err(LoginError::InvalidToken)
        }
    }

    /// Ends the session of `refresh_token` and its access tokens.
    pub fn logout(&self, refresh_token: &str) -> Result<(), LoginError> {
        if self.users.end_session(&token_hash(refresh_token))? {
            Ok(())
        } else {
            Err(LoginError::InvalidToken)
        }
    }
}
