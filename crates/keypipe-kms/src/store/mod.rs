//! keypipe's durable store: the records and traits the services see
//! ([`KeyStore`], [`UserStore`], [`CaStore`], [`DonauStore`],
//! [`KeyTalkStore`], [`SecretStore`], [`EphemeralStore`]) and [`Store`],
//! which implements them once over a backend-neutral SQL layer (`sql`)
//! run by SQLite or PostgreSQL (`backend`), one file per table family.
//! The contract (layout, KEK, wrapping, durability): `docs/store.md`.

mod backend;
#[cfg(test)]
mod backend_tests;
mod ca;
mod copy;
mod donau;
mod ephemeral;
mod handle;
mod kek;
mod keytalk;
mod master_keys;
mod migrations;
mod rewrap;
mod secrets;
pub(crate) mod sql;
#[doc(hidden)]
pub mod testing;
mod users;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use keypipe_core::key::locked::{HeapFull, LockedBytes};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use ca::{CaKeyRecord, CaStore, Enrolment, IssuedRecord};
pub use copy::Copied;
pub use donau::{DonauKey, DonauKind, DonauPublicKey, DonauStore};
pub use ephemeral::{
    EphemeralChange, EphemeralRow, EphemeralStore, duration_ms, instant_at, row_id, wall_ms,
};
pub use handle::Store;
pub use kek::KekId;
pub use keytalk::{DeviceRecord, KeyTalkStore};
pub use rewrap::Rewrapped;
pub use secrets::SecretStore;
pub use users::{TokenHash, UserRecord, UserStore};

/// Where the store keeps its files and finds its KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Directory of the database (and, by default, of the KEK file);
    /// created with mode `0700` when missing.
    pub data_dir: PathBuf,
    /// The KEK file; `None` means `data_dir/kek.key`.
    pub kek_file: Option<PathBuf>,
    /// Name of an environment variable holding the KEK as 64 hex digits;
    /// when the variable is present it wins over the file.
    pub kek_env: Option<String>,
    /// A PostgreSQL database (`postgres://user@host/db`) instead of the
    /// SQLite file in `data_dir`.
    pub url: Option<String>,
}

impl StoreOptions {
    /// Options for `data_dir` with the default KEK file and no KEK variable.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreOptions {
            data_dir: data_dir.into(),
            kek_file: None,
            kek_env: None,
            url: None,
        }
    }

    /// The KEK file in use when the environment does not provide the KEK.
    pub fn kek_path(&self) -> PathBuf {
        self.kek_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(KEK_FILE_NAME))
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join(DB_FILE_NAME)
    }
}

/// Name of the database file in the data directory.
pub const DB_FILE_NAME: &str = "keypipe.db";
/// Name of the default KEK file in the data directory.
pub const KEK_FILE_NAME: &str = "kek.key";

/// Why a store operation failed. No message ever holds secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key, version or access key does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `key 0123…` or `version 3 of key 0123…`.
        what: String,
    },
    /// A file or directory operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The database refused or failed a statement.
    #[error("database error: {0}")]
    Database(String),
    /// The database cannot be reached now (no connection, connection lost,
    /// server restarting, SQLite busy for too long): try again later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A write met a concurrent write of another process and was rolled
    /// back (retried inside the store; seen only when retries ran out).
    #[error("a concurrent write conflicted; try again")]
    Conflict,
    /// The thing to create exists already.
    #[error("{what} already exists")]
    Exists {
        /// What, e.g. `user alice in domain corp`.
        what: String,
    },
    /// The KEK is missing, malformed or not the database's.
    #[error("KEK: {0}")]
    Kek(String),
    /// Stored data is damaged: a blob that does not unwrap (named by its
    /// row), a value out of range.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The database was written by a newer keypipe.
    #[error(
        "database schema version {found} is newer than this keypipe knows ({known}); \
         run a newer keypipe"
    )]
    Newer {
        /// The database's schema version.
        found: u32,
        /// The newest schema version this code knows.
        known: u32,
    },
    /// The OS random source failed.
    #[error("the OS random source failed")]
    Random,
    /// The locked secret memory is full.
    #[error("locked secret memory is full (raise [process] secret_memory_bytes)")]
    SecretMemory(#[from] HeapFull),
}

