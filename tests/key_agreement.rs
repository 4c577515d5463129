//! Key agreement and login end to end, over real sockets against the real
//! binary, with a client written independently of the server
//! (`support/ka_client.rs`: `ring` for ECDH/HKDF/HMAC/AES-GCM, `num-bigint`
//! for FFDHE, its own DER; primes derived from RFC 7919's formula). Users
//! are made with the `keypipe user` CLI.

#[path = "support/ka_client.rs"]
mod ka_client;
mod support;

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ka_client::{Encoding, Scheme, Session, hello, random_nonce};
use num_bigint::BigUint;
use serde_json::{Value, json};
use support::*;

const AGREE: &str = "/rest/key-agreement";
const PASSWORD: &str = "s3cret-Pässword";

/// A server serving only key-agreement, with a short login delay and
/// reference TTL so the tests run quickly.
fn server(dir: &Path, extra: &str) -> ServerProcess {
    let port = free_port();
    ServerProcess::start(
        dir,
        port,
        &format!(
            "{extra}\n[[node]]\nname = \"ka\"\nlisten = \"127.0.0.1:{port}\"\nworkers = 2\nserve = [\"key-agreement\"]\n"
        ),
    )
}

fn user(dir: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    support::admin_run("user", dir, args, Some(stdin))
}

