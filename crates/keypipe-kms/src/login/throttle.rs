//! Failed-login throttling per user name and source address.
//!
//! **Per source.** Attempts are throttled per `(domain, name, source)`: a
//! source that sends wrong passwords for a name backs off; every other
//! source is checked as usual, so nobody can lock a user out by guessing
//! wrong for her (security review F16; Vault and AWS do the same). The
//! source is the connection's address; an IPv6 address counts as its /64
//! (one host usually owns a whole /64 and could otherwise hop through it),
//! and an IPv4-mapped IPv6 address as the IPv4 address. Behind a reverse
//! proxy every client shares the proxy's address (and its back-off).
//!
//! **The rule, per source.** An attempt is charged *before* its password
//! is checked: it counts as the source's next failure and holds the source
//! for `base · 2^(n−1)` (capped at `max`) from the attempt's start. Any
//! attempt from that source while it is held is not checked at all and
//! fails when the hold ends, so guesses sent in parallel (or pipelined)
//! from one source are checked one hold at a time. A success clears the
//! source (the charge is undone); a failure keeps it. Names are tracked
//! whether or not the user exists, so answers and their timing tell
//! nothing about which users exist. An entry idle [`FORGET_AFTER`] past its
//! hold starts over.
//!
//! **Guard against distributed guessing.** Each name also counts the
//! failures charged to it from every source. A failing source is held for
//! the delay of whichever count is higher, its own or the name's: under a
//! distributed attack every new source is held `max` after its first
//! wrong guess instead of climbing from `base`. The guard only lengthens
//! the hold that follows a source's *own* failure: a source with no
//! failures is never held, whatever the name's count, so the right
//! password from a clean source always works at once. (A user who mistypes
//! while her name is under attack waits up to `max` before her next try.)
//! A success takes the source's own failures (its charge included) off
//! the name's count: proving the password forgives one's own mistakes,
//! not the other sources'.
//!
//! **Strangers under attack.** Once a name has [`SURGE`] failures (from
//! any sources), a source that never logged in to it successfully (a
//! stranger) shares the name's hold: strangers are checked one at a time
//! per hold, so an attacker with many addresses (an IPv6 /48 is 65 536
//! /64s) gets no more guesses than one with a single address. Sources
//! that logged in to the name before ([`TRUSTED_FOR`], in memory) are not
//! held by it: the owner keeps logging in from her usual address while
//! her name is under attack; only a first login from a new address waits.
//!
//! All tables (per source, per name, trusted) are bounded; when one is full,
//! expired entries are dropped and, failing that, the entry whose hold
//! ends soonest, so every source and name being attempted is always
//! tracked.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An entry whose hold ended this long ago starts over.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Failures of a name from which strangers share the name's hold.
pub const SURGE: u32 = 10;
/// A source that logged in to a name is trusted for it this long.
pub const TRUSTED_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

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

type Name = (String, String);
type SourceKey = (String, String, IpAddr);

#[derive(Debug, Default)]
struct Tables {
    /// Per `(domain, name, source)`: the back-off.
    sources: HashMap<SourceKey, State>,
    /// Per `(domain, name)`: failures from every source (the guard).
    names: HashMap<Name, State>,
    /// Sources that logged in to a name, and when they did last.
    trusted: HashMap<SourceKey, Instant>,
}

/// The per-source failure table, with a per-name guard (bounded).
#[derive(Debug)]
pub struct Throttle {
    base: Duration,
    max: Duration,
    capacity: usize,
    tables: Mutex<Tables>,
}

/// The address `ip` is throttled as: an IPv6 address's /64, an
/// IPv4-mapped IPv6 address's IPv4 address, an IPv4 address itself.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        },
    }
}

/// Makes room for `key` in `map` (at most `capacity` entries): expired
/// entries go first, else the one whose hold ends soonest.
fn make_room<K: Eq + Hash + Clone>(
    map: &mut HashMap<K, State>,
    key: &K,
    capacity: usize,
    now: Instant,
) {
    if map.contains_key(key) || map.len() < capacity {
        return;
    }
    map.retain(|_, s| s.held_until + FORGET_AFTER > now);
    if map.len() >= capacity
        && let Some(soonest) = map
            .iter()
            .min_by_key(|(_, s)| s.held_until)
            .map(|(k, _)| k.clone())
    {
        map.remove(&soonest);
    }
}

/// Charges one failure to `key`'s entry (starting over when it was idle
/// long enough); its failure count.
fn charge<K: Eq + Hash + Clone>(
    map: &mut HashMap<K, State>,
    key: K,
    capacity: usize,
    now: Instant,
) -> u32 {
    make_room(map, &key, capacity, now);
    let state = map.entry(key).or_insert(State {
        failures: 0,
        held_until: now,
    });
    if state.held_until + FORGET_AFTER <= now {
        state.failures = 0;
        state.held_until = now;
    }
    state.failures = state.failures.saturating_add(1);
    state.failures
}