impl StoreError {
    /// True when the store cannot serve now but may soon (no connection,
    /// a restarting server, writers that kept conflicting): the services
    /// answer 503 with `Retry-After` rather than 500.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Conflict)
    }

    /// An [`StoreError::Io`] on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// The type of a master key. Text form: `AES256`, `RSA2048`, `ECDSA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyType {
    /// AES-256 (GCM, or GCM-SIV when convergent).
    #[serde(rename = "AES256")]
    Aes256,
    /// RSA 2048 (OAEP, PSS); material is PKCS#8 DER.
    #[serde(rename = "RSA2048")]
    Rsa2048,
    /// ECDSA P-256; material is PKCS#8 DER.
    #[serde(rename = "ECDSA")]
    Ecdsa,
}

impl KeyType {
    /// The text form: `AES256`, `RSA2048` or `ECDSA`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Aes256 => "AES256",
            KeyType::Rsa2048 => "RSA2048",
            KeyType::Ecdsa => "ECDSA",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key type text that is none of `AES256`, `RSA2048`, `ECDSA`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key type `{0}` (expected AES256, RSA2048 or ECDSA)")]
pub struct UnknownKeyType(pub String);

impl FromStr for KeyType {
    type Err = UnknownKeyType;

    /// Parses the exact text form (case-sensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "AES256" => Ok(KeyType::Aes256),
            "RSA2048" => Ok(KeyType::Rsa2048),
            "ECDSA" => Ok(KeyType::Ecdsa),
            _ => Err(UnknownKeyType(s.to_owned())),
        }
    }
}

/// One version of a master key, with its unwrapped material.
pub struct KeyVersion {
    /// Version number, from 1.
    pub version: u32,
    /// Whether the version may be used.
    pub enabled: bool,
    /// The key material (AES: 32 bytes; RSA, ECDSA: PKCS#8 DER), in
    /// locked memory.
    pub material: LockedBytes,
}

impl fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVersion")
            .field("version", &self.version)
            .field("enabled", &self.enabled)
            .field("material", &"<redacted>")
            .finish()
    }
}

/// A master key with every version's material.
#[derive(Debug)]
pub struct MasterKey {
    /// The keyTag: 32 lowercase hex digits.
    pub tag: String,
    /// Its display name.
    pub name: String,
    /// Its type.
    pub key_type: KeyType,
    /// Whether encryption is convergent (meaningful for `AES256` only).
    pub convergent: bool,
    /// Whether the key may be used.
    pub enabled: bool,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Its versions, ascending by version number.
    pub versions: Vec<KeyVersion>,
}

/// A master key without material, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySummary {
    /// The keyTag.
    pub tag: String,
    /// Its display name.
    pub name: String,
    /// Its type.
    pub key_type: KeyType,
    /// Whether encryption is convergent.
    pub convergent: bool,
    /// Whether the key may be used.
    pub enabled: bool,
    /// `(version, enabled)` of each version, ascending.
    pub versions: Vec<(u32, bool)>,
}

/// An API access key of the gateway.
#[derive(Clone)]
pub struct AccessKey {
    /// The access key id (`x-ncp-iam-access-key`): 20 uppercase
    /// alphanumerics.
    pub access_key: String,
    /// The HMAC secret: 40 alphanumerics.
    pub secret_key: Zeroizing<String>,
    /// The API key (`x-ncp-apigw-api-key`): 40 alphanumerics.
    pub api_key: String,
    /// False once revoked.
    pub enabled: bool,
    /// What it may do: nothing beyond these grants.
    pub grants: Vec<Grant>,
}

/// What an access key may do with one key, or with every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The keyTag, or `*` for every key.
    pub key_tag: String,
    /// The action names allowed (canonical, e.g. `encrypt`), or `["*"]`
    /// for every action.
    pub actions: Vec<String>,
}

impl AccessKey {
    /// True when a grant lets this access key do `action` (canonical name)
    /// with the key tagged `tag`.
    pub fn allows(&self, tag: &str, action: &str) -> bool {
        self.grants.iter().any(|g| {
            (g.key_tag == "*" || g.key_tag == tag)
                && g.actions.iter().any(|a| a == "*" || a == action)
        })
    }
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKey")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("api_key", &self.api_key)
            .field("enabled", &self.enabled)
            .field("grants", &self.grants)
            .finish()
    }
}

