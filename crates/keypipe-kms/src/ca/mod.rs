//! keypipe's own CA: the hierarchy KeyTalk describes, kept in the store
//! (private keys wrapped under the KEK), issuing the certificates every
//! listener, node, KMS and SAE presents.
//!
//! ```text
//!   Primary CA (self-signed, P-384, 20 years, path length 1)
//!    ├── Signing CA (P-384, 10 years): client certificates (kms, node, sae, user)
//!    └── Server CA  (P-384, 10 years): server certificates
//! ```
//!
//! A certificate names its holder in the subject: `CN` = the name (a KMS,
//! node or SAE id, or a server's name), `OU` = the role (`kms`, `node`,
//! `sae`, `user`, `server`), `O` = the CA's organization. Client
//! certificates carry the extended key usage `clientAuth`, server ones
//! `serverAuth` and at least one subject alternative name. Serial numbers
//! are 16 random bytes (positive), written as lower-case hex everywhere
//! (the CLI, the store, the TLS peer identity). Certificates are built and
//! signed by `rcgen`; nothing here encodes ASN.1 by hand.
//!
//! A leaf's private key is generated here (or comes with a CSR, for
//! KeyTalk) and is handed to the caller once; it is never stored.

mod enrol;
mod hierarchy;
mod leaf;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::store::{CaStore, StoreError};

pub use enrol::{EnrolKey, EnrolRequest, Enrolled, ExtKeyUsage, LoadedCa, Subject};
pub use hierarchy::{CA_KEY_NAMES, pem};
pub use leaf::LeafRequest;

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// `keypipe ca init` has not run on this store.
    #[error("no CA in this store: run `keypipe ca init` first")]
    NoCa,
    /// A bad name, SAN, role or validity.
    #[error("{0}")]
    Invalid(String),
    /// Building or signing a certificate failed.
    #[error("certificate: {0}")]
    Build(#[from] rcgen::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a certificate's holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A TLS server (a listener of keypipe or of a KMS).
    Server,
    /// A KMS: opens key streams on a QKD node, receives pushed key.
    Kms,
    /// A QKD node: link sync with its peer, pushes to KMSes.
    Node,
    /// An ETSI GS QKD 014 secure application entity.
    Sae,
    /// A person (KeyTalk enrolment).
    User,
}

impl Role {
    /// The text form, as in the certificate's `OU`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Kms => "kms",
            Role::Node => "node",
            Role::Sae => "sae",
            Role::User => "user",
        }
    }

    /// True for the roles of client certificates.
    pub fn is_client(self) -> bool {
        self != Role::Server
    }
}

impl FromStr for Role {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Role, CaError> {
        Ok(match s {
            "server" => Role::Server,
            "kms" => Role::Kms,
            "node" => Role::Node,
            "sae" => Role::Sae,
            "user" => Role::User,
            _ => {
                return Err(CaError::Invalid(format!(
                    "role {s:?}: one of kms, node, sae, user (or server)"
                )));
            }
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A leaf key's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256 (the default).
    #[default]
    P256,
    /// ECDSA P-384 with SHA-384.
    P384,
    /// RSA 2048 bits (for clients that know no ECDSA).
    Rsa2048,
    /// RSA 3072 bits.
    Rsa3072,
    /// RSA 4096 bits.
    Rsa4096,
}

impl KeyType {
    /// The text form (`p256`, `p384`, `rsa2048`, `rsa3072`, `rsa4096`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::P256 => "p256",
            KeyType::P384 => "p384",
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa3072 => "rsa3072",
            KeyType::Rsa4096 => "rsa4096",
        }
    }

    /// The key size in bits (the curve's for ECDSA).
    pub fn bits(self) -> u32 {
        match self {
            KeyType::P256 => 256,
            KeyType::P384 => 384,
            KeyType::Rsa2048 => 2048,
            KeyType::Rsa3072 => 3072,
            KeyType::Rsa4096 => 4096,
        }
    }

    /// True for the RSA types.
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096)
    }
}

