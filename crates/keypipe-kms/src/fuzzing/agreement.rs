//! The key-agreement and login fuzz entry points: client public keys and
//! the group checks under them, the agreement request, and the login
//! bodies with the password transport under an agreement's key.

use std::time::Instant;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroizing;

use crate::agreement::ecdh::Curve;
use crate::agreement::ffdhe::Group;
use crate::agreement::public_key::{self, KeyEncoding, PeerKey};
use crate::agreement::{
    AgreementConfig, AgreementService, ClientKeyDerivationSpec, ReferenceError, Scheme, SessionKey,
};
use crate::login::{LoginRequest, RefreshRequest};

/// `true` when `a < b` as big-endian numbers.
fn be_less(a: &[u8], b: &[u8]) -> bool {
    let strip = |x: &[u8]| {
        let zeros = x.iter().take_while(|&&b| b == 0).count();
        x[zeros..].to_vec()
    };
    let (a, b) = (strip(a), strip(b));
    (a.len(), a) < (b.len(), b)
}

/// `p - 1` of a group, big-endian.
fn p_minus_1(group: Group) -> Vec<u8> {
    let mut p = group.prime_be().to_vec();
    let last = p.len() - 1;
    p[last] -= 1; // p is odd
    p
}

/// Checks a DH value the code accepted: `1 < y < p - 1`.
fn check_dh_range(group: Group, y: &[u8]) {
    assert!(y.len() <= group.byte_len());
    assert!(be_less(&[1], y), "accepted y <= 1");
    assert!(be_less(y, &p_minus_1(group)), "accepted y >= p - 1");
}

