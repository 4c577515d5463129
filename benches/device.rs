//! Simulated device output rate on one core (BLAKE3 XOF keyed by the link
//! secret), for small and large blocks.

use std::hint::black_box;

mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keypipe_server::device::{DevicePoll, QkdDevice, SimulatedLink};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("simulated_device");
    for block in [32usize, 4096, 65536] {
        let (mut dev, _, _) = SimulatedLink::pair(&[9; 32], block, 0);
        let mut buf = vec![0u8; block];
        g.throughput(Throughput::Bytes(block as u64));
        g.bench_function(format!("poll_{block}B"), |b| {
            b.iter(|| {
                let r = dev.poll(&mut buf);
                debug_assert!(matches!(r, DevicePoll::Ready(_)));
                black_box(&buf);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = bench
}
criterion_main!(benches);
