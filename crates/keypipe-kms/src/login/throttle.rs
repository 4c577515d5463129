//! Failed-login throttling per user name and source address, in this
//! process or in the shared store. This file is long because the throttle
//! is one concept: one set of rules (pure functions) that both modes
//! apply, each step (an attempt, a success) written for both side by side,
//! with the shared rows' encoding.
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
//!
//! **Shared.** When several processes share a PostgreSQL store
//! ([`Throttle::shared`]) the tables are rows of its ephemeral table (kinds
//! [`SOURCE_KIND`], [`NAME_KIND`], [`TRUSTED_KIND`]), so an attacker gains
//! nothing by spreading guesses over the processes. A row's id is a hash of
//! its domain, name (and source), so neither is stored in clear; its value
//! holds the count and wall-clock times (ms since the epoch), and it is
//! forgotten when it no longer matters ([`FORGET_AFTER`] past its hold,
//! [`TRUSTED_FOR`] after the login). The rules are the same functions in
//! both modes. An attempt is decided on the source's row, the name's row
//! and the source's trust in one transaction (held, or the source and the
//! name both charged), as in memory under the lock: two attempts from one
//! source are never both checked, nor, once a name has [`SURGE`] failures,
//! two strangers' attempts per hold of the name, whichever processes they
//! reach. An attempt that reads as held (read-only transactions, no write)
//! is answered so at once; only the transaction lets one be checked. A
//! success changes its three rows in one transaction too. The shared tables
//! are bounded by time, not by count. When the store fails, an attempt is
//! [`Gate::StoreFailed`] (not checked) and a success's clearing is skipped;
//! both are logged.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{EphemeralChange, EphemeralRow, EphemeralStore, StoreError};
use crate::store::{duration_ms, instant_at, row_id, wall_ms};

/// An entry whose hold ended this long ago starts over.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Failures of a name from which strangers share the name's hold.
pub const SURGE: u32 = 10;
/// A source that logged in to a name is trusted for it this long.
pub const TRUSTED_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// Ephemeral-row kind of a shared per-source entry.
pub const SOURCE_KIND: &str = "login-source";
/// Ephemeral-row kind of a shared per-name entry.
pub const NAME_KIND: &str = "login-name";
/// Ephemeral-row kind of a shared trusted source.
pub const TRUSTED_KIND: &str = "login-trusted";

/// A time the rules work on: an [`Instant`] in memory, wall-clock ms
/// since the epoch in a shared store.
trait Time: Copy + Ord {
    /// `self` plus `d`.
    fn after(self, d: Duration) -> Self;
}

impl Time for Instant {
    fn after(self, d: Duration) -> Self {
        self + d
    }
}

