//! ETSI GS QKD 014 between two KMEs, each its own `keypipe serve` process,
//! over real TLS with SAE client certificates from keypipe's CA: the
//! conformance checks real test tooling applies, concurrency, and kill -9
//! of either node.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::etsi014::{Kmes, assert_refused, keys_of};
use support::tls::TlsConn;
use uuid::Uuid;

const NOT_FOUND: &str = "one or more keys specified are not found on KME";

fn enc(master: &str) -> String {
    format!("/api/v1/keys/{master}/enc_keys")
}

fn dec(master: &str) -> String {
    format!("/api/v1/keys/{master}/dec_keys")
}

fn ids_body(ids: &[Uuid]) -> serde_json::Value {
    json!({ "key_IDs": ids.iter().map(|id| json!({"key_ID": id})).collect::<Vec<_>>() })
}

#[test]
fn keys_from_either_node_resolve_on_the_other_get_and_post_alike() {
    let dir = tempfile::tempdir().unwrap();
    let kmes = Kmes::start(dir.path(), [&["sae-a"], &["sae-b", "sae-c"]], "");
    kmes.wait_ready(0, "sae-a", "sae-b");
    let mut a = kmes.conn(0, "sae-a");
    let mut b = kmes.conn(1, "sae-b");

    // Status: the caller from its certificate, the slave from the path.
    let st = a.send("GET", "/api/v1/keys/sae-b/status", None).unwrap();
    assert_eq!(st.status, 200);
    let st = st.json();
    assert_eq!(st["source_KME_ID"], "node-a");
    assert_eq!(st["target_KME_ID"], "node-b");
    assert_eq!(st["master_SAE_ID"], "sae-a");
    assert_eq!(st["slave_SAE_ID"], "sae-b");
    assert_eq!(
        st["max_SAE_ID_count"], 1,
        "one SAE of node B beside the slave"
    );
    for field in ["stored_key_count", "max_key_count", "max_key_per_request"] {
        assert!(st[field].as_u64().unwrap() > 0, "{field}: {st}");
    }
    let key_size = st["key_size"].as_u64().unwrap() as usize;

    // The defaults match the status: one key of key_size bits, by GET
    // with no query and by POST with an empty body.
    let got = keys_of(&a.send("GET", &enc("sae-b"), None).unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.len() * 8, key_size);
    let posted = keys_of(&a.send_raw("POST", &enc("sae-b"), b"").unwrap());
    assert_eq!(posted.len(), 1);
    assert_ne!(posted[0], got[0]);
    // number=5 gives 5 keys; size=1024 gives 128 bytes; GET and POST alike.
    let five = keys_of(
        &a.send("GET", &format!("{}?number=5&size=1024", enc("sae-b")), None)
            .unwrap(),
    );
    assert_eq!(five.len(), 5);
    assert!(five.iter().all(|(_, k)| k.len() == 128));
    let post_five = keys_of(
        &a.send("POST", &enc("sae-b"), Some(&json!({"number": 5, "size": 1024, "extension_optional": [{"x_y": 1}], "additional_target_sae_ids": []})))
            .unwrap(),
    );
    assert_eq!(post_five.len(), 5);
    assert!(post_five.iter().all(|(_, k)| k.len() == 128));

    // Node B resolves them: GET with one id, POST with several, same bytes.
    let one = keys_of(
        &b.send(
            "GET",
            &format!("{}?key_ID={}", dec("sae-a"), got[0].0),
            None,
        )
        .unwrap(),
    );
    assert_eq!(one, got);
    let ids: Vec<Uuid> = five.iter().chain(&posted).map(|(id, _)| *id).collect();
    let back = keys_of(
        &b.send("POST", &dec("sae-a"), Some(&ids_body(&ids)))
            .unwrap(),
    );
    let sent: Vec<_> = five.iter().chain(&posted).cloned().collect();
    assert_eq!(back, sent);
    // Once: a replay is refused, and so is a mix with a fresh id (nothing
    // of the fresh one is taken).
    let replay = b
        .send(
            "GET",
            &format!("{}?key_ID={}", dec("sae-a"), got[0].0),
            None,
        )
        .unwrap();
    assert_refused(&replay, 400, Some(NOT_FOUND));
    let fresh = post_five[0].0;
    let mixed = b
        .send("POST", &dec("sae-a"), Some(&ids_body(&[fresh, got[0].0])))
        .unwrap();
    assert_refused(&mixed, 400, Some(NOT_FOUND));
    let fresh_back = keys_of(
        &b.send("POST", &dec("sae-a"), Some(&ids_body(&[fresh])))
            .unwrap(),
    );
    assert_eq!(fresh_back[0], post_five[0]);

    // The other direction, its own index space: sae-b as master.
    kmes.wait_ready(1, "sae-b", "sae-a");
    let from_b = keys_of(
        &b.send("GET", &format!("{}?number=3", enc("sae-a")), None)
            .unwrap(),
    );
    let at_a = keys_of(
        &a.send(
            "POST",
            &dec("sae-b"),
            Some(&ids_body(&from_b.iter().map(|k| k.0).collect::<Vec<_>>())),
        )
        .unwrap(),
    );
    assert_eq!(at_a, from_b);
    let everything: Vec<&Vec<u8>> = got
        .iter()
        .chain(&posted)
        .chain(&five)
        .chain(&post_five)
        .chain(&from_b)
        .map(|(_, k)| k)
        .collect();
    for (i, k) in everything.iter().enumerate() {
        assert!(!everything[..i].contains(k), "a key was given twice");
    }
}

