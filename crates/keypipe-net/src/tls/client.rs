//! A node's outbound TLS: the CA bundle it trusts, the client certificate
//! it presents (to its peer node and to KMSes), and, for the link, the
//! peer's identity pinned by name (the certificate's `CN`) and optionally
//! by public key.

use std::sync::Arc;

use keypipe_core::qkd::TlsFiles;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::files::{read_certs, read_key};
use super::identity::{PeerIdentity, hex};
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
/// certificate against `pin` too.
pub fn client_config(files: &TlsFiles, pin: Pin) -> Result<Arc<ClientConfig>, TlsError> {
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
    let verifier = Arc::new(Pinned { webpki, pin });
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
        if self.pin == Pin::default() {
            return Ok(verified);
        }
        let id = PeerIdentity::from_der(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
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
