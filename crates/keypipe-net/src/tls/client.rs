//! A node's outbound TLS: the CA bundle it trusts, the client certificate
//! it presents (to its peer node and to KMSes), and the link peer's
//! identity, pinned by name (certificate `CN`) and optionally by public key.

use std::sync::Arc;

use keypipe_core::qkd::TlsFiles;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::files::{read_certs, read_key};
use super::identity::{PeerIdentity, Revoked, hex};
use super::{TlsError, provider};

/// What the peer's certificate must also say, beyond chaining to the CA
/// and naming the host of the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pin {
    /// Its `CN` (the peer node's name).
    pub name: Option<String>,
    /// The SHA-256 of its SubjectPublicKeyInfo.
    pub spki_sha256: Option<[u8; 32]>,
}

impl Pin {
    /// Parses a hex SHA-256 pin.
    pub fn spki_from_hex(text: &str) -> Result<[u8; 32], TlsError> {
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<_>>()
            .ok_or_else(|| TlsError::Config("peer_spki_sha256: not hex".into()))?;
        bytes
            .try_into()
            .map_err(|_| TlsError::Config("peer_spki_sha256: 64 hex digits".into()))
    }
}

/// Builds a client configuration from `files`, checking the server's
/// certificate against `pin` too, and refusing the serials in `revoked`.
pub fn client_config(
    files: &TlsFiles,
    pin: Pin,
    revoked: Option<Arc<Revoked>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&files.ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::file(&files.ca, format!("not a usable CA certificate: {e}")))?;
    }
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Config(format!("{}: {e}", files.ca.display())))?;
    let verifier = Arc::new(Pinned {
        webpki,
        pin,
        revoked,
    });
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            TlsError::Config(format!(
                "{} and {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// WebPKI verification (chain to the CA bundle, the URL's host named,
/// validity) and then the pin.
#[derive(Debug)]
struct Pinned {
    webpki: Arc<WebPkiServerVerifier>,
    pin: Pin,
    revoked: Option<Arc<Revoked>>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let id = PeerIdentity::from_der(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        if self
            .revoked
            .as_ref()
            .is_some_and(|r| r.contains(&id.serial))
        {
            tracing::warn!(serial = %id.serial, name = %id.name, "server certificate revoked");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        if let Some(name) = &self.pin.name
            && &id.name != name
        {
            tracing::warn!(expected = %name, found = %id.name, "peer certificate names another node");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        if let Some(spki) = &self.pin.spki_sha256
            && &id.spki_sha256 != spki
        {
            tracing::warn!(
                expected = %hex(spki),
                found = %hex(&id.spki_sha256),
                "peer public key does not match its pin"
            );
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls::{ClientConnection, ServerConnection};

    use super::*;
    use crate::tls::{ClientAuth, ServerTlsFiles, server_config};

    fn write_key(path: &std::path::Path, key: &KeyPair) {
        std::fs::write(path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// A server named `cn` for localhost, under a fresh CA; the client's
    /// files and the server's serial.
    fn setup(dir: &std::path::Path, cn: &str) -> (TlsFiles, Arc<rustls::ServerConfig>, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str, file: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec!["localhost".into()]).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{file}.crt")), cert.pem()).unwrap();
            write_key(&dir.join(format!("{file}.key")), &key);
            PeerIdentity::from_der(cert.der()).unwrap().serial
        };
        let serial = leaf(cn, "server");
        leaf("me", "client");
        let files = ServerTlsFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_ca: None,
            client_auth: ClientAuth::None,
        };
        let server = server_config(&files, &Arc::new(Revoked::new())).unwrap();
        let client = TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("client.crt"),
            key: dir.join("client.key"),
        };
        (client, server, serial)
    }

    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = ClientConnection::new(client, name).unwrap();
        let mut s = ServerConnection::new(server).unwrap();
        let mut buf = Vec::new();
        for _ in 0..10 {
            buf.clear();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not end");
    }

    #[test]
    fn the_pin_and_revocation_decide_beyond_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (files, server, serial) = setup(dir.path(), "node-b");
        let pinned = |name: &str| Pin {
            name: Some(name.into()),
            spki_sha256: None,
        };
        assert!(
            handshake(
                client_config(&files, Pin::default(), None).unwrap(),
                Arc::clone(&server)
            )
            .is_ok()
        );
        assert!(
            handshake(
                client_config(&files, pinned("node-b"), None).unwrap(),
                Arc::clone(&server)
            )
            .is_ok()
        );
        let err = handshake(
            client_config(&files, pinned("node-c"), None).unwrap(),
            Arc::clone(&server),
        );
        assert!(
            matches!(
                err,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                ))
            ),
            "{err:?}"
        );
        let wrong_key = Pin {
            name: None,
            spki_sha256: Some([7; 32]),
        };
        assert!(
            handshake(
                client_config(&files, wrong_key, None).unwrap(),
                Arc::clone(&server)
            )
            .is_err()
        );
        let revoked = Arc::new(Revoked::new());
        revoked.replace([serial]);
        let err = handshake(
            client_config(&files, Pin::default(), Some(revoked)).unwrap(),
            server,
        );
        assert!(
            matches!(
                err,
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            ),
            "{err:?}"
        );
        assert_eq!(Pin::spki_from_hex(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        assert!(Pin::spki_from_hex("abc").is_err());
    }
}
