//! TLS helpers of the tests: a PKI made with the real `keypipe ca`, a
//! blocking rustls client (the tests' own, beside curl, Python and
//! OpenSSL), and waiting for a TLS listener.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;

use super::{Answer, read_answer, request_text};

/// A CA made with `keypipe ca` in `data` (its store), files in `out`.
pub struct Pki {
    pub data: PathBuf,
    pub out: PathBuf,
}

impl Pki {
    /// `keypipe ca init` in `dir/ca-data`, files in `dir/pki`.
    pub fn new(dir: &Path) -> Pki {
        let pki = Pki {
            data: dir.join("ca-data"),
            out: dir.join("pki"),
        };
        pki.run(&["init", "--out", pki.out.to_str().unwrap()]);
        pki
    }

    /// Runs `keypipe ca --data-dir DATA {args}`, which must succeed; its JSON.
    pub fn run(&self, args: &[&str]) -> Value {
        super::admin("ca", &self.data, args)
    }

    /// Issues a server certificate (P-256) for `localhost` and 127.0.0.1.
    pub fn server(&self, name: &str) -> Value {
        self.server_key(name, "p256")
    }

    /// Issues a server certificate with a key of `key_type`.
    pub fn server_key(&self, name: &str, key_type: &str) -> Value {
        let out = self.out.to_str().unwrap();
        self.run(&[
            "issue-server",
            name,
            "--san",
            "DNS:localhost,IP:127.0.0.1",
            "--key-type",
            key_type,
            "--out",
            out,
        ])
    }

    /// Issues a client certificate of `role` (files in `out/client/`).
    pub fn client(&self, name: &str, role: &str) -> Value {
        let out = self.out.join("client");
        self.run(&[
            "issue-client",
            name,
            "--role",
            role,
            "--out",
            out.to_str().unwrap(),
        ])
    }

    /// The certificate chain file of server `name`.
    pub fn crt(&self, name: &str) -> PathBuf {
        self.out.join(format!("{name}.crt"))
    }

    /// The key file of server `name`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.out.join(format!("{name}.key"))
    }

    /// The certificate chain file of client `name`.
    pub fn client_crt(&self, name: &str) -> PathBuf {
        self.out.join("client").join(format!("{name}.crt"))
    }

    /// The key file of client `name`.
    pub fn client_key(&self, name: &str) -> PathBuf {
        self.out.join("client").join(format!("{name}.key"))
    }

    /// A client configuration of the tests' own client presenting `name`.
    pub fn client_config(&self, name: &str) -> Arc<ClientConfig> {
        client_config(
            &self.ca(),
            Some((&self.client_crt(name), &self.client_key(name))),
        )
    }

    /// A TLS acceptor for an in-test server with server certificate
    /// `name`, requiring client certificates of this CA.
    pub fn acceptor(&self, name: &str) -> keypipe_server::tls::TlsAcceptor {
        let files = keypipe_server::tls::ServerTlsFiles {
            cert: self.crt(name),
            key: self.key(name),
            client_ca: Some(self.ca()),
            client_auth: keypipe_server::tls::ClientAuth::Required,
        };
        keypipe_server::tls::TlsAcceptor::new(files, Arc::new(keypipe_server::tls::Revoked::new()))
            .unwrap()
    }

    /// `[node.engine.tls]` presenting client certificate `name`.
    pub fn engine_tls(&self, name: &str) -> String {
        format!(
            "[node.engine.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            self.ca(),
            self.client_crt(name),
            self.client_key(name)
        )
    }

    /// The trust anchor.
    pub fn ca(&self) -> PathBuf {
        self.out.join("ca.crt")
    }

    /// A `[node.tls]` section for server `name` with `client_auth`.
    pub fn node_tls(&self, name: &str, client_auth: &str) -> String {
        format!(
            "[node.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nclient_auth = {client_auth:?}\n",
            self.crt(name),
            self.key(name),
            self.ca()
        )
    }
}

/// Waits (at most 10 s) until something accepts TCP on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client configuration trusting `ca`, presenting `client` (chain, key).
pub fn client_config(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some((chain, key)) => {
            let chain = CertificateDer::pem_file_iter(chain)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A keep-alive TLS connection of the tests' own client.
pub struct TlsConn {
    pub stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsConn {
    /// Connects and completes the handshake (its error, when refused).
    pub fn open(addr: SocketAddr, config: &Arc<ClientConfig>) -> std::io::Result<TlsConn> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from("localhost").unwrap();
        let conn =
            ClientConnection::new(Arc::clone(config), name).map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        // TLS 1.3: a refused client certificate shows on the first read.
        Ok(TlsConn {
            stream: BufReader::new(stream),
        })
    }

    /// One request and its answer.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<Answer> {
        let text = request_text(method, path, "localhost", body);
        self.stream.get_mut().write_all(text.as_bytes())?;
        self.stream.get_mut().flush()?;
        read_answer(&mut self.stream)
    }

    /// One request with a raw body (sent as JSON) and its answer.
    pub fn send_raw(&mut self, method: &str, path: &str, body: &[u8]) -> std::io::Result<Answer> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()?;
        read_answer(&mut self.stream)
    }

    /// OPEN_CONNECT of a stream from `source` to `destination` (joining
    /// `ksid` when given), 32-byte chunks.
    pub fn open_stream(&mut self, source: &str, destination: &str, ksid: Option<&str>) -> Answer {
        let body = serde_json::json!({"source": source, "destination": destination,
            "key_stream_id": ksid, "qos": {"key_chunk_size": 32, "timeout": 5000}});
        self.send("POST", super::OPEN, Some(&body)).unwrap()
    }
}

/// `curl` over HTTPS: (exit success, HTTP status or 0, stderr).
pub fn curl(url: &str, ca: &Path, client: Option<(&Path, &Path)>) -> (bool, u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-S",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
        "--cacert",
    ])
    .arg(ca);
    if let Some((crt, key)) = client {
        cmd.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    let out = cmd.arg(url).output().expect("curl is installed");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (
        out.status.success(),
        code,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
