//! A TLS client that sends its request and half-closes (close_notify and
//! FIN) gets its whole answer: the server sends what rustls still buffers
//! before it closes. (Found by review: up to 64 KiB was lost.)
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use keypipe_net::http::{Pool, Reply, Request, Response, Server, ServerConfig, Service};
use keypipe_net::tls::{ClientAuth, Revoked, ServerTlsFiles, TlsAcceptor};
use rustls::pki_types::{CertificateDer, ServerName};

static BODY_LEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Big;
impl Service for Big {
    fn call(&self, _req: Request) -> Reply {
        Reply::Now(Response::json(
            200,
            vec![b'a'; BODY_LEN.load(std::sync::atomic::Ordering::SeqCst)],
        ))
    }
}

fn setup(dir: &std::path::Path) -> (Server, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(dir.join("k.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let files = ServerTlsFiles {
        cert: dir.join("c.pem"),
        key: dir.join("k.pem"),
        client_ca: None,
        client_auth: ClientAuth::None,
    };
    let acc = TlsAcceptor::new(files, Arc::new(Revoked::new())).unwrap();
    let config = ServerConfig {
        workers: 1,
        tls: Some(Arc::new(acc)),
        ..ServerConfig::default()
    };
    let server = Server::start("t", &config, Arc::new(Big), Pool::new(1).unwrap()).unwrap();
    (server, cert.der().clone())
}

fn client(root: &CertificateDer<'static>) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("localhost").unwrap())
        .unwrap()
}

fn run(half_close: bool, dir: &std::path::Path) -> usize {
    let (server, root) = setup(dir);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.local_addr().into()).unwrap();
    let mut tcp: TcpStream = sock.into();
    let mut tls = client(&root);
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).unwrap();
    }
    tls.writer()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    if half_close {
        tls.send_close_notify();
    }
    while tls.wants_write() {
        tls.write_tls(&mut tcp).unwrap();
    }
    if half_close {
        tcp.shutdown(Shutdown::Write).unwrap();
    }
    // A slow reader: the socket buffers fill up.
    std::thread::sleep(Duration::from_millis(300));
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut got = Vec::new();
    let mut iter = 0u64;
    loop {
        match tls.read_tls(&mut tcp) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => break,
        }
        if tls.process_new_packets().is_err() {
            break;
        }
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        iter += 1;
        if iter.is_multiple_of(64) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if got.len() > BODY_LEN.load(std::sync::atomic::Ordering::SeqCst) + 200 && !half_close {
            break;
        }
    }
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |p| p + 4);
    got.len() - head_end
}

#[test]
fn a_half_closed_tls_client_gets_its_whole_answer() {
    let mut lost = 0;
    let runs = 24;
    for i in 0..runs {
        let body = (3 << 20) + i * 37_119;
        BODY_LEN.store(body, std::sync::atomic::Ordering::SeqCst);
        let dir = tempfile::tempdir().unwrap();
        let half = run(true, dir.path());
        if half != body {
            lost += 1;
            eprintln!("run {i}: half-closed client got {half} of {body} body bytes");
        }
    }
    eprintln!("{lost} of {runs} half-closed runs truncated");
    assert_eq!(lost, 0);
}
