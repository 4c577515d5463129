//! AES-GCM encryptions counted per key version (security review F15).
//!
//! A non-convergent AES256 key encrypts with AES-256-GCM and a random
//! 96-bit nonce. NIST SP 800-38D §8.3 caps such a key at 2³² encryptions
//! (beyond, the chance of a repeated nonce, which breaks GCM, exceeds
//! 2⁻³²). Each version's count is kept in the store, reserved ahead in
//! blocks of [`BLOCK`] (one durable write per block, so a crash can only
//! over-count: the unused rest of a block counts as used). At half the
//! limit the server logs a warning with every new block; at the limit
//! encryption under that version is refused (422 `INVALID_STATUS`, "rotate
//! the key") until `keypipe kms rotate` adds a version. Decryption never
//! counts. Convergent keys (AES-GCM-SIV, derived nonces) and RSA/ECDSA do
//! not count.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::{KeySource, NcpError};

/// Encryptions one AES-GCM key version may do (2³²).
pub const GCM_LIMIT: u64 = 1 << 32;
/// Encryptions reserved from the store at a time.
pub const BLOCK: u64 = 1 << 16;
/// Whole requests' worth of encryptions that must be reserved already for
/// an event loop to encrypt (else the request goes to the pool, which may
/// reserve): more event loops than this passing the check at the same
/// moment is what it would take for one of them to reserve on its loop.
pub const LOOP_MARGIN: u64 = 32;

/// Reserved-but-unused encryptions per keyTag and version.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: u64,
    left: Mutex<HashMap<String, HashMap<u32, u64>>>,
}

impl Budget {
    /// A budget of `limit` encryptions per version.
    pub(crate) fn new(limit: u64) -> Budget {
        Budget {
            limit,
            left: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u32, u64>>> {
        self.left.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What is left of `tag`'s `version` (no allocation once it exists).
    fn left<'a>(
        all: &'a mut HashMap<String, HashMap<u32, u64>>,
        tag: &str,
        version: u32,
    ) -> &'a mut u64 {
        if !all.contains_key(tag) {
            all.insert(tag.to_owned(), HashMap::new());
        }
        let versions = all.get_mut(tag).expect("inserted above");
        versions.entry(version).or_insert(0)
    }

    /// Whether `n` encryptions of version `version` of `tag` are reserved
    /// already (taking them then touches no store).
    pub(crate) fn reserved(&self, tag: &str, version: u32, n: u64) -> bool {
        self.lock()
            .get(tag)
            .and_then(|versions| versions.get(&version))
            .is_some_and(|&left| left >= n)
    }

    /// Takes `n` encryptions of version `version` of `tag`, reserving more
    /// from `keys` when needed (without holding the table meanwhile: two
    /// callers may both reserve, which only over-counts); refused when the
    /// version's limit is reached.
    pub(crate) fn take(
        &self,
        keys: &dyn KeySource,
        tag: &str,
        version: u32,
        n: u64,
    ) -> Result<(), NcpError> {
        loop {
            let short = {
                let mut all = self.lock();
                let left = Self::left(&mut all, tag, version);
                if *left >= n {
                    *left -= n;
                    return Ok(());
                }
                n - *left
            };
            let (granted, total) =
                keys.reserve_encryptions(tag, version, BLOCK.max(short), self.limit)?;
            if granted == 0 {
                return Err(NcpError::InvalidStatus(format!(
                    "key version v{version} has done its {} AES-GCM encryptions (random nonces): \
                     rotate the key to encrypt again",
                    self.limit
                )));
            }
            if total >= self.limit / 2 {
                tracing::warn!(
                    key_tag = tag,
                    version,
                    encryptions = total,
                    limit = self.limit,
                    "AES-GCM key version is past half its encryption limit: rotate it \
                     (`keypipe kms rotate`)"
                );
            }
            *Self::left(&mut self.lock(), tag, version) += granted;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::Value;

    use crate::keys::StoreKeys;
    use crate::ncp::NcpService;
    use crate::store::{KeyStore, KeyType, Store, StoreOptions};

    fn call(svc: &NcpService, tag: &str, action: &str, body: &str) -> (u16, Value) {
        let reply = svc.handle(tag, action, body.as_bytes());
        (reply.status, serde_json::from_str(&reply.body).unwrap())
    }

    /// F15: the count survives a restart (it is the store's), the limit
    /// refuses, rotation resumes, old ciphertexts still open.
    #[test]
    fn encryptions_are_counted_per_version_across_restarts_and_refused_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KeyStore> =
            Arc::new(Store::open(&StoreOptions::new(dir.path())).unwrap());
        let tag = store
            .create_key("k", KeyType::Aes256, false, &[9u8; 32])
            .unwrap();
        let service = || {
            NcpService::new(Arc::new(StoreKeys::new(Arc::clone(&store)).unwrap()))
                .with_encryption_limit(5)
        };
        let plaintext = format!(r#"{{"plaintext":"{}"}}"#, STANDARD.encode(b"hi"));
        let first = service();
        let (status, v) = call(&first, &tag, "encrypt", &plaintext);
        assert_eq!(status, 200, "{v}");
        let old_ct = v["data"]["ciphertext"].as_str().unwrap().to_owned();
        let three = r#"{"plaintext":["aGk=","aGk=","aGk="]}"#;
        assert_eq!(call(&first, &tag, "encrypt", three).0, 200);
        // A restarted service reserves from the stored count (4 used, and
        // the first service's reservation counts as used).
        let second = service();
        let (status, v) = call(&second, &tag, "encrypt", &plaintext);
        assert_eq!(
            (status, v["code"].as_str()),
            (422, Some("INVALID_STATUS")),
            "{v}"
        );
        assert!(v["msg"].as_str().unwrap().contains("rotate"), "{v}");
        assert_eq!(
            call(&first, &tag, "encrypt", &plaintext).0,
            200,
            "the 5th, reserved before"
        );
        assert_eq!(call(&first, &tag, "encrypt", &plaintext).0, 422);
        // createCustomKey and reencrypt count too.
        assert_eq!(call(&first, &tag, "createCustomKey", "{}").0, 422);
        // Decryption does not count.
        let (status, v) = call(
            &second,
            &tag,
            "decrypt",
            &format!(r#"{{"ciphertext":"{old_ct}"}}"#),
        );
        assert_eq!(status, 200, "{v}");
        // Rotation: a fresh version, with its own count.
        assert_eq!(store.add_version(&tag, &[8u8; 32]).unwrap(), 2);
        let third = service();
        let (status, v) = call(&third, &tag, "encrypt", &plaintext);
        assert_eq!(status, 200, "{v}");
        assert!(
            v["data"]["ciphertext"]
                .as_str()
                .unwrap()
                .starts_with("ncpkms:v2:")
        );
        let (status, v) = call(
            &third,
            &tag,
            "reencrypt",
            &format!(r#"{{"ciphertext":"{old_ct}"}}"#),
        );
        assert_eq!(status, 200, "{v}");
    }

    #[test]
    fn the_store_never_grants_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreOptions::new(dir.path())).unwrap();
        let tag = store
            .create_key("k", KeyType::Aes256, false, &[9u8; 32])
            .unwrap();
        assert_eq!(store.reserve_encryptions(&tag, 1, 3, 10).unwrap(), (3, 3));
        assert_eq!(store.reserve_encryptions(&tag, 1, 30, 10).unwrap(), (7, 10));
        assert_eq!(store.reserve_encryptions(&tag, 1, 1, 10).unwrap(), (0, 10));
        assert!(
            store.reserve_encryptions(&tag, 2, 1, 10).is_err(),
            "no version 2"
        );
    }
}
