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
//! parallel guessing gains nothing.
//!
//! The counts live in this process ([`Failures::new`]) or, when several
//! processes share the store, in its `ephemeral` table
//! ([`Failures::shared`]): one row per name (id: a hash of the name),
//! holding the count, the end of the delay or lock and the mark of an
//! attempt being checked, read and changed in one transaction, so an
//! attempt counted by one process delays or locks the name on every
//! other. The same rules decide in both; shared, a row is forgotten an
//! hour past its delay or lock (it would start over then anyway), and an
//! attempt's mark older than [`BUSY_STALE`] (a process that died while
//! checking it) is ignored, so a newer attempt may take the name over.
//! Each mark names its attempt: an attempt that no longer holds the mark
//! (taken over since) ends without touching it, so the newer attempt
//! stays the only one checked. Its failure still counts (a wrong password
//! is a wrong password, however late its answer); its success clears
//! nothing (failures counted since it began would be erased); dropped
//! uncounted, it changes nothing. A store error answers `DELAY` 1 (as the
//! user store's errors do) and is logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::config::{CredentialType, Service};
use super::shared::{self, BUSY_STALE, Shared, Stamp, logged};
use crate::login::password;
use crate::store::{EphemeralChange, EphemeralStore, StoreError};
use crate::store::{row_id, wall_ms};

/// The store's rows of failure counts.
const KIND: &str = "keytalk-failure";

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

/// "An attempt is being checked", and which.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Busy<T> {
    since: T,
    holder: u64,
}

/// One name's failures (times: `Instant`s in memory, ms since the epoch in
/// the store).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct FailState<T> {
    count: u32,
    until: T,
    locked: bool,
    /// An attempt is being checked.
    busy: Option<Busy<T>>,
}

impl<T: Stamp> FailState<T> {
    /// A name with no failure yet.
    fn fresh(now: T) -> FailState<T> {
        FailState {
            count: 0,
            until: now,
            locked: false,
            busy: None,
        }
    }

    /// True while the attempt `holder` holds the mark.
    fn held_by(&self, holder: u64) -> bool {
        self.busy.is_some_and(|b| b.holder == holder)
    }

    /// Ends the attempt `holder`, which counted nothing: what becomes of
    /// the state (nothing when another attempt holds the mark).
    fn release(&mut self, holder: u64) -> Outcome {
        if !self.held_by(holder) {
            return Outcome::Keep;
        }
        self.busy = None;
        if self.count == 0 {
            Outcome::Remove
        } else {
            Outcome::Store
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
    /// Names this attempt's mark.
    holder: u64,
    done: bool,
}

impl Attempt<'_> {
    /// The attempt failed: `Delay` or `Locked`. It counts even when the
    /// attempt no longer holds the mark (taken over since, shared): the
    /// newer attempt's mark then stays.
    pub fn failed(mut self, now: Instant) -> AuthResult {
        self.done = true;
        self.failures.failed(&self.user, self.holder, now)
    }

    /// The user authenticated: the count starts over (nothing changes
    /// when the attempt no longer holds the mark).
    pub fn succeeded(mut self) {
        self.done = true;
        self.failures.succeeded(&self.user, self.holder);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.failures.release(&self.user, self.holder);
        }
    }
}

/// The rules, both modes.
#[derive(Debug, Clone, Copy)]
struct Rules {
    base: Duration,
    max_failures: u32,
    lock_time: Duration,
    /// An attempt's mark this old is ignored (`None`: never).
    busy_stale: Option<Duration>,
}

impl Rules {
    fn busy<T: Stamp>(&self, s: &FailState<T>, now: T) -> bool {
        s.busy.is_some_and(|b| {
            self.busy_stale
                .is_none_or(|stale| now.since(b.since) < stale)
        })
    }

    /// Reserves an attempt for `holder`, or the answer when it may not
    /// run now.
    fn begin<T: Stamp>(&self, s: &mut FailState<T>, now: T, holder: u64) -> Result<(), AuthResult> {
        if s.until > now {
            let left = secs_left(s.until, now);
            return Err(if s.locked {
                AuthResult::Locked(left)
            } else {
                AuthResult::Delay(left)
            });
        }
        if self.busy(s, now) {
            return Err(AuthResult::Delay(1));
        }
        s.busy = Some(Busy { since: now, holder });
        Ok(())
    }