fn add_user(dir: &Path, domain: &str, name: &str, password: &str) {
    let out = user(
        dir,
        &["add", "--domain", domain, "--name", name],
        &format!("{password}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One agreement with the independent client; the session it verified.
fn agree(conn: &mut Conn, scheme: Scheme, encoding: Encoding) -> Session {
    let hello = hello(scheme, encoding, b"WindowsLOCATIONID:5225", &random_nonce());
    let answer = conn.send("POST", AGREE, Some(&hello.body)).unwrap();
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    hello.finish(&answer.json()).unwrap()
}

fn login_body(password: &str) -> Value {
    json!({"domain": "corp", "username": "alice", "password": password})
}

fn login(conn: &mut Conn, session: &Session, password: &str) -> Answer {
    login_as(conn, session, "alice", password)
}

/// A login of `corp/name` with `password` encrypted under `session`.
fn login_as(conn: &mut Conn, session: &Session, name: &str, password: &str) -> Answer {
    let body = session.login_body("corp", name, password);
    conn.send("POST", &session.login_path(), Some(&body))
        .unwrap()
}

/// A fresh agreement, then a login of `corp/name`: the answer and how long
/// the login took.
fn timed(conn: &mut Conn, name: &str, password: &str) -> (Answer, Duration) {
    let s = agree(conn, Scheme::EcAes1, Encoding::Raw);
    let t = Instant::now();
    let a = login_as(conn, &s, name, password);
    (a, t.elapsed())
}

fn references(addr: SocketAddr) -> f64 {
    metric(addr, "keypipe_key_agreement_references")
}

#[test]
fn every_scheme_and_encoding_agrees_and_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    add_user(dir.path(), "corp", "alice", PASSWORD);
    let srv = server(dir.path(), "");
    let mut conn = Conn::open(srv.addr).unwrap();
    let mut seen = HashSet::new();
    for scheme in Scheme::all() {
        let encodings: &[Encoding] = if scheme.is_ec() {
            &[Encoding::Raw, Encoding::Spki]
        } else {
            &[Encoding::Raw, Encoding::Spki, Encoding::SpkiPkcs3]
        };
        for &encoding in encodings {
            let session = agree(&mut conn, scheme, encoding);
            assert!(seen.insert(session.client_reference_id.clone()));
            let answer = login(&mut conn, &session, PASSWORD);
            assert_eq!(answer.status, 200, "{scheme:?} {encoding:?}: {answer:?}");
            let tokens = answer.json();
            let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
            let access = tokens["access_token"].as_str().unwrap();
            assert_eq!(access.len(), 43);
            assert_ne!(access, refresh);
            // The reference is single use, whatever the outcome.
            let again = login(&mut conn, &session, PASSWORD);
            assert_eq!(again.status, 410, "{again:?}");
            // Refresh gives a new access token; logout ends the session.
            let body = json!({ "refresh_token": refresh });
            let r = conn.send("POST", "/rest/refresh", Some(&body)).unwrap();
            assert_eq!(r.status, 200);
            assert_ne!(r.json()["access_token"].as_str().unwrap(), access);
            assert_eq!(
                conn.send("POST", "/rest/logout", Some(&body))
                    .unwrap()
                    .status,
                204
            );
            assert_eq!(
                conn.send("POST", "/rest/refresh", Some(&body))
                    .unwrap()
                    .status,
                401
            );
            assert_eq!(
                conn.send("POST", "/rest/logout", Some(&body))
                    .unwrap()
                    .status,
                401
            );
        }
    }
    // The server offers its preference among several listed schemes only
    // when the key matches: listing all four with a P-256 key gives EC-AES1.
    let all: Vec<&str> = Scheme::all().iter().map(|s| s.name()).collect();
    let hello = hello(Scheme::EcAes1, Encoding::Raw, b"id", &random_nonce()).with_schemes(&all);
    let answer = conn.send("POST", AGREE, Some(&hello.body)).unwrap();
    assert_eq!(answer.json()["scheme"], "SCHEME-EC-AES1");
    hello.finish(&answer.json()).unwrap();
    // No password ever reaches the log.
    let log = std::fs::read_to_string(&srv.log).unwrap();
    assert!(!log.contains(PASSWORD));
}

/// Sends `body` and checks the agreement is refused with 400 and a message
/// containing `why`.
fn refused(conn: &mut Conn, body: &Value, why: &str) {
    let answer = conn.send("POST", AGREE, Some(body)).unwrap();
    assert_eq!(answer.status, 400, "{body}: {answer:?}");
    let message = answer.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains(why), "{message:?} should mention {why:?}");
}

fn with(body: &Value, field: &str, value: Value) -> Value {
    let mut b = body.clone();
    b[field] = value;
    b
}

#[test]
fn bad_agreements_are_400_and_keep_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), "");
    let mut conn = Conn::open(srv.addr).unwrap();
    let good = hello(Scheme::EcAes1, Encoding::Raw, b"id", &random_nonce()).body;
    for field in ["identifier", "nonce", "public_key"] {
        refused(
            &mut conn,
            &with(&good, field, json!("not base64!")),
            "Base64",
        );
        refused(&mut conn, &with(&good, field, json!("QUJD=")), "Base64");
    }
    refused(
        &mut conn,
        &with(&good, "identifier", json!("")),
        "identifier",
    );
    let long = B64.encode([b'x'; 257]);
    refused(
        &mut conn,
        &with(&good, "identifier", json!(long)),
        "identifier",
    );
    let short = B64.encode([0u8; 15]);
    refused(&mut conn, &with(&good, "nonce", json!(short)), "nonce");
    refused(
        &mut conn,
        &with(&good, "supported_schemes", json!(["SCHEME-ROT13"])),
        "scheme",
    );
    refused(
        &mut conn,
        &with(&good, "supported_schemes", json!([])),
        "scheme",
    );
    refused(
        &mut conn,
        &with(&good, "supported_schemes", json!(["SCHEME-EC-AES2"])),
        "no common scheme",
    );
    // Missing field and not JSON.
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("nonce");
    refused(&mut conn, &missing, "nonce");

    // DH values: 0, 1, p-1, p, p+1, 2^bits-1 and one outside the
    // prime-order subgroup (p-2 = -2 is a non-residue), raw and SPKI.
    for (scheme, bits) in [(Scheme::Aes1, 2048), (Scheme::Aes2, 3072)] {
        let p = ka_client::ffdhe_prime(bits);
        let one = BigUint::from(1u32);
        let cases: Vec<(BigUint, &str)> = vec![
            (BigUint::from(0u32), "out of range"),
            (one.clone(), "out of range"),
            (p - &one, "out of range"),
            (p.clone(), "out of range"),
            (p + &one, "out of range"),
            ((BigUint::from(1u32) << bits) - &one, "out of range"),
            (p - BigUint::from(2u32), "subgroup"),
        ];
        let base = hello(scheme, Encoding::Raw, b"id", &random_nonce()).body;
        for (y, why) in &cases {
            for key in [
                ka_client::dh_raw(bits, y),
                ka_client::dh_spki(bits, y, false),
                ka_client::dh_spki(bits, y, true),
            ] {
                // A y ≥ p that needs more bytes than p falls to "wrong length".
                let why = if key.len() != bits / 8 && key.len() < 300 {
                    "public_key"
                } else {
                    why
                };
                refused(
                    &mut conn,
                    &with(&base, "public_key", json!(B64.encode(&key))),
                    why,
                );
            }
        }
    }
    // EC points: off the curve, the identity, compressed, wrong lengths.
    for scheme in [Scheme::EcAes1, Scheme::EcAes2] {
        let h = hello(scheme, Encoding::Raw, b"id", &random_nonce());
        let mut off = h.public_key().to_vec();
        *off.last_mut().unwrap() ^= 1;
        let zeros = vec![0u8; off.len()];
        for key in [
            off.clone(),
            zeros.clone(),
            ka_client::ec_spki(scheme, &off),
            ka_client::ec_spki(scheme, &zeros),
            ka_client::ec_spki(scheme, &[0u8]),
        ] {
            refused(
                &mut conn,
                &with(&h.body, "public_key", json!(B64.encode(&key))),
                "public_key",
            );
        }
        let mut compressed = vec![0x02 | (h.public_key().last().unwrap() & 1)];
        compressed.extend_from_slice(&h.public_key()[1..off.len() / 2 + 1]);
        for key in [
            ka_client::ec_spki(scheme, &compressed),
            compressed,
            vec![0u8],
            h.public_key()[..off.len() - 1].to_vec(),
            [h.public_key(), &[0]].concat(),
        ] {
            refused(
                &mut conn,
                &with(&h.body, "public_key", json!(B64.encode(&key))),
                "public_key",
            );
        }
    }
    for len in [0, 1, 64, 66, 255, 257, 383, 385] {
        let key = B64.encode(vec![4u8; len]);
        refused(
            &mut conn,
            &with(&good, "public_key", json!(key)),
            "public_key",
        );
    }
    assert_eq!(
        references(srv.addr),
        0.0,
        "a refused request keeps no state"
    );
    // The connection is still fine, and a good request still works.
    agree(&mut conn, Scheme::EcAes1, Encoding::Raw);
    assert_eq!(references(srv.addr), 1.0);
}

