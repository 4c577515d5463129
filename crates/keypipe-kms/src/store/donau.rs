//! Taler Donau keys in the store (either backend): one row per
//! donation-unit key (`RSA` or `CS`, value, year) and per signing key
//! (`SIGN`, year). The public part is in clear; the private part is
//! wrapped under the KEK with the row's identity as associated data
//! (`donau_key:{kind}:{value}:{year}`) and may be gone (`NULL`: the key is
//! lost). Rows are never replaced: once published, a key stays.

use std::fmt;

use zeroize::Zeroizing;

use super::Store;
use super::StoreError;
use super::master_keys::now_ms;
use super::sql::args;

/// What a Donau key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DonauKind {
    /// An RSA donation-unit key (private: PKCS#8 DER; public: GNUnet
    /// encoding of `n, e`).
    Rsa,
    /// A Clause-Schnorr donation-unit key (private: 32-byte scalar;
    /// public: 32-byte compressed Ed25519 point).
    Cs,
    /// An Ed25519 signing key (private: 32-byte seed; public: 32 bytes).
    Sign,
}

impl DonauKind {
    /// The text form: `RSA`, `CS`, `SIGN`.
    pub fn as_str(self) -> &'static str {
        match self {
            DonauKind::Rsa => "RSA",
            DonauKind::Cs => "CS",
            DonauKind::Sign => "SIGN",
        }
    }

    pub(super) fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "RSA" => Ok(DonauKind::Rsa),
            "CS" => Ok(DonauKind::Cs),
            "SIGN" => Ok(DonauKind::Sign),
            _ => Err(StoreError::Corrupt(format!(
                "unknown Donau key kind `{text}`"
            ))),
        }
    }
}

/// One stored Donau key.
#[derive(Clone)]
pub struct DonauKey {
    /// Its kind.
    pub kind: DonauKind,
    /// The donation unit's value (an amount text); empty for signing keys.
    pub value: String,
    /// The year it is valid for.
    pub year: u16,
    /// The public part.
    pub public: Vec<u8>,
    /// The private part; `None` once lost.
    pub private: Option<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for DonauKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DonauKey")
            .field("kind", &self.kind)
            .field("value", &self.value)
            .field("year", &self.year)
            .field("lost", &self.private.is_none())
            .finish_non_exhaustive()
    }
}

/// The public facts of a stored Donau key (no private part is unwrapped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DonauPublicKey {
    /// Its kind.
    pub kind: DonauKind,
    /// The donation unit's value (an amount text); empty for signing keys.
    pub value: String,
    /// The year it is valid for.
    pub year: u16,
    /// The public part.
    pub public: Vec<u8>,
    /// The private part is gone.
    pub lost: bool,
}

/// Donau keys as the Donau service sees them; [`Store`] implements it.
pub trait DonauStore: Send + Sync {
    /// Every Donau key, private parts unwrapped.
    fn donau_keys(&self) -> Result<Vec<DonauKey>, StoreError>;

    /// Every Donau key's public facts, by kind, value and year.
    fn donau_public_keys(&self) -> Result<Vec<DonauPublicKey>, StoreError>;

    /// Stores a new key unless one of the same kind, value and year exists
    /// (then the existing one stays); true when this one was stored.
    fn add_donau_key(&self, key: &DonauKey) -> Result<bool, StoreError>;

    /// Removes a key's private part (it is then listed as lost); true when
    /// the key existed.
    fn mark_donau_lost(&self, kind: DonauKind, value: &str, year: u16) -> Result<bool, StoreError>;

    /// A counter that moves on every change (any process).
    fn changes(&self) -> Result<u64, StoreError>;
}

pub(super) fn aad(kind: DonauKind, value: &str, year: u16) -> String {
    format!("donau_key:{}:{value}:{year}", kind.as_str())
}

impl DonauStore for Store {
    fn changes(&self) -> Result<u64, StoreError> {
        super::KeyStore::generation(self)
    }

    fn donau_public_keys(&self) -> Result<Vec<DonauPublicKey>, StoreError> {
        let rows = self.read(|tx| {
            tx.query(
                "SELECT kind, value, year, public, private_wrapped IS NULL FROM donau_keys \
                 ORDER BY kind, value, year",
                &[],
            )
        })?;
        rows.into_iter()
            .map(|mut r| {
                Ok(DonauPublicKey {
                    kind: DonauKind::parse(&r.get::<String>(0)?)?,
                    value: r.get(1)?,
                    year: r.get(2)?,
                    public: r.get(3)?,
                    lost: r.get(4)?,
                })
            })
            .collect()
    }

