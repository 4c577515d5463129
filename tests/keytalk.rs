//! KeyTalk enrolment end to end: the `keypipe` binary serving RCDP over
//! real TLS, test clients written from the clients' specification (one per
//! real client family, `support/keytalk_clients.rs`), packages opened with
//! the real `openssl` (3, no `-legacy`) and Python `cryptography`, users
//! and devices made with the real CLI.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::keytalk::KeyTalkServer;
use support::keytalk_clients::{
    CertOptions, Creds, CsrDigest, CsrKey, CsrSpec, Enrolment, Family, Format, Session,
    fetch_plain, public_api,
};
use support::{openssl_output, require};

fn creds(service: &str, user: &str, password: &str) -> Creds {
    Creds {
        service: service.into(),
        user: user.into(),
        password: password.into(),
        hwsig: None,
    }
}

/// Runs `openssl args…`: its stdout; panics with stderr on failure.
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True when `openssl args…` succeeds.
fn openssl_ok(args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
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

/// Opens an enrolment's package with openssl (no `-legacy`): the leaf
/// certificate (PEM) and the private key (PEM, decrypted); checks the key
/// belongs to the leaf, the number of certificates and that a wrong
/// passphrase fails.
fn open_package(dir: &Path, tag: &str, e: &Enrolment, chain: bool) -> (String, String) {
    let file = dir.join(format!(
        "{tag}.{}",
        if e.format == Format::P12 {
            "p12"
        } else {
            "pem"
        }
    ));
    std::fs::write(&file, &e.payload).unwrap();
    let f = file.to_str().unwrap();
    let pass = format!("pass:{}", e.passphrase);
    assert_eq!(e.passphrase.len(), 30);
    let (certs, key) = match (e.format, &e.csr_key_pem) {
        (Format::P12, _) => {
            let info = openssl_output(&["pkcs12", "-in", f, "-passin", &pass, "-info", "-nodes"]);
            let all = openssl(&["pkcs12", "-in", f, "-passin", &pass, "-nodes"]);
            assert!(info.contains("friendlyName"), "{info}");
            assert!(
                info.contains("pbeWithSHA1And3-KeyTripleDES-CBC") && info.contains("MAC: sha1"),
                "{info}"
            );
            let key = openssl(&["pkcs12", "-in", f, "-passin", &pass, "-nodes", "-nocerts"]);
            assert!(!openssl_ok(&[
                "pkcs12",
                "-in",
                f,
                "-passin",
                "pass:wrong",
                "-nodes"
            ]));
            (cert_blocks(&all), key)
        }
        (Format::Pem, None) => {
            let text = String::from_utf8(e.payload.clone()).unwrap();
            assert!(
                text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
                "{text}"
            );
            let key = openssl(&["pkey", "-in", f, "-passin", &pass]);
            assert!(!openssl_ok(&["pkey", "-in", f, "-passin", "pass:wrong"]));
            (cert_blocks(&text), key)
        }
        (Format::Pem, Some(csr_key)) => {
            let text = String::from_utf8(e.payload.clone()).unwrap();
            assert!(!text.contains("PRIVATE KEY"), "a CSR answer carries no key");
            (cert_blocks(&text), csr_key.clone())
        }
    };
    assert_eq!(certs.len(), if chain { 3 } else { 1 }, "{tag}: {certs:?}");
    let leaf = dir.join(format!("{tag}.leaf.pem"));
    std::fs::write(&leaf, &certs[0]).unwrap();
    let keyfile = dir.join(format!("{tag}.key.pem"));
    std::fs::write(&keyfile, &key).unwrap();
    let from_cert = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-pubkey", "-noout"]);
    let from_key = openssl(&["pkey", "-in", keyfile.to_str().unwrap(), "-pubout"]);
    assert_eq!(from_cert, from_key, "{tag}: the key is the certificate's");
    (certs[0].clone(), key)
}

/// Checks the leaf chains to the Primary CA through the Signing CA and
/// carries the DEMO profile for `user`.
fn check_demo_profile(kt: &KeyTalkServer, dir: &Path, leaf: &str, user: &str) {
    let (status, _, signing) = fetch_plain(&kt.target, "/ca/1.0.0/signing");
    assert_eq!(status, 200);
    let signing_file = dir.join("signing.pem");
    std::fs::write(&signing_file, signing).unwrap();
    let leaf_file = dir.join("check-leaf.pem");
    std::fs::write(&leaf_file, leaf).unwrap();
    let lf = leaf_file.to_str().unwrap();
    openssl(&[
        "verify",
        "-CAfile",
        kt.target.ca_pem.to_str().unwrap(),
        "-untrusted",
        signing_file.to_str().unwrap(),
        "-purpose",
        "sslclient",
        lf,
    ]);
    let text = openssl(&[
        "x509",
        "-in",
        lf,
        "-noout",
        "-subject",
        "-ext",
        "extendedKeyUsage,subjectAltName",
    ]);
    assert!(text.contains(&format!("CN = {user}")), "{text}");
    assert!(
        text.contains("O = keypipe test") && text.contains("OU = DEMO") && text.contains("C = NL"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Client Authentication") && text.contains("E-mail Protection"),
        "{text}"
    );
    assert!(
        text.contains(&format!("email:{user}@example.com")),
        "{text}"
    );
}

#[test]
fn every_client_family_enrols_in_every_way_it_can() {
    require("openssl");
    let kt = KeyTalkServer::start("");
    kt.add_user("alice", "correct horse", &["DEMO"]);
    let dir = tempfile::tempdir().unwrap();
    let c = creds("DEMO", "alice", "correct horse");
    let mut done = 0;
    for family in Family::all() {
        let mut options = Vec::new();
        for format in [Format::P12, Format::Pem] {
            for include_chain in [false, true] {
                for out_of_band in [false, true] {
                    options.push(CertOptions {
                        format,
                        include_chain,
                        out_of_band,
                        csr: None,
                    });
                }
            }
        }
        for include_chain in [false, true] {
            options.push(CertOptions {
                format: Format::Pem,
                include_chain,
                out_of_band: false,
                csr: Some(CsrSpec::default()),
            });
        }
        for opts in options {
            // The Go SDK always sends include-chain=false, Java sends it
            // only with PEM: what they get has no chain.
            let asks_chain = opts.include_chain
                && !(family == Family::GoSdk
                    || (family == Family::JavaAndroid && opts.format == Format::P12));
            if !family.can(&opts) {
                continue;
            }
            let tag = format!(
                "{family:?}-{:?}-{}-{}-{}",
                opts.format,
                opts.include_chain,
                opts.out_of_band,
                opts.csr.is_some()
            );
            let e = family
                .enrol(&kt.target, &c, &opts)
                .unwrap_or_else(|err| panic!("{tag}: {err}"));
            assert_eq!(
                e.version,
                family.rcdp_version(),
                "{tag}: the version is echoed"
            );
            assert_eq!(
                e.messages
                    .iter()
                    .map(|(t, _)| t.as_str())
                    .collect::<Vec<_>>(),
                ["first", "second"],
                "{tag}: messages oldest first"
            );
            // Address books from 2.4.1 on, in both spellings; before, none.
            let answer = e.raw.iter().rev().find(|v| v["status"] == "cert").unwrap();
            if e.version == "2.4.1" {
                assert_eq!(answer["apply-address-books"], "true", "{tag}");
                let book = &answer["address-books"][0];
                assert_eq!(book["dap-svr-url"], "ldaps://ldap.example.com", "{tag}");
                assert_eq!(book["ldap_svr_url"], "ldaps://ldap.example.com", "{tag}");
                assert_eq!(book["search-base"], "ou=people,dc=example,dc=com", "{tag}");
            } else {
                assert_eq!(answer["address-books"], serde_json::json!([]), "{tag}");
                assert_eq!(answer["apply-address-books"], "false", "{tag}");
            }
            let (leaf, _) = open_package(dir.path(), &tag, &e, asks_chain);
            check_demo_profile(&kt, dir.path(), &leaf, "alice");
            done += 1;
        }
    }
    assert!(done >= 30, "{done} enrolments");
    // Every certificate is recorded with its service and user.
    let listed = kt.admin(&["ca", "list"]);
    let alice: Vec<&Value> = listed.iter().filter(|c| c["user"] == "alice").collect();
    assert_eq!(alice.len(), done);
    assert!(
        alice
            .iter()
            .all(|c| c["service"] == "DEMO" && c["role"] == "user")
    );
}

/// A Python virtual environment with `cryptography`, made once per run.
fn python_with_cryptography() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(|| {
        support::python_venv("keytalk-venv", "cryptography", "import cryptography")
            .join("bin/python")
    })
    .clone()
}

#[test]
fn python_cryptography_opens_p12_and_pem_with_the_30_character_passphrase() {
    let python = python_with_cryptography();
    let kt = KeyTalkServer::start("");
    kt.add_user("paula", "correct horse", &["DEMO", "RSA"]);
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (service, format, chain) in [
        ("DEMO", Format::P12, false),
        ("DEMO", Format::P12, true),
        ("DEMO", Format::Pem, true),
        ("RSA", Format::P12, false),
        ("RSA", Format::Pem, false),
    ] {
        let opts = CertOptions {
            format,
            include_chain: chain,
            out_of_band: false,
            csr: None,
        };
        let e = Family::PythonRef
            .enrol(&kt.target, &creds(service, "paula", "correct horse"), &opts)
            .unwrap();
        let file = dir.path().join(format!("{service}-{format:?}-{chain}"));
        std::fs::write(&file, &e.payload).unwrap();
        files.push((file, format, chain, service, e.passphrase));
    }
    let script = r#"
import sys
from cryptography.hazmat.primitives.serialization import pkcs12, load_pem_private_key, Encoding, PublicFormat
from cryptography.x509 import load_pem_x509_certificates
from cryptography.hazmat.primitives.asymmetric import rsa, ec
path, fmt, chain, service, pw = sys.argv[1:]
data = open(path, 'rb').read()
if fmt == 'P12':
    key, cert, extra = pkcs12.load_key_and_certificates(data, pw.encode())
    assert len(extra) == (2 if chain == 'true' else 0), len(extra)
    try:
        pkcs12.load_key_and_certificates(data, b'wrong')
        raise SystemExit('a wrong passphrase opened it')
    except ValueError:
        pass
else:
    certs = load_pem_x509_certificates(data)
    cert = certs[0]
    assert len(certs) == (3 if chain == 'true' else 1), len(certs)
    key = load_pem_private_key(data[data.index(b'-----BEGIN ENCRYPTED'):], pw.encode())
pub = lambda k: k.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
assert pub(key.public_key()) == pub(cert.public_key()), 'key and certificate differ'
if service == 'RSA':
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
else:
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == 'secp256r1'
print('ok')
"#;
    for (file, format, chain, service, pass) in files {
        let out = Command::new(&python)
            .args(["-c", script])
            .arg(&file)
            .arg(format!("{format:?}").to_uppercase())
            .arg(chain.to_string())
            .arg(service)
            .arg(&pass)
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A session of `family` authenticated as `user` for `service`.
fn logged_in(kt: &KeyTalkServer, family: Family, service: &str, user: &str, pw: &str) -> Session {
    let mut s = Session::new(family, &kt.target);
    s.hello().unwrap();
    s.handshake().unwrap();
    s.auth_requirements(service).unwrap();
    let a = s.authenticate(&creds(service, user, pw)).unwrap();
    assert_eq!(a["auth-status"], "OK", "{a}");
    s
}

fn download_path(answer: &Value) -> String {
    let templ = answer["cert-url-templ"].as_str().unwrap();
    let (_, rest) = templ.split_once("/cert/").unwrap();
    format!("/cert/{rest}")
}

#[test]
fn out_of_band_links_work_once_and_expire() {
    let kt = KeyTalkServer::start("download_ttl_s = 2");
    kt.add_user("olga", "correct horse", &["DEMO"]);
    let mut s = logged_in(&kt, Family::Cpp2019, "DEMO", "olga", "correct horse");
    let opts = CertOptions {
        format: Format::P12,
        include_chain: false,
        out_of_band: true,
        csr: None,
    };
    let answer = s.cert(&opts).unwrap();
    let templ = answer["cert-url-templ"].as_str().unwrap();
    assert!(templ.starts_with("http://$(KEYTALK_SVR_HOST):"), "{templ}");
    let path = download_path(&answer);
    let (status, headers, body) = fetch_plain(&kt.target, &path);
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("content-type") && v == "application/x-pkcs12")
    );
    assert!(body.len() > 500 && body[0] == 0x30, "raw DER");
    let (again, _, _) = fetch_plain(&kt.target, &path);
    assert_eq!(again, 404, "the second download fails");
    // A link not taken in time is gone.
    let late = s.cert(&opts).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(fetch_plain(&kt.target, &download_path(&late)).0, 404);
    // A made-up token finds nothing.
    assert_eq!(
        fetch_plain(&kt.target, "/cert/?0123456789abcdef0123456789abcdef").0,
        404
    );
}

fn auth_status(v: &Value) -> (&str, Option<&str>) {
    (v["auth-status"].as_str().unwrap_or(""), v["delay"].as_str())
}

#[test]
fn wrong_passwords_delay_growing_then_lock_while_others_enrol() {
    let kt = KeyTalkServer::start("failure_delay_s = 1\nmax_failures = 4\nlock_s = 60");
    kt.add_user("mallory", "correct horse", &["DEMO"]);
    kt.add_user("gopher", "correct horse", &["DEMO"]);
    kt.add_user("bob", "correct horse", &["DEMO"]);
    let guess = |family: Family, user: &'static str| {
        let target = kt.target.clone();
        std::thread::spawn(move || {
            let mut s = Session::new(family, &target);
            s.hello().unwrap();
            s.handshake().unwrap();
            s.auth_requirements("DEMO").unwrap();
            let mut seen = Vec::new();
            let wrong = creds("DEMO", user, "wrong guess");
            for wait in [0, 1, 2, 4] {
                std::thread::sleep(Duration::from_millis(wait * 1000 + 100));
                let v = s.authenticate(&wrong).unwrap();
                let (st, d) = auth_status(&v);
                seen.push(format!("{st}:{}", d.unwrap_or("-")));
                if st == "DELAY" {
                    // Too soon: refused unchecked, with the time left.
                    let v = s
                        .authenticate(&creds("DEMO", user, "correct horse"))
                        .unwrap();
                    assert_eq!(auth_status(&v).0, "DELAY", "{v}");
                }
            }
            // LOCKED ended the session.
            let after = s.last_messages().unwrap();
            assert_eq!(after["status"], "error", "{after}");
            // A new session: still locked, even with the right password.
            let mut s = Session::new(family, &target);
            s.hello().unwrap();
            s.handshake().unwrap();
            s.auth_requirements("DEMO").unwrap();
            let v = s
                .authenticate(&creds("DEMO", user, "correct horse"))
                .unwrap();
            seen.push(format!(
                "{}:{}",
                auth_status(&v).0,
                auth_status(&v).1.unwrap_or("-")
            ));
            seen
        })
    };
    let py = guess(Family::PythonRef, "mallory");
    let go = guess(Family::GoSdk, "gopher");
    // Meanwhile everyone else is served.
    for family in [Family::Swift, Family::Cpp2019] {
        family
            .enrol(
                &kt.target,
                &creds("DEMO", "bob", "correct horse"),
                &CertOptions::default(),
            )
            .unwrap();
    }
    let py = py.join().unwrap();
    assert_eq!(py[..3], ["DELAY:1", "DELAY:2", "DELAY:4"]);
    assert_eq!(py[3], "LOCKED:60", "2.3.0+: LOCKED with the time left");
    assert!(py[4].starts_with("LOCKED:"), "{py:?}");
    let go = go.join().unwrap();
    // Eight failures (four each), counted in /metrics.
    let failures = support::metric(kt.server.addr, "keypipe_keytalk_auth_failures_total");
    assert_eq!(failures, 8.0);
    assert_eq!(go[..3], ["DELAY:1", "DELAY:2", "DELAY:4"]);
    assert_eq!(go[3], "LOCKED:-", "2.0.0: LOCKED without a delay");
    // An unknown user is answered the same way.
    let mut s = Session::new(Family::PythonRef, &kt.target);
    s.hello().unwrap();
    s.handshake().unwrap();
    s.auth_requirements("DEMO").unwrap();
    let v = s.authenticate(&creds("DEMO", "nobody", "x")).unwrap();
    assert_eq!(auth_status(&v), ("DELAY", Some("1")));
    // Not a member of the service: refused like a wrong password.
    kt.add_user("stranger", "correct horse", &["RSA"]);
    let v = s
        .authenticate(&creds("DEMO", "stranger", "correct horse"))
        .unwrap();
    assert_eq!(auth_status(&v).0, "DELAY", "{v}");
}

