//! TLS on the listeners, against real clients: curl, Python's `ssl` and
//! `http.client`, `openssl s_client` (TLS 1.2 and 1.3) and the tests' own
//! rustls client, with certificates from the real `keypipe ca`. Client
//! certificates from another CA, expired, revoked (while connected) or
//! missing are refused, and the server keeps serving everyone else. SIGHUP
//! reloads the certificate without dropping connections; bad files stop
//! the start naming the file.

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use support::tls::{Pki, TlsConn, client_config, curl};
use support::{ServerProcess, free_port};

fn tls_config(port: u16, tls: &str) -> String {
    format!("[[node]]\nname = \"a\"\nlisten = \"127.0.0.1:{port}\"\n{tls}")
}

/// `openssl s_client` sending one request: its whole output.
fn s_client(port: u16, pki: &Pki, extra: &[&str], client: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "localhost",
    ])
    .arg("-CAfile")
    .arg(pki.ca())
    .args(["-verify_return_error", "-ign_eof"])
    .args(extra);
    if let Some(name) = client {
        cmd.arg("-cert")
            .arg(pki.client_crt(name))
            .arg("-key")
            .arg(pki.client_key(name));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Python's `ssl` and `http.client`: `GET /healthz` with a client
/// certificate; prints "status version cipher".
fn python(port: u16, pki: &Pki, client: &str, tls12_secp384r1: bool) -> String {
    let script = format!(
        r#"
import http.client, ssl
ctx = ssl.create_default_context(cafile={ca:?})
ctx.load_cert_chain({crt:?}, {key:?})
if {pin}:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ecdh_curve("secp384r1")
conn = http.client.HTTPSConnection("localhost", {port}, context=ctx, timeout=10)
conn.request("GET", "/healthz")
r = conn.getresponse()
print(r.status, conn.sock.version(), conn.sock.cipher()[0], r.read().decode())
"#,
        ca = pki.ca().display().to_string(),
        crt = pki.client_crt(client).display().to_string(),
        key = pki.client_key(client).display().to_string(),
        pin = if tls12_secp384r1 { "True" } else { "False" },
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A client certificate signed by the real Signing CA of `pki`, expired
/// a day ago (built with rcgen from the CA key in the store).
fn expired_client(pki: &Pki, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use keypipe_server::store::{CaStore, Store, StoreOptions};
    let store = Store::open(&StoreOptions::new(&pki.data)).unwrap();
    let signing = store
        .ca_keys()
        .unwrap()
        .into_iter()
        .find(|k| k.name == "signing")
        .unwrap();
    let ca_key = rcgen::KeyPair::try_from(signing.key_pkcs8.as_slice()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(signing.cert_der.clone()), ca_key)
            .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kms-old");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "kms");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (crt, key_path) = (dir.join("expired.crt"), dir.join("expired.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (crt, key_path)
}

#[test]
fn real_clients_complete_requests_and_bad_client_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    // P-384: KeyTalk's clients pin TLS 1.2 with secp384r1, which OpenSSL
    // then also asks of the server's ECDSA key.
    pki.server_key("node-a", "p384");
    pki.client("kms-a", "kms");
    let kms_b = pki.client("kms-b", "kms");
    let foreign = Pki::new(&dir.path().join("foreign"));
    foreign.client("intruder", "kms");
    let port = free_port();
    // The server shares the CA's store: revocations reach it.
    let _server = ServerProcess::start_tls(
        &pki.data,
        port,
        &tls_config(port, &pki.node_tls("node-a", "required")),
    );
    let url = format!("https://localhost:{port}/healthz");
    let good = (pki.client_crt("kms-a"), pki.client_key("kms-a"));
    let good = Some((good.0.as_path(), good.1.as_path()));

    // curl: with a certificate of the CA, 200.
    assert_eq!(curl(&url, &pki.ca(), good).1, 200);
    // Python ssl + http.client, TLS 1.3 and pinned to 1.2 with secp384r1.
    let text = python(port, &pki, "kms-a", false);
    assert!(text.starts_with("200 TLSv1.3"), "{text}");
    let text = python(port, &pki, "kms-a", true);
    assert!(text.starts_with("200 TLSv1.2 ECDHE-ECDSA"), "{text}");
    // openssl s_client, TLS 1.2 and 1.3, ALPN.
    for version in ["-tls1_2", "-tls1_3"] {
        let text = s_client(
            port,
            &pki,
            &[version, "-alpn", "h2,http/1.1"],
            Some("kms-a"),
        );
        assert!(text.contains("HTTP/1.1 200 OK"), "{version}: {text}");
        assert!(
            text.contains("ALPN protocol: http/1.1"),
            "{version}: {text}"
        );
    }
    let text = s_client(port, &pki, &["-alpn", "h2"], Some("kms-a"));
    assert!(!text.contains("HTTP/1.1 200"), "h2 only must fail: {text}");

    // Refused: no certificate, another CA's, an expired one.
    let (ok, _, err) = curl(&url, &pki.ca(), None);
    assert!(!ok, "no client certificate must fail: {err}");
    let intruder = (
        foreign.client_crt("intruder"),
        foreign.client_key("intruder"),
    );
    let (ok, _, err) = curl(&url, &pki.ca(), Some((&intruder.0, &intruder.1)));
    assert!(!ok, "a certificate of another CA must fail: {err}");
    let expired = expired_client(&pki, dir.path());
    let (ok, _, err) = curl(&url, &pki.ca(), Some((&expired.0, &expired.1)));
    assert!(!ok, "an expired certificate must fail: {err}");
    let mut refused = TlsConn::open(
        port_addr(port),
        &client_config(&pki.ca(), Some((&expired.0, &expired.1))),
    )
    .and_then(|mut c| c.send("GET", "/healthz", None));
    assert!(
        refused.is_err(),
        "rustls client with an expired certificate: {refused:?}"
    );
    refused = TlsConn::open(port_addr(port), &client_config(&pki.ca(), None))
        .and_then(|mut c| c.send("GET", "/healthz", None));
    assert!(refused.is_err(), "rustls client without a certificate");
    // ... and everyone else is still served.
    assert_eq!(curl(&url, &pki.ca(), good).1, 200);

    // Revoked while connected: the open connection gets 403 at its next
    // request, new handshakes fail, within a second or so.
    let config_b = pki.client_config("kms-b");
    let mut conn = TlsConn::open(port_addr(port), &config_b).unwrap();
    assert_eq!(conn.send("GET", "/healthz", None).unwrap().status, 200);
    pki.run(&["revoke", kms_b["serial"].as_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(3);
    let answer = loop {
        let a = conn.send("GET", "/healthz", None).unwrap();
        if a.status != 200 || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        answer.status,
        403,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(String::from_utf8_lossy(&answer.body).contains("revoked"));
    // A full handshake fails; a resumed session (no certificate check in
    // the handshake) is refused at its request.
    let fresh = pki.client_config("kms-b");
    let again =
        TlsConn::open(port_addr(port), &fresh).and_then(|mut c| c.send("GET", "/healthz", None));
    assert!(
        again.is_err(),
        "a revoked certificate must fail the handshake: {again:?}"
    );
    let resumed =
        TlsConn::open(port_addr(port), &config_b).and_then(|mut c| c.send("GET", "/healthz", None));
    assert!(
        resumed.as_ref().map_or(true, |a| a.status == 403),
        "a resumed session of a revoked certificate: {resumed:?}"
    );
    assert_eq!(
        curl(&url, &pki.ca(), good).1,
        200,
        "others are still served"
    );
}

fn port_addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[test]
fn sessions_resume_and_sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("node-a");
    let second = pki.server("node-a2");
    // The listener reads copies, which the test replaces.
    let (crt, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(pki.crt("node-a"), &crt).unwrap();
    std::fs::copy(pki.key("node-a"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_port();
    let tls = format!("[node.tls]\ncert = {crt:?}\nkey = {key:?}\n");
    let server = ServerProcess::start_tls(dir.path(), port, &tls_config(port, &tls));

    // Resumption: TLS 1.3 tickets and TLS 1.2 session ids.
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = dir.path().join(format!("sess{version}"));
        let s = sess.to_str().unwrap();
        let first = s_client(port, &pki, &[version, "-sess_out", s], None);
        assert!(first.contains("HTTP/1.1 200 OK"), "{first}");
        let second = s_client(port, &pki, &[version, "-sess_in", s], None);
        assert!(
            second.contains("Reused, TLSv1."),
            "{version} not resumed: {second}"
        );
    }

    let config = client_config(&pki.ca(), None);
    let mut before = TlsConn::open(port_addr(port), &config).unwrap();
    assert_eq!(before.send("GET", "/healthz", None).unwrap().status, 200);
    let serial_of = |c: &TlsConn| {
        let der = c.stream.get_ref().conn.peer_certificates().unwrap()[0].to_vec();
        keypipe_server::tls::PeerIdentity::from_der(&der)
            .unwrap()
            .serial
    };
    let old_serial = serial_of(&before);

    // A broken file: the reload fails, the old certificate stays.
    std::fs::write(&crt, "not a certificate").unwrap();
    hup(&server);
    wait_for_log(&server, "TLS reload failed");
    let mut during = TlsConn::open(port_addr(port), &config).unwrap();
    assert_eq!(serial_of(&during), old_serial);
    assert_eq!(during.send("GET", "/healthz", None).unwrap().status, 200);

    // The new certificate: new connections get it, open ones go on.
    std::fs::copy(pki.crt("node-a2"), &crt).unwrap();
    std::fs::copy(pki.key("node-a2"), &key).unwrap();
    hup(&server);
    wait_for_log(&server, "TLS certificate and key reloaded");
    let after = TlsConn::open(port_addr(port), &config).unwrap();
    assert_eq!(serial_of(&after), second["serial"].as_str().unwrap());
    assert_eq!(
        before.send("GET", "/healthz", None).unwrap().status,
        200,
        "not dropped"
    );
    assert_eq!(
        during.send("GET", "/healthz", None).unwrap().status,
        200,
        "not dropped"
    );
}

fn hup(server: &ServerProcess) {
    let ok = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_for_log(server: &ServerProcess, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `keypipe serve` with `config`, which must fail to start: its log.
fn refused_start(dir: &Path, port: u16, config: &str) -> String {
    let mut server = ServerProcess::spawn(dir, port, config);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(!status.success());
            return server.log_text();
        }
        assert!(
            Instant::now() < deadline,
            "the server started:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_tls_files_stop_the_start_naming_the_file_and_rsa_certificates_work() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("node-a");
    let port = free_port();
    let key = pki.key("node-a");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = refused_start(
        dir.path(),
        port,
        &tls_config(port, &pki.node_tls("node-a", "none")),
    );
    assert!(
        log.contains(key.to_str().unwrap()) && log.contains("chmod 600"),
        "{log}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let missing = format!("[node.tls]\ncert = \"/nonexistent/x.crt\"\nkey = {key:?}\n");
    let log = refused_start(dir.path(), port, &tls_config(port, &missing));
    assert!(log.contains("/nonexistent/x.crt"), "{log}");

    let no_ca = format!(
        "[node.tls]\ncert = {:?}\nkey = {key:?}\nclient_auth = \"required\"\n",
        pki.crt("node-a")
    );
    let log = refused_start(dir.path(), port, &tls_config(port, &no_ca));
    assert!(log.contains("client_ca"), "{log}");

    let wrong_key = format!(
        "[node.tls]\ncert = {:?}\nkey = {:?}\n",
        pki.crt("node-a"),
        {
            pki.server("other");
            pki.key("other")
        }
    );
    let log = refused_start(dir.path(), port, &tls_config(port, &wrong_key));
    assert!(log.contains("tls"), "{log}");

    // An RSA certificate (made by OpenSSL) serves too.
    let (rsa_crt, rsa_key) = (dir.path().join("rsa.crt"), dir.path().join("rsa.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
        ])
        .arg(&rsa_key)
        .arg("-out")
        .arg(&rsa_crt)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    std::fs::set_permissions(&rsa_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let rsa = format!("[node.tls]\ncert = {rsa_crt:?}\nkey = {rsa_key:?}\n");
    let _server = ServerProcess::start_tls(dir.path(), port, &tls_config(port, &rsa));
    let (ok, status, err) = curl(&format!("https://localhost:{port}/healthz"), &rsa_crt, None);
    assert!(ok && status == 200, "{err}");
}

/// A client that trickles its handshake (one byte at a time, each well
/// within any idle timeout) is dropped once `request_timeout_ms` has
/// passed since it connected; others are served meanwhile.
#[test]
fn a_trickled_handshake_is_dropped_after_the_request_timeout() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("node-a");
    let port = free_port();
    let config = format!(
        "{}[node.http]\nrequest_timeout_ms = 1000\n",
        tls_config(port, &pki.node_tls("node-a", "none"))
    );
    let _server = ServerProcess::start_tls(dir.path(), port, &config);
    let mut slow = std::net::TcpStream::connect(port_addr(port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // The start of a TLS record carrying a ClientHello, never finished.
    let hello = [
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let start = Instant::now();
    let mut closed = false;
    for i in 0..60 {
        if slow.write_all(&hello[i % hello.len()..][..1]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match slow.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            _ => {
                closed = true;
                break;
            }
        }
        if i == 5 {
            let (ok, status, err) = curl(
                &format!("https://localhost:{port}/healthz"),
                &pki.ca(),
                None,
            );
            assert!(ok && status == 200, "others are served: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = start.elapsed();
    assert!(closed, "the trickling client was never dropped");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(5000),
        "{took:?}"
    );
}
