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
}
