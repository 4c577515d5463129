//! The cryptography of the NCP KMS, over the RustCrypto crates only.
//!
//! One [`Engine`] per key version and request: it parses or schedules the
//! version's material once and then serves every item of the request.
//! Nothing here is hand-rolled: AES-256-GCM (`aes-gcm`), AES-256-GCM-SIV
//! (`aes-gcm-siv`), HMAC-SHA256 (`hmac`, `sha2`), RSA-OAEP / RSA-PSS
//! (`rsa`), ECDSA P-256 (`p256`).

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce as GcmNonce, Tag as GcmTag};
use aes_gcm_siv::{Aes256GcmSiv, Nonce as SivNonce, Tag as SivTag};
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, SigningKey};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use rsa::{Generate, PrivateKey};
use zeroize::Zeroizing;

use crate::store::KeyType;

/// AES-GCM(-SIV) nonce length.
pub(crate) const NONCE_LEN: usize = 12;
/// AES-GCM(-SIV) tag length.
pub(crate) const TAG_LEN: usize = 16;
/// Label of the convergent nonce derivation.
pub(crate) const CONVERGENT_LABEL: &[u8] = b"keypipe-ncp-convergent-v1";
/// RSA-OAEP-SHA256 overhead: `2 * 32 + 2` bytes of the modulus.
const OAEP_SHA256_OVERHEAD: usize = 66;

/// Why a cryptographic operation failed. Carries no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CryptoError {
    /// Stored material is not a key of its type (a store fault).
    BadMaterial,
    /// The OS random source failed.
    Random,
    /// The key type cannot do the operation.
    Unsupported,
    /// The plaintext is longer than the key can encrypt.
    TooLong,
    /// The payload is too short to be a ciphertext of this key.
    Truncated,
    /// The payload does not decrypt (wrong key, version or context, or
    /// corrupted).
    Undecryptable,
    /// The signature or encryption primitive failed.
    Failed,
}

/// A key version ready for use.
pub(crate) enum Engine {
    /// AES-256-GCM with a random nonce per message.
    Gcm(Box<Aes256Gcm>),
    /// Convergent AES-256-GCM-SIV: nonce derived from the context, the
    /// context is the associated data.
    Siv {
        cipher: Box<Aes256GcmSiv>,
        nonce: [u8; NONCE_LEN],
        aad: Zeroizing<Vec<u8>>,
    },
    /// RSA-2048 private key.
    Rsa(Box<PrivateKey>),
    /// ECDSA P-256 private key.
    Ecdsa(Box<SigningKey>),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Engine::Gcm(_) => "AES-256-GCM",
            Engine::Siv { .. } => "AES-256-GCM-SIV",
            Engine::Rsa(_) => "RSA",
            Engine::Ecdsa(_) => "ECDSA-P256",
        };
        write!(f, "Engine({kind})")
    }
}

impl Engine {
    /// An engine for one version's `material`. For a convergent AES key,
    /// `context` must be given (the caller checks); it is ignored for the
    /// other kinds.
    pub(crate) fn new(
        key_type: &KeyType,
        convergent: bool,
        material: &[u8],
        context: Option<&[u8]>,
    ) -> Result<Self, CryptoError> {
        match key_type {
            KeyType::Aes256 => {
                if material.len() != 32 {
                    return Err(CryptoError::BadMaterial);
                }
                if convergent {
                    let context = context.ok_or(CryptoError::Unsupported)?;
                    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(material)
                        .map_err(|_| CryptoError::BadMaterial)?;
                    mac.update(CONVERGENT_LABEL);
                    mac.update(context);
                    let tag = Zeroizing::new(mac.finalize().into_bytes());
                    let mut nonce = [0u8; NONCE_LEN];
                    nonce.copy_from_slice(&tag[..NONCE_LEN]);
                    let cipher = Aes256GcmSiv::new_from_slice(material)
                        .map_err(|_| CryptoError::BadMaterial)?;
                    Ok(Engine::Siv {
                        cipher: Box::new(cipher),
                        nonce,
                        aad: Zeroizing::new(context.to_vec()),
                    })
                } else {
                    let cipher = Aes256Gcm::new_from_slice(material)
                        .map_err(|_| CryptoError::BadMaterial)?;
                    Ok(Engine::Gcm(Box::new(cipher)))
                }
            }
            KeyType::Rsa2048 => PrivateKey::from_pkcs8_der(material)
                .map(|k| Engine::Rsa(Box::new(k)))
                .map_err(|_| CryptoError::BadMaterial),
            KeyType::Ecdsa => SigningKey::from_pkcs8_der(material)
                .map(|k| Engine::Ecdsa(Box::new(k)))
                .map_err(|_| CryptoError::BadMaterial),
        }
    }

    /// The longest plaintext this engine encrypts in one message, if
    /// smaller than any request limit (RSA only).
    pub(crate) fn max_plaintext(&self) -> Option<usize> {
        match self {
            Engine::Rsa(k) => Some(k.size().saturating_sub(OAEP_SHA256_OVERHEAD)),
            _ => None,
        }
    }

