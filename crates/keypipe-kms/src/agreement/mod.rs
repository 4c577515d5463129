//! Key agreement (`POST /rest/key-agreement`), sans-IO: the server's side
//! of a DH or ECDH exchange, and the single-use reference under which the
//! derived key waits for one login.
//!
//! A client sends its identifier, a nonce, a DH or ECDH public key and the
//! schemes it supports; the server answers with a fresh public key of its
//! own, its identifier, a key-confirmation `proof` and a single-use
//! `client_reference_id` under which the derived `k_enc` waits for one
//! login (whose sensitive fields are encrypted under it).
//!
//! The cryptographic profile (keypipe's own, after SP 800-56A/C; written
//! out, with known-answer vectors for client authors, in
//! `docs/key-agreement.md`) is implemented in [`kdf`] (derivation and
//! proof), [`ffdhe`] and [`ecdh`] (the groups) and [`public_key`] (wire
//! encodings).
//!
//! Choices where the profile is silent:
//! - A public key belongs to exactly one scheme (its group), so the scheme
//!   is the client key's, provided the client lists it in
//!   `supported_schemes` and the server enables it (`schemes` in the
//!   configuration, most preferred first); otherwise 400 "no common
//!   scheme". Unknown scheme names are ignored unless no name is known.
//! - Base64 is the standard alphabet with padding; `identifier` is 1 to
//!   256 bytes, `nonce` 16 to 1024 bytes.
//! - A request is refused whole, before any key is generated or any
//!   reference registered.
//!
//! References wait in this process's memory ([`AgreementService::new`]),
//! or, when several processes share a PostgreSQL store, in the store
//! ([`AgreementService::with_store`]), so the login may reach any of them;
//! see [`References`].

pub mod ecdh;
pub mod ffdhe;
pub mod kdf;
pub mod public_key;
mod references;
mod scheme;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce, Tag};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use references::{ReferenceError, References, SessionKey};
pub use scheme::Scheme;

use crate::store::EphemeralStore;
use kdf::Transcript;
use public_key::{KeyEncoding, PeerKey};

/// Longest client identifier, bytes.
pub const MAX_IDENTIFIER: usize = 256;
/// Shortest nonce, bytes.
pub const MIN_NONCE: usize = 16;
/// Longest nonce, bytes.
pub const MAX_NONCE: usize = 1024;
/// Longest `public_key`, bytes after Base64 decoding (an FFDHE-3072 SPKI
/// with parameters is about 1.2 KiB).
const MAX_PUBLIC_KEY: usize = 4096;
/// Bytes of the AES-GCM IV in an encrypted field.
pub const IV_LEN: usize = 12;
/// Bytes of the AES-GCM tag in an encrypted field.
pub const TAG_LEN: usize = 16;

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct AgreementConfig {
    /// The server's identifier (`id_S`), default `Broker`.
    pub identifier: Vec<u8>,
    /// Enabled schemes, most preferred first.
    pub schemes: Vec<Scheme>,
    /// How long a reference waits for its login.
    pub reference_ttl: Duration,
    /// Most references held at once (beyond, the oldest are forgotten,
    /// in memory as in a shared store).
    pub max_pending: usize,
}

impl Default for AgreementConfig {
    fn default() -> Self {
        AgreementConfig {
            identifier: b"Broker".to_vec(),
            schemes: Scheme::default_preference().to_vec(),
            reference_ttl: Duration::from_secs(300),
            max_pending: 100_000,
        }
    }
}

/// The request body (`ClientKeyDerivationSpec`); unknown fields are
/// ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientKeyDerivationSpec {
    /// Base64 of the client's identifier.
    pub identifier: String,
    /// Base64 of the nonce (the HKDF salt).
    pub nonce: String,
    /// Base64 of the client's public key (SPKI DER or raw).
    pub public_key: String,
    /// Scheme names the client supports.
    pub supported_schemes: Vec<String>,
}

