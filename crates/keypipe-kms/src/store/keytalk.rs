//! KeyTalk's part of the store: which services a user may enrol for, when
//! a user's password expires, and the device (hardware signature) each
//! user registered per service on first use. Rows hang off `users` and go
//! with them.

use super::Store;
use super::StoreError;
use super::master_keys::now_ms;
use super::sql::args;

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
            let exists = tx.exists(
                "SELECT 1 FROM users WHERE domain = ?1 AND name = ?2",
                args![domain, name],
            )?;
            if exists {
                tx.execute(
                    "INSERT INTO keytalk_members (domain, name, service) \
                     VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    args![domain, name, service],
                )?;
            }
            Ok(exists)
        })
    }

    fn is_member(&self, domain: &str, name: &str, service: &str) -> Result<bool, StoreError> {
        self.read(|tx| {
            tx.exists(
                "SELECT 1 FROM keytalk_members WHERE domain = ?1 AND name = ?2 AND service = ?3",
                args![domain, name, service],
            )
        })
    }

    fn memberships(&self, domain: &str, name: &str) -> Result<Vec<String>, StoreError> {
        let rows = self.read(|tx| {
            tx.query(
                "SELECT service FROM keytalk_members WHERE domain = ?1 AND name = ?2 \
                 ORDER BY service",
                args![domain, name],
            )
        })?;
        rows.into_iter().map(|mut r| r.get(0)).collect()
    }

    fn password_expiry(&self, domain: &str, name: &str) -> Result<Option<i64>, StoreError> {
        self.read(|tx| {
            tx.query_opt(
                "SELECT password_expires_ms FROM users WHERE domain = ?1 AND name = ?2",
                args![domain, name],
            )
        })?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("user {name:?} in domain {domain:?}"),
        })?
        .get(0)
    }

    fn set_password(
        &self,
        domain: &str,
        name: &str,
        password_hash: &str,
        expires_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.transact(false, |tx| {
            Ok(tx.execute(
                "UPDATE users SET password_hash = ?3, password_expires_ms = ?4 \
                 WHERE domain = ?1 AND name = ?2",
                args![domain, name, password_hash, expires_ms],
            )? > 0)
        })
    }

    fn set_password_expiry(
        &self,
        domain: &str,
        name: &str,
        expires_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.transact(false, |tx| {
            Ok(tx.execute(
                "UPDATE users SET password_expires_ms = ?3 WHERE domain = ?1 AND name = ?2",
                args![domain, name, expires_ms],
            )? > 0)
        })
    }

    fn register_device(
        &self,
        domain: &str,
        name: &str,
        service: &str,
        hwsig: &str,
    ) -> Result<String, StoreError> {
        let now = now_ms();
        self.transact(false, |tx| {
            tx.execute(
                "INSERT INTO keytalk_devices \
                 (domain, name, service, hwsig, registered_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT DO NOTHING",
                args![domain, name, service, hwsig, now],
            )?;
            tx.query_opt(
                "SELECT hwsig FROM keytalk_devices \
                 WHERE domain = ?1 AND name = ?2 AND service = ?3",
                args![domain, name, service],
            )?
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "the device of user {name:?} in domain {domain:?} for service \
                     {service:?} vanished while registering it"
                ))
            })?
            .get(0)
        })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows = self.read(|tx| {
            tx.query(
                "SELECT domain, name, service, hwsig, registered_ms FROM keytalk_devices \
                 ORDER BY domain, name, service",
                &[],
            )
        })?;
        rows.into_iter()
            .map(|mut r| {
                Ok(DeviceRecord {
                    domain: r.get(0)?,
                    name: r.get(1)?,
                    service: r.get(2)?,
                    hwsig: r.get(3)?,
                    registered_ms: r.get(4)?,
                })
            })
            .collect()
    }

    fn reset_devices(
        &self,
        domain: &str,
        name: &str,
        service: Option<&str>,
    ) -> Result<usize, StoreError> {
        self.transact(false, |tx| {
            // Two statements rather than `?3 IS NULL OR service = ?3`: every
            // parameter keeps a type PostgreSQL can infer.
            let removed = match service {
                Some(service) => tx.execute(
                    "DELETE FROM keytalk_devices WHERE domain = ?1 AND name = ?2 \
                     AND service = ?3",
                    args![domain, name, service],
                )?,
                None => tx.execute(
                    "DELETE FROM keytalk_devices WHERE domain = ?1 AND name = ?2",
                    args![domain, name],
                )?,
            };
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
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
