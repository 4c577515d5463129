//! KeyTalk's part of the store: which services a user may enrol for, when
//! a user's password expires, and the device (hardware signature) each
//! user registered per service on first use. Rows hang off `users` and go
//! with them.

use rusqlite::{OptionalExtension, params};

use super::StoreError;
use super::sqlite::{Store, now_ms};

/// A device registered for a user of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The user's domain.
    pub domain: String,
    /// The user's name.
    pub name: String,
    /// The service.
    pub service: String,
    /// The hardware signature (upper case, as registered).
    pub hwsig: String,
    /// When it was registered, ms since the epoch.
    pub registered_ms: i64,
}

/// KeyTalk users, memberships and devices; [`Store`] implements it.
pub trait KeyTalkStore: Send + Sync {
    /// Lets the user enrol for `service`; false when the user does not exist.
    fn add_membership(&self, domain: &str, name: &str, service: &str) -> Result<bool, StoreError>;

    /// True when the user may enrol for `service`.
    fn is_member(&self, domain: &str, name: &str, service: &str) -> Result<bool, StoreError>;

    /// The services the user may enrol for, sorted.
    fn memberships(&self, domain: &str, name: &str) -> Result<Vec<String>, StoreError>;

    /// The user's password expiry, ms since the epoch (`None`: never);
    /// `Err(NotFound)` when there is no such user.
    fn password_expiry(&self, domain: &str, name: &str) -> Result<Option<i64>, StoreError>;

    /// Replaces the user's password hash and expiry; false when the user
    /// does not exist.
    fn set_password(
        &self,
        domain: &str,
        name: &str,
        password_hash: &str,
        expires_ms: Option<i64>,
    ) -> Result<bool, StoreError>;

    /// Sets only the expiry; false when the user does not exist.
    fn set_password_expiry(
        &self,
        domain: &str,
        name: &str,
        expires_ms: Option<i64>,
    ) -> Result<bool, StoreError>;

    /// Registers `hwsig` for the user and service unless one is: the
    /// registered one (the new one when registered now).
    fn register_device(
        &self,
        domain: &str,
        name: &str,
        service: &str,
        hwsig: &str,
    ) -> Result<String, StoreError>;

    /// Every registered device, by domain, name, service.
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Forgets the devices of a user (of one service, or all): how many.
    fn reset_devices(
        &self,
        domain: &str,
        name: &str,
        service: Option<&str>,
    ) -> Result<usize, StoreError>;
}

