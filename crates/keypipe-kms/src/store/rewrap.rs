//! KEK rotation: every wrapped secret of the store unwrapped under the KEK
//! the store was opened with and wrapped again under a new one, with the
//! KEK check value, in one transaction (all or nothing; a crash leaves the
//! old KEK in force). The CLI is `keypipe kms rewrap --new-kek-file FILE`.
//!
//! Stop the server first, rewrap, then start it with the new KEK: a server
//! still holding the old KEK refuses every rewrapped blob it reads, with a
//! message naming both KEK ids.

use std::path::Path;

use super::handle::KEK_CHECK_AAD;
use super::kek::{Kek, KekId};
use super::master_keys::{access_key_aad, version_aad};
use super::sql::{Row, Value};
use super::{Store, StoreError, ca, donau, ephemeral, secrets};

/// What a rewrap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrapped {
    /// The KEK the blobs were under.
    pub old_kek: KekId,
    /// The KEK they are under now.
    pub new_kek: KekId,
    /// Blobs rewrapped (the KEK check value included).
    pub blobs: usize,
}

/// A table column of wrapped blobs: the row's key columns, and the
/// associated data of its blob from their values.
struct Wrapped {
    table: &'static str,
    blob: &'static str,
    keys: &'static [&'static str],
    aad: fn(&[Value]) -> Result<String, StoreError>,
}

fn text(v: &Value) -> Result<&str, StoreError> {
    match v {
        Value::Text(s) => Ok(s),
        _ => Err(StoreError::Corrupt("a key column is not text".into())),
    }
}

fn blob(v: &Value) -> Result<&[u8], StoreError> {
    match v {
        Value::Blob(b) => Ok(b),
        _ => Err(StoreError::Corrupt("a key column is not a blob".into())),
    }
}

fn int<T: TryFrom<i64>>(v: &Value) -> Result<T, StoreError> {
    match v {
        Value::Int(i) => {
            T::try_from(*i).map_err(|_| StoreError::Corrupt("a key column is out of range".into()))
        }
        _ => Err(StoreError::Corrupt("a key column is not an integer".into())),
    }
}

const WRAPPED: &[Wrapped] = &[
    Wrapped {
        table: "kek_check",
        blob: "wrapped",
        keys: &["id"],
        aad: |_| Ok(KEK_CHECK_AAD.into()),
    },
    Wrapped {
        table: "key_versions",
        blob: "wrapped",
        keys: &["tag", "version"],
        aad: |k| Ok(version_aad(text(&k[0])?, int(&k[1])?)),
    },
    Wrapped {
        table: "access_keys",
        blob: "secret_wrapped",
        keys: &["access_key"],
        aad: |k| Ok(access_key_aad(text(&k[0])?)),
    },
    Wrapped {
        table: "generated_secrets",
        blob: "wrapped",
        keys: &["name"],
        aad: |k| Ok(secrets::aad(text(&k[0])?)),
    },
    Wrapped {
        table: "ca_keys",
        blob: "key_wrapped",
        keys: &["name"],
        aad: |k| Ok(ca::aad(text(&k[0])?)),
    },
    Wrapped {
        table: "donau_keys",
        blob: "private_wrapped",
        keys: &["kind", "value", "year"],
        aad: |k| {
            let kind = donau::DonauKind::parse(text(&k[0])?)?;
            Ok(donau::aad(kind, text(&k[1])?, int(&k[2])?))
        },
    },
    Wrapped {
        table: "ephemeral",
        blob: "wrapped",
        keys: &["kind", "id"],
        aad: |k| Ok(ephemeral::row_aad(text(&k[0])?, blob(&k[1])?)),
    },
];

