//! Ring throughput, one producer thread to one consumer thread:
//! - `handles`: take an arena slot, write 32 key bytes into it, push its
//!   handle through the key ring, pop it, drop it (zeroize + free list);
//! - `arrayqueue_u8x32`: the baseline, 32-byte arrays by value through a
//!   crossbeam `ArrayQueue<[u8; 32]>`;
//! - `memcpy`: copying the same bytes, single thread.

use std::hint::black_box;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam::queue::ArrayQueue;
use keypipe_server::key::{DeviceBlock, KeyArena, Stamp, ring};

const RING: usize = 1024;

fn handles(iters: u64) -> Duration {
    let arena = KeyArena::new(32, RING * 2).unwrap();
    let (mut tx, mut rx) = ring(RING);
    let born = Stamp::now();
    let consumer = {
        thread::spawn(move || {
            let mut n = 0;
            while n < iters {
                if let Some(block) = rx.pop() {
                    black_box(block.key.bytes()[0]);
                    n += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        })
    };
    let start = Instant::now();
    let mut id = 0;
    while id < iters {
        let Some(mut key) = arena.alloc() else {
            std::hint::spin_loop();
            continue;
        };
        key.bytes_mut().fill(id as u8);
        let mut block = DeviceBlock {
            id,
            born,
            digest: 0,
            key,
        };
        while let Err(back) = tx.push(block) {
            block = back;
            std::hint::spin_loop();
        }
        id += 1;
    }
    consumer.join().unwrap();
    start.elapsed()
}

fn arrayqueue(iters: u64) -> Duration {
    let queue = Arc::new(ArrayQueue::<[u8; 32]>::new(RING));
    let consumer = {
        let queue = Arc::clone(&queue);
        thread::spawn(move || {
            let mut n = 0;
            while n < iters {
                if let Some(bytes) = queue.pop() {
                    black_box(bytes[0]);
                    n += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        })
    };
    let start = Instant::now();
    for id in 0..iters {
        let mut item = [id as u8; 32];
        while let Err(back) = queue.push(item) {
            item = back;
            std::hint::spin_loop();
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_spsc");
    g.throughput(Throughput::Elements(1));
    g.bench_function("handles", |b| b.iter_custom(handles));
    g.bench_function("arrayqueue_u8x32", |b| b.iter_custom(arrayqueue));
    let src = vec![7u8; 32 * 4096];
    let mut dst = vec![0u8; 32 * 4096];
    g.throughput(Throughput::Elements(4096));
    g.bench_function("memcpy_32B_x4096", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = bench
}
criterion_main!(benches);