impl Time for u64 {
    fn after(self, d: Duration) -> Self {
        self.saturating_add(duration_ms(d))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State<T> {
    failures: u32,
    held_until: T,
}

impl<T: Time> State<T> {
    /// Until when the entry matters: from then on it starts over (and a
    /// shared row is forgotten).
    fn forget_at(&self) -> T {
        self.held_until.after(FORGET_AFTER)
    }

    fn is_live(&self, now: T) -> bool {
        self.forget_at() > now
    }
}

// The rules, the same in both modes.

/// Whether an attempt is held, and until when: while its source is held;
/// else, unless the source is trusted for the name (`trusted_at`: its last
/// login), while the name, with [`SURGE`] failures or more, is held.
fn hold_of<T: Time>(
    source: Option<&State<T>>,
    name: Option<&State<T>>,
    trusted_at: Option<T>,
    now: T,
) -> Option<T> {
    if let Some(s) = source
        && s.held_until > now
    {
        return Some(s.held_until);
    }
    let trusted = trusted_at.is_some_and(|at| at.after(TRUSTED_FOR) > now);
    if !trusted
        && let Some(n) = name
        && n.failures >= SURGE
        && n.held_until > now
    {
        return Some(n.held_until);
    }
    None
}

/// The entry with one more failure charged (an entry idle long enough, or
/// none, starts over).
fn charged<T: Time>(state: Option<State<T>>, now: T) -> State<T> {
    match state {
        Some(s) if s.is_live(now) => State {
            failures: s.failures.saturating_add(1),
            held_until: s.held_until,
        },
        _ => State {
            failures: 1,
            held_until: now,
        },
    }
}

/// The failures a success forgives: the source's own (its charge
/// included), or just the charge when its entry is gone.
fn own_failures<T>(source: Option<State<T>>) -> u32 {
    source.map_or(1, |s| s.failures)
}

/// The name's entry once a success forgave `own` failures (`None`: none
/// left, the entry goes).
fn forgiven<T>(name: State<T>, own: u32) -> Option<State<T>> {
    let failures = name.failures.saturating_sub(own);
    (failures > 0).then_some(State {
        failures,
        held_until: name.held_until,
    })
}

/// What to do with an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Charged: check the password now; on failure answer at this instant.
    Check(Instant),
    /// Held: fail without checking, answering at this instant.
    Held(Instant),
    /// Shared mode only: the store failed (logged); fail at once without
    /// checking: 503 when `unavailable` (it cannot be reached now), else
    /// 500.
    StoreFailed {
        /// The store cannot be reached now (`StoreError::is_unavailable`).
        unavailable: bool,
    },
}

type Name = (String, String);
type SourceKey = (String, String, IpAddr);

#[derive(Debug, Default)]
struct Tables {
    /// Per `(domain, name, source)`: the back-off.
    sources: HashMap<SourceKey, State<Instant>>,
    /// Per `(domain, name)`: failures from every source (the guard).
    names: HashMap<Name, State<Instant>>,
    /// Sources that logged in to a name, and when they did last.
    trusted: HashMap<SourceKey, Instant>,
}

/// Where the tables are.
enum Mode {
    /// This process's memory, bounded.
    Memory(Mutex<Tables>),
    /// The ephemeral rows of a store shared by several processes.
    Shared(Arc<dyn EphemeralStore>),
}

/// The per-source failure table, with a per-name guard (bounded in
/// memory; or shared through a store).
pub struct Throttle {
    base: Duration,
    max: Duration,
    capacity: usize,
    mode: Mode,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Memory(_) => "memory",
            Mode::Shared(_) => "shared",
        };
        f.debug_struct("Throttle")
            .field("base", &self.base)
            .field("max", &self.max)
            .field("capacity", &self.capacity)
            .field("mode", &mode)
            .finish_non_exhaustive()
    }
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
    map: &mut HashMap<K, State<Instant>>,
    key: &K,
    capacity: usize,
    now: Instant,
) {
    if map.contains_key(key) || map.len() < capacity {
        return;
    }
    map.retain(|_, s| s.is_live(now));
    if map.len() >= capacity
        && let Some(soonest) = map
            .iter()
            .min_by_key(|(_, s)| s.held_until)
            .map(|(k, _)| k.clone())
    {
        map.remove(&soonest);
    }
}

/// Charges one failure to `key`'s entry in memory (see [`charged`]); its
/// failure count.
fn charge<K: Eq + Hash + Clone>(
    map: &mut HashMap<K, State<Instant>>,
    key: K,
    capacity: usize,
    now: Instant,
) -> u32 {
    make_room(map, &key, capacity, now);
    let state = charged(map.get(&key).copied(), now);
    map.insert(key, state);
    state.failures
}

// Shared rows.

/// Version of the shared rows' layout.
const ROW_VERSION: u8 = 1;

/// `version (1) ‖ failures (4) ‖ held_until ms (8)`, big-endian.
fn encode_state(s: &State<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(13);
    out.push(ROW_VERSION);
    out.extend_from_slice(&s.failures.to_be_bytes());
    out.extend_from_slice(&s.held_until.to_be_bytes());
    out
}

