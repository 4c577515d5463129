//! TLS by rustls (sans-IO connections inside the mio loops): listeners
//! (`server`), outbound connections (`client`), certificate and key files
//! (`files`), peer identity (`identity`), and the rule for plain listeners.
//!
//! No async runtime. The `aws-lc-rs` provider offers the hybrid
//! post-quantum key exchange X25519MLKEM768 first (key recorded today
//! stays unreadable to a future quantum computer: the threat QKD answers).
//!
//! Protocol versions TLS 1.3 and 1.2 (KeyTalk's clients pin 1.2 with
//! secp384r1, which the provider offers), ALPN `http/1.1`, ECDSA P-256 /
//! P-384 and RSA certificates. Limits: rustls and `aws-lc-rs` keep the private
//! key in their own memory, which they do not wipe when a configuration is
//! dropped; keypipe wipes the file contents it read.

mod client;
mod files;
mod identity;
mod server;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use client::{Pin, client_config};
pub use files::{read_certs, read_key};
pub use identity::{PeerIdentity, Revoked, hex};
pub use server::{ClientAuth, ServerTlsFiles, TlsAcceptor, server_config};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file: which, and what is wrong.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        what: String,
    },
    /// A configuration that cannot work.
    #[error("{0}")]
    Config(String),
    /// rustls refused.
    #[error("TLS: {0}")]
    Rustls(rustls::Error),
}

impl TlsError {
    fn file(path: &Path, what: String) -> TlsError {
        TlsError::File {
            path: path.display().to_string(),
            what,
        }
    }
}

/// The rule for a listener without TLS on `listen` (what the
/// configuration calls `what`): off loopback it is refused, naming
/// `tls_key` and `insecure_key`, unless `insecure` is set; then it is
/// allowed with a warning (at every start).
pub fn allow_plaintext(
    what: &str,
    listen: SocketAddr,
    insecure: bool,
    tls_key: &str,
    insecure_key: &str,
) -> Result<(), String> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    if !insecure {
        return Err(format!(
            "{what} = \"{listen}\" is not loopback and has no TLS ({tls_key}): what it serves \
             would cross the network in clear. Add {tls_key}, or set {insecure_key} = true"
        ));
    }
    tracing::warn!(%listen, "{insecure_key}: {what} serves plain HTTP beyond loopback");
    Ok(())
}

/// The crypto provider every configuration uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
