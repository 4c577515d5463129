//! keypipe's CA in the store (either backend): the CA keys (`primary`,
//! `signing`, `server`: certificate in clear, PKCS#8 private key wrapped
//! under the KEK with `ca_key:{name}` as associated data) and every
//! certificate the CA issued (public facts and DER; a leaf's private key is
//! never stored). Revocation keeps the row and stamps it. CA keys are
//! written once and never replaced.

use std::fmt;

use zeroize::Zeroizing;

use super::Store;
use super::StoreError;
use super::master_keys::now_ms;
use super::sql::{Row, args};

/// One CA key of the hierarchy.
#[derive(Clone)]
pub struct CaKeyRecord {
    /// `primary`, `signing` or `server`.
    pub name: String,
    /// Its certificate (DER).
    pub cert_der: Vec<u8>,
    /// Its private key (PKCS#8 DER).
    pub key_pkcs8: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for CaKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaKeyRecord")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a KeyTalk enrolment issued a certificate for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// The KeyTalk service.
    pub service: String,
    /// The user (its name in the KeyTalk user domain).
    pub holder: String,
    /// The device's hardware signature, when the service asks for one.
    pub device: Option<String>,
}

/// A certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedRecord {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The CA key that signed it (`signing` or `server`).
    pub issuer: String,
    /// Its subject's common name.
    pub subject: String,
    /// `server`, or the client role (`kms`, `node`, `sae`, `user`).
    pub role: String,
    /// End of validity, ms since the epoch.
    pub not_after_ms: i64,
    /// The certificate (DER).
    pub cert_der: Vec<u8>,
    /// What it was enrolled for (KeyTalk), if anything.
    pub enrolment: Option<Enrolment>,
    /// When it was revoked, ms since the epoch.
    pub revoked_ms: Option<i64>,
}

/// The CA's state; [`Store`] implements it.
pub trait CaStore: Send + Sync {
    /// The CA keys, private keys unwrapped; empty before `keypipe ca init`.
    fn ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError>;

    /// Stores a whole hierarchy at once, unless a CA exists already (then
    /// nothing is written and the answer is false).
    fn create_ca(&self, keys: &[CaKeyRecord]) -> Result<bool, StoreError>;

    /// Records an issued certificate.
    fn record_issued(&self, cert: &IssuedRecord) -> Result<(), StoreError>;

    /// Every issued certificate, oldest first.
    fn issued(&self) -> Result<Vec<IssuedRecord>, StoreError>;

    /// The certificate of `serial` (lower-case hex), if issued here.
    fn issued_one(&self, serial: &str) -> Result<Option<IssuedRecord>, StoreError>;

    /// Revokes `serial` (lower-case hex): `Ok(true)` when it was revoked
    /// now, `Ok(false)` when it was already; [`StoreError::NotFound`]
    /// when no such certificate was issued.
    fn revoke(&self, serial: &str) -> Result<bool, StoreError>;

    /// The serials (lower-case hex) of every revoked certificate.
    fn revoked_serials(&self) -> Result<Vec<String>, StoreError>;

    /// A counter that moves on every change (any process).
    fn ca_changes(&self) -> Result<u64, StoreError>;
}

/// The columns [`issued_row`] reads, in order.
const ISSUED_COLUMNS: &str =
    "serial, issuer, subject, role, not_after, cert_der, revoked_ms, service, holder, device";

/// The [`IssuedRecord`] of a row of [`ISSUED_COLUMNS`].
fn issued_row(mut r: Row) -> Result<IssuedRecord, StoreError> {
    Ok(IssuedRecord {
        serial: r.get(0)?,
        issuer: r.get(1)?,
        subject: r.get(2)?,
        role: r.get(3)?,
        not_after_ms: r.get(4)?,
        cert_der: r.get(5)?,
        revoked_ms: r.get(6)?,
        enrolment: match (r.get::<Option<String>>(7)?, r.get::<Option<String>>(8)?) {
            (Some(service), Some(holder)) => Some(Enrolment {
                service,
                holder,
                device: r.get(9)?,
            }),
            _ => None,
        },
    })
}

pub(super) fn aad(name: &str) -> String {
    format!("ca_key:{name}")
}

impl CaStore for Store {
    fn ca_changes(&self) -> Result<u64, StoreError> {
        super::KeyStore::generation(self)
    }

    fn ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError> {
        let rows = self.read(|tx| {
            tx.query(
                "SELECT name, cert_der, key_wrapped FROM ca_keys ORDER BY name",
                &[],
            )
        })?;
        rows.into_iter()
            .map(|mut r| {
                let name: String = r.get(0)?;
                let cert_der: Vec<u8> = r.get(1)?;
                let wrapped: Vec<u8> = r.get(2)?;
                let key_pkcs8 = self.kek.unwrap(&aad(&name), &wrapped).map_err(|e| {
                    StoreError::Corrupt(format!("CA key {name} (table ca_keys) {e}"))
                })?;
                Ok(CaKeyRecord {
                    name,
                    cert_der,
                    key_pkcs8,
                })
            })
            .collect()
    }

