//! Checking credentials: the user's password (Argon2id, from the user
//! store), membership of the service, the device's hardware signature
//! (registered on first use, then required to match), the password's
//! expiry, the optional challenge step, and failed attempts.
//!
//! Failures count per user name (whether or not the user exists, so the
//! answers tell nothing about who exists): failure *n* below
//! `max_failures` answers `DELAY` for `failure_delay · 2^(n−1)`; an attempt
//! within a delay is not checked and answers `DELAY` with the time left;
//! failure number `max_failures` answers `LOCKED` (with the time left from
//! 2.3.0 on) for `lock_time`, and ends the session. Only a whole success
//! (password, device and challenge) clears the count. An attempt is
//! reserved before its password is checked: attempts for the same name
//! made meanwhile (in parallel sessions) answer `DELAY` unchecked, so
//! parallel guessing gains nothing. The counts live in this process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::config::{CredentialType, Service};
use crate::login::password;

/// What an authentication (or password change) attempt gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// Authenticated; the password's remaining validity in seconds (-1:
    /// never expires).
    Ok(i64),
    /// Failed or too soon: retry after this many seconds.
    Delay(u64),
    /// Locked for this many more seconds (the session ends).
    Locked(u64),
    /// The password has expired: change it.
    Expired,
    /// The password was right; answer this challenge (name, prompt).
    Challenge(String, String),
}

#[derive(Debug, Clone, Copy)]
struct FailState {
    count: u32,
    until: Instant,
    locked: bool,
    /// An attempt is being checked.
    busy: bool,
}

impl FailState {
    /// A name with no failure yet.
    fn fresh(now: Instant) -> FailState {
        FailState {
            count: 0,
            until: now,
            locked: false,
            busy: false,
        }
    }
}

/// A reserved attempt of one user: end it with [`Attempt::failed`] or
/// [`Attempt::succeeded`]; dropped otherwise (a store error), it counts
/// nothing.
#[derive(Debug)]
pub struct Attempt<'f> {
    failures: &'f Failures,
    user: String,
    done: bool,
}

impl Attempt<'_> {
    /// The attempt failed: `Delay` or `Locked`.
    pub fn failed(mut self, now: Instant) -> AuthResult {
        self.done = true;
        self.failures.failed(&self.user, now)
    }

    /// The user authenticated: the count starts over.
    pub fn succeeded(mut self) {
        self.done = true;
        self.failures.lock().remove(&self.user);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.failures.release(&self.user);
        }
    }
}

/// Failed attempts per user name (bounded).
#[derive(Debug)]
pub struct Failures {
    map: Mutex<HashMap<String, FailState>>,
    base: Duration,
    max_failures: u32,
    lock_time: Duration,
    capacity: usize,
}

/// A name idle this long past its delay or lock starts over.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

fn secs_left(until: Instant, now: Instant) -> u64 {
    let left = until.saturating_duration_since(now);
    left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

impl Failures {
    /// A table: delays from `base` doubling, `LOCKED` for `lock_time`
    /// at failure `max_failures`.
    pub fn new(base: Duration, max_failures: u32, lock_time: Duration) -> Failures {
        Failures {
            map: Mutex::new(HashMap::new()),
            base,
            max_failures: max_failures.max(1),
            lock_time,
            capacity: 100_000,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FailState>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reserves an attempt of `user`, or the answer when it may not try
    /// now (in a delay or a lock, or another attempt is being checked).
    pub fn begin(&self, user: &str, now: Instant) -> Result<Attempt<'_>, AuthResult> {
        let mut map = self.lock();
        self.make_room(&mut map, user, now);
        let s = map.entry(user.to_owned()).or_insert(FailState::fresh(now));
        if s.until > now {
            let left = secs_left(s.until, now);
            return Err(if s.locked {
                AuthResult::Locked(left)
            } else {
                AuthResult::Delay(left)
            });
        }
        if s.busy {
            return Err(AuthResult::Delay(1));
        }
        s.busy = true;
        Ok(Attempt {
            failures: self,
            user: user.to_owned(),
            done: false,
        })
    }

    /// Ends an attempt that counted nothing.
    fn release(&self, user: &str) {
        let mut map = self.lock();
        if let Some(s) = map.get_mut(user) {
            s.busy = false;
            if s.count == 0 {
                map.remove(user);
            }
        }
    }

    fn make_room(&self, map: &mut HashMap<String, FailState>, user: &str, now: Instant) {
        if map.len() >= self.capacity && !map.contains_key(user) {
            map.retain(|_, s| s.busy || s.until + FORGET_AFTER > now);
            if map.len() >= self.capacity
                && let Some(k) = map
                    .iter()
                    .filter(|(_, s)| !s.busy)
                    .min_by_key(|(_, s)| s.until)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&k);
            }
        }
    }

    /// Counts a failure of `user`: `Delay` or `Locked`.
    fn failed(&self, user: &str, now: Instant) -> AuthResult {
        let mut map = self.lock();
        self.make_room(&mut map, user, now);
        let s = map.entry(user.to_owned()).or_insert(FailState::fresh(now));
        s.busy = false;
        if s.locked || s.until + FORGET_AFTER <= now {
            // A lock that ran out (or a long pause) starts over.
            s.count = 0;
            s.locked = false;
        }
        s.count += 1;
        if s.count >= self.max_failures {
            s.locked = true;
            s.until = now + self.lock_time;
            AuthResult::Locked(secs_left(s.until, now))
        } else {
            let delay = self.base.saturating_mul(1 << (s.count - 1).min(16));
            s.until = now + delay;
            AuthResult::Delay(secs_left(s.until, now))
        }
    }
}

