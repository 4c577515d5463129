//! `keypipe ca`: the hierarchy in the store (keys wrapped), certificates
//! that OpenSSL verifies up to `ca.crt`, key files of mode 0600, listing,
//! revocation and every refusal with its reason.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::admin;

fn keypipe_ca(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keypipe"))
        .arg("ca")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn openssl(args: &[&str]) -> String {
    support::openssl_output(args)
}

#[test]
fn certificates_verify_with_openssl_and_revocation_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let made = admin("ca", &data, &["init", "--org", "Example QKD", "--out", o]);
    assert_eq!(made["created"], true);
    let again = admin("ca", &data, &["init", "--out", o]);
    assert_eq!(again["created"], false, "a CA is never replaced");

    let server = admin(
        "ca",
        &data,
        &[
            "issue-server",
            "node-a",
            "--san",
            "DNS:localhost,IP:127.0.0.1",
            "--out",
            o,
        ],
    );
    let client = admin(
        "ca",
        &data,
        &[
            "issue-client",
            "kms-a",
            "--role",
            "kms",
            "--key-type",
            "p384",
            "--out",
            o,
        ],
    );
    let ca = out.join("ca.crt");
    for name in ["node-a", "kms-a"] {
        let crt = out.join(format!("{name}.crt"));
        let text = openssl(&[
            "verify",
            "-CAfile",
            ca.to_str().unwrap(),
            "-untrusted",
            crt.to_str().unwrap(),
            crt.to_str().unwrap(),
        ]);
        assert!(text.contains(": OK"), "{text}");
        let mode = std::fs::metadata(out.join(format!("{name}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}.key");
        let key_check = openssl(&[
            "pkey",
            "-in",
            out.join(format!("{name}.key")).to_str().unwrap(),
            "-noout",
        ]);
        assert!(
            key_check.is_empty() || !key_check.contains("error"),
            "{key_check}"
        );
    }
    let subject = openssl(&[
        "x509",
        "-in",
        out.join("kms-a.crt").to_str().unwrap(),
        "-noout",
        "-subject",
        "-ext",
        "extendedKeyUsage",
    ]);
    assert!(
        subject.contains("O = Example QKD, OU = kms, CN = kms-a"),
        "{subject}"
    );
    assert!(
        subject.contains("TLS Web Client Authentication"),
        "{subject}"
    );
    let server_text = openssl(&[
        "x509",
        "-in",
        out.join("node-a.crt").to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName,extendedKeyUsage",
        "-serial",
    ]);
    assert!(
        server_text.contains("DNS:localhost, IP Address:127.0.0.1"),
        "{server_text}"
    );
    assert!(
        server_text.contains("TLS Web Server Authentication"),
        "{server_text}"
    );
    let serial = server["serial"].as_str().unwrap();
    assert!(
        server_text
            .to_ascii_lowercase()
            .contains(&format!("serial={serial}")),
        "the listed serial is the certificate's: {server_text}"
    );

    // list: JSON lines; revoke one; the other stays.
    let listed = keypipe_ca(&data, &["list"]);
    let lines: Vec<serde_json::Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["role"], "kms");
    assert_eq!(lines[1]["serial"], client["serial"]);
    assert!(
        lines
            .iter()
            .all(|l| l["revoked"] == false && l["not_after"].as_str().unwrap().ends_with('Z'))
    );
    let revoked = admin("ca", &data, &["revoke", serial]);
    assert_eq!(
        (revoked["revoked"].clone(), revoked["already"].clone()),
        (true.into(), false.into())
    );
    let listed = String::from_utf8(keypipe_ca(&data, &["list"]).stdout).unwrap();
    let revoked_now: Vec<bool> = listed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["revoked"] == true)
        .collect();
    assert_eq!(revoked_now, vec![true, false]);

    // No CA private key in clear in the database.
    let db = std::fs::read(data.join("keypipe.db")).unwrap();
    let key_pem = std::fs::read_to_string(out.join("kms-a.key")).unwrap();
    assert!(
        !db.windows(20)
            .any(|w| key_pem.as_bytes().windows(20).any(|k| k == w)),
        "a leaf key is never stored"
    );
}

#[test]
fn bad_requests_are_refused_with_their_reason_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let refused = |args: &[&str], needle: &str| {
        let r = keypipe_ca(&data, args);
        let err = String::from_utf8_lossy(&r.stderr).to_string();
        assert!(!r.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    };
    refused(
        &["issue-client", "kms-a", "--role", "kms", "--out", o],
        "ca init",
    );
    admin("ca", &data, &["init", "--out", o]);
    refused(
        &["issue-client", "kms a", "--role", "kms", "--out", o],
        "name",
    );
    refused(
        &["issue-client", "kms-a", "--role", "root", "--out", o],
        "role",
    );
    refused(
        &["issue-client", "kms-a", "--role", "server", "--out", o],
        "issue-server",
    );
    refused(
        &[
            "issue-client",
            "kms-a",
            "--role",
            "kms",
            "--days",
            "0",
            "--out",
            o,
        ],
        "validity",
    );
    refused(
        &[
            "issue-client",
            "kms-a",
            "--role",
            "kms",
            "--key-type",
            "rsa",
            "--out",
            o,
        ],
        "key type",
    );
    refused(
        &["issue-server", "srv", "--san", "DNS:a b", "--out", o],
        "SAN",
    );
    refused(
        &["issue-server", "srv", "--san", "IP:300.1.1.1", "--out", o],
        "SAN",
    );
    refused(&["revoke", "00ff"], "not found");
    assert!(
        String::from_utf8(keypipe_ca(&data, &["list"]).stdout)
            .unwrap()
            .trim()
            .is_empty()
    );
    admin(
        "ca",
        &data,
        &["issue-client", "kms-a", "--role", "kms", "--out", o],
    );
    refused(
        &["issue-client", "kms-a", "--role", "kms", "--out", o],
        "exists",
    );
    let listed = String::from_utf8(keypipe_ca(&data, &["list"]).stdout).unwrap();
    assert_eq!(
        listed.lines().count(),
        1,
        "the refused issue recorded nothing"
    );
}
