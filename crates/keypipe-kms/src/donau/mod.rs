//! GNU Taler Donau `GET /keys` (sans-IO): the donation-unit keys and
//! signing keys a Donau publishes, generated once and kept in the store.
//!
//! - **Keys.** At start-up every configured (unit, year) and signing year
//!   without a key gets one: RSA (configurable modulus, default 2048 bits,
//!   e = 65537) for `cipher = "RSA"` units, a Clause-Schnorr key (an
//!   unclamped scalar, uniform mod ℓ; public = scalar · Ed25519 base
//!   point) for `"CS"` units, an Ed25519 key per signing year. Private
//!   parts are wrapped under the KEK, public parts in clear
//!   (`store::DonauStore`). A stored key is never replaced: published keys
//!   stay the same across restarts and configuration changes (changing
//!   `rsa_bits` affects only keys made afterwards).
//! - **What is listed.** Every stored key of a configured unit (value and
//!   cipher), whatever years the configuration names now, so a key once
//!   published stays listed (the configured years only say which keys to
//!   make); every stored signing key that is not lost. Units in
//!   configuration order, then by year.
//! - **Lost keys.** A unit whose private part is gone (`keypipe donau
//!   mark-lost`, or erased from the store) is listed with `"lost": true`
//!   (the field is omitted otherwise). A lost signing key is not listed,
//!   and its year gets no new one. A row deleted from the database by hand
//!   is gone: the next start makes a new key for that unit and year.
//! - **The answer** is built once per change and served from memory with a
//!   strong `ETag` (the first 128 bits of the body's SHA-256) and
//!   `Cache-Control: public, max-age=60`. A watcher thread ([`watch`])
//!   checks the store's write counter every [`RECHECK`] and rebuilds the
//!   answer (from public parts only) when it moved, so a change made by
//!   another process (the CLI) shows within about a second and a request
//!   never waits on the store.
//! - **Encodings** (`docs/donau.md`): [`amount`],
//!   [`crockford`], [`rsa_encoding`]; `pub_key_hash` is the SHA-512 of the
//!   GNUnet RSA encoding or of the 32-byte CS point; version `"0:0:0"`.

pub mod amount;
pub mod crockford;
pub mod rsa_encoding;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use curve25519_dalek::{EdwardsPoint, Scalar};
use rsa::pkcs8::EncodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

pub use amount::Amount;

use crate::store::{DonauKey, DonauKind, DonauPublicKey, DonauStore, StoreError};

/// Longest time the published answer is served without checking the
/// store for changes.
pub const RECHECK: Duration = Duration::from_secs(1);
/// The protocol version published.
pub const VERSION: &str = "0:0:0";

/// A donation unit's cipher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Cipher {
    /// RSA blind signatures.
    #[serde(rename = "RSA")]
    Rsa,
    /// Clause-Schnorr blind signatures over Ed25519.
    #[serde(rename = "CS")]
    Cs,
}

impl Cipher {
    fn kind(self) -> DonauKind {
        match self {
            Cipher::Rsa => DonauKind::Rsa,
            Cipher::Cs => DonauKind::Cs,
        }
    }
}

/// One configured donation unit.
#[derive(Debug, Clone)]
pub struct UnitConfig {
    /// Its value.
    pub value: Amount,
    /// Its cipher.
    pub cipher: Cipher,
    /// The years it has keys for.
    pub years: Vec<u16>,
}

/// What the Donau publishes.
#[derive(Debug, Clone)]
pub struct DonauConfig {
    /// The currency (every unit's).
    pub currency: String,
    /// The legal/financial domain.
    pub legal_domain: String,
    /// The Donau's base URL.
    pub base_url: String,
    /// The donation units.
    pub units: Vec<UnitConfig>,
    /// Years with a signing key.
    pub signkey_years: Vec<u16>,
    /// RSA modulus size for new RSA keys.
    pub rsa_bits: usize,
}

/// Why the Donau could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum DonauError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Key generation failed (the random source).
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
}

/// The published answer: body and entity tag.
#[derive(Debug, Clone)]
pub struct Published {
    /// The JSON body.
    pub body: Bytes,
    /// The strong entity tag, quoted.
    pub etag: String,
}

/// The Donau service.
pub struct Donau {
    store: Arc<dyn DonauStore>,
    config: DonauConfig,
    published: RwLock<(u64, Arc<Published>)>,
}

