//! Users (a domain, a name and a memory-hard password hash) and their
//! login sessions, in the store.
//!
//! Tokens are never stored: a session is keyed by the SHA-256 of its
//! refresh token, and each access token issued under it by its own
//! SHA-256 (tokens are 256-bit random values, so a fast hash is enough).
//! Removing a user removes its sessions; ending a session removes its
//! access tokens (foreign keys, `ON DELETE CASCADE`). Expired rows are
//! purged whenever a session is created (indexed by expiry). A user keeps
//! at most [`MAX_SESSIONS_PER_USER`] sessions and a session at most
//! [`MAX_ACCESS_TOKENS_PER_SESSION`] access tokens: beyond, the oldest go.

use std::fmt;

use super::Store;
use super::StoreError;
use super::master_keys::now_ms;
use super::sql::args;

/// SHA-256 of a token.
pub type TokenHash = [u8; 32];

/// Sessions a user keeps at most (the oldest end first).
pub(crate) const MAX_SESSIONS_PER_USER: i64 = 100;
/// Access tokens a session keeps at most (the soonest to expire go first).
pub(crate) const MAX_ACCESS_TOKENS_PER_SESSION: i64 = 16;

/// A user as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The user's domain.
    pub domain: String,
    /// The user's name (unique within the domain; both case-sensitive).
    pub name: String,
    /// The password hash, a PHC string (`$argon2id$…`).
    pub password_hash: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("domain", &self.domain)
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .finish()
    }
}

/// Users and login sessions as the login service sees them; [`Store`]
/// implements it.
pub trait UserStore: Send + Sync {
    /// Adds a user; [`StoreError::Exists`] when the name is taken.
    fn add_user(&self, domain: &str, name: &str, password_hash: &str) -> Result<(), StoreError>;

    /// The user, if any.
    fn user(&self, domain: &str, name: &str) -> Result<Option<UserRecord>, StoreError>;

    /// Every user, by domain then name.
    fn list_users(&self) -> Result<Vec<UserRecord>, StoreError>;

    /// Removes a user and its sessions; true when it existed.
    fn remove_user(&self, domain: &str, name: &str) -> Result<bool, StoreError>;

    /// Opens a session for the user with its refresh token and a first
    /// access token (hashes and expiry times, ms since the epoch); false
    /// when the user no longer exists.
    fn create_session(
        &self,
        domain: &str,
        name: &str,
        refresh: (&TokenHash, u64),
        access: (&TokenHash, u64),
    ) -> Result<bool, StoreError>;

    /// Adds an access token to the live session of `refresh`; false when
    /// there is no such live session.
    fn add_access_token(
        &self,
        refresh: &TokenHash,
        access: (&TokenHash, u64),
    ) -> Result<bool, StoreError>;

    /// Ends the session of `refresh` with its access tokens; true when it
    /// existed (expired or not).
    fn end_session(&self, refresh: &TokenHash) -> Result<bool, StoreError>;

    /// `(domain, name)` of a live access token's user.
    fn access_token_user(&self, access: &TokenHash)
    -> Result<Option<(String, String)>, StoreError>;
}

fn user_what(domain: &str, name: &str) -> String {
    format!("user {name:?} in domain {domain:?}")
}

