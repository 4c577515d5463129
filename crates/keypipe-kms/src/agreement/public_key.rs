//! Public keys on the wire: SubjectPublicKeyInfo DER or raw, parsed into a
//! validated key of one scheme, and the server's key encoded the same way.
//!
//! Raw encodings are told apart by length: 65 bytes (uncompressed SEC1,
//! P-256), 97 (P-384), 256 (`y` of FFDHE-2048, big-endian, padded to the
//! prime's length) or 384 (FFDHE-3072). Anything else must be SPKI DER:
//!
//! - EC: `id-ecPublicKey` with the named curve `prime256v1` or `secp384r1`
//!   and an uncompressed point (compressed points are refused, raw or not);
//! - DH: X9.42 `dhpublicnumber` (parameters `p, g, q`) or PKCS #3
//!   `dhKeyAgreement` (parameters `p, g`, optional private-value length);
//!   `p` and `g` must be the RFC 7919 group's (and `q = (p−1)/2`); X9.42's
//!   optional `j` and `validationParms` are refused; the key is the DER
//!   INTEGER `y`. The server answers in the form it received.

use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, UintRef};
use der::{Decode, Encode, Sequence};
use spki::{AlgorithmIdentifier, SubjectPublicKeyInfo, SubjectPublicKeyInfoRef};

use super::Scheme;
use super::ecdh::{Curve, EcKeyError, PeerPoint};
use super::ffdhe::{DhKeyError, Group};

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const DH_PUBLIC_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10046.2.1");
const DH_KEY_AGREEMENT: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.3.1");

/// How a public key was encoded; the server answers in the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEncoding {
    /// Raw: SEC1 uncompressed point, or `y` padded to the prime's length.
    Raw,
    /// SubjectPublicKeyInfo DER (for DH: X9.42 `dhpublicnumber`).
    Spki,
    /// SubjectPublicKeyInfo DER with PKCS #3 `dhKeyAgreement` (DH only).
    SpkiPkcs3,
}

/// A validated client key.
#[derive(Debug, Clone)]
pub enum PeerKey {
    /// A finite-field value `y` of a group, big-endian, at most the
    /// prime's length.
    Dh(Group, Vec<u8>),
    /// An EC point (it knows its curve).
    Ec(PeerPoint),
}

/// Why a public key was refused (the message never quotes the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Neither a raw length nor parseable SPKI DER.
    #[error(
        "public_key is neither a raw key (65 bytes P-256, 97 P-384, 256 FFDHE-2048, \
         384 FFDHE-3072) nor SubjectPublicKeyInfo DER"
    )]
    Unrecognized,
    /// SPKI of an algorithm or curve no scheme uses.
    #[error(
        "public_key: unsupported algorithm or curve {0} (supported: P-256, P-384, FFDHE-2048, FFDHE-3072)"
    )]
    Algorithm(String),
    /// DH parameters that are not an RFC 7919 group.
    #[error("public_key: DH parameters are not RFC 7919 ffdhe2048 or ffdhe3072 ({0})")]
    DhParameters(&'static str),
    /// A DH value refused.
    #[error("public_key ({group}) {error}")]
    Dh {
        /// The group.
        group: &'static str,
        /// Why.
        error: DhKeyError,
    },
    /// An EC point refused.
    #[error("public_key ({group}) {error}")]
    Ec {
        /// The curve.
        group: &'static str,
        /// Why.
        error: EcKeyError,
    },
}

/// The DH domain parameters of both SPKI forms: `p, g` and, for X9.42,
/// `q` (for PKCS #3 the optional third integer is the private-value
/// length, ignored).
#[derive(Sequence)]
struct DhParams<'a> {
    p: UintRef<'a>,
    g: UintRef<'a>,
    #[asn1(optional = "true")]
    third: Option<UintRef<'a>>,
}

/// The scheme of a group.
fn dh_scheme(group: Group) -> Scheme {
    match group {
        Group::Ffdhe2048 => Scheme::Aes1,
        Group::Ffdhe3072 => Scheme::Aes2,
    }
}

fn ec_scheme(curve: Curve) -> Scheme {
    match curve {
        Curve::P256 => Scheme::EcAes1,
        Curve::P384 => Scheme::EcAes2,
    }
}