    /// Counts a failure of the attempt `holder`: `Delay` or `Locked`. The
    /// mark is freed only if `holder` holds it; the failure counts
    /// either way.
    fn failed<T: Stamp>(&self, s: &mut FailState<T>, now: T, holder: u64) -> AuthResult {
        if s.held_by(holder) {
            s.busy = None;
        }
        if s.locked || s.until.plus(FORGET_AFTER) <= now {
            // A lock that ran out (or a long pause) starts over.
            s.count = 0;
            s.locked = false;
        }
        s.count += 1;
        if s.count >= self.max_failures {
            s.locked = true;
            s.until = now.plus(self.lock_time);
            AuthResult::Locked(secs_left(s.until, now))
        } else {
            let delay = self.base.saturating_mul(1 << (s.count - 1).min(16));
            s.until = now.plus(delay);
            AuthResult::Delay(secs_left(s.until, now))
        }
    }

    /// When a stored state may be forgotten: it then reads as fresh,
    /// which is what it would start over as.
    fn forget(&self, s: &FailState<u64>) -> u64 {
        let busy = s.busy.map_or(0, |b| b.since.plus(BUSY_STALE));
        s.until.plus(FORGET_AFTER).max(busy)
    }
}

/// Failed attempts per user name (bounded in memory).
#[derive(Debug)]
pub struct Failures {
    /// The table in this process (empty when shared).
    map: Mutex<HashMap<String, FailState<Instant>>>,
    /// The table in the store, when shared (rows keyed by a hash of
    /// the name).
    shared: Option<Shared>,
    rules: Rules,
    capacity: usize,
}

/// A name idle this long past its delay or lock starts over.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