/// A hardware signature as stored and compared: trimmed, upper case.
pub fn normalize_hwsig(raw: &str) -> String {
    raw.trim().to_ascii_uppercase()
}

/// True when two hardware signatures are the same (constant time).
pub fn same_hwsig(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// True when `answer` is the service's challenge answer.
pub fn challenge_answered(service: &Service, answer: &str) -> bool {
    service
        .config
        .challenge
        .as_ref()
        .is_some_and(|c| password::verify(&c.response_hash, answer.as_bytes()))
}

/// The credentials a client must send for `service` that are missing
/// from `present` (by wire name).
pub fn missing<'a>(service: &Service, present: impl Fn(&str) -> bool + 'a) -> Vec<&'static str> {
    service
        .config
        .credential_types
        .iter()
        .map(|c| c.as_str())
        .filter(|name| !present(name))
        .collect()
}

/// Seconds until `expires_ms` (ms since the epoch) from `now_ms`, -1
/// when it never expires; `None` when it has expired.
pub fn validity(expires_ms: Option<i64>, now_ms: i64) -> Option<i64> {
    match expires_ms {
        None => Some(-1),
        Some(e) if e > now_ms => Some(((e - now_ms) / 1000).max(1)),
        Some(_) => None,
    }
}

/// Whether `service` asks for a hardware signature.
pub fn wants_hwsig(service: &Service) -> bool {
    service.asks(CredentialType::Hwsig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_lock_then_start_over() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let f = Failures::new(s(1), 4, s(300));
        let fail = |t| f.begin("u", t).unwrap().failed(t);
        assert_eq!(fail(t), AuthResult::Delay(1));
        assert_eq!(f.begin("u", t).unwrap_err(), AuthResult::Delay(1));
        let t = t + s(1);
        assert_eq!(fail(t), AuthResult::Delay(2));
        let t = t + s(2);
        assert_eq!(fail(t), AuthResult::Delay(4));
        let t = t + s(4);
        assert_eq!(fail(t), AuthResult::Locked(300));
        assert_eq!(
            f.begin("u", t + s(100)).unwrap_err(),
            AuthResult::Locked(200)
        );
        assert!(f.begin("other", t).is_ok(), "per user");
        let t = t + s(300);
        assert_eq!(fail(t), AuthResult::Delay(1), "after a lock: afresh");
        let t = t + s(1);
        f.begin("u", t).unwrap().succeeded();
        assert_eq!(fail(t), AuthResult::Delay(1), "a success starts over");
    }

    #[test]
    fn parallel_attempts_are_checked_one_at_a_time() {
        let t = Instant::now();
        let f = Failures::new(Duration::from_secs(1), 4, Duration::from_secs(300));
        let first = f.begin("u", t).unwrap();
        assert_eq!(
            f.begin("u", t).unwrap_err(),
            AuthResult::Delay(1),
            "in flight"
        );
        drop(first);
        assert!(
            f.lock().is_empty(),
            "an attempt that counted nothing leaves nothing"
        );
        let first = f.begin("u", t).unwrap();
        assert_eq!(first.failed(t), AuthResult::Delay(1));
    }

    #[test]
    fn validity_and_hwsig() {
        assert_eq!(validity(None, 5), Some(-1));
        assert_eq!(validity(Some(10_000), 5_000), Some(5));
        assert_eq!(validity(Some(5_500), 5_000), Some(1));
        assert_eq!(validity(Some(5_000), 5_000), None);
        assert_eq!(normalize_hwsig(" cs-ab12 "), "CS-AB12");
        assert!(same_hwsig("CS-AB", "CS-AB"));
        assert!(!same_hwsig("CS-AB", "CS-AC"));
    }
}
