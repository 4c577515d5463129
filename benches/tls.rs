//! TLS handshakes in memory, client and server of one thread, with the
//! listener's own configuration (`tls::server_config`: aws-lc-rs,
//! X25519MLKEM768 first, tickets and a session cache) and a P-256
//! certificate: a full handshake, one with X25519 alone (what the hybrid
//! post-quantum share costs), and one resumed from a ticket. The time is
//! both sides' CPU; the server's share is about half.

use std::hint::black_box;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use keypipe_server::tls::{ClientAuth, Revoked, ServerTlsFiles, server_config};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

/// Moves bytes between the two until the handshake is done.
fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) {
    let mut buf = Vec::with_capacity(16 * 1024);
    while client.is_handshaking()
        || server.is_handshaking()
        || client.wants_write()
        || server.wants_write()
    {
        buf.clear();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        buf.clear();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets().unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (crt, key_file) = (dir.path().join("s.crt"), dir.path().join("s.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let files = ServerTlsFiles {
        cert: crt,
        key: key_file,
        client_ca: None,
        client_auth: ClientAuth::None,
    };
    let server = server_config(&files, &Arc::new(Revoked::new())).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let fresh = || {
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    };

    let mut g = c.benchmark_group("tls_handshake_p256");
    let mut full = fresh();
    full.resumption = rustls::client::Resumption::disabled();
    let full = Arc::new(full);
    g.bench_function("full", |b| {
        b.iter(|| {
            let mut client = ClientConnection::new(Arc::clone(&full), name.clone()).unwrap();
            let mut srv = ServerConnection::new(Arc::clone(&server)).unwrap();
            handshake(&mut client, &mut srv);
            black_box(client.negotiated_cipher_suite());
        })
    });
    // The same with X25519 alone (no post-quantum share): what the hybrid
    // key exchange costs.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut classic = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    classic.resumption = rustls::client::Resumption::disabled();
    let classic = Arc::new(classic);
    g.bench_function("full_x25519_only", |b| {
        b.iter(|| {
            let mut client = ClientConnection::new(Arc::clone(&classic), name.clone()).unwrap();
            let mut srv = ServerConnection::new(Arc::clone(&server)).unwrap();
            handshake(&mut client, &mut srv);
            black_box(client.negotiated_key_exchange_group());
        })
    });
    // Resumed: the client keeps its tickets (each is used once; the
    // server sends two per handshake, so there is always a fresh one).
    let resuming = Arc::new(fresh());
    let mut warm = ClientConnection::new(Arc::clone(&resuming), name.clone()).unwrap();
    let mut srv = ServerConnection::new(Arc::clone(&server)).unwrap();
    handshake(&mut warm, &mut srv);
    g.bench_function("resumed", |b| {
        b.iter(|| {
            let mut client = ClientConnection::new(Arc::clone(&resuming), name.clone()).unwrap();
            let mut srv = ServerConnection::new(Arc::clone(&server)).unwrap();
            handshake(&mut client, &mut srv);
            assert_eq!(
                client.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed)
            );
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = bench
}
criterion_main!(benches);
