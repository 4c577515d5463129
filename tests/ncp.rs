//! The NCP-KMS-compatible API end to end: keys and access keys made with
//! the `keypipe kms` CLI, the server process, signed requests (one client
//! written independently in Python), CLI changes seen by the running
//! server, and durability across `kill -9`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keypipe_server::kms::gateway::{Scheme, signature};
use keypipe_server::store::{KeyStore, Store, StoreOptions};
use serde_json::{Value, json};
use support::ncp::*;
use support::*;

fn kms(dir: &Path, args: &[&str]) -> Value {
    admin("kms", dir, args)
}

fn start(dir: &Path, port: u16) -> ServerProcess {
    ServerProcess::start(
        dir,
        port,
        &format!(
            "[[node]]\nname = \"kms\"\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\nserve = [\"ncp-kms\"]\n"
        ),
    )
}

fn setup() -> (tempfile::TempDir, String, Creds) {
    let dir = tempfile::tempdir().unwrap();
    let key = kms(
        dir.path(),
        &["create-key", "--name", "orders", "--type", "AES256"],
    );
    assert_eq!(
        (key["type"].as_str(), key["version"].as_u64()),
        (Some("AES256"), Some(1))
    );
    let ak = kms(dir.path(), &["create-access-key", "--grant", "*:*"]);
    let creds = Creds::from_cli(&ak);
    (dir, key["keyTag"].as_str().unwrap().to_owned(), creds)
}

const PYTHON_CLIENT: &str = r#"
import base64, hashlib, hmac, http.client, json, sys, time
host, port, ak, sk, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def call(action, body):
    uri = "/keys/v2/%s/%s" % (tag, action)
    ts = str(int(time.time() * 1000))
    msg = "POST " + uri + "\n" + ts + "\n" + ak
    sig = base64.b64encode(hmac.new(sk.encode(), msg.encode(), hashlib.sha256).digest()).decode()
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("POST", uri, json.dumps(body), {"x-ncp-apigw-timestamp": ts,
              "x-ncp-iam-access-key": ak, "x-ncp-apigw-signature-v2": sig,
              "Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, json.loads(r.read())
st, enc = call("encrypt", {"plaintext": base64.b64encode(b"hello from python").decode()})
assert st == 200, (st, enc)
st, dec = call("decrypt", {"ciphertext": enc["data"]["ciphertext"]})
assert st == 200, (st, dec)
assert base64.b64decode(dec["data"]["plaintext"]) == b"hello from python"
print("python client ok", enc["data"]["ciphertext"][:10])
"#;

#[test]
fn signed_calls_cli_changes_and_independent_client() {
    let (dir, tag, c) = setup();
    let server = start(dir.path(), free_port());
    let addr = server.addr;
    let pt = B64.encode(vec![0x5a; 1024]);

    // Both schemes, round trip.
    for v in [1, 2] {
        let r = call(addr, &c, v, &tag, "encrypt", &json!({"plaintext": pt}));
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        let ct = r.json()["data"]["ciphertext"].as_str().unwrap().to_owned();
        assert!(ct.starts_with("ncpkms:v1:"));
        let r = call(addr, &c, v, &tag, "decrypt", &json!({"ciphertext": ct}));
        assert_eq!(r.json()["data"]["plaintext"], pt);
    }

    // An independent client (Python's hmac/hashlib/base64/http.client).
    let script = dir.path().join("client.py");
    std::fs::write(&script, PYTHON_CLIENT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "127.0.0.1",
            &addr.port().to_string(),
            &c.access,
            &c.secret,
            &tag,
        ])
        .output()
        .expect("python3 is installed");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("python client ok"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Refusals in the gateway's form.
    let gateway_401 = |r: &Answer| {
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"]["errorCode"], "200");
        assert_eq!(r.json()["error"]["message"], "Authentication Failed");
    };
    let wrong = Creds {
        access: c.access.clone(),
        secret: "not-the-secret".into(),
        api: c.api.clone(),
    };
    gateway_401(&call(
        addr,
        &wrong,
        2,
        &tag,
        "encrypt",
        &json!({"plaintext": pt}),
    ));
    gateway_401(&call_at(
        addr,
        &c,
        2,
        &tag,
        "encrypt",
        &json!({"plaintext": pt}),
        now_ms() - 6 * 60_000,
    ));
    let unknown = Creds {
        access: "AKUNKNOWN".into(),
        secret: c.secret.clone(),
        api: c.api.clone(),
    };
    gateway_401(&call(
        addr,
        &unknown,
        2,
        &tag,
        "encrypt",
        &json!({"plaintext": pt}),
    ));
    let missing = request(
        addr,
        "POST",
        &format!("/keys/v2/{tag}/encrypt"),
        Some(&json!({"plaintext": pt})),
    )
    .unwrap();
    gateway_401(&missing);
    let wrong_api = Creds {
        api: "OTHER".into(),
        access: c.access.clone(),
        secret: c.secret.clone(),
    };
    gateway_401(&call(
        addr,
        &wrong_api,
        1,
        &tag,
        "encrypt",
        &json!({"plaintext": pt}),
    ));

    // Errors of the service, documented form.
    let r = call(
        addr,
        &c,
        2,
        "nosuchkey",
        "encrypt",
        &json!({"plaintext": pt}),
    );
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let r = call(
        addr,
        &c,
        2,
        &tag,
        "decrypt",
        &json!({"ciphertext": "ncpkms:v1:AAAA"}),
    );
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );

    // CLI changes while the server runs: rotation, disabling, revocation.
    let r = call(addr, &c, 2, &tag, "encrypt", &json!({"plaintext": pt}));
    let old = r.json()["data"]["ciphertext"].as_str().unwrap().to_owned();
    assert_eq!(kms(dir.path(), &["rotate", &tag])["version"], 2);
    std::thread::sleep(Duration::from_millis(250));
    let r = call(addr, &c, 2, &tag, "reencrypt", &json!({"ciphertext": old}));
    assert!(
        r.json()["data"]["ciphertext"]
            .as_str()
            .unwrap()
            .starts_with("ncpkms:v2:")
    );
    let listed = Command::new(env!("CARGO_BIN_EXE_keypipe"))
        .args(["kms", "--data-dir"])
        .arg(dir.path())
        .arg("list")
        .output()
        .unwrap();
    let line: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(line["versions"].as_array().unwrap().len(), 2);
    kms(dir.path(), &["disable", &tag, "--version", "1"]);
    std::thread::sleep(Duration::from_millis(250));
    let r = call(addr, &c, 2, &tag, "decrypt", &json!({"ciphertext": old}));
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (422, Some("INVALID_STATUS"))
    );
    kms(dir.path(), &["enable", &tag, "--version", "1"]);
    std::thread::sleep(Duration::from_millis(250));
    let r = call(addr, &c, 2, &tag, "decrypt", &json!({"ciphertext": old}));
    assert_eq!(r.json()["data"]["plaintext"], pt, "enabled again");
    kms(dir.path(), &["disable", &tag]);
    std::thread::sleep(Duration::from_millis(250));
    let r = call(addr, &c, 2, &tag, "encrypt", &json!({"plaintext": pt}));
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (422, Some("INVALID_STATUS"))
    );
    kms(dir.path(), &["revoke-access-key", &c.access]);
    std::thread::sleep(Duration::from_millis(250));
    gateway_401(&call(
        addr,
        &c,
        2,
        &tag,
        "encrypt",
        &json!({"plaintext": pt}),
    ));
}

