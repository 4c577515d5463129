//! One key agreement per scheme through the sans-IO service (fresh server
//! key pair, client key validation, shared secret, HKDF, proof, reference
//! registered), on one core. The HTTP figures come from
//! `load agreement` (scripts/load.sh).

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keypipe_server::kms::agreement::{
    AgreementConfig, AgreementService, ClientKeyDerivationSpec, Scheme, ecdh, ffdhe,
};

fn agree(c: &mut Criterion) {
    let service = AgreementService::new(AgreementConfig {
        // Entries expire fast so the table never fills during a long run.
        reference_ttl: Duration::from_millis(1),
        ..AgreementConfig::default()
    });
    let mut group = c.benchmark_group("agreement");
    group.throughput(Throughput::Elements(1));
    for scheme in [Scheme::EcAes1, Scheme::EcAes2, Scheme::Aes1, Scheme::Aes2] {
        let public = match scheme {
            Scheme::Aes1 => ffdhe::Group::Ffdhe2048.generate().unwrap().1,
            Scheme::Aes2 => ffdhe::Group::Ffdhe3072.generate().unwrap().1,
            Scheme::EcAes1 => ecdh::Curve::P256.generate().unwrap().1.to_sec1(),
            Scheme::EcAes2 => ecdh::Curve::P384.generate().unwrap().1.to_sec1(),
        };
        let spec = ClientKeyDerivationSpec {
            identifier: B64.encode(b"bench"),
            nonce: B64.encode([1u8; 16]),
            public_key: B64.encode(&public),
            supported_schemes: vec![scheme.name().into()],
        };
        if scheme.is_ffdhe() {
            group.sample_size(20);
        }
        group.bench_function(scheme.name(), |b| {
            b.iter(|| service.agree(&spec, Instant::now()).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, agree);
criterion_main!(benches);
