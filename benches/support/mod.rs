//! Settings shared by the benches: short runs, since the whole suite runs
//! on a 2-core machine where other work competes.

use std::time::Duration;

use criterion::Criterion;

/// 1 s warm-up, 3 s of measurement per benchmark.
pub fn criterion() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
}