    fn donau_keys(&self) -> Result<Vec<DonauKey>, StoreError> {
        let rows = self.read(|tx| {
            tx.query(
                "SELECT kind, value, year, public, private_wrapped FROM donau_keys \
                 ORDER BY kind, value, year",
                &[],
            )
        })?;
        rows.into_iter()
            .map(|mut r| {
                let kind = DonauKind::parse(&r.get::<String>(0)?)?;
                let value: String = r.get(1)?;
                let year: u16 = r.get(2)?;
                let public: Vec<u8> = r.get(3)?;
                let private = match r.get::<Option<Vec<u8>>>(4)? {
                    None => None,
                    Some(blob) => Some(self.kek.unwrap(&aad(kind, &value, year), &blob).map_err(
                        |e| {
                            StoreError::Corrupt(format!(
                                "Donau {} key {value:?} {year} (table donau_keys): the private \
                                 part {e}",
                                kind.as_str()
                            ))
                        },
                    )?),
                };
                Ok(DonauKey {
                    kind,
                    value,
                    year,
                    public,
                    private,
                })
            })
            .collect()
    }

    fn add_donau_key(&self, key: &DonauKey) -> Result<bool, StoreError> {
        let wrapped = match &key.private {
            Some(p) => Some(self.kek.wrap(&aad(key.kind, &key.value, key.year), p)?),
            None => None,
        };
        self.transact(true, |tx| {
            Ok(tx.execute(
                "INSERT INTO donau_keys \
                 (kind, value, year, public, private_wrapped, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                args![
                    key.kind.as_str(),
                    &key.value,
                    key.year,
                    &key.public,
                    wrapped.as_ref(),
                    now_ms()
                ],
            )? > 0)
        })
    }

    fn mark_donau_lost(&self, kind: DonauKind, value: &str, year: u16) -> Result<bool, StoreError> {
        self.transact(true, |tx| {
            let found = tx.exists(
                "SELECT 1 FROM donau_keys WHERE kind = ?1 AND value = ?2 AND year = ?3",
                args![kind.as_str(), value, year],
            )?;
            tx.execute(
                "UPDATE donau_keys SET private_wrapped = NULL \
                 WHERE kind = ?1 AND value = ?2 AND year = ?3",
                args![kind.as_str(), value, year],
            )?;
            Ok(found)
        })
        .inspect(|_| {
            // Leave no copy of the old blob in a log (best effort).
            self.checkpoint();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{KeyStore, StoreOptions};

    #[test]
    fn keys_are_kept_wrapped_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_env(&StoreOptions::new(dir.path()), &|_| None).unwrap();
        let key = DonauKey {
            kind: DonauKind::Cs,
            value: "KUDOS:1".into(),
            year: 2026,
            public: vec![1; 32],
            private: Some(Zeroizing::new(b"PRIVATE-SCALAR-0123456789abcdef!".to_vec())),
        };
        assert!(store.add_donau_key(&key).unwrap());
        let other = DonauKey {
            public: vec![2; 32],
            ..key.clone()
        };
        assert!(!store.add_donau_key(&other).unwrap(), "never replaced");
        let g = store.generation().unwrap();
        let keys = store.donau_keys().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].public, vec![1; 32]);
        assert_eq!(
            keys[0].private.as_deref().map(|p| p.as_slice()),
            Some(&b"PRIVATE-SCALAR-0123456789abcdef!"[..])
        );
        assert!(!format!("{:?}", keys[0]).contains("PRIVATE"));
        assert!(
            store
                .mark_donau_lost(DonauKind::Cs, "KUDOS:1", 2026)
                .unwrap()
        );
        assert!(store.generation().unwrap() > g, "a change readers can see");
        assert!(
            !store
                .mark_donau_lost(DonauKind::Rsa, "KUDOS:1", 2026)
                .unwrap()
        );
        let keys = store.donau_keys().unwrap();
        assert!(keys[0].private.is_none());
        assert_eq!(keys[0].public, vec![1; 32]);
        drop(store);
        let db = std::fs::read(dir.path().join(crate::store::DB_FILE_NAME)).unwrap();
        let wal = std::fs::read(dir.path().join("keypipe.db-wal")).unwrap_or_default();
        for bytes in [db, wal] {
            assert!(!bytes.windows(14).any(|w| w == b"PRIVATE-SCALAR"));
        }
    }
}