#[test]
fn bad_logins_fail_clearly_and_are_throttled() {
    let dir = tempfile::tempdir().unwrap();
    add_user(dir.path(), "corp", "alice", PASSWORD);
    let srv = server(
        dir.path(),
        "[login]\nfailure_delay_ms = 300\n[key_agreement]\nreference_ttl_s = 1\n",
    );
    let mut conn = Conn::open(srv.addr).unwrap();

    // Unknown reference: 404; malformed: 404.
    let fake = uuid::Uuid::new_v4();
    let body = login_body("AAAA");
    let a = conn
        .send(
            "POST",
            &format!("/rest/login?client_reference_id={fake}"),
            Some(&body),
        )
        .unwrap();
    assert_eq!(a.status, 404, "{a:?}");
    let a = conn
        .send("POST", "/rest/login?client_reference_id=xyz", Some(&body))
        .unwrap();
    assert_eq!(a.status, 404);
    // No reference: plain passwords are refused by default.
    let a = conn
        .send("POST", "/rest/login", Some(&login_body(PASSWORD)))
        .unwrap();
    assert_eq!(a.status, 400);
    assert!(a.json()["message"].as_str().unwrap().contains("plain"));

    // A password encrypted under another reference's key: 400, and both
    // references are then used up (the attempt consumed its reference).
    let s1 = agree(&mut conn, Scheme::EcAes2, Encoding::Spki);
    let s2 = agree(&mut conn, Scheme::EcAes2, Encoding::Spki);
    let path = s1.login_path();
    let a = conn
        .send(
            "POST",
            &path,
            Some(&login_body(&s2.encrypt(PASSWORD.as_bytes()))),
        )
        .unwrap();
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.json()["message"].as_str().unwrap().contains("decrypt"));
    assert_eq!(login(&mut conn, &s1, PASSWORD).status, 410);
    // s2 itself still works.
    assert_eq!(login(&mut conn, &s2, PASSWORD).status, 200);

    // Expired reference: 410.
    let s = agree(&mut conn, Scheme::EcAes1, Encoding::Raw);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(login(&mut conn, &s, PASSWORD).status, 410);

    // Wrong password: 401 after the delay, growing per user and source
    // address (all of these come from 127.0.0.1); an unknown user gets the
    // same answer after the same delay.
    let (wrong1, d1) = timed(&mut conn, "alice", "guess-1");
    let (wrong2, d2) = timed(&mut conn, "alice", "guess-2");
    let (unknown1, u1) = timed(&mut conn, "mallory", "guess-1");
    let (unknown2, u2) = timed(&mut conn, "mallory", "guess-2");
    for a in [&wrong1, &wrong2, &unknown1, &unknown2] {
        assert_eq!(a.status, 401);
        assert_eq!(a.body, wrong1.body, "same answer for unknown users");
    }
    let ms = Duration::from_millis;
    assert!(
        d1 >= ms(300) && u1 >= ms(300),
        "first failures held: {d1:?} {u1:?}"
    );
    assert!(
        d2 >= ms(600) && u2 >= ms(600),
        "second failures held longer: {d2:?} {u2:?}"
    );
    // While a name is held for an address (a third failure: 1.2 s), even
    // the right password fails from that address, answered when the hold
    // ends: parallel guesses gain nothing. (Other addresses are not held:
    // tests/login_throttle.rs.)
    let addr = srv.addr;
    let guess = std::thread::spawn(move || {
        let mut conn = Conn::open(addr).unwrap();
        timed(&mut conn, "alice", "guess-3")
    });
    std::thread::sleep(ms(300));
    let s = agree(&mut conn, Scheme::EcAes1, Encoding::Raw);
    let t = Instant::now();
    assert_eq!(login(&mut conn, &s, PASSWORD).status, 401);
    assert!(t.elapsed() >= ms(500), "{:?}", t.elapsed());
    let (a, d3) = guess.join().unwrap();
    assert_eq!(a.status, 401);
    assert!(d3 >= ms(1200), "{d3:?}");
    // Once the hold is over, the right password works and clears it.
    let s = agree(&mut conn, Scheme::EcAes1, Encoding::Raw);
    assert_eq!(login(&mut conn, &s, PASSWORD).status, 200);
    // Guesses sent in parallel from one address are checked one per hold:
    // seven at once for a fresh name charge one failure (the others are
    // held uncharged), so the next failure is only the second (600 ms), not
    // the eighth (38 s).
    let addr = srv.addr;
    let guesses: Vec<_> = (0..7)
        .map(|i| {
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr).unwrap();
                timed(&mut conn, "dave", &format!("parallel-{i}"))
            })
        })
        .collect();
    for g in guesses {
        assert_eq!(g.join().unwrap().0.status, 401);
    }
    let (a, next) = timed(&mut conn, "dave", "sequential");
    assert_eq!(a.status, 401);
    assert!(next >= ms(600) && next < ms(2400), "{next:?}");
}

