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
    params.subject_alt_names = request
        .sans
        .iter()
        .map(|san| {
            Ok(match san {
                San::Dns(name) => SanType::DnsName(name.clone().try_into()?),
                San::Ip(ip) => SanType::IpAddress(*ip),
            })
        })
        .collect::<Result<_, rcgen::Error>>()?;
    let now = OffsetDateTime::now_utc();
    let not_after = now + Duration::days(i64::from(request.days));
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    let serial = serial()?;
    let serial_hex: String = serial
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;

    let ca = hierarchy.issuer_for(request.role);
    let (cert, key_pem) = match &request.key {
        Ok(key_type) => {
            let alg = match key_type {
                KeyType::P256 => &PKCS_ECDSA_P256_SHA256,
                KeyType::P384 => &PKCS_ECDSA_P384_SHA384,
            };
            let key = KeyPair::generate_for(alg)?;
            let cert = params.signed_by(&key, &ca.issuer)?;
            (cert, Some(Zeroizing::new(key.serialize_pem())))
        }
        Err(spki) => {
            let public = SubjectPublicKeyInfo::from_der(spki)?;
            (params.signed_by(&public, &ca.issuer)?, None)
        }
    };
    let not_after_ms = i64::try_from(not_after.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| CaError::Invalid("validity out of range".into()))?;
    store.record_issued(&IssuedRecord {
        serial: serial_hex.clone(),
        issuer: ca.name.to_owned(),
        subject: request.name.clone(),
        role: request.role.as_str().to_owned(),
        not_after_ms,
        cert_der: cert.der().to_vec(),
        revoked_ms: None,
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