impl FromStr for KeyType {
    type Err = CaError;
    fn from_str(s: &str) -> Result<KeyType, CaError> {
        match s {
            "p256" | "P-256" => Ok(KeyType::P256),
            "p384" | "P-384" => Ok(KeyType::P384),
            "rsa2048" => Ok(KeyType::Rsa2048),
            "rsa3072" => Ok(KeyType::Rsa3072),
            "rsa4096" => Ok(KeyType::Rsa4096),
            _ => Err(CaError::Invalid(format!(
                "key type {s:?}: p256, p384, rsa2048, rsa3072 or rsa4096"
            ))),
        }
    }
}

/// A subject alternative name of a server certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    /// `DNS:name`.
    Dns(String),
    /// `IP:address`.
    Ip(IpAddr),
    /// `email:address` (enrolment certificates only).
    Email(String),
}

impl FromStr for San {
    type Err = CaError;
    fn from_str(s: &str) -> Result<San, CaError> {
        if let Some(name) = s.strip_prefix("DNS:") {
            // No wildcard: each server gets a certificate of its own.
            let ok = !name.is_empty() && name.len() <= 253 && name.split('.').all(valid_label);
            if ok {
                return Ok(San::Dns(name.to_ascii_lowercase()));
            }
            return Err(CaError::Invalid(format!("SAN {s:?}: not a DNS name")));
        }
        if let Some(ip) = s.strip_prefix("IP:") {
            return ip
                .parse()
                .map(San::Ip)
                .map_err(|_| CaError::Invalid(format!("SAN {s:?}: not an IP address")));
        }
        if let Some(mail) = s.strip_prefix("email:") {
            let ok = mail.len() <= 254
                && mail.is_ascii()
                && !mail.chars().any(|c| c.is_ascii_control() || c == ' ')
                && mail
                    .split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty());
            if ok {
                return Ok(San::Email(mail.to_owned()));
            }
            return Err(CaError::Invalid(format!(
                "SAN {s:?}: not an e-mail address"
            )));
        }
        Err(CaError::Invalid(format!(
            "SAN {s:?}: write DNS:name, IP:address or email:address"
        )))
    }
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// Checks a holder's name (the certificate's `CN`): 1 to 64 of
/// `A-Z a-z 0-9 . _ -`, so it reads the same in a file name, a log line
/// and a configuration.
pub fn check_name(name: &str) -> Result<(), CaError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(CaError::Invalid(format!(
            "name {name:?}: 1 to 64 of A-Z a-z 0-9 . _ - (not starting with a dot)"
        )))
    }
}

/// A certificate just issued, with what its holder needs.
pub struct Issued {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The certificate followed by its issuing CA's (PEM).
    pub chain_pem: String,
    /// The private key (PKCS#8 PEM); `None` when the key came with a CSR.
    pub key_pem: Option<Zeroizing<String>>,
    /// The CA's trust bundle (PEM): Primary, Signing and Server CA.
    pub ca_pem: String,
    /// End of validity, ms since the epoch.
    pub not_after_ms: i64,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

/// keypipe's CA over a store.
pub struct Ca<'s, S: CaStore + ?Sized> {
    store: &'s S,
}

impl<'s, S: CaStore + ?Sized> Ca<'s, S> {
    /// The CA kept in `store`.
    pub fn new(store: &'s S) -> Self {
        Ca { store }
    }

    /// Creates the hierarchy unless the store holds one: true when made
    /// now. `organization` goes into every subject's `O`.
    pub fn init(&self, organization: &str) -> Result<bool, CaError> {
        hierarchy::init(self.store, organization)
    }

    /// The trust bundle to give TLS peers (PEM, `ca.crt`): the Primary
    /// CA, then the Signing and the Server CA.
    pub fn bundle_pem(&self) -> Result<String, CaError> {
        Ok(hierarchy::Hierarchy::load(self.store)?.bundle_pem())
    }

    /// The hierarchy, loaded once for many enrolments (see [`LoadedCa`]).
    pub fn load(&self) -> Result<LoadedCa, CaError> {
        Ok(LoadedCa::new(hierarchy::Hierarchy::load(self.store)?))
    }

    /// Issues a certificate (see [`LeafRequest`]) and records it.
    pub fn issue(&self, request: &LeafRequest) -> Result<Issued, CaError> {
        let hierarchy = hierarchy::Hierarchy::load(self.store)?;
        leaf::issue(self.store, &hierarchy, request)
    }
}

#[cfg(test)]
mod tests;
