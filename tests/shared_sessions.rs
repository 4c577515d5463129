//! Short-lived state shared by the `keypipe serve` processes of one site
//! through one PostgreSQL store (`[store] url`), end to end: two real
//! processes A and B on one fresh database (`scripts/pg.sh`) and one data
//! directory (so one KEK), real sockets and TLS, the independent clients
//! of `support/ka_client.rs` and `support/keytalk_clients.rs`, users made
//! with the real `keypipe user --store-url`.
//!
//! It proves that, with no pinning of a client to a process:
//!
//! - a key-agreement reference made on one process logs in on the other,
//!   once: a second login with it fails on both (410), and of eight logins
//!   racing with one reference over both processes exactly one succeeds;
//!   the login session (refresh token) made on one process is refreshed
//!   and ended on the other, and its end holds on both;
//! - failed logins counted on one process hold the next attempt from the
//!   same source on the other (even with the right password), and the
//!   other's next failure is delayed as the next of the same count;
//! - a KeyTalk enrolment whose RCDP calls alternate A, B, A, B… (one
//!   cookie) completes for every client family and delivers a certificate
//!   that chains to the CA; an out-of-band link made by one process is
//!   downloaded once through the other, then never again (404);
//! - after `kill -9` of A, B still honours A's login session and finishes
//!   a KeyTalk session authenticated on A, and the certificates A issued
//!   are listed by `keypipe ca --store-url URL list` run after the kill.

#[path = "support/ka_client.rs"]
mod ka_client;
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ka_client::{Encoding, Scheme, hello, random_nonce};
use keypipe_server::store::testing::fresh_pg_database;
use serde_json::{Value, json};
use support::keytalk::{KeyTalkProcess, KeyTalkServer, Setup};
use support::keytalk_clients::{
    CertOptions, Creds, Family, Format, Session as Rcdp, Target, fetch_plain,
};
use support::*;

const PASSWORD: &str = "s3cret-Pässword";
const KT_PASSWORD: &str = "correct horse";
const HERE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

// ─────────────────────────── key agreement ───────────────────────────

/// One site: a data directory (its `kek.key` is every process's KEK) and
/// a fresh PostgreSQL database.
struct Site {
    dir: tempfile::TempDir,
    url: String,
}

impl Site {
    fn new(label: &str) -> Site {
        Site {
            dir: tempfile::tempdir().unwrap(),
            url: fresh_pg_database(label),
        }
    }

    /// A process of the site serving key agreement and login, with
    /// `extra` top-level settings (e.g. `[login]`).
    fn serve(&self, extra: &str) -> ServerProcess {
        let port = free_port();
        ServerProcess::start(
            self.dir.path(),
            port,
            &format!(
                "[store]\nurl = \"{}\"\n{extra}\n[[node]]\nname = \"ka\"\nlisten = \"127.0.0.1:{port}\"\nworkers = 2\nserve = [\"key-agreement\"]\n",
                self.url
            ),
        )
    }
}