    /// Encrypts `plaintext`; returns the payload (AES: nonce ‖ ct ‖ tag;
    /// Whether each encryption draws a random nonce (AES-GCM): those are
    /// counted per key version (`budget`).
    pub(crate) fn random_nonces(&self) -> bool {
        matches!(self, Engine::Gcm(_))
    }

    /// RSA: the OAEP ciphertext).
    pub(crate) fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self {
            Engine::Gcm(cipher) => {
                let mut nonce = [0u8; NONCE_LEN];
                getrandom::fill(&mut nonce).map_err(|_| CryptoError::Random)?;
                let mut buf = sealed_buffer(&nonce, plaintext);
                let tag = cipher
                    .encrypt_inout_detached(
                        &GcmNonce::from(nonce),
                        &[],
                        (&mut buf[NONCE_LEN..]).into(),
                    )
                    .map_err(|_| CryptoError::Failed)?;
                buf.extend_from_slice(&tag);
                Ok(std::mem::take(&mut *buf))
            }
            Engine::Siv { cipher, nonce, aad } => {
                let mut buf = sealed_buffer(nonce, plaintext);
                let tag = cipher
                    .encrypt_inout_detached(
                        &SivNonce::from(*nonce),
                        aad,
                        (&mut buf[NONCE_LEN..]).into(),
                    )
                    .map_err(|_| CryptoError::Failed)?;
                buf.extend_from_slice(&tag);
                Ok(std::mem::take(&mut *buf))
            }
            Engine::Rsa(key) => {
                if Some(plaintext.len()) > self.max_plaintext() {
                    return Err(CryptoError::TooLong);
                }
                key.as_public_key()
                    .oaep_encrypt::<Sha256>(plaintext)
                    .map_err(|_| CryptoError::Failed)
            }
            Engine::Ecdsa(_) => Err(CryptoError::Unsupported),
        }
    }

    /// Decrypts a payload made by [`Engine::encrypt`].
    pub(crate) fn decrypt(&self, payload: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match self {
            Engine::Gcm(cipher) => {
                let Sealed { nonce, body, tag } = split_sealed(payload)?;
                let nonce = GcmNonce::try_from(nonce).map_err(|_| CryptoError::Truncated)?;
                let tag = GcmTag::try_from(tag).map_err(|_| CryptoError::Truncated)?;
                let mut buf = Zeroizing::new(body.to_vec());
                cipher
                    .decrypt_inout_detached(&nonce, &[], buf.as_mut_slice().into(), &tag)
                    .map_err(|_| CryptoError::Undecryptable)?;
                Ok(buf)
            }
            Engine::Siv { cipher, aad, .. } => {
                let Sealed { nonce, body, tag } = split_sealed(payload)?;
                let nonce = SivNonce::try_from(nonce).map_err(|_| CryptoError::Truncated)?;
                let tag = SivTag::try_from(tag).map_err(|_| CryptoError::Truncated)?;
                let mut buf = Zeroizing::new(body.to_vec());
                cipher
                    .decrypt_inout_detached(&nonce, aad, buf.as_mut_slice().into(), &tag)
                    .map_err(|_| CryptoError::Undecryptable)?;
                Ok(buf)
            }
            Engine::Rsa(key) => {
                if payload.len() != key.size() {
                    return Err(CryptoError::Truncated);
                }
                key.oaep_decrypt::<Sha256>(payload)
                    .map(Zeroizing::new)
                    .map_err(|_| CryptoError::Undecryptable)
            }
            Engine::Ecdsa(_) => Err(CryptoError::Unsupported),
        }
    }

    /// Signs `data`: RSA-PSS-SHA256 (salt 32) or ECDSA P-256/SHA-256 (DER).
    pub(crate) fn sign(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self {
            Engine::Rsa(key) => key
                .pss_sign::<Sha256>(data)
                .map_err(|_| CryptoError::Failed),
            Engine::Ecdsa(key) => {
                let sig: DerSignature = key.try_sign(data).map_err(|_| CryptoError::Failed)?;
                Ok(sig.as_bytes().to_vec())
            }
            Engine::Gcm(_) | Engine::Siv { .. } => Err(CryptoError::Unsupported),
        }
    }

    /// Whether `signature` is a valid signature of `data` by this key. Any
    /// byte string that is not one (wrong length, not DER, tampered) is
    /// `false`.
    pub(crate) fn verify(&self, data: &[u8], signature: &[u8]) -> Result<bool, CryptoError> {
        match self {
            Engine::Rsa(key) => Ok(key
                .as_public_key()
                .pss_verify::<Sha256>(data, signature)
                .is_ok()),
            Engine::Ecdsa(key) => Ok(match DerSignature::from_bytes(signature) {
                Ok(sig) => key.verifying_key().verify(data, &sig).is_ok(),
                Err(_) => false,
            }),
            Engine::Gcm(_) | Engine::Siv { .. } => Err(CryptoError::Unsupported),
        }
    }
}

/// `nonce ‖ plaintext`, with room for the tag, in a zeroizing buffer.
fn sealed_buffer(nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN));
    buf.extend_from_slice(nonce);
    buf.extend_from_slice(plaintext);
    buf
}