impl Throttle {
    /// A table with delays `base` doubling up to `max`, tracking at most
    /// `capacity` sources (and `capacity` names).
    pub fn new(base: Duration, max: Duration, capacity: usize) -> Self {
        Throttle {
            base,
            max: max.max(base),
            capacity: capacity.max(1),
            tables: Mutex::new(Tables::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// Starts an attempt on `(domain, name)` from `source`: held, or
    /// charged and to be checked.
    pub fn attempt(&self, domain: &str, name: &str, source: IpAddr, now: Instant) -> Gate {
        let mut t = self.lock();
        let key = (domain.to_owned(), name.to_owned(), source_of(source));
        if let Some(s) = t.sources.get(&key)
            && s.held_until > now
        {
            return Gate::Held(s.held_until);
        }
        let name_key = (key.0.clone(), key.1.clone());
        let trusted = t
            .trusted
            .get(&key)
            .is_some_and(|&at| at + TRUSTED_FOR > now);
        if !trusted
            && let Some(n) = t.names.get(&name_key)
            && n.failures >= SURGE
            && n.held_until > now
        {
            return Gate::Held(n.held_until);
        }
        let name_failures = charge(&mut t.names, name_key.clone(), self.capacity, now);
        let own_failures = charge(&mut t.sources, key.clone(), self.capacity, now);
        let held_until = now + self.delay(own_failures.max(name_failures));
        if let Some(s) = t.sources.get_mut(&key) {
            s.held_until = held_until;
        }
        if let Some(n) = t.names.get_mut(&name_key) {
            n.held_until = n.held_until.max(held_until);
        }
        Gate::Check(held_until)
    }

    /// The checked attempt from `source` succeeded: the source starts over
    /// for the name, and the name's count forgets the source's failures
    /// (this attempt's charge included).
    pub fn succeeded(&self, domain: &str, name: &str, source: IpAddr, now: Instant) {
        let mut t = self.lock();
        let key = (domain.to_owned(), name.to_owned(), source_of(source));
        if !t.trusted.contains_key(&key) && t.trusted.len() >= self.capacity {
            t.trusted.retain(|_, &mut at| at + TRUSTED_FOR > now);
            if t.trusted.len() >= self.capacity
                && let Some(oldest) = t
                    .trusted
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone())
            {
                t.trusted.remove(&oldest);
            }
        }
        t.trusted.insert(key.clone(), now);
        let own = t.sources.remove(&key).map_or(1, |s| s.failures);
        let name_key = (key.0, key.1);
        if let Some(n) = t.names.get_mut(&name_key) {
            n.failures = n.failures.saturating_sub(own);
            if n.failures == 0 {
                t.names.remove(&name_key);
            }
        }
    }

    /// Sources and names tracked.
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let t = self.lock();
        (t.sources.len(), t.names.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn delays_grow_cap_and_reset() {
        let ms = Duration::from_millis;
        let x = ip("192.0.2.1");
        let t = Throttle::new(ms(100), ms(350), 10);
        let t0 = Instant::now();
        assert_eq!(t.attempt("d", "u", x, t0), Gate::Check(t0 + ms(100)));
        // Parallel attempts while the first is checked are held, uncharged.
        assert_eq!(
            t.attempt("d", "u", x, t0 + ms(50)),
            Gate::Held(t0 + ms(100))
        );
        assert_eq!(t.attempt("d", "other", x, t0), Gate::Check(t0 + ms(100)));
        let t1 = t0 + ms(100);
        assert_eq!(t.attempt("d", "u", x, t1), Gate::Check(t1 + ms(200)));
        let t2 = t1 + ms(200);
        assert_eq!(
            t.attempt("d", "u", x, t2),
            Gate::Check(t2 + ms(350)),
            "capped"
        );
        t.succeeded("d", "u", x, t2);
        assert_eq!(t.attempt("d", "u", x, t2), Gate::Check(t2 + ms(100)));
        // Idle long enough: starts over.
        let t3 = t2 + ms(100) + FORGET_AFTER;
        assert_eq!(t.attempt("d", "u", x, t3), Gate::Check(t3 + ms(100)));
    }

    /// Security review F16: wrong guesses from X never hold Y for the same
    /// name, while X is held.
    #[test]
    fn failures_from_one_source_never_hold_another() {
        let ms = Duration::from_millis;
        let (x, y) = (ip("192.0.2.1"), ip("198.51.100.7"));
        let t = Throttle::new(ms(100), ms(1000), 100);
        let t0 = Instant::now();
        // X guesses wrong, again and again as each hold ends.
        let mut now = t0;
        for _ in 0..5 {
            let Gate::Check(until) = t.attempt("d", "alice", x, now) else {
                panic!("X's hold had ended");
            };
            now = until;
        }
        let x_held = t.attempt("d", "alice", x, now - ms(1));
        assert!(matches!(x_held, Gate::Held(u) if u == now), "{x_held:?}");
        // Y is checked at once, every time X is held ...
        for i in 0..5 {
            let at = now - ms(500) + ms(100 * i);
            assert!(
                matches!(t.attempt("d", "alice", y, at), Gate::Check(_)),
                "Y held by X's failures (attempt {i})"
            );
            t.succeeded("d", "alice", y, at);
        }
        // ... and X is still held.
        assert_eq!(t.attempt("d", "alice", x, now - ms(1)), Gate::Held(now));
    }

    #[test]
    fn a_name_under_attack_slows_failing_sources_but_never_holds_a_clean_one() {
        let ms = Duration::from_millis;
        let t = Throttle::new(ms(100), ms(1600), 100);
        let t0 = Instant::now();
        // Eight sources each guess once: the name's count climbs, so each
        // new failing source is held longer than a first failure's 100 ms.
        for i in 0..8u8 {
            let source = IpAddr::from([203, 0, 113, i]);
            let gate = t.attempt("d", "alice", source, t0);
            let expected = t0 + t.delay(u32::from(i) + 1);
            assert_eq!(gate, Gate::Check(expected), "source {i}");
        }
        // A ninth, clean source is still checked at once; were it to fail,
        // it would be held the longest delay.
        let clean = ip("192.0.2.99");
        assert_eq!(
            t.attempt("d", "alice", clean, t0),
            Gate::Check(t0 + ms(1600))
        );
        // Another name is unaffected.
        assert_eq!(t.attempt("d", "bob", clean, t0), Gate::Check(t0 + ms(100)));
    }

    /// An attacker hopping through the /64s of a /48 gets one check per
    /// hold once the name has SURGE failures; the owner's usual address
    /// (it logged in before) is checked at once all along.
    #[test]
    fn strangers_share_the_hold_of_a_name_under_attack_but_trusted_sources_do_not() {
        let ms = Duration::from_millis;
        let t = Throttle::new(ms(100), ms(1000), 1000);
        let t0 = Instant::now();
        let home = ip("192.0.2.10");
        assert!(matches!(t.attempt("d", "alice", home, t0), Gate::Check(_)));
        t.succeeded("d", "alice", home, t0);
        let hop = |i: u16| IpAddr::from([0x2001, 0xdb8, 7, i, 0, 0, 0, 1]);
        let mut checked = 0;
        for i in 0..200u16 {
            if let Gate::Check(_) = t.attempt("d", "alice", hop(i), t0 + ms(1)) {
                checked += 1;
            }
        }
        assert_eq!(
            checked, SURGE,
            "then every stranger waits for the name's hold"
        );
        assert!(matches!(
            t.attempt("d", "alice", home, t0 + ms(2)),
            Gate::Check(_)
        ));
        t.succeeded("d", "alice", home, t0 + ms(2));
        // Once the name's hold ends, one more stranger is checked.
        let later = t0 + ms(2) + ms(1000);
        assert!(matches!(
            t.attempt("d", "alice", hop(500), later),
            Gate::Check(_)
        ));
        assert!(matches!(
            t.attempt("d", "alice", hop(501), later),
            Gate::Held(_)
        ));
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(source_of(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(source_of(ip("192.0.2.1")), ip("192.0.2.1"));
        let ms = Duration::from_millis;
        let t = Throttle::new(ms(100), ms(1000), 10);
        let t0 = Instant::now();
        t.attempt("d", "u", ip("2001:db8:1:2::1"), t0);
        // Another address of the same /64: the same source, held.
        assert_eq!(
            t.attempt("d", "u", ip("2001:db8:1:2:ffff::9"), t0),
            Gate::Held(t0 + ms(100))
        );
        // Another /64: another source.
        assert!(matches!(
            t.attempt("d", "u", ip("2001:db8:1:3::1"), t0),
            Gate::Check(_)
        ));
        t.attempt("d", "u", ip("192.0.2.1"), t0);
        assert!(matches!(
            t.attempt("d", "u", ip("::ffff:192.0.2.1"), t0),
            Gate::Held(_)
        ));
    }

    #[test]
    fn a_full_table_still_tracks_every_source_attempted() {
        let ms = Duration::from_millis;
        let x = ip("192.0.2.1");
        let t = Throttle::new(ms(10), ms(1000), 2);
        let t0 = Instant::now();
        t.attempt("d", "a", x, t0);
        t.attempt("d", "a", x, t0 + ms(10)); // a: held until t0 + 30 ms
        t.attempt("d", "b", x, t0); // b: held until t0 + 10 ms
        // c evicts b (its hold ends soonest) and is itself held.
        assert_eq!(t.attempt("d", "c", x, t0), Gate::Check(t0 + ms(10)));
        assert_eq!(t.len(), (2, 2));
        assert_eq!(t.attempt("d", "c", x, t0 + ms(5)), Gate::Held(t0 + ms(10)));
        assert_eq!(t.attempt("d", "a", x, t0 + ms(15)), Gate::Held(t0 + ms(30)));
        // Many sources for one name: bounded too.
        for i in 0..10u8 {
            t.attempt("d", "a", IpAddr::from([198, 51, 100, i]), t0 + ms(20));
        }
        assert_eq!(t.len().0, 2);
    }
}
