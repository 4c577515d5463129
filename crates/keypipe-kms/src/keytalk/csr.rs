//! Client CSRs (`POST cert` with `csr`): read as PEM or Base64 DER, the
//! signature checked, then held to what `csr-requirements` asked: an RSA
//! key of exactly `key-size` bits, a signature over `signing-algo`, and
//! exactly the subject fields asked for. Only the public key is used: the
//! certificate is built from the service's profile, never from the CSR.

use base64::Engine;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA256WITHRSA, OID_PKCS9_EMAIL_ADDRESS, OID_X509_COMMON_NAME,
    OID_X509_COUNTRY_NAME, OID_X509_LOCALITY_NAME, OID_X509_ORGANIZATION_NAME,
    OID_X509_ORGANIZATIONAL_UNIT, OID_X509_STATE_OR_PROVINCE_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::ca::Subject;

/// What a CSR must be.
#[derive(Debug, Clone)]
pub struct CsrRequirements {
    /// RSA key size in bits.
    pub key_size: u32,
    /// `sha256` or `sha1`.
    pub signing_algo: String,
    /// The subject, field by field.
    pub subject: Subject,
}

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a PKCS#10 request in PEM or Base64 DER.
    #[error("the CSR is not a PKCS#10 request (PEM or Base64 DER)")]
    Unreadable,
    /// Its signature does not verify.
    #[error("the CSR's signature does not verify")]
    Signature,
    /// Not an RSA key of the size asked for.
    #[error("the CSR's key is not RSA-{0}")]
    KeySize(u32),
    /// Signed over another digest.
    #[error("the CSR is not signed with {0}")]
    Digest(String),
    /// Another subject.
    #[error("the CSR's subject differs from csr-requirements")]
    Subject,
}