/// The answer (`ServerKeyDerivationInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerKeyDerivationInfo {
    /// The single-use reference to pass to the login.
    pub client_reference_id: String,
    /// Base64 of the server's identifier.
    pub identifier: String,
    /// Base64 of the key-confirmation tag.
    pub proof: String,
    /// Base64 of the server's public key, in the client's encoding.
    pub public_key: String,
    /// The scheme chosen.
    pub scheme: Scheme,
}

/// Why an agreement failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgreementError {
    /// The request is malformed or cannot be served (400); nothing kept.
    #[error("{0}")]
    BadRequest(String),
    /// The OS random source failed (500).
    #[error("the OS random source failed")]
    Random,
    /// The shared store cannot be reached now (503); the detail is
    /// logged, not sent.
    #[error("service temporarily unavailable; retry")]
    Unavailable(String),
    /// The shared store failed (500); the detail is logged, not sent.
    #[error("internal error")]
    Store(String),
}

impl From<ReferenceError> for AgreementError {
    /// What registering a reference can fail with.
    fn from(e: ReferenceError) -> Self {
        match e {
            ReferenceError::Unavailable(detail) => AgreementError::Unavailable(detail),
            ReferenceError::Store(detail) => AgreementError::Store(detail),
            other => AgreementError::Store(other.to_string()),
        }
    }
}