#[test]
fn an_expired_password_is_changed_then_used() {
    let kt = KeyTalkServer::start("failure_delay_s = 1");
    kt.add_user("dave", "old password", &["DEMO", "HW"]);
    kt.admin(&[
        "user", "expire", "--domain", "keytalk", "--name", "dave", "--days", "0",
    ]);
    let mut s = Session::new(Family::Cpp2019, &kt.target);
    s.hello().unwrap();
    s.handshake().unwrap();
    s.auth_requirements("HW").unwrap();
    let hw = Creds {
        hwsig: Some("CS-DAVE".into()),
        ..creds("HW", "dave", "old password")
    };
    let v = s.authenticate(&hw).unwrap();
    assert_eq!(auth_status(&v).0, "EXPIRED", "{v}");
    // Not authenticated: no certificate.
    let v = s.cert(&CertOptions::default()).unwrap();
    assert_eq!(v["status"], "error", "{v}");
    // A wrong old password counts as a failure.
    let v = s.change_password("guess", "new password 1").unwrap();
    assert_eq!(auth_status(&v), ("DELAY", Some("1")));
    std::thread::sleep(Duration::from_millis(1100));
    // Too short: retry at once.
    let v = s.change_password("old password", "short").unwrap();
    assert_eq!(auth_status(&v), ("DELAY", Some("0")));
    let v = s.change_password("old password", "new password 1").unwrap();
    assert_eq!(auth_status(&v).0, "OK", "{v}");
    // Authenticate again, with the new password (HW: it expires in 30 days).
    let v = s
        .authenticate(&Creds {
            password: "new password 1".into(),
            ..hw.clone()
        })
        .unwrap();
    assert_eq!(auth_status(&v).0, "OK", "{v}");
    let validity: i64 = v["password-validity"].as_str().unwrap().parse().unwrap();
    assert!(
        (30 * 86_400 - 60..=30 * 86_400).contains(&validity),
        "{validity}"
    );
    assert_eq!(s.cert(&CertOptions::default()).unwrap()["status"], "cert");
    // The old password no longer works.
    let mut s = Session::new(Family::PythonRef, &kt.target);
    s.hello().unwrap();
    s.handshake().unwrap();
    s.auth_requirements("DEMO").unwrap();
    let v = s
        .authenticate(&creds("DEMO", "dave", "old password"))
        .unwrap();
    assert_eq!(auth_status(&v).0, "DELAY", "{v}");
}

