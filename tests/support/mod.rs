//! Shared helpers of the server tests: nodes on free ports, a blocking
//! HTTP/1.1 test client over real sockets, and a KMS receiver that records
//! every push (and can go down and come back on the same port).
#![allow(dead_code)]

pub mod etsi014;
pub mod feeder;
pub mod keytalk;
pub mod keytalk_clients;
pub mod ncp;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use keypipe_server::config::Config;
use keypipe_server::http::{Method, Pool, Reply, Request, Response, Server, ServerConfig, Service};
use keypipe_server::node::RunningNode;
use serde_json::{Value, json};
use uuid::Uuid;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port listened on (so no outbound connection's ephemeral port takes
/// it) until dropped: for a port written into a configuration long
/// before its server binds it.
pub struct HeldPort(TcpListener);

impl HeldPort {
    /// Holds a free port.
    pub fn new() -> HeldPort {
        HeldPort(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// The port held.
    pub fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }
}

/// The TOML of a two-node link: node A (leader) on `a`, node B on `b`;
/// A's peer URL `peer_of_a`, B's `peer_of_b` (normally each other's).
pub fn pair_toml(a: u16, b: u16, peer_of_a: u16, peer_of_b: u16, extra_http: &str) -> String {
    let node = |name: &str, port: u16, role: &str, peer: u16| {
        format!(
            r#"
[[node]]
name = "{name}"
listen = "127.0.0.1:{port}"
workers = 2
serve = ["etsi004-qkd", "etsi004-kms"]
[node.http]
{extra_http}
[node.push]
queue_chunks = 256
[node.engine]
role = "{role}"
block_size = 1024
arena_blocks = 512
ring_blocks = 64
max_key_chunk_size = 4096
[node.engine.device]
driver = "simulated"
rate_bps = 0
link_secret = "{dev}"
[node.engine.link]
peer = "http://127.0.0.1:{peer}"
secret = "{link}"
"#,
            dev = "11".repeat(32),
            link = "22".repeat(32),
        )
    };
    format!(
        "pool_threads = 4\n{}{}",
        node("node-a", a, "leader", peer_of_a),
        node("node-b", b, "follower", peer_of_b)
    )
}

/// Starts every node of `toml` in this process, with their key ledgers
/// in a new directory of their own.
pub fn start_nodes(toml: &str) -> Vec<RunningNode> {
    let mut config = Config::from_toml(toml).unwrap();
    config.data_dir = tempfile::tempdir().unwrap().keep();
    config.apply_data_dir();
    let pool = Pool::new(config.pool_threads).unwrap();
    config
        .nodes
        .iter()
        .map(|n| RunningNode::start(n, &pool).unwrap())
        .collect()
}

/// Two linked nodes on free ports, once both report healthy.
pub fn linked_pair() -> (RunningNode, RunningNode) {
    let (a, b) = (free_port(), free_port());
    let mut nodes = start_nodes(&pair_toml(a, b, b, a, ""));
    let nb = nodes.pop().unwrap();
    let na = nodes.pop().unwrap();
    wait_healthy(na.local_addr());
    wait_healthy(nb.local_addr());
    (na, nb)
}

/// Waits (at most 10 s) until `/healthz` answers 200.
pub fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = request(addr, "GET", "/healthz", None)
            && r.status == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} never became healthy");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A parsed answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} (status {})",
                String::from_utf8_lossy(&self.body),
                self.status
            )
        })
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one answer from `reader` (Content-Length framing; 204 and 1xx
/// without content). 100 Continue is skipped.
pub fn read_answer(reader: &mut impl BufRead) -> std::io::Result<Answer> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').unwrap();
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        if status == 100 {
            continue;
        }
        let len = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        return Ok(Answer {
            status,
            headers,
            body,
        });
    }
}

/// A keep-alive test connection.
pub struct Conn {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    /// A connection to `addr` from the local address `source` (port
    /// chosen by the system): on Linux any of 127/8 reaches a loopback
    /// server, so tests can play several clients.
    pub fn open_from(addr: SocketAddr, source: std::net::IpAddr) -> std::io::Result<Conn> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        socket.connect(&addr.into())?;
        let stream = TcpStream::from(socket);
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<Answer> {
        self.stream
            .write_all(request_text(method, path, "test", body).as_bytes())?;
        read_answer(&mut self.reader)
    }
}

