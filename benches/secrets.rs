//! What keeping secrets out of the process image costs, each against its
//! baseline in the same run:
//! - a KMS side's held chunk: a copy into the locked secret heap (best fit,
//!   wiped on drop) vs the zeroizing `Vec` it replaced, 32 B and 1 KiB;
//! - an NCP `encrypt` of 1 KiB through the service (JSON body, escape
//!   check, budget count, AES-256-GCM, Base64 answer) vs bare
//!   AES-256-GCM of the same bytes, the floor.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keypipe_server::key::locked::SecretHeap;
use keypipe_server::kms::keys::StoreKeys;
use keypipe_server::kms::ncp::NcpService;
use keypipe_server::store::{KeyStore, KeyType, Store, StoreOptions};
use zeroize::Zeroizing;

fn held_chunks(c: &mut Criterion) {
    let heap = SecretHeap::new(64 << 20, "bench").unwrap();
    let mut group = c.benchmark_group("secret_memory");
    for len in [32usize, 1024] {
        let chunk = vec![0x5a; len];
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("locked_heap_copy_drop_{len}"), |b| {
            b.iter(|| heap.copy_of(std::hint::black_box(&chunk)).unwrap())
        });
        group.bench_function(format!("zeroizing_vec_copy_drop_{len}"), |b| {
            b.iter(|| Zeroizing::new(std::hint::black_box(&chunk).to_vec()))
        });
    }
    group.finish();
}

fn ncp_encrypt(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(Store::open(&StoreOptions::new(dir.path())).unwrap());
    let material = [7u8; 32];
    let tag = store
        .create_key("bench", KeyType::Aes256, false, &material)
        .unwrap();
    let service = NcpService::new(Arc::new(StoreKeys::new(Arc::clone(&store)).unwrap()));
    let plaintext = vec![0x42u8; 1024];
    let body = format!(r#"{{"plaintext":"{}"}}"#, B64.encode(&plaintext));
    let cipher = Aes256Gcm::new_from_slice(&material).unwrap();
    let mut group = c.benchmark_group("ncp");
    group.throughput(Throughput::Elements(1));
    group.bench_function("service_encrypt_1k", |b| {
        b.iter(|| {
            let reply = service.handle(&tag, "encrypt", body.as_bytes());
            assert_eq!(reply.status, 200);
            reply
        })
    });
    group.bench_function("bare_aes_gcm_1k", |b| {
        b.iter(|| {
            let mut nonce = [0u8; 12];
            getrandom::fill(&mut nonce).unwrap();
            cipher
                .encrypt(&Nonce::from(nonce), std::hint::black_box(&plaintext[..]))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, held_chunks, ncp_encrypt);
criterion_main!(benches);
