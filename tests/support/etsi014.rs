//! Two KMEs (each node its own `keypipe serve` process, linked over
//! HTTP), their SAEs with client certificates from a real `keypipe ca`, and
//! a TLS client speaking ETSI 014 as any of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use uuid::Uuid;

use super::tls::{Pki, TlsConn};
use super::{Answer, ServerProcess, free_port, request};

/// One node process.
pub struct Kme {
    pub name: &'static str,
    pub dir: PathBuf,
    pub http: u16,
    pub port: u16,
    pub config: String,
    pub process: Option<ServerProcess>,
}

impl Kme {
    /// The node's 014 listener.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the process; returns once both listeners answer (healthy or
    /// not: its peer may be down).
    pub fn start(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let mut process = ServerProcess::spawn(&self.dir, self.http, &self.config);
        let deadline = Instant::now() + Duration::from_secs(30);
        while request(process.addr, "GET", "/healthz", None).is_err()
            || std::net::TcpStream::connect(self.addr()).is_err()
        {
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!("{} exited ({status}): {}", self.name, process.log_text());
            }
            assert!(Instant::now() < deadline, "{} never listened", self.name);
            std::thread::sleep(Duration::from_millis(10));
        }
        self.process = Some(process);
    }

    /// kill -9, and wait for the process to be gone.
    pub fn kill(&mut self) {
        drop(self.process.take());
    }
}

/// Node A (leader) and node B (follower) with their SAEs.
pub struct Kmes {
    pub pki: Pki,
    pub nodes: [Kme; 2],
}

/// Engine settings of the test nodes (small, so runs stay light).
const ENGINE: &str = "block_size = 4096\narena_blocks = 256\nring_blocks = 32\nwindow_blocks = 128";

impl Kmes {
    /// Starts both nodes in `dir`: `saes[0]` attached to A, `saes[1]` to B;
    /// `settings` goes into `[etsi014]`.
    pub fn start(dir: &Path, saes: [&[&str]; 2], settings: &str) -> Kmes {
        let pki = Pki::new(dir);
        for sae in saes.iter().flat_map(|s| s.iter()) {
            pki.client(sae, "sae");
        }
        for name in ["kme-a", "kme-b"] {
            pki.server(name);
        }
        let ports = [(free_port(), free_port()), (free_port(), free_port())];
        let list = |s: &[&str]| {
            s.iter()
                .map(|x| format!("{x:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut nodes = Vec::new();
        for i in 0..2 {
            let (name, peer, role, server) = match i {
                0 => ("node-a", "node-b", "leader", "kme-a"),
                _ => ("node-b", "node-a", "follower", "kme-b"),
            };
            let (http, port) = ports[i];
            let config = format!(
                r#"pool_threads = 4
[etsi014]
{settings}
[[node]]
name = "{name}"
listen = "127.0.0.1:{http}"
workers = 1
serve = ["etsi014"]
[node.etsi014]
listen = "127.0.0.1:{port}"
saes = [{saes}]
peer_saes = [{peer_saes}]
[node.etsi014.tls]
cert = {cert:?}
key = {key:?}
client_ca = {ca:?}
client_auth = "required"
[node.engine]
role = "{role}"
{ENGINE}
[node.engine.device]
driver = "simulated"
rate_bps = 400000000
link_secret = "{device}"
[node.engine.link]
peer = "http://127.0.0.1:{peer_http}"
secret = "{secret}"
peer_name = "{peer}"
"#,
                saes = list(saes[i]),
                peer_saes = list(saes[1 - i]),
                cert = pki.crt(server),
                key = pki.key(server),
                ca = pki.ca(),
                peer_http = ports[1 - i].0,
                device = "5a".repeat(32),
                secret = "a5".repeat(32),
            );
            nodes.push(Kme {
                name,
                dir: dir.join(name),
                http,
                port,
                config,
                process: None,
            });
        }
        let b = nodes.pop().unwrap();
        let a = nodes.pop().unwrap();
        let mut kmes = Kmes { pki, nodes: [a, b] };
        for n in &mut kmes.nodes {
            n.start();
        }
        kmes
    }

    /// A keep-alive connection to node `i` as SAE `sae`.
    pub fn conn(&self, i: usize, sae: &str) -> TlsConn {
        TlsConn::open(self.nodes[i].addr(), &self.pki.client_config(sae)).unwrap()
    }

    /// Waits (at most 20 s) until `master` on node `i` can get key for
    /// `slave` (the link is up and the stream is supplied).
    pub fn wait_ready(&self, i: usize, master: &str, slave: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut c = self.conn(i, master);
            let st = c
                .send("GET", &format!("/api/v1/keys/{slave}/status"), None)
                .unwrap();
            if st.status == 200 && st.json()["stored_key_count"].as_u64().unwrap_or(0) > 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i}: {master} -> {slave} never ready: {} {}",
                st.status,
                String::from_utf8_lossy(&st.body)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The keys of a key container: (id, bytes).
pub fn keys_of(answer: &Answer) -> Vec<(Uuid, Vec<u8>)> {
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let v = answer.json();
    v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            let id: Uuid = k["key_ID"].as_str().unwrap().parse().unwrap();
            let key = base64::engine::general_purpose::STANDARD
                .decode(k["key"].as_str().unwrap())
                .unwrap();
            (id, key)
        })
        .collect()
}

/// Asserts a refusal: its status, a JSON body with exactly `message` (when
/// given) and no `details`.
pub fn assert_refused(answer: &Answer, status: u16, message: Option<&str>) -> String {
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    assert_eq!(answer.status, status, "{text}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{text}"
    );
    let v: Value = serde_json::from_slice(&answer.body).expect("a JSON body");
    let got = v["message"].as_str().expect("a message").to_owned();
    if let Some(m) = message {
        assert_eq!(got, m);
    }
    assert!(v.get("details").is_none(), "{text}");
    got
}
