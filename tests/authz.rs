//! Who may use a node's ETSI 004 QKD side (security review F3): every
//! hijack, injection and SSRF scenario of the review fails with a clear
//! answer, and no key reaches anyone but the stream's two KMSes.

mod support;

use serde_json::{Value, json};
use support::tls::{Pki, TlsConn};
use support::{
    CLOSE, GET_KEY, OPEN, TestKms, assert_etsi_error, assert_identical, free_port, start_nodes,
};

/// Two nodes in this process: TLS listeners requiring client
/// certificates, linked over mutual TLS; each with its `[[node.kms]]`.
fn config(pki: &Pki, pa: u16, pb: u16, kms_a: &str, kms_b: &str, kms_c: &str) -> String {
    let node = |name: &str, port: u16, role: &str, peer: u16, peer_name: &str, kms: &str| {
        format!(
            "[[node]]\nname = {name:?}\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\nserve = [\"etsi004-qkd\"]\n\
             {tls}{kms}\n[node.engine]\nrole = {role:?}\nblock_size = 1024\narena_blocks = 512\nring_blocks = 64\n\
             [node.engine.device]\ndriver = \"simulated\"\nlink_secret = \"{dev}\"\n{etls}\
             [node.engine.link]\npeer = \"https://localhost:{peer}\"\nsecret = \"{link}\"\npeer_name = {peer_name:?}\n",
            tls = pki.node_tls(name, "required"),
            etls = pki.engine_tls(name),
            dev = "33".repeat(32),
            link = "44".repeat(32),
        )
    };
    let table_a = format!(
        "\n[[node.kms]]\nname = \"kms-a\"\nuris = [{kms_a:?}]\n\n[[node.kms]]\nname = \"kms-c\"\nuris = [{kms_c:?}]\nmax_streams = 1\n"
    );
    let table_b = format!("\n[[node.kms]]\nname = \"kms-b\"\nuris = [{kms_b:?}]\n");
    format!(
        "pool_threads = 4\n{}{}",
        node("node-a", pa, "leader", pb, "node-b", &table_a),
        node("node-b", pb, "follower", pa, "node-a", &table_b)
    )
}

fn open_body(source: &str, destination: &str, ksid: Option<&str>) -> Value {
    json!({"source": source, "destination": destination, "key_stream_id": ksid,
           "qos": {"key_chunk_size": 32, "timeout": 3000}})
}