impl KeyTalkStore for Store {
    fn add_membership(&self, domain: &str, name: &str, service: &str) -> Result<bool, StoreError> {
        self.transact(false, |tx| {
            let exists = tx
                .prepare_cached("SELECT 1 FROM users WHERE domain = ?1 AND name = ?2")?
                .query_row([domain, name], |_| Ok(()))
                .optional()?
                .is_some();
            if exists {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO keytalk_members (domain, name, service) \
                     VALUES (?1, ?2, ?3)",
                )?
                .execute([domain, name, service])?;
            }
            Ok(exists)
        })
    }

    fn is_member(&self, domain: &str, name: &str, service: &str) -> Result<bool, StoreError> {
        let conn = self.lock();
        Ok(conn
            .prepare_cached(
                "SELECT 1 FROM keytalk_members WHERE domain = ?1 AND name = ?2 AND service = ?3",
            )?
            .query_row([domain, name, service], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn memberships(&self, domain: &str, name: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT service FROM keytalk_members WHERE domain = ?1 AND name = ?2 ORDER BY service",
        )?;
        let rows = stmt
            .query_map([domain, name], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(rows)
    }

    fn password_expiry(&self, domain: &str, name: &str) -> Result<Option<i64>, StoreError> {
        let conn = self.lock();
        conn.prepare_cached(
            "SELECT password_expires_ms FROM users WHERE domain = ?1 AND name = ?2",
        )?
        .query_row([domain, name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("user {name:?} in domain {domain:?}"),
        })
    }

    fn set_password(
        &self,
        domain: &str,
        name: &str,
        password_hash: &str,
        expires_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.transact(false, |tx| {
            Ok(tx
                .prepare_cached(
                    "UPDATE users SET password_hash = ?3, password_expires_ms = ?4 \
                     WHERE domain = ?1 AND name = ?2",
                )?
                .execute(params![domain, name, password_hash, expires_ms])?
                > 0)
        })
    }

    fn set_password_expiry(
        &self,
        domain: &str,
        name: &str,
        expires_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.transact(false, |tx| {
            Ok(tx
                .prepare_cached(
                    "UPDATE users SET password_expires_ms = ?3 WHERE domain = ?1 AND name = ?2",
                )?
                .execute(params![domain, name, expires_ms])?
                > 0)
        })
    }

    fn register_device(
        &self,
        domain: &str,
        name: &str,
        service: &str,
        hwsig: &str,
    ) -> Result<String, StoreError> {
        self.transact(false, |tx| {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO keytalk_devices \
                 (domain, name, service, hwsig, registered_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![domain, name, service, hwsig, now_ms()])?;
            Ok(tx
                .prepare_cached(
                    "SELECT hwsig FROM keytalk_devices \
                     WHERE domain = ?1 AND name = ?2 AND service = ?3",
                )?
                .query_row([domain, name, service], |r| r.get(0))?)
        })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT domain, name, service, hwsig, registered_ms FROM keytalk_devices \
             ORDER BY domain, name, service",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DeviceRecord {
                    domain: r.get(0)?,
                    name: r.get(1)?,
                    service: r.get(2)?,
                    hwsig: r.get(3)?,
                    registered_ms: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn reset_devices(
        &self,
        domain: &str,
        name: &str,
        service: Option<&str>,
    ) -> Result<usize, StoreError> {
        self.transact(false, |tx| {
            Ok(tx
                .prepare_cached(
                    "DELETE FROM keytalk_devices WHERE domain = ?1 AND name = ?2 \
                     AND (?3 IS NULL OR service = ?3)",
                )?
                .execute(params![domain, name, service])?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreOptions, UserStore};

    #[test]
    fn memberships_expiry_and_devices_follow_their_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_env(&StoreOptions::new(dir.path()), &|_| None).unwrap();
        assert!(!store.add_membership("kt", "alice", "DEMO").unwrap());
        store.add_user("kt", "alice", "$argon2id$x").unwrap();
        assert!(store.add_membership("kt", "alice", "DEMO").unwrap());
        assert!(
            store.add_membership("kt", "alice", "DEMO").unwrap(),
            "idempotent"
        );
        assert!(store.is_member("kt", "alice", "DEMO").unwrap());
        assert!(!store.is_member("kt", "alice", "OTHER").unwrap());
        assert_eq!(store.memberships("kt", "alice").unwrap(), ["DEMO"]);

        assert_eq!(store.password_expiry("kt", "alice").unwrap(), None);
        assert!(store.set_password_expiry("kt", "alice", Some(5)).unwrap());
        assert_eq!(store.password_expiry("kt", "alice").unwrap(), Some(5));
        assert!(
            store
                .set_password("kt", "alice", "$argon2id$y", None)
                .unwrap()
        );
        assert_eq!(store.password_expiry("kt", "alice").unwrap(), None);
        assert_eq!(
            store.user("kt", "alice").unwrap().unwrap().password_hash,
            "$argon2id$y"
        );
        assert!(matches!(
            store.password_expiry("kt", "bob"),
            Err(StoreError::NotFound { .. })
        ));

        assert_eq!(
            store
                .register_device("kt", "alice", "DEMO", "CS-AA")
                .unwrap(),
            "CS-AA"
        );
        assert_eq!(
            store
                .register_device("kt", "alice", "DEMO", "CS-BB")
                .unwrap(),
            "CS-AA",
            "the first registration stays"
        );
        assert_eq!(store.devices().unwrap().len(), 1);
        assert_eq!(
            store.reset_devices("kt", "alice", Some("OTHER")).unwrap(),
            0
        );
        assert_eq!(store.reset_devices("kt", "alice", None).unwrap(), 1);
        store
            .register_device("kt", "alice", "DEMO", "CS-CC")
            .unwrap();
        assert!(store.remove_user("kt", "alice").unwrap());
        assert!(store.devices().unwrap().is_empty(), "gone with the user");
        assert!(!store.is_member("kt", "alice", "DEMO").unwrap());
    }
}
