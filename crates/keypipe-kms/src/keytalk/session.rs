//! RCDP sessions: the state of one session and the table of live ones,
//! in this process or in the shared store. This file is long because the
//! table is one concept whose every operation (open, take, put, release,
//! close, end, the per-user limit) is written for both modes side by side,
//! decided by the same rules; split by mode, each rule would leave its twin.
//!
//! One session per `hello`, named by a random 128-bit id sent as
//! the `keytalkcookie` (32 lower-case hex digits) and never rotated (the
//! P12 and PEM passphrase is its first 30 characters, and some clients
//! keep the first cookie they got). A session ends on `eoc`, `error`,
//! `LOCKED`, after `idle` without a call or `max_age` in all; the table
//! holds at most `capacity` (the oldest go first). The id is a secret
//! (it decrypts the key it protects): it is never logged and `Debug`
//! never shows it; the table is keyed by a hash of it.
//!
//! The table lives in this process ([`Sessions::new`]) or, when several
//! processes share the store, in its `ephemeral` table
//! ([`Sessions::shared`]), so the calls of one session may reach any of
//! them. Shared, the same rules hold (the same functions decide), with
//! these differences:
//!
//! - a row is the session's state (JSON, times in ms since the epoch),
//!   wrapped by the store under the KEK; its id is a hash of the cookie,
//!   never the cookie; it is forgotten when it would expire
//!   (`idle` after its last call or `max_age` after its `hello`);
//! - a call's busy mark older than [`BUSY_STALE`] is taken for the mark
//!   of a process that died mid-call, and ignored; the state a call puts
//!   back is dropped, and its release or close ([`Sessions::close`]:
//!   `LOCKED`, a refused CSR) does nothing, when another call has taken
//!   the session since (each busy mark names its call): the newer call
//!   goes on, and only the client's `eoc` ([`Sessions::end`]) ends a
//!   session whatever call runs;
//! - a full table makes room for a `hello` by forgetting the sessions that
//!   would expire soonest (the least recently used), authenticated or not,
//!   in one transaction ([`EphemeralStore::ephemeral_make_room`]; telling
//!   authenticated sessions apart would read every process's rows):
//!   a flood of `hello`s never refuses a new session, but can end idle
//!   ones early; processes opening sessions at the same moment may
//!   overshoot `capacity` by as many;
//! - [`Sessions::len`] never queries the store (it serves metrics, on an
//!   event loop): it is the site-wide count as of this process's last
//!   `hello`;
//! - [`Sessions::limit_user`] keeps one more row per user (id: a hash
//!   of the name) listing the ids of that user's authenticated
//!   sessions: each call reads the listed sessions, drops the ones gone
//!   from the list, and ends the excess by their last call, as in memory;
//!   a session is deleted only if, in the deleting transaction, it is
//!   still that user's, authenticated and not busy.
//!
//! The methods that can meet a store error come as `try_…`; the plain
//! ones log it and act as on a missing session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::phase::Phase;
use super::shared::{self, BUSY_STALE, Shared, Stamp, TableError, logged};
use super::version::Version;
use crate::store::{EphemeralChange, EphemeralStore, StoreError};
use crate::store::{row_id, wall_ms};

/// The store's rows of sessions.
pub(super) const KIND: &str = "keytalk-session";

/// The store's rows listing a user's authenticated sessions.
const USER_KIND: &str = "keytalk-session-user";

/// Authentication that is half done.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Pending {
    /// Nothing.
    #[default]
    None,
    /// The user's password was right but has expired: only
    /// `change-password` for this user.
    Expired(String),
    /// The user's password (and membership) was right for `service`;
    /// the challenge's answer is due, from the same user for the same
    /// service. `hwsig`: the device signature sent with the password.
    Challenge {
        /// The user.
        user: String,
        /// The service.
        service: String,
        /// The device's signature, when the service asks for one.
        hwsig: Option<String>,
    },
}

/// The state of one session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The negotiated version.
    pub version: Version,
    /// Where it is.
    pub phase: Phase,
    /// The service of `auth-requirements` / `authentication`.
    pub service: Option<String>,
    /// The authenticated user.
    pub user: Option<String>,
    /// The authenticated device's hardware signature, when asked for.
    pub device: Option<String>,
    /// Authentication in progress.
    pub pending: Pending,
    /// Certificates issued in this session.
    pub certificates: u32,
    /// The call holding it (its busy mark's holder); not stored.
    #[serde(skip)]
    holder: u64,
}

impl Session {
    /// The call that took this state: what [`Sessions::release`] ends.
    pub fn holder(&self) -> Holder {
        Holder(self.holder)
    }
}

/// A call holding a session (taken by [`Sessions::take`]), as
/// [`Session::holder`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder(u64);

/// What [`Sessions::take`] found.
#[derive(Debug)]
pub enum Taken {
    /// The session, now held by this call until [`Sessions::put`],
    /// [`Sessions::release`] or [`Sessions::close`] (or its client's
    /// [`Sessions::end`]).
    Session(Session),
    /// Another call of the session is running.
    Busy,
    /// No such live session.
    Gone,
}

