//! Failed-login throttling per user name: after the n-th failure in a row
//! the name is held for `base · 2^(n−1)` (capped at `max`); an attempt
//! while held is not checked at all and fails when the hold ends. Names
//! are tracked whether or not the user exists, so the answers and their
//! timing tell nothing about which users exist. A success clears the
//! name; a name idle for [`FORGET_AFTER`] past its hold starts over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A name whose hold ended this long ago starts over.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy)]
struct State {
    failures: u32,
    held_until: Instant,
}

/// What to do with an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Check the password now.
    Check,
    /// Held: fail without checking, answering at this instant.
    Held(Instant),
}

/// The per-name failure table (bounded).
#[derive(Debug)]
pub struct Throttle {
    base: Duration,
    max: Duration,
    capacity: usize,
    names: Mutex<HashMap<(String, String), State>>,
}

impl Throttle {
    /// A table with delays `base` doubling up to `max`, tracking at most
    /// `capacity` names (beyond: every new name is treated as held for
    /// `max` on failure).
    pub fn new(base: Duration, max: Duration, capacity: usize) -> Self {
        Throttle {
            base,
            max: max.max(base),
            capacity: capacity.max(1),
            names: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), State>> {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// Whether an attempt for `(domain, name)` may be checked now.
    pub fn gate(&self, domain: &str, name: &str, now: Instant) -> Gate {
        match self.lock().get(&(domain.to_owned(), name.to_owned())) {
            Some(s) if s.held_until > now => Gate::Held(s.held_until),
            _ => Gate::Check,
        }
    }

    /// Records a failure; returns when its answer is due.
    pub fn failed(&self, domain: &str, name: &str, now: Instant) -> Instant {
        let mut names = self.lock();
        let key = (domain.to_owned(), name.to_owned());
        if !names.contains_key(&key) && names.len() >= self.capacity {
            names.retain(|_, s| s.held_until + FORGET_AFTER > now);
            if names.len() >= self.capacity {
                return now + self.max;
            }
        }
        let state = names.entry(key).or_insert(State {
            failures: 0,
            held_until: now,
        });
        if state.held_until + FORGET_AFTER <= now {
            state.failures = 0;
        }
        state.failures = state.failures.saturating_add(1);
        state.held_until = now + self.delay(state.failures);
        state.held_until
    }

    /// Records a success: the name starts over.
    pub fn succeeded(&self, domain: &str, name: &str) {
        self.lock().remove(&(domain.to_owned(), name.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_cap_and_reset() {
        let ms = Duration::from_millis;
        let t = Throttle::new(ms(100), ms(350), 10);
        let t0 = Instant::now();
        assert_eq!(t.gate("d", "u", t0), Gate::Check);
        assert_eq!(t.failed("d", "u", t0), t0 + ms(100));
        assert_eq!(t.gate("d", "u", t0 + ms(50)), Gate::Held(t0 + ms(100)));
        assert_eq!(t.gate("d", "other", t0), Gate::Check);
        let t1 = t0 + ms(100);
        assert_eq!(t.gate("d", "u", t1), Gate::Check);
        assert_eq!(t.failed("d", "u", t1), t1 + ms(200));
        let t2 = t1 + ms(200);
        assert_eq!(t.failed("d", "u", t2), t2 + ms(350), "capped");
        t.succeeded("d", "u");
        assert_eq!(t.failed("d", "u", t2), t2 + ms(100));
        // Idle long enough: starts over.
        let t3 = t2 + ms(100) + FORGET_AFTER;
        assert_eq!(t.failed("d", "u", t3), t3 + ms(100));
    }

    #[test]
    fn a_full_table_holds_new_names_for_the_maximum() {
        let ms = Duration::from_millis;
        let t = Throttle::new(ms(10), ms(1000), 1);
        let t0 = Instant::now();
        t.failed("d", "a", t0);
        assert_eq!(t.failed("d", "b", t0), t0 + ms(1000));
    }
}