fn to_ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl UserStore for Store {
    fn add_user(&self, domain: &str, name: &str, password_hash: &str) -> Result<(), StoreError> {
        let now = now_ms();
        self.transact(false, |tx| {
            let added = tx.execute(
                "INSERT INTO users (domain, name, password_hash, created_ms) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                args![domain, name, password_hash, now],
            )?;
            if added == 0 {
                return Err(StoreError::Exists {
                    what: user_what(domain, name),
                });
            }
            Ok(())
        })
    }

    fn user(&self, domain: &str, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = self.read(|tx| {
            tx.query_opt(
                "SELECT password_hash, created_ms FROM users WHERE domain = ?1 AND name = ?2",
                args![domain, name],
            )
        })?;
        row.map(|mut r| {
            Ok(UserRecord {
                domain: domain.to_owned(),
                name: name.to_owned(),
                password_hash: r.get(0)?,
                created_ms: u64::try_from(r.get::<i64>(1)?).unwrap_or(0),
            })
        })
        .transpose()
    }

    fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = self.read(|tx| {
            tx.query(
                "SELECT domain, name, password_hash, created_ms FROM users ORDER BY domain, name",
                &[],
            )
        })?;
        rows.into_iter()
            .map(|mut r| {
                Ok(UserRecord {
                    domain: r.get(0)?,
                    name: r.get(1)?,
                    password_hash: r.get(2)?,
                    created_ms: u64::try_from(r.get::<i64>(3)?).unwrap_or(0),
                })
            })
            .collect()
    }

    fn remove_user(&self, domain: &str, name: &str) -> Result<bool, StoreError> {
        self.transact(false, |tx| {
            Ok(tx.execute(
                "DELETE FROM users WHERE domain = ?1 AND name = ?2",
                args![domain, name],
            )? > 0)
        })
    }

    fn create_session(
        &self,
        domain: &str,
        name: &str,
        refresh: (&TokenHash, u64),
        access: (&TokenHash, u64),
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        self.transact(false, |tx| {
            tx.execute("DELETE FROM sessions WHERE expires_ms <= ?1", args![now])?;
            tx.execute(
                "DELETE FROM access_tokens WHERE expires_ms <= ?1",
                args![now],
            )?;
            if !tx.exists(
                "SELECT 1 FROM users WHERE domain = ?1 AND name = ?2",
                args![domain, name],
            )? {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO sessions (refresh_hash, domain, name, created_ms, expires_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                args![refresh.0, domain, name, now, to_ms(refresh.1)],
            )?;
            tx.execute(
                "INSERT INTO access_tokens (token_hash, refresh_hash, expires_ms) \
                 VALUES (?1, ?2, ?3)",
                args![access.0, refresh.0, to_ms(access.1)],
            )?;
            tx.execute(
                "DELETE FROM sessions WHERE domain = ?1 AND name = ?2 AND refresh_hash NOT IN \
                 (SELECT refresh_hash FROM sessions WHERE domain = ?1 AND name = ?2 \
                  ORDER BY created_ms DESC, refresh_hash DESC LIMIT ?3)",
                args![domain, name, MAX_SESSIONS_PER_USER],
            )?;
            Ok(true)
        })
    }

    fn add_access_token(
        &self,
        refresh: &TokenHash,
        access: (&TokenHash, u64),
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        self.transact(false, |tx| {
            if !tx.exists(
                "SELECT 1 FROM sessions WHERE refresh_hash = ?1 AND expires_ms > ?2",
                args![refresh, now],
            )? {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO access_tokens (token_hash, refresh_hash, expires_ms) \
                 VALUES (?1, ?2, ?3)",
                args![access.0, refresh, to_ms(access.1)],
            )?;
            tx.execute(
                "DELETE FROM access_tokens WHERE refresh_hash = ?1 AND token_hash NOT IN \
                 (SELECT token_hash FROM access_tokens WHERE refresh_hash = ?1 \
                  ORDER BY expires_ms DESC, token_hash DESC LIMIT ?2)",
                args![refresh, MAX_ACCESS_TOKENS_PER_SESSION],
            )?;
            Ok(true)
        })
    }

    fn end_session(&self, refresh: &TokenHash) -> Result<bool, StoreError> {
        self.transact(false, |tx| {
            Ok(tx.execute(
                "DELETE FROM sessions WHERE refresh_hash = ?1",
                args![refresh],
            )? > 0)
        })
    }

    fn access_token_user(
        &self,
        access: &TokenHash,
    ) -> Result<Option<(String, String)>, StoreError> {
        let now = now_ms();
        let row = self.read(|tx| {
            tx.query_opt(
                "SELECT s.domain, s.name FROM access_tokens a \
                 JOIN sessions s ON s.refresh_hash = a.refresh_hash \
                 WHERE a.token_hash = ?1 AND a.expires_ms > ?2 AND s.expires_ms > ?2",
                args![access, now],
            )
        })?;
        row.map(|mut r| Ok((r.get(0)?, r.get(1)?))).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn open(dir: &std::path::Path) -> Store {
        Store::open_with_env(&StoreOptions::new(dir), &|_| None).unwrap()
    }

    fn far() -> u64 {
        u64::try_from(now_ms()).unwrap() + 60_000
    }

    #[test]
    fn users_sessions_and_cascades() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.add_user("corp", "alice", "$argon2id$x").unwrap();
        let err = store.add_user("corp", "alice", "$argon2id$y").unwrap_err();
        assert!(matches!(err, StoreError::Exists { .. }), "{err}");
        store.add_user("corp", "Alice", "$argon2id$z").unwrap();
        assert_eq!(
            store.user("corp", "alice").unwrap().unwrap().password_hash,
            "$argon2id$x"
        );
        assert!(store.user("other", "alice").unwrap().is_none());
        assert_eq!(store.list_users().unwrap().len(), 2);

        let (r, a1, a2) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        assert!(
            store
                .create_session("corp", "alice", (&r, far()), (&a1, far()))
                .unwrap()
        );
        assert!(
            !store
                .create_session("corp", "nobody", (&[9; 32], far()), (&[8; 32], far()))
                .unwrap()
        );
        assert!(store.add_access_token(&r, (&a2, far())).unwrap());
        assert_eq!(
            store.access_token_user(&a2).unwrap(),
            Some(("corp".into(), "alice".into()))
        );
        // An expired access token is not accepted.
        store.add_access_token(&r, (&[4; 32], 1)).unwrap();
        assert_eq!(store.access_token_user(&[4; 32]).unwrap(), None);
        assert!(store.end_session(&r).unwrap());
        assert!(!store.end_session(&r).unwrap());
        assert_eq!(store.access_token_user(&a1).unwrap(), None);
        assert!(!store.add_access_token(&r, (&[5; 32], far())).unwrap());

        // Removing a user ends its sessions.
        let r2 = [6u8; 32];
        store
            .create_session("corp", "alice", (&r2, far()), (&[7; 32], far()))
            .unwrap();
        assert!(store.remove_user("corp", "alice").unwrap());
        assert!(!store.remove_user("corp", "alice").unwrap());
        assert_eq!(store.access_token_user(&[7; 32]).unwrap(), None);
        assert!(!store.end_session(&r2).unwrap());
        // Caps: the oldest access tokens and sessions go.
        store.add_user("corp", "carol", "$argon2id$c").unwrap();
        // All zeros: below every other refresh hash, so this session is the
        // one to go even when a later one shares its creation millisecond
        // (ties are broken by the hash).
        let r3 = [0u8; 32];
        store
            .create_session("corp", "carol", (&r3, far()), (&[11; 32], far()))
            .unwrap();
        for i in 0..MAX_ACCESS_TOKENS_PER_SESSION as u8 {
            let token = [100 + i; 32];
            assert!(
                store
                    .add_access_token(&r3, (&token, far() + u64::from(i) + 1))
                    .unwrap()
            );
        }
        assert_eq!(
            store.access_token_user(&[11; 32]).unwrap(),
            None,
            "oldest token dropped"
        );
        assert!(store.access_token_user(&[100; 32]).unwrap().is_some());
        for i in 0..MAX_SESSIONS_PER_USER {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&i.to_be_bytes());
            h[31] = 1;
            let mut a = h;
            a[31] = 2;
            store
                .create_session("corp", "carol", (&h, far()), (&a, far()))
                .unwrap();
        }
        assert!(!store.end_session(&r3).unwrap(), "oldest session dropped");
        // User writes do not move the key caches' generation.
        let g = crate::store::KeyStore::generation(&store).unwrap();
        store.add_user("corp", "bob", "$argon2id$b").unwrap();
        assert_eq!(crate::store::KeyStore::generation(&store).unwrap(), g);
    }
}
