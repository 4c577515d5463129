//! Bad input over real sockets: each gets its documented answer, the server
//! keeps serving everyone else, and the key stream running meanwhile loses
//! nothing and hands out nothing twice.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// Sends raw bytes on a fresh connection and reads one answer.
fn raw(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer (and close) before taking everything.
    let _ = s.write_all(bytes);
    read_answer(&mut BufReader::new(s)).unwrap()
}

#[test]
fn bad_requests_get_clear_answers_and_lose_no_key() {
    let (a, b) = linked_pair();
    let (na, nb) = (a.local_addr(), b.local_addr());
    let (kms_a, kms_b) = (TestKms::start(), TestKms::start());
    let ksid = push_stream(na, nb, &kms_a, &kms_b, json!({"key_chunk_size": 32}));
    let post = |body: &str| {
        raw(
            na,
            format!(
                "POST {OPEN} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let open = |v: Value| request(na, "POST", OPEN, Some(&v)).unwrap();

    // Body not JSON, empty, missing and mistyped fields, bad UUID or URL.
    assert_etsi_error(&post("{not json"), 400, 3, "not valid JSON");
    assert_etsi_error(&post(""), 400, 3, "JSON body is required");
    assert_etsi_error(
        &open(json!({"source": "http://127.0.0.1:1", "qos": {}})),
        400,
        3,
        "destination",
    );
    assert_etsi_error(
        &open(
            json!({"source": "http://127.0.0.1:1", "destination": "http://127.0.0.1:2", "qos": {"key_chunk_size": "x"}}),
        ),
        400,
        3,
        "qos.key_chunk_size",
    );
    assert_etsi_error(
        &open(
            json!({"source": "http://127.0.0.1:1", "destination": "http://127.0.0.1:2", "key_stream_id": "nope", "qos": {}}),
        ),
        400,
        3,
        "not a UUID",
    );
    assert_etsi_error(
        &open(json!({"source": "ftp://k", "destination": "http://127.0.0.1:2", "qos": {}})),
        400,
        3,
        "source",
    );
    // Unknown KSID on get-key and close; malformed get-key.
    let unknown = json!({"key_stream_id": uuid::Uuid::new_v4()});
    assert_etsi_error(
        &request(na, "GET", GET_KEY, Some(&unknown)).unwrap(),
        400,
        3,
        "key_stream_id",
    );
    assert_etsi_error(
        &request(na, "PUT", CLOSE, Some(&unknown)).unwrap(),
        400,
        3,
        "key_stream_id",
    );
    assert_etsi_error(
        &request(
            na,
            "GET",
            GET_KEY,
            Some(&json!({"key_stream_id": ksid, "index": -1})),
        )
        .unwrap(),
        400,
        3,
        "index",
    );
    // QoS that cannot be met: 500, status 7, counter-proposal.
    let r = open(
        json!({"source": "http://127.0.0.1:1", "destination": "http://127.0.0.1:2", "qos": {"key_chunk_size": 1_000_000}}),
    );
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["status"], 7);
    assert_eq!(r.json()["qos"]["key_chunk_size"], 4096);

    // Routing: unknown path 404, wrong method 405 with Allow.
    assert_eq!(request(na, "GET", "/nope", None).unwrap().status, 404);
    let r = request(na, "POST", GET_KEY, Some(&unknown)).unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));

    // A 10 MiB body: 413 without reading it all, connection closed.
    let mut big = format!(
        "POST {OPEN} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        10 << 20
    )
    .into_bytes();
    big.resize(big.len() + (10 << 20), b'x');
    let r = raw(na, &big);
    assert_eq!((r.status, r.header("connection")), (413, Some("close")));
    // A 64 KiB header: 431.
    let mut huge = b"GET /healthz HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(huge.len() + (64 << 10), b'a');
    huge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw(na, &huge).status, 431);
    // Version, chunked body, Expect: 100-continue.
    assert_eq!(raw(na, b"GET /healthz HTTP/2.0\r\n\r\n").status, 505);
    let body = json!({"key_stream_id": ksid}).to_string();
    let r = raw(
        na,
        format!(
            "GET {GET_KEY} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 205);

    // Pipelined garbage after a good request: the good one is answered,
    // then 400 and the connection closes.
    let mut s = TcpStream::connect(na).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n\x00\x01garbage\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    assert_eq!(read_answer(&mut reader).unwrap().status, 200);
    let bad = read_answer(&mut reader).unwrap();
    assert_eq!((bad.status, bad.header("connection")), (400, Some("close")));
    let mut rest = Vec::new();
    assert_eq!(
        reader.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the 400"
    );

    // Abrupt disconnect mid-body, on both nodes.
    for node in [na, nb] {
        let mut s = TcpStream::connect(node).unwrap();
        s.write_all(
            format!("POST {OPEN} HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\n{{\"source\":")
                .as_bytes(),
        )
        .unwrap();
        drop(s);
    }

    // Everyone else is still served, and the stream lost nothing.
    assert_eq!(request(na, "GET", "/healthz", None).unwrap().status, 200);
    let n = kms_a.indexes(&ksid).len();
    kms_a.wait_for(&ksid, n + 1000, 30);
    kms_b.wait_for(&ksid, n + 1000, 30);
    assert!(assert_identical(&kms_a, &kms_b, &ksid, 32) >= n + 1000);
    for kms in [&kms_a, &kms_b] {
        let log = kms.log.lock().unwrap();
        assert_eq!((log.repeats, log.conflicts), (0, 0));
        assert_eq!(*log.keys[&ksid].keys().next().unwrap(), 0);
    }
    a.shut_down();
    b.shut_down();
}

#[test]
fn kms_side_refuses_bad_pushes_and_stores_good_ones() {
    // Room for two 32-byte chunks of one stream, bookkeeping included.
    use keypipe_server::kms_side::store::{ENTRY_OVERHEAD, STREAM_OVERHEAD};
    let toml = format!(
        "[[node]]\nname = \"kms\"\nlisten = \"127.0.0.1:{}\"\nserve = [\"etsi004-kms\"]\n[node.kms_side]\nreceived_capacity_bytes = {}\n",
        free_port(),
        STREAM_OVERHEAD + 2 * (32 + ENTRY_OVERHEAD)
    );
    let node = start_nodes(&toml).pop().unwrap();
    let addr = node.local_addr();
    let path = "/api/v1/qkd/etsi004/key-material";
    let ksid = uuid::Uuid::new_v4();
    let push = |index: u32, key: &str| {
        json!({"status": 0, "index": index, "key_buffer": key,
               "metadata": {"size": 55, "buffer": {"key_stream_id": ksid}}})
    };
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // 32 bytes
    let r = request(addr, "POST", path, Some(&push(0, key))).unwrap();
    assert_eq!((r.status, r.json()["status"].clone()), (201, json!(0)));
    // The same again (a node's retry): accepted, stored once.
    assert_eq!(
        request(addr, "POST", path, Some(&push(0, key)))
            .unwrap()
            .status,
        201
    );
    // Same index, other bytes: 409.
    let other = "/wECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    assert_eq!(
        request(addr, "POST", path, Some(&push(0, other)))
            .unwrap()
            .status,
        409
    );
    // An escaped key_buffer (valid JSON) is refused: 400, nothing stored.
    let escaped = json!({"status": 0, "index": 5, "key_buffer": key,
        "metadata": {"size": 55, "buffer": {"key_stream_id": ksid}}})
    .to_string()
    .replacen("AAEC", "\\u0041AEC", 1);
    let mut conn = Conn::open(addr).unwrap();
    write!(
        conn.stream,
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{escaped}",
        escaped.len()
    )
    .unwrap();
    let r = read_answer(&mut conn.reader).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("escapes"));
    // Bad Base64, missing metadata, not JSON: 400.
    assert_eq!(
        request(addr, "POST", path, Some(&push(1, "!!!")))
            .unwrap()
            .status,
        400
    );
    let no_meta = json!({"status": 0, "index": 1, "key_buffer": key});
    let r = request(addr, "POST", path, Some(&no_meta)).unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("key_stream_id")
    );
    // Full store: 503 (the node keeps the chunk and retries).
    assert_eq!(
        request(addr, "POST", path, Some(&push(1, key)))
            .unwrap()
            .status,
        201
    );
    let r = request(addr, "POST", path, Some(&push(2, key))).unwrap();
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
    node.shut_down();
}

#[test]
fn open_connects_waiting_for_the_peer_are_bounded() {
    // pool_threads = 4 in the test config: at most 3 calls wait at once.
    let (a, b) = linked_pair();
    let addr = b.local_addr();
    let named = || {
        json!({"source": "http://127.0.0.1:1", "destination": "http://127.0.0.1:2",
               "key_stream_id": uuid::Uuid::new_v4(), "qos": {"timeout": 1500}})
    };
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let body = named();
            std::thread::spawn(move || request(addr, "POST", OPEN, Some(&body)).unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let refused = request(addr, "POST", OPEN, Some(&named())).unwrap();
    assert_etsi_error(&refused, 500, 6, "too many");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "answered without waiting"
    );
    // The waiting ones end after their timeout with the stream opened on
    // this side only (status 1: the peer side has not opened it).
    for w in waiting {
        let r = w.join().unwrap();
        assert_eq!((r.status, r.json()["status"].clone()), (201, json!(1)));
    }
    // Room again.
    let r = request(addr, "POST", OPEN, Some(&named())).unwrap();
    assert_eq!(r.status, 201);
    a.shut_down();
    b.shut_down();
}
