//! Load generator for keypipe's HTTP API, and the baseline server it is
//! measured against.
//!
//! `cargo run --release --example load -- <scenario> [options]`; `--help`
//! lists the scenarios, `<scenario> --help` their options.
//!
//! Everything runs on mio, non-blocking: a client thread drives all its
//! connections from one event loop, each connection keep-alive with one
//! request in flight (closed loop). Latency is measured per request, from
//! the start of the send to the end of the response, into a log-linear
//! histogram (about 1.6 % resolution). Requests answered with another status
//! than expected, and connections that fail, are counted as errors.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use keypipe_server::kms::agreement::Scheme;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use serde::Deserialize;
use serde_json::json;
use socket2::{Domain, Socket, Type};

/// Prefix of the ETSI GS QKD 004 application API.
const API: &str = "/api/v1/kms/etsi004";
/// Body of the `cycle` scenario's OPEN_CONNECT.
const OPEN_BODY: &str = r#"{"source":"http://127.0.0.1:9/","destination":"http://127.0.0.1:9/","key_stream_id":null,"qos":{"key_chunk_size":32,"timeout":1000}}"#;
/// The baseline server's only answer.
const OK_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}";
/// A KMS receiver's answer to key material it accepted.
const CREATED: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"status\":0}";
/// A KMS receiver's answer to key material it could not read.
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
/// A KMS receiver's answer to any other request.
const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";

/// Load generator for keypipe's HTTP API and the baseline server it is
/// measured against.
#[derive(Parser)]
#[command(name = "load", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// The scenarios.
#[derive(Subcommand)]
enum Scenario {
    /// Run the baseline server until killed: a fixed 200 JSON answer to every
    /// request, one mio loop and SO_REUSEPORT listener per core.
    Baseline {
        /// Address to listen on (port 0: an ephemeral port, printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Closed-loop GET /healthz against the server, then the same load
    /// against an in-process baseline server (or `--against`); prints the
    /// ratio in %.
    Healthz(HealthzArgs),
    /// Closed-loop cycles of open-connect (201), get-key (205) and close
    /// (204) on each connection; per-request-type latency.
    Cycle(LoadArgs),
    /// Two in-process KMS receivers; one stream opened on both nodes with
    /// the receivers as source and destination, key material pushed to them
    /// is counted and compared. Exits non-zero on any mismatch.
    Push(PushArgs),
    /// healthz and cycle at 64 and 256 connections, push with 32 B and
    /// 1024 B chunks, then one summary table.
    All(AllArgs),
    /// Closed-loop NCP KMS `encrypt` of 1 KiB, signed (API Gateway v2).
    Ncp(NcpArgs),
    /// Closed-loop GET of the Donau's `keys`, then GET /healthz on the same
    /// server and connections, twice in turn; the keys rows show their rate
    /// in % of the healthz run before them.
    Keys(KeysArgs),
    /// Closed-loop `POST /rest/key-agreement` for each scheme (the server
    /// makes a fresh key pair per request), then GET /healthz latency alone
    /// and during a burst of FFDHE-3072 agreements.
    Agreement(AgreementArgs),
    /// ETSI GS QKD 014 over mutual TLS: closed-loop `enc_keys` of the
    /// master SAE on node A while `dec_keys` of the slave SAE on node B
    /// fetches every key issued and compares its bytes; rows of both. Exits
    /// non-zero when a `dec_keys` is refused or a key differs.
    Etsi014(Etsi014Args),
    /// Runs node A and node B as two `keypipe serve` processes pushing one
    /// stream to two in-process KMS receivers, kills one or both with
    /// SIGKILL, restarts them, and times restart to the first chunk pushed
    /// by the restarted node (the stream resumes by itself).
    Restart(RestartArgs),
}

/// Options of the `restart` scenario.
#[derive(Args)]
struct RestartArgs {
    /// The keypipe binary.
    #[arg(long, default_value = "target/release/keypipe")]
    bin: String,
    /// Kill/restart rounds.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// key_chunk_size of the stream, bytes.
    #[arg(long, default_value_t = 32)]
    chunk: u32,
}

/// Options of the keys scenario.
#[derive(Args, Clone)]
struct KeysArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Path of the Donau's key list.
    #[arg(long, default_value = "/keys")]
    path: String,
}

/// The `keys` scenario.
fn keys(k: &KeysArgs) -> Result<Vec<Row>, String> {
    let t = target(&k.load.url)?;
    let mut get = Vec::new();
    request(&mut get, "GET", &k.path, &t.host, "");
    let get = Kind::Fixed(get.leak());
    let mut rows = Vec::new();
    for _ in 0..2 {
        let health = load(&t, Kind::Healthz, &k.load)?;
        let list = load(&t, get, &k.load)?;
        let h = Row::load("healthz", &k.load, &health, 0);
        let mut r = Row::load(format!("GET {}", k.path), &k.load, &list, 0);
        r.ratio = Some(100.0 * r.rate / h.rate.max(f64::MIN_POSITIVE));
        rows.extend([h, r]);
    }
    Ok(rows)
}

/// Options of the agreement scenario.
#[derive(Args, Clone)]
struct AgreementArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Connections sending FFDHE-3072 agreements during the burst.
    #[arg(long, default_value_t = 32)]
    burst_conns: usize,
    /// Connections probing /healthz, alone and during the burst.
    #[arg(long, default_value_t = 4)]
    probe_conns: usize,
}

/// A key-agreement request with a fresh client key of `scheme`'s group
/// (raw encoding); the server does the whole work whatever the key.
fn agreement_request(scheme: Scheme, host: &str) -> Result<&'static [u8], String> {
    use keypipe_server::kms::agreement::{ecdh, ffdhe};
    let public = match scheme {
        Scheme::Aes1 => ffdhe::Group::Ffdhe2048.generate().map(|(_, y)| y),
        Scheme::Aes2 => ffdhe::Group::Ffdhe3072.generate().map(|(_, y)| y),
        Scheme::EcAes1 => ecdh::Curve::P256.generate().map(|(_, p)| p.to_sec1()),
        Scheme::EcAes2 => ecdh::Curve::P384.generate().map(|(_, p)| p.to_sec1()),
    }
    .map_err(ctx("random"))?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let body = json!({
        "identifier": b64(b"load-client"),
        "nonce": b64(&[7u8; 16]),
        "public_key": b64(&public),
        "supported_schemes": [scheme.name()],
    })
    .to_string();
    let mut out = Vec::new();
    request(&mut out, "POST", "/rest/key-agreement", host, &body);
    Ok(out.leak())
}

/// The `agreement` scenario.
fn agreement(a: &AgreementArgs) -> Result<Vec<Row>, String> {
    let t = target(&a.load.url)?;
    let mut rows = Vec::new();
    for scheme in [Scheme::EcAes1, Scheme::EcAes2, Scheme::Aes1, Scheme::Aes2] {
        let st = load(
            &t,
            Kind::Fixed(agreement_request(scheme, &t.host)?),
            &a.load,
        )?;
        rows.push(Row::load(
            format!("agree {}", scheme.name()),
            &a.load,
            &st,
            0,
        ));
    }
    let probe = LoadArgs {
        conns: a.probe_conns,
        ..a.load.clone()
    };
    let alone = load(&t, Kind::Healthz, &probe)?;
    rows.push(Row::load("healthz alone", &probe, &alone, 0));
    let burst = LoadArgs {
        conns: a.burst_conns,
        ..a.load.clone()
    };
    let ffdhe = Kind::Fixed(agreement_request(Scheme::Aes2, &t.host)?);
    let (during, burst_st) = thread::scope(|s| {
        let b = s.spawn(|| load(&t, ffdhe, &burst));
        thread::sleep(Duration::from_millis(200));
        let probe = LoadArgs {
            secs: (a.load.secs - 0.4).max(0.5),
            ..probe.clone()
        };
        let during = load(&t, Kind::Healthz, &probe);
        (during.map(|st| (st, probe)), b.join())
    });
    let (during, probe) = during?;
    let burst_st = burst_st.map_err(|_| "burst thread panicked")??;
    rows.push(Row::load("healthz during FFDHE-3072", &probe, &during, 0));
    rows.push(Row::load("agree SCHEME-AES2 (burst)", &burst, &burst_st, 0));
    Ok(rows)
}

/// Options of the NCP scenario.
#[derive(Args, Clone)]
struct NcpArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// keyTag of an AES256 key.
    #[arg(long)]
    key_tag: String,
    /// Access key.
    #[arg(long)]
    access_key: String,
    /// Its secret key.
    #[arg(long)]
    secret_key: String,
}

/// The `ncp` scenario: signed encrypt requests of 1 KiB, each signed
/// anew (a query that changes): the server accepts a signed request once.
fn ncp(n: &NcpArgs) -> Result<Vec<Row>, String> {
    let t = target(&n.load.url)?;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(ctx("clock"))?
        .as_millis()
        .to_string();
    let mut plain = [0u8; 1024];
    for (i, b) in plain.iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    let body =
        json!({"plaintext": base64::engine::general_purpose::STANDARD.encode(plain)}).to_string();
    let signer: &'static NcpSigner = Box::leak(Box::new(NcpSigner {
        path: format!("/keys/v2/{}/encrypt", n.key_tag),
        access_key: n.access_key.clone(),
        secret_key: n.secret_key.clone(),
        timestamp,
        body,
        next: AtomicU64::new(0),
    }));
    let st = load(&t, Kind::Ncp(signer), &n.load)?;
    Ok(vec![Row::load(
        format!("ncp encrypt 1 KiB {}", n.load.url),
        &n.load,
        &st,
        0,
    )])
}

