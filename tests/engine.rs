//! Engine behaviour over real threads, real key files and the real
//! simulated link: identical keys at both ends, uniqueness, statuses,
//! TTL and close zeroization, backpressure.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use keypipe_server::qkd::{
    DeviceConfig, Engine, EngineConfig, GetKeyError, GetKeyReply, Qos, Status,
};
use uuid::Uuid;

fn qos(chunk: u32, timeout: u32) -> Qos {
    Qos {
        key_chunk_size: chunk,
        timeout,
        ..Qos::default()
    }
}

/// Opens a stream on A and the same KSID on B.
fn open_both(a: &Engine, b: &Engine, q: &Qos) -> Uuid {
    let ra = a.open_connect("kms-a", "kms-b", q, None);
    assert_eq!(ra.status, Status::PeerNotConnected);
    let ksid = ra.ksid.unwrap();
    let rb = b.open_connect("kms-a", "kms-b", &qos(1, 2000), Some(ksid));
    assert_eq!(rb.status, Status::Successful, "{rb:?}");
    assert_eq!(rb.qos, ra.qos, "destination inherits the source's QoS");
    ksid
}

fn key(e: &Engine, ksid: &Uuid, index: u32, chunk: usize) -> Vec<u8> {
    let mut out = vec![0u8; chunk];
    let reply = e.get_key(ksid, index, &mut out, Some(64)).unwrap();
    assert!(
        matches!(reply, GetKeyReply::Key { index: i, .. } if i == index),
        "index {index}: {reply:?}"
    );
    out
}

/// A key file whose 4-byte words are a big-endian counter: every word
/// names its own position, so a chunk tells exactly which bytes it holds.
fn counter_file(words: u32) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..words).flat_map(u32::to_be_bytes).collect();
    f.write_all(&bytes).unwrap();
    f
}

fn file_config(
    path: &std::path::Path,
    block_size: usize,
    arena: usize,
    ring: usize,
) -> EngineConfig {
    EngineConfig {
        block_size,
        arena_blocks: arena,
        ring_blocks: ring,
        device: DeviceConfig::File {
            path: path.to_path_buf(),
            format: Default::default(),
        },
        // A key file can repeat key after a restart: the ledger is needed.
        data_dir: Some(tempfile::tempdir().unwrap().keep()),
        ..EngineConfig::default()
    }
}

fn words(chunk: &[u8]) -> Vec<u32> {
    chunk
        .chunks_exact(4)
        .map(|w| u32::from_be_bytes(w.try_into().unwrap()))
        .collect()
}

#[test]
fn same_ksid_and_index_give_same_bytes_in_any_order_and_across_wrap() {
    let (a, b) = Engine::pair(&EngineConfig::default()).unwrap();
    let ksid = open_both(&a, &b, &qos(48, 2000));
    // A ascending, B descending: 48-byte chunks straddle 4096-byte blocks.
    let from_a: Vec<_> = (0..300).map(|i| key(&a, &ksid, i, 48)).collect();
    let from_b: Vec<_> = (0..300).rev().map(|i| key(&b, &ksid, i, 48)).collect();
    for (i, (x, y)) in from_a.iter().zip(from_b.iter().rev()).enumerate() {
        assert_eq!(x, y, "index {i}");
    }
    let distinct: HashSet<_> = from_a.iter().collect();
    assert_eq!(distinct.len(), 300);
}