/// A failed login of `name` on a fresh connection and agreement; the
/// answer and how long the login took.
fn failed_login(addr: SocketAddr, name: &str) -> (Answer, Duration) {
    timed(&mut Conn::open(addr).unwrap(), name, "wrong")
}

#[test]
fn held_answers_hold_no_pool_thread() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), "[login]\nfailure_delay_ms = 2500\n");
    let addr = srv.addr;
    // Twelve failed logins held (more than the pool's eight threads) ...
    let held: Vec<_> = (0..12)
        .map(|i| std::thread::spawn(move || failed_login(addr, &format!("user-{i}"))))
        .collect();
    std::thread::sleep(Duration::from_millis(1200));
    // ... and a pool route is still answered while every one is held.
    let body = json!({"refresh_token": "no-such-token"});
    assert_eq!(
        request(addr, "POST", "/rest/refresh", Some(&body))
            .unwrap()
            .status,
        401
    );
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "held answers came early"
    );
    for h in held {
        let (answer, took) = h.join().unwrap();
        assert_eq!(answer.status, 401);
        assert!(took >= Duration::from_millis(2500), "{took:?}");
    }
}

#[test]
fn pool_work_beyond_max_queued_is_refused_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), "[key_agreement]\nmax_queued = 2\n");
    let hello = hello(Scheme::Aes2, Encoding::Raw, b"id", &random_nonce());
    let body = hello.body.to_string();
    let one = format!(
        "POST {AGREE} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut conn = Conn::open(srv.addr).unwrap();
    conn.stream.write_all(one.repeat(20).as_bytes()).unwrap();
    let answers: Vec<Answer> = (0..20)
        .map(|_| read_answer(&mut conn.reader).unwrap())
        .collect();
    let busy = answers.iter().filter(|a| a.status == 503).count();
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(busy + ok, 20);
    assert!(ok >= 2 && busy >= 1, "{ok} answered, {busy} refused");
    let refused = answers.iter().find(|a| a.status == 503).unwrap();
    assert_eq!(refused.header("Retry-After"), Some("1"));
    // Refused requests kept nothing; the counter came back down.
    assert_eq!(references(srv.addr), ok as f64);
    agree(&mut conn, Scheme::EcAes1, Encoding::Raw);
}