/// `keypipe user --data-dir DIR --store-url URL add --domain corp --name
/// NAME`, the password on standard input.
fn add_corp_user(dir: &Path, url: &str, name: &str, password: &str) {
    let out = admin_run(
        "user",
        dir,
        &[
            "--store-url",
            url,
            "add",
            "--domain",
            "corp",
            "--name",
            name,
        ],
        Some(&format!("{password}\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An agreement on `addr`, on a new connection from `source`: the
/// connection and the session the client verified.
fn agree_from(addr: SocketAddr, source: IpAddr) -> (Conn, ka_client::Session) {
    let mut conn = Conn::open_from(addr, source).unwrap();
    let hello = hello(
        Scheme::EcAes1,
        Encoding::Raw,
        b"shared-sessions",
        &random_nonce(),
    );
    let answer = conn
        .send("POST", "/rest/key-agreement", Some(&hello.body))
        .unwrap();
    assert_eq!(answer.status, 200, "agreement on {addr}: {answer:?}");
    let session = hello.finish(&answer.json()).unwrap();
    (conn, session)
}

fn agree(addr: SocketAddr) -> ka_client::Session {
    agree_from(addr, HERE).1
}

/// A login of `corp/alice` with `password` under `session`'s reference,
/// on `conn`: the answer and how long it took.
fn login_on(conn: &mut Conn, session: &ka_client::Session, password: &str) -> (Answer, Duration) {
    let body = session.login_body("corp", "alice", password);
    let t = Instant::now();
    let answer = conn
        .send("POST", &session.login_path(), Some(&body))
        .unwrap();
    (answer, t.elapsed())
}

/// A login on `addr` (a new connection) under `session`'s reference.
fn login(addr: SocketAddr, session: &ka_client::Session, password: &str) -> Answer {
    login_on(&mut Conn::open(addr).unwrap(), session, password).0
}

/// A fresh agreement, then a login, both on `addr` from `source`.
fn login_from(addr: SocketAddr, source: IpAddr, password: &str) -> (Answer, Duration) {
    let (mut conn, session) = agree_from(addr, source);
    login_on(&mut conn, &session, password)
}

/// The tokens of a successful login.
fn tokens(answer: &Answer) -> (String, String) {
    assert_eq!(answer.status, 200, "{answer:?}");
    let v = answer.json();
    let access = v["access_token"].as_str().unwrap().to_owned();
    let refresh = v["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!((access.len(), refresh.len()), (43, 43), "{v}");
    (access, refresh)
}

/// `POST path` with `{"refresh_token": …}` on `addr`.
fn with_refresh(addr: SocketAddr, path: &str, refresh: &str) -> Answer {
    request(
        addr,
        "POST",
        path,
        Some(&json!({ "refresh_token": refresh })),
    )
    .unwrap()
}

/// A new access token from `refresh`'s session, asked of `addr`.
fn refreshed(addr: SocketAddr, refresh: &str) -> String {
    let r = with_refresh(addr, "/rest/refresh", refresh);
    assert_eq!(r.status, 200, "refresh on {addr}: {r:?}");
    r.json()["access_token"].as_str().unwrap().to_owned()
}

fn assert_no_panic(servers: &[&ServerProcess]) {
    for s in servers {
        let log = s.log_text();
        assert!(!log.contains("panicked"), "{} panicked:\n{log}", s.addr);
    }
}

#[test]
fn an_agreement_on_one_process_logs_in_on_the_other_once() {
    let site = Site::new("shared_agreement");
    let a = site.serve("");
    let b = site.serve("");
    add_corp_user(site.dir.path(), &site.url, "alice", PASSWORD);

    // Agreed on A, logged in on B; the reference is then used up on both.
    let on_a = agree(a.addr);
    let (access_b, refresh_b) = tokens(&login(b.addr, &on_a, PASSWORD));
    for (name, addr) in [("A", a.addr), ("B", b.addr)] {
        let again = login(addr, &on_a, PASSWORD);
        assert_eq!(again.status, 410, "reference reused on {name}: {again:?}");
    }
    // And the other way round.
    let on_b = agree(b.addr);
    let (access_a, refresh_a) = tokens(&login(a.addr, &on_b, PASSWORD));
    for addr in [a.addr, b.addr] {
        assert_eq!(login(addr, &on_b, PASSWORD).status, 410);
    }
    assert_ne!(access_a, access_b);

    // The session opened on B is refreshed on A (a new access token), and
    // ended on A: from then on neither process knows it.
    let fresh = refreshed(a.addr, &refresh_b);
    assert_ne!(fresh, access_b);
    assert_ne!(refreshed(b.addr, &refresh_b), fresh);
    assert_eq!(with_refresh(a.addr, "/rest/logout", &refresh_b).status, 204);
    for addr in [a.addr, b.addr] {
        assert_eq!(with_refresh(addr, "/rest/refresh", &refresh_b).status, 401);
        assert_eq!(with_refresh(addr, "/rest/logout", &refresh_b).status, 401);
    }
    // The session opened on A lives on, on B too, until B ends it.
    refreshed(b.addr, &refresh_a);
    assert_eq!(with_refresh(b.addr, "/rest/logout", &refresh_a).status, 204);
    assert_eq!(
        with_refresh(a.addr, "/rest/refresh", &refresh_a).status,
        401
    );

    // Eight logins race with one reference, half on A, half on B:
    // exactly one gets in, the others find it used (410). Three rounds,
    // the reference made on A, then B, then A.
    for round in 0..3 {
        let maker = if round % 2 == 0 { a.addr } else { b.addr };
        let session = agree(maker);
        let start = Arc::new(Barrier::new(8));
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let addr = if i % 2 == 0 { a.addr } else { b.addr };
                let (session, start) = (session.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    let mut conn = Conn::open(addr).unwrap();
                    start.wait();
                    login_on(&mut conn, &session, PASSWORD).0
                })
            })
            .collect();
        let answers: Vec<Answer> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        assert_eq!(
            statuses.iter().filter(|&&s| s == 200).count(),
            1,
            "round {round}: {statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|&&s| s == 410).count(),
            7,
            "round {round}: {statuses:?} {answers:?}"
        );
        // The winner's session works on both processes.
        let winner = answers.iter().find(|a| a.status == 200).unwrap();
        let (_, refresh) = tokens(winner);
        refreshed(a.addr, &refresh);
        refreshed(b.addr, &refresh);
    }
    assert_no_panic(&[&a, &b]);
}

#[test]
fn failed_logins_on_one_process_hold_the_next_attempt_on_the_other() {
    let site = Site::new("shared_throttle");
    // The first failure of a source holds it 250 ms, doubling.
    let settings = "[login]\nfailure_delay_ms = 250\n";
    let a = site.serve(settings);
    let b = site.serve(settings);
    add_corp_user(site.dir.path(), &site.url, "alice", PASSWORD);
    let ms = Duration::from_millis;

    // Two wrong passwords on A: held 250 ms, then 500 ms.
    let (r, took) = login_from(a.addr, HERE, "guess-1");
    assert_eq!(r.status, 401);
    assert!(took >= ms(250), "{took:?}");
    let (r, took) = login_from(a.addr, HERE, "guess-2");
    assert_eq!(r.status, 401);
    assert!(took >= ms(500), "second failure held longer: {took:?}");

    // A third on A holds this source 1 s from its start; meanwhile B ...
    let (mut conn, session) = agree_from(a.addr, HERE);
    let sent = Instant::now();
    let third = std::thread::spawn(move || login_on(&mut conn, &session, "guess-3"));
    std::thread::sleep(ms(300));
    // ... logs in another source at once (B works; the hold is per
    // source) ...
    let (r, took) = login_from(b.addr, ELSEWHERE, PASSWORD);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(took < ms(700), "{took:?}");
    // ... but refuses this source even the right password, answering when
    // A's hold ends: the hold A set is B's too.
    let (mut conn, session) = agree_from(b.addr, HERE);
    let (r, _) = login_on(&mut conn, &session, PASSWORD);
    assert_eq!(
        r.status, 401,
        "B checked a password from a source A holds: {r:?}"
    );
    assert!(
        sent.elapsed() >= ms(1000),
        "B answered before A's hold ended: {:?}",
        sent.elapsed()
    );
    let (r, took) = third.join().unwrap();
    assert_eq!(r.status, 401);
    assert!(took >= ms(1000), "{took:?}");

    // B's next failure from this source is the fourth (2 s), not a first
    // (250 ms): B counts A's failures.
    let (r, took) = login_from(b.addr, HERE, "guess-4");
    assert_eq!(r.status, 401);
    assert!(took >= ms(2000), "B did not count A's failures: {took:?}");
    // Once that hold is over, the right password works on A.
    let (r, took) = login_from(a.addr, HERE, PASSWORD);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(took < ms(1000), "{took:?}");
    assert_no_panic(&[&a, &b]);
}

// ─────────────────────────────── KeyTalk ───────────────────────────────

/// A KeyTalk site on a fresh database: process A (the returned server,
/// which owns the data directory), process B, started after it, and the
/// database; user `kate` of DEMO.
fn keytalk_site(label: &str, also_serve: &[&str]) -> (KeyTalkServer, KeyTalkProcess, String) {
    require("openssl");
    let url = fresh_pg_database(label);
    let a = KeyTalkServer::start_with(Setup {
        store_url: Some(url.clone()),
        also_serve: also_serve.iter().map(|s| s.to_string()).collect(),
        ..Setup::default()
    });
    let b = a.start_another();
    a.add_user("kate", KT_PASSWORD, &["DEMO"]);
    (a, b, url)
}

fn kate() -> Creds {
    Creds {
        service: "DEMO".into(),
        user: "kate".into(),
        password: KT_PASSWORD.into(),
        hwsig: None,
    }
}

/// Sends the next call of `s` to the other of `targets` than the last
/// one: A, B, A, B…
fn next<'s>(s: &'s mut Rcdp, targets: &[&Target; 2], turn: &mut usize) -> &'s mut Rcdp {
    s.retarget(targets[*turn % 2]);
    *turn += 1;
    s
}