#[test]
fn third_saes_multicast_and_every_bad_request() {
    let dir = tempfile::tempdir().unwrap();
    let kmes = Kmes::start(dir.path(), [&["sae-a", "sae-d"], &["sae-b", "sae-c"]], "");
    kmes.pki.client("kms-x", "kms");
    kmes.wait_ready(0, "sae-a", "sae-b");
    let mut a = kmes.conn(0, "sae-a");
    let mut b = kmes.conn(1, "sae-b");
    let mut c = kmes.conn(1, "sae-c");

    // A key for sae-b is not sae-c's (401, with a JSON body), nor can an
    // SAE of node A, or a certificate of another role, fetch it.
    let k = keys_of(&a.send("GET", &enc("sae-b"), None).unwrap());
    let path = format!("{}?key_ID={}", dec("sae-a"), k[0].0);
    assert_refused(&c.send("GET", &path, None).unwrap(), 401, None);
    let mut d = kmes.conn(1, "sae-d");
    assert_refused(&d.send("GET", &path, None).unwrap(), 401, None);
    let mut kms =
        support::tls::TlsConn::open(kmes.nodes[1].addr(), &kmes.pki.client_config("kms-x"))
            .unwrap();
    assert_refused(&kms.send("GET", &path, None).unwrap(), 401, None);
    // ... and nothing was taken by those tries.
    assert_eq!(keys_of(&b.send("GET", &path, None).unwrap()), k);
    // No client certificate: no TLS session at all.
    let anonymous = support::tls::client_config(&kmes.pki.ca(), None);
    let refused = support::tls::TlsConn::open(kmes.nodes[0].addr(), &anonymous)
        .and_then(|mut conn| conn.send("GET", "/api/v1/keys/sae-b/status", None));
    assert!(refused.is_err(), "{:?}", refused.map(|r| r.status));

    // Multicast: sae-b and sae-c each get the keys, once.
    let multi = keys_of(
        &a.send(
            "POST",
            &enc("sae-b"),
            Some(&json!({"number": 2, "additional_slave_SAE_IDs": ["sae-c"]})),
        )
        .unwrap(),
    );
    let ids: Vec<Uuid> = multi.iter().map(|k| k.0).collect();
    assert_eq!(
        keys_of(
            &c.send("POST", &dec("sae-a"), Some(&ids_body(&ids)))
                .unwrap()
        ),
        multi
    );
    assert_eq!(
        keys_of(
            &b.send("POST", &dec("sae-a"), Some(&ids_body(&ids)))
                .unwrap()
        ),
        multi
    );
    for conn in [&mut b, &mut c] {
        let again = conn
            .send("POST", &dec("sae-a"), Some(&ids_body(&ids)))
            .unwrap();
        assert_refused(&again, 400, Some(NOT_FOUND));
    }

    // Bad sizes and numbers, as a query and as JSON (numbers and strings).
    for query in [
        "size=0",
        "size=-8",
        "size=abc01",
        "number=0",
        "number=-8",
        "number=abc01",
        "size=100000",
        "number=100000",
    ] {
        let r = a
            .send("GET", &format!("{}?{query}", enc("sae-b")), None)
            .unwrap();
        assert_refused(&r, 400, None);
    }
    let r = a
        .send("GET", &format!("{}?size=100", enc("sae-b")), None)
        .unwrap();
    assert_refused(&r, 400, Some("size shall be a multiple of 8"));
    for body in [
        json!({"size": 0}),
        json!({"size": -8}),
        json!({"size": "abc01"}),
        json!({"size": "256"}),
        json!({"number": 0}),
        json!({"number": -8}),
        json!({"number": "abc01"}),
        json!({"number": 1.5}),
        json!({"additional_slave_SAE_IDs": [" "]}),
        json!({"additional_slave_SAE_IDs": ["sae-c", "sae-c"]}),
        json!({"additional_slave_SAE_IDs": ["sae-b"]}),
        json!({"additional_slave_SAE_IDs": ["sae-a"]}),
        json!({"additional_slave_SAE_IDs": []}),
        json!({"additional_slave_SAE_IDs": "sae-c"}),
    ] {
        let r = a.send("POST", &enc("sae-b"), Some(&body)).unwrap();
        assert_refused(&r, 400, None);
    }
    let r = a
        .send("POST", &enc("sae-b"), Some(&json!({"size": 100})))
        .unwrap();
    assert_refused(&r, 400, Some("size shall be a multiple of 8"));
    let r = a
        .send(
            "POST",
            &enc("sae-b"),
            Some(&json!({"extension_mandatory": [{"abc_route_type": "direct"}]})),
        )
        .unwrap();
    assert_refused(
        &r,
        400,
        Some("not all extension_mandatory parameters are supported"),
    );
    let r = a.send_raw("POST", &enc("sae-b"), b"{not json").unwrap();
    assert_refused(&r, 400, None);
    // SAE IDs in the path: blank, the caller itself, unknown, on the same node.
    for (path, method) in [
        ("/api/v1/keys/%20/enc_keys", "GET"),
        (
            "/api/v1/keys/%20/dec_keys?key_ID=00000000-0000-0000-0000-000000000000",
            "GET",
        ),
        ("/api/v1/keys/%20/status", "GET"),
        ("/api/v1/keys/sae-a/enc_keys", "GET"),
        ("/api/v1/keys/sae-a/status", "GET"),
        ("/api/v1/keys/nobody/enc_keys", "GET"),
        ("/api/v1/keys/sae-d/enc_keys", "GET"),
    ] {
        assert_refused(&a.send(method, path, None).unwrap(), 400, None);
    }
    // Bad key ids: not UUIDs, none, unknown.
    for (method, path, body) in [
        ("GET", format!("{}?key_ID=not-a-uuid", dec("sae-a")), None),
        ("GET", dec("sae-a"), None),
        (
            "POST",
            dec("sae-a"),
            Some(json!({"key_IDs": [{"key_ID": "abc"}]})),
        ),
        ("POST", dec("sae-a"), Some(json!({"key_IDs": []}))),
        (
            "POST",
            dec("sae-a"),
            Some(json!({"key_ID": Uuid::new_v4()})),
        ),
    ] {
        assert_refused(&b.send(method, &path, body.as_ref()).unwrap(), 400, None);
    }
    let unknown = b
        .send(
            "GET",
            &format!("{}?key_ID={}", dec("sae-a"), Uuid::new_v4()),
            None,
        )
        .unwrap();
    assert_refused(&unknown, 400, Some(NOT_FOUND));
    // Other paths and methods are JSON too; HEAD never takes key.
    assert_refused(
        &a.send("GET", "/api/v1/keys/sae-b/nothing", None).unwrap(),
        404,
        None,
    );
    assert_refused(&a.send("PUT", &enc("sae-b"), None).unwrap(), 405, None);
    assert_refused(
        &a.send("POST", "/api/v1/keys/sae-b/status", None).unwrap(),
        405,
        None,
    );
    {
        use std::io::{BufRead, Write};
        let mut h = kmes.conn(0, "sae-a");
        let text = format!("HEAD {} HTTP/1.1\r\nHost: localhost\r\n\r\n", enc("sae-b"));
        h.stream.get_mut().write_all(text.as_bytes()).unwrap();
        let mut line = String::new();
        h.stream.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 405"), "{line}");
    }
    // After all that, a good request is still served.
    assert_eq!(
        keys_of(&a.send("GET", &enc("sae-b"), None).unwrap()).len(),
        1
    );
}

