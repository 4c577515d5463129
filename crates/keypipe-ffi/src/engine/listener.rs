//! The C library's listeners: the engine's for the peer's link sync (the
//! link routes only; mutual TLS unless plaintext is allowed), and the
//! one-loop server and client-certificate TLS acceptor the KMS side shares.

use std::net::SocketAddr;
use std::sync::Arc;

use keypipe_core::qkd::EngineConfig;
use keypipe_net::http::{Pool, Server, ServerConfig};
use keypipe_net::linked::LinkedEngine;
use keypipe_net::metrics::RequestMetrics;
use keypipe_net::router::Router;
use keypipe_net::tls::{ClientAuth, Revoked, ServerTlsFiles, TlsAcceptor, allow_plaintext};

use crate::errors::*;

/// The listener for the peer's link sync: the link routes only.
pub(super) fn link_listener(
    config: &EngineConfig,
    listen: Option<SocketAddr>,
    linked: &LinkedEngine,
) -> Result<Server, kp_result> {
    let listen = listen.ok_or_else(|| fail(KP_ERR_CONFIG, "link.listen is required".into()))?;
    let link = config.link.as_ref().expect("called for a [link]");
    let tls = match (&link.listen_cert, &link.listen_key, &config.tls) {
        (Some(cert), Some(key), Some(files)) => Some(acceptor(cert, key, &files.ca)?),
        _ => None,
    };
    if tls.is_none() {
        // Link sync between hosts needs mutual TLS.
        allow_plaintext(
            "link.listen",
            listen,
            link.insecure_plaintext,
            "link.listen_cert, link.listen_key and [tls]",
            "link.insecure_plaintext",
        )
        .map_err(|m| fail(KP_ERR_CONFIG, m))?;
    }
    let mut router = Router::new(Arc::new(RequestMetrics::default()));
    linked.mount(&mut router);
    serve(&config.name, listen, router, tls)
}

/// Serves `router` on `listen` with one event loop and one pool thread.
pub(crate) fn serve(
    name: &str,
    listen: SocketAddr,
    router: Router,
    tls: Option<Arc<TlsAcceptor>>,
) -> Result<Server, kp_result> {
    let config = ServerConfig {
        listen,
        workers: 1,
        tls,
        ..ServerConfig::default()
    };
    let io = |e: std::io::Error| fail(KP_ERR_IO, format!("cannot listen on {listen}: {e}"));
    let pool = Pool::new(1).map_err(io)?;
    Server::start(name, &config, Arc::new(router), pool).map_err(io)
}

/// A TLS listener's acceptor: server certificate `cert` and `key`, client
/// certificates required, chaining to `client_ca`.
pub(crate) fn acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: &std::path::Path,
) -> Result<Arc<TlsAcceptor>, kp_result> {
    let files = ServerTlsFiles {
        cert: cert.to_owned(),
        key: key.to_owned(),
        client_ca: Some(client_ca.to_owned()),
        client_auth: ClientAuth::Required,
    };
    TlsAcceptor::new(files, Arc::new(Revoked::new()))
        .map(Arc::new)
        .map_err(|e| fail(KP_ERR_CONFIG, format!("tls: {e}")))
}
