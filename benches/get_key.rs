//! In-process GET_KEY on node A of a pair (device as fast as possible):
//! keys/s at 32 B and 4 KiB chunks, one thread, and two threads each on
//! its own stream.

use std::hint::black_box;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keypipe_server::qkd::{Engine, EngineConfig, GetKeyReply, Qos, Status};
use uuid::Uuid;

fn open(a: &Engine, b: &Engine, chunk: u32) -> Uuid {
    let q = Qos {
        key_chunk_size: chunk,
        timeout: 5000,
        ..Qos::default()
    };
    let ksid = a.open_connect("a", "b", &q, None).ksid.unwrap();
    assert_eq!(
        b.open_connect("a", "b", &q, Some(ksid)).status,
        Status::Successful
    );
    ksid
}

/// Reads `n` fresh chunks starting at `*next`.
fn read(a: &Engine, ksid: &Uuid, next: &mut u32, n: u64, out: &mut [u8]) {
    for _ in 0..n {
        let r = a.get_key(ksid, *next, out, None).unwrap();
        assert!(matches!(r, GetKeyReply::Key { .. }), "{r:?}");
        *next = next.wrapping_add(1);
        black_box(&out);
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("get_key");
    for chunk in [32u32, 4096] {
        let config = EngineConfig {
            arena_blocks: 4096,
            ring_blocks: 1024,
            ..EngineConfig::default()
        };
        let (a, b) = Engine::pair(&config).unwrap();
        let a = Arc::new(a);
        let ksids = [open(&a, &b, chunk), open(&a, &b, chunk)];
        thread::sleep(Duration::from_millis(200)); // let the ring fill
        let mut out = vec![0u8; chunk as usize];
        let mut next = 0u32;
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{chunk}B_1thread"), |bch| {
            bch.iter_custom(|n| {
                let t = Instant::now();
                read(&a, &ksids[0], &mut next, n, &mut out);
                t.elapsed()
            })
        });
        let mut nexts = [1u32 << 31, 1u32 << 31];
        g.throughput(Throughput::Elements(2));
        g.bench_function(format!("{chunk}B_2threads"), |bch| {
            bch.iter_custom(|n| {
                let t = Instant::now();
                thread::scope(|s| {
                    for (ksid, next) in ksids.iter().zip(nexts.iter_mut()) {
                        let a = Arc::clone(&a);
                        s.spawn(move || read(&a, ksid, next, n, &mut vec![0u8; chunk as usize]));
                    }
                });
                t.elapsed()
            })
        });
        drop(b);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = bench
}
criterion_main!(benches);