#[test]
fn a_challenge_step_follows_the_password() {
    let kt = KeyTalkServer::start("failure_delay_s = 1");
    kt.add_user("erin", "correct horse", &["CHAL"]);
    for (family, by_responses) in [(Family::Swift, false), (Family::Cpp2019, true)] {
        let mut s = Session::new(family, &kt.target);
        s.hello().unwrap();
        s.handshake().unwrap();
        s.auth_requirements("CHAL").unwrap();
        let c = creds("CHAL", "erin", "correct horse");
        let v = s.authenticate(&c).unwrap();
        assert_eq!(auth_status(&v).0, "CHALLENGE", "{v}");
        assert_eq!(v["challenges"][0]["name"], "Password challenge");
        assert_eq!(v["challenges"][0]["value"], "One-time code?");
        assert!(v.get("response-names").is_none());
        // A wrong answer is a failure; the password must be given again.
        let wrong = Creds {
            password: "000000".into(),
            ..c.clone()
        };
        let v = s.authenticate(&wrong).unwrap();
        assert_eq!(auth_status(&v), ("DELAY", Some("1")), "{v}");
        std::thread::sleep(Duration::from_millis(1100));
        let v = s.authenticate(&c).unwrap();
        assert_eq!(auth_status(&v).0, "CHALLENGE", "{v}");
        let v = if by_responses {
            s.respond(&[("Password challenge", "123456")]).unwrap()
        } else {
            s.authenticate(&Creds {
                password: "123456".into(),
                ..c.clone()
            })
            .unwrap()
        };
        assert_eq!(auth_status(&v).0, "OK", "{family:?}: {v}");
        assert_eq!(s.cert(&CertOptions::default()).unwrap()["status"], "cert");
    }
}