/// The table's key of a session id: a hash of it (the table never holds
/// the ids themselves).
fn key(sid: &str) -> [u8; 32] {
    row_id(&[sid.as_bytes()])
}

/// "A call is running", and which.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Busy<T> {
    since: T,
    holder: u64,
}

/// A session in the table, with its times (`Instant`s in memory, ms since
/// the epoch in the store).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry<T> {
    session: Session,
    created: T,
    last: T,
    busy: Option<Busy<T>>,
}

impl<T: Copy> Entry<T> {
    /// A session opened at `now`.
    fn fresh(session: Session, now: T) -> Entry<T> {
        Entry {
            session,
            created: now,
            last: now,
            busy: None,
        }
    }
}

impl<T> Entry<T> {
    /// True while the call `holder` holds the session (however old its
    /// mark: no other call took it since).
    fn held_by(&self, Holder(holder): Holder) -> bool {
        self.busy.as_ref().is_some_and(|b| b.holder == holder)
    }
}

/// The rules of the table, both modes.
#[derive(Debug, Clone, Copy)]
struct Rules {
    idle: Duration,
    max_age: Duration,
    capacity: usize,
    /// A busy mark this old is ignored (`None`: never).
    busy_stale: Option<Duration>,
}

impl Rules {
    fn live<T: Stamp>(&self, e: &Entry<T>, now: T) -> bool {
        now.since(e.last) < self.idle && now.since(e.created) < self.max_age
    }

    /// When the entry expires unless used.
    fn expiry<T: Stamp>(&self, e: &Entry<T>) -> T {
        e.last.plus(self.idle).min(e.created.plus(self.max_age))
    }

    fn busy<T: Stamp>(&self, e: &Entry<T>, now: T) -> bool {
        e.busy.is_some_and(|b| {
            self.busy_stale
                .is_none_or(|stale| now.since(b.since) < stale)
        })
    }

    /// Takes `e` for the call `holder`; `Gone`: the entry goes.
    fn take<T: Stamp>(&self, e: &mut Entry<T>, now: T, holder: u64) -> Taken {
        if !self.live(e, now) {
            return Taken::Gone;
        }
        if self.busy(e, now) {
            return Taken::Busy;
        }
        e.busy = Some(Busy { since: now, holder });
        e.last = now;
        let mut session = e.session.clone();
        session.holder = holder;
        Taken::Session(session)
    }

    /// `e` counts against `user`'s limit (unless it is the caller's).
    fn counts_against<T: Stamp>(&self, e: &Entry<T>, user: &str, now: T) -> bool {
        !self.busy(e, now)
            && e.session.phase == Phase::Authenticated
            && e.session.user.as_deref() == Some(user)
    }
}

/// What ends a call; nothing when the call no longer holds the session
/// (another call took it since, its mark gone stale).
enum Edit<'a> {
    /// This state is the session's now.
    Put(&'a Session),
    /// The state stays.
    Release(Holder),
}

impl Edit<'_> {
    /// Applies the edit: false when nothing changed.
    fn apply<T>(&self, e: &mut Entry<T>) -> bool {
        let holder = match self {
            Edit::Put(session) => session.holder(),
            Edit::Release(holder) => *holder,
        };
        if !e.held_by(holder) {
            return false;
        }
        e.busy = None;
        if let Edit::Put(session) = self {
            e.session = Session {
                holder: 0,
                ..(*session).clone()
            };
        }
        true
    }
}

/// Of a user's other sessions and their last calls, the ones to end so
/// that at most `max` stay (unused longest first).
fn excess<K: Copy, T: Ord + Copy>(mut theirs: Vec<(K, T)>, max: usize) -> Vec<K> {
    if theirs.len() <= max {
        return Vec::new();
    }
    theirs.sort_by_key(|(_, last)| *last);
    let n = theirs.len() - max;
    theirs.into_iter().take(n).map(|(k, _)| k).collect()
}

enum Table {
    Memory(Mutex<HashMap<[u8; 32], Entry<Instant>>>),
    Shared {
        store: Shared,
        /// Sessions of every process as of this process's last `open`
        /// (what making room left, plus the one opened): what
        /// [`Sessions::len`] reads, never the store.
        count: AtomicUsize,
    },
}

/// The live sessions.
pub struct Sessions {
    table: Table,
    rules: Rules,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("idle", &self.rules.idle)
            .field("max_age", &self.rules.max_age)
            .field("shared", &matches!(self.table, Table::Shared { .. }))
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// An empty table in this process.
    pub fn new(idle: Duration, max_age: Duration, capacity: usize) -> Sessions {
        Sessions {
            table: Table::Memory(Mutex::new(HashMap::new())),
            rules: Rules {
                idle,
                max_age,
                capacity: capacity.max(1),
                busy_stale: None,
            },
        }
    }