impl Store {
    /// Moves every wrapped secret to the KEK of `new_kek_file` (created,
    /// mode `0600`, when it does not exist; an existing one must be mode
    /// `0600` and 32 bytes) in one transaction, and bumps the generation.
    /// Consumes the store: it held the old KEK.
    pub fn rewrap(self, new_kek_file: &Path) -> Result<Rewrapped, StoreError> {
        let new = match Kek::load_file(new_kek_file)? {
            Some(kek) => kek,
            None => Kek::create_file(new_kek_file)?,
        };
        let old = &self.kek;
        if new.id() == old.id() {
            return Err(StoreError::Kek(format!(
                "{} holds the KEK the store already uses ({})",
                new_kek_file.display(),
                old.id()
            )));
        }
        let blobs = self.write(|tx| {
            let mut blobs = 0;
            for w in WRAPPED {
                let keys = w.keys.join(", ");
                let select = format!(
                    "SELECT {keys}, {blob} FROM {table} WHERE {blob} IS NOT NULL",
                    blob = w.blob,
                    table = w.table
                );
                let rows = tx
                    .query(&select, &[])?
                    .into_iter()
                    .map(|Row(mut values)| {
                        let blob = values.pop();
                        match blob {
                            Some(Value::Blob(blob)) => Ok((values, blob)),
                            _ => Err(StoreError::Corrupt(format!(
                                "{}: a wrapped column is not a blob",
                                w.table
                            ))),
                        }
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let filter = w
                    .keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| format!("{k} = ?{}", i + 2))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let update = format!("UPDATE {} SET {} = ?1 WHERE {filter}", w.table, w.blob);
                for (key, blob) in rows {
                    let aad = (w.aad)(&key)?;
                    let plain = old
                        .unwrap(&aad, &blob)
                        .map_err(|e| StoreError::Corrupt(format!("{} row {aad}: {e}", w.table)))?;
                    let wrapped = new.wrap(&aad, &plain)?;
                    let mut params: Vec<Value> = vec![Value::Blob(wrapped)];
                    params.extend(key);
                    tx.execute(&update, &params)?;
                    blobs += 1;
                }
            }
            Ok(blobs)
        })?;
        tracing::info!(old = %old.id(), new = %new.id(), blobs, "store rewrapped under a new KEK");
        Ok(Rewrapped {
            old_kek: old.id(),
            new_kek: new.id(),
            blobs,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use aes_gcm::{Aes256Gcm, Nonce};

    use super::*;
    use crate::store::{KeyStore, KeyType, SecretStore, StoreOptions};

    const MATERIAL: &[u8; 32] = b"0123456789abcdef0123456789ABCDEF";

    fn open(dir: &Path, kek: &Path) -> Result<Store, StoreError> {
        let mut options = StoreOptions::new(dir);
        options.kek_file = Some(kek.to_owned());
        Store::open(&options)
    }

    #[test]
    fn rewrap_moves_every_secret_to_the_new_kek_and_the_old_one_no_longer_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (old_kek, new_kek) = (dir.path().join("old.key"), dir.path().join("new.key"));
        let store = open(dir.path(), &old_kek).unwrap();
        let tag = store
            .create_key("k", KeyType::Aes256, false, MATERIAL)
            .unwrap();
        let access = store.create_access_key().unwrap();
        let generated = store.generated_secret("device").unwrap();
        // A blob of keypipe <= 0.2 (no KEK id) is moved too.
        let legacy = {
            let cipher = Aes256Gcm::new_from_slice(&fs::read(&old_kek).unwrap()).unwrap();
            let nonce = [7u8; 12];
            let sealed = cipher
                .encrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: b"second",
                        aad: version_aad(&tag, 2).as_bytes(),
                    },
                )
                .unwrap();
            [&nonce[..], &sealed].concat()
        };
        store
            .write(|tx| {
                tx.execute(
                    "INSERT INTO key_versions (tag, version, enabled, created_ms, wrapped) \
                     VALUES (?1, 2, 1, 0, ?2)",
                    crate::store::sql::args![&tag, &legacy],
                )
            })
            .unwrap();
        let old_id = store.kek.id();

        let done = store.rewrap(&new_kek).unwrap();
        assert_eq!(done.old_kek, old_id);
        assert_ne!(done.new_kek, old_id);
        // kek_check, two key versions, the access key, the generated secret.
        assert_eq!(done.blobs, 5);
        assert_eq!(
            fs::metadata(&new_kek).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let store = open(dir.path(), &new_kek).unwrap();
        let key = store.key(&tag).unwrap().unwrap();
        assert_eq!(&key.versions[0].material[..], MATERIAL);
        assert_eq!(&key.versions[1].material[..], b"second");
        let again = store.access_key(&access.access_key).unwrap().unwrap();
        assert_eq!(*again.secret_key, *access.secret_key);
        assert_eq!(*store.generated_secret("device").unwrap(), *generated);
        let blobs: Vec<Vec<u8>> = store
            .read(|tx| {
                tx.query("SELECT wrapped FROM key_versions", &[])?
                    .into_iter()
                    .map(|mut r| r.get(0))
                    .collect()
            })
            .unwrap();
        for blob in blobs {
            assert_eq!(&blob[..4], b"kek1");
            assert_eq!(&blob[4..12], &done.new_kek.0, "named by the new KEK");
        }
        drop(store);
        let err = open(dir.path(), &old_kek).unwrap_err().to_string();
        assert!(
            err.contains(&done.new_kek.to_string()) && err.contains(&old_id.to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_server_still_on_the_old_kek_names_both_keks() {
        let dir = tempfile::tempdir().unwrap();
        let (old_kek, new_kek) = (dir.path().join("old.key"), dir.path().join("new.key"));
        let server = open(dir.path(), &old_kek).unwrap();
        let tag = server
            .create_key("k", KeyType::Aes256, false, MATERIAL)
            .unwrap();
        let done = open(dir.path(), &old_kek)
            .unwrap()
            .rewrap(&new_kek)
            .unwrap();
        let err = server.key(&tag).unwrap_err().to_string();
        assert!(
            err.contains(&format!("was wrapped under KEK {}", done.new_kek)),
            "{err}"
        );
        assert!(
            err.contains(&format!("holds KEK {}", done.old_kek)),
            "{err}"
        );
    }

    #[test]
    fn rewrap_to_the_same_kek_or_a_bad_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let kek = dir.path().join("kek.key");
        let store = open(dir.path(), &kek).unwrap();
        let tag = store
            .create_key("k", KeyType::Aes256, false, MATERIAL)
            .unwrap();
        let err = store.rewrap(&kek).unwrap_err().to_string();
        assert!(err.contains("already uses"), "{err}");
        let open_file = dir.path().join("open.key");
        fs::write(&open_file, [1u8; 32]).unwrap();
        fs::set_permissions(&open_file, fs::Permissions::from_mode(0o644)).unwrap();
        let err = open(dir.path(), &kek)
            .unwrap()
            .rewrap(&open_file)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode 644"), "{err}");
        let store = open(dir.path(), &kek).unwrap();
        assert_eq!(
            &store.key(&tag).unwrap().unwrap().versions[0].material[..],
            MATERIAL
        );
    }
}
