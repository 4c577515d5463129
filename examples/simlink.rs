//! A simulated QKD link in one process: node A and node B, one key stream
//! opened on both, chunks read from each and checked identical.
//!
//! `cargo run --release --example simlink [CHUNKS] [CHUNK_SIZE]`

use std::time::Instant;

use keypipe_server::qkd::{Engine, EngineConfig, GetKeyReply, Qos, Status};

fn main() {
    let mut args = std::env::args().skip(1);
    let chunks: u32 = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("CHUNKS is a number"));
    let chunk_size: u32 = args
        .next()
        .map_or(32, |a| a.parse().expect("CHUNK_SIZE is a number"));

    let (a, b) = Engine::pair(&EngineConfig::default()).expect("engine pair");
    let qos = Qos {
        key_chunk_size: chunk_size,
        timeout: 2000,
        ..Qos::default()
    };
    let opened = a.open_connect("kms-a", "kms-b", &qos, None);
    let ksid = opened.ksid.expect("node A assigns a KSID");
    println!(
        "node A: open_connect -> status {} ksid {ksid}",
        opened.status
    );
    let at_b = b.open_connect("kms-a", "kms-b", &qos, Some(ksid));
    println!(
        "node B: open_connect -> status {} (QoS inherited: {} B chunks)",
        at_b.status, at_b.qos.key_chunk_size
    );
    assert_eq!(at_b.status, Status::Successful);

    let (mut x, mut y) = (
        vec![0u8; chunk_size as usize],
        vec![0u8; chunk_size as usize],
    );
    let start = Instant::now();
    let mut metadata = None;
    for index in 0..chunks {
        let ra = a.get_key(&ksid, index, &mut x, None).expect("get_key on A");
        let rb = b
            .get_key(&ksid, index, &mut y, Some(64))
            .expect("get_key on B");
        match (ra, rb) {
            (GetKeyReply::Key { .. }, GetKeyReply::Key { metadata: m, .. }) => metadata = m,
            other => panic!("index {index}: {other:?}"),
        }
        assert!(x == y, "index {index}: nodes disagree");
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = a.stats();
    println!(
        "{chunks} chunks of {chunk_size} B identical on both nodes in {secs:.2} s: {:.0} keys/s per node, {:.1} Mbit/s; last metadata {}",
        f64::from(chunks) / secs,
        f64::from(chunks) * f64::from(chunk_size) * 8.0 / secs / 1e6,
        metadata.map_or("-".into(), |m| m.as_str().to_owned()),
    );
    println!(
        "node A: {} blocks produced, {} consumed, {} ring-full stalls, key memory locked: {}",
        stats.counters.produced,
        stats.counters.consumed,
        stats.counters.ring_full_stalls,
        stats.protection.locked
    );
    println!("close: A {:?}, B {:?}", a.close(&ksid), b.close(&ksid));
}
