//! ETSI 004 push mode end to end over real sockets: two keypipe nodes
//! linked over HTTP, two KMS receivers.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

#[test]
fn full_sequence_pushes_identical_keys_to_both_kmses() {
    let (a, b, kms_a, kms_b, ksid) = pushing(json!({"key_chunk_size": 32, "timeout": 2000}));
    kms_a.wait_for(&ksid, 3000, 30);
    kms_b.wait_for(&ksid, 3000, 30);
    let common = assert_identical(&kms_a, &kms_b, &ksid, 32);
    assert!(common >= 2000, "{common}");
    assert_eq!(kms_a.indexes(&ksid)[0], 0);
    assert_eq!(kms_b.indexes(&ksid)[0], 0);
    for node in [a.local_addr(), b.local_addr()] {
        let r = request(node, "PUT", CLOSE, Some(&json!({"key_stream_id": ksid}))).unwrap();
        assert_eq!(r.status, 204);
        assert!(
            r.header("content-length").is_none(),
            "204 has no Content-Length"
        );
    }
    // After close, what was taken is still delivered, then pushing stops.
    std::thread::sleep(Duration::from_millis(300));
    let settled = (kms_a.indexes(&ksid).len(), kms_b.indexes(&ksid).len());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        settled,
        (kms_a.indexes(&ksid).len(), kms_b.indexes(&ksid).len())
    );
    assert!(assert_identical(&kms_a, &kms_b, &ksid, 32) > 0);
    let log = kms_a.log.lock().unwrap();
    assert_eq!((log.repeats, log.conflicts), (0, 0));
    drop(log);
    let metrics = String::from_utf8(
        request(a.local_addr(), "GET", "/metrics", None)
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(
        metrics.contains("keypipe_push_chunks_acked_total{node=\"node-a\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/api/v1/kms/etsi004/open-connect\",status=\"201\""));
    a.shut_down();
    b.shut_down();
}

#[test]
fn kms_down_for_a_while_gets_every_index_once() {
    let (a, b, kms_a, mut kms_b, ksid) = pushing(json!({"key_chunk_size": 64}));
    kms_b.wait_for(&ksid, 500, 30);
    kms_b.down();
    let during = kms_b.indexes(&ksid).len();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        kms_b.indexes(&ksid).len(),
        during,
        "nothing arrives while down"
    );
    kms_b.up();
    kms_b.wait_for(&ksid, during + 2000, 30);
    kms_a.wait_for(&ksid, during + 2000, 30);
    // Contiguous from 0 on both sides: none skipped; identical bytes.
    assert_identical(&kms_a, &kms_b, &ksid, 64);
    assert_eq!(kms_b.indexes(&ksid)[0], 0);
    let log = kms_b.log.lock().unwrap();
    assert_eq!((log.repeats, log.conflicts), (0, 0), "no index twice");
    drop(log);
    a.shut_down();
    b.shut_down();
}

#[test]
fn get_key_with_index_resumes_after_kms_restart() {
    let (a, b, mut kms_a, kms_b, ksid) = pushing(json!({"key_chunk_size": 32}));
    kms_a.wait_for(&ksid, 400, 30);
    kms_a.down();
    // The restarted KMS lost its volatile state; it knows (from its own
    // durable store) the last index it holds and resumes after it.
    let last = *kms_a.indexes(&ksid).last().unwrap();
    let before = std::mem::take(&mut kms_a.log.lock().unwrap().keys);
    kms_a.up();
    start_pushing(a.local_addr(), ksid, Some(last + 1));
    kms_a.wait_for(&ksid, 1000, 30);
    let after = kms_a.indexes(&ksid);
    assert_eq!(
        after[0],
        last + 1,
        "resumed exactly after the last index held"
    );
    // An index already acknowledged cannot be asked again: its key is gone.
    let r = request(
        a.local_addr(),
        "GET",
        GET_KEY,
        Some(&json!({"key_stream_id": ksid, "index": 0})),
    )
    .unwrap();
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["status"], 2, "{:?}", r.json());
    // What A's KMS got, before and after, matches B's KMS byte for byte.
    let mut log = kms_a.log.lock().unwrap();
    for (i, k) in &before[&ksid] {
        assert!(
            log.keys
                .get_mut(&ksid)
                .unwrap()
                .insert(*i, k.clone())
                .is_none()
        );
    }
    drop(log);
    kms_b.wait_for(&ksid, before[&ksid].len() + 1000, 30);
    assert_identical(&kms_a, &kms_b, &ksid, 32);
    a.shut_down();
    b.shut_down();
}