/// `answer` has `"status": status`.
fn expect(answer: Result<Value, String>, status: &str) -> Value {
    let v = answer.unwrap_or_else(|e| panic!("{status}: {e}"));
    assert_eq!(v["status"], status, "{v}");
    v
}

/// The certificates (PEM blocks) in `text`.
fn cert_blocks(text: &str) -> Vec<String> {
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|b| {
            let body = b.split("-----END CERTIFICATE-----").next().unwrap();
            format!("-----BEGIN CERTIFICATE-----{body}-----END CERTIFICATE-----\n")
        })
        .collect()
}

/// Opens a P12 (DER) with `passphrase` using openssl: checks its key is
/// its certificate's, that the certificate chains to the Primary CA
/// (through the Signing CA served by `target`) for client TLS and carries
/// the DEMO profile for `user`; its serial (lower-case hex, no leading
/// zeros).
fn check_p12(
    dir: &Path,
    tag: &str,
    p12: &[u8],
    passphrase: &str,
    target: &Target,
    user: &str,
) -> String {
    assert_eq!(passphrase.len(), 30, "{tag}");
    let file = dir.join(format!("{tag}.p12"));
    std::fs::write(&file, p12).unwrap();
    let f = file.to_str().unwrap();
    let pass = format!("pass:{passphrase}");
    let certs = cert_blocks(&openssl_output(&[
        "pkcs12", "-in", f, "-passin", &pass, "-nodes", "-nokeys",
    ]));
    assert_eq!(certs.len(), 1, "{tag}: {certs:?}");
    let key = openssl_output(&["pkcs12", "-in", f, "-passin", &pass, "-nodes", "-nocerts"]);
    let leaf = dir.join(format!("{tag}.leaf.pem"));
    std::fs::write(&leaf, &certs[0]).unwrap();
    let key_file = dir.join(format!("{tag}.key.pem"));
    std::fs::write(&key_file, key).unwrap();
    let lf = leaf.to_str().unwrap();
    let from_cert = openssl_output(&["x509", "-in", lf, "-pubkey", "-noout"]);
    let from_key = openssl_output(&["pkey", "-in", key_file.to_str().unwrap(), "-pubout"]);
    assert_eq!(from_cert, from_key, "{tag}: the key is the certificate's");

    let (status, _, signing) = fetch_plain(target, "/ca/1.0.0/signing");
    assert_eq!(status, 200);
    let signing_file = dir.join(format!("{tag}.signing.pem"));
    std::fs::write(&signing_file, signing).unwrap();
    let verified = openssl_output(&[
        "verify",
        "-CAfile",
        target.ca_pem.to_str().unwrap(),
        "-untrusted",
        signing_file.to_str().unwrap(),
        "-purpose",
        "sslclient",
        lf,
    ]);
    assert!(verified.contains(": OK"), "{tag}: {verified}");
    let text = openssl_output(&["x509", "-in", lf, "-noout", "-subject", "-serial"]);
    assert!(
        text.contains(&format!("CN = {user}")) && text.contains("OU = DEMO"),
        "{tag}: {text}"
    );
    let serial = text
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap_or_else(|| panic!("{tag}: no serial in {text}"));
    normal_serial(serial)
}