fn secs_left<T: Stamp>(until: T, now: T) -> u64 {
    let left = until.since(now);
    left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

impl Failures {
    /// A table in this process: delays from `base` doubling, `LOCKED` for
    /// `lock_time` at failure `max_failures`.
    pub fn new(base: Duration, max_failures: u32, lock_time: Duration) -> Failures {
        Failures {
            map: Mutex::new(HashMap::new()),
            shared: None,
            rules: Rules {
                base,
                max_failures: max_failures.max(1),
                lock_time,
                busy_stale: None,
            },
            capacity: 100_000,
        }
    }

    /// The same table in `store`, shared by every process using it. An
    /// attempt's mark older than [`BUSY_STALE`] is taken for that of a
    /// process that died while checking it, and ignored.
    pub fn shared(
        base: Duration,
        max_failures: u32,
        lock_time: Duration,
        store: Arc<dyn EphemeralStore>,
    ) -> Failures {
        let mut f = Failures::new(base, max_failures, lock_time);
        f.shared = Some(Shared::new(store));
        f.rules.busy_stale = Some(BUSY_STALE);
        f
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FailState<Instant>>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `decide` on the stored state of `user` (fresh when none):
    /// it stores the state as left unless it returns `remove`.
    fn update_shared<R>(
        &self,
        sh: &Shared,
        user: &str,
        now: u64,
        mut decide: impl FnMut(&mut FailState<u64>) -> (R, Outcome),
    ) -> Result<R, StoreError> {
        sh.update(KIND, &row_id(&[user.as_bytes()]), |row| {
            let (mut s, stored) = match row {
                Some(row) => (shared::decode(KIND, &row.value)?, true),
                None => (FailState::fresh(now), false),
            };
            let (out, outcome) = decide(&mut s);
            let change = match outcome {
                Outcome::Store => EphemeralChange::Put {
                    value: shared::encode(&s)?,
                    forget_ms: self.rules.forget(&s),
                },
                Outcome::Remove if stored => EphemeralChange::Remove,
                Outcome::Remove | Outcome::Keep => EphemeralChange::Keep,
            };
            Ok((change, out))
        })
    }

    /// Reserves an attempt of `user`, or the answer when it may not try
    /// now (in a delay or a lock, or another attempt is being checked; or,
    /// shared, the store failed: `Delay(1)`, logged).
    pub fn begin(&self, user: &str, now: Instant) -> Result<Attempt<'_>, AuthResult> {
        let holder = shared::new_holder();
        match &self.shared {
            None => {
                let mut map = self.lock();
                self.make_room(&mut map, user, now);
                let s = map.entry(user.to_owned()).or_insert(FailState::fresh(now));
                self.rules.begin(s, now, holder)?;
            }
            Some(sh) => {
                let now = wall_ms(now);
                let begun = self.update_shared(sh, user, now, |s| {
                    let begun = self.rules.begin(s, now, holder);
                    let outcome = if begun.is_ok() {
                        Outcome::Store
                    } else {
                        Outcome::Keep
                    };
                    (begun, outcome)
                });
                logged("failure count", begun, Err(AuthResult::Delay(1)))?;
            }
        }
        Ok(Attempt {
            failures: self,
            user: user.to_owned(),
            holder,
            done: false,
        })
    }

    /// Ends the attempt `holder`, which counted nothing.
    fn release(&self, user: &str, holder: u64) {
        match &self.shared {
            None => {
                let mut map = self.lock();
                if let Some(s) = map.get_mut(user)
                    && matches!(s.release(holder), Outcome::Remove)
                {
                    map.remove(user);
                }
            }
            Some(sh) => {
                let now = wall_ms(Instant::now());
                let released = self.update_shared(sh, user, now, |s| ((), s.release(holder)));
                logged("failure count", released, ());
            }
        }
    }

    /// The attempt `holder` of `user` authenticated: the count starts
    /// over, if `holder` still holds the mark (else nothing changes).
    fn succeeded(&self, user: &str, holder: u64) {
        match &self.shared {
            None => {
                let mut map = self.lock();
                if map.get(user).is_some_and(|s| s.held_by(holder)) {
                    map.remove(user);
                }
            }
            Some(sh) => {
                let now = wall_ms(Instant::now());
                let done = self.update_shared(sh, user, now, |s| {
                    let outcome = if s.held_by(holder) {
                        Outcome::Remove
                    } else {
                        Outcome::Keep
                    };
                    ((), outcome)
                });
                logged("failure count", done, ());
            }
        }
    }

    fn make_room(&self, map: &mut HashMap<String, FailState<Instant>>, user: &str, now: Instant) {
        if map.len() >= self.capacity && !map.contains_key(user) {
            map.retain(|_, s| s.busy.is_some() || s.until + FORGET_AFTER > now);
            if map.len() >= self.capacity
                && let Some(k) = map
                    .iter()
                    .filter(|(_, s)| s.busy.is_none())
                    .min_by_key(|(_, s)| s.until)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&k);
            }
        }
    }

    /// Counts a failure of the attempt `holder` of `user`: `Delay` or
    /// `Locked` (shared, a store error gives `Delay(1)`, logged, and
    /// counts nothing).
    fn failed(&self, user: &str, holder: u64, now: Instant) -> AuthResult {
        match &self.shared {
            None => {
                let mut map = self.lock();
                self.make_room(&mut map, user, now);
                let s = map.entry(user.to_owned()).or_insert(FailState::fresh(now));
                self.rules.failed(s, now, holder)
            }
            Some(sh) => {
                let now = wall_ms(now);
                let counted = self.update_shared(sh, user, now, |s| {
                    (self.rules.failed(s, now, holder), Outcome::Store)
                });
                logged("failure count", counted, AuthResult::Delay(1))
            }
        }
    }
}

/// What becomes of a stored state.
enum Outcome {
    /// Stored as left.
    Store,
    /// Deleted.
    Remove,
    /// Unchanged.
    Keep,
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

#[cfg(test)]
mod shared_tests {
    use super::*;
    use crate::keytalk::shared::testing::Db;