/// Why an encrypted field could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// Not Base64.
    #[error("field {0} is not valid Base64")]
    Base64(&'static str),
    /// Shorter than IV and tag.
    #[error("field {0} is too short to be IV (12) ‖ ciphertext ‖ tag (16)")]
    Short(&'static str),
    /// The tag does not verify (another key or reference, or tampered).
    #[error("field {0} does not decrypt under the key of this client_reference_id")]
    Undecryptable(&'static str),
}

/// The service: settings and pending references.
#[derive(Debug)]
pub struct AgreementService {
    config: AgreementConfig,
    references: References,
}

fn decode_field(name: &str, value: &str) -> Result<Vec<u8>, AgreementError> {
    BASE64
        .decode(value)
        .map_err(|_| AgreementError::BadRequest(format!("{name} is not valid Base64")))
}

impl AgreementService {
    /// A service with `config`, keeping its references in memory (one
    /// process).
    pub fn new(config: AgreementConfig) -> Self {
        let references = References::new(config.reference_ttl, config.max_pending);
        AgreementService { config, references }
    }

    /// A service with `config`, keeping its references in `store`, shared
    /// with every process using it (for a store where
    /// `Store::is_shared()`): a reference issued here can be taken by any
    /// of them, once.
    pub fn with_store(config: AgreementConfig, store: Arc<dyn EphemeralStore>) -> Self {
        let references = References::shared(store, config.reference_ttl, config.max_pending);
        AgreementService { config, references }
    }

    /// Pending references (live, used or expired, until forgotten). With
    /// a shared store, those of every process as of this process's last
    /// agreement (0 before its first): a figure kept in memory, never a
    /// query, so metrics never wait for the store.
    pub fn pending(&self) -> usize {
        self.references.len()
    }

    /// Runs one agreement. Validates everything first; a refused request
    /// leaves no state. A full table forgets its oldest references to
    /// make room. With a shared store it may also fail with
    /// [`AgreementError::Unavailable`] or [`AgreementError::Store`].
    pub fn agree(
        &self,
        spec: &ClientKeyDerivationSpec,
        now: Instant,
    ) -> Result<ServerKeyDerivationInfo, AgreementError> {
        let bad = |m: String| AgreementError::BadRequest(m);
        let id_c = decode_field("identifier", &spec.identifier)?;
        if id_c.is_empty() || id_c.len() > MAX_IDENTIFIER {
            return Err(bad(format!(
                "identifier must be 1 to {MAX_IDENTIFIER} bytes, got {}",
                id_c.len()
            )));
        }
        let nonce = decode_field("nonce", &spec.nonce)?;
        if !(MIN_NONCE..=MAX_NONCE).contains(&nonce.len()) {
            return Err(bad(format!(
                "nonce must be {MIN_NONCE} to {MAX_NONCE} bytes, got {}",
                nonce.len()
            )));
        }
        let offered: Vec<Scheme> = spec
            .supported_schemes
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        if offered.is_empty() {
            return Err(bad(
                "supported_schemes names no known scheme (SCHEME-AES1, SCHEME-AES2, \
                 SCHEME-EC-AES1, SCHEME-EC-AES2)"
                    .into(),
            ));
        }
        if spec.public_key.len() > MAX_PUBLIC_KEY * 4 / 3 + 4 {
            return Err(bad("public_key is too long".into()));
        }
        let pub_c = decode_field("public_key", &spec.public_key)?;
        let (scheme, encoding, peer) = public_key::parse(&pub_c).map_err(|e| bad(e.to_string()))?;
        if !offered.contains(&scheme) || !self.config.schemes.contains(&scheme) {
            let enabled: Vec<&str> = self.config.schemes.iter().map(|s| s.name()).collect();
            return Err(bad(format!(
                "no common scheme: public_key is a {} key ({scheme}); it must be listed in \
                 supported_schemes and enabled here ({})",
                scheme.group_name(),
                enabled.join(", ")
            )));
        }
        self.respond(scheme, encoding, &peer, &pub_c, &id_c, &nonce, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        scheme: Scheme,
        encoding: KeyEncoding,
        peer: &PeerKey,
        pub_c: &[u8],
        id_c: &[u8],
        nonce: &[u8],
        now: Instant,
    ) -> Result<ServerKeyDerivationInfo, AgreementError> {
        // A fresh key pair in the client key's group; the secret key is
        // dropped (zeroized) as soon as Z is known.
        let (z, pub_s) = match peer {
            PeerKey::Dh(group, y) => {
                let (key, y_s) = group.generate().map_err(|_| AgreementError::Random)?;
                (key.agree(y), public_key::encode_dh(*group, &y_s, encoding))
            }
            PeerKey::Ec(point) => {
                let (key, point_s) = point
                    .curve()
                    .generate()
                    .map_err(|_| AgreementError::Random)?;
                let z = key.agree(point).expect("generated on the point's curve");
                (z, public_key::encode_ec(&point_s, encoding))
            }
        };
        let transcript = Transcript {
            scheme,
            nonce,
            id_c,
            id_s: &self.config.identifier,
            pub_c,
            pub_s: &pub_s,
        };
        let keys = kdf::derive(&z, &transcript);
        let proof = kdf::proof(&keys.k_mac, &transcript);
        let reference = self.references.insert(
            SessionKey {
                scheme,
                k_enc: keys.k_enc,
            },
            now,
        )?;
        Ok(ServerKeyDerivationInfo {
            client_reference_id: reference.to_string(),
            identifier: BASE64.encode(&self.config.identifier),
            proof: BASE64.encode(proof),
            public_key: BASE64.encode(&pub_s),
            scheme,
        })
    }

    /// Takes the key of a reference, once.
    /// The reference comes back in the form the server issued it
    /// (lowercase, hyphenated), the associated data of its fields. With a
    /// shared store it may also fail with [`ReferenceError::Unavailable`]
    /// or [`ReferenceError::Store`].
    pub fn take(
        &self,
        reference: &str,
        now: Instant,
    ) -> Result<(String, SessionKey), ReferenceError> {
        let (id, key) = self.references.take(reference, now)?;
        Ok((id.to_string(), key))
    }
}

impl SessionKey {
    /// Opens an encrypted field: `Base64(iv12 ‖ AES-GCM(k_enc, plaintext,
    /// aad = reference))`, where `reference` is the `client_reference_id`
    /// exactly as the server issued it (lowercase, hyphenated).
    pub fn open(
        &self,
        name: &'static str,
        value: &str,
        reference: &str,
    ) -> Result<Zeroizing<Vec<u8>>, FieldError> {
        let raw = Zeroizing::new(BASE64.decode(value).map_err(|_| FieldError::Base64(name))?);
        if raw.len() < IV_LEN + TAG_LEN {
            return Err(FieldError::Short(name));
        }
        let (iv, rest) = raw.split_at(IV_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = Nonce::try_from(iv).map_err(|_| FieldError::Short(name))?;
        let tag = Tag::try_from(tag).map_err(|_| FieldError::Short(name))?;
        let mut buf = Zeroizing::new(body.to_vec());
        let aad = reference.as_bytes();
        let opened = match self.k_enc.len() {
            16 => Aes128Gcm::new_from_slice(&self.k_enc)
                .map(|c| c.decrypt_inout_detached(&nonce, aad, buf.as_mut_slice().into(), &tag)),
            _ => Aes256Gcm::new_from_slice(&self.k_enc)
                .map(|c| c.decrypt_inout_detached(&nonce, aad, buf.as_mut_slice().into(), &tag)),
        };
        match opened {
            Ok(Ok(())) => Ok(buf),
            _ => Err(FieldError::Undecryptable(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The full known-answer vector of docs/key-agreement.md (SCHEME-EC-AES1,
    /// raw keys), computed independently with Python `cryptography` (OpenSSL).
    #[test]
    fn known_answer_with_fixed_keys() {
        let d_c = p256::SecretKey::from_slice(&unhex(
            "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
        ))
        .unwrap();
        let d_s = p256::SecretKey::from_slice(&unhex(
            "2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40",
        ))
        .unwrap();
        let pub_c = d_c.public_key().to_sec1_bytes();
        let pub_s = d_s.public_key().to_sec1_bytes();
        assert_eq!(
            pub_c[..],
            unhex(
                "04515c3d6eb9e396b904d3feca7f54fdcd0cc1e997bf375dca515ad0a6c3b4035f4536be3a50f3\
                 18fbf9a5475902a221502bef0d57e08c53b2cc0a56f17d9f9354"
            )
        );
        assert_eq!(
            pub_s[..],
            unhex(
                "041f140146bfb1b251f84f4ddbe0d4cdcfd77afd984a9520e35794021f8312bb9eec995a08b1fa\
                 7704df3dcc0b50a9665263fb7711f95f9f8a449c5096e47c892b"
            )
        );
        let server = ecdh::PrivateKey::P256(d_s);
        let peer = ecdh::Curve::P256.point_from_sec1(&pub_c).unwrap();
        let z = server.agree(&peer).unwrap();
        assert_eq!(
            *z,
            unhex("4fe243908f378aa1c2a69538822e6ed908c3225d8692575507c649901245150a")
        );
        let nonce: Vec<u8> = (0..16).collect();
        let t = Transcript {
            scheme: Scheme::EcAes1,
            nonce: &nonce,
            id_c: b"client-1",
            id_s: b"Broker",
            pub_c: &pub_c,
            pub_s: &pub_s,
        };
        let keys = kdf::derive(&z, &t);
        assert_eq!(*keys.k_enc, unhex("8fa891d9c0bb161058f115c16647fab4"));
        assert_eq!(
            keys.k_mac[..],
            unhex("8d0ccdb83153b1c7491e9c8896f7facddeed8a1943d0f72e2f492faca96a28cd")
        );
        assert_eq!(
            BASE64.encode(kdf::proof(&keys.k_mac, &t)),
            "6AS7DXfMcFhIdUg43fukic6PDN5WR8/ja0oUrDkln1w="
        );
        let session = SessionKey {
            scheme: Scheme::EcAes1,
            k_enc: keys.k_enc,
        };
        let reference = "00000000-0000-4000-8000-000000000000";
        let field = "AAAAAAAAAAAAAAAA6LSuBBINElMQIUuicb3vyikPus3uQZc=";
        assert_eq!(
            *session.open("password", field, reference).unwrap(),
            b"hunter2"
        );
        assert_eq!(
            session
                .open("password", field, "00000000-0000-4000-8000-000000000001")
                .unwrap_err(),
            FieldError::Undecryptable("password")
        );
        assert_eq!(
            session.open("password", "AAAA", reference).unwrap_err(),
            FieldError::Short("password")
        );
        assert_eq!(
            session.open("password", "AA=A", reference).unwrap_err(),
            FieldError::Base64("password")
        );
    }

    #[test]
    fn refused_requests_keep_no_reference() {
        let service = AgreementService::new(AgreementConfig::default());
        let (_, point) = ecdh::Curve::P256.generate().unwrap();
        let good = ClientKeyDerivationSpec {
            identifier: BASE64.encode(b"c"),
            nonce: BASE64.encode([0u8; 16]),
            public_key: BASE64.encode(point.to_sec1()),
            supported_schemes: vec!["SCHEME-EC-AES1".into()],
        };
        let now = Instant::now();
        let mut bad = good.clone();
        bad.nonce = BASE64.encode([0u8; 15]);
        assert!(matches!(
            service.agree(&bad, now),
            Err(AgreementError::BadRequest(_))
        ));
        let mut bad = good.clone();
        bad.supported_schemes = vec!["SCHEME-EC-AES2".into(), "NOPE".into()];
        let e = service.agree(&bad, now).unwrap_err().to_string();
        assert!(e.contains("no common scheme"), "{e}");
        assert_eq!(service.pending(), 0);
        let info = service.agree(&good, now).unwrap();
        assert_eq!(info.scheme, Scheme::EcAes1);
        assert_eq!(info.identifier, "QnJva2Vy");
        assert_eq!(service.pending(), 1);
    }

    fn p256_spec() -> ClientKeyDerivationSpec {
        let (_, point) = ecdh::Curve::P256.generate().unwrap();
        ClientKeyDerivationSpec {
            identifier: BASE64.encode(b"c"),
            nonce: BASE64.encode([0u8; 16]),
            public_key: BASE64.encode(point.to_sec1()),
            supported_schemes: vec!["SCHEME-EC-AES1".into()],
        }
    }

    /// Two services over two handles on one SQLite store, as two processes
    /// of a site: an agreement made by one is taken by the other, once;
    /// beyond `max_pending`, the oldest references are forgotten.
    #[test]
    fn services_sharing_a_store_share_references() {
        use crate::store::{Store, StoreOptions};
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::new(dir.path());
        let config = AgreementConfig {
            max_pending: 2,
            ..AgreementConfig::default()
        };
        let one =
            AgreementService::with_store(config.clone(), Arc::new(Store::open(&options).unwrap()));
        let two = AgreementService::with_store(config, Arc::new(Store::open(&options).unwrap()));
        let now = Instant::now();
        let info = one.agree(&p256_spec(), now).unwrap();
        assert_eq!(
            (one.pending(), two.pending()),
            (1, 0),
            "as of the last agreement"
        );
        let (reference, key) = two.take(&info.client_reference_id, now).unwrap();
        assert_eq!(reference, info.client_reference_id);
        assert_eq!(key.scheme, Scheme::EcAes1);
        assert_eq!(key.k_enc.len(), 16);
        assert_eq!(one.take(&reference, now).unwrap_err(), ReferenceError::Used);
        // A millisecond later: two rows of the same millisecond expire
        // together, and which of them is the oldest is a toss-up.
        let second = two
            .agree(&p256_spec(), now + Duration::from_millis(1))
            .unwrap();
        assert_eq!(two.pending(), 2);
        // Full: the oldest (the used one) goes; every other reference works.
        let later = now + Duration::from_secs(1);
        let third = one.agree(&p256_spec(), later).unwrap();
        assert_eq!(one.pending(), 2);
        assert_eq!(
            two.take(&reference, later).unwrap_err(),
            ReferenceError::Unknown
        );
        one.take(&second.client_reference_id, later).unwrap();
        two.take(&third.client_reference_id, later).unwrap();
    }

    /// A store that always fails as `error` says.
    struct Failing(fn() -> crate::store::StoreError);

    impl EphemeralStore for Failing {
        fn ephemeral_update_rows(
            &self,
            _: &[(&str, &[u8])],
            _: &mut dyn FnMut(
                Vec<Option<crate::store::EphemeralRow>>,
            ) -> Result<
                Vec<crate::store::EphemeralChange>,
                crate::store::StoreError,
            >,
        ) -> Result<(), crate::store::StoreError> {
            Err((self.0)())
        }

        fn ephemeral_get(
            &self,
            _: &str,
            _: &[u8],
        ) -> Result<Option<crate::store::EphemeralRow>, crate::store::StoreError> {
            Err((self.0)())
        }

        fn ephemeral_count(&self, _: &str) -> Result<u64, crate::store::StoreError> {
            Err((self.0)())
        }

        fn ephemeral_make_room(&self, _: &str, _: u64) -> Result<u64, crate::store::StoreError> {
            Err((self.0)())
        }
    }

    #[test]
    fn store_failures_are_unavailable_or_internal() {
        use crate::store::StoreError;
        let now = Instant::now();
        let down = AgreementService::with_store(
            AgreementConfig::default(),
            Arc::new(Failing(|| StoreError::Unavailable("down".into()))),
        );
        assert!(matches!(
            down.agree(&p256_spec(), now),
            Err(AgreementError::Unavailable(_))
        ));
        let reference = "00000000-0000-4000-8000-000000000000";
        assert!(matches!(
            down.take(reference, now),
            Err(ReferenceError::Unavailable(_))
        ));
        assert_eq!(down.pending(), 0);
        let broken = AgreementService::with_store(
            AgreementConfig::default(),
            Arc::new(Failing(|| StoreError::Corrupt("x".into()))),
        );
        assert!(matches!(
            broken.agree(&p256_spec(), now),
            Err(AgreementError::Store(_))
        ));
        assert!(matches!(
            broken.take(reference, now),
            Err(ReferenceError::Store(_))
        ));
    }

    /// Property tests of the Base64 fields: the plain ones
    /// ([`decode_field`]) and the encrypted ones ([`SessionKey::open`]).
    mod base64_properties {
        use super::*;
        use proptest::prelude::*;

        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

        use crate::test_strategies::near_canonical;

        /// `Base64(iv ‖ AES-GCM(k_enc, plaintext, aad = reference))`, as a
        /// client writes it.
        fn seal(k_enc: &[u8], iv: &[u8; IV_LEN], plaintext: &[u8], reference: &str) -> String {
            let nonce = Nonce::try_from(&iv[..]).unwrap();
            let mut body = plaintext.to_vec();
            let aad = reference.as_bytes();
            let tag = match k_enc.len() {
                16 => Aes128Gcm::new_from_slice(k_enc)
                    .unwrap()
                    .encrypt_inout_detached(&nonce, aad, body.as_mut_slice().into()),
                _ => Aes256Gcm::new_from_slice(k_enc)
                    .unwrap()
                    .encrypt_inout_detached(&nonce, aad, body.as_mut_slice().into()),
            }
            .unwrap();
            BASE64.encode([&iv[..], &body, &tag[..]].concat())
        }

        fn session() -> impl Strategy<Value = SessionKey> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 16).prop_map(|k| SessionKey {
                    scheme: Scheme::EcAes1,
                    k_enc: Zeroizing::new(k),
                }),
                proptest::collection::vec(any::<u8>(), 32).prop_map(|k| SessionKey {
                    scheme: Scheme::Aes2,
                    k_enc: Zeroizing::new(k),
                }),
            ]
        }

        /// The same text made non-canonical: padding dropped, non-zero
        /// unused bits, whitespace inside, or the URL-safe alphabet.
        fn spoil(good: &str, mutation: u8, at: usize) -> Option<String> {
            let pad = good.len() - good.trim_end_matches('=').len();
            match mutation {
                0 => (pad > 0).then(|| good.trim_end_matches('=').to_owned()),
                1 => (pad > 0).then(|| {
                    let mut chars = good.as_bytes().to_vec();
                    let last = good.len() - pad - 1;
                    let v = ALPHABET.iter().position(|&c| c == chars[last]).unwrap();
                    chars[last] = ALPHABET[v | 1];
                    String::from_utf8(chars).unwrap()
                }),
                2 => {
                    let i = at % (good.len() + 1);
                    Some(format!(
                        "{}{}{}",
                        &good[..i],
                        [" ", "\n", "\r\n", "\t"][i % 4],
                        &good[i..]
                    ))
                }
                _ => good
                    .contains(['+', '/'])
                    .then(|| good.replace('+', "-").replace('/', "_")),
            }
        }

        proptest! {
            #[test]
            fn decode_field_of_base64_is_identity(
                data in proptest::collection::vec(any::<u8>(), 0..300),
            ) {
                prop_assert_eq!(decode_field("nonce", &BASE64.encode(&data)), Ok(data));
            }

            #[test]
            fn decode_field_accepts_only_the_canonical_encoding(
                text in prop_oneof![
                    2 => near_canonical(|b| BASE64.encode(b)),
                    1 => "[A-Za-z0-9+/]{0,12}={0,3}",
                    1 => "[A-Za-z0-9+/=_ \\n-]{0,16}",
                    1 => any::<String>(),
                ],
            ) {
                match decode_field("nonce", &text) {
                    Ok(d) => prop_assert_eq!(BASE64.encode(d), text),
                    Err(e) => prop_assert_eq!(
                        e,
                        AgreementError::BadRequest("nonce is not valid Base64".into())
                    ),
                }
            }

            #[test]
            fn decode_field_refuses_non_canonical_variants(
                data in proptest::collection::vec(any::<u8>(), 1..100),
                mutation in 0..4u8,
                at in any::<usize>(),
            ) {
                let bad = spoil(&BASE64.encode(&data), mutation, at);
                prop_assume!(bad.is_some());
                prop_assert!(decode_field("identifier", &bad.unwrap()).is_err());
            }

            #[test]
            fn open_of_a_sealed_field_is_identity(
                key in session(),
                iv in any::<[u8; IV_LEN]>(),
                plaintext in proptest::collection::vec(any::<u8>(), 0..200),
                reference in any::<u128>().prop_map(|r| uuid::Uuid::from_u128(r).to_string()),
            ) {
                let field = seal(&key.k_enc, &iv, &plaintext, &reference);
                let opened = key.open("password", &field, &reference).map(|p| p.to_vec());
                prop_assert_eq!(opened, Ok(plaintext));
            }

            #[test]
            fn open_refuses_non_canonical_base64_of_a_sealed_field(
                key in session(),
                iv in any::<[u8; IV_LEN]>(),
                plaintext in proptest::collection::vec(any::<u8>(), 0..100),
                mutation in 0..4u8,
                at in any::<usize>(),
            ) {
                let reference = "00000000-0000-4000-8000-000000000000";
                let bad = spoil(&seal(&key.k_enc, &iv, &plaintext, reference), mutation, at);
                prop_assume!(bad.is_some());
                let got = key.open("password", &bad.unwrap(), reference).map(|p| p.to_vec());
                prop_assert_eq!(got, Err(FieldError::Base64("password")));
            }

            #[test]
            fn open_refuses_a_flipped_bit_or_another_reference(
                key in session(),
                iv in any::<[u8; IV_LEN]>(),
                plaintext in proptest::collection::vec(any::<u8>(), 0..100),
                bit in any::<prop::sample::Index>(),
                other in 1u128..,
            ) {
                let reference = "00000000-0000-4000-8000-000000000000";
                let field = seal(&key.k_enc, &iv, &plaintext, reference);
                let mut raw = BASE64.decode(&field).unwrap();
                let bit = bit.index(raw.len() * 8);
                raw[bit / 8] ^= 1 << (bit % 8);
                let got = key.open("password", &BASE64.encode(&raw), reference).map(|p| p.to_vec());
                prop_assert_eq!(got, Err(FieldError::Undecryptable("password")));
                let elsewhere = uuid::Uuid::from_u128(other).to_string();
                let got = key.open("password", &field, &elsewhere).map(|p| p.to_vec());
                prop_assert_eq!(got, Err(FieldError::Undecryptable("password")));
            }

            #[test]
            fn open_refuses_fields_shorter_than_iv_and_tag(
                key in session(),
                raw in proptest::collection::vec(any::<u8>(), 0..IV_LEN + TAG_LEN),
            ) {
                let got = key.open("password", &BASE64.encode(&raw), "r").map(|p| p.to_vec());
                prop_assert_eq!(got, Err(FieldError::Short("password")));
            }
        }
    }
}
