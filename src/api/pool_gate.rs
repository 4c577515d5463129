//! A bound on requests waiting for or running on the shared pool: beyond
//! it, the caller answers at once (503), so slow unauthenticated work
//! (Argon2, FFDHE, RSA key generation) never starves the pool the other
//! protocols share.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::http::{Reply, Response};

/// Counts requests on the pool, up to a bound.
#[derive(Debug, Clone)]
pub struct PoolGate {
    max: usize,
    queued: Arc<AtomicUsize>,
}

/// Holds one place until dropped.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PoolGate {
    /// At most `max` requests (at least 1) on the pool at once.
    pub fn new(max: usize) -> PoolGate {
        PoolGate {
            max: max.max(1),
            queued: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs `job` on the pool, or answers `busy()` now when `max` are
    /// already there.
    pub fn run(
        &self,
        busy: impl FnOnce() -> Response,
        job: impl FnOnce() -> Response + Send + 'static,
    ) -> Reply {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Reply::Now(busy().header("Retry-After", "1"));
        }
        let place = Place(Arc::clone(&self.queued));
        Reply::Later(Box::new(move || {
            let _place = place;
            job()
        }))
    }
}