    fn create_ca(&self, keys: &[CaKeyRecord]) -> Result<bool, StoreError> {
        let wrapped = keys
            .iter()
            .map(|k| Ok((k, self.kek.wrap(&aad(&k.name), &k.key_pkcs8)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.transact(true, |tx| {
            if tx.exists("SELECT 1 FROM ca_keys LIMIT 1", &[])? {
                return Ok(false);
            }
            let now = now_ms();
            for (key, blob) in &wrapped {
                tx.execute(
                    "INSERT INTO ca_keys (name, cert_der, key_wrapped, created_ms) \
                     VALUES (?1, ?2, ?3, ?4)",
                    args![&key.name, &key.cert_der, blob, now],
                )?;
            }
            Ok(true)
        })
    }

    fn record_issued(&self, cert: &IssuedRecord) -> Result<(), StoreError> {
        // A new certificate changes no revocation: the generation (which
        // makes caches reload) stays.
        self.transact(false, |tx| {
            let e = cert.enrolment.as_ref();
            tx.execute(
                "INSERT INTO issued_certs \
                 (serial, issuer, subject, role, not_after, cert_der, issued_ms, revoked_ms, \
                  service, holder, device) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                args![
                    &cert.serial,
                    &cert.issuer,
                    &cert.subject,
                    &cert.role,
                    cert.not_after_ms,
                    &cert.cert_der,
                    now_ms(),
                    cert.revoked_ms,
                    e.map(|e| &e.service),
                    e.map(|e| &e.holder),
                    e.and_then(|e| e.device.as_ref()),
                ],
            )?;
            Ok(())
        })
    }

    fn issued(&self) -> Result<Vec<IssuedRecord>, StoreError> {
        let rows = self.read(|tx| {
            tx.query(
                &format!("SELECT {ISSUED_COLUMNS} FROM issued_certs ORDER BY issued_ms, serial"),
                &[],
            )
        })?;
        rows.into_iter().map(issued_row).collect()
    }

    fn issued_one(&self, serial: &str) -> Result<Option<IssuedRecord>, StoreError> {
        self.read(|tx| {
            tx.query_opt(
                &format!("SELECT {ISSUED_COLUMNS} FROM issued_certs WHERE serial = ?1"),
                args![serial],
            )
        })?
        .map(issued_row)
        .transpose()
    }

    fn revoke(&self, serial: &str) -> Result<bool, StoreError> {
        self.transact(true, |tx| {
            let revoked: Option<Option<i64>> = tx
                .query_opt(
                    "SELECT revoked_ms FROM issued_certs WHERE serial = ?1",
                    args![serial],
                )?
                .map(|mut r| r.get(0))
                .transpose()?;
            match revoked {
                None => Err(StoreError::NotFound {
                    what: format!("certificate {serial}"),
                }),
                Some(Some(_)) => Ok(false),
                Some(None) => {
                    tx.execute(
                        "UPDATE issued_certs SET revoked_ms = ?2 WHERE serial = ?1",
                        args![serial, now_ms()],
                    )?;
                    Ok(true)
                }
            }
        })
    }

    fn revoked_serials(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.read(|tx| {
            tx.query(
                "SELECT serial FROM issued_certs WHERE revoked_ms IS NOT NULL ORDER BY serial",
                &[],
            )
        })?;
        rows.into_iter().map(|mut r| r.get(0)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn key(name: &str) -> CaKeyRecord {
        CaKeyRecord {
            name: name.into(),
            cert_der: vec![0x30, 1, 2],
            key_pkcs8: Zeroizing::new(format!("PRIVATE-CA-KEY-{name}-0123456789").into_bytes()),
        }
    }

    #[test]
    fn a_ca_is_created_once_kept_wrapped_and_certificates_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::new(dir.path());
        let store = Store::open_with_env(&options, &|_| None).unwrap();
        assert!(store.ca_keys().unwrap().is_empty());
        let keys = [key("primary"), key("signing"), key("server")];
        assert!(store.create_ca(&keys).unwrap());
        assert!(
            !store.create_ca(&[key("primary")]).unwrap(),
            "never replaced"
        );
        let got = store.ca_keys().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(*got[0].key_pkcs8, *key("primary").key_pkcs8);

        let before = store.ca_changes().unwrap();
        let cert = IssuedRecord {
            serial: "0a1b".into(),
            issuer: "signing".into(),
            subject: "kms-a".into(),
            role: "kms".into(),
            not_after_ms: 1,
            cert_der: vec![0x30],
            revoked_ms: None,
            enrolment: Some(Enrolment {
                service: "DEMO".into(),
                holder: "alice".into(),
                device: None,
            }),
        };
        store.record_issued(&cert).unwrap();
        assert_eq!(store.issued().unwrap(), vec![cert.clone()]);
        assert_eq!(store.issued_one("0a1b").unwrap(), Some(cert));
        assert_eq!(store.issued_one("ffff").unwrap(), None);
        assert!(store.revoked_serials().unwrap().is_empty());
        assert!(store.revoke("0a1b").unwrap());
        assert!(!store.revoke("0a1b").unwrap(), "already revoked");
        assert!(matches!(
            store.revoke("ffff"),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(store.revoked_serials().unwrap(), vec!["0a1b".to_owned()]);
        assert!(store.ca_changes().unwrap() > before, "changes are visible");
        drop(store);
        let db = std::fs::read(options.db_path()).unwrap();
        assert!(
            !db.windows(16).any(|w| w == &b"PRIVATE-CA-KEY-p"[..]),
            "CA keys never in clear in the file"
        );
    }
}