/// The durable store as the services see it: master keys and access keys.
/// [`Store`] (SQLite) implements it; another backend implements it too.
pub trait KeyStore: Send + Sync {
    /// Creates a key with version 1 holding `material`; returns its new
    /// keyTag (32 lowercase hex digits, random).
    fn create_key(
        &self,
        name: &str,
        key_type: KeyType,
        convergent: bool,
        material: &[u8],
    ) -> Result<String, StoreError>;

    /// Adds version n+1 (rotation) holding `material`; returns the new
    /// version number. [`StoreError::NotFound`] when there is no such key.
    fn add_version(&self, tag: &str, material: &[u8]) -> Result<u32, StoreError>;

    /// Enables or disables the whole key.
    fn set_key_enabled(&self, tag: &str, enabled: bool) -> Result<(), StoreError>;

    /// Durably reserves up to `n` more AES-GCM encryptions of version
    /// `version` of `tag`, never taking its count past `limit`: how many
    /// were granted (0 at the limit) and the count after.
    /// [`StoreError::NotFound`] when there is no such version.
    fn reserve_encryptions(
        &self,
        tag: &str,
        version: u32,
        n: u64,
        limit: u64,
    ) -> Result<(u64, u64), StoreError>;

    /// Enables or disables one version.
    fn set_version_enabled(&self, tag: &str, version: u32, enabled: bool)
    -> Result<(), StoreError>;

    /// The key tagged `tag` with every version unwrapped; `None` when there
    /// is none.
    fn key(&self, tag: &str) -> Result<Option<MasterKey>, StoreError>;

    /// Every key, without material, oldest first.
    fn list_keys(&self) -> Result<Vec<KeySummary>, StoreError>;

    /// Creates an enabled access key with a random id, secret and API key.
    fn create_access_key(&self) -> Result<AccessKey, StoreError>;

    /// The access key `access_key` (revoked ones too, with
    /// `enabled = false`); `None` when there is none.
    fn access_key(&self, access_key: &str) -> Result<Option<AccessKey>, StoreError>;

    /// Revokes an access key: it is kept, disabled. True when it existed.
    fn revoke_access_key(&self, access_key: &str) -> Result<bool, StoreError>;

    /// Sets what `access_key` may do with `grant.key_tag` (replacing a
    /// grant for the same tag). [`StoreError::NotFound`] when there is no
    /// such access key.
    fn set_grant(&self, access_key: &str, grant: &Grant) -> Result<(), StoreError>;

    /// Removes `access_key`'s grant for `key_tag`; true when there was one.
    fn remove_grant(&self, access_key: &str, key_tag: &str) -> Result<bool, StoreError>;

    /// Every access key's id, state and grants (no secret), oldest first.
    fn list_access_keys(&self) -> Result<Vec<(String, bool, Vec<Grant>)>, StoreError>;

    /// A counter that changes on every write of what callers cache (keys,
    /// access keys, grants, CA, Donau keys; any process): callers cache
    /// and re-read when it moved.
    fn generation(&self) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_text_round_trips() {
        for t in [KeyType::Aes256, KeyType::Rsa2048, KeyType::Ecdsa] {
            assert_eq!(t.as_str().parse::<KeyType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<KeyType>(&json).unwrap(), t);
        }
        let err = "aes256".parse::<KeyType>().unwrap_err();
        assert!(err.to_string().contains("aes256"));
    }

    #[test]
    fn debug_redacts_secrets() {
        let v = KeyVersion {
            version: 1,
            enabled: true,
            material: LockedBytes::secret(b"SECRETMATERIAL").unwrap(),
        };
        let k = MasterKey {
            tag: "t".into(),
            name: "n".into(),
            key_type: KeyType::Aes256,
            convergent: false,
            enabled: true,
            created_ms: 0,
            versions: vec![v],
        };
        let a = AccessKey {
            access_key: "AK".into(),
            secret_key: Zeroizing::new("SECRETKEY".into()),
            api_key: "API".into(),
            enabled: true,
            grants: Vec::new(),
        };
        let text = format!("{k:?} {k:#?} {a:?} {a:#?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("redacted"));
        // The numeric form of the bytes must not appear either.
        assert!(!text.contains("83, 69, 67"), "{text}");
    }

    #[test]
    fn store_is_send_sync_and_object_safe() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
        fn _object_safe(_: &dyn KeyStore) {}
    }
}
