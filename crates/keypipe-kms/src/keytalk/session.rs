//! RCDP sessions: one per `hello`, named by a random 128-bit id sent as
//! the `keytalkcookie` (32 lower-case hex digits) and never rotated (the
//! P12 and PEM passphrase is its first 30 characters, and some clients
//! keep the first cookie they got). A session ends on `eoc`, `error`,
//! `LOCKED`, after `idle` without a call or `max_age` in all; the table
//! holds at most `capacity` (the oldest go first). The id is a secret
//! (it decrypts the key it protects): it is never logged and `Debug`
//! never shows it; the table is keyed by its SHA-256.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::phase::Phase;
use super::version::Version;

/// Authentication that is half done.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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
#[derive(Debug, Clone)]
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
    created: Instant,
    last: Instant,
    /// A call of this session is running.
    busy: bool,
}

/// What [`Sessions::take`] found.
#[derive(Debug)]
pub enum Taken {
    /// The session, now held by this call until [`Sessions::put`],
    /// [`Sessions::release`] or [`Sessions::close`].
    Session(Session),
    /// Another call of the session is running.
    Busy,
    /// No such live session.
    Gone,
}

/// The table's key of a session id: its SHA-256 (the table never holds
/// the ids themselves).
fn key(sid: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(sid.as_bytes()).into()
}

/// The live sessions.
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
    max_age: Duration,
    capacity: usize,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("idle", &self.idle)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// An empty table.
    pub fn new(idle: Duration, max_age: Duration, capacity: usize) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            idle,
            max_age,
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.last) < self.idle
            && now.saturating_duration_since(s.created) < self.max_age
    }

    /// Opens a session at `version`: its id. `None` only when the OS
    /// random source fails.
    pub fn open(&self, version: Version, now: Instant) -> Option<Zeroizing<String>> {
        let mut raw = Zeroizing::new([0u8; 16]);
        getrandom::fill(&mut raw[..]).ok()?;
        let mut sid = Zeroizing::new(String::with_capacity(32));
        for b in raw.iter() {
            sid.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            sid.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
        }
        let mut map = self.lock();
        if map.len() >= self.capacity {
            self.make_room(&mut map, now);
        }
        map.insert(
            key(&sid),
            Session {
                version,
                phase: Phase::Hello,
                service: None,
                user: None,
                device: None,
                pending: Pending::None,
                certificates: 0,
                created: now,
                last: now,
                busy: false,
            },
        );
        Some(sid)
    }

    /// A full table: drops the expired sessions, then the oldest 1/64 of
    /// those not authenticated (a flood of `hello`s never ends an
    /// authenticated session, and the scan runs once per 1/64 of the
    /// table), the oldest of all only when every session is authenticated.
    fn make_room(&self, map: &mut HashMap<[u8; 32], Session>, now: Instant) {
        map.retain(|_, s| self.live(s, now));
        if map.len() < self.capacity {
            return;
        }
        let mut waiting: Vec<([u8; 32], Instant)> = map
            .iter()
            .filter(|(_, s)| !s.busy && s.phase != Phase::Authenticated)
            .map(|(k, s)| (*k, s.last))
            .collect();
        if waiting.is_empty() {
            waiting = map
                .iter()
                .filter(|(_, s)| !s.busy)
                .map(|(k, s)| (*k, s.last))
                .collect();
        }
        if waiting.is_empty() {
            // Every session has a call running: the table grows by this
            // one (calls are bounded by the pool's queue).
            return;
        }
        let n = (self.capacity / 64).clamp(1, waiting.len());
        waiting.select_nth_unstable_by_key(n - 1, |(_, last)| *last);
        for (k, _) in &waiting[..n] {
            map.remove(k);
        }
    }

    /// Takes the live session `sid` for one call (its idle time starts
    /// over): calls of one session run one at a time, so no call's result
    /// overwrites another's.
    pub fn take(&self, sid: &str, now: Instant) -> Taken {
        let mut map = self.lock();
        let key = key(sid);
        let live = map.get(&key).is_some_and(|s| self.live(s, now));
        if !live {
            map.remove(&key);
            return Taken::Gone;
        }
        let Some(s) = map.get_mut(&key) else {
            return Taken::Gone;
        };
        if s.busy {
            return Taken::Busy;
        }
        s.busy = true;
        s.last = now;
        Taken::Session(s.clone())
    }

    /// Stores `session` as the state of `sid` (if still open) and ends
    /// the call that took it.
    pub fn put(&self, sid: &str, mut session: Session) {
        let mut map = self.lock();
        if let Some(s) = map.get_mut(&key(sid)) {
            session.busy = false;
            *s = session;
        }
    }

    /// Ends the call that took `sid`, leaving its state as it was.
    pub fn release(&self, sid: &str) {
        if let Some(s) = self.lock().get_mut(&key(sid)) {
            s.busy = false;
        }
    }

    /// Keeps at most `max` other authenticated sessions of `user` besides
    /// `sid`: the ones unused longest end (one account cannot fill the
    /// table).
    pub fn limit_user(&self, user: &str, sid: &str, max: usize) {
        let mut map = self.lock();
        let own = key(sid);
        let mut theirs: Vec<([u8; 32], Instant)> = map
            .iter()
            .filter(|(k, s)| {
                **k != own
                    && !s.busy
                    && s.phase == Phase::Authenticated
                    && s.user.as_deref() == Some(user)
            })
            .map(|(k, s)| (*k, s.last))
            .collect();
        if theirs.len() > max {
            theirs.sort_by_key(|(_, last)| *last);
            let excess = theirs.len() - max;
            for (k, _) in &theirs[..excess] {
                map.remove(k);
            }
        }
    }

    /// Ends `sid`.
    pub fn close(&self, sid: &str) {
        self.lock().remove(&key(sid));
    }

    /// Live sessions (for metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
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
        s.close(&e);
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
        s.release(&a);
        assert!(matches!(s.take(&a, t), Taken::Session(_)));
    }
}