/// A serial as lower-case hex without colons or leading zeros.
fn normal_serial(serial: &str) -> String {
    let hex = serial.trim().to_ascii_lowercase().replace(':', "");
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

fn download_path(answer: &Value) -> String {
    let templ = answer["cert-url-templ"].as_str().unwrap();
    let (_, rest) = templ.split_once("/cert/").unwrap();
    format!("/cert/{rest}")
}

#[test]
fn a_keytalk_enrolment_alternating_between_processes_completes() {
    let (a, b, _) = keytalk_site("shared_keytalk", &[]);
    let dir = tempfile::tempdir().unwrap();
    let certificates = |addr| metric(addr, "keypipe_keytalk_certificates_total");

    // Every family, its six calls alternating; the first on A for
    // even-numbered families, on B for the others, so `cert` (the sixth)
    // lands on B, then A, then B…
    let mut on = [0.0, 0.0];
    for (i, family) in Family::all().into_iter().enumerate() {
        let targets = if i % 2 == 0 {
            [&a.target, &b.target]
        } else {
            [&b.target, &a.target]
        };
        let mut turn = 0;
        let mut s = Rcdp::new(family, targets[0]);
        let tag = format!("{family:?}");
        expect(next(&mut s, &targets, &mut turn).hello(), "hello");
        expect(next(&mut s, &targets, &mut turn).handshake(), "handshake");
        expect(
            next(&mut s, &targets, &mut turn).auth_requirements("DEMO"),
            "auth-requirements",
        );
        let auth = expect(
            next(&mut s, &targets, &mut turn).authenticate(&kate()),
            "auth-result",
        );
        assert_eq!(auth["auth-status"], "OK", "{tag}: {auth}");
        let messages = expect(
            next(&mut s, &targets, &mut turn).last_messages(),
            "last-messages",
        );
        assert!(!s.messages().is_empty(), "{tag}: {messages}");
        let opts = CertOptions::default();
        let answer = expect(next(&mut s, &targets, &mut turn).cert(&opts), "cert");
        let p12 = s.payload(&answer, &opts).unwrap();
        let passphrase = s.passphrase().unwrap();
        check_p12(dir.path(), &tag, &p12, &passphrase, &a.target, "kate");
        on[1 - i % 2] += 1.0;
        assert_eq!(
            [certificates(a.server.addr), certificates(b.server.addr)],
            on,
            "{tag}: the certificate was not issued where cert was sent"
        );
        // The session is over for both processes once either ends it.
        expect(next(&mut s, &targets, &mut turn).eoc(), "eoc");
        let after = next(&mut s, &targets, &mut turn).last_messages();
        assert!(
            !matches!(&after, Ok(v) if v["status"] == "last-messages"),
            "{tag}: a session ended on one process goes on on the other: {after:?}"
        );
    }
    assert_eq!(on, [2.0, 3.0]);

    // Out of band: the link made by B (cert on B) downloads once through
    // A's plain listener, then through neither.
    let targets = [&a.target, &b.target];
    let mut turn = 0;
    let mut s = Rcdp::new(Family::PythonRef, &a.target);
    expect(next(&mut s, &targets, &mut turn).hello(), "hello");
    expect(next(&mut s, &targets, &mut turn).handshake(), "handshake");
    expect(
        next(&mut s, &targets, &mut turn).auth_requirements("DEMO"),
        "auth-requirements",
    );
    let auth = expect(
        next(&mut s, &targets, &mut turn).authenticate(&kate()),
        "auth-result",
    );
    assert_eq!(auth["auth-status"], "OK", "{auth}");
    expect(
        next(&mut s, &targets, &mut turn).last_messages(),
        "last-messages",
    );
    let opts = CertOptions {
        format: Format::P12,
        include_chain: false,
        out_of_band: true,
        csr: None,
    };
    let answer = expect(next(&mut s, &targets, &mut turn).cert(&opts), "cert");
    let templ = answer["cert-url-templ"].as_str().unwrap();
    assert!(
        templ.contains(&format!(":{}/cert/", b.target.plain.port())),
        "the link names B's plain listener: {templ}"
    );
    let path = download_path(&answer);
    let (status, _, p12) = fetch_plain(&a.target, &path);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&p12));
    assert!(p12.len() > 500 && p12[0] == 0x30, "raw DER");
    check_p12(
        dir.path(),
        "out-of-band",
        &p12,
        &s.passphrase().unwrap(),
        &a.target,
        "kate",
    );
    assert_eq!(fetch_plain(&b.target, &path).0, 404, "second download on B");
    assert_eq!(fetch_plain(&a.target, &path).0, 404, "second download on A");
    // Every certificate is recorded once, whichever process issued it.
    let listed = a.admin(&["ca", "list"]);
    let kates = listed.iter().filter(|c| c["user"] == "kate").count();
    assert_eq!(kates, 6, "{listed:?}");
    assert_no_panic(&[&a.server, &b.server]);
}