/// What the load threads saw: key id -> bytes, on each node.
#[derive(Default)]
struct Seen {
    issued: HashMap<Uuid, Vec<u8>>,
    resolved: HashMap<Uuid, Vec<u8>>,
    /// Ids issued twice, or resolved twice.
    repeats: Vec<Uuid>,
    /// Issued keys whose resolution failed (a node was down or restarted).
    unresolved: usize,
}

/// Where the load goes: the master's node and the slave's node, as each
/// SAE.
#[derive(Clone)]
struct Target {
    addrs: [std::net::SocketAddr; 2],
    configs: [Arc<rustls::ClientConfig>; 2],
    /// Master and slave SAE IDs.
    saes: [&'static str; 2],
}

impl Target {
    /// sae-a (node A) as master and sae-b (node B) as slave, or the other
    /// way round.
    fn of(kmes: &Kmes, master_node: usize) -> Target {
        let saes = ["sae-a", "sae-b"];
        let (m, s) = (master_node, 1 - master_node);
        Target {
            addrs: [kmes.nodes[m].addr(), kmes.nodes[s].addr()],
            configs: [
                kmes.pki.client_config(saes[m]),
                kmes.pki.client_config(saes[s]),
            ],
            saes: [saes[m], saes[s]],
        }
    }
}

/// `threads` connections, each issuing on the master's node and resolving
/// on the slave's, until `stop`; sizes and numbers vary.
fn load(
    target: &Target,
    threads: usize,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Mutex<Seen>>,
) -> Vec<std::thread::JoinHandle<usize>> {
    (0..threads)
        .map(|t| {
            let (target, stop, seen) = (target.clone(), Arc::clone(stop), Arc::clone(seen));
            std::thread::spawn(move || {
                let mut done = 0usize;
                let mut conns: Option<(TlsConn, TlsConn)> = None;
                let sizes = [256, 64, 512, 1024, 128];
                while !stop.load(Ordering::Relaxed) {
                    if conns.is_none() {
                        match (
                            TlsConn::open(target.addrs[0], &target.configs[0]),
                            TlsConn::open(target.addrs[1], &target.configs[1]),
                        ) {
                            (Ok(a), Ok(b)) => conns = Some((a, b)),
                            _ => {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        }
                    }
                    let (a, b) = conns.as_mut().unwrap();
                    let size = sizes[(t + done) % sizes.len()];
                    let number = 1 + (t + done) % 4;
                    let path = format!("{}?number={number}&size={size}", enc(target.saes[1]));
                    let issued = match a.send("GET", &path, None) {
                        Ok(r) if r.status == 200 => keys_of(&r),
                        Ok(r) => {
                            assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(_) => {
                            conns = None;
                            continue;
                        }
                    };
                    {
                        let mut s = seen.lock().unwrap();
                        for (id, key) in &issued {
                            if s.issued.insert(*id, key.clone()).is_some() {
                                s.repeats.push(*id);
                            }
                        }
                    }
                    let ids: Vec<Uuid> = issued.iter().map(|k| k.0).collect();
                    match b.send("POST", &dec(target.saes[0]), Some(&ids_body(&ids))) {
                        Ok(r) if r.status == 200 => {
                            let mut s = seen.lock().unwrap();
                            for (id, key) in keys_of(&r) {
                                if s.resolved.insert(id, key).is_some() {
                                    s.repeats.push(id);
                                }
                            }
                        }
                        Ok(r) => {
                            assert_refused(&r, 400, Some(NOT_FOUND));
                            seen.lock().unwrap().unresolved += ids.len();
                        }
                        Err(_) => {
                            seen.lock().unwrap().unresolved += ids.len();
                            conns = None;
                        }
                    }
                    done += 1;
                }
                done
            })
        })
        .collect()
}

/// Every resolved id has the issued bytes; no id and no key twice.
fn check(seen: &Seen) {
    assert!(seen.repeats.is_empty(), "served twice: {:?}", seen.repeats);
    for (id, key) in &seen.resolved {
        assert_eq!(
            seen.issued.get(id),
            Some(key),
            "{id} resolved to other bytes"
        );
    }
    let mut values: HashMap<&[u8], Uuid> = HashMap::new();
    for (id, key) in &seen.issued {
        if let Some(other) = values.insert(key.as_slice(), *id) {
            panic!("{id} and {other} carry the same key");
        }
    }
}

fn secs(default: u64) -> Duration {
    Duration::from_secs(
        std::env::var("KEYPIPE_014_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

#[test]
fn eight_connections_issue_and_resolve_at_once_and_nothing_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let kmes = Kmes::start(dir.path(), [&["sae-a"], &["sae-b"]], "");
    kmes.wait_ready(0, "sae-a", "sae-b");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let threads = load(&Target::of(&kmes, 0), 8, &stop, &seen);
    std::thread::sleep(secs(10));
    stop.store(true, Ordering::Relaxed);
    let rounds: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let seen = seen.lock().unwrap();
    check(&seen);
    assert!(rounds > 100, "only {rounds} rounds");
    assert_eq!(
        seen.resolved.len(),
        seen.issued.len(),
        "every issued key resolved once on node B"
    );
}

#[test]
fn kill_9_of_either_node_loses_no_served_key_and_serves_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut kmes = Kmes::start(dir.path(), [&["sae-a"], &["sae-b"]], "");
    kmes.wait_ready(0, "sae-a", "sae-b");
    kmes.wait_ready(1, "sae-b", "sae-a");
    // Both directions at once: node A issues for sae-a, node B for sae-b.
    let targets = [Target::of(&kmes, 0), Target::of(&kmes, 1)];
    let seen = Arc::new(Mutex::new(Seen::default()));
    for victim in [0usize, 1, 0, 1] {
        // Keys served to each master and not fetched before the kill.
        let pending: Vec<Vec<(Uuid, Vec<u8>)>> = targets
            .iter()
            .enumerate()
            .map(|(m, t)| {
                let path = format!("{}?number=20", enc(t.saes[1]));
                keys_of(&kmes.conn(m, t.saes[0]).send("GET", &path, None).unwrap())
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = targets
            .iter()
            .flat_map(|t| load(t, 2, &stop, &seen))
            .collect();
        std::thread::sleep(Duration::from_millis(800));
        kmes.nodes[victim].kill();
        std::thread::sleep(Duration::from_millis(300));
        kmes.nodes[victim].start();
        kmes.wait_ready(0, "sae-a", "sae-b");
        kmes.wait_ready(1, "sae-b", "sae-a");
        std::thread::sleep(Duration::from_millis(800));
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        for (m, (t, keys)) in targets.iter().zip(&pending).enumerate() {
            let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
            let r = kmes
                .conn(1 - m, t.saes[1])
                .send("POST", &dec(t.saes[0]), Some(&ids_body(&ids)))
                .unwrap();
            if victim == m {
                // The master's node died: every key it served is still at
                // the slave's node, with its bytes.
                assert_eq!(
                    &keys_of(&r),
                    keys,
                    "{} -> {}, node {victim} killed",
                    t.saes[0],
                    t.saes[1]
                );
            } else {
                // The slave's node died: the copies it held in memory died
                // with it (never written to disk, by design); they are
                // refused, never replaced by other bytes.
                assert_refused(&r, 400, Some(NOT_FOUND));
            }
            let mut s = seen.lock().unwrap();
            for (id, key) in keys {
                if s.issued.insert(*id, key.clone()).is_some() {
                    s.repeats.push(*id);
                }
            }
        }
    }
    let seen = seen.lock().unwrap();
    check(&seen);
    assert!(
        seen.resolved.len() > 100,
        "{} resolved",
        seen.resolved.len()
    );
}
