//! Master keys and access keys ([`KeyStore`]) on the [`Store`], either
//! backend.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use super::handle::Store;
use super::sql::{Tx, args};
use super::{AccessKey, Grant, KeyStore, KeySummary, KeyType, KeyVersion, MasterKey, StoreError};
use keypipe_core::key::locked::LockedBytes;

/// Attempts at a fresh random identifier before blaming the random source.
const ID_ATTEMPTS: usize = 8;
/// Access key ids: 20 of these.
const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// Secrets and API keys: 40 of these.
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Length of an access key id.
const ACCESS_KEY_LEN: usize = 20;
/// Length of an access key secret and of an API key.
const SECRET_LEN: usize = 40;

/// Associated data of a key version's material.
pub(super) fn version_aad(tag: &str, version: u32) -> String {
    format!("kms_key_version:{tag}:{version}")
}

/// Associated data of an access key's secret.
pub(super) fn access_key_aad(access_key: &str) -> String {
    format!("access_key:{access_key}")
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A new keyTag: 16 random bytes as 32 lowercase hex digits.
fn random_tag() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| StoreError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `len` characters drawn uniformly from `alphabet` (rejection sampling
/// over random bytes, so no modulo bias).
fn random_string(len: usize, alphabet: &[u8]) -> Result<Zeroizing<String>, StoreError> {
    let limit = 256 - 256 % alphabet.len();
    let mut out = Zeroizing::new(String::with_capacity(len));
    let mut buf = Zeroizing::new([0u8; 64]);
    while out.len() < len {
        getrandom::fill(&mut buf[..]).map_err(|_| StoreError::Random)?;
        for &b in buf.iter() {
            if usize::from(b) < limit {
                out.push(char::from(alphabet[usize::from(b) % alphabet.len()]));
                if out.len() == len {
                    break;
                }
            }
        }
    }
    Ok(out)
}

fn key_exists(tx: &mut dyn Tx, tag: &str) -> Result<bool, StoreError> {
    tx.exists("SELECT 1 FROM master_keys WHERE tag = ?1", args![tag])
}

/// The creation order of a row made in this write transaction: the
/// generation it commits (writers are serialized on the generation row,
/// so no two creations share one).
fn next_seq(tx: &mut dyn Tx) -> Result<i64, StoreError> {
    let now: i64 = tx
        .query_opt("SELECT value FROM meta WHERE name = 'generation'", &[])?
        .ok_or_else(|| StoreError::Corrupt("the generation counter is missing".into()))?
        .get(0)?;
    Ok(now + 1)
}

fn key_not_found(tag: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("key {tag}"),
    }
}

fn version_not_found(tag: &str, version: u32) -> StoreError {
    StoreError::NotFound {
        what: format!("version {version} of key {tag}"),
    }
}

fn to_u64(value: i64, what: impl FnOnce() -> String) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{} is negative", what())))
}

fn parse_key_type(text: &str, tag: &str) -> Result<KeyType, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("key {tag}: unknown key type `{text}`")))
}

impl KeyStore for Store {
    fn create_key(
        &self,
        name: &str,
        key_type: KeyType,
        convergent: bool,
        material: &[u8],
    ) -> Result<String, StoreError> {
        self.write(|tx| {
            let mut tag = None;
            for _ in 0..ID_ATTEMPTS {
                let candidate = random_tag()?;
                if !key_exists(tx, &candidate)? {
                    tag = Some(candidate);
                    break;
                }
            }
            let tag = tag.ok_or(StoreError::Random)?;
            let now = now_ms();
            let seq = next_seq(tx)?;
            tx.execute(
                "INSERT INTO master_keys \
                 (tag, name, key_type, convergent, enabled, created_ms, seq) \
                 VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6)",
                args![&tag, name, key_type.as_str(), convergent, now, seq],
            )?;
            let wrapped = self.kek.wrap(&version_aad(&tag, 1), material)?;
            tx.execute(
                "INSERT INTO key_versions (tag, version, enabled, created_ms, wrapped) \
                 VALUES (?1, 1, 1, ?2, ?3)",
                args![&tag, now, wrapped],
            )?;
            Ok(tag)
        })
    }

    fn add_version(&self, tag: &str, material: &[u8]) -> Result<u32, StoreError> {
        self.write(|tx| {
            let mut newest = tx
                .query_opt(
                    "SELECT (SELECT max(version) FROM key_versions WHERE tag = ?1) \
                     FROM master_keys WHERE tag = ?1",
                    args![tag],
                )?
                .ok_or_else(|| key_not_found(tag))?;
            let newest = newest.get::<Option<i64>>(0)?.unwrap_or(0);
            let version = u32::try_from(newest + 1).map_err(|_| {
                StoreError::Corrupt(format!("key {tag}: no version number left after {newest}"))
            })?;
            let wrapped = self.kek.wrap(&version_aad(tag, version), material)?;
            tx.execute(
                "INSERT INTO key_versions (tag, version, enabled, created_ms, wrapped) \
                 VALUES (?1, ?2, 1, ?3, ?4)",
                args![tag, version, now_ms(), wrapped],
            )?;
            Ok(version)
        })
    }