fn decode_state(value: &[u8]) -> Result<State<u64>, StoreError> {
    match value {
        [ROW_VERSION, rest @ ..] if rest.len() == 12 => {
            let (failures, held) = rest.split_at(4);
            let mut f = [0u8; 4];
            let mut h = [0u8; 8];
            f.copy_from_slice(failures);
            h.copy_from_slice(held);
            Ok(State {
                failures: u32::from_be_bytes(f),
                held_until: u64::from_be_bytes(h),
            })
        }
        _ => Err(StoreError::Corrupt(
            "login throttle row: unknown layout".into(),
        )),
    }
}

/// `version (1) ‖ at ms (8)`, big-endian.
fn encode_at(at: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(ROW_VERSION);
    out.extend_from_slice(&at.to_be_bytes());
    out
}

fn decode_at(value: &[u8]) -> Result<u64, StoreError> {
    match value {
        [ROW_VERSION, rest @ ..] if rest.len() == 8 => {
            let mut at = [0u8; 8];
            at.copy_from_slice(rest);
            Ok(u64::from_be_bytes(at))
        }
        _ => Err(StoreError::Corrupt(
            "login trust row: unknown layout".into(),
        )),
    }
}

fn put_state(s: &State<u64>) -> EphemeralChange {
    EphemeralChange::Put {
        value: encode_state(s).into(),
        forget_ms: s.forget_at(),
    }
}

fn state_of(row: Option<EphemeralRow>) -> Result<Option<State<u64>>, StoreError> {
    row.map(|r| decode_state(&r.value)).transpose()
}

fn name_id(domain: &str, name: &str) -> [u8; 32] {
    row_id(&[domain.as_bytes(), name.as_bytes()])
}

