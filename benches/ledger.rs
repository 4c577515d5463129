//! What the key-delivery promise costs per block: a durable ledger write
//! (one per reservation batch, fsync included) against a write without
//! fsync, and key confirmation (the poller's digest of a block, the lease's
//! check value) against copying the block.

use std::hint::black_box;

mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keypipe_server::qkd::Ledger;
use keypipe_server::qkd::confirm::ConfirmKeys;
use uuid::Uuid;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("bench.redb")).unwrap();
    let memory = Ledger::temporary();
    let id = [1u8; 16];
    let mut g = c.benchmark_group("ledger");
    let mut below = 0u64;
    g.bench_function("reserve_durable", |b| {
        b.iter(|| {
            below += 1;
            ledger.reserve_device(&id, 4096, below).unwrap();
        })
    });
    g.bench_function("reserve_in_memory_baseline", |b| {
        b.iter(|| {
            below += 1;
            memory.reserve_device(&id, 4096, below).unwrap();
        })
    });
    g.finish();

    let keys = ConfirmKeys::from_link_secret(&[7; 32]);
    let block = vec![0x5au8; 4096];
    let mut copy = vec![0u8; 4096];
    let ksid = Uuid::from_u128(9);
    let mut g = c.benchmark_group("key_confirmation");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("digest_4096B", |b| {
        b.iter(|| black_box(keys.digest(black_box(&block))))
    });
    g.bench_function("check_value", |b| {
        b.iter(|| black_box(keys.check(&ksid, 17, 1234, black_box(0xdead_beef))))
    });
    g.bench_function("copy_4096B_baseline", |b| {
        b.iter(|| {
            copy.copy_from_slice(black_box(&block));
            black_box(&copy);
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