    fn set_key_enabled(&self, tag: &str, enabled: bool) -> Result<(), StoreError> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE master_keys SET enabled = ?2 WHERE tag = ?1",
                args![tag, enabled],
            )?;
            if changed == 0 {
                return Err(key_not_found(tag));
            }
            Ok(())
        })
    }

    fn set_version_enabled(
        &self,
        tag: &str,
        version: u32,
        enabled: bool,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE key_versions SET enabled = ?3 WHERE tag = ?1 AND version = ?2",
                args![tag, version, enabled],
            )?;
            if changed == 0 {
                if !key_exists(tx, tag)? {
                    return Err(key_not_found(tag));
                }
                return Err(version_not_found(tag, version));
            }
            Ok(())
        })
    }

    fn reserve_encryptions(
        &self,
        tag: &str,
        version: u32,
        n: u64,
        limit: u64,
    ) -> Result<(u64, u64), StoreError> {
        // Counting is not a change the key caches must see: no bump.
        self.transact(false, |tx| {
            let used: i64 = tx
                .query_opt(
                    "SELECT encryptions FROM key_versions WHERE tag = ?1 AND version = ?2",
                    args![tag, version],
                )?
                .ok_or_else(|| version_not_found(tag, version))?
                .get(0)?;
            let used = to_u64(used, || format!("key {tag} version {version}: encryptions"))?;
            let granted = n.min(limit.saturating_sub(used));
            let after = used + granted;
            let stored = i64::try_from(after)
                .map_err(|_| StoreError::Corrupt(format!("key {tag}: encryption count")))?;
            tx.execute(
                "UPDATE key_versions SET encryptions = ?3 WHERE tag = ?1 AND version = ?2",
                args![tag, version, stored],
            )?;
            Ok((granted, after))
        })
    }

    fn key(&self, tag: &str) -> Result<Option<MasterKey>, StoreError> {
        // Read the row and its blobs in one snapshot, unwrap after
        // the transaction.
        let found = self.read(|tx| {
            let Some(row) = tx.query_opt(
                "SELECT name, key_type, convergent, enabled, created_ms \
                 FROM master_keys WHERE tag = ?1",
                args![tag],
            )?
            else {
                return Ok(None);
            };
            let blobs = tx.query(
                "SELECT version, enabled, wrapped FROM key_versions \
                 WHERE tag = ?1 ORDER BY version",
                args![tag],
            )?;
            Ok(Some((row, blobs)))
        })?;
        let Some((mut row, blobs)) = found else {
            return Ok(None);
        };
        let name: String = row.get(0)?;
        let key_type = parse_key_type(&row.get::<String>(1)?, tag)?;
        let created_ms = to_u64(row.get(4)?, || format!("key {tag}: creation time"))?;
        let versions = blobs
            .into_iter()
            .map(|mut r| {
                let (version, enabled, wrapped): (u32, bool, Vec<u8>) =
                    (r.get(0)?, r.get(1)?, r.get(2)?);
                let material = self
                    .kek
                    .unwrap(&version_aad(tag, version), &wrapped)
                    .map_err(|e| {
                        StoreError::Corrupt(format!(
                            "key {tag} version {version} (table key_versions): the wrapped \
                             material {e}"
                        ))
                    })?;
                Ok(KeyVersion {
                    version,
                    enabled,
                    material: LockedBytes::secret(&material)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(MasterKey {
            tag: tag.to_owned(),
            name,
            key_type,
            convergent: row.get(2)?,
            enabled: row.get(3)?,
            created_ms,
            versions,
        }))
    }

    fn list_keys(&self) -> Result<Vec<KeySummary>, StoreError> {
        let (version_rows, key_rows) = self.read(|tx| {
            Ok((
                tx.query(
                    "SELECT tag, version, enabled FROM key_versions ORDER BY tag, version",
                    &[],
                )?,
                tx.query(
                    "SELECT tag, name, key_type, convergent, enabled FROM master_keys \
                     ORDER BY coalesce(seq, 0), created_ms, tag",
                    &[],
                )?,
            ))
        })?;
        let mut versions: HashMap<String, Vec<(u32, bool)>> = HashMap::new();
        for mut r in version_rows {
            versions
                .entry(r.get(0)?)
                .or_default()
                .push((r.get(1)?, r.get(2)?));
        }
        key_rows
            .into_iter()
            .map(|mut r| {
                let tag: String = r.get(0)?;
                Ok(KeySummary {
                    name: r.get(1)?,
                    key_type: parse_key_type(&r.get::<String>(2)?, &tag)?,
                    convergent: r.get(3)?,
                    enabled: r.get(4)?,
                    versions: versions.remove(&tag).unwrap_or_default(),
                    tag,
                })
            })
            .collect()
    }

    fn create_access_key(&self) -> Result<AccessKey, StoreError> {
        self.write(|tx| {
            let mut ids = None;
            for _ in 0..ID_ATTEMPTS {
                let access_key = random_string(ACCESS_KEY_LEN, UPPER_ALNUM)?;
                let api_key = random_string(SECRET_LEN, ALNUM)?;
                if !tx.exists(
                    "SELECT 1 FROM access_keys WHERE access_key = ?1 OR api_key = ?2",
                    args![access_key.as_str(), api_key.as_str()],
                )? {
                    ids = Some((access_key.to_string(), api_key.to_string()));
                    break;
                }
            }
            let (access_key, api_key) = ids.ok_or(StoreError::Random)?;
            let secret_key = random_string(SECRET_LEN, ALNUM)?;
            let seq = next_seq(tx)?;
            let wrapped = self
                .kek
                .wrap(&access_key_aad(&access_key), secret_key.as_bytes())?;
            tx.execute(
                "INSERT INTO access_keys \
                 (access_key, api_key, enabled, created_ms, revoked_ms, secret_wrapped, seq) \
                 VALUES (?1, ?2, 1, ?3, NULL, ?4, ?5)",
                args![&access_key, &api_key, now_ms(), wrapped, seq],
            )?;
            Ok(AccessKey {
                access_key,
                secret_key,
                api_key,
                enabled: true,
                grants: Vec::new(),
            })
        })
    }

    fn access_key(&self, access_key: &str) -> Result<Option<AccessKey>, StoreError> {
        let found = self.read(|tx| {
            let Some(row) = tx.query_opt(
                "SELECT api_key, enabled, secret_wrapped FROM access_keys WHERE access_key = ?1",
                args![access_key],
            )?
            else {
                return Ok(None);
            };
            Ok(Some((row, grants_of(tx, access_key)?)))
        })?;
        let Some((mut row, grants)) = found else {
            return Ok(None);
        };
        let corrupt = |why: &str| {
            StoreError::Corrupt(format!(
                "access key {access_key} (table access_keys): the wrapped secret {why}"
            ))
        };
        let wrapped: Vec<u8> = row.get(2)?;
        let mut plain = self
            .kek
            .unwrap(&access_key_aad(access_key), &wrapped)
            .map_err(|e| corrupt(&e.to_string()))?;
        let secret_key = match String::from_utf8(std::mem::take(&mut *plain)) {
            Ok(s) => Zeroizing::new(s),
            Err(e) => {
                drop(Zeroizing::new(e.into_bytes()));
                return Err(corrupt("is not text"));
            }
        };
        Ok(Some(AccessKey {
            access_key: access_key.to_owned(),
            secret_key,
            api_key: row.get(0)?,
            enabled: row.get(1)?,
            grants,
        }))
    }

    fn set_grant(&self, access_key: &str, grant: &Grant) -> Result<(), StoreError> {
        self.write(|tx| {
            if !tx.exists(
                "SELECT 1 FROM access_keys WHERE access_key = ?1",
                args![access_key],
            )? {
                return Err(StoreError::NotFound {
                    what: format!("access key {access_key}"),
                });
            }
            tx.execute(
                "INSERT INTO access_key_grants (access_key, key_tag, actions) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (access_key, key_tag) DO UPDATE SET actions = excluded.actions",
                args![access_key, &grant.key_tag, grant.actions.join(",")],
            )?;
            Ok(())
        })
    }

    fn remove_grant(&self, access_key: &str, key_tag: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM access_key_grants WHERE access_key = ?1 AND key_tag = ?2",
                args![access_key, key_tag],
            )? > 0)
        })
    }

    fn list_access_keys(&self) -> Result<Vec<(String, bool, Vec<Grant>)>, StoreError> {
        self.read(|tx| {
            let keys = tx.query(
                "SELECT access_key, enabled FROM access_keys \
                 ORDER BY coalesce(seq, 0), created_ms, access_key",
                &[],
            )?;
            keys.into_iter()
                .map(|mut r| {
                    let ak: String = r.get(0)?;
                    let grants = grants_of(tx, &ak)?;
                    Ok((ak, r.get(1)?, grants))
                })
                .collect()
        })
    }

    fn revoke_access_key(&self, access_key: &str) -> Result<bool, StoreError> {
        let revoked = self.write(|tx| {
            let changed = tx.execute(
                "UPDATE access_keys SET enabled = 0, revoked_ms = coalesce(revoked_ms, ?2) \
                 WHERE access_key = ?1",
                args![access_key, now_ms()],
            )?;
            if changed == 0 {
                // Rolls back: nothing changed, the generation stays.
                return Err(StoreError::NotFound {
                    what: format!("access key {access_key}"),
                });
            }
            Ok(())
        });
        match revoked {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn generation(&self) -> Result<u64, StoreError> {
        let value: i64 = self.read(|tx| {
            tx.query_opt("SELECT value FROM meta WHERE name = 'generation'", &[])?
                .ok_or_else(|| StoreError::Corrupt("the generation counter is missing".into()))?
                .get(0)
        })?;
        to_u64(value, || "the generation counter".into())
    }
}

/// The grants of `access_key`, by keyTag.
fn grants_of(tx: &mut dyn Tx, access_key: &str) -> Result<Vec<Grant>, StoreError> {
    tx.query(
        "SELECT key_tag, actions FROM access_key_grants WHERE access_key = ?1 ORDER BY key_tag",
        args![access_key],
    )?
    .into_iter()
    .map(|mut r| {
        Ok(Grant {
            key_tag: r.get(0)?,
            actions: r.get::<String>(1)?.split(',').map(str::to_owned).collect(),
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use rusqlite::Connection;

    use crate::store::migrations;

    use super::*;
    use crate::store::{DB_FILE_NAME, KEK_FILE_NAME, StoreOptions};

    /// How long the raw connections of these tests wait for the store's.
    const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

    const MATERIAL: &[u8; 32] = b"0123456789abcdef0123456789ABCDEF";

    /// A KEK file as an operator makes one: mode 0600.
    fn write_private(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn open(dir: &Path) -> Store {
        Store::open_with_env(&StoreOptions::new(dir), &no_env).unwrap()
    }

    fn raw(dir: &Path) -> Connection {
        let conn = Connection::open(dir.join(DB_FILE_NAME)).unwrap();
        conn.busy_timeout(BUSY_TIMEOUT).unwrap();
        conn
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn keys_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert!(store.list_keys().unwrap().is_empty());
        let t1 = store
            .create_key("first", KeyType::Aes256, true, MATERIAL)
            .unwrap();
        assert_eq!(t1.len(), 32);
        assert!(
            t1.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        let t2 = store
            .create_key("second", KeyType::Ecdsa, false, b"ec-der")
            .unwrap();
        assert_ne!(t1, t2);

        assert_eq!(store.add_version(&t1, b"v2 material").unwrap(), 2);
        assert_eq!(store.add_version(&t1, b"v3 material").unwrap(), 3);
        store.set_version_enabled(&t1, 2, false).unwrap();
        store.set_key_enabled(&t2, false).unwrap();

        let k1 = store.key(&t1).unwrap().unwrap();
        assert_eq!(k1.tag, t1);
        assert_eq!(k1.name, "first");
        assert_eq!(k1.key_type, KeyType::Aes256);
        assert!(k1.convergent && k1.enabled);
        assert!(k1.created_ms > 1_600_000_000_000);
        let v: Vec<_> = k1
            .versions
            .iter()
            .map(|v| (v.version, v.enabled, v.material.to_vec()))
            .collect();
        assert_eq!(
            v,
            vec![
                (1, true, MATERIAL.to_vec()),
                (2, false, b"v2 material".to_vec()),
                (3, true, b"v3 material".to_vec()),
            ]
        );
        let k2 = store.key(&t2).unwrap().unwrap();
        assert!(!k2.enabled && !k2.convergent);
        assert_eq!(k2.key_type, KeyType::Ecdsa);

        store.set_version_enabled(&t1, 2, true).unwrap();
        store.set_key_enabled(&t2, true).unwrap();
        let list = store.list_keys().unwrap();
        assert_eq!(
            list,
            vec![
                KeySummary {
                    tag: t1.clone(),
                    name: "first".into(),
                    key_type: KeyType::Aes256,
                    convergent: true,
                    enabled: true,
                    versions: vec![(1, true), (2, true), (3, true)],
                },
                KeySummary {
                    tag: t2.clone(),
                    name: "second".into(),
                    key_type: KeyType::Ecdsa,
                    convergent: false,
                    enabled: true,
                    versions: vec![(1, true)],
                },
            ]
        );
    }

    #[test]
    fn missing_things_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let missing = "0".repeat(32);
        assert!(store.key(&missing).unwrap().is_none());
        let err = store.add_version(&missing, b"x").unwrap_err();
        assert!(matches!(&err, StoreError::NotFound { what } if what.contains(&missing)));
        assert!(matches!(
            store.set_key_enabled(&missing, false),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.set_version_enabled(&missing, 1, false),
            Err(StoreError::NotFound { what }) if what == format!("key {missing}")
        ));
        let tag = store
            .create_key("k", KeyType::Aes256, false, MATERIAL)
            .unwrap();
        assert!(matches!(
            store.set_version_enabled(&tag, 9, false),
            Err(StoreError::NotFound { what }) if what == format!("version 9 of key {tag}")
        ));
        assert!(store.access_key("NOPE").unwrap().is_none());
        let before = store.generation().unwrap();
        assert!(!store.revoke_access_key("NOPE").unwrap());
        assert_eq!(
            store.generation().unwrap(),
            before,
            "failed writes change nothing"
        );
    }

    #[test]
    fn access_keys_round_trip_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = store.create_access_key().unwrap();
        let b = store.create_access_key().unwrap();
        assert_ne!(a.access_key, b.access_key);
        assert_eq!(a.access_key.len(), 20);
        assert!(
            a.access_key
                .bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
        assert_eq!(a.secret_key.len(), 40);
        assert!(a.secret_key.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(a.api_key.len(), 40);
        assert!(a.api_key.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(a.enabled);

        let got = store.access_key(&a.access_key).unwrap().unwrap();
        assert_eq!(got.access_key, a.access_key);
        assert_eq!(*got.secret_key, *a.secret_key);
        assert_eq!(got.api_key, a.api_key);
        assert!(got.enabled);

        assert!(store.revoke_access_key(&a.access_key).unwrap());
        let revoked = store.access_key(&a.access_key).unwrap().unwrap();
        assert!(!revoked.enabled, "a revoked key is kept, disabled");
        assert!(store.revoke_access_key(&a.access_key).unwrap());
        assert!(store.access_key(&b.access_key).unwrap().unwrap().enabled);
    }

    #[test]
    fn everything_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (tag, ak) = {
            let store = open(dir.path());
            let tag = store
                .create_key("k", KeyType::Rsa2048, false, MATERIAL)
                .unwrap();
            store.add_version(&tag, b"second").unwrap();
            store.set_version_enabled(&tag, 1, false).unwrap();
            let ak = store.create_access_key().unwrap();
            (tag, ak)
        };
        let store = open(dir.path());
        let key = store.key(&tag).unwrap().unwrap();
        assert_eq!(key.key_type, KeyType::Rsa2048);
        assert_eq!(key.versions.len(), 2);
        assert!(!key.versions[0].enabled);
        assert_eq!(&key.versions[0].material[..], MATERIAL);
        assert_eq!(&key.versions[1].material[..], b"second");
        let got = store.access_key(&ak.access_key).unwrap().unwrap();
        assert_eq!(*got.secret_key, *ak.secret_key);
        assert_eq!(store.generation().unwrap(), 4);
    }

    #[test]
    fn generation_moves_and_is_seen_by_another_instance() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let b = open(dir.path());
        assert_eq!(a.generation().unwrap(), 0);
        let mut last = 0;
        let mut check = || {
            let ga = a.generation().unwrap();
            let gb = b.generation().unwrap();
            assert_eq!(ga, gb, "both instances see the same counter");
            assert!(ga > last, "the generation moved");
            last = ga;
        };
        let tag = a.create_key("k", KeyType::Aes256, false, MATERIAL).unwrap();
        check();
        b.add_version(&tag, b"two").unwrap();
        check();
        a.set_key_enabled(&tag, false).unwrap();
        check();
        b.set_version_enabled(&tag, 1, false).unwrap();
        check();
        let ak = a.create_access_key().unwrap();
        check();
        assert!(b.revoke_access_key(&ak.access_key).unwrap());
        check();
        // And the data itself is visible to the other instance.
        assert_eq!(b.key(&tag).unwrap().unwrap().versions.len(), 2);
        assert!(!a.access_key(&ak.access_key).unwrap().unwrap().enabled);
    }

    #[test]
    fn two_instances_write_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let b = open(dir.path());
        const N: usize = 25;
        std::thread::scope(|s| {
            for store in [&a, &b] {
                s.spawn(move || {
                    for i in 0..N {
                        let tag = store
                            .create_key(&format!("k{i}"), KeyType::Aes256, false, MATERIAL)
                            .unwrap();
                        store.add_version(&tag, MATERIAL).unwrap();
                        let _ = store.list_keys().unwrap();
                    }
                });
            }
        });
        assert_eq!(a.list_keys().unwrap().len(), 2 * N);
        assert_eq!(b.generation().unwrap(), (4 * N) as u64);
    }

    #[test]
    fn files_have_private_modes_and_the_kek_is_reused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let store = open(&dir);
        assert_eq!(mode(&dir), 0o700);
        let kek_path = dir.join(KEK_FILE_NAME);
        assert_eq!(mode(&kek_path), 0o600);
        assert_eq!(mode(&dir.join(DB_FILE_NAME)), 0o600);
        let kek = fs::read(&kek_path).unwrap();
        assert_eq!(kek.len(), 32);
        let tag = store
            .create_key("k", KeyType::Aes256, false, MATERIAL)
            .unwrap();
        drop(store);

        let store = open(&dir);
        assert_eq!(fs::read(&kek_path).unwrap(), kek, "the KEK is not replaced");
        assert_eq!(
            &store.key(&tag).unwrap().unwrap().versions[0].material[..],
            MATERIAL
        );
        let journal: String = raw(&dir)
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let text = format!("{store:?}");
        assert!(text.contains("kek.key") && !text.contains(&format!("{:?}", &kek[..4])));
    }

    #[test]
    fn custom_kek_file_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let kek_dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            data_dir: dir.path().join("d"),
            kek_file: Some(kek_dir.path().join("my.kek")),
            kek_env: None,
            url: None,
        };
        let store = Store::open_with_env(&options, &no_env).unwrap();
        store
            .create_key("k", KeyType::Aes256, false, MATERIAL)
            .unwrap();
        assert_eq!(mode(&kek_dir.path().join("my.kek")), 0o600);
        assert!(!dir.path().join("d").join(KEK_FILE_NAME).exists());
        drop(store);
        assert!(Store::open_with_env(&options, &no_env).is_ok());
    }

    #[test]
    fn kek_file_of_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEK_FILE_NAME), [1u8; 31]).unwrap();
        let err = Store::open_with_env(&StoreOptions::new(dir.path()), &no_env).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Kek(_)), "{text}");
        assert!(
            text.contains(&dir.path().join(KEK_FILE_NAME).display().to_string()),
            "{text}"
        );
        assert!(text.contains("31 bytes"), "{text}");
    }

    #[test]
    fn env_kek_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "ab".repeat(32);
        let var = format!("KEYPIPE_TEST_KEK_{}", uuid::Uuid::new_v4().simple());
        let options = StoreOptions {
            data_dir: dir.path().to_owned(),
            kek_file: None,
            kek_env: Some(var.clone()),
            url: None,
        };
        let env = |name: &str| (name == var).then(|| OsString::from(&hex));
        let store = Store::open_with_env(&options, &env).unwrap();
        let tag = store
            .create_key("k", KeyType::Aes256, false, MATERIAL)
            .unwrap();
        drop(store);
        assert!(
            !dir.path().join(KEK_FILE_NAME).exists(),
            "no KEK file is written when the variable provides it"
        );
        // A KEK file that disagrees is ignored while the variable is present.
        write_private(&dir.path().join(KEK_FILE_NAME), &[7u8; 32]);
        let store = Store::open_with_env(&options, &env).unwrap();
        assert_eq!(
            &store.key(&tag).unwrap().unwrap().versions[0].material[..],
            MATERIAL
        );
        drop(store);
        // Without the variable the (wrong) file is used, and refused.
        let err = Store::open_with_env(&options, &no_env).unwrap_err();
        assert!(matches!(err, StoreError::Kek(_)), "{err}");
        // A malformed variable is an error naming it, not its value.
        let bad = |name: &str| (name == var).then(|| OsString::from("not-hex-zz"));
        let err = Store::open_with_env(&options, &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&var) && !err.contains("not-hex-zz"), "{err}");
    }

    /// Set by [`env_kek_from_the_real_environment`] for its child process.
    const CHILD_DIR: &str = "KEYPIPE_STORE_TEST_CHILD_DIR";
    /// Names the KEK variable for the child process.
    const CHILD_VAR: &str = "KEYPIPE_STORE_TEST_CHILD_VAR";

    /// Runs only in the child process of the test below (a no-op
    /// otherwise): opens the store through the real environment.
    #[test]
    fn env_kek_child() {
        let (Some(dir), Some(var)) = (std::env::var_os(CHILD_DIR), std::env::var(CHILD_VAR).ok())
        else {
            return;
        };
        let options = StoreOptions {
            data_dir: PathBuf::from(dir),
            kek_file: None,
            kek_env: Some(var),
            url: None,
        };
        let store = Store::open(&options).unwrap();
        store
            .create_key("child", KeyType::Aes256, false, MATERIAL)
            .unwrap();
        assert!(!options.kek_path().exists());
    }

    /// `Store::open` reads the real variable (in a child process, so this
    /// test never mutates its own environment).
    #[test]
    fn env_kek_from_the_real_environment() {
        let dir = tempfile::tempdir().unwrap();
        let var = format!("KEYPIPE_TEST_KEK_{}", uuid::Uuid::new_v4().simple());
        let hex = "5a".repeat(32);
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::master_keys::tests::env_kek_child",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_VAR, &var)
            .env(&var, &hex)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let options = StoreOptions {
            data_dir: dir.path().to_owned(),
            kek_file: None,
            kek_env: Some(var.clone()),
            url: None,
        };
        let env = |name: &str| (name == var).then(|| OsString::from(&hex));
        let store = Store::open_with_env(&options, &env).unwrap();
        let keys = store.list_keys().unwrap();
        assert_eq!(keys.len(), 1, "the child wrote under the variable's KEK");
        assert_eq!(keys[0].name, "child");
        drop(store);
        // Without the variable and without a file, no new KEK is made.
        let err = Store::open_with_env(&options, &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist") && err.contains(&var),
            "{err}"
        );
        assert!(!options.kek_path().exists());
    }

    #[test]
    fn secrets_never_reach_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let material: Vec<u8> = MATERIAL.repeat(4);
        let store = open(dir.path());
        let tag = store
            .create_key("k", KeyType::Aes256, false, &material)
            .unwrap();
        store.add_version(&tag, MATERIAL).unwrap();
        let ak = store.create_access_key().unwrap();
        let kek = fs::read(dir.path().join(KEK_FILE_NAME)).unwrap();
        let secret = ak.secret_key.as_bytes().to_vec();

        let scan = |open: bool| {
            let mut scanned = 0;
            for suffix in ["", "-wal", "-shm"] {
                let path = dir.path().join(format!("{DB_FILE_NAME}{suffix}"));
                let Ok(bytes) = fs::read(&path) else {
                    assert_ne!(suffix, "", "the database exists");
                    continue;
                };
                if open && suffix == "-wal" {
                    assert!(!bytes.is_empty(), "the WAL holds the writes");
                }
                for (what, needle) in [
                    ("material", &MATERIAL[..]),
                    ("material half", &MATERIAL[..16]),
                    ("secret key", &secret[..]),
                    ("KEK", &kek[..]),
                ] {
                    assert!(
                        !contains(&bytes, needle),
                        "{what} found in {}",
                        path.display()
                    );
                }
                // The non-secret identifiers are there (the scan sees data).
                if suffix != "-shm" && contains(&bytes, ak.access_key.as_bytes()) {
                    scanned += 1;
                }
            }
            assert!(scanned >= 1, "the scan saw the rows");
        };
        scan(true);
        drop(store);
        scan(false);
    }

    #[test]
    fn a_blob_moved_to_another_row_does_not_unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let tag = store
            .create_key("k", KeyType::Aes256, false, MATERIAL)
            .unwrap();
        store.add_version(&tag, b"second").unwrap();
        let other = store
            .create_key("o", KeyType::Aes256, false, b"OTHERMAT")
            .unwrap();
        let conn = raw(dir.path());
        // Version 1's blob into version 2's row of the same key.
        conn.execute(
            "UPDATE key_versions SET wrapped = \
             (SELECT wrapped FROM key_versions WHERE tag = ?1 AND version = 1) \
             WHERE tag = ?1 AND version = 2",
            [&tag],
        )
        .unwrap();
        let err = store.key(&tag).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Corrupt(_)), "{text}");
        assert!(text.contains(&tag) && text.contains("version 2"), "{text}");
        // Another key's version 1 into this key's version 1.
        conn.execute(
            "UPDATE key_versions SET wrapped = \
             (SELECT wrapped FROM key_versions WHERE tag = ?2 AND version = 1) \
             WHERE tag = ?1 AND version = 1",
            [&tag, &other],
        )
        .unwrap();
        let text = store.key(&tag).unwrap_err().to_string();
        assert!(text.contains(&tag) && text.contains("version 1"), "{text}");
        assert!(
            // The material's text, not a short prefix a random tag may hold.
            !text.contains("OTHERMAT") && !text.contains("0123456789abcdef"),
            "{text}"
        );
        // The listing needs no material and still works.
        assert_eq!(store.list_keys().unwrap().len(), 2);

        let a = store.create_access_key().unwrap();
        let b = store.create_access_key().unwrap();
        conn.execute(
            "UPDATE access_keys SET secret_wrapped = \
             (SELECT secret_wrapped FROM access_keys WHERE access_key = ?2) \
             WHERE access_key = ?1",
            [&a.access_key, &b.access_key],
        )
        .unwrap();
        let err = store.access_key(&a.access_key).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Corrupt(_)), "{text}");
        assert!(text.contains(&a.access_key), "{text}");
        assert!(!text.contains(b.secret_key.as_str()), "{text}");
    }

    #[test]
    fn a_wrong_kek_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path())
            .create_key("k", KeyType::Aes256, false, MATERIAL)
            .unwrap();
        let other = tempfile::tempdir().unwrap();
        let wrong = other.path().join("wrong.key");
        write_private(&wrong, &[0x42u8; 32]);
        let options = StoreOptions {
            data_dir: dir.path().to_owned(),
            kek_file: Some(wrong.clone()),
            kek_env: None,
            url: None,
        };
        let err = Store::open_with_env(&options, &no_env).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Kek(_)), "{text}");
        assert!(
            text.contains("wrong KEK") && text.contains("wrong.key"),
            "{text}"
        );
        // The right one still works.
        assert_eq!(open(dir.path()).list_keys().unwrap().len(), 1);
    }

    #[test]
    fn a_missing_kek_file_is_not_replaced_when_secrets_exist() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path())
            .create_key("k", KeyType::Aes256, false, MATERIAL)
            .unwrap();
        let kek_path = dir.path().join(KEK_FILE_NAME);
        let kek = fs::read(&kek_path).unwrap();
        fs::remove_file(&kek_path).unwrap();
        let err = Store::open_with_env(&StoreOptions::new(dir.path()), &no_env).unwrap_err();
        assert!(matches!(err, StoreError::Kek(_)), "{err}");
        assert!(!kek_path.exists(), "no new KEK was made");
        write_private(&kek_path, &kek);
        assert_eq!(open(dir.path()).list_keys().unwrap().len(), 1);
    }

    #[test]
    fn a_newer_schema_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        let known = migrations::known_version();
        raw(dir.path())
            .pragma_update(None, "user_version", known + 5)
            .unwrap();
        let err = Store::open_with_env(&StoreOptions::new(dir.path()), &no_env).unwrap_err();
        assert!(
            matches!(err, StoreError::Newer { found, known: k } if found == known + 5 && k == known),
            "{err}"
        );
    }

    #[test]
    fn reopening_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..3 {
            drop(open(dir.path()));
        }
        let version: i64 = raw(dir.path())
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, i64::from(migrations::known_version()));
        assert_eq!(open(dir.path()).generation().unwrap(), 0);
    }

    #[test]
    fn random_strings_use_their_alphabet() {
        let s = random_string(1000, UPPER_ALNUM).unwrap();
        assert_eq!(s.len(), 1000);
        assert!(s.bytes().all(|c| UPPER_ALNUM.contains(&c)));
        // Every character shows up in 1000 draws (overwhelmingly likely).
        assert!(UPPER_ALNUM.iter().all(|c| s.as_bytes().contains(c)));
        let s = random_string(2000, ALNUM).unwrap();
        assert!(ALNUM.iter().all(|c| s.as_bytes().contains(c)));
    }

    #[test]
    fn grants_are_set_replaced_removed_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_env(&StoreOptions::new(dir.path()), &|_| None).unwrap();
        let ak = store.create_access_key().unwrap();
        assert!(ak.grants.is_empty(), "a new access key may do nothing");
        let grant = |tag: &str, actions: &[&str]| Grant {
            key_tag: tag.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        };
        let before = store.generation().unwrap();
        store
            .set_grant(&ak.access_key, &grant("t1", &["encrypt"]))
            .unwrap();
        assert!(
            store.generation().unwrap() > before,
            "caches see the change"
        );
        store
            .set_grant(&ak.access_key, &grant("t1", &["encrypt", "decrypt"]))
            .unwrap();
        store
            .set_grant(&ak.access_key, &grant("*", &["verify"]))
            .unwrap();
        let got = store.access_key(&ak.access_key).unwrap().unwrap();
        assert_eq!(
            got.grants,
            vec![
                grant("*", &["verify"]),
                grant("t1", &["encrypt", "decrypt"])
            ]
        );
        assert!(got.allows("t1", "decrypt") && got.allows("t9", "verify"));
        assert!(!got.allows("t9", "decrypt") && !got.allows("t1", "sign"));
        assert!(store.remove_grant(&ak.access_key, "t1").unwrap());
        assert!(!store.remove_grant(&ak.access_key, "t1").unwrap());
        assert!(matches!(
            store.set_grant("AKNONE", &grant("t1", &["*"])),
            Err(StoreError::NotFound { .. })
        ));
        let listed = store.list_access_keys().unwrap();
        assert_eq!(
            listed,
            vec![(ak.access_key.clone(), true, vec![grant("*", &["verify"])])]
        );
    }

    #[test]
    fn access_keys_made_before_grants_keep_every_right() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::new(dir.path());
        let ak = {
            let store = Store::open_with_env(&options, &|_| None).unwrap();
            store.create_access_key().unwrap().access_key
        };
        // Back to schema 5: no grants table (nor step 7's KeyTalk parts).
        let conn = Connection::open(options.db_path()).unwrap();
        conn.execute_batch(
            "DROP TABLE access_key_grants; DROP TABLE keytalk_members; \
             DROP TABLE keytalk_devices; ALTER TABLE users DROP COLUMN password_expires_ms; \
             ALTER TABLE issued_certs DROP COLUMN service; \
             ALTER TABLE issued_certs DROP COLUMN holder; \
             ALTER TABLE issued_certs DROP COLUMN device; \
             ALTER TABLE key_versions DROP COLUMN encryptions; DROP TABLE ephemeral; \
             ALTER TABLE master_keys DROP COLUMN seq; ALTER TABLE access_keys DROP COLUMN seq; \
             PRAGMA user_version = 5;",
        )
        .unwrap();
        drop(conn);
        let store = Store::open_with_env(&options, &|_| None).unwrap();
        let got = store.access_key(&ak).unwrap().unwrap();
        assert!(got.allows("any-tag", "decrypt"), "{:?}", got.grants);
    }
}