/// Client public keys (`agreement::public_key::parse`, raw and SPKI DER)
/// and the group checks under it (`Group::validate`,
/// `Curve::point_from_sec1`), on the same bytes.
///
/// Input: the key bytes. Invariants: an accepted key names its scheme's
/// group; DH values lie in `1 < y < p - 1`; EC points are uncompressed
/// encodings of themselves; the key encoded again in the same form parses
/// to the same key.
pub fn agreement_public_key(data: &[u8]) {
    match public_key::parse(data) {
        Ok((scheme, encoding, PeerKey::Dh(group, y))) => {
            let want = match group {
                Group::Ffdhe2048 => Scheme::Aes1,
                Group::Ffdhe3072 => Scheme::Aes2,
            };
            assert_eq!(scheme, want);
            if encoding == KeyEncoding::Raw {
                assert_eq!(y, data, "a raw value is its own encoding");
            }
            check_dh_range(group, &y);
            let again = public_key::encode_dh(group, &y, encoding);
            match public_key::parse(&again) {
                Ok((s, e, PeerKey::Dh(g, y2))) => {
                    assert_eq!((s, e, g), (scheme, encoding, group));
                    assert!(!be_less(&y, &y2) && !be_less(&y2, &y), "same value");
                }
                other => panic!("a DH key encoded again: {other:?}"),
            }
        }
        Ok((scheme, encoding, PeerKey::Ec(point))) => {
            let want = match point.curve() {
                Curve::P256 => Scheme::EcAes1,
                Curve::P384 => Scheme::EcAes2,
            };
            assert_eq!(scheme, want);
            let sec1 = point.to_sec1();
            assert_eq!(sec1.len(), point.curve().point_len());
            if encoding == KeyEncoding::Raw {
                assert_eq!(sec1, data, "a raw point is its own encoding");
            }
            let again = public_key::encode_ec(&point, encoding);
            match public_key::parse(&again) {
                Ok((s, e, PeerKey::Ec(p))) => {
                    assert_eq!((s, e, p.to_sec1()), (scheme, encoding, sec1));
                }
                other => panic!("an EC key encoded again: {other:?}"),
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
    // The subgroup check costs a Jacobi symbol of the prime's size: one
    // group per input (raw lengths were checked by `parse` already).
    if ![256, 384].contains(&data.len()) {
        let group = if data.len().is_multiple_of(2) {
            Group::Ffdhe2048
        } else {
            Group::Ffdhe3072
        };
        if group.validate(data).is_ok() {
            check_dh_range(group, data);
        }
    }
    for curve in [Curve::P256, Curve::P384] {
        if let Ok(point) = curve.point_from_sec1(data) {
            assert_eq!(point.curve(), curve);
            assert_eq!(point.to_sec1(), data, "an uncompressed point");
        }
    }
}

/// Encrypts a login field as clients do: `Base64(iv ‖ AES-GCM(k_enc,
/// plaintext, aad = reference))`.
fn seal_field(k_enc: &[u8], iv: [u8; 12], plaintext: &[u8], reference: &str) -> String {
    let mut buf = plaintext.to_vec();
    let nonce = Nonce::from(iv);
    let tag = match k_enc.len() {
        16 => Aes128Gcm::new_from_slice(k_enc)
            .expect("a 16-byte key")
            .encrypt_inout_detached(&nonce, reference.as_bytes(), buf.as_mut_slice().into()),
        _ => Aes256Gcm::new_from_slice(k_enc)
            .expect("a 32-byte key")
            .encrypt_inout_detached(&nonce, reference.as_bytes(), buf.as_mut_slice().into()),
    }
    .expect("AES-GCM encrypts");
    let mut out = iv.to_vec();
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    BASE64.encode(out)
}

/// The key-agreement request (`POST /rest/key-agreement`): the JSON body
/// (`ClientKeyDerivationSpec`) and `AgreementService::agree`, on a fresh
/// service.
///
/// Input: the JSON body. Invariants: an agreement answers with a scheme
/// the client offered, a server key of the same scheme in the client's
/// encoding, a 32-byte proof, and a reference that can be taken once,
/// whose key opens what a client seals under it.
pub fn agreement_request(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<ClientKeyDerivationSpec>(data) else {
        return;
    };
    let service = AgreementService::new(AgreementConfig::default());
    let now = Instant::now();
    let info = match service.agree(&spec, now) {
        Ok(info) => info,
        Err(e) => {
            assert_eq!(service.pending(), 0, "a refused agreement leaves no state");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(
        spec.supported_schemes
            .iter()
            .any(|s| s == info.scheme.name()),
        "a scheme the client did not offer"
    );
    let client_key = BASE64.decode(&spec.public_key).expect("accepted Base64");
    let (_, client_encoding, _) = public_key::parse(&client_key).expect("accepted key");
    let server_key = BASE64.decode(&info.public_key).expect("Base64 server key");
    let (scheme, encoding, _) = public_key::parse(&server_key).expect("the server key parses");
    assert_eq!((scheme, encoding), (info.scheme, client_encoding));
    assert_eq!(BASE64.decode(&info.proof).map(|p| p.len()), Ok(32));
    assert_eq!(
        BASE64.decode(&info.identifier).as_deref(),
        Ok(&b"Broker"[..])
    );
    let (reference, key) = service
        .take(&info.client_reference_id, now)
        .expect("a fresh reference");
    assert_eq!(reference, info.client_reference_id);
    assert_eq!(key.k_enc.len(), info.scheme.enc_key_len());
    assert_eq!(
        service.take(&reference, now).err(),
        Some(ReferenceError::Used)
    );
    let sealed = seal_field(&key.k_enc, [9; 12], b"secret", &reference);
    let opened = key.open("password", &sealed, &reference).expect("opens");
    assert_eq!(opened.as_slice(), b"secret");
}

/// The login request bodies (`LoginRequest`, `RefreshRequest`, as the
/// server reads them from JSON) and the password transport
/// (`SessionKey::open`) under AES-128 and AES-256 keys.
///
/// Input: the JSON body. Invariants: an opened password is the field's
/// ciphertext without IV and tag; what a client seals (any password: the
/// body's bytes) opens to itself, and a change of reference or of any bit
/// makes it fail.
pub fn login_request(data: &[u8]) {
    let reference = "5b6b3a54-2f64-4ad1-9f5c-f1c1e6a6f0a1";
    let keys = [
        SessionKey {
            scheme: Scheme::EcAes1,
            k_enc: Zeroizing::new(vec![3; 16]),
        },
        SessionKey {
            scheme: Scheme::Aes2,
            k_enc: Zeroizing::new(vec![5; 32]),
        },
    ];
    if let Ok(req) = serde_json::from_slice::<LoginRequest>(data) {
        let _ = format!("{req:?}");
        for key in &keys {
            if let Ok(password) = key.open("password", &req.password, reference) {
                let raw = BASE64
                    .decode(req.password.as_bytes())
                    .expect("opened Base64");
                assert_eq!(password.len() + 28, raw.len());
            }
        }
    }
    if let Ok(req) = serde_json::from_slice::<RefreshRequest>(data) {
        assert_eq!(format!("{req:?}"), "RefreshRequest(<redacted>)");
    }
    let iv: [u8; 12] = std::array::from_fn(|i| data.get(i).copied().unwrap_or(0));
    for key in &keys {
        let sealed = seal_field(&key.k_enc, iv, data, reference);
        let opened = key.open("password", &sealed, reference).expect("opens");
        assert_eq!(opened.as_slice(), data, "seal/open round trip");
        assert!(key.open("password", &sealed, "other").is_err());
        let mut raw = BASE64.decode(&sealed).expect("Base64");
        let at = data.len() % raw.len();
        raw[at] ^= 0x80;
        assert!(
            key.open("password", &BASE64.encode(&raw), reference)
                .is_err()
        );
    }
}
