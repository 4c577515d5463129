//! Callers from another host (here: this host's own non-loopback address,
//! which a listener on 0.0.0.0 sees as remote) without a client
//! certificate get nothing that needs one: no metrics or health detail
//! (F20), no ETSI 004 stream (F3), no key-material push (F6), no link
//! sync (mutual TLS between hosts). Loopback callers keep the quick start.

mod support;

use std::net::SocketAddr;

use serde_json::json;
use support::{OPEN, assert_etsi_error, free_port, non_loopback_ip, request, start_nodes};

#[test]
fn remote_callers_without_a_certificate_get_nothing_that_needs_one() {
    let (pa, pb) = (free_port(), free_port());
    // An insecure plaintext listener on every address (allowed only with
    // the flag), linked to a loopback peer.
    let toml = support::pair_toml(pa, pb, pb, pa, "").replacen(
        &format!("listen = \"127.0.0.1:{pa}\""),
        &format!("listen = \"0.0.0.0:{pa}\"\ninsecure_plaintext = true"),
        1,
    );
    let _nodes = start_nodes(&toml);
    let local: SocketAddr = format!("127.0.0.1:{pa}").parse().unwrap();
    let remote = SocketAddr::new(non_loopback_ip(), pa);
    support::wait_healthy(local);

    // Health: bare for the remote caller, detailed for the local one.
    let bare = request(remote, "GET", "/healthz", None).unwrap();
    assert!(bare.status == 200 || bare.status == 503);
    let v = bare.json();
    assert!(
        v.get("status").is_some() && v.get("streams").is_none() && v.get("node").is_none(),
        "{v}"
    );
    assert!(
        request(local, "GET", "/healthz", None)
            .unwrap()
            .json()
            .get("streams")
            .is_some()
    );
    // Metrics: 403 remotely, served locally.
    let r = request(remote, "GET", "/metrics", None).unwrap();
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("client certificate"));
    let r = request(local, "GET", "/metrics", None).unwrap();
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("keypipe_ring_fill_blocks"));

    // ETSI 004: no stream for a remote caller without a certificate.
    let body = json!({"source": "http://127.0.0.1:9", "destination": "http://127.0.0.1:9",
                      "key_stream_id": null, "qos": {"key_chunk_size": 32}});
    let r = request(remote, "POST", OPEN, Some(&body)).unwrap();
    assert_etsi_error(&r, 403, 3, "another host needs a client certificate");
    // The KMS side: no push from a remote caller without a certificate.
    let push = json!({"status": 0, "index": 0, "key_buffer": "AAAA",
                      "metadata": {"size": 55, "buffer": {"key_stream_id": uuid::Uuid::new_v4()}}});
    let r = request(
        remote,
        "POST",
        "/api/v1/qkd/etsi004/key-material",
        Some(&push),
    )
    .unwrap();
    assert_etsi_error(&r, 403, 3, "needs a client certificate");
    // Link sync between hosts needs mutual TLS.
    let r = request(remote, "POST", "/api/v1/link/hello", Some(&json!({}))).unwrap();
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("mutual TLS"));
}

#[test]
fn one_remote_address_cannot_take_every_connection() {
    let port = free_port();
    let toml = format!(
        "[[node]]\nname = \"n\"\nlisten = \"0.0.0.0:{port}\"\ninsecure_plaintext = true\n\
         [node.http]\nmax_connections_per_ip = 4\n"
    );
    let _node = start_nodes(&toml);
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let remote = SocketAddr::new(non_loopback_ip(), port);
    support::wait_healthy(local);
    let mut held: Vec<support::Conn> = (0..4)
        .map(|_| {
            let mut c = support::Conn::open(remote).unwrap();
            assert_eq!(c.send("GET", "/healthz", None).unwrap().status, 200);
            c
        })
        .collect();
    // The fifth from the same address is refused; loopback is not capped.
    let fifth = support::Conn::open(remote).and_then(|mut c| c.send("GET", "/healthz", None));
    assert!(
        fifth.as_ref().map_or(true, |a| a.status == 503),
        "{fifth:?}"
    );
    for _ in 0..8 {
        assert_eq!(request(local, "GET", "/healthz", None).unwrap().status, 200);
    }
    // One closes: the address gets a slot back.
    drop(held.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let again = support::Conn::open(remote).and_then(|mut c| c.send("GET", "/healthz", None));
        if again.as_ref().is_ok_and(|a| a.status == 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no slot came back: {again:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
