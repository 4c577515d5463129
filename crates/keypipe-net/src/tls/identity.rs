//! Who is at the other end of a TLS connection: read once from the leaf
//! certificate it presented (already verified by rustls), and the set of
//! revoked serials every check consults.

use std::collections::HashSet;
use std::sync::RwLock;

use sha2::{Digest, Sha256};

/// The identity a peer's certificate names (keypipe's CA: `CN` = name,
/// `OU` = role; any other CA: its `CN` and first `OU`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common name (a KMS, node or SAE name).
    pub name: String,
    /// The subject's organizational unit: keypipe's role (`kms`, `node`,
    /// `sae`, `user`, `server`); empty when absent.
    pub role: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo (for pinning).
    pub spki_sha256: [u8; 32],
}

impl PeerIdentity {
    /// The identity in a DER certificate; `None` when it does not parse.
    pub fn from_der(der: &[u8]) -> Option<PeerIdentity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let text = |a: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
            a.and_then(|a| a.as_str().ok()).unwrap_or("").to_owned()
        };
        Some(PeerIdentity {
            name: text(subject.iter_common_name().next()),
            role: text(subject.iter_organizational_unit().next()),
            serial: hex(cert.raw_serial()),
            spki_sha256: Sha256::digest(cert.public_key().raw).into(),
        })
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The serials (lower-case hex) of revoked certificates, replaced as a
/// whole by whoever watches the CA (the server, within a second of a
/// `keypipe ca revoke`). Consulted at every handshake and every request.
#[derive(Debug, Default)]
pub struct Revoked {
    serials: RwLock<HashSet<String>>,
}

impl Revoked {
    /// An empty set.
    pub fn new() -> Revoked {
        Revoked::default()
    }

    /// Replaces the set.
    pub fn replace(&self, serials: impl IntoIterator<Item = String>) {
        let fresh: HashSet<String> = serials.into_iter().collect();
        *self.serials.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    /// True when `serial` is revoked.
    pub fn contains(&self, serial: &str) -> bool {
        self.serials
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(serial)
    }
}