#[test]
fn hijack_injection_and_ssrf_fail_and_no_key_reaches_a_third_party() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    for name in ["node-a", "node-b", "kms-srv"] {
        pki.server(name);
    }
    for (name, role) in [
        ("node-a", "node"),
        ("node-b", "node"),
        ("kms-a", "kms"),
        ("kms-b", "kms"),
        ("kms-c", "kms"),
        ("mallory", "kms"),
        ("not-a-kms", "sae"),
    ] {
        pki.client(name, role);
    }
    let kms_a = TestKms::start_tls(pki.acceptor("kms-srv"));
    let kms_b = TestKms::start_tls(pki.acceptor("kms-srv"));
    let evil = TestKms::start_tls(pki.acceptor("kms-srv"));
    let kms_c_url = format!("https://localhost:{}", free_port());
    let (pa, pb) = (free_port(), free_port());
    let nodes = start_nodes(&config(
        &pki,
        pa,
        pb,
        &kms_a.url(),
        &kms_b.url(),
        &kms_c_url,
    ));
    let (a, b) = (nodes[0].local_addr(), nodes[1].local_addr());
    let conn = |addr, who: &str| TlsConn::open(addr, &pki.client_config(who)).unwrap();
    let (mut a_kms_a, mut b_kms_b) = (conn(a, "kms-a"), conn(b, "kms-b"));

    // KMS_A creates K on node A (once the link is up: status 4 before).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let opened = loop {
        let r = a_kms_a.open_stream(&kms_a.url(), &kms_b.url(), None);
        if r.status != 500 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        opened.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&opened.body)
    );
    let k = opened.json()["key_stream_id"].as_str().unwrap().to_owned();

    // Hijack attempts on node B, before KMS_B opens K there.
    let mut b_mallory = conn(b, "mallory");
    let r = b_mallory.open_stream(&kms_a.url(), &evil.url(), Some(&k));
    assert_etsi_error(&r, 403, 3, "not registered on node node-b");
    let mut b_kms_a = conn(b, "kms-a");
    let r = b_kms_a.open_stream(&kms_a.url(), &evil.url(), Some(&k));
    assert_etsi_error(&r, 403, 3, "not registered on node node-b");
    let mut b_other = conn(b, "not-a-kms");
    let r = b_other.open_stream(&kms_a.url(), &kms_b.url(), Some(&k));
    assert_etsi_error(&r, 403, 3, "not a KMS's");
    // Even KMS_B cannot redirect K's key elsewhere: a URI not its own is
    // refused before anything (no DNS either) ...
    let r = b_kms_b.open_stream(&kms_a.url(), &evil.url(), Some(&k));
    assert_etsi_error(&r, 403, 3, "is a URI of this caller's KMS");
    // ... and it joins a stream only with the destination KMS_A gave,
    // announced by node A over the authenticated link: here KMS_A gave
    // another one, so KMS_B's own is refused.
    let other = a_kms_a.open_stream(&kms_a.url(), &evil.url(), None);
    let k2 = other.json()["key_stream_id"].as_str().unwrap().to_owned();
    let r = b_kms_b.open_stream(&kms_a.url(), &kms_b.url(), Some(&k2));
    assert_etsi_error(&r, 400, 5, "differs from the one the creating KMS gave");
    // The real KMS_B is not locked out by the attempts (no status 5); it
    // may spell the destination with a trailing slash.
    let spelled = format!("{}/", kms_b.url());
    let joined = b_kms_b.open_stream(&kms_a.url(), &spelled, Some(&k));
    assert_eq!(
        joined.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&joined.body)
    );
    assert_eq!(joined.json()["status"], 0);

    // Nobody else may start, skip or close K.
    let mut a_kms_c = conn(a, "kms-c");
    for (method, path, body) in [
        ("GET", GET_KEY, json!({"key_stream_id": k, "index": 100})),
        ("PUT", CLOSE, json!({"key_stream_id": k})),
    ] {
        let r = a_kms_c.send(method, path, Some(&body)).unwrap();
        assert_etsi_error(&r, 403, 3, "belongs to KMS \"kms-a\", not to \"kms-c\"");
        let r = b_kms_a.send(method, path, Some(&body)).unwrap();
        assert_etsi_error(&r, 403, 3, "not registered on node node-b");
    }

    // SSRF: a URI that is no KMS's, or a QKD node's listener.
    let r = a_kms_a.open_stream("https://10.255.255.1:9", "https://127.0.0.1:1", None);
    assert_etsi_error(&r, 403, 3, "not the URI of any KMS");
    let r = a_kms_a.open_stream(
        &format!("https://127.0.0.1:{pb}"),
        "https://127.0.0.1:1",
        None,
    );
    assert_etsi_error(&r, 403, 3, "QKD node's listener");
    let r = a_kms_a.open_stream(&kms_c_url, &kms_b.url(), None);
    // (kms-c's URI is a host name: refused before it is resolved.)
    assert_etsi_error(&r, 403, 3, "URI of this caller's KMS");
    // A cap per KMS: kms-c may hold one stream.
    let one = a_kms_c.open_stream(&kms_c_url, &kms_b.url(), None);
    assert_eq!(one.status, 201);
    let two = a_kms_c.open_stream(&kms_c_url, &kms_b.url(), None);
    assert_etsi_error(&two, 403, 3, "max_streams");

    // K flows to KMS_A and KMS_B only, identical.
    for (api, who) in [(&mut a_kms_a, "a"), (&mut b_kms_b, "b")] {
        let r = api
            .send("GET", GET_KEY, Some(&json!({"key_stream_id": k})))
            .unwrap();
        assert_eq!(r.status, 205, "{who}");
    }
    let ksid = k.parse().unwrap();
    kms_a.wait_for(&ksid, 200, 30);
    kms_b.wait_for(&ksid, 200, 30);
    assert!(assert_identical(&kms_a, &kms_b, &ksid, 32) >= 200);
    assert!(
        evil.log.lock().unwrap().keys.is_empty(),
        "a third party got key"
    );
    let r = a_kms_a
        .send("PUT", CLOSE, Some(&json!({"key_stream_id": k})))
        .unwrap();
    assert_eq!(r.status, 204);
}

