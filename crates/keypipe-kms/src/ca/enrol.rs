//! Enrolment certificates (KeyTalk): a person's certificate from the
//! Signing CA, its subject, extended key usages and SANs from a service's
//! profile, its key made here or taken from a CSR whose fields were
//! checked first.
//!
//! The CSR itself is never copied: only its public key is used. The
//! hierarchy is loaded once ([`LoadedCa`]) and shared by every enrolment.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::hierarchy::{BACKDATE, Hierarchy};
use super::leaf::{millis, san_types, set_serial, sign};
use super::{CaError, KeyType, Role, San};
use crate::store::{CaStore, Enrolment, IssuedRecord};

/// The OID of PKCS#9 `emailAddress` (subject field `E`).
const EMAIL_ADDRESS: [u64; 7] = [1, 2, 840, 113_549, 1, 9, 1];

/// Longest validity of an enrolment certificate.
const MAX_DAYS: u32 = 3650;

/// A certificate subject. Empty or absent fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// `CN`.
    pub cn: String,
    /// `C` (two letters).
    pub c: Option<String>,
    /// `ST`.
    pub st: Option<String>,
    /// `L`.
    pub l: Option<String>,
    /// `O`.
    pub o: Option<String>,
    /// `OU`.
    pub ou: Option<String>,
    /// `emailAddress`.
    pub e: Option<String>,
}

impl Subject {
    /// The fields as (short name, value), in the order they are encoded.
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        for (name, value) in [
            ("c", &self.c),
            ("st", &self.st),
            ("l", &self.l),
            ("o", &self.o),
            ("ou", &self.ou),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                out.push((name, v));
            }
        }
        out.push(("cn", self.cn.as_str()));
        if let Some(v) = self.e.as_deref().filter(|v| !v.is_empty()) {
            out.push(("e", v));
        }
        out
    }

    fn distinguished_name(&self) -> Result<DistinguishedName, CaError> {
        let mut dn = DistinguishedName::new();
        for (name, value) in self.fields() {
            let too_long = value.len() > 64 || value.chars().any(char::is_control);
            if too_long || value.is_empty() {
                return Err(CaError::Invalid(format!(
                    "subject {name}: 1 to 64 characters, no control characters"
                )));
            }
            match name {
                "c" => {
                    if value.len() != 2 || !value.chars().all(|c| c.is_ascii_uppercase()) {
                        return Err(CaError::Invalid(format!(
                            "subject c {value:?}: two capital letters"
                        )));
                    }
                    dn.push(DnType::CountryName, value);
                }
                "st" => dn.push(DnType::StateOrProvinceName, value),
                "l" => dn.push(DnType::LocalityName, value),
                "o" => dn.push(DnType::OrganizationName, value),
                "ou" => dn.push(DnType::OrganizationalUnitName, value),
                "cn" => dn.push(DnType::CommonName, value),
                _ => {
                    let ia5 = value
                        .to_owned()
                        .try_into()
                        .map_err(|_| CaError::Invalid(format!("subject e {value:?}: ASCII")))?;
                    dn.push(
                        DnType::CustomDnType(EMAIL_ADDRESS.to_vec()),
                        DnValue::Ia5String(ia5),
                    );
                }
            }
        }
        Ok(dn)
    }
}

/// An extended key usage a profile may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtKeyUsage {
    /// `clientAuth`.
    ClientAuth,
    /// `serverAuth`.
    ServerAuth,
    /// `emailProtection` (S/MIME).
    EmailProtection,
    /// `codeSigning`.
    CodeSigning,
}

impl std::str::FromStr for ExtKeyUsage {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        Ok(match s {
            "clientAuth" => ExtKeyUsage::ClientAuth,
            "serverAuth" => ExtKeyUsage::ServerAuth,
            "emailProtection" => ExtKeyUsage::EmailProtection,
            "codeSigning" => ExtKeyUsage::CodeSigning,
            _ => {
                return Err(CaError::Invalid(format!(
                    "extended key usage {s:?}: clientAuth, serverAuth, emailProtection or codeSigning"
                )));
            }
        })
    }
}

/// Where an enrolment certificate's key comes from.
#[derive(Clone)]
pub enum EnrolKey {
    /// Made here, of this type; handed to the caller once.
    Generate(KeyType),
    /// A checked CSR's public key (DER `SubjectPublicKeyInfo`).
    Csr(Vec<u8>),
}

impl std::fmt::Debug for EnrolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnrolKey::Generate(t) => write!(f, "Generate({})", t.as_str()),
            EnrolKey::Csr(_) => f.write_str("Csr"),
        }
    }
}

/// What to issue for an enrolment.
#[derive(Debug, Clone)]
pub struct EnrolRequest {
    /// The subject.
    pub subject: Subject,
    /// Extended key usages (at least one).
    pub ekus: Vec<ExtKeyUsage>,
    /// Subject alternative names.
    pub sans: Vec<San>,
    /// Days of validity, 1 to 3650.
    pub days: u32,
    /// The key.
    pub key: EnrolKey,
    /// What it is for (recorded with the certificate).
    pub enrolment: Enrolment,
}