    /// Failures counted through one process delay and lock the name on
    /// the other; an attempt in flight on one holds the other; a stale
    /// one does not.
    fn counted_across_processes(db: &Db) {
        let t = Instant::now();
        let s = Duration::from_secs;
        let one = || Failures::shared(s(1), 3, s(300), db.open());
        let (a, b) = (one(), one());
        let first = a.begin("u", t).unwrap();
        assert_eq!(
            b.begin("u", t).unwrap_err(),
            AuthResult::Delay(1),
            "in flight"
        );
        assert_eq!(first.failed(t), AuthResult::Delay(1));
        assert_eq!(b.begin("u", t).unwrap_err(), AuthResult::Delay(1));
        let t = t + s(1);
        assert_eq!(b.begin("u", t).unwrap().failed(t), AuthResult::Delay(2));
        let t = t + s(2);
        assert_eq!(a.begin("u", t).unwrap().failed(t), AuthResult::Locked(300));
        assert_eq!(
            b.begin("u", t + s(100)).unwrap_err(),
            AuthResult::Locked(200)
        );
        assert!(b.begin("other", t).is_ok(), "per user");
        // A success on one starts the count over on both.
        let t = t + s(300);
        b.begin("u", t).unwrap().succeeded();
        assert_eq!(a.begin("u", t).unwrap().failed(t), AuthResult::Delay(1));
        // An attempt dropped uncounted leaves no row; one left by a dead
        // process holds the name until its mark is stale.
        let t = t + s(1);
        drop(a.begin("v", t).unwrap());
        let held = b.begin("v", t).unwrap();
        std::mem::forget(held);
        assert_eq!(a.begin("v", t + s(1)).unwrap_err(), AuthResult::Delay(1));
        assert!(a.begin("v", t + BUSY_STALE + s(1)).is_ok());
        assert!(db.lacks(b"\"count\""), "values are wrapped");
    }

    /// An attempt whose mark went stale, and whose name a newer attempt
    /// took since, ends without touching the newer attempt's mark: its
    /// failure still counts, its success clears nothing, and a third
    /// attempt waits for the newer one.
    fn a_stale_attempt_ends_only_its_own_mark(db: &Db) {
        let t = Instant::now();
        let s = Duration::from_secs;
        let one = || Failures::shared(s(1), 5, s(300), db.open());
        let (a, b) = (one(), one());
        let first = a.begin("u", t).unwrap();
        let later = t + BUSY_STALE + s(1);
        let second = b.begin("u", later).unwrap();
        assert_eq!(first.failed(later), AuthResult::Delay(1), "it counts");
        let after = later + s(1);
        assert_eq!(
            a.begin("u", after).unwrap_err(),
            AuthResult::Delay(1),
            "two checks of one user at once"
        );
        assert_eq!(second.failed(after), AuthResult::Delay(2));
        let after = after + s(2);
        // A stale success neither frees the newer mark nor clears the
        // count; a stale attempt dropped uncounted leaves the mark too.
        let first = a.begin("u", after).unwrap();
        let later = after + BUSY_STALE + s(1);
        let second = b.begin("u", later).unwrap();
        first.succeeded();
        assert_eq!(b.begin("u", later).unwrap_err(), AuthResult::Delay(1));
        let later = later + BUSY_STALE + s(1);
        let third = a.begin("u", later).unwrap();
        drop(second);
        assert_eq!(b.begin("u", later).unwrap_err(), AuthResult::Delay(1));
        assert_eq!(third.failed(later), AuthResult::Delay(4), "still counted");
        // The holder's own end frees the name.
        let later = later + s(4);
        a.begin("u", later).unwrap().succeeded();
        assert_eq!(
            b.begin("u", later).unwrap().failed(later),
            AuthResult::Delay(1)
        );
    }

    #[test]
    fn a_stale_attempt_ends_only_its_own_mark_on_sqlite() {
        a_stale_attempt_ends_only_its_own_mark(&Db::sqlite());
    }

    #[test]
    fn a_stale_attempt_ends_only_its_own_mark_on_postgres() {
        a_stale_attempt_ends_only_its_own_mark(&Db::postgres("kt_attempt"));
    }

    #[test]
    fn counted_across_processes_on_sqlite() {
        counted_across_processes(&Db::sqlite());
    }

    #[test]
    fn counted_across_processes_on_postgres() {
        counted_across_processes(&Db::postgres("kt_failures"));
    }
}