#[test]
fn without_a_kms_table_a_node_pushes_only_to_loopback() {
    let (pa, pb) = (free_port(), free_port());
    let nodes = start_nodes(&support::pair_toml(pa, pb, pb, pa, ""));
    let a = nodes[0].local_addr();
    support::wait_healthy(a);
    let r = support::request(
        a,
        "POST",
        OPEN,
        Some(&open_body("http://10.1.2.3:9", "http://127.0.0.1:9", None)),
    )
    .unwrap();
    assert_etsi_error(&r, 403, 3, "pushes only to loopback URIs");
    let r = support::request(
        a,
        "POST",
        OPEN,
        Some(&open_body(
            &format!("http://127.0.0.1:{pb}"),
            "http://127.0.0.1:9",
            None,
        )),
    )
    .unwrap();
    assert_etsi_error(&r, 403, 3, "QKD node's listener");
}

#[test]
fn a_kms_side_takes_key_only_from_its_nodes_each_stream_from_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("kms-srv");
    for (name, role) in [
        ("node-a", "node"),
        ("node-b", "node"),
        ("node-x", "node"),
        ("kms-a", "kms"),
    ] {
        pki.client(name, role);
    }
    let port = free_port();
    let toml = format!(
        "[[node]]\nname = \"kms\"\nlisten = \"127.0.0.1:{port}\"\nserve = [\"etsi004-kms\"]\n{}\
         [node.kms_side]\nnodes = [\"node-a\", \"node-b\"]\n",
        pki.node_tls("kms-srv", "required")
    );
    let kms = start_nodes(&toml).pop().unwrap();
    let path = "/api/v1/qkd/etsi004/key-material";
    let (k1, k2) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let push = |ksid: uuid::Uuid, index: u32| {
        json!({"status": 0, "index": index, "key_buffer": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
               "metadata": {"size": 55, "buffer": {"key_stream_id": ksid}}})
    };
    let send = |who: &str, ksid, index| {
        TlsConn::open(kms.local_addr(), &pki.client_config(who))
            .unwrap()
            .send("POST", path, Some(&push(ksid, index)))
            .unwrap()
    };
    assert_eq!(send("node-a", k1, 0).status, 201);
    assert_etsi_error(&send("node-x", k2, 0), 403, 3, "may not push key here");
    assert_etsi_error(&send("kms-a", k2, 0), 403, 3, "not a QKD node's");
    // Another listed node cannot inject into node-a's stream.
    assert_etsi_error(&send("node-b", k1, 1), 409, 3, "pushed by another QKD node");
    assert_eq!(send("node-b", k2, 0).status, 201);
    assert_eq!(send("node-a", k1, 1).status, 201);
}

#[test]
fn a_poisoned_index_is_dropped_for_good_and_blocks_nothing_else() {
    let (a, b) = support::linked_pair();
    let kms_a = TestKms::start_poisoned(3);
    let kms_b = TestKms::start();
    let ksid = support::push_stream(
        a.local_addr(),
        b.local_addr(),
        &kms_a,
        &kms_b,
        json!({"key_chunk_size": 32}),
    );
    kms_a.wait_for(&ksid, 200, 30);
    kms_b.wait_for(&ksid, 200, 30);
    let got = kms_a.indexes(&ksid);
    assert!(!got.contains(&3), "the poisoned index is never stored");
    assert!(
        got.contains(&4) && got.len() >= 200,
        "pushes behind it went on"
    );
    assert_eq!(
        kms_a.log.lock().unwrap().poisoned,
        1,
        "answered 409 once, not resent"
    );
    assert_eq!(
        support::metric(a.local_addr(), "keypipe_push_rejected_total"),
        1.0
    );
    // The other KMS has index 3, and every index both have is identical.
    assert!(kms_b.indexes(&ksid).contains(&3));
    let la = kms_a.log.lock().unwrap();
    let lb = kms_b.log.lock().unwrap();
    for (i, k) in &la.keys[&ksid] {
        if let Some(other) = lb.keys[&ksid].get(i) {
            assert_eq!(k, other, "index {i}");
        }
    }
}