/// Starts the watcher thread of `donau`: every [`RECHECK`] it rebuilds the
/// answer if the store changed; it ends once `donau` is dropped.
pub fn watch(donau: &Arc<Donau>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let weak = Arc::downgrade(donau);
    std::thread::Builder::new()
        .name("keypipe-donau-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(RECHECK);
                match weak.upgrade() {
                    Some(donau) => donau.refresh(),
                    None => return,
                }
            }
        })
}

impl std::fmt::Debug for Donau {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Donau")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, DonauError> {
    let mut bytes = Zeroizing::new([0u8; N]);
    getrandom::fill(&mut bytes[..]).map_err(|e| DonauError::KeyGeneration(e.to_string()))?;
    Ok(bytes)
}

/// A fresh key of `kind`: (public, private).
fn generate(kind: DonauKind, rsa_bits: usize) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), DonauError> {
    match kind {
        DonauKind::Rsa => {
            // Straight from the OS: no seeded generator state left behind.
            let key = rsa::PrivateKey::new(&mut getrandom::SysRng, rsa_bits)
                .map_err(|e| DonauError::KeyGeneration(e.to_string()))?;
            let public = rsa_encoding::encode(&key.n_bytes(), &key.e_bytes())
                .ok_or_else(|| DonauError::KeyGeneration("RSA key too large".into()))?;
            let der = key
                .to_pkcs8_der()
                .map_err(|e| DonauError::KeyGeneration(e.to_string()))?;
            Ok((public, Zeroizing::new(der.as_bytes().to_vec())))
        }
        DonauKind::Cs => {
            let mut scalar = Scalar::from_bytes_mod_order_wide(&*random::<64>()?);
            let public = EdwardsPoint::mul_base(&scalar)
                .compress()
                .to_bytes()
                .to_vec();
            let private = Zeroizing::new(scalar.to_bytes().to_vec());
            zeroize::Zeroize::zeroize(&mut scalar);
            Ok((public, private))
        }
        DonauKind::Sign => {
            let seed = random::<32>()?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            Ok((
                key.verifying_key().to_bytes().to_vec(),
                Zeroizing::new(seed.to_vec()),
            ))
        }
    }
}

#[derive(Serialize)]
struct KeysResponse<'a> {
    version: &'static str,
    legal_domain: &'a str,
    base_url: &'a str,
    currency: &'a str,
    donation_units: Vec<UnitJson>,
    signkeys: Vec<SignKeyJson>,
}

#[derive(Serialize)]
struct UnitJson {
    year: u16,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    lost: bool,
    value: String,
    donation_unit_pub: UnitPubJson,
}

#[derive(Serialize)]
#[serde(tag = "cipher")]
enum UnitPubJson {
    #[serde(rename = "RSA")]
    Rsa {
        rsa_public_key: String,
        pub_key_hash: String,
    },
    #[serde(rename = "CS")]
    Cs {
        cs_public_key: String,
        pub_key_hash: String,
    },
}

#[derive(Serialize)]
struct SignKeyJson {
    key: String,
    year: u16,
}

impl Donau {
    /// Opens the Donau: generates the configured keys that are missing,
    /// then builds the answer.
    pub fn open(store: Arc<dyn DonauStore>, config: DonauConfig) -> Result<Donau, DonauError> {
        let existing = store.donau_public_keys()?;
        let has = |kind: DonauKind, value: &str, year: u16| {
            existing
                .iter()
                .any(|k| k.kind == kind && k.value == value && k.year == year)
        };
        let mut wanted: Vec<(DonauKind, String, u16)> = Vec::new();
        for unit in &config.units {
            for &year in &unit.years {
                wanted.push((unit.cipher.kind(), unit.value.to_string(), year));
            }
        }
        for &year in &config.signkey_years {
            wanted.push((DonauKind::Sign, String::new(), year));
        }
        wanted.sort();
        wanted.dedup();
        for (kind, value, year) in wanted {
            if has(kind, &value, year) {
                continue;
            }
            let (public, private) = generate(kind, config.rsa_bits)?;
            let added = store.add_donau_key(&DonauKey {
                kind,
                value: value.clone(),
                year,
                public,
                private: Some(private),
            })?;
            if added {
                tracing::info!(kind = kind.as_str(), %value, year, "generated a Donau key");
            }
        }
        let generation = store.changes()?;
        let published = build(&config, &store.donau_public_keys()?);
        Ok(Donau {
            store,
            config,
            published: RwLock::new((generation, Arc::new(published))),
        })
    }

