//! Counters for `/metrics`: requests by route and status, and a latency
//! histogram. Lock-free on the hot path (a route's counters are found by a
//! short scan of a table fixed at start-up).

use std::fmt::Write;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Status codes counted one by one; anything else counts as `other`.
const STATUSES: [u16; 16] = [
    200, 201, 204, 205, 304, 400, 401, 403, 404, 405, 409, 413, 415, 500, 501, 503,
];

struct RouteCounters {
    path: &'static str,
    by_status: [AtomicU64; STATUSES.len() + 1],
}

/// Requests answered, by route and status code.
#[derive(Default)]
pub struct RequestMetrics {
    routes: RwLock<Vec<RouteCounters>>,
    unmatched: [AtomicU64; STATUSES.len() + 1],
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics").finish_non_exhaustive()
    }
}

fn slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len())
}

impl RequestMetrics {
    /// Adds a route to count; its index for [`RequestMetrics::count`].
    pub fn register(&self, path: &'static str) -> usize {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = routes.iter().position(|r| r.path == path) {
            return i;
        }
        routes.push(RouteCounters {
            path,
            by_status: Default::default(),
        });
        routes.len() - 1
    }

    /// Counts one answer (`route` `None`: no route matched).
    pub fn count(&self, route: Option<usize>, status: u16) {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let counters = route
            .and_then(|i| routes.get(i))
            .map_or(&self.unmatched, |r| &r.by_status);
        counters[slot(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// Appends `keypipe_http_requests_total` in Prometheus text format.
    pub fn render(&self, out: &mut String, node: &str) {
        out.push_str(
            "# HELP keypipe_http_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE keypipe_http_requests_total counter\n");
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let all = routes
            .iter()
            .map(|r| (r.path, &r.by_status))
            .chain([("unmatched", &self.unmatched)]);
        for (path, counters) in all {
            for (i, c) in counters.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(i)
                    .map_or("other".to_owned(), |s| s.to_string());
                let _ = writeln!(
                    out,
                    "keypipe_http_requests_total{{node=\"{node}\",route=\"{path}\",status=\"{status}\"}} {n}"
                );
            }
        }
    }
}

/// Upper bounds of the latency buckets, µs.
const BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// A latency histogram (Prometheus `histogram`, seconds).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Appends the histogram `name` with `labels` (`node="a"`).
    pub fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut total = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            let le = BUCKETS_US
                .get(i)
                .map_or("+Inf".to_owned(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {total}");
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {total}"
        );
    }
}