fn source_id(domain: &str, name: &str, source: IpAddr) -> [u8; 32] {
    let address = match source {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    row_id(&[domain.as_bytes(), name.as_bytes(), &address])
}

fn at_of(row: Option<EphemeralRow>) -> Result<Option<u64>, StoreError> {
    row.map(|r| decode_at(&r.value)).transpose()
}

impl Throttle {
    /// A table in memory with delays `base` doubling up to `max`, tracking
    /// at most `capacity` sources (and `capacity` names).
    pub fn new(base: Duration, max: Duration, capacity: usize) -> Self {
        Throttle {
            base,
            max: max.max(base),
            capacity: capacity.max(1),
            mode: Mode::Memory(Mutex::new(Tables::default())),
        }
    }

    /// A table in `store`, shared with every process using it, with
    /// delays `base` doubling up to `max`.
    pub fn shared(base: Duration, max: Duration, store: Arc<dyn EphemeralStore>) -> Self {
        Throttle {
            base,
            max: max.max(base),
            capacity: usize::MAX,
            mode: Mode::Shared(store),
        }
    }

    fn lock(tables: &Mutex<Tables>) -> std::sync::MutexGuard<'_, Tables> {
        tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// The hold of a charged attempt: the delay of the higher count, the
    /// source's own or the name's.
    fn hold<T: Time>(&self, now: T, own: u32, name: u32) -> T {
        now.after(self.delay(own.max(name)))
    }

    /// Starts an attempt on `(domain, name)` from `source`: held, or
    /// charged and to be checked.
    pub fn attempt(&self, domain: &str, name: &str, source: IpAddr, now: Instant) -> Gate {
        match &self.mode {
            Mode::Memory(tables) => {
                self.attempt_memory(&mut Self::lock(tables), domain, name, source, now)
            }
            Mode::Shared(store) => {
                let now_ms = wall_ms(now);
                let at = |ms| instant_at(now, now_ms, ms);
                match self.attempt_shared(store.as_ref(), domain, name, source, now_ms) {
                    Ok(Ok(until)) => Gate::Check(at(until)),
                    Ok(Err(until)) => Gate::Held(at(until)),
                    Err(e) => {
                        tracing::error!("login throttle store failure: {e}");
                        Gate::StoreFailed {
                            unavailable: e.is_unavailable(),
                        }
                    }
                }
            }
        }
    }

    fn attempt_memory(
        &self,
        t: &mut Tables,
        domain: &str,
        name: &str,
        source: IpAddr,
        now: Instant,
    ) -> Gate {
        let key = (domain.to_owned(), name.to_owned(), source_of(source));
        let name_key = (key.0.clone(), key.1.clone());
        if let Some(until) = hold_of(
            t.sources.get(&key),
            t.names.get(&name_key),
            t.trusted.get(&key).copied(),
            now,
        ) {
            return Gate::Held(until);
        }
        let name_failures = charge(&mut t.names, name_key.clone(), self.capacity, now);
        let own_failures = charge(&mut t.sources, key.clone(), self.capacity, now);
        let held_until = self.hold(now, own_failures, name_failures);
        if let Some(s) = t.sources.get_mut(&key) {
            s.held_until = held_until;
        }
        if let Some(n) = t.names.get_mut(&name_key) {
            n.held_until = n.held_until.max(held_until);
        }
        Gate::Check(held_until)
    }

    /// An attempt in the store: `Ok(until)` checked, `Err(until)` held.
    fn attempt_shared(
        &self,
        store: &dyn EphemeralStore,
        domain: &str,
        name: &str,
        source: IpAddr,
        now: u64,
    ) -> Result<Result<u64, u64>, StoreError> {
        let source = source_of(source);
        let (sid, nid) = (source_id(domain, name, source), name_id(domain, name));
        if let Some(until) = Self::held_shared(store, &sid, &nid, now)? {
            return Ok(Err(until));
        }
        // The three rows decide in one transaction, as `attempt_memory`
        // does under the lock: held, or the source and the name charged.
        let mut step = Err(now);
        store.ephemeral_update_rows(
            &[(SOURCE_KIND, &sid), (NAME_KIND, &nid), (TRUSTED_KIND, &sid)],
            &mut |rows| {
                let mut rows = rows.into_iter();
                let own = state_of(rows.next().flatten())?;
                let theirs = state_of(rows.next().flatten())?;
                let trusted_at = at_of(rows.next().flatten())?;
                if let Some(until) = hold_of(own.as_ref(), theirs.as_ref(), trusted_at, now) {
                    step = Err(until);
                    let keep = || EphemeralChange::Keep;
                    return Ok(vec![keep(), keep(), keep()]);
                }
                let (own, theirs) = (charged(own, now), charged(theirs, now));
                let until = self.hold(now, own.failures, theirs.failures);
                step = Ok(until);
                Ok(vec![
                    put_state(&State {
                        failures: own.failures,
                        held_until: until,
                    }),
                    put_state(&State {
                        failures: theirs.failures,
                        held_until: theirs.held_until.max(until),
                    }),
                    EphemeralChange::Keep,
                ])
            },
        )?;
        Ok(step)
    }

    /// The hold of an attempt as read-only transactions see the rows,
    /// writing nothing (most attempts under attack are held). Only a hold
    /// is taken from them: what is read may be outdated by the time it is
    /// acted on, and a hold read is one the attempt could have met (holds
    /// end with time or a success); an attempt not held is decided again
    /// in [`Throttle::attempt_shared`]'s transaction.
    fn held_shared(
        store: &dyn EphemeralStore,
        sid: &[u8],
        nid: &[u8],
        now: u64,
    ) -> Result<Option<u64>, StoreError> {
        let own = state_of(store.ephemeral_get(SOURCE_KIND, sid)?)?;
        if let Some(until) = hold_of(own.as_ref(), None, None, now) {
            return Ok(Some(until));
        }
        let theirs = state_of(store.ephemeral_get(NAME_KIND, nid)?)?;
        if hold_of(None, theirs.as_ref(), None, now).is_none() {
            return Ok(None);
        }
        // The name holds strangers: is the source one?
        let trusted_at = at_of(store.ephemeral_get(TRUSTED_KIND, sid)?)?;
        Ok(hold_of(None, theirs.as_ref(), trusted_at, now))
    }

    /// The checked attempt from `source` succeeded: the source starts over
    /// for the name, and the name's count forgets the source's failures
    /// (this attempt's charge included). Shared, a store failure is
    /// logged (the login stands).
    pub fn succeeded(&self, domain: &str, name: &str, source: IpAddr, now: Instant) {
        match &self.mode {
            Mode::Memory(tables) => {
                self.succeeded_memory(&mut Self::lock(tables), domain, name, source, now);
            }
            Mode::Shared(store) => {
                if let Err(e) =
                    Self::succeeded_shared(store.as_ref(), domain, name, source, wall_ms(now))
                {
                    tracing::error!("login throttle store failure (after a success): {e}");
                }
            }
        }
    }

    fn succeeded_memory(
        &self,
        t: &mut Tables,
        domain: &str,
        name: &str,
        source: IpAddr,
        now: Instant,
    ) {
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
        let own = own_failures(t.sources.remove(&key));
        let name_key = (key.0, key.1);
        if let Some(&n) = t.names.get(&name_key) {
            match forgiven(n, own) {
                Some(n) => t.names.insert(name_key, n),
                None => t.names.remove(&name_key),
            };
        }
    }

    fn succeeded_shared(
        store: &dyn EphemeralStore,
        domain: &str,
        name: &str,
        source: IpAddr,
        now: u64,
    ) -> Result<(), StoreError> {
        let source = source_of(source);
        let (sid, nid) = (source_id(domain, name, source), name_id(domain, name));
        // As `succeeded_memory`: trusted, the source cleared, its failures
        // forgiven on the name, in one transaction.
        store.ephemeral_update_rows(
            &[(TRUSTED_KIND, &sid), (SOURCE_KIND, &sid), (NAME_KIND, &nid)],
            &mut |rows| {
                let mut rows = rows.into_iter().skip(1);
                let own = own_failures(state_of(rows.next().flatten())?);
                let theirs = match state_of(rows.next().flatten())?.map(|n| forgiven(n, own)) {
                    Some(Some(n)) => put_state(&n),
                    Some(None) => EphemeralChange::Remove,
                    None => EphemeralChange::Keep,
                };
                let trusted = EphemeralChange::Put {
                    value: encode_at(now).into(),
                    forget_ms: now.after(TRUSTED_FOR),
                };
                Ok(vec![trusted, EphemeralChange::Remove, theirs])
            },
        )
    }

    /// Sources and names tracked.
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        match &self.mode {
            Mode::Memory(tables) => {
                let t = Self::lock(tables);
                (t.sources.len(), t.names.len())
            }
            Mode::Shared(store) => {
                let count = |kind| store.ephemeral_count(kind).unwrap() as usize;
                (count(SOURCE_KIND), count(NAME_KIND))
            }
        }
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

    /// Shared mode over a real store: each `Throttle` has a store handle
    /// of its own, as separate processes would.
    mod shared {
        use super::*;
        use crate::store::{Store, StoreOptions};

        struct Site {
            dir: tempfile::TempDir,
            options: StoreOptions,
        }

        impl Site {
            fn sqlite() -> Site {
                let dir = tempfile::tempdir().unwrap();
                let options = StoreOptions::new(dir.path());
                Site { dir, options }
            }

            fn postgres(label: &str) -> Site {
                let dir = tempfile::tempdir().unwrap();
                let options = StoreOptions {
                    url: Some(crate::store::testing::fresh_pg_database(label)),
                    ..StoreOptions::new(dir.path())
                };
                Site { dir, options }
            }

            fn throttle(&self, base_ms: u64, max_ms: u64) -> Throttle {
                let store = Arc::new(Store::open(&self.options).unwrap());
                Throttle::shared(
                    Duration::from_millis(base_ms),
                    Duration::from_millis(max_ms),
                    store,
                )
            }
        }

        /// Failures through one handle hold the next attempt through
        /// another; a success through one clears the source for the other.
        fn handles_share_holds_and_successes(site: &Site) {
            let ms = Duration::from_millis;
            let (x, y) = (ip("192.0.2.1"), ip("198.51.100.7"));
            let (a, b) = (site.throttle(100, 1000), site.throttle(100, 1000));
            let t0 = Instant::now();
            assert_eq!(a.attempt("d", "alice", x, t0), Gate::Check(t0 + ms(100)));
            // The same source through the other handle is held, uncharged.
            assert_eq!(
                b.attempt("d", "alice", x, t0 + ms(50)),
                Gate::Held(t0 + ms(100))
            );
            let t1 = t0 + ms(100);
            assert_eq!(b.attempt("d", "alice", x, t1), Gate::Check(t1 + ms(200)));
            assert_eq!(
                a.attempt("d", "alice", x, t1 + ms(10)),
                Gate::Held(t1 + ms(200))
            );
            // Another source is checked at once, held by the name's count
            // (x's two failures and its own) were it to fail.
            assert_eq!(a.attempt("d", "alice", y, t1), Gate::Check(t1 + ms(400)));
            // x's right password, through b, clears x for a too.
            let t2 = t1 + ms(200);
            assert!(matches!(b.attempt("d", "alice", x, t2), Gate::Check(_)));
            b.succeeded("d", "alice", x, t2);
            // The name keeps y's failure: x's next failure counts 2.
            assert_eq!(a.attempt("d", "alice", x, t2), Gate::Check(t2 + ms(200)));
            assert_eq!(a.len(), (2, 1));
            // Another name, another domain: untouched.
            assert_eq!(b.attempt("e", "alice", x, t2), Gate::Check(t2 + ms(100)));
        }

        /// Memory and shared throttles (two handles, alternating) give the
        /// same answers to the same attempts and successes: the rules are
        /// the same.
        fn same_answers_as_memory(site: &Site) {
            let ms = Duration::from_millis;
            let memory = Throttle::new(ms(20), ms(700), 1000);
            let handles = [site.throttle(20, 700), site.throttle(20, 700)];
            let sources: Vec<IpAddr> = (0..12u8)
                .map(|i| IpAddr::from([203, 0, 113, i]))
                .chain([ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::2")])
                .collect();
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut next = |n: u64| {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (seed >> 33) % n
            };
            let mut now = Instant::now();
            let (mut held, mut checked, mut succeeded) = (0, 0, 0);
            for step in 0..160 {
                now += ms(next(60));
                let name = ["alice", "bob"][next(2) as usize];
                let source = sources[next(sources.len() as u64) as usize];
                let shared = &handles[step % 2];
                let expected = memory.attempt("m", name, source, now);
                let got = shared.attempt("m", name, source, now);
                assert_eq!(got, expected, "step {step}: {name} from {source}");
                match expected {
                    Gate::Check(_) if next(4) == 0 => {
                        memory.succeeded("m", name, source, now);
                        handles[(step + 1) % 2].succeeded("m", name, source, now);
                        succeeded += 1;
                    }
                    Gate::Check(_) => checked += 1,
                    _ => held += 1,
                }
            }
            assert!(
                held > 20 && checked > 20 && succeeded > 5,
                "{held} {checked} {succeeded}"
            );
        }

        /// Eight handles race one source's attempt: exactly one is
        /// checked.
        fn one_of_eight_racing_handles_is_checked(site: &Site) {
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let now = Instant::now();
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    let (t, barrier) = (site.throttle(1000, 1000), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        t.attempt("race", "carol", ip("192.0.2.200"), now)
                    })
                })
                .collect();
            let gates: Vec<Gate> = racers.into_iter().map(|r| r.join().unwrap()).collect();
            let until = now + Duration::from_secs(1);
            let checked = gates.iter().filter(|g| **g == Gate::Check(until)).count();
            let held = gates.iter().filter(|g| **g == Gate::Held(until)).count();
            assert_eq!((checked, held), (1, 7), "{gates:?}");
        }

        /// A name in its SURGE hold: the hold ends, and eight strangers
        /// (fresh sources, each through a handle of its own) try at that
        /// very moment. As in memory, exactly one is checked; the others
        /// share the name's new hold (many addresses get no more guesses
        /// than one).
        fn one_of_eight_racing_strangers_is_checked(site: &Site) {
            let ms = Duration::from_millis;
            let stranger = |i: u8| IpAddr::from([198, 18, 0, i]);
            let surge = |t: &Throttle, t0: Instant| {
                for i in 0..SURGE {
                    let source = IpAddr::from([203, 0, 113, 100 + i as u8]);
                    let gate = t.attempt("race", "dave", source, t0);
                    assert_eq!(gate, Gate::Check(t0 + ms(1000)), "surge {i}");
                }
            };
            let t0 = Instant::now();
            let hold_ends = t0 + ms(1000);
            let expected = |gates: &[Gate]| {
                let until = hold_ends + ms(1000);
                let checked = gates.iter().filter(|g| **g == Gate::Check(until)).count();
                let held = gates.iter().filter(|g| **g == Gate::Held(until)).count();
                assert_eq!((checked, held), (1, 7), "{gates:?}");
            };
            // In memory.
            let memory = Arc::new(Throttle::new(ms(1000), ms(1000), 1000));
            surge(&memory, t0);
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let racers: Vec<_> = (0..8)
                .map(|i| {
                    let (t, barrier) = (Arc::clone(&memory), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        t.attempt("race", "dave", stranger(i), hold_ends)
                    })
                })
                .collect();
            let gates: Vec<Gate> = racers.into_iter().map(|r| r.join().unwrap()).collect();
            expected(&gates);
            // Shared: the same.
            surge(&site.throttle(1000, 1000), t0);
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let racers: Vec<_> = (0..8)
                .map(|i| {
                    let (t, barrier) = (site.throttle(1000, 1000), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        t.attempt("race", "dave", stranger(i), hold_ends)
                    })
                })
                .collect();
            let gates: Vec<Gate> = racers.into_iter().map(|r| r.join().unwrap()).collect();
            expected(&gates);
        }

        fn run_all(site: &Site) {
            handles_share_holds_and_successes(site);
            same_answers_as_memory(site);
            one_of_eight_racing_handles_is_checked(site);
            one_of_eight_racing_strangers_is_checked(site);
        }

        #[test]
        fn shared_throttle_on_sqlite() {
            let site = Site::sqlite();
            run_all(&site);
            // Names are not in the files in clear.
            let t = site.throttle(100, 1000);
            let name = "name-that-must-not-be-stored-in-clear";
            t.attempt("some-domain", name, ip("192.0.2.1"), Instant::now());
            let mut raw = Vec::new();
            for file in ["keypipe.db", "keypipe.db-wal"] {
                if let Ok(bytes) = std::fs::read(site.dir.path().join(file)) {
                    raw.extend_from_slice(&bytes);
                }
            }
            assert!(raw.len() > 4096, "read the database");
            assert!(!raw.windows(name.len()).any(|w| w == name.as_bytes()));
        }

        /// A store that cannot be reached: attempts fail at once, 503.
        struct Down;

        impl EphemeralStore for Down {
            fn ephemeral_update_rows(
                &self,
                _: &[(&str, &[u8])],
                _: &mut dyn FnMut(
                    Vec<Option<EphemeralRow>>,
                ) -> Result<Vec<EphemeralChange>, StoreError>,
            ) -> Result<(), StoreError> {
                Err(StoreError::Unavailable("down".into()))
            }

            fn ephemeral_get(&self, _: &str, _: &[u8]) -> Result<Option<EphemeralRow>, StoreError> {
                Err(StoreError::Unavailable("down".into()))
            }

            fn ephemeral_count(&self, _: &str) -> Result<u64, StoreError> {
                Err(StoreError::Unavailable("down".into()))
            }

            fn ephemeral_make_room(&self, _: &str, _: u64) -> Result<u64, StoreError> {
                Err(StoreError::Unavailable("down".into()))
            }
        }

        #[test]
        fn a_store_failure_is_not_a_check() {
            let ms = Duration::from_millis;
            let t = Throttle::shared(ms(100), ms(1000), Arc::new(Down));
            let now = Instant::now();
            assert_eq!(
                t.attempt("d", "u", ip("192.0.2.1"), now),
                Gate::StoreFailed { unavailable: true }
            );
            // Logged, not panicking.
            t.succeeded("d", "u", ip("192.0.2.1"), now);
        }

        #[test]
        fn shared_throttle_on_postgres() {
            run_all(&Site::postgres("throttle"));
        }
    }
}