/// The text of one request with a JSON body (or none).
pub fn request_text(method: &str, path: &str, host: &str, body: Option<&Value>) -> String {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<Answer> {
    Conn::open(addr)?.send(method, path, body)
}

pub const OPEN: &str = "/api/v1/kms/etsi004/open-connect";
pub const GET_KEY: &str = "/api/v1/kms/etsi004/get-key";
pub const CLOSE: &str = "/api/v1/kms/etsi004/close";

/// Opens a stream on A (new KSID) and on B, pushing to `kms_a` / `kms_b`.
pub fn open_stream(a: SocketAddr, b: SocketAddr, kms_a: &str, kms_b: &str, qos: Value) -> Uuid {
    let r = request(
        a,
        "POST",
        OPEN,
        Some(&json!({"source": kms_a, "destination": kms_b, "key_stream_id": null, "qos": qos})),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["status"], 1);
    let ksid: Uuid = v["key_stream_id"].as_str().unwrap().parse().unwrap();
    let r = request(
        b,
        "POST",
        OPEN,
        Some(&json!({"source": kms_a, "destination": kms_b, "key_stream_id": ksid, "qos": {}})),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], 0);
    assert_eq!(r.json()["qos"], v["qos"], "B inherits A's QoS");
    ksid
}

/// Calls get-key for `ksid` (optionally at `index`) and expects 205.
pub fn start_pushing(node: SocketAddr, ksid: Uuid, index: Option<u32>) {
    let mut body = json!({ "key_stream_id": ksid });
    if let Some(i) = index {
        body["index"] = json!(i);
    }
    let r = request(node, "GET", GET_KEY, Some(&body)).unwrap();
    assert_eq!(r.status, 205, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("0"));
}

/// What a test KMS received: stream -> index -> key bytes.
#[derive(Default)]
pub struct Log {
    pub keys: HashMap<Uuid, BTreeMap<u32, Vec<u8>>>,
    /// Pushes of an index already held (with the same bytes).
    pub repeats: u64,
    /// Pushes of an index already held with different bytes.
    pub conflicts: u64,
    /// When each push was taken in: (stream, index, instant).
    pub arrivals: Vec<(Uuid, u32, Instant)>,
    /// The client-certificate names (`CN/OU`) pushes came with (TLS).
    pub pushers: std::collections::BTreeSet<String>,
    /// Pushes answered 409 (the poisoned index).
    pub poisoned: u64,
}

struct KmsService {
    log: Arc<Mutex<Log>>,
    /// Answer each push this late (on the pool): a slow KMS.
    delay: Duration,
    /// Answer 409 to every push of this index (a poisoned index).
    poison: Option<u32>,
}

impl Service for KmsService {
    fn call(&self, req: Request) -> Reply {
        if req.method != Method::Post || req.path() != "/api/v1/qkd/etsi004/key-material" {
            return Reply::Now(Response::json(404, "{}"));
        }
        let v: Value = serde_json::from_slice(&req.body).unwrap();
        let ksid: Uuid = v["metadata"]["buffer"]["key_stream_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            v["metadata"]["size"].as_u64().unwrap() as usize,
            v["metadata"]["buffer"].to_string().len()
        );
        let index = v["index"].as_u64().unwrap() as u32;
        if self.poison == Some(index) {
            self.log.lock().unwrap().poisoned += 1;
            return Reply::Now(Response::json(409, r#"{"status":3,"message":"poisoned"}"#));
        }
        let key = base64::engine::general_purpose::STANDARD
            .decode(v["key_buffer"].as_str().unwrap())
            .unwrap();
        let mut log = self.log.lock().unwrap();
        if let Some(id) = req.peer.as_ref().and_then(|p| p.identity.as_ref()) {
            log.pushers.insert(format!("{}/{}", id.name, id.role));
        }
        log.arrivals.push((ksid, index, Instant::now()));
        let stream = log.keys.entry(ksid).or_default();
        match stream.get(&index) {
            Some(k) if *k == key => log.repeats += 1,
            Some(_) => log.conflicts += 1,
            None => {
                stream.insert(index, key);
            }
        }
        drop(log);
        if self.delay.is_zero() {
            return Reply::Now(Response::json(201, r#"{"status":0}"#));
        }
        let delay = self.delay;
        Reply::Later(Box::new(move || {
            std::thread::sleep(delay);
            Response::json(201, r#"{"status":0}"#)
        }))
    }
}

/// A KMS receiver over real sockets that keeps its log across restarts.
pub struct TestKms {
    pub port: u16,
    pub log: Arc<Mutex<Log>>,
    server: Option<Server>,
    delay: Duration,
    tls: Option<Arc<keypipe_server::tls::TlsAcceptor>>,
    poison: Option<u32>,
}

impl TestKms {
    pub fn start() -> TestKms {
        TestKms::start_slow(Duration::ZERO)
    }

    /// A KMS that answers every push `delay` late.
    pub fn start_slow(delay: Duration) -> TestKms {
        let mut kms = TestKms {
            // Bound by `up`: the port the listener gets (no window for
            // another process to take a port picked before).
            port: 0,
            log: Arc::default(),
            server: None,
            delay,
            tls: None,
            poison: None,
        };
        kms.up();
        kms
    }

    /// A KMS that answers 409 to every push of `index`.
    pub fn start_poisoned(index: u32) -> TestKms {
        let mut kms = TestKms {
            // Bound by `up`: the port the listener gets (no window for
            // another process to take a port picked before).
            port: 0,
            log: Arc::default(),
            server: None,
            delay: Duration::ZERO,
            tls: None,
            poison: Some(index),
        };
        kms.up();
        kms
    }

    /// A KMS receiver over TLS (`https://localhost:PORT`).
    pub fn start_tls(tls: keypipe_server::tls::TlsAcceptor) -> TestKms {
        TestKms::start_tls_on(0, tls)
    }

    /// A KMS receiver over TLS on `port`.
    pub fn start_tls_on(port: u16, tls: keypipe_server::tls::TlsAcceptor) -> TestKms {
        let mut kms = TestKms {
            port,
            log: Arc::default(),
            server: None,
            delay: Duration::ZERO,
            tls: Some(Arc::new(tls)),
            poison: None,
        };
        kms.up();
        kms
    }

    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// Starts listening (on a port of its own the first time), or again on
    /// the same port.
    pub fn up(&mut self) {
        let config = ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], self.port)),
            workers: 1,
            tls: self.tls.clone(),
            ..ServerConfig::default()
        };
        let service = Arc::new(KmsService {
            log: Arc::clone(&self.log),
            delay: self.delay,
            poison: self.poison,
        });
        let pool = Pool::new(if self.delay.is_zero() { 1 } else { 64 }).unwrap();
        let server = Server::start("kms", &config, service, pool).unwrap();
        self.port = server.local_addr().port();
        self.server = Some(server);
    }

    /// Stops listening (connections are closed).
    pub fn down(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown_handle().trigger();
            s.join();
        }
    }

