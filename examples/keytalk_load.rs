//! Load generator for KeyTalk enrolment: `clients` threads, each running
//! whole enrolments (hello, handshake, auth-requirements, authentication,
//! cert) in a closed loop for `secs` seconds over TLS, keep-alive or with
//! a new TLS connection per request (as the C++ client does), with the
//! server generating the key (`--service`'s key type) or signing a CSR
//! (`--csr`, RSA-2048 keys made ahead). A probe thread measures
//! `GET /healthz` on `--healthz` meanwhile. Prints one line:
//! `enrolments/s`, p50/p99 enrolment latency and the healthz p99.
//!
//! `cargo run --release --example keytalk_load -- --rcdp 127.0.0.1:4443
//! --ca primary.pem --user alice --password 'correct horse'`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Options.
#[derive(Parser)]
struct Args {
    /// The KeyTalk TLS listener.
    #[arg(long)]
    rcdp: SocketAddr,
    /// The CA bundle (PEM) the listener's certificate chains to.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// The user; with `--users N`, client `i` is `{user}{i % N}`.
    #[arg(long)]
    user: String,
    /// Users to spread the clients over (each user's attempts are checked
    /// one at a time, so parallel clients need users of their own).
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Its password.
    #[arg(long)]
    password: String,
    /// The service.
    #[arg(long, default_value = "DEMO")]
    service: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// A new TLS connection for every request (the C++ client's way).
    #[arg(long)]
    new_connections: bool,
    /// Sign a CSR (RSA-2048, made before the run) instead of server keygen.
    #[arg(long)]
    csr: bool,
    /// Probe `GET /healthz` on this plain listener meanwhile.
    #[arg(long)]
    healthz: Option<SocketAddr>,
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

struct Client {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    conn: Option<BufReader<Tls>>,
    fresh: bool,
    cookie: Option<String>,
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    fn connect(&self) -> std::io::Result<BufReader<Tls>> {
        let tcp = TcpStream::connect(self.addr)?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").expect("a name");
        let conn =
            ClientConnection::new(Arc::clone(&self.config), name).map_err(std::io::Error::other)?;
        Ok(BufReader::new(StreamOwned::new(conn, tcp)))
    }

    /// One call: its JSON answer.
    fn call(&mut self, action: &str, form: &str) -> Result<serde_json::Value, String> {
        if self.fresh || self.conn.is_none() {
            self.conn = Some(self.connect().map_err(|e| e.to_string())?);
        }
        let conn = self.conn.as_mut().expect("connected");
        let cookie = self
            .cookie
            .as_ref()
            .map(|c| format!("Cookie: keytalkcookie={c}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST /rcdp/2.4.1/{action} HTTP/1.1\r\nHost: localhost\r\n{cookie}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        );
        conn.get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        conn.read_line(&mut line).map_err(|e| e.to_string())?;
        if !line.starts_with("HTTP/1.1 200") {
            return Err(format!("{action}: {line}"));
        }
        let mut len = 0;
        loop {
            line.clear();
            conn.read_line(&mut line).map_err(|e| e.to_string())?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().map_err(|_| "bad length")?;
            }
            if let Some(v) = l.strip_prefix("Set-Cookie: keytalkcookie=") {
                self.cookie = Some(v.to_owned());
            }
        }
        let mut body = vec![0; len];
        conn.read_exact(&mut body).map_err(|e| e.to_string())?;
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
}

fn enrol(c: &mut Client, args: &Args, user: &str, csr: Option<&str>) -> Result<(), String> {
    c.cookie = None;
    c.call("hello", "")?;
    let now = time::OffsetDateTime::now_utc();
    let utc = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    c.call("handshake", &format!("caller-utc={}", enc(&utc)))?;
    c.call(
        "auth-requirements",
        &format!("service={}", enc(&args.service)),
    )?;
    let a = c.call(
        "authentication",
        &format!(
            "service={}&USERID={}&PASSWD={}",
            enc(&args.service),
            enc(user),
            enc(&args.password)
        ),
    )?;
    if a["auth-status"] != "OK" {
        return Err(format!("authentication: {a}"));
    }
    let form = match csr {
        Some(pem) => format!("csr={}", enc(pem)),
        None => "format=P12".into(),
    };
    let v = c.call("cert", &form)?;
    if v["status"] != "cert" {
        return Err(format!("cert: {v}"));
    }
    Ok(())
}

/// An RSA-2048 CSR for `user` of `service` (the default profile's
/// subject: O=keypipe demo, OU=service, CN=user).
fn make_csr(service: &str, user: &str) -> String {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("an RSA key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "keypipe demo");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, service);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user);
    params
        .serialize_request(&key)
        .expect("a CSR")
        .pem()
        .expect("PEM")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn healthz_probe(addr: SocketAddr, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let ok = (|| -> std::io::Result<()> {
            if conn.is_none() {
                conn = Some(BufReader::new(TcpStream::connect(addr)?));
            }
            let c = conn.as_mut().expect("connected");
            c.get_mut()
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut len = 0;
            let mut line = String::new();
            loop {
                line.clear();
                c.read_line(&mut line)?;
                if line.trim_end().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            c.read_exact(&mut body)
        })();
        if ok.is_ok() {
            out.push(t.elapsed());
        } else {
            conn = None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    out
}

fn main() {
    let args = Arc::new(Args::parse());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca).expect("the CA file") {
        roots.add(cert.expect("a certificate")).expect("a CA");
    }
    let config = Arc::new(
        ClientConfig::builder_with_provider(
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let user_of = |i: usize| {
        if args.users > 0 {
            format!("{}{}", args.user, i % args.users)
        } else {
            args.user.clone()
        }
    };
    // One RSA-2048 CSR per user, made before the clock starts.
    let csrs: Vec<Option<String>> = (0..args.clients)
        .map(|i| args.csr.then(|| make_csr(&args.service, &user_of(i))))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let probe = args.healthz.map(|addr| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || healthz_probe(addr, stop))
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.secs);
    let workers: Vec<_> = (0..args.clients)
        .map(|i| {
            let (args, config, csr) = (Arc::clone(&args), Arc::clone(&config), csrs[i].clone());
            let user = user_of(i);
            std::thread::spawn(move || {
                let mut c = Client {
                    addr: args.rcdp,
                    config,
                    conn: None,
                    fresh: args.new_connections,
                    cookie: None,
                };
                let mut times = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match enrol(&mut c, &args, &user, csr.as_deref()) {
                        Ok(()) => times.push(t.elapsed()),
                        Err(e) => {
                            errors += 1;
                            if errors < 3 {
                                eprintln!("error: {e}");
                            }
                            c.conn = None;
                        }
                    }
                }
                (times, errors)
            })
        })
        .collect();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut times = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (t, e) = w.join().expect("a worker");
        times.extend(t);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut health = probe
        .map(|p| p.join().expect("the probe"))
        .unwrap_or_default();
    times.sort();
    health.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "enrolments/s {:.1}  p50 {:.1} ms  p99 {:.1} ms  errors {errors}  clients {}  {}  {}{}",
        times.len() as f64 / elapsed,
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        args.clients,
        if args.new_connections {
            "new-connection-per-request"
        } else {
            "keep-alive"
        },
        if args.csr { "csr" } else { "server-keygen" },
        if health.is_empty() {
            String::new()
        } else {
            format!(
                "  healthz p50 {:.2} ms p99 {:.2} ms ({} probes)",
                ms(percentile(&health, 0.5)),
                ms(percentile(&health, 0.99)),
                health.len()
            )
        }
    );
    if errors > 0 && times.is_empty() {
        std::process::exit(1);
    }
}