/// The parts of an AES payload.
struct Sealed<'a> {
    nonce: &'a [u8],
    body: &'a [u8],
    tag: &'a [u8],
}

/// Splits nonce ‖ ct ‖ tag.
fn split_sealed(payload: &[u8]) -> Result<Sealed<'_>, CryptoError> {
    if payload.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Truncated);
    }
    let (nonce, rest) = payload.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    Ok(Sealed { nonce, body, tag })
}

/// Fresh key material for `key_type`, drawn from a ChaCha20 RNG seeded
/// with `seed` (the caller mixes OS and QKD entropy into the seed; equal
/// seeds give equal material).
///
/// Formats: `AES256` 32 raw bytes; `RSA2048` and `ECDSA` (P-256) PKCS#8
/// DER private keys.
pub fn generate_material(key_type: KeyType, seed: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    match key_type {
        KeyType::Aes256 => {
            let mut key = Zeroizing::new(vec![0u8; 32]);
            rng.fill_bytes(&mut key);
            key
        }
        KeyType::Rsa2048 => {
            // Neither step can fail: the RNG is infallible, 2048 bits and
            // e = 65537 are valid parameters, and the key encodes.
            let key = PrivateKey::new(&mut rng, 2048).expect("RSA-2048 generation");
            let der = key.to_pkcs8_der().expect("RSA PKCS#8 encoding");
            der.to_bytes()
        }
        KeyType::Ecdsa => {
            let key = SigningKey::generate_from_rng(&mut rng);
            let der = key.to_pkcs8_der().expect("P-256 PKCS#8 encoding");
            der.to_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_material_is_seeded() {
        let a = generate_material(KeyType::Aes256, &[1; 32]);
        let b = generate_material(KeyType::Aes256, &[1; 32]);
        let c = generate_material(KeyType::Aes256, &[2; 32]);
        assert_eq!(a.len(), 32);
        assert_eq!(*a, *b);
        assert_ne!(*a, *c);
    }

    #[test]
    fn ecdsa_material_is_pkcs8() {
        let der = generate_material(KeyType::Ecdsa, &[3; 32]);
        let engine = Engine::new(&KeyType::Ecdsa, false, &der, None).unwrap();
        let sig = engine.sign(b"m").unwrap();
        assert!(engine.verify(b"m", &sig).unwrap());
        assert!(!engine.verify(b"n", &sig).unwrap());
        assert!(!engine.verify(b"m", b"not der").unwrap());
        assert_eq!(engine.encrypt(b"m"), Err(CryptoError::Unsupported));
    }

    #[test]
    fn gcm_payload_layout() {
        let key = generate_material(KeyType::Aes256, &[4; 32]);
        let engine = Engine::new(&KeyType::Aes256, false, &key, None).unwrap();
        let p1 = engine.encrypt(b"hello").unwrap();
        let p2 = engine.encrypt(b"hello").unwrap();
        assert_eq!(p1.len(), NONCE_LEN + 5 + TAG_LEN);
        assert_ne!(p1[..NONCE_LEN], p2[..NONCE_LEN], "fresh nonces");
        assert_eq!(&**engine.decrypt(&p1).unwrap(), b"hello");
        assert_eq!(engine.decrypt(&p1[..27]), Err(CryptoError::Truncated));
        let mut bad = p1.clone();
        bad[NONCE_LEN] ^= 1;
        assert_eq!(engine.decrypt(&bad), Err(CryptoError::Undecryptable));
        // Interoperable with the plain `Aead` API: nonce ‖ ct ‖ tag.
        use aes_gcm::aead::Aead;
        let plain = Aes256Gcm::new_from_slice(&key).unwrap();
        let nonce = GcmNonce::try_from(&p1[..NONCE_LEN]).unwrap();
        assert_eq!(plain.decrypt(&nonce, &p1[NONCE_LEN..]).unwrap(), b"hello");
    }

    #[test]
    fn siv_nonce_is_derived_from_context() {
        let key = generate_material(KeyType::Aes256, &[5; 32]);
        let e1 = Engine::new(&KeyType::Aes256, true, &key, Some(b"ctx")).unwrap();
        let p1 = e1.encrypt(b"same").unwrap();
        assert_eq!(p1, e1.encrypt(b"same").unwrap());
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        mac.update(b"keypipe-ncp-convergent-v1ctx");
        assert_eq!(p1[..NONCE_LEN], mac.finalize().into_bytes()[..NONCE_LEN]);
        let e2 = Engine::new(&KeyType::Aes256, true, &key, Some(b"other")).unwrap();
        assert_eq!(e2.decrypt(&p1), Err(CryptoError::Undecryptable));
    }

    #[test]
    fn bad_material_is_refused() {
        assert!(matches!(
            Engine::new(&KeyType::Aes256, false, &[0; 31], None),
            Err(CryptoError::BadMaterial)
        ));
        assert!(matches!(
            Engine::new(&KeyType::Rsa2048, false, b"junk", None),
            Err(CryptoError::BadMaterial)
        ));
        assert!(matches!(
            Engine::new(&KeyType::Ecdsa, false, b"junk", None),
            Err(CryptoError::BadMaterial)
        ));
    }
}