    /// The answer to serve (never touches the store).
    pub fn published(&self) -> Arc<Published> {
        let guard = self
            .published
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&guard.1)
    }

    /// Rebuilds the answer if the store's write counter moved.
    pub fn refresh(&self) {
        let current = self
            .published
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
        let rebuilt = self.store.changes().and_then(|generation| {
            if generation == current {
                return Ok(None);
            }
            Ok(Some((
                generation,
                build(&self.config, &self.store.donau_public_keys()?),
            )))
        });
        match rebuilt {
            Ok(Some((generation, published))) => {
                *self
                    .published
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    (generation, Arc::new(published));
            }
            Ok(None) => {}
            // Keep serving what was published.
            Err(e) => tracing::error!("Donau keys: store check failed: {e}"),
        }
    }
}

/// The current year (UTC), from the system clock.
pub fn current_year() -> u16 {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let month_index = (5 * doy + 2) / 153; // 0 = March
    let year = yoe + era * 400 + i64::from(month_index >= 10);
    u16::try_from(year).unwrap_or(u16::MAX)
}

/// The answer for `config` over the stored `keys` (sorted by kind, value,
/// year, as the store gives them).
fn build(config: &DonauConfig, keys: &[DonauPublicKey]) -> Published {
    let mut units = Vec::new();
    for unit in &config.units {
        let value = unit.value.to_string();
        let kind = unit.cipher.kind();
        for key in keys.iter().filter(|k| k.kind == kind && k.value == value) {
            let hash = crockford::encode(&Sha512::digest(&key.public));
            let public = crockford::encode(&key.public);
            units.push(UnitJson {
                year: key.year,
                lost: key.lost,
                value: value.clone(),
                donation_unit_pub: match unit.cipher {
                    Cipher::Rsa => UnitPubJson::Rsa {
                        rsa_public_key: public,
                        pub_key_hash: hash,
                    },
                    Cipher::Cs => UnitPubJson::Cs {
                        cs_public_key: public,
                        pub_key_hash: hash,
                    },
                },
            });
        }
    }
    let signkeys = keys
        .iter()
        .filter(|k| k.kind == DonauKind::Sign && !k.lost)
        .map(|k| SignKeyJson {
            key: crockford::encode(&k.public),
            year: k.year,
        })
        .collect();
    let body = serde_json::to_vec(&KeysResponse {
        version: VERSION,
        legal_domain: &config.legal_domain,
        base_url: &config.base_url,
        currency: &config.currency,
        donation_units: units,
        signkeys,
    })
    .expect("the answer serializes");
    let digest = Sha256::digest(&body);
    let etag = format!(
        "\"{}\"",
        digest[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    Published {
        body: Bytes::from(body),
        etag,
    }
}

/// True when an `If-None-Match` value matches `etag` (`*`, or a listed tag
/// compared weakly, as RFC 9110 §13.1.2 says).
pub fn none_match(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|tag| {
        tag == "*"
            || tag.strip_prefix("W/").unwrap_or(tag) == etag.strip_prefix("W/").unwrap_or(etag)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_year_is_plausible() {
        let y = current_year();
        assert!((2025..2200).contains(&y), "{y}");
    }

    #[test]
    fn if_none_match_lists() {
        let etag = "\"abc\"";
        assert!(none_match("\"abc\"", etag));
        assert!(none_match("\"x\", W/\"abc\"", etag));
        assert!(none_match("*", etag));
        assert!(!none_match("\"abcd\"", etag));
        assert!(!none_match("abc", etag));
    }

    #[test]
    fn generated_keys_have_the_published_shapes() {
        let (public, private) = generate(DonauKind::Cs, 0).unwrap();
        assert_eq!((public.len(), private.len()), (32, 32));
        let scalar = Scalar::from_canonical_bytes(private[..].try_into().unwrap()).unwrap();
        assert_eq!(
            EdwardsPoint::mul_base(&scalar).compress().to_bytes()[..],
            public[..]
        );
        let (public, _) = generate(DonauKind::Sign, 0).unwrap();
        assert_eq!(public.len(), 32);
        let (public, _) = generate(DonauKind::Rsa, 1024).unwrap();
        // u16 len(n) = 128, u16 len(e) = 3, n, e = 65537.
        assert_eq!(&public[..4], &[0, 128, 0, 3]);
        assert_eq!(&public[public.len() - 3..], &[1, 0, 1]);
        assert_eq!(public.len(), 4 + 128 + 3);
    }
}