#[test]
fn indexes_wrap_at_u32_max_with_fresh_key() {
    let (a, b) = Engine::pair(&EngineConfig::default()).unwrap();
    let ksid = open_both(&a, &b, &qos(32, 2000));
    let lap_end: Vec<u32> = (u32::MAX - 3..=u32::MAX).collect();
    let next_lap: Vec<u32> = (0..4).collect();
    // A reads in order through the wrap; B reads each lap backwards, at the
    // same time (flow control keeps either from running far ahead alone).
    let (a, b) = (Arc::new(a), Arc::new(b));
    let reader_b = {
        let (b, lap_end, next_lap) = (Arc::clone(&b), lap_end.clone(), next_lap.clone());
        thread::spawn(move || -> HashMap<u32, Vec<u8>> {
            lap_end
                .iter()
                .rev()
                .chain(next_lap.iter().rev())
                .map(|&i| (i, key(&b, &ksid, i, 32)))
                .collect()
        })
    };
    let at_a: HashMap<u32, Vec<u8>> = lap_end
        .iter()
        .chain(&next_lap)
        .map(|&i| (i, key(&a, &ksid, i, 32)))
        .collect();
    let at_b = reader_b.join().unwrap();
    assert_eq!(at_a, at_b);
    let distinct: HashSet<_> = at_a.values().collect();
    assert_eq!(distinct.len(), 8, "index 0 after the wrap is new key");
    // Asking again for an index already delivered is refused, never answered.
    let mut out = [0u8; 32];
    assert_eq!(
        a.get_key(&ksid, 2, &mut out, None),
        Err(GetKeyError::Consumed)
    );
    assert_eq!(
        b.get_key(&ksid, u32::MAX, &mut out, None),
        Err(GetKeyError::Consumed)
    );
    assert_eq!(out, [0u8; 32], "refused call leaves the buffer untouched");
}

#[test]
fn many_threads_and_streams_never_share_a_byte_and_agree_pairwise() {
    const STREAMS: usize = 6;
    const PER_THREAD: u32 = 400;
    let file = counter_file(1 << 20);
    let config = file_config(file.path(), 256, 2048, 64);
    let (a, b) = Engine::pair(&config).unwrap();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let ksids: Vec<Uuid> = (0..STREAMS)
        .map(|_| open_both(&a, &b, &qos(16, 5000)))
        .collect();
    // Per stream, per node, two threads: one takes even indexes, one odd.
    let mut handles = Vec::new();
    for (s, ksid) in ksids.iter().enumerate() {
        for (node, engine) in [("a", &a), ("b", &b)] {
            for parity in 0..2u32 {
                let (engine, ksid) = (Arc::clone(engine), *ksid);
                handles.push(thread::spawn(move || {
                    let mut got = Vec::new();
                    for n in 0..PER_THREAD {
                        let index = if node == "a" {
                            2 * n + parity
                        } else {
                            2 * (PER_THREAD - 1 - n) + parity
                        };
                        got.push(((s, index), key(&engine, &ksid, index, 16)));
                    }
                    (node, got)
                }));
            }
        }
    }
    let mut per_node: HashMap<&str, HashMap<(usize, u32), Vec<u8>>> = HashMap::new();
    for h in handles {
        let (node, got) = h.join().unwrap();
        for (k, v) in got {
            assert!(
                per_node.entry(node).or_default().insert(k, v).is_none(),
                "chunk {k:?} handed out twice on {node}"
            );
        }
    }
    assert_eq!(
        per_node["a"], per_node["b"],
        "both nodes give identical chunks"
    );
    // Each chunk is 4 consecutive words of the file; no word is in two chunks.
    let mut seen = HashSet::new();
    for chunk in per_node["a"].values() {
        let w = words(chunk);
        assert!(
            w.windows(2).all(|p| p[1] == p[0] + 1),
            "chunk is contiguous key: {w:?}"
        );
        for word in w {
            assert!(
                seen.insert(word),
                "byte position {} handed to two chunks",
                word * 4
            );
        }
    }
    assert_eq!(seen.len(), STREAMS * PER_THREAD as usize * 2 * 4);
}