/// Parses and validates a client's public key: its scheme, encoding and
/// value.
pub fn parse(bytes: &[u8]) -> Result<(Scheme, KeyEncoding, PeerKey), KeyError> {
    for curve in [Curve::P256, Curve::P384] {
        if bytes.len() == curve.point_len() {
            return ec_point(curve, curve.point_from_sec1(bytes), KeyEncoding::Raw);
        }
    }
    for group in [Group::Ffdhe2048, Group::Ffdhe3072] {
        if bytes.len() == group.byte_len() {
            return dh_value(group, bytes, KeyEncoding::Raw);
        }
    }
    let spki = SubjectPublicKeyInfoRef::from_der(bytes).map_err(|_| KeyError::Unrecognized)?;
    let oid = spki.algorithm.oid;
    if oid == ID_EC_PUBLIC_KEY {
        let curve_oid = spki
            .algorithm
            .parameters
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or_else(|| KeyError::Algorithm("(EC key without a named curve)".into()))?;
        let curve = match curve_oid {
            SECP256R1 => Curve::P256,
            SECP384R1 => Curve::P384,
            other => return Err(KeyError::Algorithm(other.to_string())),
        };
        // The point itself must be uncompressed, as in the raw form.
        let point = spki
            .subject_public_key
            .as_bytes()
            .ok_or(EcKeyError::Invalid)
            .and_then(|p| curve.point_from_sec1(p));
        return ec_point(curve, point, KeyEncoding::Spki);
    }
    let encoding = match oid {
        DH_PUBLIC_NUMBER => KeyEncoding::Spki,
        DH_KEY_AGREEMENT => KeyEncoding::SpkiPkcs3,
        other => return Err(KeyError::Algorithm(other.to_string())),
    };
    let params = spki
        .algorithm
        .parameters
        .ok_or(KeyError::DhParameters("no parameters"))?
        .decode_as::<DhParams<'_>>()
        .map_err(|_| KeyError::DhParameters("malformed parameters"))?;
    let group = [Group::Ffdhe2048, Group::Ffdhe3072]
        .into_iter()
        .find(|g| params.p.as_bytes() == g.prime_be())
        .ok_or(KeyError::DhParameters("unknown prime"))?;
    if params.g.as_bytes() != [2] {
        return Err(KeyError::DhParameters("generator is not 2"));
    }
    if encoding == KeyEncoding::Spki {
        let q = params.third.ok_or(KeyError::DhParameters("no q"))?;
        if q.as_bytes() != group.q_be() {
            return Err(KeyError::DhParameters("q is not (p-1)/2"));
        }
    }
    let y = spki
        .subject_public_key
        .as_bytes()
        .and_then(|b| UintRef::from_der(b).ok())
        .ok_or(KeyError::Dh {
            group: dh_scheme(group).group_name(),
            error: DhKeyError::OutOfRange,
        })?;
    dh_value(group, y.as_bytes(), encoding)
}

fn ec_point(
    curve: Curve,
    point: Result<PeerPoint, EcKeyError>,
    encoding: KeyEncoding,
) -> Result<(Scheme, KeyEncoding, PeerKey), KeyError> {
    let scheme = ec_scheme(curve);
    match point {
        Ok(p) => Ok((scheme, encoding, PeerKey::Ec(p))),
        Err(error) => Err(KeyError::Ec {
            group: scheme.group_name(),
            error,
        }),
    }
}

fn dh_value(
    group: Group,
    y: &[u8],
    encoding: KeyEncoding,
) -> Result<(Scheme, KeyEncoding, PeerKey), KeyError> {
    let scheme = dh_scheme(group);
    group.validate(y).map_err(|error| KeyError::Dh {
        group: scheme.group_name(),
        error,
    })?;
    Ok((scheme, encoding, PeerKey::Dh(group, y.to_vec())))
}

