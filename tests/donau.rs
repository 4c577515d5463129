//! Taler Donau `GET /keys` end to end, over real sockets against the real
//! binary. The answer is decoded independently of the server's encoders
//! (this file's own Crockford decoder and RSA header parser, `sha2` for the
//! hashes, point decompression and Ed25519 parsing by the dalek crates)
//! and every field is checked against the keys in the store, whose private
//! parts are turned into public keys here.

mod support;

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::{EdwardsPoint, Scalar};
use keypipe_server::store::{DonauKind, DonauStore, Store, StoreOptions};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::Value;
use sha2::{Digest, Sha512};
use support::*;

const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Crockford Base32 decoding (RFC 4648 bit order, no padding); refuses
/// characters outside the alphabet and non-zero trailing bits.
fn crockford(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for c in text.chars() {
        let v = ALPHABET
            .find(c)
            .unwrap_or_else(|| panic!("{c:?} is not Crockford")) as u64;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    assert_eq!(acc, 0, "non-zero padding bits in {text}");
    out
}

/// `(n, e)` of GNUnet's RSA public-key encoding.
fn rsa_header(bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let n_len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    let e_len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    assert_eq!(bytes.len(), 4 + n_len + e_len);
    let (n, e) = bytes[4..].split_at(n_len);
    assert!(n[0] != 0 && e[0] != 0, "n and e are minimal");
    (n.to_vec(), e.to_vec())
}

fn strip(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().copied().skip_while(|&b| b == 0).collect()
}

fn config(port: u16) -> String {
    format!(
        r#"
[donau]
currency = "EUR"
legal_domain = "Test Donau"
base_url = "https://donau.example/"
base_path = "/donau/"
rsa_bits = 1024
signkey_years = [2025, 2026]
donation_units = [
    {{ value = "EUR:10", cipher = "RSA", years = [2025, 2026] }},
    {{ value = "EUR:0.5", cipher = "CS", years = [2026] }},
    {{ value = "EUR:1.01", cipher = "CS", years = [2025] }},
]

[[node]]
name = "donau"
listen = "127.0.0.1:{port}"
workers = 1
serve = ["donau"]
"#
    )
}

fn store(dir: &Path) -> Store {
    Store::open(&StoreOptions::new(dir)).unwrap()
}

fn get_keys(server: &ServerProcess) -> Answer {
    request(server.addr, "GET", "/donau/keys", None).unwrap()
}

/// Checks every field of the answer against the stored keys.
fn check_against_store(answer: &Value, dir: &Path) {
    assert_eq!(answer["version"], "0:0:0");
    assert_eq!(answer["currency"], "EUR");
    assert_eq!(answer["legal_domain"], "Test Donau");
    assert_eq!(answer["base_url"], "https://donau.example/");
    let keys = store(dir).donau_keys().unwrap();
    let units = answer["donation_units"].as_array().unwrap();
    let listed: Vec<(String, u64)> = units
        .iter()
        .map(|u| {
            (
                u["value"].as_str().unwrap().to_owned(),
                u["year"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("EUR:10".into(), 2025),
            ("EUR:10".into(), 2026),
            ("EUR:0.5".into(), 2026),
            ("EUR:1.01".into(), 2025)
        ]
    );
    for unit in units {
        let value = unit["value"].as_str().unwrap();
        let year = unit["year"].as_u64().unwrap() as u16;
        let public = &unit["donation_unit_pub"];
        let cipher = public["cipher"].as_str().unwrap();
        let kind = if cipher == "RSA" {
            DonauKind::Rsa
        } else {
            DonauKind::Cs
        };
        let stored = keys
            .iter()
            .find(|k| k.kind == kind && k.value == value && k.year == year)
            .unwrap_or_else(|| panic!("{cipher} {value} {year} not in the store"));
        let hash = crockford(public["pub_key_hash"].as_str().unwrap());
        assert_eq!(hash.len(), 64);
        assert_eq!(public["pub_key_hash"].as_str().unwrap().len(), 103);
        let lost = unit.get("lost").and_then(Value::as_bool).unwrap_or(false);
        assert_eq!(lost, stored.private.is_none(), "{value} {year}");
        match cipher {
            "RSA" => {
                let encoded = crockford(public["rsa_public_key"].as_str().unwrap());
                assert_eq!(hash, Sha512::digest(&encoded)[..]);
                let (n, e) = rsa_header(&encoded);
                assert_eq!(n.len(), 128, "rsa_bits = 1024");
                if let Some(private) = &stored.private {
                    let key = rsa::PrivateKey::from_pkcs8_der(private).unwrap();
                    assert_eq!(strip(&key.n_bytes()), n);
                    assert_eq!(strip(&key.e_bytes()), e);
                }
            }
            "CS" => {
                let point = crockford(public["cs_public_key"].as_str().unwrap());
                assert_eq!(public["cs_public_key"].as_str().unwrap().len(), 52);
                assert_eq!(hash, Sha512::digest(&point)[..]);
                let compressed = CompressedEdwardsY(point.clone().try_into().unwrap());
                assert!(compressed.decompress().is_some(), "a curve point");
                if let Some(private) = &stored.private {
                    let scalar =
                        Scalar::from_canonical_bytes(private[..].try_into().unwrap()).unwrap();
                    assert_eq!(
                        EdwardsPoint::mul_base(&scalar).compress().to_bytes()[..],
                        point[..]
                    );
                }
            }
            other => panic!("cipher {other}"),
        }
    }
    let signkeys = answer["signkeys"].as_array().unwrap();
    for sk in signkeys {
        let year = sk["year"].as_u64().unwrap() as u16;
        let key: [u8; 32] = crockford(sk["key"].as_str().unwrap()).try_into().unwrap();
        let parsed = ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap();
        let stored = keys
            .iter()
            .find(|k| k.kind == DonauKind::Sign && k.year == year)
            .unwrap();
        let seed: [u8; 32] = stored.private.as_ref().unwrap()[..].try_into().unwrap();
        assert_eq!(
            ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key(),
            parsed
        );
    }
}

#[test]
fn keys_decode_independently_survive_restarts_and_reflect_lost_keys() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let first = ServerProcess::start(dir.path(), port, &config(port));
    let a = get_keys(&first);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("Cache-Control"), Some("public, max-age=60"));
    let etag = a.header("ETag").unwrap().to_owned();
    let body = a.json();
    check_against_store(&body, dir.path());
    assert_eq!(body["signkeys"].as_array().unwrap().len(), 2);

    // 304 for a matching If-None-Match, with the tag and no body.
    let mut conn = Conn::open(first.addr).unwrap();
    write!(
        conn.stream,
        "GET /donau/keys HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"other\", {etag}\r\n\r\n"
    )
    .unwrap();
    let not_modified = read_answer(&mut conn.reader).unwrap();
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("ETag"), Some(etag.as_str()));
    assert!(not_modified.body.is_empty());
    // HEAD: the headers of the GET, no body (the next answer follows at once).
    write!(conn.stream, "HEAD /donau/keys HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut status = String::new();
    conn.reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut length = None;
    loop {
        let mut line = String::new();
        conn.reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            length = Some(v.trim().parse::<usize>().unwrap());
        }
    }
    assert_eq!(length, Some(a.body.len()));
    let again = conn.send("GET", "/donau/keys", None).unwrap();
    assert_eq!(again.body, a.body);
    assert_eq!(
        request(first.addr, "GET", "/keys", None).unwrap().status,
        404
    );
    drop(conn);
    let first_log = first.log.clone();
    drop(first);

    // A restart publishes the very same keys.
    let second = ServerProcess::start(dir.path(), port, &config(port));
    let b = get_keys(&second);
    assert_eq!(b.body, a.body);
    assert_eq!(b.header("ETag"), Some(etag.as_str()));

    // mark-lost while running: listed as lost within a second or so; a
    // lost signing key is no longer listed.
    for args in [
        &[
            "mark-lost",
            "--kind",
            "CS",
            "--value",
            "EUR:0.50",
            "--year",
            "2026",
        ][..],
        &["mark-lost", "--kind", "SIGN", "--year", "2025"][..],
    ] {
        assert_eq!(admin("donau", dir.path(), args)["lost"], true);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let changed = loop {
        let c = get_keys(&second);
        if c.header("ETag") != Some(etag.as_str()) || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(
        changed.header("ETag"),
        Some(etag.as_str()),
        "change not picked up"
    );
    let body = changed.json();
    check_against_store(&body, dir.path());
    let lost: Vec<&Value> = body["donation_units"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["lost"] == true)
        .collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(
        (lost[0]["value"].as_str(), lost[0]["year"].as_u64()),
        (Some("EUR:0.5"), Some(2026))
    );
    let years: Vec<u64> = body["signkeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["year"].as_u64().unwrap())
        .collect();
    assert_eq!(years, [2026]);
    // The old tag no longer matches.
    let mut conn = Conn::open(second.addr).unwrap();
    write!(
        conn.stream,
        "GET /donau/keys HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_answer(&mut conn.reader).unwrap().status, 200);
    drop(conn);
    let second_log = second.log.clone();
    drop(second);

    // After another restart the lost key is still lost, not replaced, and
    // a configuration naming fewer years still lists every published key.
    let fewer = config(port).replacen("years = [2025, 2026] }", "years = [2026] }", 1);
    assert_ne!(fewer, config(port));
    let third = ServerProcess::start(dir.path(), port, &fewer);
    assert_eq!(get_keys(&third).body, changed.body);
    // No private part ever reaches the database or the log, in any form.
    let keys = store(dir.path()).donau_keys().unwrap();
    let db = std::fs::read(dir.path().join("keypipe.db")).unwrap();
    let wal = std::fs::read(dir.path().join("keypipe.db-wal")).unwrap_or_default();
    let logs: Vec<Vec<u8>> = [&third.log, &second_log, &first_log]
        .iter()
        .map(|l| std::fs::read(l).unwrap())
        .collect();
    let mut private_parts = 0;
    for key in keys.iter().filter_map(|k| k.private.as_ref()) {
        private_parts += 1;
        let tail = &key[key.len() - 24..];
        let hex: String = tail.iter().map(|b| format!("{b:02x}")).collect();
        let debug = format!("{:?}", &tail[..8]);
        let debug = &debug[1..debug.len() - 1];
        for bytes in [&db, &wal] {
            assert!(!bytes.windows(tail.len()).any(|w| w == tail));
        }
        for log in &logs {
            let text = String::from_utf8_lossy(log);
            assert!(!log.windows(tail.len()).any(|w| w == tail));
            assert!(!text.contains(&hex) && !text.contains(debug));
        }
    }
    assert_eq!(private_parts, 4, "3 of 4 unit keys, 1 of 2 signing keys");
}

/// Runs `keypipe serve` on `text` and returns its error output (it must
/// refuse to start).
fn refused(dir: &Path, text: &str) -> String {
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keypipe"))
        .args(["serve", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_donau_configuration_is_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(free_port());
    let cases = [
        (
            "{ value = \"EUR:10\", cipher = \"RSA\"",
            "{ value = \"eur:10\", cipher = \"RSA\"",
            "line 10",
        ),
        (
            "{ value = \"EUR:10\", cipher = \"RSA\"",
            "{ value = \"EUR:10.\", cipher = \"RSA\"",
            "line 10",
        ),
        (
            "{ value = \"EUR:0.5\", cipher = \"CS\"",
            "{ value = \"EUR:0.5\", cipher = \"DSA\"",
            "line 11",
        ),
        (
            "{ value = \"EUR:1.01\", cipher = \"CS\"",
            "{ value = \"USD:1.01\", cipher = \"CS\"",
            "line 12",
        ),
        (
            "{ value = \"EUR:1.01\", cipher = \"CS\"",
            "{ value = \"EUR:4503599627370497\", cipher = \"CS\"",
            "line 12",
        ),
        (
            "currency = \"EUR\"",
            "currency = \"EUROPEANUNION\"",
            "line 3",
        ),
        (
            "base_url = \"https://donau.example/\"",
            "base_url = \"not a url\"",
            "line 5",
        ),
        ("rsa_bits = 1024", "rsa_bits = 1000", "line 7"),
        (
            "signkey_years = [2025, 2026]",
            "signkey_years = []",
            "line 8",
        ),
        (
            "{ value = \"EUR:1.01\", cipher = \"CS\", years = [2025] }",
            "{ value = \"EUR:0.50\", cipher = \"CS\", years = [2025] }",
            "line 12",
        ),
        (
            "{ value = \"EUR:1.01\", cipher = \"CS\", years = [2025] }",
            "{ value = \"EUR:1.01\", cipher = \"CS\", years = [] }",
            "line 12",
        ),
    ];
    for (from, to, line) in cases {
        assert!(good.contains(from));
        let err = refused(dir.path(), &good.replacen(from, to, 1));
        assert!(err.contains(line), "{to}: {err}");
    }
    // Nothing was generated for a refused configuration.
    assert!(store(dir.path()).donau_keys().unwrap().is_empty());
}