#[test]
fn every_status_has_its_scenario() {
    // 16-byte blocks at 1280 bit/s: 10 blocks a second, so key runs short.
    let config = EngineConfig {
        block_size: 16,
        arena_blocks: 64,
        ring_blocks: 4,
        device: DeviceConfig::Simulated {
            rate_bps: 1280,
            link_secret: None,
        },
        ..EngineConfig::default()
    };
    let (a, b) = Engine::pair(&config).unwrap();
    let mut out = [0u8; 16];
    // 7: chunk size 0, above the maximum, min_bps above the link rate.
    for bad in [
        qos(0, 0),
        qos(65537, 0),
        Qos {
            min_bps: 10_000,
            ..qos(16, 0)
        },
    ] {
        let r = a.open_connect("a", "b", &bad, None);
        assert_eq!(r.status, Status::QosNotMet, "{bad:?}");
        assert!(r.ksid.is_none(), "nothing created");
    }
    // 1, then 3 (timeout 0, peer side not open), then 5.
    let r = a.open_connect("a", "b", &qos(16, 0), None);
    assert_eq!(r.status, Status::PeerNotConnected);
    let ksid = r.ksid.unwrap();
    assert_eq!(
        a.get_key(&ksid, 0, &mut out, None),
        Ok(GetKeyReply::Status(Status::PeerNotConnectedGetKey))
    );
    assert_eq!(
        a.open_connect("a", "b", &qos(16, 0), Some(ksid)).status,
        Status::KsidInUse
    );
    // 0 at B (inherits the source's QoS: timeout 0).
    let rb = b.open_connect("a", "b", &qos(16, 1000), Some(ksid));
    assert_eq!((rb.status, rb.qos.timeout), (Status::Successful, 0));
    // B's open reaches A over the link (until then A answers 3); then
    // far indexes, each needing a fresh block, drain the ring until the
    // slow link has no key: 2 (timeout 0 never waits).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut far = 10_000;
    loop {
        assert!(Instant::now() < deadline, "never ran out of key");
        match a.get_key(&ksid, far, &mut out, None).unwrap() {
            GetKeyReply::Status(Status::PeerNotConnectedGetKey) => {
                thread::sleep(Duration::from_millis(1))
            }
            GetKeyReply::Key { .. } => far += 1,
            GetKeyReply::Status(Status::InsufficientKey) => break,
            other => panic!("{other:?}"),
        }
    }
    out = [0; 16];
    // 8: metadata buffer too small, key not consumed; then 0 with room.
    let needed = loop {
        match a.get_key(&ksid, 0, &mut out, Some(3)).unwrap() {
            GetKeyReply::MetadataTooSmall { needed } => break needed,
            GetKeyReply::Status(Status::InsufficientKey) => thread::sleep(Duration::from_millis(5)),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(out, [0u8; 16], "no key written with status 8");
    let reply = a.get_key(&ksid, 0, &mut out, Some(needed)).unwrap();
    let GetKeyReply::Key {
        metadata: Some(m), ..
    } = reply
    else {
        panic!("{reply:?}")
    };
    assert_eq!(m.len(), needed);
    let meta: serde_json::Value = serde_json::from_str(m.as_str()).unwrap();
    assert_eq!(meta["hops"], 0);
    assert!(meta["age_ms"].as_u64().is_some());
    // 6: a stream with a timeout, waiting for key the link has not made.
    let r = a.open_connect("a", "b", &qos(16, 60), None);
    let slow = r.ksid.unwrap();
    b.open_connect("a", "b", &qos(16, 1000), Some(slow));
    let started = Instant::now();
    assert_eq!(
        a.get_key(&slow, 50_000, &mut out, None),
        Ok(GetKeyReply::Status(Status::Timeout))
    );
    assert!(started.elapsed() >= Duration::from_millis(60));
    // 4: the link goes down; once the ring is drained, no key.
    a.link_control().unwrap().set_down(true);
    let mut status = Status::Successful;
    for i in 0..200u32 {
        status = a.get_key(&slow, 100 + i, &mut out, None).unwrap().status();
        if status == Status::NoQkdConnection {
            break;
        }
    }
    assert_eq!(status, Status::NoQkdConnection);
    assert_eq!(
        a.open_connect("a", "b", &qos(16, 0), None).status,
        Status::NoQkdConnection
    );
    a.link_control().unwrap().set_down(false);
    thread::sleep(Duration::from_millis(150));
    assert_eq!(
        a.open_connect("a", "b", &qos(16, 0), None).status,
        Status::PeerNotConnected,
        "usable again"
    );
}

#[test]
fn bad_arguments_are_refused_and_the_engine_stays_usable() {
    let (a, b) = Engine::pair(&EngineConfig::default()).unwrap();
    let ksid = open_both(&a, &b, &qos(64, 1000));
    let mut short = [0xEEu8; 63];
    assert_eq!(
        a.get_key(&ksid, 0, &mut short, None),
        Err(GetKeyError::BufferTooSmall { needed: 64 })
    );
    assert_eq!(short, [0xEE; 63]);
    assert_eq!(
        a.get_key(&Uuid::new_v4(), 0, &mut [0; 64], None),
        Err(GetKeyError::UnknownStream)
    );
    assert!(a.close(&Uuid::new_v4()).is_err());
    assert!(EngineConfig::from_toml("block_size = \"big\"").is_err());
    assert!(
        Engine::pair(&EngineConfig {
            block_size: 8,
            ..EngineConfig::default()
        })
        .is_err()
    );
    assert_eq!(key(&a, &ksid, 0, 64), key(&b, &ksid, 0, 64));
}

/// Waits up to 30 s (a loaded runner is slow) for `done`.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Indexes of free arena slots that do not read all zero.
fn dirty_free_slots(e: &Engine) -> Vec<u32> {
    (0..e.arena().capacity() as u32)
        .filter(|&i| {
            e.arena()
                .peek_free_slot(i)
                .is_some_and(|b| b.iter().any(|&x| x != 0))
        })
        .collect()
}

#[test]
fn ttl_expiry_and_close_zeroize_undelivered_key() {
    let file = counter_file(1 << 16);
    let config = file_config(file.path(), 64, 128, 8);
    let (a, b) = Engine::pair(&config).unwrap();
    let ksid = open_both(
        &a,
        &b,
        &Qos {
            ttl: 1,
            ..qos(16, 1000)
        },
    );
    // Take chunk 0 on A: A now holds block 0 with 3 undelivered chunks.
    let first = key(&a, &ksid, 0, 16);
    assert_eq!(
        key(&b, &ksid, 0, 16),
        first,
        "B holds its own copy of the block"
    );
    let held = a.stats().arena_capacity - a.stats().arena_free - a.stats().ring_len;
    assert_eq!(held, 1);
    // The TTL is 1 s: wait for the link thread's sweep (late on a loaded
    // runner), which must zeroize the block before anyone asks for it.
    wait_until("the sweep expires the block", || {
        a.stats().counters.expired > 0
    });
    // Chunk 1 of that block is gone.
    let mut out = [0u8; 16];
    assert_eq!(
        a.get_key(&ksid, 1, &mut out, None),
        Err(GetKeyError::Consumed)
    );
    assert!(dirty_free_slots(&a).is_empty(), "expired slot zeroized");

    // Close: undelivered key on the closing node is zeroized at once.
    // B's copy of the expired block goes at B's own sweep.
    wait_until("B's expired block released", || b.stats().held_blocks == 0);
    let ksid = open_both(&a, &b, &qos(16, 1000));
    let first = key(&a, &ksid, 0, 16);
    // The block reaches B unasked. Wait for it: had B to ask, and A to
    // answer after its close, the answer would be that the block is lost
    // and B would (rightly) drop it: a race this test is not about.
    wait_until("B holds the block", || b.stats().held_blocks == 1);
    let before = a.stats().counters.expired;
    assert_eq!(a.close(&ksid), Ok(Status::Successful));
    assert!(a.stats().counters.expired > before);
    assert!(
        dirty_free_slots(&a).is_empty(),
        "closed stream's slot zeroized"
    );
    // No new key for the stream anywhere; B still gets what it holds.
    assert_eq!(key(&b, &ksid, 0, 16), first);
    assert_eq!(
        b.get_key(&ksid, 1, &mut out, None).unwrap().status(),
        Status::Successful
    );
    assert_eq!(
        b.get_key(&ksid, 500, &mut out, None).unwrap().status(),
        Status::PeerNotConnectedGetKey
    );
    assert_eq!(b.close(&ksid), Ok(Status::Successful));
    thread::sleep(Duration::from_millis(50));
    assert_eq!(
        a.stats().streams,
        1,
        "only the expired-TTL stream remains known"
    );
}

#[test]
fn dropped_blocks_never_happen_under_backpressure() {
    let file = counter_file(1 << 16);
    let config = file_config(file.path(), 64, 64, 4);
    let (a, b) = Engine::pair(&config).unwrap();
    let ksid = open_both(&a, &b, &qos(64, 2000));
    // Nobody reads for a while: the ring fills and the pollers stall.
    thread::sleep(Duration::from_millis(100));
    assert!(a.stats().counters.ring_full_stalls > 0);
    assert_eq!(a.stats().ring_len, 4);
    // Then the whole stream reads back contiguous key: no block skipped.
    // Block 0 of a raw key file names the file and is never key.
    let mut expect = 16u32;
    for i in 0..500 {
        let chunk = key(&a, &ksid, i, 64);
        assert_eq!(chunk, key(&b, &ksid, i, 64));
        for w in words(&chunk) {
            assert_eq!(w, expect, "index {i}");
            expect += 1;
        }
    }
}

#[test]
fn a_pair_cannot_share_one_named_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.fifo");
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let err = Engine::pair(&file_config(&path, 64, 64, 8)).unwrap_err();
    assert!(err.to_string().contains("named pipe"), "{err}");
}

#[test]
fn streams_waiting_for_multi_block_chunks_do_not_starve_each_other() {
    // 64-byte blocks at 100 blocks/s, a 16-slot arena: six streams each
    // wanting 256-byte chunks (4 blocks). Reserving piecemeal would let each
    // hold 3 of the 4 blocks it needs until the arena is full.
    let config = EngineConfig {
        block_size: 64,
        arena_blocks: 16,
        ring_blocks: 7,
        window_blocks: 8,
        device: DeviceConfig::Simulated {
            rate_bps: 64 * 8 * 100,
            link_secret: None,
        },
        ..EngineConfig::default()
    };
    let (a, b) = Engine::pair(&config).unwrap();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let ksids: Vec<Uuid> = (0..6).map(|_| open_both(&a, &b, &qos(256, 5000))).collect();
    // Both sides read (a stream read on one side only is held back by flow
    // control, see the node's tests).
    let readers: Vec<_> = ksids
        .into_iter()
        .flat_map(|ksid| [(Arc::clone(&a), ksid), (Arc::clone(&b), ksid)])
        .map(|(node, ksid)| {
            thread::spawn(move || {
                let mut out = [0u8; 256];
                (0..3)
                    .map(|i| node.get_key(&ksid, i, &mut out, None).unwrap().status())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), vec![Status::Successful; 3]);
    }
}

#[test]
fn local_blocks_for_kms_entropy_never_reach_a_stream() {
    let file = counter_file(64 * 1024);
    let (a, b) = Engine::pair(&file_config(file.path(), 64, 256, 32)).unwrap();
    // Wait until the ring has blocks, then take one on the leader.
    let start = std::time::Instant::now();
    let local = loop {
        if let Some(block) = a.take_local_block() {
            break block;
        }
        assert!(start.elapsed().as_secs() < 10, "no block arrived");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(
        b.take_local_block().is_none(),
        "only the leader takes local key"
    );
    let taken = words(&local);
    let q = qos(32, 2000);
    let ksid = open_both(&a, &b, &q);
    for i in 0..200 {
        let (ka, kb) = (key(&a, &ksid, i, 32), key(&b, &ksid, i, 32));
        assert_eq!(ka, kb, "the follower skipped the same block");
        assert!(
            words(&ka).iter().all(|w| !taken.contains(w)),
            "index {i} reuses local key"
        );
    }
}