    /// The table in `store`, shared by every process using it.
    pub fn shared(
        idle: Duration,
        max_age: Duration,
        capacity: usize,
        store: Arc<dyn EphemeralStore>,
    ) -> Sessions {
        Sessions {
            table: Table::Shared {
                store: Shared::new(store),
                count: AtomicUsize::new(0),
            },
            rules: Rules {
                idle,
                max_age,
                capacity: capacity.max(1),
                busy_stale: Some(BUSY_STALE),
            },
        }
    }

    fn lock(
        map: &Mutex<HashMap<[u8; 32], Entry<Instant>>>,
    ) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry<Instant>>> {
        map.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The store's row for `e`.
    fn row(&self, e: &Entry<u64>) -> Result<EphemeralChange, StoreError> {
        Ok(EphemeralChange::Put {
            value: shared::encode(e)?,
            forget_ms: self.rules.expiry(e),
        })
    }

    /// Opens a session at `version`: its id. `None` when the OS random
    /// source fails (or, shared, the store failed).
    pub fn open(&self, version: Version, now: Instant) -> Option<Zeroizing<String>> {
        match self.try_open(version, now) {
            Ok(sid) => Some(sid),
            Err(TableError::Store(e)) => logged("session", Err(e), None),
            Err(_) => None,
        }
    }

    /// Opens a session at `version`: its id. A full table makes room (in
    /// memory: see `make_room`; shared: the sessions that would expire
    /// soonest go). Fails with [`TableError::NoRandomness`] or, shared,
    /// [`TableError::Store`], never [`TableError::Full`].
    pub fn try_open(
        &self,
        version: Version,
        now: Instant,
    ) -> Result<Zeroizing<String>, TableError> {
        let mut raw = Zeroizing::new([0u8; 16]);
        getrandom::fill(&mut raw[..]).map_err(|_| TableError::NoRandomness)?;
        let mut sid = Zeroizing::new(String::with_capacity(32));
        for b in raw.iter() {
            sid.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            sid.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
        }
        let session = Session {
            version,
            phase: Phase::Hello,
            service: None,
            user: None,
            device: None,
            pending: Pending::None,
            certificates: 0,
            holder: 0,
        };
        match &self.table {
            Table::Memory(map) => {
                let mut map = Self::lock(map);
                if map.len() >= self.rules.capacity {
                    self.make_room(&mut map, now);
                }
                map.insert(key(&sid), Entry::fresh(session, now));
            }
            Table::Shared { store: sh, count } => {
                let capacity = u64::try_from(self.rules.capacity).unwrap_or(u64::MAX);
                let left = sh.make_room(KIND, capacity)?;
                let entry = Entry::fresh(session, wall_ms(now));
                sh.update(KIND, &key(&sid), |_| Ok((self.row(&entry)?, ())))?;
                let held = usize::try_from(left.saturating_add(1)).unwrap_or(usize::MAX);
                count.store(held, Ordering::Relaxed);
            }
        }
        Ok(sid)
    }

    /// A full table: drops the expired sessions, then the oldest 1/64 of
    /// those not authenticated (a flood of `hello`s never ends an
    /// authenticated session, and the scan runs once per 1/64 of the
    /// table), the oldest of all only when every session is authenticated.
    fn make_room(&self, map: &mut HashMap<[u8; 32], Entry<Instant>>, now: Instant) {
        map.retain(|_, e| self.rules.live(e, now));
        if map.len() < self.rules.capacity {
            return;
        }
        let mut waiting: Vec<([u8; 32], Instant)> = map
            .iter()
            .filter(|(_, e)| !self.rules.busy(e, now) && e.session.phase != Phase::Authenticated)
            .map(|(k, e)| (*k, e.last))
            .collect();
        if waiting.is_empty() {
            waiting = map
                .iter()
                .filter(|(_, e)| !self.rules.busy(e, now))
                .map(|(k, e)| (*k, e.last))
                .collect();
        }
        if waiting.is_empty() {
            // Every session has a call running: the table grows by this
            // one (calls are bounded by the pool's queue).
            return;
        }
        let n = (self.rules.capacity / 64).clamp(1, waiting.len());
        waiting.select_nth_unstable_by_key(n - 1, |(_, last)| *last);
        for (k, _) in &waiting[..n] {
            map.remove(k);
        }
    }

    /// Takes the live session `sid` for one call (its idle time starts
    /// over): calls of one session run one at a time, so no call's result
    /// overwrites another's. A store error reads as `Gone`.
    pub fn take(&self, sid: &str, now: Instant) -> Taken {
        logged("session", self.try_take(sid, now), Taken::Gone)
    }

    /// [`Sessions::take`], with the store's errors.
    pub fn try_take(&self, sid: &str, now: Instant) -> Result<Taken, StoreError> {
        let key = key(sid);
        let holder = shared::new_holder();
        match &self.table {
            Table::Memory(map) => {
                let mut map = Self::lock(map);
                let Some(e) = map.get_mut(&key) else {
                    return Ok(Taken::Gone);
                };
                let taken = self.rules.take(e, now, holder);
                if matches!(taken, Taken::Gone) {
                    map.remove(&key);
                }
                Ok(taken)
            }
            Table::Shared { store: sh, .. } => {
                let now = wall_ms(now);
                sh.update(KIND, &key, |row| {
                    let Some(row) = row else {
                        return Ok((EphemeralChange::Keep, Taken::Gone));
                    };
                    let mut e: Entry<u64> = shared::decode(KIND, &row.value)?;
                    Ok(match self.rules.take(&mut e, now, holder) {
                        Taken::Gone => (EphemeralChange::Remove, Taken::Gone),
                        Taken::Busy => (EphemeralChange::Keep, Taken::Busy),
                        taken => (self.row(&e)?, taken),
                    })
                })
            }
        }
    }

    /// Applies `edit` to the entry of `sid`, if there is one.
    fn edit(&self, sid: &str, edit: Edit<'_>) -> Result<(), StoreError> {
        match &self.table {
            Table::Memory(map) => {
                if let Some(e) = Self::lock(map).get_mut(&key(sid)) {
                    edit.apply(e);
                }
                Ok(())
            }
            Table::Shared { store: sh, .. } => sh.update(KIND, &key(sid), |row| {
                let Some(row) = row else {
                    return Ok((EphemeralChange::Keep, ()));
                };
                let mut e: Entry<u64> = shared::decode(KIND, &row.value)?;
                if edit.apply(&mut e) {
                    Ok((self.row(&e)?, ()))
                } else {
                    Ok((EphemeralChange::Keep, ()))
                }
            }),
        }
    }

    /// Stores `session` as the state of `sid` (if still open, and still
    /// held by the call that took `session`) and ends that call.
    pub fn put(&self, sid: &str, session: Session) {
        logged("session", self.try_put(sid, session), ());
    }

    /// [`Sessions::put`], with the store's errors.
    pub fn try_put(&self, sid: &str, session: Session) -> Result<(), StoreError> {
        self.edit(sid, Edit::Put(&session))
    }

    /// Ends the call `holder` on `sid`, leaving its state as it was;
    /// nothing when another call took the session since (the mark of
    /// `holder` had gone stale).
    pub fn release(&self, sid: &str, holder: Holder) {
        logged("session", self.try_release(sid, holder), ());
    }

    /// [`Sessions::release`], with the store's errors.
    pub fn try_release(&self, sid: &str, holder: Holder) -> Result<(), StoreError> {
        self.edit(sid, Edit::Release(holder))
    }

    /// Keeps at most `max` other authenticated sessions of `user` besides
    /// `sid`: the ones unused longest end (one account cannot fill the
    /// table).
    pub fn limit_user(&self, user: &str, sid: &str, max: usize) {
        logged("session", self.try_limit_user(user, sid, max), ());
    }

    /// [`Sessions::limit_user`], with the store's errors.
    pub fn try_limit_user(&self, user: &str, sid: &str, max: usize) -> Result<(), StoreError> {
        let own = key(sid);
        match &self.table {
            Table::Memory(map) => {
                let now = Instant::now();
                let mut map = Self::lock(map);
                let theirs: Vec<([u8; 32], Instant)> = map
                    .iter()
                    .filter(|(k, e)| **k != own && self.rules.counts_against(e, user, now))
                    .map(|(k, e)| (*k, e.last))
                    .collect();
                for k in excess(theirs, max) {
                    map.remove(&k);
                }
                Ok(())
            }
            Table::Shared { store: sh, .. } => self.limit_shared(sh, user, own, max),
        }
    }

    fn limit_shared(
        &self,
        sh: &Shared,
        user: &str,
        own: [u8; 32],
        max: usize,
    ) -> Result<(), StoreError> {
        let now = wall_ms(Instant::now());
        let list_id = row_id(&[user.as_bytes()]);
        let keep_listed = now.plus(self.rules.max_age);
        // This session joins the user's list; the others are read.
        let listed: Vec<[u8; 32]> = sh.update(USER_KIND, &list_id, |row| {
            let mut keys: Vec<[u8; 32]> = match row {
                Some(row) => shared::decode(USER_KIND, &row.value)?,
                None => Vec::new(),
            };
            if !keys.contains(&own) {
                keys.push(own);
            }
            let others = keys.iter().filter(|k| **k != own).copied().collect();
            let change = EphemeralChange::Put {
                value: shared::encode(&keys)?,
                forget_ms: keep_listed,
            };
            Ok((change, others))
        })?;
        let mut theirs = Vec::new();
        let mut unlisted = Vec::new();
        for k in listed {
            // Read only: a session is deleted below only if, in the
            // deleting transaction, it still counts against the user.
            let entry: Option<Entry<u64>> = sh
                .get(KIND, &k)?
                .map(|r| shared::decode(KIND, &r.value))
                .transpose()?;
            match entry {
                Some(e) if self.rules.counts_against(&e, user, now) => theirs.push((k, e.last)),
                // Busy, or changing its password: still the user's.
                Some(e) if e.session.user.as_deref() == Some(user) => {}
                _ => unlisted.push(k),
            }
        }
        for k in excess(theirs, max) {
            sh.update(KIND, &k, |row| {
                let Some(row) = row else {
                    return Ok((EphemeralChange::Keep, ()));
                };
                let e: Entry<u64> = shared::decode(KIND, &row.value)?;
                if self.rules.counts_against(&e, user, now) {
                    Ok((EphemeralChange::Remove, ()))
                } else {
                    Ok((EphemeralChange::Keep, ()))
                }
            })?;
            unlisted.push(k);
        }
        if unlisted.is_empty() {
            return Ok(());
        }
        sh.update(USER_KIND, &list_id, |row| {
            let Some(row) = row else {
                return Ok((EphemeralChange::Keep, ()));
            };
            let mut keys: Vec<[u8; 32]> = shared::decode(USER_KIND, &row.value)?;
            keys.retain(|k| !unlisted.contains(k));
            let change = EphemeralChange::Put {
                value: shared::encode(&keys)?,
                forget_ms: row.forget_ms,
            };
            Ok((change, ()))
        })
    }

    /// Ends `sid` from the call `holder` (`LOCKED`, a refused CSR): only
    /// while that call holds it. A call that no longer does (its mark
    /// went stale and another call took the session since) ends nothing:
    /// the session is the newer call's, which goes on.
    pub fn close(&self, sid: &str, holder: Holder) {
        logged("session", self.try_close(sid, holder), ());
    }

    /// [`Sessions::close`], with the store's errors.
    pub fn try_close(&self, sid: &str, holder: Holder) -> Result<(), StoreError> {
        match &self.table {
            Table::Memory(map) => {
                let mut map = Self::lock(map);
                if map.get(&key(sid)).is_some_and(|e| e.held_by(holder)) {
                    map.remove(&key(sid));
                }
                Ok(())
            }
            Table::Shared { store: sh, .. } => sh.update(KIND, &key(sid), |row| {
                let Some(row) = row else {
                    return Ok((EphemeralChange::Keep, ()));
                };
                let e: Entry<u64> = shared::decode(KIND, &row.value)?;
                if e.held_by(holder) {
                    Ok((EphemeralChange::Remove, ()))
                } else {
                    Ok((EphemeralChange::Keep, ()))
                }
            }),
        }
    }

    /// Ends `sid` at its client's word (`eoc`, `error`), whatever call of
    /// it runs: that call's put, release or close then finds nothing.
    pub fn end(&self, sid: &str) {
        logged("session", self.try_end(sid), ());
    }

    /// [`Sessions::end`], with the store's errors.
    pub fn try_end(&self, sid: &str) -> Result<(), StoreError> {
        match &self.table {
            Table::Memory(map) => {
                Self::lock(map).remove(&key(sid));
                Ok(())
            }
            Table::Shared { store: sh, .. } => {
                sh.update(KIND, &key(sid), |_| Ok((EphemeralChange::Remove, ())))
            }
        }
    }

    /// Sessions held, for metrics. In memory, this process's. Shared: the
    /// sessions of every process as of this process's last `open` (0
    /// before its first), never a query, so metrics never wait for the
    /// store; sessions closed, forgotten or opened since, by any process,
    /// are not seen until the next `open` here.
    pub fn len(&self) -> usize {
        match &self.table {
            Table::Memory(map) => Self::lock(map).len(),
            Table::Shared { count, .. } => count.load(Ordering::Relaxed),
        }
    }

    /// True when no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Takes and puts back at once: the session, if live.
    fn peek(s: &Sessions, sid: &str, now: Instant) -> Option<Session> {
        match s.take(sid, now) {
            Taken::Session(session) => {
                s.put(sid, session.clone());
                Some(session)
            }
            Taken::Busy => panic!("busy"),
            Taken::Gone => None,
        }
    }

    #[test]
    fn ids_are_fresh_hex_and_sessions_expire() {
        let t = Instant::now();
        let s = Sessions::new(Duration::from_secs(10), Duration::from_secs(60), 2);
        let a = s.open(Version::V2_4_1, t).unwrap();
        let b = s.open(Version::V2_0_0, t).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(peek(&s, &a, t).unwrap().version, Version::V2_4_1);
        // Idle too long.
        assert!(peek(&s, &b, t + Duration::from_secs(11)).is_none());
        // Kept alive by use, until max_age.
        let mut now = t;
        for _ in 0..5 {
            now += Duration::from_secs(9);
            assert!(peek(&s, &a, now).is_some());
        }
        assert!(peek(&s, &a, t + Duration::from_secs(61)).is_none());
        assert!(!format!("{s:?}").contains(a.as_str()));
    }

    #[test]
    fn a_full_table_ends_sessions_not_yet_authenticated_first() {
        let t = Instant::now();
        let s = Sessions::new(Duration::from_secs(600), Duration::from_secs(600), 2);
        let c = s.open(Version::V2_0_0, t).unwrap();
        let Taken::Session(mut authenticated) = s.take(&c, t) else {
            panic!("live");
        };
        authenticated.phase = Phase::Authenticated;
        s.put(&c, authenticated);
        let d = s.open(Version::V2_0_0, t + Duration::from_secs(1)).unwrap();
        let e = s.open(Version::V2_0_0, t + Duration::from_secs(2)).unwrap();
        let later = t + Duration::from_secs(3);
        assert!(peek(&s, &c, later).is_some(), "the authenticated one stays");
        assert!(peek(&s, &d, later).is_none(), "the oldest waiting one went");
        assert!(peek(&s, &e, later).is_some());
        s.end(&e);
        assert!(peek(&s, &e, later).is_none());
    }

    #[test]
    fn one_user_keeps_a_bounded_number_of_sessions() {
        let t = Instant::now();
        let s = Sessions::new(Duration::from_secs(600), Duration::from_secs(600), 100);
        let mut sids = Vec::new();
        for i in 0..5u64 {
            let sid = s.open(Version::V2_4_1, t + Duration::from_secs(i)).unwrap();
            let Taken::Session(mut session) = s.take(&sid, t + Duration::from_secs(i)) else {
                panic!("live");
            };
            session.phase = Phase::Authenticated;
            session.user = Some("u".into());
            s.put(&sid, session);
            s.limit_user("u", &sid, 2);
            sids.push(sid);
        }
        let later = t + Duration::from_secs(10);
        let alive: Vec<bool> = sids
            .iter()
            .map(|sid| peek(&s, sid, later).is_some())
            .collect();
        assert_eq!(alive, [false, false, true, true, true]);
    }

    /// Ending a call (with its state or without) touches the session only
    /// while that call holds it, in both modes (`Edit::apply` decides).
    #[test]
    fn a_call_ends_only_its_own_hold() {
        let t = Instant::now();
        let rules = Rules {
            idle: Duration::from_secs(600),
            max_age: Duration::from_secs(600),
            capacity: 8,
            busy_stale: Some(BUSY_STALE),
        };
        let session = Session {
            version: Version::V2_4_1,
            phase: Phase::Hello,
            service: None,
            user: None,
            device: None,
            pending: Pending::None,
            certificates: 0,
            holder: 0,
        };
        let mut e = Entry::fresh(session, t);
        let Taken::Session(first) = rules.take(&mut e, t, 1) else {
            panic!("live");
        };
        let later = t + BUSY_STALE;
        let Taken::Session(mut second) = rules.take(&mut e, later, 2) else {
            panic!("the first call's mark is stale");
        };
        assert!(!Edit::Release(first.holder()).apply(&mut e));
        assert!(!Edit::Put(&first).apply(&mut e));
        assert!(rules.busy(&e, later), "the second call still holds it");
        second.phase = Phase::Connected;
        assert!(Edit::Put(&second).apply(&mut e));
        assert!(!rules.busy(&e, later));
        assert!(!Edit::Release(second.holder()).apply(&mut e), "ended");
        let Taken::Session(third) = rules.take(&mut e, later, 3) else {
            panic!("free");
        };
        assert_eq!(third.phase, Phase::Connected);
        assert!(Edit::Release(third.holder()).apply(&mut e));
        assert!(!rules.busy(&e, later));
    }

    #[test]
    fn only_the_holding_call_closes_a_session() {
        let t = Instant::now();
        let s = Sessions::new(Duration::from_secs(600), Duration::from_secs(600), 8);
        let (a, b) = (
            s.open(Version::V2_4_1, t).unwrap(),
            s.open(Version::V2_4_1, t).unwrap(),
        );
        let Taken::Session(on_a) = s.take(&a, t) else {
            panic!("live");
        };
        let Taken::Session(on_b) = s.take(&b, t) else {
            panic!("live");
        };
        s.close(&a, on_b.holder());
        assert!(matches!(s.take(&a, t), Taken::Busy), "not b's call's");
        s.close(&a, on_a.holder());
        assert!(matches!(s.take(&a, t), Taken::Gone));
        s.end(&b);
        assert!(matches!(s.take(&b, t), Taken::Gone), "ended by its client");
    }

    #[test]
    fn calls_of_one_session_run_one_at_a_time() {
        let t = Instant::now();
        let s = Sessions::new(Duration::from_secs(600), Duration::from_secs(600), 8);
        let a = s.open(Version::V2_4_1, t).unwrap();
        let Taken::Session(mut first) = s.take(&a, t) else {
            panic!("live");
        };
        assert!(matches!(s.take(&a, t), Taken::Busy));
        first.phase = Phase::Connected;
        s.put(&a, first);
        let Taken::Session(second) = s.take(&a, t) else {
            panic!("free again");
        };
        assert_eq!(second.phase, Phase::Connected, "the first call's result");
        s.release(&a, second.holder());
        assert!(matches!(s.take(&a, t), Taken::Session(_)));
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;
    use crate::keytalk::shared::testing::Db;

    fn pair(db: &Db, idle: u64, capacity: usize) -> (Sessions, Sessions) {
        let one = |_| {
            Sessions::shared(
                Duration::from_secs(idle),
                Duration::from_secs(3600),
                capacity,
                db.open(),
            )
        };
        (one(0), one(1))
    }

    fn taken(t: Taken) -> Session {
        match t {
            Taken::Session(s) => s,
            other => panic!("not taken: {other:?}"),
        }
    }

    /// Session rows in the store, of every process (what `len` only
    /// caches).
    fn held(db: &Db) -> u64 {
        db.open().ephemeral_count(KIND).unwrap()
    }

    /// Calls of one session alternate between two processes: each sees
    /// the other's state and busy mark; a stale mark is ignored and the
    /// stale call's state dropped; idle sessions end.
    fn calls_alternate(db: &Db) {
        let t = Instant::now();
        let (a, b) = pair(db, 600, 8);
        let sid = a.try_open(Version::V2_2_0, t).unwrap();
        let mut s = taken(b.try_take(&sid, t).unwrap());
        assert_eq!(s.version, Version::V2_2_0);
        assert!(matches!(a.try_take(&sid, t).unwrap(), Taken::Busy));
        s.phase = Phase::Connected;
        b.try_put(&sid, s).unwrap();
        let first = taken(a.try_take(&sid, t).unwrap());
        assert_eq!(first.phase, Phase::Connected, "b's result");
        // a's process "dies" holding it: b waits out the mark.
        let almost = t + BUSY_STALE - Duration::from_secs(1);
        assert!(matches!(b.try_take(&sid, almost).unwrap(), Taken::Busy));
        let later = t + BUSY_STALE + Duration::from_secs(1);
        let mut second = taken(b.try_take(&sid, later).unwrap());
        second.phase = Phase::Authenticated;
        // a's late result is dropped: b took the session since.
        let mut late = first;
        late.certificates = 7;
        a.try_put(&sid, late).unwrap();
        b.try_put(&sid, second).unwrap();
        let now = taken(a.try_take(&sid, later).unwrap());
        assert_eq!((now.phase, now.certificates), (Phase::Authenticated, 0));
        a.try_release(&sid, now.holder()).unwrap();
        let again = taken(b.try_take(&sid, later).unwrap());
        b.try_release(&sid, again.holder()).unwrap();
        // Idle too long, then closed.
        assert!(matches!(
            a.try_take(&sid, later + Duration::from_secs(601)).unwrap(),
            Taken::Gone
        ));
        let other = b.try_open(Version::V2_4_1, t).unwrap();
        assert_eq!(held(db), 1);
        // Each process's count is the site's as of its last `hello`.
        assert_eq!((a.len(), b.len()), (1, 1));
        a.try_end(&other).unwrap();
        assert!(matches!(b.try_take(&other, t).unwrap(), Taken::Gone));
        assert_eq!(held(db), 0);
        assert!(db.lacks(sid.as_bytes()) && db.lacks(other.as_bytes()));
    }

    /// A full shared table makes room for a `hello` by ending the session
    /// used least recently, whichever process opened it; one user keeps a
    /// bounded number of authenticated sessions across processes.
    fn capacity_and_user_limit(db: &Db) {
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        let (a, b) = pair(db, 600, 2);
        let first = a.try_open(Version::V2_4_1, at(0)).unwrap();
        let second = b.try_open(Version::V2_4_1, at(1)).unwrap();
        assert_eq!((held(db), b.len()), (2, 2));
        // first is used again: second is now the one used least recently.
        let s = taken(b.try_take(&first, at(2)).unwrap());
        b.try_put(&first, s).unwrap();
        let third = b.try_open(Version::V2_4_1, at(3)).unwrap();
        assert_eq!((held(db), b.len()), (2, 2));
        assert!(matches!(a.try_take(&second, at(3)).unwrap(), Taken::Gone));
        for (sid, when) in [(&first, at(3)), (&third, at(4))] {
            let s = taken(a.try_take(sid, when).unwrap());
            a.try_release(sid, s.holder()).unwrap();
        }
        assert!(a.open(Version::V2_4_1, at(5)).is_some(), "never refused");
        assert_eq!((held(db), a.len()), (2, 2));
        assert!(matches!(b.try_take(&first, at(5)).unwrap(), Taken::Gone));
        let s = taken(b.try_take(&third, at(5)).unwrap());
        b.try_release(&third, s.holder()).unwrap();

        let (a, b) = pair(db, 600, 100);
        let mut sids = Vec::new();
        for i in 0..5u64 {
            let (x, y) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let at = t + Duration::from_secs(i);
            let sid = x.try_open(Version::V2_4_1, at).unwrap();
            let mut s = taken(y.try_take(&sid, at).unwrap());
            s.phase = Phase::Authenticated;
            s.user = Some("u".into());
            x.try_limit_user("u", &sid, 2).unwrap();
            y.try_put(&sid, s).unwrap();
            sids.push(sid);
        }
        // The first two ended as the fourth and fifth authenticated.
        let later = t + Duration::from_secs(10);
        let alive: Vec<bool> = sids
            .iter()
            .map(|sid| match a.try_take(sid, later).unwrap() {
                Taken::Session(s) => {
                    a.try_put(sid, s).unwrap();
                    true
                }
                _ => false,
            })
            .collect();
        assert_eq!(alive, [false, false, true, true, true]);
        assert_eq!(held(db), 2 + 3, "the first table's two, and three");
        // As of a's last `hello`, before its limit ended the second.
        assert_eq!(a.len(), 2 + 4);
    }

    /// A call whose mark went stale, and whose session a second call
    /// took since, ends without touching the second call's mark: the
    /// session is still busy, and a third call waits for the second.
    fn a_stale_call_releases_only_its_own_mark(db: &Db) {
        let t = Instant::now();
        let (a, b) = pair(db, 600, 8);
        let sid = a.try_open(Version::V2_4_1, t).unwrap();
        let first = taken(a.try_take(&sid, t).unwrap());
        let later = t + BUSY_STALE + Duration::from_secs(1);
        let mut second = taken(b.try_take(&sid, later).unwrap());
        // The first call ends (its lease dropped): the second still runs.
        a.try_release(&sid, first.holder()).unwrap();
        assert!(
            matches!(a.try_take(&sid, later).unwrap(), Taken::Busy),
            "two calls of one session at once"
        );
        second.phase = Phase::Connected;
        b.try_put(&sid, second).unwrap();
        let third = taken(a.try_take(&sid, later).unwrap());
        assert_eq!(third.phase, Phase::Connected, "the second call's result");
        a.try_release(&sid, third.holder()).unwrap();
        assert!(matches!(
            b.try_take(&sid, later).unwrap(),
            Taken::Session(_)
        ));
    }

    /// A call whose mark went stale, and whose session a second call
    /// took since, cannot end it: the second call goes on and its result
    /// stays. The holder's close ends the session; the client's `eoc`
    /// ends it whatever call runs.
    fn a_stale_call_closes_only_its_own_hold(db: &Db) {
        let t = Instant::now();
        let (a, b) = pair(db, 600, 8);
        let sid = a.try_open(Version::V2_4_1, t).unwrap();
        let first = taken(a.try_take(&sid, t).unwrap());
        let later = t + BUSY_STALE + Duration::from_secs(1);
        let mut second = taken(b.try_take(&sid, later).unwrap());
        a.try_close(&sid, first.holder()).unwrap();
        assert!(
            matches!(a.try_take(&sid, later).unwrap(), Taken::Busy),
            "the second call's session was ended under it"
        );
        second.phase = Phase::Connected;
        b.try_put(&sid, second).unwrap();
        let third = taken(a.try_take(&sid, later).unwrap());
        assert_eq!(third.phase, Phase::Connected, "the second call's result");
        // A close from a call that never held it changes nothing either.
        b.try_close(&sid, first.holder()).unwrap();
        assert!(matches!(b.try_take(&sid, later).unwrap(), Taken::Busy));
        a.try_close(&sid, third.holder()).unwrap();
        assert!(matches!(b.try_take(&sid, later).unwrap(), Taken::Gone));
        assert_eq!(held(db), 0);
        let other = a.try_open(Version::V2_4_1, t).unwrap();
        let running = taken(a.try_take(&other, t).unwrap());
        b.try_end(&other).unwrap();
        assert!(matches!(a.try_take(&other, t).unwrap(), Taken::Gone));
        a.try_put(&other, running).unwrap();
        assert!(matches!(b.try_take(&other, t).unwrap(), Taken::Gone));
        assert_eq!(held(db), 0);
    }

    #[test]
    fn a_stale_call_closes_only_its_own_hold_on_sqlite() {
        a_stale_call_closes_only_its_own_hold(&Db::sqlite());
    }

    #[test]
    fn a_stale_call_closes_only_its_own_hold_on_postgres() {
        a_stale_call_closes_only_its_own_hold(&Db::postgres("kt_close"));
    }

    #[test]
    fn a_stale_call_releases_only_its_own_mark_on_sqlite() {
        a_stale_call_releases_only_its_own_mark(&Db::sqlite());
    }

    #[test]
    fn a_stale_call_releases_only_its_own_mark_on_postgres() {
        a_stale_call_releases_only_its_own_mark(&Db::postgres("kt_release"));
    }

    #[test]
    fn calls_alternate_between_processes_on_sqlite() {
        calls_alternate(&Db::sqlite());
    }

    #[test]
    fn calls_alternate_between_processes_on_postgres() {
        calls_alternate(&Db::postgres("kt_sessions"));
    }

    #[test]
    fn capacity_and_user_limit_hold_across_processes_on_sqlite() {
        capacity_and_user_limit(&Db::sqlite());
    }

    #[test]
    fn capacity_and_user_limit_hold_across_processes_on_postgres() {
        capacity_and_user_limit(&Db::postgres("kt_limit"));
    }
}
