//! The CA hierarchy: made once by `keypipe ca init`, loaded from the store
//! for each issue.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P384_SHA384, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::{CaError, Role};
use crate::store::{CaKeyRecord, CaStore};

/// The names of the CA keys in the store, top first.
pub const CA_KEY_NAMES: [&str; 3] = ["primary", "signing", "server"];

/// Validity of the Primary CA and of the two issuing CAs.
const PRIMARY_YEARS: i64 = 20;
const ISSUING_YEARS: i64 = 10;
/// Certificates start this long before they are made (peers' clocks).
pub(super) const BACKDATE: Duration = Duration::minutes(5);

/// A loaded hierarchy: the trust anchor and the two issuing CAs.
pub(super) struct Hierarchy {
    primary_der: Vec<u8>,
    signing: IssuingCa,
    server: IssuingCa,
    pub(super) organization: String,
}

/// An issuing CA: its certificate and what signs with it.
pub(super) struct IssuingCa {
    pub(super) name: &'static str,
    pub(super) cert_der: Vec<u8>,
    pub(super) issuer: Issuer<'static, KeyPair>,
}

impl Hierarchy {
    /// The hierarchy in `store`; [`CaError::NoCa`] before `init`.
    pub(super) fn load<S: CaStore + ?Sized>(store: &S) -> Result<Hierarchy, CaError> {
        let records = store.ca_keys()?;
        let find = |name: &str| records.iter().find(|r| r.name == name).ok_or(CaError::NoCa);
        let primary = find("primary")?;
        let issuing = |name: &'static str| -> Result<IssuingCa, CaError> {
            let record = find(name)?;
            let key = KeyPair::try_from(record.key_pkcs8.as_slice())?;
            let issuer =
                Issuer::from_ca_cert_der(&CertificateDer::from(record.cert_der.as_slice()), key)?;
            Ok(IssuingCa {
                name,
                cert_der: record.cert_der.clone(),
                issuer,
            })
        };
        let organization = organization_of(&primary.cert_der)?;
        Ok(Hierarchy {
            primary_der: primary.cert_der.clone(),
            signing: issuing("signing")?,
            server: issuing("server")?,
            organization,
        })
    }

    /// The Primary CA certificate (DER).
    pub(super) fn primary_der(&self) -> &[u8] {
        &self.primary_der
    }

    /// The CA that issues certificates of `role`.
    pub(super) fn issuer_for(&self, role: Role) -> &IssuingCa {
        if role.is_client() {
            &self.signing
        } else {
            &self.server
        }
    }

    /// The trust bundle (PEM): the Primary CA, then the Signing and the
    /// Server CA. With the issuing CAs in it, a peer that sends only its
    /// own certificate (not its chain, as `openssl s_client -cert` does)
    /// still verifies.
    pub(super) fn bundle_pem(&self) -> String {
        let mut out = pem("CERTIFICATE", &self.primary_der);
        out.push_str(&pem("CERTIFICATE", &self.signing.cert_der));
        out.push_str(&pem("CERTIFICATE", &self.server.cert_der));
        out
    }
}

/// PEM of one DER object.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The `O` of a CA certificate.
fn organization_of(der: &[u8]) -> Result<String, CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| CaError::Invalid("the Primary CA certificate does not parse".into()))?;
    Ok(cert
        .subject()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .unwrap_or("keypipe")
        .to_owned())
}

/// A fresh positive serial number (16 random bytes, top bit clear, first
/// byte never zero so its hex form is its DER content).
pub(super) fn serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| CaError::Invalid("no OS randomness".into()))?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

fn ca_params(
    common_name: String,
    organization: &str,
    path_len: u8,
    years: i64,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(365 * years);
    params.serial_number = Some(serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Creates and stores the hierarchy unless one exists: true when made.
pub(super) fn init<S: CaStore + ?Sized>(store: &S, organization: &str) -> Result<bool, CaError> {
    let org_ok = !organization.is_empty()
        && organization.len() <= 64
        && organization
            .chars()
            .all(|c| c == ' ' || c.is_ascii_graphic());
    if !org_ok {
        return Err(CaError::Invalid(format!(
            "organization {organization:?}: 1 to 64 printable ASCII characters"
        )));
    }
    if !store.ca_keys()?.is_empty() {
        return Ok(false);
    }
    // A short random tag tells two installations' CAs apart by name.
    let mut tag = [0u8; 3];
    getrandom::fill(&mut tag).map_err(|_| CaError::Invalid("no OS randomness".into()))?;
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();

    let primary_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
    let primary_params = ca_params(
        format!("{organization} Primary CA {tag}"),
        organization,
        1,
        PRIMARY_YEARS,
    )?;
    let primary_cert = primary_params.self_signed(&primary_key)?;
    let primary_issuer = Issuer::from_params(&primary_params, &primary_key);
    let mut records = vec![record("primary", primary_cert.der(), &primary_key)];
    for (name, title) in [("signing", "Signing CA"), ("server", "Server CA")] {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let params = ca_params(
            format!("{organization} {title} {tag}"),
            organization,
            0,
            ISSUING_YEARS,
        )?;
        let cert = params.signed_by(&key, &primary_issuer)?;
        records.push(record(name, cert.der(), &key));
    }
    Ok(store.create_ca(&records)?)
}

fn record(name: &str, cert: &[u8], key: &KeyPair) -> CaKeyRecord {
    CaKeyRecord {
        name: name.to_owned(),
        cert_der: cert.to_vec(),
        key_pkcs8: Zeroizing::new(key.serialize_der()),
    }
}