#[test]
fn peer_node_unreachable_gives_status_4_and_streams_resume() {
    let (pa, pb) = (free_port(), free_port());
    let proxy_to_a = Proxy::start(pa);
    let proxy_to_b = Proxy::start(pb);
    let mut nodes = start_nodes(&pair_toml(pa, pb, proxy_to_b.port, proxy_to_a.port, ""));
    let (b, a) = (nodes.pop().unwrap(), nodes.pop().unwrap());
    wait_healthy(a.local_addr());
    wait_healthy(b.local_addr());
    let (kms_a, kms_b) = (TestKms::start(), TestKms::start());
    let ksid = push_stream(
        a.local_addr(),
        b.local_addr(),
        &kms_a,
        &kms_b,
        json!({"key_chunk_size": 32, "ttl": 600}),
    );
    kms_b.wait_for(&ksid, 300, 30);

    proxy_to_a.cut(true);
    proxy_to_b.cut(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while request(a.local_addr(), "GET", "/healthz", None)
        .unwrap()
        .status
        != 503
    {
        assert!(
            Instant::now() < deadline,
            "A never noticed the link is down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let health = request(a.local_addr(), "GET", "/healthz", None)
        .unwrap()
        .json();
    assert_eq!(health["link_up"], false);
    let r = request(
        a.local_addr(),
        "POST",
        OPEN,
        Some(&json!({"source": kms_a.url(), "destination": kms_b.url(), "qos": {}})),
    )
    .unwrap();
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["status"], 4);

    let held = kms_b.indexes(&ksid).len();
    proxy_to_a.cut(false);
    proxy_to_b.cut(false);
    wait_healthy(a.local_addr());
    kms_b.wait_for(&ksid, held + 2000, 30);
    kms_a.wait_for(&ksid, held + 2000, 30);
    assert_identical(&kms_a, &kms_b, &ksid, 32);
    a.shut_down();
    b.shut_down();
}

#[test]
fn chunks_unacknowledged_past_the_ttl_are_dropped_not_pushed_stale() {
    let (a, b, kms_a, mut kms_b, ksid) = pushing(json!({"key_chunk_size": 32, "ttl": 1}));
    kms_b.wait_for(&ksid, 200, 30);
    kms_b.down();
    // The TTL is 1 s; on a loaded runner the push thread may wake late, so
    // wait for the expiry rather than for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(b.local_addr(), "keypipe_push_expired_total") == 0.0 {
        assert!(Instant::now() < deadline, "B's queued chunks never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = kms_b.indexes(&ksid).len();
    kms_b.up();
    kms_b.wait_for(&ksid, before + 500, 30);
    // B's KMS has a gap where the key expired, and nothing stale or wrong:
    // every index both KMSes hold is identical.
    let idx = kms_b.indexes(&ksid);
    assert!(
        idx.windows(2).any(|w| w[1] != w[0] + 1),
        "a gap where the key expired"
    );
    let (la, lb) = (kms_a.log.lock().unwrap(), kms_b.log.lock().unwrap());
    assert_eq!((la.conflicts, lb.conflicts, lb.repeats), (0, 0, 0));
    for (i, k) in &lb.keys[&ksid] {
        if let Some(other) = la.keys[&ksid].get(i) {
            assert_eq!(k, other, "index {i}");
        }
    }
    drop((la, lb));
    a.shut_down();
    b.shut_down();
}

#[test]
fn max_bps_paces_the_pushes() {
    let (a, b) = linked_pair();
    let (kms_a, kms_b) = (TestKms::start(), TestKms::start());
    // 25 600 bit/s of 32-byte chunks: 100 chunks/s, bursts of 10. No
    // chunk can be taken before get-key, so time counts from before it.
    let start = Instant::now();
    let ksid = push_stream(
        a.local_addr(),
        b.local_addr(),
        &kms_a,
        &kms_b,
        json!({"key_chunk_size": 32, "max_bps": 25_600}),
    );
    kms_a.wait_for(&ksid, 1, 30);
    std::thread::sleep(Duration::from_millis(1000));
    let n = kms_a.indexes(&ksid).len();
    let secs = start.elapsed().as_secs_f64();
    // Pacing can only slow pushes down, so only the upper bound is strict.
    assert!(
        n as f64 <= 100.0 * secs + 10.0 + 1.0,
        "{n} chunks in {secs:.2} s"
    );
    assert!(n >= 10, "{n}");
    a.shut_down();
    b.shut_down();
}

#[test]
fn after_the_204_of_close_no_push_of_the_stream_reaches_the_kms() {
    // A slow KMS keeps pushes on the wire and in the queue when the close
    // comes: the 204 waits for those on the wire; those still queued are
    // dropped (zeroized), never sent.
    let (a, b) = linked_pair();
    let kms_a = TestKms::start_slow(Duration::from_millis(30));
    let kms_b = TestKms::start();
    let ksid = push_stream(
        a.local_addr(),
        b.local_addr(),
        &kms_a,
        &kms_b,
        json!({"key_chunk_size": 32}),
    );
    kms_a.wait_for(&ksid, 300, 30);
    let r = request(
        a.local_addr(),
        "PUT",
        CLOSE,
        Some(&json!({"key_stream_id": ksid})),
    )
    .unwrap();
    let closed = Instant::now();
    assert_eq!(r.status, 204);
    std::thread::sleep(Duration::from_millis(600));
    let log = kms_a.log.lock().unwrap();
    let late: Vec<u32> = log
        .arrivals
        .iter()
        .filter(|(k, _, t)| *k == ksid && *t > closed)
        .map(|(_, i, _)| *i)
        .collect();
    assert!(late.is_empty(), "pushed after the 204: {late:?}");
    drop(log);
    assert!(
        metric(a.local_addr(), "keypipe_push_discarded_total") > 0.0,
        "queued chunks were dropped, and counted"
    );
    // The peer was told: B's side goes on with what it holds, and the
    // stream takes no new key.
    let n = kms_b.indexes(&ksid).len();
    std::thread::sleep(Duration::from_millis(500));
    let m = kms_b.indexes(&ksid).len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        m,
        kms_b.indexes(&ksid).len(),
        "B stops once its held key is out"
    );
    assert!(m >= n);
    assert_identical(&kms_a, &kms_b, &ksid, 32);
    a.shut_down();
    b.shut_down();
}

#[test]
fn a_stream_read_on_one_side_only_cannot_fill_the_other_node() {
    // F8: a stream with a day's TTL whose key only node A's KMS takes.
    let (a, b) = linked_pair();
    let (kms_a, kms_b) = (TestKms::start(), TestKms::start());
    let hog = open_stream(
        a.local_addr(),
        b.local_addr(),
        &kms_a.url(),
        &kms_b.url(),
        json!({"key_chunk_size": 1024, "ttl": 86400}),
    );
    start_pushing(a.local_addr(), hog, None);
    std::thread::sleep(Duration::from_millis(1500));
    let held = metric(b.local_addr(), "keypipe_key_held_blocks");
    assert!(
        held <= 128.0,
        "B holds {held} blocks for a stream nobody reads there"
    );
    let ahead = kms_a.indexes(&hog).len();
    // 4 chunks per block: at most a window (128 blocks) ahead.
    assert!(ahead <= 4 * 130, "A ran {ahead} chunks ahead of B");
    // Another stream still gets key on both sides.
    let ksid = push_stream(
        a.local_addr(),
        b.local_addr(),
        &kms_a,
        &kms_b,
        json!({"key_chunk_size": 32}),
    );
    kms_a.wait_for(&ksid, 1000, 30);
    kms_b.wait_for(&ksid, 1000, 30);
    assert_identical(&kms_a, &kms_b, &ksid, 32);
    // And once B's KMS reads the first stream, it goes on.
    start_pushing(b.local_addr(), hog, None);
    kms_b.wait_for(&hog, ahead, 30);
    kms_a.wait_for(&hog, ahead + 1000, 30);
    a.shut_down();
    b.shut_down();
}

#[test]
fn an_over_long_uri_is_refused_and_the_link_stays_up() {
    // F5: about 1 MiB of URI used to make a link batch above the peer's
    // body limit, answered 413 and resent forever.
    let (a, b) = linked_pair();
    let long = format!("http://127.0.0.1:1/{}", "a".repeat(1_048_400));
    let r = request(
        a.local_addr(),
        "POST",
        OPEN,
        Some(&json!({"source": long, "destination": "http://127.0.0.1:1/", "qos": {}})),
    )
    .unwrap();
    assert_etsi_error(&r, 400, 3, "longer than 2048 bytes");
    // Many streams opened at once (each announced to the peer) go through
    // in batches below the peer's limit.
    let path = format!("/{}", "p".repeat(2000));
    for _ in 0..600 {
        let r = request(
            a.local_addr(),
            "POST",
            OPEN,
            Some(&json!({"source": format!("http://127.0.0.1:1{path}"), "destination": "http://127.0.0.1:1/", "qos": {}})),
        )
        .unwrap();
        assert_eq!(r.status, 201);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(b.local_addr(), "keypipe_streams") < 600.0 {
        assert!(Instant::now() < deadline, "B never learnt them all");
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in [a.local_addr(), b.local_addr()] {
        assert_eq!(request(node, "GET", "/healthz", None).unwrap().status, 200);
    }
    a.shut_down();
    b.shut_down();
}
