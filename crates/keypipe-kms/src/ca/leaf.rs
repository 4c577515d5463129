//! Leaf certificates: a server's or a client's, with a key made here or
//! the public key of a CSR.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, SanType, SubjectPublicKeyInfo,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::hierarchy::{BACKDATE, Hierarchy, pem, serial};
use super::{CaError, Issued, KeyType, Role, San, check_name};
use crate::store::{CaStore, IssuedRecord};

/// Longest validity of a leaf certificate.
const MAX_DAYS: u32 = 3650;

/// What to issue.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// The holder's name (`CN`).
    pub name: String,
    /// The holder's role (`OU`, and which CA issues).
    pub role: Role,
    /// Subject alternative names (required for a server, at least one).
    pub sans: Vec<San>,
    /// Days of validity, 1 to 3650.
    pub days: u32,
    /// The key: made here (`Ok(type)`) or a CSR's public key (DER
    /// `SubjectPublicKeyInfo`).
    pub key: Result<KeyType, Vec<u8>>,
}

pub(super) fn issue<S: CaStore + ?Sized>(
    store: &S,
    hierarchy: &Hierarchy,
    request: &LeafRequest,
) -> Result<Issued, CaError> {
    check_name(&request.name)?;
    if !(1..=MAX_DAYS).contains(&request.days) {
        return Err(CaError::Invalid(format!(
            "validity {} days: 1 to {MAX_DAYS}",
            request.days
        )));
    }
    if request.role == Role::Server && request.sans.is_empty() {
        return Err(CaError::Invalid(
            "a server certificate needs at least one --san (DNS:name or IP:address)".into(),
        ));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, hierarchy.organization.as_str());
    dn.push(DnType::OrganizationalUnitName, request.role.as_str());
    dn.push(DnType::CommonName, request.name.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if request.role.is_client() {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    params.subject_alt_names = san_types(&request.sans)?;
    let now = OffsetDateTime::now_utc();
    let not_after = now + Duration::days(i64::from(request.days));
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    let serial_hex = set_serial(&mut params)?;

    let ca = hierarchy.issuer_for(request.role);
    let (cert, key) = sign(params, &ca.issuer, &request.key)?;
    let key_pem = key.map(|k| Zeroizing::new(k.serialize_pem()));
    let not_after_ms = millis(not_after)?;
    store.record_issued(&IssuedRecord {
        serial: serial_hex.clone(),
        issuer: ca.name.to_owned(),
        subject: request.name.clone(),
        role: request.role.as_str().to_owned(),
        not_after_ms,
        cert_der: cert.der().to_vec(),
        revoked_ms: None,
        enrolment: None,
    })?;
    let mut chain_pem = cert.pem();
    chain_pem.push_str(&pem("CERTIFICATE", &ca.cert_der));
    Ok(Issued {
        serial: serial_hex,
        chain_pem,
        key_pem,
        ca_pem: hierarchy.bundle_pem(),
        not_after_ms,
    })
}

/// Gives `params` a fresh serial number (and an authority key
/// identifier); the serial in lower-case hex.
pub(super) fn set_serial(params: &mut CertificateParams) -> Result<String, CaError> {
    let serial = serial()?;
    let hex = serial
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;
    Ok(hex)
}

/// Signs `params` with `issuer` over a key made here (returned) or a
/// CSR's public key (DER `SubjectPublicKeyInfo`).
pub(super) fn sign(
    params: CertificateParams,
    issuer: &rcgen::Issuer<'static, KeyPair>,
    key: &Result<KeyType, Vec<u8>>,
) -> Result<(rcgen::Certificate, Option<KeyPair>), CaError> {
    Ok(match key {
        Ok(key_type) => {
            let key = generate(*key_type)?;
            (params.signed_by(&key, issuer)?, Some(key))
        }
        Err(spki) => {
            let public = SubjectPublicKeyInfo::from_der(spki)?;
            (params.signed_by(&public, issuer)?, None)
        }
    })
}

/// A fresh key of `key_type`.
fn generate(key_type: KeyType) -> Result<KeyPair, CaError> {
    let rsa = |size| KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size);
    Ok(match key_type {
        KeyType::P256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        KeyType::P384 => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?,
        KeyType::Rsa2048 => rsa(rcgen::RsaKeySize::_2048)?,
        KeyType::Rsa3072 => rsa(rcgen::RsaKeySize::_3072)?,
        KeyType::Rsa4096 => rsa(rcgen::RsaKeySize::_4096)?,
    })
}

/// `t` in ms since the epoch.
pub(super) fn millis(t: OffsetDateTime) -> Result<i64, CaError> {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| CaError::Invalid("validity out of range".into()))
}

/// The SANs as rcgen writes them.
pub(super) fn san_types(sans: &[San]) -> Result<Vec<SanType>, rcgen::Error> {
    sans.iter()
        .map(|san| {
            Ok(match san {
                San::Dns(name) => SanType::DnsName(name.clone().try_into()?),
                San::Ip(ip) => SanType::IpAddress(*ip),
                San::Email(mail) => SanType::Rfc822Name(mail.clone().try_into()?),
            })
        })
        .collect()
}