#[test]
fn keys_survive_kill_9_and_never_reach_disk_or_logs_in_clear() {
    let (dir, tag, c) = setup();
    let port = free_port();
    let pt = B64.encode(b"durable secret");
    let ct = {
        let server = start(dir.path(), port);
        let r = call(
            server.addr,
            &c,
            2,
            &tag,
            "encrypt",
            &json!({"plaintext": pt}),
        );
        assert_eq!(r.status, 200);
        let ct = r.json()["data"]["ciphertext"].as_str().unwrap().to_owned();
        // kill -9: no shutdown of any kind.
        drop(server);
        ct
    };
    // A key created while no server runs, right before the restart.
    let server = start(dir.path(), port);
    let r = call(
        server.addr,
        &c,
        2,
        &tag,
        "decrypt",
        &json!({"ciphertext": ct}),
    );
    assert_eq!(
        r.json()["data"]["plaintext"],
        pt,
        "decrypts after kill -9 and restart"
    );

    // The key's bytes and the access secret are nowhere in clear: not in
    // the database, its WAL or shared memory, nor in the server's logs.
    let store = Store::open(&StoreOptions::new(dir.path())).unwrap();
    let material = store.key(&tag).unwrap().unwrap().versions[0]
        .material
        .to_vec();
    let log = std::fs::read(&server.log).unwrap();
    for name in ["keypipe.db", "keypipe.db-wal", "keypipe.db-shm"] {
        let Ok(bytes) = std::fs::read(dir.path().join(name)) else {
            continue;
        };
        for (what, secret) in [
            ("key material", &material[..]),
            ("access secret", c.secret.as_bytes()),
        ] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "{what} in {name}"
            );
        }
    }
    for secret in [
        B64.encode(&material),
        c.secret.clone(),
        String::from_utf8_lossy(&material).into_owned(),
    ] {
        assert!(!log.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    assert!(!log.is_empty(), "the server logged (at debug level)");
}

/// Sends exactly `raw` (a captured request, possibly with another body).
fn send_raw(addr: SocketAddr, raw: &str) -> Answer {
    use std::io::Write;
    let mut conn = Conn::open(addr).unwrap();
    conn.stream.write_all(raw.as_bytes()).unwrap();
    read_answer(&mut conn.reader).unwrap()
}

#[test]
fn grants_bound_each_access_key_and_a_captured_request_is_accepted_once() {
    let (dir, tag, _) = setup();
    let other = kms(
        dir.path(),
        &["create-key", "--name", "other", "--type", "AES256"],
    );
    let other = other["keyTag"].as_str().unwrap().to_owned();
    let grant = format!("{tag}:encrypt,decrypt");
    let ak = kms(dir.path(), &["create-access-key", "--grant", &grant]);
    assert_eq!(ak["grants"][0]["actions"], json!(["encrypt", "decrypt"]));
    let c = Creds::from_cli(&ak);
    let bare = kms(dir.path(), &["create-access-key"]);
    let none = Creds::from_cli(&bare);
    let server = start(dir.path(), free_port());
    let addr = server.addr;
    let pt = json!({"plaintext": B64.encode(b"secret payload")});

    // Within its grant: 200. Another key, another action, no grant: 403.
    let enc = call(addr, &c, 2, &tag, "encrypt", &pt);
    assert_eq!(enc.status, 200);
    let ct = enc.json()["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    let forbidden = |r: Answer| {
        assert_eq!(r.status, 403, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["code"], "FORBIDDEN");
    };
    forbidden(call(addr, &c, 2, &other, "encrypt", &pt));
    forbidden(call(addr, &c, 2, &tag, "createCustomKey", &json!({})));
    forbidden(call(addr, &none, 2, &tag, "encrypt", &pt));
    // A grant added while running takes effect (the store generation moves).
    kms(dir.path(), &["grant", &none.access, "*", "encrypt"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while call(addr, &none, 2, &other, "encrypt", &pt).status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the grant never applied"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    kms(dir.path(), &["revoke-grant", &none.access, "*"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while call(addr, &none, 2, &other, "encrypt", &pt).status != 403 {
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation never applied"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // F10: a captured decrypt request, replayed with another ciphertext,
    // is refused (the signature does not cover the body).
    let target = format!("/keys/v2/{tag}/decrypt");
    let ts = unique_ts().to_string();
    let sig = signature(
        Scheme::V2,
        c.secret.as_bytes(),
        "POST",
        &target,
        &ts,
        &c.access,
        "",
    );
    let request = |body: &str| {
        format!(
            "POST {target} HTTP/1.1\r\nHost: t\r\nx-ncp-apigw-timestamp: {ts}\r\nx-ncp-iam-access-key: {}\r\n\
             x-ncp-apigw-signature-v2: {sig}\r\nContent-Length: {}\r\n\r\n{body}",
            c.access,
            body.len()
        )
    };
    let first = send_raw(addr, &request(&json!({"ciphertext": ct}).to_string()));
    assert_eq!(first.status, 200);
    let victim = call(
        addr,
        &c,
        2,
        &tag,
        "encrypt",
        &json!({"plaintext": B64.encode(b"other secret")}),
    );
    let victim_ct = victim.json()["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    let replay = send_raw(
        addr,
        &request(&json!({"ciphertext": victim_ct}).to_string()),
    );
    assert_eq!(
        replay.status,
        401,
        "{:?}",
        String::from_utf8_lossy(&replay.body)
    );
    assert!(String::from_utf8_lossy(&replay.body).contains("replayed"));
    assert!(!String::from_utf8_lossy(&replay.body).contains(&B64.encode(b"other secret")));

    let listed: Vec<Value> = String::from_utf8(
        std::process::Command::new(env!("CARGO_BIN_EXE_keypipe"))
            .args(["kms", "--data-dir"])
            .arg(dir.path())
            .arg("list-access-keys")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    assert!(listed.iter().any(|k| k["access_key"] == c.access.as_str()
        && k["grants"] == json!([{"key_tag": tag, "actions": ["encrypt", "decrypt"]}])));
    assert!(
        listed.iter().all(|k| k.get("secret_key").is_none()),
        "no secret listed"
    );
    // Bad grants are refused by name, and create nothing.
    let before = listed.len();
    for (args, needle) in [
        (
            vec!["create-access-key", "--grant", "no-colon"],
            "TAG:ACTIONS",
        ),
        (
            vec!["create-access-key", "--grant", "t:fly"],
            "action \"fly\"",
        ),
        (vec!["grant", &c.access, "bad tag", "*"], "keyTag"),
        (vec!["grant", "AKNONE", "*", "*"], "not found"),
        (vec!["revoke-grant", &c.access, "nope"], "no grant"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keypipe"))
            .args(["kms", "--data-dir"])
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
    }
    let after = std::process::Command::new(env!("CARGO_BIN_EXE_keypipe"))
        .args(["kms", "--data-dir"])
        .arg(dir.path())
        .arg("list-access-keys")
        .output()
        .unwrap()
        .stdout;
    assert_eq!(String::from_utf8(after).unwrap().lines().count(), before);
}