#[test]
fn a_thousand_agreements_from_fifty_connections() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), "");
    let addr = srv.addr;
    let threads: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr).unwrap();
                let scheme = if i % 10 == 0 {
                    Scheme::EcAes2
                } else {
                    Scheme::EcAes1
                };
                (0..20)
                    .map(|_| agree(&mut conn, scheme, Encoding::Raw).client_reference_id)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        for id in t.join().unwrap() {
            assert!(all.insert(id), "duplicate reference");
        }
    }
    assert_eq!(all.len(), 1000);
    assert_eq!(references(addr), 1000.0);
}

#[test]
fn user_cli_manages_users() {
    let dir = tempfile::tempdir().unwrap();
    add_user(dir.path(), "corp", "alice", PASSWORD);
    let dup = user(
        dir.path(),
        &["add", "--domain", "corp", "--name", "alice"],
        "x\n",
    );
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let empty = user(
        dir.path(),
        &["add", "--domain", "corp", "--name", "bob"],
        "\n",
    );
    assert!(!empty.status.success());
    let list = user(dir.path(), &["list"], "");
    let text = String::from_utf8(list.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    let row: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        (row["domain"].as_str(), row["name"].as_str()),
        (Some("corp"), Some("alice"))
    );
    assert!(!text.contains("argon2"));
    // The database holds a hash, never the password.
    let db = std::fs::read(dir.path().join("keypipe.db")).unwrap();
    let wal = std::fs::read(dir.path().join("keypipe.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes
                .windows(PASSWORD.len())
                .any(|w| w == PASSWORD.as_bytes())
        );
    }
    assert!(db.windows(9).any(|w| w == b"$argon2id") || wal.windows(9).any(|w| w == b"$argon2id"));
    // A removed user can no longer log in.
    let srv = server(dir.path(), "");
    let mut conn = Conn::open(srv.addr).unwrap();
    let s = agree(&mut conn, Scheme::EcAes1, Encoding::Raw);
    assert_eq!(login(&mut conn, &s, PASSWORD).status, 200);
    assert!(
        user(
            dir.path(),
            &["remove", "--domain", "corp", "--name", "alice"],
            ""
        )
        .status
        .success()
    );
    let s = agree(&mut conn, Scheme::EcAes1, Encoding::Raw);
    assert_eq!(login(&mut conn, &s, PASSWORD).status, 401);
    assert!(
        !user(
            dir.path(),
            &["remove", "--domain", "corp", "--name", "alice"],
            ""
        )
        .status
        .success()
    );
}
