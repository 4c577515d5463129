//! Key creation (AES256): fresh material and one durable store write
//! (SQLite WAL, `synchronous=FULL`, material wrapped under the KEK), as
//! `keypipe kms create-key` and the services do it. Target: ≥ 1 000/s.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keypipe_server::kms::entropy::Entropy;
use keypipe_server::kms::ncp::generate_material;
use keypipe_server::store::{KeyStore, KeyType, Store, StoreOptions};

fn create_key(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreOptions::new(dir.path())).unwrap();
    let entropy = Entropy::os_only();
    let mut group = c.benchmark_group("kms");
    group.throughput(Throughput::Elements(1));
    group.bench_function("create_key_aes256", |b| {
        b.iter(|| {
            let mut seed = [0u8; 32];
            entropy.fill(&mut seed).unwrap();
            let material = generate_material(KeyType::Aes256, &seed);
            store
                .create_key("bench", KeyType::Aes256, false, &material)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, create_key);
criterion_main!(benches);