/// The server's DH value `y` (padded) in `encoding`.
pub fn encode_dh(group: Group, y: &[u8], encoding: KeyEncoding) -> Vec<u8> {
    if encoding == KeyEncoding::Raw {
        return y.to_vec();
    }
    let (oid, third) = match encoding {
        KeyEncoding::SpkiPkcs3 => (DH_KEY_AGREEMENT, None),
        _ => (
            DH_PUBLIC_NUMBER,
            Some(UintRef::new(group.q_be()).expect("q fits")),
        ),
    };
    let params = DhParams {
        p: UintRef::new(group.prime_be()).expect("p fits"),
        g: UintRef::new(&[2]).expect("2 fits"),
        third,
    };
    let params = params.to_der().expect("DH parameters encode");
    let y_der = UintRef::new(y).and_then(|y| y.to_der()).expect("y encodes");
    let spki = SubjectPublicKeyInfo {
        algorithm: AlgorithmIdentifier {
            oid,
            parameters: Some(AnyRef::from_der(&params).expect("just encoded")),
        },
        subject_public_key: BitStringRef::from_bytes(&y_der).expect("y fits"),
    };
    spki.to_der().expect("SPKI encodes")
}

/// The server's EC point in `encoding`.
pub fn encode_ec(point: &PeerPoint, encoding: KeyEncoding) -> Vec<u8> {
    match encoding {
        KeyEncoding::Raw => point.to_sec1(),
        _ => point.to_spki(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoding_round_trips() {
        for group in [Group::Ffdhe2048, Group::Ffdhe3072] {
            let (_, y) = group.generate().unwrap();
            for enc in [KeyEncoding::Raw, KeyEncoding::Spki, KeyEncoding::SpkiPkcs3] {
                let bytes = encode_dh(group, &y, enc);
                let (scheme, got_enc, key) = parse(&bytes).unwrap();
                assert_eq!(scheme, dh_scheme(group));
                assert_eq!(got_enc, enc);
                let PeerKey::Dh(got_group, got) = key else {
                    panic!()
                };
                assert_eq!(got_group, group);
                assert_eq!(UintRef::new(&got).unwrap(), UintRef::new(&y).unwrap());
            }
        }
        for curve in [Curve::P256, Curve::P384] {
            let (_, point) = curve.generate().unwrap();
            for enc in [KeyEncoding::Raw, KeyEncoding::Spki] {
                let bytes = encode_ec(&point, enc);
                let (scheme, got_enc, key) = parse(&bytes).unwrap();
                assert_eq!((scheme, got_enc), (ec_scheme(curve), enc));
                let PeerKey::Ec(got) = key else { panic!() };
                assert_eq!(got.to_sec1(), point.to_sec1());
            }
        }
    }

    #[test]
    fn foreign_parameters_and_garbage_are_refused() {
        let (_, y) = Group::Ffdhe2048.generate().unwrap();
        let good = encode_dh(Group::Ffdhe2048, &y, KeyEncoding::Spki);
        // Flip a bit inside p: unknown prime.
        let mut bad = good.clone();
        bad[40] ^= 0x10;
        assert!(parse(&bad).is_err());
        assert_eq!(
            parse(&good[..good.len() - 1]).unwrap_err(),
            KeyError::Unrecognized
        );
        assert_eq!(parse(b"hello").unwrap_err(), KeyError::Unrecognized);
        assert_eq!(parse(&[]).unwrap_err(), KeyError::Unrecognized);
    }

    /// Property tests: keys made with the curve crates (and FFDHE values
    /// made as squares mod p) parse back to themselves in every encoding;
    /// damaged, truncated, out-of-range and off-subgroup keys are refused.
    mod properties {
        use super::*;
        use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
        use crypto_bigint::{Odd, U2048, U3072, Uint};
        use p256::elliptic_curve::sec1::ToSec1Point;
        use p256::pkcs8::EncodePublicKey;
        use proptest::prelude::*;
        use proptest::test_runner::TestCaseError;

        const DH_ENCODINGS: [KeyEncoding; 3] =
            [KeyEncoding::Raw, KeyEncoding::Spki, KeyEncoding::SpkiPkcs3];

        /// A public key made outside the module.
        #[derive(Debug, Clone)]
        enum TestKey {
            /// `y`, padded to the prime's length.
            Dh(Group, Vec<u8>),
            P256(p256::PublicKey),
            P384(p384::PublicKey),
        }

        impl TestKey {
            /// Its encodings: for EC made by the curve crates (SEC1 and
            /// SPKI DER), for DH by the module's `encode_dh`.
            fn encodings(&self) -> Vec<(KeyEncoding, Vec<u8>)> {
                match self {
                    TestKey::Dh(group, y) => DH_ENCODINGS
                        .iter()
                        .map(|&e| (e, encode_dh(*group, y, e)))
                        .collect(),
                    TestKey::P256(k) => vec![
                        (KeyEncoding::Raw, k.to_sec1_point(false).as_bytes().to_vec()),
                        (
                            KeyEncoding::Spki,
                            k.to_public_key_der().unwrap().as_bytes().to_vec(),
                        ),
                    ],
                    TestKey::P384(k) => vec![
                        (KeyEncoding::Raw, k.to_sec1_point(false).as_bytes().to_vec()),
                        (
                            KeyEncoding::Spki,
                            k.to_public_key_der().unwrap().as_bytes().to_vec(),
                        ),
                    ],
                }
            }

            fn scheme(&self) -> Scheme {
                match self {
                    TestKey::Dh(group, _) => dh_scheme(*group),
                    TestKey::P256(_) => Scheme::EcAes1,
                    TestKey::P384(_) => Scheme::EcAes2,
                }
            }

            /// Bytes at the end of an encoding that are the key's value
            /// (a flip there may name another valid key); for DH in DER
            /// the minimal `y`, for EC `X ‖ Y`.
            fn value_len(&self, encoding: KeyEncoding) -> usize {
                match (self, encoding) {
                    (TestKey::Dh(_, y), KeyEncoding::Raw) => y.len(),
                    (TestKey::Dh(_, y), _) => minimal(y).len(),
                    (TestKey::P256(_), _) => 64,
                    (TestKey::P384(_), _) => 96,
                }
            }

            /// True when `got` is this key.
            fn is(&self, got: &PeerKey) -> bool {
                match (self, got) {
                    (TestKey::Dh(g, y), PeerKey::Dh(h, z)) => g == h && minimal(y) == minimal(z),
                    (TestKey::P256(k), PeerKey::Ec(PeerPoint::P256(p))) => k == p,
                    (TestKey::P384(k), PeerKey::Ec(PeerPoint::P384(p))) => k == p,
                    _ => false,
                }
            }
        }

        fn minimal(bytes: &[u8]) -> &[u8] {
            &bytes[bytes.iter().take_while(|&&b| b == 0).count()..]
        }

        fn group() -> impl Strategy<Value = Group> {
            prop_oneof![Just(Group::Ffdhe2048), Just(Group::Ffdhe3072)]
        }

        /// `r² mod p`, or `−r² mod p` (a non-residue, as −1 is one for
        /// p ≡ 3 mod 4), padded to the prime's length; `r` has fewer bytes
        /// than p.
        fn square(group: Group, r: &[u8], negate: bool) -> Vec<u8> {
            fn go<const L: usize>(p: &[u8], r: &[u8], negate: bool) -> Vec<u8> {
                let p = Odd::new(Uint::<L>::from_be_slice(p)).expect("odd");
                let params = FixedMontyParams::new_vartime(p);
                let mut padded = vec![0u8; Uint::<L>::BYTES];
                padded[Uint::<L>::BYTES - r.len()..].copy_from_slice(r);
                let x = FixedMontyForm::new(&Uint::<L>::from_be_slice(&padded), &params).square();
                let x = if negate { x.neg() } else { x };
                x.retrieve().to_be_bytes().as_ref().to_vec()
            }
            match group {
                Group::Ffdhe2048 => go::<{ U2048::LIMBS }>(group.prime_be(), r, negate),
                Group::Ffdhe3072 => go::<{ U3072::LIMBS }>(group.prime_be(), r, negate),
            }
        }

        /// `(group, r)` with `2 ≤ r < 2^(8·(len−1))`, so `r ≠ 0, ±1 mod p`.
        fn group_and_root() -> impl Strategy<Value = (Group, Vec<u8>)> {
            (group(), proptest::collection::vec(any::<u8>(), 383)).prop_filter_map(
                "r is 0 or 1",
                |(group, r)| {
                    let r = r[383 - (group.byte_len() - 1)..].to_vec();
                    (minimal(&r).len() > 1 || minimal(&r).first() > Some(&1)).then_some((group, r))
                },
            )
        }

        fn dh_key() -> impl Strategy<Value = TestKey> {
            group_and_root().prop_map(|(group, r)| TestKey::Dh(group, square(group, &r, false)))
        }

        fn ec_key() -> impl Strategy<Value = TestKey> {
            prop_oneof![
                any::<[u8; 32]>().prop_filter_map("not a P-256 scalar", |s| {
                    p256::SecretKey::from_slice(&s)
                        .ok()
                        .map(|k| TestKey::P256(k.public_key()))
                }),
                any::<[u8; 48]>().prop_filter_map("not a P-384 scalar", |s| {
                    p384::SecretKey::from_slice(&s)
                        .ok()
                        .map(|k| TestKey::P384(k.public_key()))
                }),
            ]
        }

        fn any_key() -> impl Strategy<Value = TestKey> {
            prop_oneof![dh_key(), ec_key()]
        }

        fn is_raw_len(len: usize) -> bool {
            [65, 97, 256, 384].contains(&len)
        }

        /// `a + b`, big-endian, `a`'s width (no carry out of it).
        fn add(a: &[u8], b: &[u8]) -> Vec<u8> {
            let mut out = a.to_vec();
            let mut carry = 0u16;
            for i in 0..out.len() {
                let j = out.len() - 1 - i;
                let bi = b.len().checked_sub(1 + i).map_or(0, |k| b[k]);
                let s = u16::from(out[j]) + u16::from(bi) + carry;
                out[j] = s as u8;
                carry = s >> 8;
            }
            assert_eq!(carry, 0);
            out
        }

        fn round_trips(key: &TestKey) -> Result<(), TestCaseError> {
            for (encoding, bytes) in key.encodings() {
                let parsed = parse(&bytes);
                let Ok((scheme, got_encoding, got)) = parsed else {
                    return Err(TestCaseError::fail(format!(
                        "{encoding:?} refused: {parsed:?}"
                    )));
                };
                prop_assert_eq!((scheme, got_encoding), (key.scheme(), encoding));
                prop_assert!(key.is(&got), "{:?} parsed to {:?}", key, got);
                // The server answers in the same encoding, byte for byte.
                let again = match &got {
                    PeerKey::Dh(group, y) => {
                        let mut padded = vec![0u8; group.byte_len() - y.len()];
                        padded.extend_from_slice(y);
                        encode_dh(*group, &padded, encoding)
                    }
                    PeerKey::Ec(point) => encode_ec(point, encoding),
                };
                prop_assert_eq!(again, bytes);
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn ffdhe_values_round_trip_in_every_encoding(key in dh_key()) {
                round_trips(&key)?;
            }

            #[test]
            fn ffdhe_values_outside_the_subgroup_are_refused_in_every_encoding(
                (group, r) in group_and_root(),
            ) {
                let y = square(group, &r, true);
                for encoding in DH_ENCODINGS {
                    prop_assert_eq!(
                        parse(&encode_dh(group, &y, encoding)).map(|_| ()),
                        Err(KeyError::Dh {
                            group: dh_scheme(group).group_name(),
                            error: DhKeyError::NotInSubgroup
                        })
                    );
                }
            }

            #[test]
            fn ffdhe_values_0_1_p_minus_1_and_at_least_p_are_refused_in_every_encoding(
                group in group(),
                which in 0..5u8,
                d in proptest::collection::vec(any::<u8>(), 0..=200),
                high in proptest::collection::vec(any::<u8>(), 384),
            ) {
                let p = group.prime_be();
                let mut one = vec![0u8; p.len()];
                *one.last_mut().unwrap() = 1;
                let y = match which {
                    0 => vec![0u8; p.len()],
                    1 => one,
                    2 => {
                        let mut p_minus_1 = p.to_vec();
                        *p_minus_1.last_mut().unwrap() -= 1;
                        p_minus_1
                    }
                    3 => p.to_vec(),
                    _ => add(p, &d),
                };
                let out_of_range = Err(KeyError::Dh {
                    group: dh_scheme(group).group_name(),
                    error: DhKeyError::OutOfRange,
                });
                for encoding in DH_ENCODINGS {
                    let bytes = encode_dh(group, &y, encoding);
                    let got = parse(&bytes).map(|_| ());
                    prop_assert_eq!(got, out_of_range.clone(), "{:?}", encoding);
                }
                // At least 2^(8·len): longer than the prime (DER only).
                let mut long = vec![1u8];
                long.extend_from_slice(&high[..p.len()]);
                for encoding in [KeyEncoding::Spki, KeyEncoding::SpkiPkcs3] {
                    prop_assert_eq!(
                        parse(&encode_dh(group, &long, encoding)).map(|_| ()),
                        Err(KeyError::Dh {
                            group: dh_scheme(group).group_name(),
                            error: DhKeyError::TooLong
                        })
                    );
                }
            }

            #[test]
            fn spki_with_foreign_dh_parameters_is_refused(
                (group, r) in group_and_root(),
                pkcs3 in any::<bool>(),
                which in 0..4u8,
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                g in proptest::collection::vec(any::<u8>(), 1..4),
            ) {
                let y = square(group, &r, false);
                let p = group.prime_be().to_vec();
                let q = group.q_be().to_vec();
                // One of p, g or q replaced (or q left out of X9.42).
                let (mut p2, mut g2, mut q2) = (p.clone(), vec![2u8], Some(q.clone()));
                match which {
                    0 => {
                        let i = at.index(p2.len());
                        prop_assume!(p2[i] != byte);
                        p2[i] = byte;
                    }
                    1 => {
                        prop_assume!(minimal(&g) != [2]);
                        g2 = g;
                    }
                    2 => {
                        prop_assume!(!pkcs3);
                        let i = at.index(q.len());
                        prop_assume!(q[i] != byte);
                        q2.as_mut().unwrap()[i] = byte;
                    }
                    _ => {
                        prop_assume!(!pkcs3);
                        q2 = None;
                    }
                }
                if pkcs3 {
                    q2 = None;
                }
                let params = DhParams {
                    p: UintRef::new(&p2).unwrap(),
                    g: UintRef::new(&g2).unwrap(),
                    third: q2.as_deref().map(|q| UintRef::new(q).unwrap()),
                }
                .to_der()
                .unwrap();
                let y_der = UintRef::new(&y).unwrap().to_der().unwrap();
                let spki = SubjectPublicKeyInfo {
                    algorithm: AlgorithmIdentifier {
                        oid: if pkcs3 { DH_KEY_AGREEMENT } else { DH_PUBLIC_NUMBER },
                        parameters: Some(AnyRef::from_der(&params).unwrap()),
                    },
                    subject_public_key: BitStringRef::from_bytes(&y_der).unwrap(),
                }
                .to_der()
                .unwrap();
                prop_assert!(
                    matches!(parse(&spki), Err(KeyError::DhParameters(_))),
                    "{:?}", parse(&spki).map(|(s, e, _)| (s, e))
                );
                // The same with the group's own parameters is taken.
                let encoding = if pkcs3 { KeyEncoding::SpkiPkcs3 } else { KeyEncoding::Spki };
                let good = encode_dh(group, &y, encoding);
                prop_assert!(parse(&good).is_ok());
            }

            #[test]
            fn truncated_encodings_are_refused_unless_they_are_a_raw_key_length(key in any_key()) {
                for (encoding, bytes) in key.encodings() {
                    for cut in 0..bytes.len() {
                        // Raw keys are told apart by length: a prefix of a
                        // raw length is read as a raw key (of another
                        // scheme) and may be valid; never as the key.
                        match parse(&bytes[..cut]) {
                            Err(_) => {}
                            Ok((_, got_encoding, got)) => {
                                prop_assert!(
                                    is_raw_len(cut),
                                    "{:?} cut at {} accepted",
                                    encoding,
                                    cut
                                );
                                prop_assert_eq!(got_encoding, KeyEncoding::Raw);
                                prop_assert!(!key.is(&got));
                            }
                        }
                    }
                }
            }

            #[test]
            fn a_flipped_bit_is_refused_or_names_another_key(
                key in any_key(),
                which in any::<prop::sample::Index>(),
                bit in any::<prop::sample::Index>(),
            ) {
                let encodings = key.encodings();
                let (encoding, bytes) = which.get(&encodings);
                let bit = bit.index(bytes.len() * 8);
                let mut flipped = bytes.clone();
                flipped[bit / 8] ^= 0x80 >> (bit % 8);
                let value_start = bytes.len() - key.value_len(*encoding);
                match parse(&flipped) {
                    Err(_) => {}
                    Ok((scheme, got_encoding, got)) => {
                        prop_assert!(
                            bit / 8 >= value_start,
                            "{:?}: a flip at byte {} (value from {}) accepted",
                            encoding,
                            bit / 8,
                            value_start
                        );
                        prop_assert_eq!((scheme, got_encoding), (key.scheme(), *encoding));
                        prop_assert!(!key.is(&got));
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn ec_keys_of_the_curve_crates_round_trip_raw_and_spki(key in ec_key()) {
                round_trips(&key)?;
            }

            #[test]
            fn compressed_ec_points_are_refused_raw_or_spki(key in ec_key()) {
                let (compressed, curve_oid, group) = match &key {
                    TestKey::P256(k) => {
                        (k.to_sec1_point(true).as_bytes().to_vec(), SECP256R1, "P-256")
                    }
                    TestKey::P384(k) => {
                        (k.to_sec1_point(true).as_bytes().to_vec(), SECP384R1, "P-384")
                    }
                    TestKey::Dh(..) => unreachable!(),
                };
                prop_assert!(parse(&compressed).is_err());
                let params = curve_oid.to_der().unwrap();
                let spki = SubjectPublicKeyInfo {
                    algorithm: AlgorithmIdentifier {
                        oid: ID_EC_PUBLIC_KEY,
                        parameters: Some(AnyRef::from_der(&params).unwrap()),
                    },
                    subject_public_key: BitStringRef::from_bytes(&compressed).unwrap(),
                }
                .to_der()
                .unwrap();
                prop_assert_eq!(
                    parse(&spki).map(|_| ()),
                    Err(KeyError::Ec { group, error: EcKeyError::Invalid })
                );
            }
        }

        /// Arbitrary bytes, raw-length bytes, and valid encodings with a
        /// few bytes overwritten, cut or appended.
        fn key_like_bytes() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..1500),
                prop::sample::select(vec![65usize, 97, 256, 384])
                    .prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n)),
                (
                    any_key(),
                    any::<prop::sample::Index>(),
                    proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                    prop_oneof![Just(None), any::<prop::sample::Index>().prop_map(Some)],
                    proptest::collection::vec(any::<u8>(), 0..3),
                )
                    .prop_map(|(key, which, writes, cut, tail)| {
                        let encodings = key.encodings();
                        let mut bytes = which.get(&encodings).1.clone();
                        for (at, value) in writes {
                            let i = at.index(bytes.len());
                            bytes[i] = value;
                        }
                        if let Some(cut) = cut {
                            bytes.truncate(cut.index(bytes.len() + 1));
                        }
                        bytes.extend_from_slice(&tail);
                        bytes
                    }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_bytes_never_panic_and_what_is_accepted_re_encodes_to_itself(
                bytes in key_like_bytes(),
            ) {
                if let Ok((scheme, encoding, key)) = parse(&bytes) {
                    let again = match &key {
                        PeerKey::Dh(group, y) => {
                            prop_assert_eq!(scheme, dh_scheme(*group));
                            let mut padded = vec![0u8; group.byte_len() - y.len()];
                            padded.extend_from_slice(y);
                            encode_dh(*group, &padded, encoding)
                        }
                        PeerKey::Ec(point) => {
                            prop_assert_eq!(scheme, ec_scheme(point.curve()));
                            encode_ec(point, encoding)
                        }
                    };
                    // PKCS #3 parameters may carry an (ignored) private-value
                    // length, so only the other forms are unique.
                    if encoding != KeyEncoding::SpkiPkcs3 {
                        prop_assert_eq!(again, bytes);
                    }
                }
            }
        }
    }
}