#[test]
fn kill_9_keeps_sessions_and_issued_certificates() {
    let (mut a, b, url) = keytalk_site("shared_kill9", &["key-agreement"]);
    add_corp_user(a.dir.path(), &url, "alice", PASSWORD);
    let dir = tempfile::tempdir().unwrap();

    // On A: a login session, an enrolment, and a KeyTalk session
    // authenticated but not finished.
    let (_, refresh) = tokens(&login(a.server.addr, &agree(a.server.addr), PASSWORD));
    let e = Family::PythonRef
        .enrol(&a.target, &kate(), &CertOptions::default())
        .unwrap();
    let enrolled = check_p12(
        dir.path(),
        "on-a",
        &e.payload,
        &e.passphrase,
        &a.target,
        "kate",
    );
    let mut pending = Rcdp::new(Family::Cpp2019, &a.target);
    expect(pending.hello(), "hello");
    expect(pending.handshake(), "handshake");
    expect(pending.auth_requirements("DEMO"), "auth-requirements");
    let auth = expect(pending.authenticate(&kate()), "auth-result");
    assert_eq!(auth["auth-status"], "OK", "{auth}");
    assert_eq!(
        metric(a.server.addr, "keypipe_keytalk_certificates_total"),
        1.0
    );

    // kill -9.
    a.server.child.kill().unwrap();
    a.server.child.wait().unwrap();
    assert!(
        request(a.server.addr, "GET", "/healthz", None).is_err(),
        "A still answers"
    );

    // B honours A's login session ...
    let access = refreshed(b.server.addr, &refresh);
    assert_eq!(access.len(), 43);
    // ... and finishes A's KeyTalk session.
    pending.retarget(&b.target);
    expect(pending.last_messages(), "last-messages");
    let opts = CertOptions::default();
    let answer = expect(pending.cert(&opts), "cert");
    let p12 = pending.payload(&answer, &opts).unwrap();
    let finished = check_p12(
        dir.path(),
        "on-b",
        &p12,
        &pending.passphrase().unwrap(),
        &b.target,
        "kate",
    );
    assert_eq!(
        metric(b.server.addr, "keypipe_keytalk_certificates_total"),
        1.0
    );

    // `keypipe ca --store-url URL list`, run after the kill, lists both.
    let listed: Vec<(String, Value)> = a
        .admin(&["ca", "list"])
        .into_iter()
        .map(|c| (normal_serial(c["serial"].as_str().unwrap()), c))
        .collect();
    for serial in [&enrolled, &finished] {
        let (_, row) = listed
            .iter()
            .find(|(s, _)| s == serial)
            .unwrap_or_else(|| panic!("{serial} not listed: {listed:?}"));
        assert_eq!(
            (&row["user"], &row["service"], &row["revoked"]),
            (&json!("kate"), &json!("DEMO"), &json!(false)),
            "{row}"
        );
    }
    // The session ends on B, for good.
    assert_eq!(
        with_refresh(b.server.addr, "/rest/logout", &refresh).status,
        204
    );
    assert_eq!(
        with_refresh(b.server.addr, "/rest/refresh", &refresh).status,
        401
    );
    assert_no_panic(&[&b.server]);
}