#[test]
fn a_challenge_answered_for_another_service_does_not_open_it() {
    let kt = KeyTalkServer::start("failure_delay_s = 1");
    kt.add_user("erin", "correct horse", &["CHAL"]);
    let mut s = Session::new(Family::Cpp2019, &kt.target);
    s.hello().unwrap();
    s.handshake().unwrap();
    s.auth_requirements("CHAL").unwrap();
    let v = s
        .authenticate(&creds("CHAL", "erin", "correct horse"))
        .unwrap();
    assert_eq!(auth_status(&v).0, "CHALLENGE", "{v}");
    // The right answer, but for CHAL2, which erin is no member of.
    let v = s
        .call(
            "authentication",
            &[
                ("service", "CHAL2"),
                ("USERID", "erin"),
                ("PASSWD", "123456"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(auth_status(&v).0, "DELAY", "{v}");
    let v = s.cert(&CertOptions::default()).unwrap();
    assert_eq!(v["status"], "error", "no certificate: {v}");
}

#[test]
fn a_device_is_registered_on_first_use_then_required() {
    let kt = KeyTalkServer::start("failure_delay_s = 0");
    kt.add_user("frank", "correct horse", &["HW"]);
    let with = |hwsig: &str| Creds {
        hwsig: Some(hwsig.into()),
        ..creds("HW", "frank", "correct horse")
    };
    let auth = |c: &Creds| {
        let mut s = Session::new(Family::PythonRef, &kt.target);
        s.hello().unwrap();
        s.handshake().unwrap();
        let req = s.auth_requirements("HW").unwrap();
        assert_eq!(req["hwsig_formula"], "1,2,3");
        let v = s.authenticate(c).unwrap();
        (s, auth_status(&v).0.to_owned())
    };
    let (mut s, first) = auth(&with("CS-00AA"));
    assert_eq!(first, "OK");
    s.cert(&CertOptions::default()).unwrap();
    assert_eq!(
        auth(&with("cs-00aa")).1,
        "OK",
        "compared case-insensitively"
    );
    assert_eq!(auth(&with("CS-00BB")).1, "DELAY", "another device");
    let devices = kt.admin(&["keytalk", "devices"]);
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["hwsig"], "CS-00AA");
    kt.admin(&["keytalk", "devices", "--reset", "--name", "frank"]);
    assert!(kt.admin(&["keytalk", "devices"]).is_empty());
    assert_eq!(auth(&with("CS-00BB")).1, "OK", "registered anew");
    let listed = kt.admin(&["ca", "list"]);
    assert!(
        listed
            .iter()
            .any(|c| c["user"] == "frank" && c["device"] == "CS-00AA"),
        "{listed:?}"
    );
    // A missing HWSIG is a protocol error, not an authentication.
    let mut s = Session::new(Family::PythonRef, &kt.target);
    s.hello().unwrap();
    s.handshake().unwrap();
    s.auth_requirements("HW").unwrap();
    let v = s
        .call(
            "authentication",
            &[
                ("service", "HW"),
                ("USERID", "frank"),
                ("PASSWD", "correct horse"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(v["status"], "error");
    assert!(v["description"].as_str().unwrap().contains("HWSIG"), "{v}");
}

#[test]
fn calls_out_of_order_unknown_services_and_ended_sessions_get_their_answers() {
    let kt = KeyTalkServer::start("");
    kt.add_user("gina", "correct horse", &["DEMO"]);
    // eoc without a session.
    let mut s = Session::new(Family::Cpp2019, &kt.target);
    assert_eq!(s.eoc().unwrap()["status"], "eoc");
    s.hello().unwrap();
    // Out of order: each is an error with a description, the session stays.
    for (action, params) in [
        ("cert", vec![("format", "P12")]),
        ("auth-requirements", vec![("service", "DEMO")]),
        ("last-messages", vec![]),
    ] {
        let v = s.call(action, &params, false).unwrap();
        assert_eq!(v["status"], "error", "{action}: {v}");
        assert_eq!(v["code"], 1000);
        assert!(
            v["description"].as_str().unwrap().contains("not allowed"),
            "{v}"
        );
    }
    s.handshake().unwrap();
    let v = s
        .call(
            "handshake",
            &[("caller-utc", "2026-01-01T00:00:00Z")],
            false,
        )
        .unwrap();
    assert_eq!(v["status"], "error", "handshake twice: {v}");
    let v = s
        .call("auth-requirements", &[("service", "NOPE")], false)
        .unwrap();
    assert_eq!(v["status"], "error");
    assert!(
        v["description"]
            .as_str()
            .unwrap()
            .contains("unknown service"),
        "{v}"
    );
    let v = s.call("bogus", &[], false).unwrap();
    assert_eq!(v["status"], "error");
    // The session still works after all that.
    s.auth_requirements("DEMO").unwrap();
    let v = s
        .authenticate(&creds("DEMO", "gina", "correct horse"))
        .unwrap();
    assert_eq!(auth_status(&v).0, "OK");
    // After eoc, the session is gone.
    assert_eq!(s.eoc().unwrap()["status"], "eoc");
    let v = s.call("last-messages", &[], false).unwrap();
    assert_eq!(v["status"], "error");
    assert!(
        v["description"].as_str().unwrap().contains("session"),
        "{v}"
    );
    // A client's /error ends its session with eoc.
    let mut s = logged_in(&kt, Family::PythonRef, "DEMO", "gina", "correct horse");
    assert_eq!(s.error(1066, "invalid response").unwrap()["status"], "eoc");
    assert_eq!(
        s.call("last-messages", &[], false).unwrap()["status"],
        "error"
    );
    // Versions: unsupported below 2.0.0, newer ones get the newest we have,
    // and the /rdp/ spelling is served.
    let mut s = Session::new(Family::Cpp2019, &kt.target);
    assert_eq!(s.call("hello", &[], false).unwrap()["version"], "2.4.1");
    let (status, v) = rdp_hello(&kt);
    assert_eq!((status, v["status"].as_str()), (200, Some("hello")));
}

/// `GET /rdp/2.7.1/hello` with curl over TLS.
fn rdp_hello(kt: &KeyTalkServer) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(&kt.target.ca_pem)
        .arg(format!(
            "https://localhost:{}/rdp/2.7.1/hello",
            kt.target.rcdp.port()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        v["version"], "2.4.1",
        "2.7.1 is answered with the newest supported"
    );
    (code.parse().unwrap(), v)
}

#[test]
fn csrs_that_differ_from_the_requirements_end_the_session() {
    let kt = KeyTalkServer::start("");
    kt.add_user("hank", "correct horse", &["DEMO"]);
    let cases: [(&str, CsrSpec); 4] = [
        (
            "another key size",
            CsrSpec {
                key: Some(CsrKey::Rsa(3072)),
                ..CsrSpec::default()
            },
        ),
        (
            "an EC key",
            CsrSpec {
                key: Some(CsrKey::EcP256),
                ..CsrSpec::default()
            },
        ),
        (
            "another digest",
            CsrSpec {
                digest: Some(CsrDigest::Sha384),
                ..CsrSpec::default()
            },
        ),
        (
            "another subject",
            CsrSpec {
                subject: vec![("cn".into(), "mallory".into())],
                ..CsrSpec::default()
            },
        ),
    ];
    for (what, spec) in cases {
        let mut s = logged_in(&kt, Family::Cpp2019, "DEMO", "hank", "correct horse");
        let req = s.csr_requirements().unwrap();
        assert_eq!(req["key-size"], "2048");
        assert_eq!(req["signing-algo"], "sha256");
        assert_eq!(req["subject"]["cn"], "hank");
        let opts = CertOptions {
            format: Format::Pem,
            include_chain: false,
            out_of_band: false,
            csr: Some(spec),
        };
        let v = s.cert(&opts).unwrap();
        assert_eq!(v, serde_json::json!({"status": "eoc"}), "{what}");
        assert_eq!(
            s.call("last-messages", &[], false).unwrap()["status"],
            "error",
            "{what}: session ended"
        );
    }
    // A smaller key (RSA-1024, made by openssl: rcgen makes no keys that
    // small), with the right subject and digest.
    let dir = tempfile::tempdir().unwrap();
    let (key, csr) = (dir.path().join("k.pem"), dir.path().join("csr.pem"));
    openssl_output(&[
        "req",
        "-new",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-sha256",
        "-subj",
        "/O=keypipe test/OU=DEMO/CN=hank/C=NL",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    let pem = std::fs::read_to_string(&csr).unwrap();
    let mut s = logged_in(&kt, Family::Cpp2019, "DEMO", "hank", "correct horse");
    s.csr_requirements().unwrap();
    let v = s.call("cert", &[("csr", &pem)], true).unwrap();
    assert_eq!(v, serde_json::json!({"status": "eoc"}), "RSA-1024");
    assert_eq!(
        s.call("last-messages", &[], false).unwrap()["status"],
        "error"
    );
    // Everyone else (and hank, anew) is still served, CSR included.
    let e = Family::PythonRef
        .enrol(
            &kt.target,
            &creds("DEMO", "hank", "correct horse"),
            &CertOptions {
                format: Format::Pem,
                include_chain: true,
                out_of_band: false,
                csr: Some(CsrSpec::default()),
            },
        )
        .unwrap();
    assert_eq!(
        cert_blocks(std::str::from_utf8(&e.payload).unwrap()).len(),
        3
    );
}

#[test]
fn clock_skew_beyond_the_limit_is_error_1003_with_the_signed_difference() {
    let kt = KeyTalkServer::start("max_clock_skew_s = 120");
    let now = time::OffsetDateTime::now_utc();
    for (shift, sign) in [(1000i64, 1i64), (-1000, -1)] {
        let mut s = Session::new(Family::PythonRef, &kt.target);
        s.hello().unwrap();
        let t = Family::PythonRef.format_time(now + time::Duration::seconds(shift));
        let v = s.handshake_at(&t).unwrap();
        assert_eq!(v["status"], "error", "{v}");
        assert_eq!(v["code"], 1003);
        let diff: i64 = v["description"].as_str().unwrap().parse().unwrap();
        assert!((diff - shift).abs() <= 2 && diff.signum() == sign, "{diff}");
    }
    // Within the limit (and in another client's spelling): fine.
    let mut s = Session::new(Family::Swift, &kt.target);
    s.hello().unwrap();
    let t = Family::Swift.format_time(now + time::Duration::seconds(100));
    assert_eq!(s.handshake_at(&t).unwrap()["status"], "handshake");
}

#[test]
fn the_public_api_answers_from_the_presented_certificate() {
    require("openssl");
    let kt = KeyTalkServer::start("");
    kt.add_user("ivan", "correct horse", &["DEMO"]);
    let call = |path: &str, params: &[(&str, &str)]| public_api(&kt.target, path, params, None);
    let (status, v) = call("/public/1.0.0/address-book-list", &[("service", "DEMO")]);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["address-books"],
        serde_json::json!([{"ldap_svr_url": "ldaps://ldap.example.com",
                            "search_base": "ou=people,dc=example,dc=com"}])
    );
    assert_eq!(v["apply-address-books"], "true");
    let (_, v) = call("/public/1.0.0/address-book-list", &[("service", "RSA")]);
    assert_eq!(
        (
            v["address-books"].clone(),
            v["apply-address-books"].as_str()
        ),
        (serde_json::json!([]), Some("false"))
    );
    let (status, v) = call("/public/1.0.0/address-book-list", &[("service", "NOPE")]);
    assert_eq!((status, v["status"].as_str()), (400, Some("error")));
    let e = Family::Cpp2019
        .enrol(
            &kt.target,
            &creds("DEMO", "ivan", "correct horse"),
            &CertOptions {
                format: Format::Pem,
                ..CertOptions::default()
            },
        )
        .unwrap();
    let leaf = cert_blocks(std::str::from_utf8(&e.payload).unwrap()).remove(0);
    let (status, v) = call(
        "/public/1.0.0/self-service-availability",
        &[("cert", &leaf)],
    );
    assert_eq!(
        (status, v["available"].as_str()),
        (200, Some("true")),
        "{v}"
    );
    let smime = "/public/1.1.0/smime-cert-enrollment-availability";
    let (status, v) = call(smime, &[("cert", &leaf)]);
    assert_eq!(
        (status, v["available"].as_str()),
        (200, Some("false")),
        "{v}"
    );
    assert!(v["reason"].is_string());
    // Not in 1.0.0; no certificate at all: 400.
    let smime_1_0 = "/public/1.0.0/smime-cert-enrollment-availability";
    assert_eq!(call(smime_1_0, &[("cert", &leaf)]).0, 400);
    let self_service = "/public/1.2.1/self-service-availability";
    assert_eq!(call(self_service, &[("cert", "junk")]).0, 400);
    assert_eq!(call(self_service, &[]).0, 400);
    // Another CA's certificate: not available, HTTP 200 (the vendor's
    // server answers its own test with a CA certificate so), with the
    // reason for S/MIME.
    let other = rcgen::generate_simple_self_signed(vec!["ivan".into()])
        .unwrap()
        .cert
        .pem();
    let (status, v) = call(self_service, &[("cert", &other)]);
    assert_eq!(
        (status, v["available"].as_str()),
        (200, Some("false")),
        "{v}"
    );
    let (status, v) = call(smime, &[("cert", &other)]);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["reason"], "not a certificate of an eligible user of this server",
        "one reason, whatever the certificate's state: {v}"
    );
    // Revoked: no longer available.
    let serial = kt
        .admin(&["ca", "list"])
        .into_iter()
        .find(|c| c["user"] == "ivan")
        .unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    kt.admin(&["ca", "revoke", &serial]);
    let (status, v) = call(self_service, &[("cert", &leaf)]);
    assert_eq!(
        (status, v["available"].as_str()),
        (200, Some("false")),
        "{v}"
    );
    let (_, v) = call(smime, &[("cert", &leaf)]);
    assert_eq!(
        v["reason"],
        "not a certificate of an eligible user of this server"
    );
}

#[test]
fn the_ca_download_the_rccd_and_the_listener_tls() {
    require("openssl");
    let kt = KeyTalkServer::start("");
    for (which, want) in [
        ("signing", 200),
        ("primary", 200),
        ("root", 404),
        ("server", 404),
    ] {
        let (status, headers, body) = fetch_plain(&kt.target, &format!("/ca/1.0.0/{which}"));
        assert_eq!(status, want, "{which}");
        if want == 200 {
            assert!(
                headers
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case("content-type")
                        && v == "application/octet-stream")
            );
            assert!(body.starts_with(b"-----BEGIN CERTIFICATE-----"));
        }
    }
    // TLS 1.2 with P-384 only, an ECDSA P-384 certificate, no h2.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &kt.target.rcdp.to_string(),
            "-tls1_2",
            "-groups",
            "P-384",
        ])
        .args([
            "-alpn",
            "h2,http/1.1",
            "-servername",
            "localhost",
            "-CAfile",
        ])
        .arg(&kt.target.ca_pem)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "New, TLSv1.2, Cipher is ECDHE-ECDSA-",
        "Server Temp Key: ECDH, secp384r1, 384 bits",
        "Server public key is 384 bit",
        "ALPN protocol: http/1.1",
        "Verify return code: 0 (ok)",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    // A second TLS listener serves the same, the CA download included
    // (iOS fetches it over https).
    let second = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&kt.target.ca_pem)
        .arg(format!(
            "https://localhost:{}/ca/1.0.0/primary",
            kt.rcdp2.port()
        ))
        .arg(format!(
            "https://localhost:{}/rcdp/2.0.0/hello",
            kt.rcdp2.port()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8(second.stdout).unwrap();
    let primary = std::fs::read_to_string(&kt.target.ca_pem).unwrap();
    assert!(text.starts_with(&primary), "{text}");
    assert!(
        text.ends_with(r#"{"status":"hello","version":"2.0.0"}"#),
        "{text}"
    );
    // The RCCD.
    let rccd = kt.path("demo.rccd");
    let made = kt.admin(&[
        "keytalk",
        "rccd",
        "--service",
        "DEMO",
        "--server",
        "kt.example",
        "--out",
        rccd.to_str().unwrap(),
    ]);
    assert_eq!(made[0]["service"], "DEMO");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&rccd).unwrap()).unwrap();
    let mut read = |name: &str| {
        let mut f = zip
            .by_name(name)
            .unwrap_or_else(|_| panic!("{name} in the RCCD"));
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut out).unwrap();
        out
    };
    let pca = read("content/PCA.der");
    let primary = std::fs::read_to_string(&kt.target.ca_pem).unwrap();
    let der_file = kt.path("pca.der");
    std::fs::write(&der_file, &pca).unwrap();
    let from_der = openssl(&["x509", "-inform", "DER", "-in", der_file.to_str().unwrap()]);
    assert_eq!(from_der.trim(), primary.trim());
    for name in [
        "content/UCA.der",
        "content/SCA.der",
        "content/commcacert.der",
    ] {
        assert_eq!(read(name)[0], 0x30, "{name}");
    }
    let ini = String::from_utf8(read("content/user.ini")).unwrap();
    assert!(
        ini.contains("Server = \"kt.example\";") && ini.contains("Name = \"DEMO\";"),
        "{ini}"
    );
    let yaml = String::from_utf8(read("content/user.yaml")).unwrap();
    assert!(
        yaml.contains("Server: \"kt.example\"") && yaml.contains("CertFormat: P12"),
        "{yaml}"
    );
}

/// The first 24 bytes of a private key's secret part (the EC scalar or
/// the RSA private exponent), read with `openssl pkey -text`.
fn private_part(key_file: &Path) -> Vec<u8> {
    let text = openssl(&["pkey", "-in", key_file.to_str().unwrap(), "-noout", "-text"]);
    let hex: String = text
        .lines()
        .skip_while(|l| !(l.starts_with("priv:") || l.starts_with("privateExponent:")))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .flat_map(|l| l.trim().split(':'))
        .filter(|b| !b.is_empty())
        .collect::<Vec<_>>()
        .join("");
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .skip_while(|b| *b == 0)
        .collect();
    assert!(bytes.len() >= 24, "{text}");
    bytes[..24].to_vec()
}

#[test]
fn no_private_key_password_or_session_id_in_the_store_wal_or_log() {
    require("openssl");
    let kt = KeyTalkServer::start("");
    let password = "Unique-Password-7f3a9c";
    kt.add_user("judy", password, &["DEMO", "RSA"]);
    let dir = tempfile::tempdir().unwrap();
    let mut secrets: Vec<Vec<u8>> = vec![password.as_bytes().to_vec()];
    for (i, (service, format)) in [
        ("DEMO", Format::Pem),
        ("RSA", Format::P12),
        ("DEMO", Format::P12),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = logged_in(&kt, Family::PythonRef, service, "judy", password);
        let opts = CertOptions {
            format,
            ..CertOptions::default()
        };
        let answer = s.cert(&opts).unwrap();
        let payload = s.payload(&answer, &opts).unwrap();
        let sid = s.sid().unwrap();
        let e = Enrolment {
            version: s.version().to_owned(),
            passphrase: s.passphrase().unwrap(),
            payload,
            format,
            csr_key_pem: None,
            messages: Vec::new(),
            raw: Vec::new(),
        };
        let (_, key_pem) = open_package(dir.path(), &format!("k{i}"), &e, false);
        let key_file = dir.path().join(format!("k{i}.key.pem"));
        secrets.push(private_part(&key_file));
        assert!(key_pem.contains("PRIVATE KEY"));
        secrets.push(sid.into_bytes());
        secrets.push(e.passphrase.into_bytes());
    }
    // The WAL and the database as they are on disk, and the log.
    let mut files = vec![kt.server.log.clone()];
    for name in ["keypipe.db", "keypipe.db-wal"] {
        let p = kt.path(name);
        if p.exists() {
            files.push(p);
        }
    }
    assert!(files.len() >= 2);
    let mut seen_user = false;
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        // The scan sees what is there: the user's name is (store or log).
        seen_user |= bytes.windows(4).any(|w| w == b"judy");
        for s in &secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == &s[..]),
                "{} holds a secret ({} bytes)",
                file.display(),
                s.len()
            );
        }
    }
    assert!(seen_user, "the scan reads the files");
    assert!(kt.server.log_text().contains("keytalk: certificate issued"));
}
