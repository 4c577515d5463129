//! A listener's TLS: its certificate and key, the client certificates it
//! asks for and trusts, revocation, and reloading it all from the files
//! without dropping a connection.
//!
//! ALPN `http/1.1`, TLS 1.3 and 1.2, session resumption (a session cache
//! and tickets).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::files::{read_certs, read_key};
use super::identity::{PeerIdentity, Revoked};
use super::{TlsError, provider};

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Asked for; a client without one is served (as anonymous).
    Optional,
    /// Required: a client without a valid one fails the handshake.
    Required,
}

/// The files of a listener's TLS (`[… .tls]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsFiles {
    /// The certificate chain (PEM, the server's certificate first).
    pub cert: PathBuf,
    /// Its private key (PEM; mode 0600 or 0400).
    pub key: PathBuf,
    /// The CAs client certificates must chain to (PEM), when asked for.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `none`, `optional` or `required`.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// Sessions kept for resumption by session id (TLS 1.2) per listener.
const SESSION_CACHE: usize = 4096;

/// Builds a rustls server configuration from `files`.
pub fn server_config(
    files: &ServerTlsFiles,
    revoked: &Arc<Revoked>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?;
    let builder = match (files.client_auth, &files.client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(TlsError::Config(
                "client_auth asks for client certificates: set client_ca too".into(),
            ));
        }
        (mode, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::file(ca, format!("not a usable CA certificate: {e}")))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            if mode == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let inner = verifier
                .build()
                .map_err(|e| TlsError::Config(format!("client_ca: {e}")))?;
            builder.with_client_cert_verifier(Arc::new(RevocationAware {
                inner,
                revoked: Arc::clone(revoked),
            }))
        }
    };
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::Config(format!(
            "{} and {}: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Rustls)?;
    config.send_tls13_tickets = 2;
    Ok(Arc::new(config))
}

/// A listener's TLS, reloadable: new connections take the configuration
/// current at their accept; connections already open keep theirs.
pub struct TlsAcceptor {
    files: ServerTlsFiles,
    revoked: Arc<Revoked>,
    current: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Reads `files` (errors name the file and what is wrong with it).
    pub fn new(files: ServerTlsFiles, revoked: Arc<Revoked>) -> Result<TlsAcceptor, TlsError> {
        let config = server_config(&files, &revoked)?;
        Ok(TlsAcceptor {
            files,
            revoked,
            current: RwLock::new(config),
        })
    }

    /// Reads the files again (SIGHUP). On an error the configuration in
    /// use stays, and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = server_config(&self.files, &self.revoked)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// A server session for a new connection.
    pub fn accept(&self) -> Result<ServerConnection, TlsError> {
        let config = Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()));
        ServerConnection::new(config).map_err(TlsError::Rustls)
    }

    /// True when the peer's certificate was revoked since its handshake.
    pub fn is_revoked(&self, peer: &PeerIdentity) -> bool {
        self.revoked.contains(&peer.serial)
    }

    /// The files it reads.
    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }
}

/// A client certificate verifier that also refuses revoked serials.
#[derive(Debug)]
struct RevocationAware {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<Revoked>,
}

impl ClientCertVerifier for RevocationAware {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match PeerIdentity::from_der(end_entity) {
            Some(id) if self.revoked.contains(&id.serial) => {
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            Some(_) => Ok(verified),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