/// Options of a closed-loop load.
#[derive(Args, Clone)]
struct LoadArgs {
    /// Base URL of the node under load.
    #[arg(long, default_value = "http://127.0.0.1:7004")]
    url: String,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Duration of each run, seconds.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Client threads (one mio event loop each).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// Options of the healthz scenario.
#[derive(Args, Clone)]
struct HealthzArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Compare with this URL (e.g. the same server's plain listener)
    /// instead of the in-process baseline.
    #[arg(long)]
    against: Option<String>,
}

/// Options of the push scenario.
#[derive(Args, Clone)]
struct PushArgs {
    /// Base URL of node A.
    #[arg(long, default_value = "http://127.0.0.1:7004")]
    a: String,
    /// Base URL of node B.
    #[arg(long, default_value = "http://127.0.0.1:7005")]
    b: String,
    /// key_chunk_size of the stream, bytes.
    #[arg(long, default_value_t = 32)]
    chunk: u32,
    /// Measurement time after the first chunk arrives, seconds.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
}

/// Options of the `all` scenario.
#[derive(Args)]
struct AllArgs {
    /// Base URL of node A (healthz, cycle and push).
    #[arg(long, default_value = "http://127.0.0.1:7004")]
    a: String,
    /// Base URL of node B (push).
    #[arg(long, default_value = "http://127.0.0.1:7005")]
    b: String,
    /// Duration of each healthz and cycle run, seconds.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Measurement time of each push run, seconds.
    #[arg(long, default_value_t = 10.0)]
    push_secs: f64,
    /// Client threads (one mio event loop each).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().scenario {
        Scenario::Baseline { listen } => baseline(listen),
        Scenario::Healthz(h) => {
            healthz(&h.load, h.against.as_deref()).map(|rows| print_table(&rows))
        }
        Scenario::Cycle(l) => cycle(&l).map(|rows| print_table(&rows)),
        Scenario::Ncp(n) => ncp(&n).map(|rows| print_table(&rows)),
        Scenario::Agreement(a) => agreement(&a).map(|rows| print_table(&rows)),
        Scenario::Keys(k) => keys(&k).map(|rows| print_table(&rows)),
        Scenario::Push(p) => push(&p).and_then(|out| {
            print_table(&[out.row]);
            match out.mismatches {
                0 => Ok(()),
                n => Err(format!("{n} mismatching chunks")),
            }
        }),
        Scenario::All(a) => all(&a),
        Scenario::Etsi014(e) => etsi014(&e),
        Scenario::Restart(r) => restart(&r),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Formats an error with what was being done.
fn ctx<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// An error for a malformed message.
fn bad(what: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, what.to_string())
}

// ---------------------------------------------------------------- histogram

/// Sub-buckets per power of two (2^6 = 64: about 1.6 % resolution).
const SUB_BITS: u32 = 6;
/// Buckets needed for every u64.
const BUCKETS: usize = ((64 - SUB_BITS as usize) << SUB_BITS) + (1 << SUB_BITS);

/// Log-linear histogram of latencies in nanoseconds.
#[derive(Clone)]
struct Hist {
    counts: Vec<u64>,
    n: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            n: 0,
        }
    }
}

impl Hist {
    /// Bucket of `v`: exact below 128, then 64 buckets per power of two.
    fn bucket(v: u64) -> usize {
        if v < (2 << SUB_BITS) {
            return v as usize;
        }
        let shift = 63 - v.leading_zeros() - SUB_BITS;
        ((shift as usize) << SUB_BITS) + (v >> shift) as usize
    }

    /// Smallest value that falls in bucket `i`.
    fn low(i: usize) -> u64 {
        if i < (2 << SUB_BITS) {
            return i as u64;
        }
        let shift = (i >> SUB_BITS) - 1;
        (((i & ((1 << SUB_BITS) - 1)) + (1 << SUB_BITS)) as u64) << shift
    }

    /// Records one latency.
    fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(ns)] += 1;
        self.n += 1;
    }

    /// Adds `other`'s samples.
    fn merge(&mut self, other: &Hist) {
        self.counts
            .iter_mut()
            .zip(&other.counts)
            .for_each(|(a, b)| *a += b);
        self.n += other.n;
    }

    /// The `q` quantile in µs (`None` without samples).
    fn quantile_us(&self, q: f64) -> Option<f64> {
        let rank = ((self.n as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        let i = self.counts.iter().position(|c| {
            seen += c;
            seen >= rank
        })?;
        Some(Self::low(i) as f64 / 1000.0)
    }
}

// -------------------------------------------------------------------- HTTP

/// A node's base URL, resolved.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: String,
    /// `https://`: the client's TLS configuration and the server's name.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

/// Parses an `http://host:port[/]` or `https://…` base URL. For https,
/// `LOAD_CA` names the CA bundle to trust, and `LOAD_CERT` / `LOAD_KEY`
/// a client certificate to present (optional).
fn target(url: &str) -> Result<Target, String> {
    target_as(url, ("LOAD_CERT", "LOAD_KEY"))
}

/// [`target`], presenting the client certificate and key whose files the
/// environment variables `vars` name (when both are set).
fn target_as(url: &str, vars: (&str, &str)) -> Result<Target, String> {
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => {
            return Err(format!(
                "{url}: only http:// and https:// URLs are supported"
            ));
        }
    };
    let host = rest.split('/').next().unwrap_or_default().to_string();
    let with_port = if host.contains(':') {
        host.clone()
    } else {
        format!("{host}:{}", if tls { 443 } else { 80 })
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(ctx(url))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    let tls = match tls {
        false => None,
        true => {
            let name = host
                .rsplit_once(':')
                .map_or(host.as_str(), |(h, _)| h)
                .to_owned();
            let name = rustls::pki_types::ServerName::try_from(name).map_err(ctx(url))?;
            Some((tls_config(vars)?, name))
        }
    };
    Ok(Target { addr, host, tls })
}

/// The client TLS configuration: the CA bundle `LOAD_CA`, and the client
/// certificate and key whose files the environment variables `vars` name
/// (`LOAD_CERT`, `LOAD_KEY`; none when either is unset).
fn tls_config(vars: (&str, &str)) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let ca = std::env::var("LOAD_CA").map_err(|_| "https:// needs LOAD_CA (a CA bundle)")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca).map_err(ctx(&ca))? {
        roots.add(cert.map_err(ctx(&ca))?).map_err(ctx(&ca))?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (std::env::var(vars.0), std::env::var(vars.1)) {
        (Ok(cert), Ok(key)) => {
            let chain = CertificateDer::pem_file_iter(&cert)
                .map_err(ctx(&cert))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(ctx(&cert))?;
            let key = PrivateKeyDer::from_pem_file(&key).map_err(ctx(&key))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(ctx("client certificate"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A client socket: plain TCP, or TLS over it (rustls, non-blocking).
enum Sock {
    Plain(TcpStream),
    Tls(TcpStream, Box<rustls::ClientConnection>),
}

impl Sock {
    fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Sock::Plain(s) | Sock::Tls(s, _) => s,
        }
    }
}

/// Sends what TLS has buffered; `Ok(())` also when the socket is full.
fn flush_tls(tcp: &mut TcpStream, tls: &mut rustls::ClientConnection) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(tcp) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (tcp, tls) = match self {
            Sock::Plain(s) => return s.read(buf),
            Sock::Tls(tcp, tls) => (tcp, tls),
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match tls.read_tls(tcp) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    let state = tls.process_new_packets();
                    flush_tls(tcp, tls)?;
                    state.map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
                }
                Err(e) => {
                    flush_tls(tcp, tls)?;
                    return Err(e);
                }
            }
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (tcp, tls) = match self {
            Sock::Plain(s) => return s.write(buf),
            Sock::Tls(tcp, tls) => (tcp, tls),
        };
        if tls.is_handshaking() {
            flush_tls(tcp, tls)?;
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = tls.writer().write(buf)?;
        flush_tls(tcp, tls)?;
        if n == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sock::Plain(s) => s.flush(),
            Sock::Tls(tcp, tls) => flush_tls(tcp, tls),
        }
    }
}