/// An enrolment certificate just issued.
pub struct Enrolled {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The certificate (DER).
    pub cert_der: Vec<u8>,
    /// Its private key (PKCS#8 DER) when made here.
    pub key_pkcs8: Option<Zeroizing<Vec<u8>>>,
    /// End of validity, ms since the epoch.
    pub not_after_ms: i64,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// The CA hierarchy, loaded once (its keys unwrapped), for enrolments.
pub struct LoadedCa {
    hierarchy: Hierarchy,
}

impl std::fmt::Debug for LoadedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCa").finish_non_exhaustive()
    }
}

impl LoadedCa {
    pub(super) fn new(hierarchy: Hierarchy) -> Self {
        LoadedCa { hierarchy }
    }

    /// The Primary CA certificate (DER).
    pub fn primary_der(&self) -> &[u8] {
        self.hierarchy.primary_der()
    }

    /// The Signing CA certificate (DER): it issues enrolment certificates.
    pub fn signing_der(&self) -> &[u8] {
        &self.hierarchy.issuer_for(Role::User).cert_der
    }

    /// The Server CA certificate (DER).
    pub fn server_der(&self) -> &[u8] {
        &self.hierarchy.issuer_for(Role::Server).cert_der
    }

    /// The chain above an enrolment certificate: Signing CA, Primary CA.
    pub fn chain_der(&self) -> [&[u8]; 2] {
        [self.signing_der(), self.primary_der()]
    }

    /// Issues and records an enrolment certificate.
    pub fn enrol<S: CaStore + ?Sized>(
        &self,
        store: &S,
        request: &EnrolRequest,
    ) -> Result<Enrolled, CaError> {
        if !(1..=MAX_DAYS).contains(&request.days) {
            return Err(CaError::Invalid(format!(
                "validity {} days: 1 to {MAX_DAYS}",
                request.days
            )));
        }
        if request.ekus.is_empty() {
            return Err(CaError::Invalid("at least one extended key usage".into()));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = request.subject.distinguished_name()?;
        params.is_ca = IsCa::ExplicitNoCa;
        let rsa = matches!(&request.key, EnrolKey::Generate(t) if t.is_rsa())
            || matches!(&request.key, EnrolKey::Csr(spki) if spki_is_rsa(spki));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
            if rsa {
                KeyUsagePurpose::KeyEncipherment
            } else {
                KeyUsagePurpose::KeyAgreement
            },
        ];
        params.extended_key_usages = request
            .ekus
            .iter()
            .map(|e| match e {
                ExtKeyUsage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
                ExtKeyUsage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
                ExtKeyUsage::EmailProtection => ExtendedKeyUsagePurpose::EmailProtection,
                ExtKeyUsage::CodeSigning => ExtendedKeyUsagePurpose::CodeSigning,
            })
            .collect();
        params.subject_alt_names = san_types(&request.sans)?;
        let now = OffsetDateTime::now_utc();
        let not_after = now + Duration::days(i64::from(request.days));
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        let serial = set_serial(&mut params)?;
        let ca = self.hierarchy.issuer_for(Role::User);
        let key = match &request.key {
            EnrolKey::Generate(t) => Ok(*t),
            EnrolKey::Csr(spki) => Err(spki.clone()),
        };
        let (cert, key) = sign(params, &ca.issuer, &key)?;
        let not_after_ms = millis(not_after)?;
        store.record_issued(&IssuedRecord {
            serial: serial.clone(),
            issuer: ca.name.to_owned(),
            subject: request.subject.cn.clone(),
            role: Role::User.as_str().to_owned(),
            not_after_ms,
            cert_der: cert.der().to_vec(),
            revoked_ms: None,
            enrolment: Some(request.enrolment.clone()),
        })?;
        Ok(Enrolled {
            serial,
            cert_der: cert.der().to_vec(),
            key_pkcs8: key.map(|k| Zeroizing::new(k.serialize_der())),
            not_after_ms,
        })
    }

    /// Checks that `der` is a certificate the Signing CA issued (its
    /// signature) and valid at `now`: its serial (lower-case hex).
    pub fn verify_enrolled(&self, der: &[u8], now: OffsetDateTime) -> Result<String, CaError> {
        let bad = |why: &str| CaError::Invalid(format!("certificate: {why}"));
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| bad("not X.509"))?;
        let (_, signing) = x509_parser::parse_x509_certificate(self.signing_der())
            .map_err(|_| bad("the Signing CA does not parse"))?;
        cert.verify_signature(Some(signing.public_key()))
            .map_err(|_| bad("not issued by this CA"))?;
        let t = x509_parser::time::ASN1Time::from_timestamp(now.unix_timestamp())
            .map_err(|_| bad("time"))?;
        if !cert.validity().is_valid_at(t) {
            return Err(bad("expired or not yet valid"));
        }
        Ok(cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}

/// True when a DER `SubjectPublicKeyInfo` holds an RSA key.
fn spki_is_rsa(spki: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).is_ok_and(|(_, k)| {
        k.algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION
    })
}