    /// Indexes received for `ksid`, in order.
    pub fn indexes(&self, ksid: &Uuid) -> Vec<u32> {
        self.log
            .lock()
            .unwrap()
            .keys
            .get(ksid)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Waits (at most `secs`) until `n` indexes of `ksid` arrived.
    pub fn wait_for(&self, ksid: &Uuid, n: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.indexes(ksid).len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} chunks arrived",
                self.indexes(ksid).len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestKms {
    fn drop(&mut self) {
        self.down();
    }
}

/// Asserts that what both KMSes received of `ksid` is byte-identical on
/// every index both have, and that each side's indexes are contiguous from
/// its first. Returns how many indexes both have.
pub fn assert_identical(kms_a: &TestKms, kms_b: &TestKms, ksid: &Uuid, chunk: usize) -> usize {
    let la = kms_a.log.lock().unwrap();
    let lb = kms_b.log.lock().unwrap();
    assert_eq!(
        (la.conflicts, lb.conflicts),
        (0, 0),
        "an index came with different bytes"
    );
    let (ka, kb) = (&la.keys[ksid], &lb.keys[ksid]);
    for keys in [ka, kb] {
        let idx: Vec<u32> = keys.keys().copied().collect();
        let first = idx[0];
        assert!(
            idx.iter().enumerate().all(|(i, &x)| x == first + i as u32),
            "indexes not contiguous: {:?}..",
            &idx[..idx.len().min(20)]
        );
        assert!(keys.values().all(|k| k.len() == chunk));
    }
    let mut common = 0;
    for (i, k) in ka {
        if let Some(other) = kb.get(i) {
            assert_eq!(k, other, "index {i} differs between the two KMSes");
            common += 1;
        }
    }
    common
}

/// A TCP forwarder to `127.0.0.1:target` that can cut the connection (to
/// simulate a network partition between the nodes).
pub struct Proxy {
    pub port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, l) = (Arc::clone(&cut), Arc::clone(&live));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut live = l.lock().unwrap();
                live.push(client.try_clone().unwrap());
                live.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, live }
    }

    /// Cuts (and refuses) connections, or lets them through again.
    pub fn cut(&self, on: bool) {
        self.cut.store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            for s in self.live.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Opens a stream on A and B pushing to `kms_a` / `kms_b`, and calls
/// get-key on both: key flows from here on.
pub fn push_stream(
    a: SocketAddr,
    b: SocketAddr,
    kms_a: &TestKms,
    kms_b: &TestKms,
    qos: Value,
) -> Uuid {
    let ksid = open_stream(a, b, &kms_a.url(), &kms_b.url(), qos);
    start_pushing(a, ksid, None);
    start_pushing(b, ksid, None);
    ksid
}

/// The value of the first `/metrics` sample whose line starts with `name`.
pub fn metric(node: SocketAddr, name: &str) -> f64 {
    let text = String::from_utf8(request(node, "GET", "/metrics", None).unwrap().body).unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Two linked nodes, two test KMSes, and a stream pushing to them.
pub fn pushing(qos: Value) -> (RunningNode, RunningNode, TestKms, TestKms, Uuid) {
    let (a, b) = linked_pair();
    let (kms_a, kms_b) = (TestKms::start(), TestKms::start());
    let ksid = push_stream(a.local_addr(), b.local_addr(), &kms_a, &kms_b, qos);
    (a, b, kms_a, kms_b, ksid)
}

/// The `keypipe serve` binary on a configuration of its own, in `dir`
/// (its store's directory too); its log (debug level) goes to `log`.
/// Killed (like `kill -9`) when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub log: std::path::PathBuf,
}

impl ServerProcess {
    /// Starts the server with `config` (TOML) listening on `port`, and
    /// waits until it answers `/healthz`.
    pub fn start(dir: &std::path::Path, port: u16, config: &str) -> ServerProcess {
        let server = ServerProcess::spawn(dir, port, config);
        wait_healthy(server.addr);
        server
    }

    /// Starts the server (a TLS listener on `port`) and waits until it
    /// accepts connections.
    pub fn start_tls(dir: &std::path::Path, port: u16, config: &str) -> ServerProcess {
        let server = ServerProcess::spawn(dir, port, config);
        tls::wait_listening(server.addr);
        server
    }

    /// Starts the server without waiting for it.
    pub fn spawn(dir: &std::path::Path, port: u16, config: &str) -> ServerProcess {
        ServerProcess::spawn_with(dir, port, config, |_| {})
    }

    /// [`ServerProcess::spawn`], with `customize` adjusting the command
    /// first (working directory, limits set before exec).
    pub fn spawn_with(
        dir: &std::path::Path,
        port: u16,
        config: &str,
        customize: impl FnOnce(&mut std::process::Command),
    ) -> ServerProcess {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("server-{n}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("server-{n}.log"));
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keypipe"));
        command
            .args(["serve", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(dir)
            .env("KEYPIPE_LOG", "debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        customize(&mut command);
        let child = command.spawn().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        ServerProcess { child, addr, log }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `keypipe {command} --data-dir {dir} {args}` with `input` (if
/// any) on its standard input; what it did.
pub fn admin_run(
    command: &str,
    dir: &std::path::Path,
    args: &[&str],
    input: Option<&str>,
) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keypipe"))
        .arg(command)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs the admin command `keypipe {command} --data-dir {dir} {args}`,
/// which must succeed; its standard output as JSON.
pub fn admin(command: &str, dir: &std::path::Path, args: &[&str]) -> Value {
    let out = admin_run(command, dir, args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts an ETSI 004 error answer: HTTP code, ETSI status, message.
pub fn assert_etsi_error(r: &Answer, http: u16, status: u64, needle: &str) {
    assert_eq!(r.status, http, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["status"], status, "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

/// This host's address on its default route (not loopback), found
/// without sending anything: what a caller from another host looks like
/// to a listener on 0.0.0.0.
pub fn non_loopback_ip() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect("192.0.2.1:9").unwrap();
    let ip = socket.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "no non-loopback address: {ip}"
    );
    ip
}

/// Runs `openssl args…`: its standard output and error; panics naming
/// both when it fails.
pub fn openssl_output(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (scripts/test-deps.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

/// Fails (never skips) when `tool` is not on PATH.
pub fn require(tool: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "these tests need `{tool}` (scripts/test-deps.sh installs it)"
    );
}

/// A Python virtual environment `CARGO_TARGET_TMPDIR/{name}` with
/// `package` installed by pip (made, or made again, unless `ready`, a
/// Python statement, already succeeds in it); its directory.
pub fn python_venv(name: &str, package: &str, ready: &str) -> std::path::PathBuf {
    use std::process::Command;
    require("python3");
    let venv = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let ok = Command::new(venv.join("bin/python"))
        .args(["-c", ready])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let _ = std::fs::remove_dir_all(&venv);
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(made.success(), "python3 -m venv");
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", package])
            .status()
            .unwrap();
        assert!(pip.success(), "pip install {package}");
    }
    venv
}