/// Appends one HTTP/1.1 request to `out`, with a JSON body unless `body` is empty.
fn request(out: &mut Vec<u8>, method: &str, path: &str, host: &str, body: &str) {
    let req = if body.is_empty() {
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
    } else {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    out.extend_from_slice(req.as_bytes());
}

/// Content-Length of a parsed message (`None`: no such header), and whether
/// it asks to close the connection.
fn framing(headers: &[httparse::Header]) -> io::Result<(Option<usize>, bool)> {
    let (mut len, mut close) = (None, false);
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
            len = Some(v.ok_or_else(|| bad("bad Content-Length"))?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("Transfer-Encoding is not supported"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok((len, close))
}

/// Completes a non-blocking connect once: `Ok(false)` while it is still
/// in progress; when it completes, sets `connected` and restarts `started`.
fn finish_connect(
    sock: &mut Sock,
    connected: &mut bool,
    started: &mut Instant,
) -> io::Result<bool> {
    if *connected {
        return Ok(true);
    }
    if let Some(e) = sock.tcp().take_error()? {
        return Err(e);
    }
    match sock.tcp().peer_addr() {
        Ok(_) => *connected = true,
        Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(false),
        Err(e) => return Err(e),
    }
    sock.tcp().set_nodelay(true)?;
    *started = Instant::now();
    Ok(true)
}

/// A complete response at the front of `buf`: (status, head length, body
/// length, server closes). `None`: not complete yet.
fn parse_response(buf: &[u8]) -> io::Result<Option<(u16, usize, usize, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = r.parse(buf).map_err(|e| bad(&e.to_string()))? else {
        return Ok(None);
    };
    let code = r.code.unwrap_or(0);
    let (len, close) = framing(r.headers)?;
    let body = match code {
        100..=199 | 204 | 304 => 0,
        205 => len.unwrap_or(0),
        _ => len.ok_or_else(|| bad("response without Content-Length"))?,
    };
    Ok((buf.len() >= head + body).then_some((code, head, body, close)))
}

/// A complete request at the front of `buf`: (is a key-material POST, head
/// length, body length). `None`: not complete yet.
fn parse_request(buf: &[u8]) -> io::Result<Option<(bool, usize, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = r.parse(buf).map_err(|e| bad(&e.to_string()))? else {
        return Ok(None);
    };
    let key_material =
        r.method == Some("POST") && r.path == Some("/api/v1/qkd/etsi004/key-material");
    let body = framing(r.headers)?.0.unwrap_or(0);
    Ok((buf.len() >= head + body).then_some((key_material, head, body)))
}

/// A blocking connection: plain TCP, or TLS over it.
trait Blocking: Read + Write {}

impl<T: Read + Write> Blocking for T {}

/// One blocking request on a new connection (TLS for an https:// target):
/// (status, body).
fn call(t: &Target, method: &str, path: &str, body: &str) -> Result<(u16, Vec<u8>), String> {
    let scheme = if t.tls.is_some() { "https" } else { "http" };
    let what = format!("{method} {scheme}://{}{path}", t.host);
    let tcp = StdStream::connect_timeout(&t.addr, Duration::from_secs(5)).map_err(ctx(&what))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(ctx(&what))?;
    let mut s: Box<dyn Blocking> = match &t.tls {
        None => Box::new(tcp),
        Some((config, name)) => {
            let tls = rustls::ClientConnection::new(Arc::clone(config), name.clone())
                .map_err(ctx(&what))?;
            Box::new(rustls::StreamOwned::new(tls, tcp))
        }
    };
    let mut req = Vec::new();
    request(&mut req, method, path, &t.host, body);
    s.write_all(&req).map_err(ctx(&what))?;
    let (mut inb, mut buf) = (Vec::new(), [0; 4096]);
    loop {
        if let Some((code, head, len, _)) = parse_response(&inb).map_err(ctx(&what))? {
            return Ok((code, inb[head..head + len].to_vec()));
        }
        match s.read(&mut buf).map_err(ctx(&what))? {
            0 => return Err(format!("{what}: connection closed")),
            n => inb.extend_from_slice(&buf[..n]),
        }
    }
}

/// [`call`] expecting `status`; the error quotes the body.
fn expect(
    t: &Target,
    method: &str,
    path: &str,
    body: &str,
    status: u16,
) -> Result<Vec<u8>, String> {
    let (code, body) = call(t, method, path, body)?;
    if code != status {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!(
            "{method} {path} on {}: status {code} (expected {status}): {text}",
            t.host
        ));
    }
    Ok(body)
}

/// The `key_stream_id` of an OPEN_CONNECT answer.
fn ksid_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("key_stream_id")?.as_str().map(str::to_owned)
}

// ------------------------------------------------------------------ servers

/// Token of a server loop's listener.
const LISTENER: Token = Token(usize::MAX);

/// Reads all there is into `inb`. `Ok(true)`: the peer closed.
fn read_all(sock: &mut impl Read, inb: &mut Vec<u8>, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        match sock.read(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => inb.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes what it can of `out[*sent..]`; empties `out` once all is written.
fn write_out(sock: &mut impl Write, out: &mut Vec<u8>, sent: &mut usize) -> io::Result<()> {
    while *sent < out.len() {
        match sock.write(&out[*sent..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => *sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.clear();
    *sent = 0;
    Ok(())
}

/// A server-side connection: socket, input, output, output bytes sent.
type Peer = (TcpStream, Vec<u8>, Vec<u8>, usize);

/// Reads what is there, answers the complete requests, writes what it can.
/// `Ok(false)`: the client closed.
fn pump(
    p: &mut Peer,
    buf: &mut [u8],
    handle: &mut impl FnMut(&[u8], &mut Vec<u8>) -> Option<usize>,
) -> io::Result<bool> {
    let eof = read_all(&mut p.0, &mut p.1, buf)?;
    let used = handle(&p.1, &mut p.2).ok_or_else(|| bad("bad request"))?;
    p.1.drain(..used);
    write_out(&mut p.0, &mut p.2, &mut p.3)?;
    Ok(!eof)
}

/// One mio event loop serving `listener` until `stop`. `handle(input,
/// output)` answers the complete requests at the front of `input` in order,
/// appends the answers to `output` and returns how many input bytes it used
/// (`None`: close the connection). Pipelined requests are answered in order.
fn serve(
    mut listener: TcpListener,
    stop: &AtomicBool,
    mut handle: impl FnMut(&[u8], &mut Vec<u8>) -> Option<usize>,
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut peers: Vec<Option<Peer>> = Vec::new();
    let mut buf = vec![0; 1 << 16];
    while !stop.load(Relaxed) {
        match poll.poll(&mut events, Some(Duration::from_millis(50))) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => r?,
        }
        for ev in &events {
            if ev.token() == LISTENER {
                loop {
                    let mut sock = match listener.accept() {
                        Ok((sock, _)) => sock,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
                        Err(_) => break,
                    };
                    sock.set_nodelay(true).ok();
                    let i = peers
                        .iter()
                        .position(Option::is_none)
                        .unwrap_or(peers.len());
                    poll.registry().register(
                        &mut sock,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let peer = (sock, Vec::new(), Vec::new(), 0);
                    match peers.get_mut(i) {
                        Some(slot) => *slot = Some(peer),
                        None => peers.push(Some(peer)),
                    }
                }
            } else if let Some(slot) = peers.get_mut(ev.token().0)
                && slot
                    .as_mut()
                    .is_some_and(|p| !matches!(pump(p, &mut buf, &mut handle), Ok(true)))
                && let Some(mut p) = slot.take()
            {
                poll.registry().deregister(&mut p.0)?;
            }
        }
    }
    Ok(())
}

/// Baseline handler: one [`OK_RESPONSE`] per request head (bodiless requests).
fn static_ok(inb: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let mut used = 0;
    let mut i = 3;
    while i < inb.len() {
        if &inb[i - 3..=i] == b"\r\n\r\n" {
            out.extend_from_slice(OK_RESPONSE);
            used = i + 1;
            i += 4;
        } else {
            i += 1;
        }
    }
    Some(used)
}

/// The baseline server, running in this process.
struct Baseline {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

impl Baseline {
    /// Starts one loop per core, each with its own SO_REUSEPORT listener on
    /// `listen` (port 0: the first listener's ephemeral port).
    fn start(listen: SocketAddr) -> io::Result<Self> {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        let (stop, mut addr, mut threads) = (Arc::new(AtomicBool::new(false)), listen, Vec::new());
        for _ in 0..cores {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.bind(&addr.into())?;
            s.listen(1024)?;
            s.set_nonblocking(true)?;
            let listener = TcpListener::from_std(s.into());
            addr = listener.local_addr()?;
            let stop = stop.clone();
            threads.push(thread::spawn(move || serve(listener, &stop, static_ok)));
        }
        Ok(Self {
            addr,
            stop,
            threads,
        })
    }

    /// Stops the loops and waits for them.
    fn stop(self) {
        self.stop.store(true, Relaxed);
        self.threads.into_iter().for_each(|t| drop(t.join()));
    }
}

/// The `baseline` scenario: serves until killed.
fn baseline(listen: SocketAddr) -> Result<(), String> {
    let b = Baseline::start(listen).map_err(ctx(listen))?;
    println!(
        "baseline listening on http://{} ({} loops)",
        b.addr,
        b.threads.len()
    );
    for t in b.threads {
        t.join()
            .map_err(|_| "server thread panicked")?
            .map_err(ctx("server"))?;
    }
    Ok(())
}

// ------------------------------------------------------------------- client

/// What a closed-loop load does on each connection.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// GET /healthz, expecting 200.
    Healthz,
    /// open-connect (201), get-key (205), close (204).
    Cycle,
    /// The same request every time (`agreement`), expecting 200.
    Fixed(&'static [u8]),
    /// A signed NCP request, each with its own signature (a query that
    /// changes): the server accepts each signed request once.
    Ncp(&'static NcpSigner),
}

/// Signs NCP requests (API Gateway v2), each with a target of its own.
struct NcpSigner {
    path: String,
    access_key: String,
    secret_key: String,
    timestamp: String,
    body: String,
    next: AtomicU64,
}

impl PartialEq for NcpSigner {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl NcpSigner {
    /// Appends the next signed request to `out`.
    fn request(&self, out: &mut Vec<u8>, host: &str) {
        use hmac::{KeyInit, Mac};
        let target = format!("{}?r={}", self.path, self.next.fetch_add(1, Relaxed));
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(self.secret_key.as_bytes())
                .expect("HMAC takes any key");
        mac.update(format!("POST {target}\n{}\n{}", self.timestamp, self.access_key).as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let req = format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nx-ncp-apigw-timestamp: {}\r\nx-ncp-iam-access-key: {}\r\nx-ncp-apigw-signature-v2: {sig}\r\nContent-Length: {}\r\n\r\n",
            self.timestamp,
            self.access_key,
            self.body.len()
        );
        out.extend_from_slice(req.as_bytes());
        out.extend_from_slice(self.body.as_bytes());
    }
}

/// What one load measured (per request type: `[healthz]` or `[open, get-key, close]`).
#[derive(Default)]
struct Stats {
    hist: [Hist; 3],
    ok: [u64; 3],
    errors: [u64; 3],
    cycles: u64,
}

impl Stats {
    /// Adds `o`'s counts.
    fn merge(&mut self, o: &Stats) {
        for i in 0..3 {
            self.hist[i].merge(&o.hist[i]);
            (self.ok[i], self.errors[i]) = (self.ok[i] + o.ok[i], self.errors[i] + o.errors[i]);
        }
        self.cycles += o.cycles;
    }

    /// All request types folded into the first.
    fn folded(&self) -> Stats {
        let mut f = Stats::default();
        for i in 0..3 {
            f.hist[0].merge(&self.hist[i]);
            (f.ok[0], f.errors[0]) = (f.ok[0] + self.ok[i], f.errors[0] + self.errors[i]);
        }
        f
    }
}

/// A client connection with its request in flight.
struct Conn {
    sock: Sock,
    connected: bool,
    out: Vec<u8>,
    sent: usize,
    inb: Vec<u8>,
    started: Instant,
    step: usize,
    ksid: String,
    cycle_ok: bool,
    /// Draining after the deadline, this connection finished its cycle.
    done: bool,
}

impl Conn {
    /// Opens connection `i` (its token) to `t`.
    fn open(t: &Target, reg: &Registry, i: usize) -> io::Result<Sock> {
        let mut s = TcpStream::connect(t.addr)?;
        reg.register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        Ok(match &t.tls {
            None => Sock::Plain(s),
            Some((config, name)) => {
                let tls = rustls::ClientConnection::new(Arc::clone(config), name.clone())
                    .map_err(io::Error::other)?;
                Sock::Tls(s, Box::new(tls))
            }
        })
    }

    /// Puts the next request of the loop in `out`.
    fn prepare(&mut self, kind: Kind, host: &str) {
        self.out.clear();
        self.sent = 0;
        self.started = Instant::now();
        let ksid = format!(r#"{{"key_stream_id":"{}"}}"#, self.ksid);
        match (kind, self.step) {
            (Kind::Healthz, _) => request(&mut self.out, "GET", "/healthz", host, ""),
            (Kind::Fixed(req), _) => self.out.extend_from_slice(req),
            (Kind::Ncp(signer), _) => signer.request(&mut self.out, host),
            (_, 0) => request(
                &mut self.out,
                "POST",
                &format!("{API}/open-connect"),
                host,
                OPEN_BODY,
            ),
            (_, 1) => request(&mut self.out, "GET", &format!("{API}/get-key"), host, &ksid),
            _ => request(&mut self.out, "PUT", &format!("{API}/close"), host, &ksid),
        }
    }

    /// Records the answer to the request in flight and moves the loop on.
    fn finish(&mut self, kind: Kind, code: u16, body: &[u8], st: &mut Stats) {
        let (step, took) = (self.step, self.started.elapsed());
        let ok = match (kind, step) {
            (Kind::Healthz | Kind::Fixed(_) | Kind::Ncp(_), _) => code == 200,
            (_, 0) => match ksid_of(body).filter(|_| code == 201) {
                Some(k) => {
                    (self.ksid, self.step, self.cycle_ok) = (k, 1, true);
                    true
                }
                None => false,
            },
            (_, 1) => {
                self.step = 2;
                self.cycle_ok &= code == 205;
                code == 205
            }
            _ => {
                self.step = 0;
                st.cycles += u64::from(code == 204 && self.cycle_ok);
                code == 204
            }
        };
        if ok {
            st.ok[step] += 1;
            st.hist[step].record(took);
        } else {
            st.errors[step] += 1;
        }
    }

    /// Handles an event (`draining`: sends no new cycle). `Ok(true)`: the
    /// server closes, reconnect.
    fn drive(
        &mut self,
        kind: Kind,
        host: &str,
        st: &mut Stats,
        buf: &mut [u8],
        draining: bool,
    ) -> io::Result<bool> {
        if !finish_connect(&mut self.sock, &mut self.connected, &mut self.started)? {
            return Ok(false);
        }
        write_out(&mut self.sock, &mut self.out, &mut self.sent)?;
        let eof = read_all(&mut self.sock, &mut self.inb, buf)?;
        // A TLS handshake that just finished lets the request go now.
        write_out(&mut self.sock, &mut self.out, &mut self.sent)?;
        if let Some((code, head, len, close)) = parse_response(&self.inb)? {
            let inb = std::mem::take(&mut self.inb);
            self.finish(kind, code, &inb[head..head + len], st);
            self.inb = inb;
            self.inb.drain(..head + len);
            if draining && self.step == 0 {
                self.done = true;
                return Ok(false);
            }
            self.prepare(kind, host);
            if close {
                return Ok(true);
            }
            write_out(&mut self.sock, &mut self.out, &mut self.sent)?;
        }
        match eof {
            true => Err(ErrorKind::UnexpectedEof.into()),
            false => Ok(false),
        }
    }
}

/// One client thread: `conns` closed-loop connections until `deadline`.
fn client(t: &Target, kind: Kind, conns: usize, deadline: Instant) -> io::Result<Stats> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut st = Stats::default();
    let mut cs = Vec::with_capacity(conns);
    for i in 0..conns {
        let sock = Conn::open(t, poll.registry(), i)?;
        let (out, inb, ksid) = (Vec::new(), Vec::new(), String::new());
        let started = Instant::now();
        let mut c = Conn {
            sock,
            connected: false,
            out,
            sent: 0,
            inb,
            started,
            step: 0,
            ksid,
            cycle_ok: false,
            done: false,
        };
        c.prepare(kind, &t.host);
        cs.push(c);
    }
    let mut buf = vec![0; 1 << 16];
    // After the deadline, cycles in progress run to their close (not
    // counted) so that no stream stays open, for at most 3 s.
    let (grace, mut sink) = (deadline + Duration::from_secs(3), Stats::default());
    loop {
        let now = Instant::now();
        let draining = now >= deadline;
        if draining && (kind == Kind::Healthz || now >= grace || cs.iter().all(|c| c.done)) {
            return Ok(st);
        }
        let timeout = if draining {
            grace - now
        } else {
            deadline - now
        };
        match poll.poll(&mut events, Some(timeout)) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => r?,
        }
        let st = if draining { &mut sink } else { &mut st };
        for ev in &events {
            let (i, c) = (ev.token().0, &mut cs[ev.token().0]);
            if c.done {
                continue;
            }
            let reconnect = c
                .drive(kind, &t.host, st, &mut buf, draining)
                .unwrap_or_else(|_| {
                    st.errors[c.step] += 1;
                    true
                });
            if reconnect && draining {
                c.done = true;
            } else if reconnect {
                poll.registry().deregister(c.sock.tcp())?;
                c.sock = Conn::open(t, poll.registry(), i)?;
                c.connected = false;
                c.inb.clear();
                c.prepare(kind, &t.host);
            }
        }
    }
}

/// Runs a closed-loop load for `l.secs` over `l.threads` client threads.
fn load(t: &Target, kind: Kind, l: &LoadArgs) -> Result<Stats, String> {
    StdStream::connect_timeout(&t.addr, Duration::from_secs(2))
        .map_err(ctx(format!("http://{}", t.host)))?;
    let threads = l.threads.clamp(1, l.conns.max(1));
    let deadline = Instant::now() + Duration::from_secs_f64(l.secs);
    let results: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let n = l.conns / threads + usize::from(i < l.conns % threads);
                s.spawn(move || client(t, kind, n, deadline))
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut total = Stats::default();
    for r in results {
        total.merge(
            &r.map_err(|_| "client thread panicked")?
                .map_err(ctx("client"))?,
        );
    }
    Ok(total)
}

// ------------------------------------------------------------------- tables

/// One line of a table.
struct Row {
    name: String,
    conns: String,
    rate: f64,
    mbps: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    errors: u64,
    ratio: Option<f64>,
}

impl Row {
    /// A load row: request type `i` of `st`, a run of `l`.
    fn load(name: impl Into<String>, l: &LoadArgs, st: &Stats, i: usize) -> Self {
        let (p50, p99) = (st.hist[i].quantile_us(0.5), st.hist[i].quantile_us(0.99));
        let (name, conns, rate) = (name.into(), l.conns.to_string(), st.ok[i] as f64 / l.secs);
        let (mbps, errors, ratio) = (None, st.errors[i], None);
        Row {
            name,
            conns,
            rate,
            mbps,
            p50,
            p99,
            errors,
            ratio,
        }
    }
}

/// Prints `rows` under the common header.
fn print_table(rows: &[Row]) {
    let opt = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
    println!(
        "{:<28} {:>6} {:>13} {:>9} {:>9} {:>9} {:>8} {:>9}",
        "scenario", "conns", "req|chunks/s", "Mbit/s", "p50 µs", "p99 µs", "errors", "baseline"
    );
    for r in rows {
        let ratio = r.ratio.map_or("-".into(), |v| format!("{v:.1} %"));
        println!(
            "{:<28} {:>6} {:>13.0} {:>9} {:>9} {:>9} {:>8} {:>9}",
            r.name,
            r.conns,
            r.rate,
            opt(r.mbps, 2),
            opt(r.p50, 0),
            opt(r.p99, 0),
            r.errors,
            ratio
        );
    }
}

// ---------------------------------------------------------------- scenarios

/// The `healthz` scenario: the node, then the baseline (or `against`);
/// rows of both.
fn healthz(l: &LoadArgs, against: Option<&str>) -> Result<Vec<Row>, String> {
    let t = target(&l.url)?;
    let node = load(&t, Kind::Healthz, l)?;
    let (name, against) = match against {
        Some(url) => (
            format!("healthz {url}"),
            load(&target(url)?, Kind::Healthz, l)?,
        ),
        None => {
            let base = Baseline::start(([127, 0, 0, 1], 0).into()).map_err(ctx("baseline"))?;
            let bt = Target {
                addr: base.addr,
                host: base.addr.to_string(),
                tls: None,
            };
            let against = load(&bt, Kind::Healthz, l);
            base.stop();
            ("healthz baseline".to_owned(), against?)
        }
    };
    let mut rows = vec![
        Row::load(format!("healthz {}", l.url), l, &node, 0),
        Row::load(name, l, &against, 0),
    ];
    rows[0].ratio = Some(100.0 * rows[0].rate / rows[1].rate.max(f64::MIN_POSITIVE));
    Ok(rows)
}

/// The `cycle` scenario: rows per request type, then all requests.
fn cycle(l: &LoadArgs) -> Result<Vec<Row>, String> {
    let st = load(&target(&l.url)?, Kind::Cycle, l)?;
    let names = ["cycle open-connect", "cycle get-key", "cycle close"];
    let mut rows: Vec<_> = (0..3).map(|i| Row::load(names[i], l, &st, i)).collect();
    let cycles = format!("cycle ({:.0} cycles/s)", st.cycles as f64 / l.secs);
    rows.push(Row::load(cycles, l, &st.folded(), 0));
    Ok(rows)
}

/// Live counters of a KMS receiver.
#[derive(Default)]
struct Live {
    chunks: AtomicU64,
    bytes: AtomicU64,
}

/// What a KMS receiver kept, returned when it stops.
#[derive(Default)]
struct Seen {
    /// First 16 bytes of the BLAKE3 hash of each index's key.
    digests: HashMap<u64, [u8; 16]>,
    dups: u64,
    mismatches: u64,
    errors: u64,
}

/// A key-material POST body.
#[derive(Deserialize)]
struct KeyMaterial {
    status: i64,
    index: u64,
    key_buffer: String,
}

/// Records one key-material body of `chunk`-byte keys. `false`: unreadable.
fn record(body: &[u8], chunk: usize, live: &Live, seen: &mut Seen) -> bool {
    let Ok(km) = serde_json::from_slice::<KeyMaterial>(body) else {
        return false;
    };
    let Ok(key) = base64::engine::general_purpose::STANDARD.decode(&km.key_buffer) else {
        return false;
    };
    if km.status != 0 || key.len() != chunk {
        return false;
    }
    let mut d = [0; 16];
    d.copy_from_slice(&blake3::hash(&key).as_bytes()[..16]);
    match seen.digests.entry(km.index) {
        Entry::Occupied(e) => {
            seen.dups += 1;
            seen.mismatches += u64::from(*e.get() != d);
        }
        Entry::Vacant(e) => drop(e.insert(d)),
    }
    live.chunks.fetch_add(1, Relaxed);
    live.bytes.fetch_add(key.len() as u64, Relaxed);
    true
}

/// Starts a KMS receiver on an ephemeral port: its address and thread.
fn kms(
    stop: &Arc<AtomicBool>,
    live: &Arc<Live>,
    chunk: usize,
) -> io::Result<(SocketAddr, JoinHandle<io::Result<Seen>>)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.set_nonblocking(true)?;
    let (addr, stop, live) = (l.local_addr()?, stop.clone(), live.clone());
    let thread = thread::spawn(move || {
        let mut seen = Seen::default();
        serve(TcpListener::from_std(l), &stop, |inb, out| {
            let mut pos = 0;
            loop {
                let (km, head, len) = match parse_request(&inb[pos..]) {
                    Ok(Some(r)) => r,
                    Ok(None) => return Some(pos),
                    Err(_) => {
                        seen.errors += 1;
                        return None;
                    }
                };
                let body = &inb[pos + head..pos + head + len];
                out.extend_from_slice(match km {
                    true if record(body, chunk, &live, &mut seen) => CREATED,
                    true => {
                        seen.errors += 1;
                        BAD_REQUEST
                    }
                    false => NOT_FOUND,
                });
                pos += head + len;
            }
        })?;
        Ok(seen)
    });
    Ok((addr, thread))
}

/// What a push run found.
struct PushOut {
    row: Row,
    note: String,
    mismatches: u64,
}

/// The `push` scenario.
fn push(p: &PushArgs) -> Result<PushOut, String> {
    let (ta, tb) = (target(&p.a)?, target(&p.b)?);
    let stop = Arc::new(AtomicBool::new(false));
    let lives = [Arc::new(Live::default()), Arc::new(Live::default())];
    let chunk = p.chunk as usize;
    let (addr_a, kms_a) = kms(&stop, &lives[0], chunk).map_err(ctx("KMS_A"))?;
    let (addr_b, kms_b) = kms(&stop, &lives[1], chunk).map_err(ctx("KMS_B"))?;
    let measured = push_run(p, &ta, &tb, (addr_a, addr_b), &lives);
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Relaxed);
    let join = |h: JoinHandle<io::Result<Seen>>| {
        h.join()
            .map_err(|_| "KMS thread panicked".to_string())?
            .map_err(ctx("KMS"))
    };
    let (seen_a, seen_b) = (join(kms_a)?, join(kms_b)?);
    let (rates, control_errors) = measured?;
    let mut compared = 0;
    let mut mismatches = seen_a.mismatches + seen_b.mismatches;
    for (i, d) in &seen_a.digests {
        if let Some(e) = seen_b.digests.get(i) {
            compared += 1;
            mismatches += u64::from(d != e);
        }
    }
    let mbps = |(_, bytes): (f64, f64)| bytes * 8.0 / 1e6;
    println!(
        "push: chunk {} B, {} s after the first chunk",
        p.chunk, p.secs
    );
    for (name, r, s) in [("KMS_A", rates[0], &seen_a), ("KMS_B", rates[1], &seen_b)] {
        println!(
            "  {name}: {:.0} chunks/s, {:.2} Mbit/s, {} indexes, {} duplicates, {} errors",
            r.0,
            mbps(r),
            s.digests.len(),
            s.dups,
            s.errors
        );
    }
    let dups = seen_a.dups + seen_b.dups;
    let note = format!(
        "push {} B: {compared} indexes compared, {mismatches} mismatches, {dups} duplicates",
        p.chunk
    );
    println!("  {note}");
    let side = if rates[0].0 <= rates[1].0 {
        rates[0]
    } else {
        rates[1]
    };
    let errors = seen_a.errors + seen_b.errors + control_errors + mismatches;
    let (name, conns, rate, mbps) = (
        format!("push {} B", p.chunk),
        "-".into(),
        side.0,
        Some(mbps(side)),
    );
    let row = Row {
        name,
        conns,
        rate,
        mbps,
        p50: None,
        p99: None,
        errors,
        ratio: None,
    };
    Ok(PushOut {
        row,
        note,
        mismatches,
    })
}

/// Opens the stream on both nodes, measures (chunks/s, bytes/s) per
/// receiver, closes it. Also returns how many closes failed.
fn push_run(
    p: &PushArgs,
    ta: &Target,
    tb: &Target,
    kms: (SocketAddr, SocketAddr),
    lives: &[Arc<Live>; 2],
) -> Result<([(f64, f64); 2], u64), String> {
    let qos = json!({"key_chunk_size": p.chunk, "timeout": 5000, "ttl": 600});
    let (src, dst) = (format!("http://{}", kms.0), format!("http://{}", kms.1));
    let open = |ksid: Option<&str>| {
        json!({"source": src, "destination": dst, "key_stream_id": ksid, "qos": qos}).to_string()
    };
    let body = expect(ta, "POST", &format!("{API}/open-connect"), &open(None), 201)?;
    let ksid = ksid_of(&body).ok_or("node A's open-connect answer has no key_stream_id")?;
    let ks = json!({ "key_stream_id": ksid }).to_string();
    let run = || -> Result<[(f64, f64); 2], String> {
        expect(
            tb,
            "POST",
            &format!("{API}/open-connect"),
            &open(Some(&ksid)),
            201,
        )?;
        let get = |t: &Target| expect(t, "GET", &format!("{API}/get-key"), &ks, 205).map(drop);
        let (ra, rb) = thread::scope(|s| {
            let a = s.spawn(|| get(ta));
            (a.join(), get(tb))
        });
        ra.map_err(|_| "get-key thread panicked")??;
        rb?;
        let total = || lives.iter().map(|l| l.chunks.load(Relaxed)).sum::<u64>();
        let wait = Instant::now();
        while total() == 0 {
            if wait.elapsed() > Duration::from_secs(10) {
                return Err("no key material arrived within 10 s of get-key".into());
            }
            thread::sleep(Duration::from_millis(1));
        }
        let snap = || {
            lives
                .each_ref()
                .map(|l| (l.chunks.load(Relaxed), l.bytes.load(Relaxed)))
        };
        let (t0, before) = (Instant::now(), snap());
        thread::sleep(Duration::from_secs_f64(p.secs));
        let (secs, after) = (t0.elapsed().as_secs_f64(), snap());
        let rate = |i: usize| {
            (
                (after[i].0 - before[i].0) as f64 / secs,
                (after[i].1 - before[i].1) as f64 / secs,
            )
        };
        Ok([rate(0), rate(1)])
    };
    let measured = run();
    let close = |t: &Target| expect(t, "PUT", &format!("{API}/close"), &ks, 204);
    let (ca, cb) = (close(ta), close(tb));
    let rates = measured?;
    let closed = [ca, cb]
        .into_iter()
        .filter_map(|r| r.err())
        .inspect(|e| eprintln!("load: {e}"));
    Ok((rates, closed.count() as u64))
}

/// The `all` scenario.
fn all(a: &AllArgs) -> Result<(), String> {
    let (mut rows, mut notes, mut failed, mut mismatches) = (Vec::new(), Vec::new(), 0, 0);
    for (name, kind) in [("healthz", Kind::Healthz), ("cycle", Kind::Cycle)] {
        for conns in [64, 256] {
            let l = LoadArgs {
                url: a.a.clone(),
                conns,
                secs: a.secs,
                threads: a.threads,
            };
            let r = if kind == Kind::Healthz {
                healthz(&l, None)
            } else {
                cycle(&l)
            };
            match r {
                Ok(r) => {
                    print_table(&r);
                    let keep = if kind == Kind::Healthz {
                        0
                    } else {
                        r.len() - 1
                    };
                    rows.extend(r.into_iter().skip(keep));
                }
                Err(e) => {
                    failed += 1;
                    notes.push(format!("{name} {conns}: FAILED: {e}"));
                }
            }
        }
    }
    for chunk in [32, 1024] {
        let p = PushArgs {
            a: a.a.clone(),
            b: a.b.clone(),
            chunk,
            secs: a.push_secs,
        };
        match push(&p) {
            Ok(out) => {
                rows.push(out.row);
                notes.push(out.note);
                mismatches += out.mismatches;
            }
            Err(e) => {
                failed += 1;
                notes.push(format!("push {chunk} B: FAILED: {e}"));
            }
        }
    }
    println!("\nsummary");
    print_table(&rows);
    notes.iter().for_each(|n| println!("{n}"));
    match (failed, mismatches) {
        (0, 0) => Ok(()),
        (f, m) => Err(format!("{f} scenarios failed, {m} mismatching chunks")),
    }
}

/// The configuration of one node of the `restart` scenario.
fn restart_node_toml(node: usize, ports: [u16; 2]) -> String {
    let (name, role, peer) = match node {
        0 => ("node-a", "leader", "node-b"),
        _ => ("node-b", "follower", "node-a"),
    };
    format!(
        "[[node]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{}\"\nserve = [\"etsi004-qkd\"]\n\
         [node.engine]\nrole = \"{role}\"\n[node.engine.device]\ndriver = \"simulated\"\n\
         rate_bps = 1000000000\nlink_secret = \"{}\"\n[node.engine.link]\n\
         peer = \"http://127.0.0.1:{}\"\nsecret = \"{}\"\npeer_name = \"{peer}\"\n",
        ports[node],
        "3c".repeat(32),
        ports[1 - node],
        "c3".repeat(32)
    )
}

/// A free TCP port.
fn free_port() -> Result<u16, String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(ctx("bind"))?
        .port())
}

/// The `restart` scenario.
fn restart(r: &RestartArgs) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("keypipe-load-restart-{}", std::process::id()));
    let ports = [free_port()?, free_port()?];
    let spawn = |node: usize| -> Result<std::process::Child, String> {
        let d = dir.join(["a", "b"][node]);
        std::fs::create_dir_all(&d).map_err(ctx("data dir"))?;
        let config = d.join("node.toml");
        std::fs::write(&config, restart_node_toml(node, ports)).map_err(ctx("config"))?;
        std::process::Command::new(&r.bin)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&d)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(ctx(&r.bin))
    };
    let targets = [
        target(&format!("http://127.0.0.1:{}", ports[0]))?,
        target(&format!("http://127.0.0.1:{}", ports[1]))?,
    ];
    let healthy = |t: &Target| matches!(call(t, "GET", "/healthz", ""), Ok((200, _)));
    let mut children = [spawn(0)?, spawn(1)?];
    let result = (|| -> Result<Vec<f64>, String> {
        let wait = Instant::now();
        while !targets.iter().all(healthy) {
            if wait.elapsed() > Duration::from_secs(30) {
                return Err("the two nodes never became healthy".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let lives = [Arc::new(Live::default()), Arc::new(Live::default())];
        let chunk = r.chunk as usize;
        let (addr_a, _kms_a) = kms(&stop, &lives[0], chunk).map_err(ctx("KMS_A"))?;
        let (addr_b, _kms_b) = kms(&stop, &lives[1], chunk).map_err(ctx("KMS_B"))?;
        let qos = json!({"key_chunk_size": r.chunk, "timeout": 5000, "ttl": 600});
        let (src, dst) = (format!("http://{addr_a}"), format!("http://{addr_b}"));
        let open = |ksid: Option<&str>| {
            json!({"source": src, "destination": dst, "key_stream_id": ksid, "qos": qos})
                .to_string()
        };
        let body = expect(
            &targets[0],
            "POST",
            &format!("{API}/open-connect"),
            &open(None),
            201,
        )?;
        let ksid = ksid_of(&body).ok_or("no key_stream_id")?;
        expect(
            &targets[1],
            "POST",
            &format!("{API}/open-connect"),
            &open(Some(&ksid)),
            201,
        )?;
        let ks = json!({ "key_stream_id": ksid }).to_string();
        for t in &targets {
            expect(t, "GET", &format!("{API}/get-key"), &ks, 205)?;
        }
        let mut times = Vec::new();
        for round in 0..r.rounds {
            thread::sleep(Duration::from_millis(500));
            let victims: &[usize] = match round % 3 {
                0 => &[0],
                1 => &[1],
                _ => &[0, 1],
            };
            for &v in victims {
                let _ = children[v].kill();
                let _ = children[v].wait();
            }
            let before: Vec<u64> = lives.iter().map(|l| l.chunks.load(Relaxed)).collect();
            let t0 = Instant::now();
            for &v in victims {
                children[v] = spawn(v)?;
            }
            for &v in victims {
                while lives[v].chunks.load(Relaxed) == before[v] {
                    if t0.elapsed() > Duration::from_secs(30) {
                        return Err(format!("round {round}: no push after the restart"));
                    }
                    thread::sleep(Duration::from_micros(200));
                }
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        stop.store(true, Relaxed);
        Ok(times)
    })();
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut times = result?;
    times.sort_by(f64::total_cmp);
    let ms = |x: f64| x * 1e3;
    println!(
        "restart: kill -9 to the first chunk pushed by the restarted node, {} restarts: \
         min {:.0} ms, median {:.0} ms, max {:.0} ms",
        times.len(),
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
    Ok(())
}

// ------------------------------------------------------------------ etsi014

/// Options of the `etsi014` scenario.
#[derive(Args, Clone)]
struct Etsi014Args {
    /// Base URL of the master SAE's node (enc_keys), https://; the client
    /// certificate is the master SAE's, from `LOAD_CERT` / `LOAD_KEY`.
    #[arg(long, default_value = "https://localhost:7014")]
    a: String,
    /// Base URL of the slave SAE's node (dec_keys), https://; the client
    /// certificate is the slave SAE's, from `LOAD_CERT_B` / `LOAD_KEY_B`.
    #[arg(long, default_value = "https://localhost:7015")]
    b: String,
    /// The master SAE's ID (the CN of `LOAD_CERT`).
    #[arg(long, default_value = "sae-a")]
    master: String,
    /// The slave SAE's ID (the CN of `LOAD_CERT_B`).
    #[arg(long, default_value = "sae-b")]
    slave: String,
    /// Keep-alive connections sending enc_keys to node A.
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Keys per enc_keys (`number`).
    #[arg(long, default_value_t = 1)]
    number: usize,
    /// Key size, bits (`size`).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Keep-alive connections sending dec_keys to node B.
    #[arg(long, default_value_t = 4)]
    dec_conns: usize,
    /// key_IDs per dec_keys at most (the server's max_key_per_request
    /// bounds it).
    #[arg(long, default_value_t = 128)]
    dec_ids: usize,
    /// Key issued (or asked for) and not fetched yet, KiB, at most:
    /// enc_keys waits for dec_keys beyond it. Node B holds that key, at
    /// most the pair's window (`max_key_count` × `key_size` of the
    /// status): past that, enc_keys gets 503. 0: half the window.
    #[arg(long, default_value_t = 0)]
    backlog_kib: usize,
    /// Duration of the measurement, seconds (then the keys still issued
    /// are fetched and checked, for at most 5 s more).
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Client threads (one mio event loop each, each with its share of
    /// both kinds of connections).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// What the threads of an `etsi014` run send.
struct Plan14 {
    a: Target,
    b: Target,
    /// The enc_keys request, the same every time.
    enc: Vec<u8>,
    /// The path of dec_keys on node B.
    dec_path: String,
    /// Keys per enc_keys.
    number: usize,
    /// Bytes per key.
    key_len: usize,
    /// key_IDs per dec_keys at most.
    dec_ids: usize,
    /// Keys issued (or asked for) and not fetched yet, per thread, at most.
    backlog: usize,
}

/// What one request type of an `etsi014` run measured.
#[derive(Default, Clone)]
struct Side14 {
    hist: Hist,
    /// Answers that were right.
    ok: u64,
    /// Keys in them.
    keys: u64,
    /// Requests refused, wrong or lost.
    errors: u64,
}

impl Side14 {
    /// Adds `o`'s counts.
    fn merge(&mut self, o: &Side14) {
        self.hist.merge(&o.hist);
        (self.ok, self.keys, self.errors) =
            (self.ok + o.ok, self.keys + o.keys, self.errors + o.errors);
    }
}

/// What an `etsi014` run measured until its deadline.
#[derive(Default, Clone)]
struct Stats14 {
    enc: Side14,
    dec: Side14,
}

/// The correctness check of a whole `etsi014` run (the fetch of the keys
/// still issued after the deadline included).
#[derive(Default)]
struct Check14 {
    /// Keys enc_keys gave.
    issued: u64,
    /// Keys dec_keys gave back with the bytes enc_keys gave.
    matched: u64,
    /// Keys dec_keys gave with other bytes, left out, or never asked for.
    mismatches: u64,
    /// dec_keys refused (other than 200), unreadable, or lost with their
    /// connection.
    dec_failures: u64,
    /// Keys those dec_keys asked for.
    lost: u64,
    /// Keys issued and never fetched (the end came first).
    unfetched: u64,
    /// enc_keys held back while the backlog was full.
    held: u64,
    /// Problems reported on stderr (the first few are).
    reported: u64,
}

impl Check14 {
    /// Adds `o`'s counts.
    fn merge(&mut self, o: &Check14) {
        self.issued += o.issued;
        self.matched += o.matched;
        self.mismatches += o.mismatches;
        self.dec_failures += o.dec_failures;
        self.lost += o.lost;
        self.unfetched += o.unfetched;
        self.held += o.held;
        self.reported += o.reported;
    }
}

/// Problems each client thread prints on stderr at most.
const REPORTED: u64 = 10;

/// A key container (`{"keys":[{"key_ID","key"}, …]}`).
#[derive(Deserialize)]
struct Container<'a> {
    #[serde(borrow)]
    keys: Vec<ContainerKey<'a>>,
}

/// One key of a key container.
#[derive(Deserialize)]
struct ContainerKey<'a> {
    #[serde(rename = "key_ID", borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
}

/// The keys of a key container: (key_ID, bytes). `None`: unreadable.
fn container(body: &[u8]) -> Option<Vec<(uuid::Uuid, Vec<u8>)>> {
    let c: Container = serde_json::from_slice(body).ok()?;
    c.keys
        .iter()
        .map(|k| {
            let id = uuid::Uuid::parse_str(&k.id).ok()?;
            let key = base64::engine::general_purpose::STANDARD
                .decode(k.key.as_bytes())
                .ok()?;
            Some((id, key))
        })
        .collect()
}

/// How many keys of `asked` `got` does not give back with the same bytes,
/// plus the keys of `got` never asked for.
fn mismatching(asked: &[(uuid::Uuid, Vec<u8>)], got: &[(uuid::Uuid, Vec<u8>)]) -> u64 {
    if asked.len() == got.len() && asked.iter().zip(got).all(|(a, g)| a.0 == g.0) {
        return asked.iter().zip(got).filter(|(a, g)| a.1 != g.1).count() as u64;
    }
    let by_id: HashMap<_, _> = got.iter().map(|(id, key)| (*id, key)).collect();
    let found = asked
        .iter()
        .filter(|(id, _)| by_id.contains_key(id))
        .count();
    let differ = asked
        .iter()
        .filter(|(id, key)| by_id.get(id).is_none_or(|k| *k != key))
        .count();
    (differ + got.len() - found) as u64
}

/// The start of a body, for a message.
fn excerpt(body: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(&body[..body.len().min(200)])
}

/// A connection of an `etsi014` run: enc_keys on node A, or dec_keys on
/// node B.
struct Conn14 {
    sock: Sock,
    /// Sends dec_keys (else enc_keys).
    dec: bool,
    connected: bool,
    out: Vec<u8>,
    sent: usize,
    inb: Vec<u8>,
    started: Instant,
    /// A request is in flight.
    busy: bool,
    /// enc_keys: idle because the backlog was full.
    held: bool,
    /// dec_keys: the keys asked for, with the bytes enc_keys gave.
    asked: Vec<(uuid::Uuid, Vec<u8>)>,
}

impl Conn14 {
    /// A connection on `sock`, idle.
    fn new(sock: Sock, dec: bool) -> Conn14 {
        Conn14 {
            sock,
            dec,
            connected: false,
            out: Vec::new(),
            sent: 0,
            inb: Vec::new(),
            started: Instant::now(),
            busy: false,
            held: false,
            asked: Vec::new(),
        }
    }

    /// Handles an event: sends, reads, and hands a complete answer to
    /// `flow`. `Ok(true)`: the server closes, reconnect.
    fn drive(&mut self, flow: &mut Flow14, buf: &mut [u8]) -> io::Result<bool> {
        if !finish_connect(&mut self.sock, &mut self.connected, &mut self.started)? {
            return Ok(false);
        }
        write_out(&mut self.sock, &mut self.out, &mut self.sent)?;
        let eof = read_all(&mut self.sock, &mut self.inb, buf)?;
        // A TLS handshake that just finished lets the request go now.
        write_out(&mut self.sock, &mut self.out, &mut self.sent)?;
        if let Some((code, head, len, close)) = parse_response(&self.inb)? {
            let inb = std::mem::take(&mut self.inb);
            flow.answer(self, code, &inb[head..head + len]);
            self.inb = inb;
            self.inb.drain(..head + len);
            if close {
                return Ok(true);
            }
        }
        match eof {
            true => Err(ErrorKind::UnexpectedEof.into()),
            false => Ok(false),
        }
    }

    /// Replaces the socket by a new connection (token `i`).
    fn reopen(&mut self, plan: &Plan14, reg: &Registry, i: usize) -> io::Result<()> {
        reg.deregister(self.sock.tcp())?;
        self.sock = Conn::open(if self.dec { &plan.b } else { &plan.a }, reg, i)?;
        (self.connected, self.sent) = (false, 0);
        self.inb.clear();
        self.out.clear();
        Ok(())
    }
}

/// The state of one client thread of an `etsi014` run.
struct Flow14<'a> {
    plan: &'a Plan14,
    /// Keys enc_keys gave, in order, not asked for yet.
    pending: std::collections::VecDeque<(uuid::Uuid, Vec<u8>)>,
    /// Keys that are (or may be) issued and not fetched yet: pending,
    /// asked for, and `number` per enc_keys in flight.
    outstanding: usize,
    /// Past the deadline: no new enc_keys, answers are not measured.
    draining: bool,
    measured: Stats14,
    late: Stats14,
    check: Check14,
}

impl Flow14<'_> {
    /// Where answers count now.
    fn stats(&mut self) -> &mut Stats14 {
        match self.draining {
            false => &mut self.measured,
            true => &mut self.late,
        }
    }

    /// Reports a problem on stderr (the first few).
    fn report(&mut self, what: impl FnOnce() -> String) {
        if self.check.reported < REPORTED {
            eprintln!("load: etsi014: {}", what());
        }
        self.check.reported += 1;
    }

    /// Puts a request in `c.out` when there is one to send: dec_keys while
    /// keys wait, enc_keys before the deadline while the backlog has room.
    fn start(&mut self, c: &mut Conn14) -> bool {
        if c.busy {
            return false;
        }
        let plan = self.plan;
        if c.dec {
            if self.pending.is_empty() {
                return false;
            }
            let n = self.pending.len().min(plan.dec_ids);
            c.asked.clear();
            c.asked.extend(self.pending.drain(..n));
            let mut body = String::with_capacity(16 + 52 * n);
            body.push_str(r#"{"key_IDs":["#);
            for (i, (id, _)) in c.asked.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                body.push_str(&format!(r#"{sep}{{"key_ID":"{id}"}}"#));
            }
            body.push_str("]}");
            (c.sent, c.busy) = (0, true);
            c.out.clear();
            request(&mut c.out, "POST", &plan.dec_path, &plan.b.host, &body);
        } else {
            if self.draining {
                return false;
            }
            if self.outstanding + plan.number > plan.backlog {
                c.held = true;
                return false;
            }
            self.check.held += u64::from(std::mem::take(&mut c.held));
            self.outstanding += plan.number;
            (c.sent, c.busy) = (0, true);
            c.out.clear();
            c.out.extend_from_slice(&plan.enc);
        }
        c.started = Instant::now();
        true
    }

    /// Records the answer to `c`'s request.
    fn answer(&mut self, c: &mut Conn14, code: u16, body: &[u8]) {
        let took = c.started.elapsed();
        c.busy = false;
        match c.dec {
            true => self.dec_answer(&mut c.asked, code, body, took),
            false => self.enc_answer(code, body, took),
        }
    }

    /// An enc_keys answer: its keys wait for dec_keys.
    fn enc_answer(&mut self, code: u16, body: &[u8], took: Duration) {
        let (number, key_len) = (self.plan.number, self.plan.key_len);
        self.outstanding -= number;
        let keys = match container(body) {
            Some(k)
                if code == 200 && k.len() == number && k.iter().all(|k| k.1.len() == key_len) =>
            {
                k
            }
            _ => {
                self.stats().enc.errors += 1;
                let what = match code {
                    200 => format!("not {number} keys of {key_len} bytes"),
                    _ => format!("status {code}"),
                };
                self.report(|| format!("enc_keys: {what} after {took:.1?}: {}", excerpt(body)));
                return;
            }
        };
        let st = &mut self.stats().enc;
        (st.ok, st.keys) = (st.ok + 1, st.keys + number as u64);
        st.hist.record(took);
        self.check.issued += number as u64;
        self.outstanding += number;
        self.pending.extend(keys);
    }

    /// A dec_keys answer: every key asked for, with the bytes enc_keys
    /// gave.
    fn dec_answer(
        &mut self,
        asked: &mut Vec<(uuid::Uuid, Vec<u8>)>,
        code: u16,
        body: &[u8],
        took: Duration,
    ) {
        let n = asked.len();
        self.outstanding -= n;
        let got = match container(body) {
            Some(got) if code == 200 => got,
            _ => {
                self.stats().dec.errors += 1;
                (self.check.dec_failures, self.check.lost) =
                    (self.check.dec_failures + 1, self.check.lost + n as u64);
                let first = asked[0].0;
                self.report(|| {
                    format!(
                        "dec_keys of {n} keys from {first}: status {code} after {took:.1?}: {}",
                        excerpt(body)
                    )
                });
                asked.clear();
                return;
            }
        };
        let bad = mismatching(asked, &got);
        self.check.mismatches += bad;
        self.check.matched += n as u64 - bad.min(n as u64);
        if bad > 0 {
            self.stats().dec.errors += 1;
            let first = asked[0].0;
            self.report(|| {
                format!(
                    "dec_keys of {n} keys from {first}: {bad} keys differ from what enc_keys gave"
                )
            });
        } else {
            let st = &mut self.stats().dec;
            (st.ok, st.keys) = (st.ok + 1, st.keys + n as u64);
            st.hist.record(took);
        }
        asked.clear();
    }

    /// `c`'s connection failed with `e`: its request in flight is lost.
    fn failed(&mut self, c: &mut Conn14, e: &io::Error) {
        if !std::mem::take(&mut c.busy) {
            return;
        }
        let n = match c.dec {
            true => {
                let n = c.asked.len();
                self.stats().dec.errors += 1;
                (self.check.dec_failures, self.check.lost) =
                    (self.check.dec_failures + 1, self.check.lost + n as u64);
                c.asked.clear();
                n
            }
            false => {
                self.stats().enc.errors += 1;
                self.plan.number
            }
        };
        self.outstanding -= n;
        let what = if c.dec { "dec_keys" } else { "enc_keys" };
        self.report(|| format!("{what}: connection lost: {e}"));
    }
}

/// One client thread of an `etsi014` run: `enc` enc_keys and `dec`
/// dec_keys connections until `deadline`, then the fetch of what is still
/// issued (5 s at most). What it measured, and its check.
fn client14(
    plan: &Plan14,
    enc: usize,
    dec: usize,
    deadline: Instant,
) -> io::Result<(Stats14, Check14)> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut cs = Vec::with_capacity(enc + dec);
    for i in 0..enc + dec {
        let t = if i < enc { &plan.a } else { &plan.b };
        cs.push(Conn14::new(Conn::open(t, poll.registry(), i)?, i >= enc));
    }
    let mut flow = Flow14 {
        plan,
        pending: Default::default(),
        outstanding: 0,
        draining: false,
        measured: Stats14::default(),
        late: Stats14::default(),
        check: Check14::default(),
    };
    let mut buf = vec![0; 1 << 16];
    let grace = deadline + Duration::from_secs(5);
    loop {
        let now = Instant::now();
        flow.draining = now >= deadline;
        for (i, c) in cs.iter_mut().enumerate() {
            if flow.start(c)
                && c.connected
                && let Err(e) = write_out(&mut c.sock, &mut c.out, &mut c.sent)
            {
                flow.failed(c, &e);
                c.reopen(plan, poll.registry(), i)?;
            }
        }
        if flow.draining && (flow.outstanding == 0 || now >= grace) {
            break;
        }
        let until = if flow.draining { grace } else { deadline };
        match poll.poll(&mut events, Some(until.saturating_duration_since(now))) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => r?,
        }
        for ev in &events {
            let (i, c) = (ev.token().0, &mut cs[ev.token().0]);
            let failure = match c.drive(&mut flow, &mut buf) {
                Ok(false) => continue,
                Ok(true) => None,
                Err(e) => Some(e),
            };
            if let Some(e) = failure {
                flow.failed(c, &e);
            }
            c.reopen(plan, poll.registry(), i)?;
        }
    }
    let asked: usize = cs.iter().map(|c| c.asked.len()).sum();
    flow.check.unfetched = (flow.pending.len() + asked) as u64;
    Ok((flow.measured, flow.check))
}

/// The window of `slave`'s pair with the caller of `t` (its master), in
/// bytes: `max_key_count` × `key_size` / 8 of the status.
fn window_of(t: &Target, slave: &str) -> Result<usize, String> {
    let path = format!("/api/v1/keys/{slave}/status");
    let body = expect(t, "GET", &path, "", 200)?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(ctx(&path))?;
    let field = |name: &str| v.get(name).and_then(serde_json::Value::as_u64);
    match (field("max_key_count"), field("key_size")) {
        (Some(count), Some(bits)) if count > 0 => Ok((count * bits / 8) as usize),
        _ => Err(format!(
            "{path}: no max_key_count (or 0) to size the backlog by: give --backlog-kib"
        )),
    }
}

/// Prints the rows of an `etsi014` run: (name, connections, what it
/// measured), over `secs` seconds, `key_bits` per key.
fn print_key_table(rows: &[(String, usize, &Side14)], secs: f64, key_bits: usize) {
    let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    println!(
        "{:<28} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>8}",
        "scenario", "conns", "req/s", "keys/s", "Mbit/s", "p50 µs", "p99 µs", "errors"
    );
    for (name, conns, s) in rows {
        let keys = s.keys as f64 / secs;
        println!(
            "{:<28} {:>6} {:>10.0} {:>10.0} {:>9.2} {:>9} {:>9} {:>8}",
            name,
            conns,
            s.ok as f64 / secs,
            keys,
            keys * key_bits as f64 / 1e6,
            opt(s.hist.quantile_us(0.5)),
            opt(s.hist.quantile_us(0.99)),
            s.errors
        );
    }
}

/// The `etsi014` scenario.
fn etsi014(e: &Etsi014Args) -> Result<(), String> {
    if e.conns == 0 || e.dec_conns == 0 || e.number == 0 || e.dec_ids == 0 {
        return Err("--conns, --dec-conns, --number and --dec-ids must be at least 1".into());
    }
    let a = target_as(&e.a, ("LOAD_CERT", "LOAD_KEY"))?;
    let b = target_as(&e.b, ("LOAD_CERT_B", "LOAD_KEY_B"))?;
    for t in [&a, &b] {
        StdStream::connect_timeout(&t.addr, Duration::from_secs(2))
            .map_err(ctx(format!("https://{}", t.host)))?;
    }
    let threads = e.threads.clamp(1, e.conns.min(e.dec_conns));
    let key_len = (e.size / 8).max(1);
    let mut enc = Vec::new();
    let query = format!("number={}&size={}", e.number, e.size);
    let path = format!("/api/v1/keys/{}/enc_keys?{query}", e.slave);
    request(&mut enc, "GET", &path, &a.host, "");
    let backlog_bytes = match e.backlog_kib {
        0 => window_of(&a, &e.slave)? / 2,
        kib => kib * 1024,
    };
    let backlog = (backlog_bytes / key_len / threads).max(e.number);
    let plan = Plan14 {
        dec_path: format!("/api/v1/keys/{}/dec_keys", e.master),
        a,
        b,
        enc,
        number: e.number,
        key_len,
        dec_ids: e.dec_ids,
        backlog,
    };
    let deadline = Instant::now() + Duration::from_secs_f64(e.secs);
    let share = |n: usize, i: usize| n / threads + usize::from(i < n % threads);
    let results: Vec<_> = thread::scope(|s| {
        let plan = &plan;
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (enc, dec) = (share(e.conns, i), share(e.dec_conns, i));
                s.spawn(move || client14(plan, enc, dec, deadline))
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let (mut st, mut check) = (Stats14::default(), Check14::default());
    for r in results {
        let (s, c) = r
            .map_err(|_| "client thread panicked")?
            .map_err(ctx("client"))?;
        st.enc.merge(&s.enc);
        st.dec.merge(&s.dec);
        check.merge(&c);
    }
    println!(
        "etsi014: {} -> {}, {}-bit keys, {} s: enc_keys {query} on {} ({} conns), dec_keys of up \
         to {} key_IDs on {} ({} conns)",
        e.master, e.slave, e.size, e.secs, e.a, e.conns, e.dec_ids, e.b, e.dec_conns
    );
    print_key_table(
        &[
            (
                format!("014 enc_keys number={}", e.number),
                e.conns,
                &st.enc,
            ),
            (
                format!("014 dec_keys <={} IDs", e.dec_ids),
                e.dec_conns,
                &st.dec,
            ),
        ],
        e.secs,
        e.size,
    );
    let held = 100.0 * check.held as f64 / (st.enc.ok + st.enc.errors).max(1) as f64;
    println!(
        "check: {} keys issued, {} fetched from node B with the same bytes, {} mismatches, {} \
         dec_keys refused or lost ({} keys), {} never fetched; {} enc_keys ({held:.1} %) waited \
         for the backlog ({} KiB)",
        check.issued,
        check.matched,
        check.mismatches,
        check.dec_failures,
        check.lost,
        check.unfetched,
        check.held,
        backlog_bytes / 1024
    );
    match (check.mismatches, check.dec_failures, check.unfetched) {
        (0, 0, 0) => Ok(()),
        (m, f, u) => Err(format!(
            "{m} keys mismatch, {f} dec_keys refused or lost, {u} keys never fetched"
        )),
    }
}