/// The DER of an object sent as PEM (the first block) or as Base64 DER,
/// read leniently: line breaks and other white space are dropped, and a
/// space is read as `+` (a client that did not escape `+` in a form value
/// sent a space).
pub fn der_of(text: &str) -> Option<Vec<u8>> {
    // Spaces are `+` (above): only line breaks are trimmed.
    let text = text.trim_matches(|c| matches!(c, '\n' | '\r' | '\t'));
    let body = match text.find("-----BEGIN") {
        Some(begin) => {
            let after = &text[begin..];
            let start = after.find('\n')?;
            let end = after.find("-----END")?;
            after.get(start..end)?
        }
        None => text,
    };
    let b64: String = body
        .chars()
        .filter(|c| !matches!(c, '\n' | '\r' | '\t'))
        .map(|c| if c == ' ' { '+' } else { c })
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The exact bit length of a big-endian modulus (x509-parser's
/// `key_size` rounds to whole bytes: a 2050-bit modulus would pass as 2048).
fn modulus_bits(modulus: &[u8]) -> u64 {
    let digits: &[u8] = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    8 * digits.len() as u64 - u64::from(digits[0].leading_zeros())
}

/// Checks `csr`: its public key (DER `SubjectPublicKeyInfo`).
pub fn check(csr: &str, want: &CsrRequirements) -> Result<Vec<u8>, CsrError> {
    let der = der_of(csr).ok_or(CsrError::Unreadable)?;
    let (rest, req) = X509CertificationRequest::from_der(&der).map_err(|_| CsrError::Unreadable)?;
    if !rest.is_empty() {
        return Err(CsrError::Unreadable);
    }
    let info = &req.certification_request_info;
    let size_ok = match info.subject_pki.parsed() {
        Ok(PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus) == u64::from(want.key_size),
        _ => false,
    };
    if !size_ok {
        return Err(CsrError::KeySize(want.key_size));
    }
    req.verify_signature().map_err(|_| CsrError::Signature)?;
    let digest = match want.signing_algo.as_str() {
        "sha1" => OID_PKCS1_SHA1WITHRSA,
        _ => OID_PKCS1_SHA256WITHRSA,
    };
    if req.signature_algorithm.algorithm != digest {
        return Err(CsrError::Digest(want.signing_algo.clone()));
    }
    let mut got = Vec::new();
    for attr in info.subject.iter_attributes() {
        let oid = attr.attr_type();
        let name = if *oid == OID_X509_COUNTRY_NAME {
            "c"
        } else if *oid == OID_X509_STATE_OR_PROVINCE_NAME {
            "st"
        } else if *oid == OID_X509_LOCALITY_NAME {
            "l"
        } else if *oid == OID_X509_ORGANIZATION_NAME {
            "o"
        } else if *oid == OID_X509_ORGANIZATIONAL_UNIT {
            "ou"
        } else if *oid == OID_X509_COMMON_NAME {
            "cn"
        } else if *oid == OID_PKCS9_EMAIL_ADDRESS {
            "e"
        } else {
            return Err(CsrError::Subject);
        };
        let value = attr.as_str().map_err(|_| CsrError::Subject)?;
        got.push((name, value.to_owned()));
    }
    let mut wanted: Vec<(&str, String)> = want
        .subject
        .fields()
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
    got.sort();
    wanted.sort();
    if got != wanted {
        return Err(CsrError::Subject);
    }
    Ok(info.subject_pki.raw.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn subject() -> Subject {
        Subject {
            cn: "alice".into(),
            c: Some("NL".into()),
            o: Some("Example".into()),
            ..Subject::default()
        }
    }

    fn csr(key: &KeyPair, fields: &[(DnType, &str)]) -> String {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in fields {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn modulus_bits_are_exact() {
        assert_eq!(modulus_bits(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(modulus_bits(&[0x03, 0xff]), 10);
        assert_eq!(modulus_bits(&[0x00, 0x00]), 0);
        let mut m2050 = vec![0x03];
        m2050.extend([0xff; 256]);
        assert_eq!(modulus_bits(&m2050), 2050, "not 2048");
    }

    #[test]
    fn requirements_are_enforced() {
        let want = CsrRequirements {
            key_size: 2048,
            signing_algo: "sha256".into(),
            subject: subject(),
        };
        let rsa =
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let good = [
            (DnType::CountryName, "NL"),
            (DnType::OrganizationName, "Example"),
            (DnType::CommonName, "alice"),
        ];
        let pem = csr(&rsa, &good);
        let spki = check(&pem, &want).unwrap();
        assert_eq!(spki, rcgen::PublicKeyData::subject_public_key_info(&rsa));
        // Base64 DER alone is read too.
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(check(&b64, &want).is_ok());
        // Another subject.
        let other = csr(&rsa, &[(DnType::CommonName, "mallory")]);
        assert_eq!(check(&other, &want), Err(CsrError::Subject));
        let extra = csr(
            &rsa,
            &[
                good[0].clone(),
                good[1].clone(),
                good[2].clone(),
                (DnType::LocalityName, "X"),
            ],
        );
        assert_eq!(check(&extra, &want), Err(CsrError::Subject));
        // Another key.
        let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert_eq!(check(&csr(&ec, &good), &want), Err(CsrError::KeySize(2048)));
        let rsa3072 =
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072).unwrap();
        assert_eq!(
            check(&csr(&rsa3072, &good), &want),
            Err(CsrError::KeySize(2048))
        );
        // Another digest.
        let sha384 = KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(rsa.serialize_der()),
            &rcgen::PKCS_RSA_SHA384,
        )
        .unwrap();
        assert_eq!(
            check(&csr(&sha384, &good), &want),
            Err(CsrError::Digest("sha256".into()))
        );
        // A tampered request.
        let mut der = der_of(&pem).unwrap();
        let n = der.len();
        der[n - 10] ^= 1;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        assert_eq!(check(&b64, &want), Err(CsrError::Signature));
        assert_eq!(check("junk", &want), Err(CsrError::Unreadable));
    }
}
