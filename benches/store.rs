//! The store on its two backends, in the same run: SQLite (the embedded
//! file, `synchronous=FULL`) against PostgreSQL (the throwaway cluster of
//! `scripts/pg.sh`, over its Unix socket, `fsync=on`):
//! - `create_key`: one AES256 key made and committed (a KEK wrap, two
//!   inserts, the generation bump): key creations per second;
//! - `key_uncached`: one key read and unwrapped (what an NCP cache miss
//!   costs);
//! - `reserve_encryptions`: one encryption budget reservation (a
//!   read-modify-write), what an NCP key version pays every 65 536
//!   encryptions.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keypipe_server::store::testing::fresh_pg_database;
use keypipe_server::store::{KeyStore, KeyType, Store, StoreOptions};

fn backends(dir: &std::path::Path) -> Vec<(&'static str, Store)> {
    let sqlite = Store::open(&StoreOptions::new(dir.join("sqlite"))).unwrap();
    let mut pg = StoreOptions::new(dir.join("pg"));
    pg.url = Some(fresh_pg_database("bench"));
    vec![("sqlite", sqlite), ("postgres", Store::open(&pg).unwrap())]
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    for (name, store) in backends(dir.path()) {
        group.bench_function(format!("create_key_{name}"), |b| {
            b.iter(|| {
                store
                    .create_key("bench", KeyType::Aes256, false, &[7; 32])
                    .unwrap()
            })
        });
        let tag = store
            .create_key("read", KeyType::Aes256, false, &[9; 32])
            .unwrap();
        group.bench_function(format!("key_uncached_{name}"), |b| {
            b.iter(|| store.key(&tag).unwrap().unwrap())
        });
        group.bench_function(format!("reserve_encryptions_{name}"), |b| {
            b.iter(|| {
                store
                    .reserve_encryptions(&tag, 1, 1, u64::MAX >> 2)
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
