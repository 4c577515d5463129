//! Failed-login throttling per user name.
//!
//! An attempt is charged *before* its password is checked: it counts as
//! the name's next failure and holds the name for `base · 2^(n−1)` (capped
//! at `max`) from the attempt's start. Any attempt while the name is held
//! is not checked at all and fails when the hold ends, so guesses sent in
//! parallel (or pipelined) are checked one hold at a time. A success clears
//! the name (the charge is undone); a failure keeps it. Names are tracked
//! whether or not the user exists, so answers and their timing tell nothing
//! about which users exist. A name idle [`FORGET_AFTER`] past its hold
//! starts over.
//!
//! The table is bounded; when it is full, expired names are dropped and,
//! failing that, the name whose hold ends soonest, so every name being
//! attempted is always tracked.

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
    /// Charged: check the password now; on failure answer at this instant.
    Check(Instant),
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
    /// `capacity` names.
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

    /// Starts an attempt for `(domain, name)`: held, or charged and to be
    /// checked.
    pub fn attempt(&self, domain: &str, name: &str, now: Instant) -> Gate {
        let mut names = self.lock();
        let key = (domain.to_owned(), name.to_owned());
        if let Some(s) = names.get(&key)
            && s.held_until > now
        {
            return Gate::Held(s.held_until);
        }
        if !names.contains_key(&key) && names.len() >= self.capacity {
            names.retain(|_, s| s.held_until + FORGET_AFTER > now);
            if names.len() >= self.capacity
                && let Some(soonest) = names
                    .iter()
                    .min_by_key(|(_, s)| s.held_until)
                    .map(|(k, _)| k.clone())
            {
                names.remove(&soonest);
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
        Gate::Check(state.held_until)
    }

    /// The checked attempt succeeded: the name starts over.
    pub fn succeeded(&self, domain: &str, name: &str) {
        self.lock().remove(&(domain.to_owned(), name.to_owned()));
    }

    /// Names tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
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
        assert_eq!(t.attempt("d", "u", t0), Gate::Check(t0 + ms(100)));
        // Parallel attempts while the first is checked are held, uncharged.
        assert_eq!(t.attempt("d", "u", t0 + ms(50)), Gate::Held(t0 + ms(100)));
        assert_eq!(t.attempt("d", "other", t0), Gate::Check(t0 + ms(100)));
        let t1 = t0 + ms(100);
        assert_eq!(t.attempt("d", "u", t1), Gate::Check(t1 + ms(200)));
        let t2 = t1 + ms(200);
        assert_eq!(t.attempt("d", "u", t2), Gate::Check(t2 + ms(350)), "capped");
        t.succeeded("d", "u");
        assert_eq!(t.attempt("d", "u", t2), Gate::Check(t2 + ms(100)));
        // Idle long enough: starts over.
        let t3 = t2 + ms(100) + FORGET_AFTER;
        assert_eq!(t.attempt("d", "u", t3), Gate::Check(t3 + ms(100)));
    }

    #[test]
    fn a_full_table_still_tracks_every_name_attempted() {
        let ms = Duration::from_millis;
        let t = Throttle::new(ms(10), ms(1000), 2);
        let t0 = Instant::now();
        t.attempt("d", "a", t0);
        t.attempt("d", "a", t0 + ms(10)); // a: held until t0 + 30 ms
        t.attempt("d", "b", t0); // b: held until t0 + 10 ms
        // c evicts b (its hold ends soonest) and is itself held.
        assert_eq!(t.attempt("d", "c", t0), Gate::Check(t0 + ms(10)));
        assert_eq!(t.len(), 2);
        assert_eq!(t.attempt("d", "c", t0 + ms(5)), Gate::Held(t0 + ms(10)));
        assert_eq!(t.attempt("d", "a", t0 + ms(15)), Gate::Held(t0 + ms(30)));
    }
}
