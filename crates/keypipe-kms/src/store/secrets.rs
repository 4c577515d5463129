//! Secrets the server generates on first start (the simulated device's,
//! the link's), kept wrapped under the KEK with their name as associated
//! data, so no two installations share key and no public value is used.

use zeroize::Zeroizing;

use super::Store;
use super::StoreError;
use super::master_keys::now_ms;
use super::sql::args;

/// Generated secrets, by name.
pub trait SecretStore: Send + Sync {
    /// The 32-byte secret called `name`, made (from the OS random source)
    /// and stored on first use; every later call, from any process on the
    /// same store, returns the same bytes.
    fn generated_secret(&self, name: &str) -> Result<Zeroizing<[u8; 32]>, StoreError>;
}

pub(super) fn aad(name: &str) -> String {
    format!("generated_secret:{name}")
}

impl SecretStore for Store {
    fn generated_secret(&self, name: &str) -> Result<Zeroizing<[u8; 32]>, StoreError> {
        let mut fresh = Zeroizing::new([0u8; 32]);
        getrandom::fill(fresh.as_mut()).map_err(|_| StoreError::Random)?;
        let wrapped = self.kek.wrap(&aad(name), fresh.as_ref())?;
        let blob: Vec<u8> = self.transact(false, |tx| {
            tx.execute(
                "INSERT INTO generated_secrets (name, wrapped, created_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
                args![name, &wrapped, now_ms()],
            )?;
            tx.query_opt(
                "SELECT wrapped FROM generated_secrets WHERE name = ?1",
                args![name],
            )?
            .ok_or_else(|| StoreError::Corrupt(format!("generated secret {name} vanished")))?
            .get(0)
        })?;
        let plain = self.kek.unwrap(&aad(name), &blob).map_err(|e| {
            StoreError::Corrupt(format!(
                "generated secret {name} (table generated_secrets) {e}"
            ))
        })?;
        let mut out = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(StoreError::Corrupt(format!(
                "generated secret {name} has {} bytes, not 32",
                plain.len()
            )));
        }
        out.copy_from_slice(&plain);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    #[test]
    fn a_secret_is_made_once_kept_wrapped_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::new(dir.path());
        let a = {
            let store = Store::open(&options).unwrap();
            let a = store.generated_secret("device").unwrap();
            assert_eq!(*store.generated_secret("device").unwrap(), *a);
            assert_ne!(*store.generated_secret("link").unwrap(), *a);
            a
        };
        let store = Store::open(&options).unwrap();
        assert_eq!(
            *store.generated_secret("device").unwrap(),
            *a,
            "survives a restart"
        );
        drop(store);
        let db = std::fs::read(options.db_path()).unwrap();
        assert!(
            !db.windows(32).any(|w| w == a.as_ref()),
            "never in clear in the file"
        );
    }
}