/// Security review F9: a "KMS" that answers with a header block that
/// never ends is cut off at a bounded buffer; the node, its link and its
/// pushes to other KMSes go on.
#[test]
fn an_endless_answer_is_cut_off_and_nothing_else_stalls() {
    use std::io::{Read, Write};
    let evil = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let evil_url = format!("http://{}", evil.local_addr().unwrap());
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let sent = std::sync::Arc::clone(&sent);
        std::thread::spawn(move || {
            for conn in evil.incoming() {
                let Ok(mut conn) = conn else { return };
                let sent = std::sync::Arc::clone(&sent);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf);
                    let _ = conn.write_all(b"HTTP/1.1 201 Created\r\n");
                    let line = [b"X-A: ".as_slice(), &[b'b'; 1000], b"\r\n"].concat();
                    while conn.write_all(&line).is_ok() {
                        sent.fetch_add(line.len(), std::sync::atomic::Ordering::Relaxed);
                        if sent.load(std::sync::atomic::Ordering::Relaxed) > 512 << 20 {
                            return;
                        }
                    }
                });
            }
        });
    }
    let (a, b) = support::linked_pair();
    let (kms_a, kms_b) = (TestKms::start(), TestKms::start());
    let bad = support::open_stream(
        a.local_addr(),
        b.local_addr(),
        &evil_url,
        &kms_b.url(),
        json!({"key_chunk_size": 32}),
    );
    support::start_pushing(a.local_addr(), bad, None);
    let good = support::push_stream(
        a.local_addr(),
        b.local_addr(),
        &kms_a,
        &kms_b,
        json!({"key_chunk_size": 32}),
    );
    kms_a.wait_for(&good, 2000, 30);
    kms_b.wait_for(&good, 2000, 30);
    assert!(assert_identical(&kms_a, &kms_b, &good, 32) >= 2000);
    assert_eq!(support::metric(a.local_addr(), "keypipe_link_up"), 1.0);
    // The endless answer was read only up to the bound, then cut (each
    // reconnection starts over): far less than what the peer offered.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        sent.load(std::sync::atomic::Ordering::Relaxed) < 512 << 20,
        "never cut off"
    );
}

/// Empty lists admit no certificate (review): a node without
/// `[[node.kms]]` takes no KMS certificate, a KMS side with no
/// `kms_side.nodes` no node certificate; only loopback callers without
/// one.
#[test]
fn empty_lists_admit_no_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("srv");
    for (name, role) in [("node-a", "node"), ("kms-a", "kms")] {
        pki.client(name, role);
    }
    let (pq, pk) = (free_port(), free_port());
    let toml = format!(
        "[[node]]\nname = \"qkd\"\nlisten = \"127.0.0.1:{pq}\"\nserve = [\"etsi004-qkd\"]\n{tls}\
         [node.engine]\n[node.engine.device]\ndriver = \"simulated\"\nlink_secret = \"{dev}\"\n\
         [[node]]\nname = \"kms\"\nlisten = \"127.0.0.1:{pk}\"\nserve = [\"etsi004-kms\"]\n{tls}",
        tls = pki.node_tls("srv", "optional"),
        dev = "66".repeat(32),
    );
    let nodes = start_nodes(&toml);
    let (q, k) = (nodes[0].local_addr(), nodes[1].local_addr());
    let r = TlsConn::open(q, &pki.client_config("kms-a"))
        .unwrap()
        .open_stream("http://127.0.0.1:9", "http://127.0.0.1:9", None);
    assert_etsi_error(&r, 403, 3, "not registered");
    let push = json!({"status": 0, "index": 0, "key_buffer": "AAAA",
                      "metadata": {"size": 55, "buffer": {"key_stream_id": uuid::Uuid::new_v4()}}});
    let r = TlsConn::open(k, &pki.client_config("node-a"))
        .unwrap()
        .send("POST", "/api/v1/qkd/etsi004/key-material", Some(&push))
        .unwrap();
    assert_etsi_error(&r, 403, 3, "may not push key here");
    // Without a certificate, from loopback: the quick start.
    let anonymous = support::tls::client_config(&pki.ca(), None);
    let r = TlsConn::open(k, &anonymous)
        .unwrap()
        .send("POST", "/api/v1/qkd/etsi004/key-material", Some(&push))
        .unwrap();
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
}
