//! Two `keypipe serve` processes, node A and node B, linked over mutual
//! TLS (certificates from `keypipe ca`, the peer pinned by name), push to
//! two KMS receivers over `https://` with identical keys; KMSes reach the
//! nodes' ETSI 004 API with client certificates. The configuration is the
//! documented example `examples/config/two-hosts/`. A peer presenting
//! another node's identity is refused, and the link stays down.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::tls::{Pki, TlsConn};
use support::{GET_KEY, HeldPort, ServerProcess, TestKms, assert_identical, free_port};

fn hex32() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The configuration of one node process: TLS listener requiring client
/// certificates, link to `peer_port` over https pinned to `peer_name`.
#[allow(clippy::too_many_arguments)]
fn node_config(
    pki: &Pki,
    name: &str,
    server_cert: &str,
    client_cert: &str,
    role: &str,
    port: u16,
    peer_port: u16,
    peer_name: &str,
    device: &str,
    link: &str,
) -> String {
    format!(
        "[[node]]\nname = {name:?}\nlisten = \"127.0.0.1:{port}\"\nserve = [\"etsi004-qkd\"]\n\
         {tls}\n[node.engine]\nrole = {role:?}\n[node.engine.device]\ndriver = \"simulated\"\n\
         link_secret = {device:?}\n{engine_tls}\n[node.engine.link]\npeer = \"https://localhost:{peer_port}\"\n\
         secret = {link:?}\npeer_name = {peer_name:?}\n",
        tls = pki.node_tls(server_cert, "required"),
        engine_tls = pki.engine_tls(client_cert),
    )
}

fn link_up(port: u16, pki: &Pki) -> bool {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let Ok(mut conn) = TlsConn::open(addr, &pki.client_config("kms-a")) else {
        return false;
    };
    let Ok(answer) = conn.send("GET", "/metrics", None) else {
        return false;
    };
    String::from_utf8_lossy(&answer.body)
        .lines()
        .any(|l| l.starts_with("keypipe_link_up") && l.ends_with(" 1"))
}

/// The documented example `examples/config/two-hosts/` (its `setup.sh`
/// and template), run on this machine with both hosts named localhost.
#[test]
fn the_two_hosts_example_pushes_identical_keys_to_https_kmses() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("two-hosts");
    // Every port is written into the configuration before it is bound:
    // held until then, so the nodes' own connections cannot take one.
    let nodes = [HeldPort::new(), HeldPort::new()];
    let kmses = [HeldPort::new(), HeldPort::new()];
    let [pa, pb] = nodes.each_ref().map(HeldPort::port);
    let [ka, kb] = kmses.each_ref().map(HeldPort::port);
    let setup = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/config/two-hosts/setup.sh"
    ))
    .arg(&out)
    .arg(env!("CARGO_BIN_EXE_keypipe"))
    .env("NODE_A_HOST", "localhost")
    .env("NODE_B_HOST", "localhost")
    .env("PORT_A", pa.to_string())
    .env("PORT_B", pb.to_string())
    .env("KMS_A_URI", format!("https://localhost:{ka}"))
    .env("KMS_B_URI", format!("https://localhost:{kb}"))
    .output()
    .unwrap();
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let pki = Pki {
        data: out.join("ca-data"),
        out: out.join("pki"),
    };
    pki.server("kms-srv");
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
    drop(nodes);
    let node_a = ServerProcess::start_tls(&out.join("node-a-data"), pa, &read("node-a.toml"));
    let node_b = ServerProcess::start_tls(&out.join("node-b-data"), pb, &read("node-b.toml"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(link_up(pa, &pki) && link_up(pb, &pki)) {
        assert!(
            Instant::now() < deadline,
            "link never up over mTLS:\nA: {}\nB: {}",
            node_a.log_text(),
            node_b.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(kmses);
    let kms_a = TestKms::start_tls_on(ka, pki.acceptor("kms-srv"));
    let kms_b = TestKms::start_tls_on(kb, pki.acceptor("kms-srv"));
    let mut api_a = TlsConn::open(node_a.addr, &pki.client_config("kms-a")).unwrap();
    let mut api_b = TlsConn::open(node_b.addr, &pki.client_config("kms-b")).unwrap();
    let opened = api_a.open_stream(&kms_a.url(), &kms_b.url(), None);
    assert_eq!(
        opened.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&opened.body)
    );
    let ksid = opened.json()["key_stream_id"].as_str().unwrap().to_owned();
    let joined = api_b.open_stream(&kms_a.url(), &kms_b.url(), Some(&ksid));
    assert_eq!(
        joined.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&joined.body)
    );
    for api in [&mut api_a, &mut api_b] {
        let r = api
            .send("GET", GET_KEY, Some(&json!({"key_stream_id": ksid})))
            .unwrap();
        assert_eq!(r.status, 205);
    }
    let ksid = ksid.parse().unwrap();
    kms_a.wait_for(&ksid, 500, 30);
    kms_b.wait_for(&ksid, 500, 30);
    assert!(assert_identical(&kms_a, &kms_b, &ksid, 32) >= 500);
    // Each KMS was pushed to by its own node, over mutual TLS.
    for (kms, node) in [(&kms_a, "node-a/node"), (&kms_b, "node-b/node")] {
        let pushers = kms.log.lock().unwrap().pushers.clone();
        assert_eq!(pushers.into_iter().collect::<Vec<_>>(), vec![node]);
    }
}

#[test]
fn a_peer_presenting_another_identity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    for name in ["b", "mallory"] {
        pki.server(name);
    }
    for (name, role) in [("b", "node"), ("mallory", "node"), ("kms-a", "kms")] {
        pki.client(name, role);
    }
    let (pa, pb) = (free_port(), free_port());
    let (device, link) = (hex32(), hex32());
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    // "a" runs with mallory's certificates (a valid CA, the wrong name);
    // b pins its peer to "a".
    let impostor = ServerProcess::start_tls(
        &da,
        pa,
        &node_config(
            &pki, "a", "mallory", "mallory", "leader", pa, pb, "b", &device, &link,
        ),
    );
    let node_b = ServerProcess::start_tls(
        &db,
        pb,
        &node_config(&pki, "b", "b", "b", "follower", pb, pa, "a", &device, &link),
    );
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        assert!(!link_up(pb, &pki), "b linked with an impostor");
        assert!(!link_up(pa, &pki), "the impostor linked with b");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log_b = node_b.log_text();
    assert!(
        log_b.contains("names mallory, not the peer node a")
            || log_b.contains("peer certificate names another node"),
        "b's log says why:\n{log_b}"
    );
    drop(impostor);
}
