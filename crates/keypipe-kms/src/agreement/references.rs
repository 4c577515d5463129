//! Client references: the keys an agreement left for one later login,
//! single use, expiring.
//!
//! A reference is a UUIDv4. Taking it hands out `k_enc` once and leaves a
//! tombstone, so a second use is told apart from a reference never issued
//! (`Used` vs `Unknown`); entries (tombstones too) are forgotten one TTL
//! after they expired.
//!
//! **In memory** (one process; the default, and the mode over SQLite,
//! which one server process uses) the table is bounded: every reference
//! lives the same TTL, so entries are kept in a queue in expiry order;
//! forgotten ones leave from its front, and when the table is full the
//! oldest entry leaves to make room (its login then gets `Unknown`): a
//! flood of agreements can shorten how long a reference waits, never
//! refuse new agreements.
//!
//! **Shared** ([`References::shared`], when several processes share a
//! PostgreSQL store) every reference is a row of the store's ephemeral
//! table (kind [`SHARED_KIND`]), so a login may reach any process. The
//! row's id is a hash of the reference's 16 bytes (the store's `row_id`:
//! the reference is a bearer value and is never stored); its value (wrapped
//! under the KEK by the store) is the expiry, a used flag and the scheme
//! and `k_enc`, which taking the reference drops from the row in the same
//! transaction that marks it used, so two processes can never both hand out
//! the key. Rows are forgotten one TTL after they expired, as in memory.
//! The table is bounded as in memory: before a row is written, the store
//! forgets the rows past their time and then, while `capacity` or more rows
//! (live, used or expired, of every process) are left, the ones forgotten
//! soonest, i.e. the oldest ([`EphemeralStore::ephemeral_make_room`], one
//! transaction). A flood of agreements shortens how long a reference waits;
//! it never refuses new agreements. Processes making room at the same
//! moment may each add their row, so the table can exceed `capacity` by
//! that many. [`References::len`] never queries the store (it serves
//! metrics, on an event loop): it is the site-wide count as of this
//! process's last insert.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;
use zeroize::Zeroizing;

use super::Scheme;
use crate::store::{EphemeralChange, EphemeralStore, StoreError};
use crate::store::{duration_ms, row_id, wall_ms};

/// The ephemeral-row kind of a shared reference.
pub const SHARED_KIND: &str = "agreement-ref";

/// What an agreement left for its login.
pub struct SessionKey {
    /// The scheme (it fixes the AES-GCM key size).
    pub scheme: Scheme,
    /// `k_enc`.
    pub k_enc: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// Why a reference could not be registered or taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Never issued (or long forgotten), or not a UUID.
    #[error("unknown client_reference_id")]
    Unknown,
    /// Already used by a login.
    #[error("client_reference_id already used")]
    Used,
    /// Issued, but its time ran out.
    #[error("client_reference_id expired")]
    Expired,
    /// Shared mode only: the store cannot be reached now (503). The
    /// detail is for the log, never for the client.
    #[error("reference store unavailable: {0}")]
    Unavailable(String),
    /// Shared mode only: the store failed (500). The detail is for the
    /// log, never for the client; it holds no key bytes.
    #[error("reference store failure: {0}")]
    Store(String),
}

impl From<StoreError> for ReferenceError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            ReferenceError::Unavailable(e.to_string())
        } else {
            ReferenceError::Store(e.to_string())
        }
    }
}

struct Entry {
    expires: Instant,
    key: Option<SessionKey>,
}

/// The table of references, in memory or in a shared store.
pub struct References {
    ttl: Duration,
    capacity: usize,
    table: Table,
}

/// Where the references are.
enum Table {
    /// This process's memory.
    Memory(Mutex<MemoryTable>),
    /// The ephemeral rows of a store shared by several processes.
    Shared {
        /// The store.
        store: Arc<dyn EphemeralStore>,
        /// Rows of every process as of this process's last insert (what
        /// making room left, plus the row added): [`References::len`]
        /// reads it and never the store.
        count: AtomicUsize,
    },
}

#[derive(Default)]
struct MemoryTable {
    map: HashMap<Uuid, Entry>,
    /// Every id in `map`, oldest (soonest to expire) first.
    order: VecDeque<Uuid>,
}

impl MemoryTable {
    fn pop_oldest(&mut self) {
        if let Some(id) = self.order.pop_front() {
            self.map.remove(&id);
        }
    }
}

impl std::fmt::Debug for References {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.table {
            Table::Memory(_) => "memory",
            Table::Shared { .. } => "shared",
        };
        f.debug_struct("References")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("mode", &mode)
            .finish_non_exhaustive()
    }
}

/// Version of the shared row's layout.
const ROW_VERSION: u8 = 1;
/// Bytes before `k_enc` in a shared row: version, expiry, used, scheme.
const ROW_HEADER: usize = 1 + 8 + 1 + 1;

/// A shared row's value: `version (1) ‖ expires_ms (8, big-endian) ‖ used
/// (1) ‖ scheme (1) ‖ k_enc` (`k_enc` empty once used).
struct Row {
    expires_ms: u64,
    used: bool,
    scheme: Scheme,
    k_enc: Zeroizing<Vec<u8>>,
}

fn scheme_code(scheme: Scheme) -> u8 {
    match scheme {
        Scheme::Aes1 => 1,
        Scheme::Aes2 => 2,
        Scheme::EcAes1 => 3,
        Scheme::EcAes2 => 4,
    }
}

fn scheme_of(code: u8) -> Option<Scheme> {
    Scheme::default_preference()
        .into_iter()
        .find(|s| scheme_code(*s) == code)
}

impl Row {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(ROW_HEADER + self.k_enc.len()));
        out.push(ROW_VERSION);
        out.extend_from_slice(&self.expires_ms.to_be_bytes());
        out.push(u8::from(self.used));
        out.push(scheme_code(self.scheme));
        out.extend_from_slice(&self.k_enc);
        out
    }

    fn decode(value: &[u8]) -> Result<Row, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("{SHARED_KIND} row: {what}"));
        if value.len() < ROW_HEADER || value[0] != ROW_VERSION {
            return Err(corrupt("unknown layout"));
        }
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&value[1..9]);
        let used = match value[9] {
            0 => false,
            1 => true,
            _ => return Err(corrupt("bad used flag")),
        };
        let scheme = scheme_of(value[10]).ok_or_else(|| corrupt("unknown scheme"))?;
        let k_enc = Zeroizing::new(value[ROW_HEADER..].to_vec());
        let expected = if used { 0 } else { scheme.enc_key_len() };
        if k_enc.len() != expected {
            return Err(corrupt("bad key length"));
        }
        Ok(Row {
            expires_ms: u64::from_be_bytes(expires),
            used,
            scheme,
            k_enc,
        })
    }
}

/// The shared row id of reference `id`: a hash of its 16 bytes (the
/// reference itself is a bearer value).
fn ref_id(id: &Uuid) -> [u8; 32] {
    row_id(&[id.as_bytes()])
}

impl References {
    /// A table in memory of at most `capacity` entries living `ttl`.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        References {
            ttl,
            capacity: capacity.max(1),
            table: Table::Memory(Mutex::new(MemoryTable::default())),
        }
    }

    /// A table in `store`, shared with every process using it, of at most
    /// `capacity` entries (beyond, the oldest are forgotten) living `ttl`.
    pub fn shared(store: Arc<dyn EphemeralStore>, ttl: Duration, capacity: usize) -> Self {
        References {
            ttl,
            capacity: capacity.max(1),
            table: Table::Shared {
                store,
                count: AtomicUsize::new(0),
            },
        }
    }

    fn lock(table: &Mutex<MemoryTable>) -> std::sync::MutexGuard<'_, MemoryTable> {
        table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers `key` under a fresh random reference; when the table is
    /// full, the oldest entries are forgotten to make room. In memory this
    /// always succeeds; shared, it fails only when the store does
    /// ([`ReferenceError::Unavailable`], [`ReferenceError::Store`]).
    pub fn insert(&self, key: SessionKey, now: Instant) -> Result<Uuid, ReferenceError> {
        match &self.table {
            Table::Memory(table) => Ok(self.insert_memory(&mut Self::lock(table), key, now)),
            Table::Shared { store, count } => {
                self.insert_shared(store.as_ref(), count, wall_ms(now), key)
            }
        }
    }

    fn insert_memory(&self, table: &mut MemoryTable, key: SessionKey, now: Instant) -> Uuid {
        // Forget what is past its expiry and grace, then make room.
        while let Some(oldest) = table.order.front()
            && table
                .map
                .get(oldest)
                .is_none_or(|e| e.expires + self.ttl <= now)
        {
            table.pop_oldest();
        }
        while table.map.len() >= self.capacity {
            table.pop_oldest();
        }
        loop {
            let id = Uuid::new_v4();
            if let std::collections::hash_map::Entry::Vacant(v) = table.map.entry(id) {
                v.insert(Entry {
                    expires: now + self.ttl,
                    key: Some(key),
                });
                table.order.push_back(id);
                return id;
            }
        }
    }

    fn insert_shared(
        &self,
        store: &dyn EphemeralStore,
        count: &AtomicUsize,
        now_ms: u64,
        key: SessionKey,
    ) -> Result<Uuid, ReferenceError> {
        let capacity = u64::try_from(self.capacity).unwrap_or(u64::MAX);
        let left = store.ephemeral_make_room(SHARED_KIND, capacity)?;
        let ttl = duration_ms(self.ttl);
        let expires_ms = now_ms.saturating_add(ttl);
        let value = Row {
            expires_ms,
            used: false,
            scheme: key.scheme,
            k_enc: key.k_enc,
        }
        .encode();
        loop {
            let id = Uuid::new_v4();
            let mut fresh = false;
            store.ephemeral_update(SHARED_KIND, &ref_id(&id), &mut |row| {
                fresh = row.is_none();
                Ok(if fresh {
                    EphemeralChange::Put {
                        value: value.clone(),
                        forget_ms: expires_ms.saturating_add(ttl),
                    }
                } else {
                    EphemeralChange::Keep
                })
            })?;
            if fresh {
                let held = usize::try_from(left.saturating_add(1)).unwrap_or(usize::MAX);
                count.store(held, Ordering::Relaxed);
                return Ok(id);
            }
        }
    }

    /// Takes the key of `id` (once), with the id in the form it was issued.
    pub fn take(&self, id: &str, now: Instant) -> Result<(Uuid, SessionKey), ReferenceError> {
        let id = Uuid::parse_str(id).map_err(|_| ReferenceError::Unknown)?;
        let key = match &self.table {
            Table::Memory(table) => self.take_memory(&mut Self::lock(table), &id, now),
            Table::Shared { store, .. } => self.take_shared(store.as_ref(), &id, wall_ms(now)),
        }?;
        Ok((id, key))
    }

    fn take_memory(
        &self,
        table: &mut MemoryTable,
        id: &Uuid,
        now: Instant,
    ) -> Result<SessionKey, ReferenceError> {
        let entry = table.map.get_mut(id).ok_or(ReferenceError::Unknown)?;
        if entry.expires + self.ttl <= now {
            // Left to be forgotten from the queue's front.
            return Err(ReferenceError::Unknown);
        }
        let key = entry.key.take().ok_or(ReferenceError::Used)?;
        if entry.expires <= now {
            return Err(ReferenceError::Expired);
        }
        Ok(key)
    }

    fn take_shared(
        &self,
        store: &dyn EphemeralStore,
        id: &Uuid,
        now_ms: u64,
    ) -> Result<SessionKey, ReferenceError> {
        let ttl = duration_ms(self.ttl);
        // Only the last run of the closure counts: it sets both afresh.
        let mut outcome = Err(ReferenceError::Unknown);
        store.ephemeral_update(SHARED_KIND, &ref_id(id), &mut |row| {
            outcome = Err(ReferenceError::Unknown);
            let Some(row) = row else {
                return Ok(EphemeralChange::Keep);
            };
            let stored = Row::decode(&row.value)?;
            if stored.expires_ms.saturating_add(ttl) <= now_ms {
                // Left for the store to forget.
                return Ok(EphemeralChange::Keep);
            }
            if stored.used {
                outcome = Err(ReferenceError::Used);
                return Ok(EphemeralChange::Keep);
            }
            let tombstone = Row {
                expires_ms: stored.expires_ms,
                used: true,
                scheme: stored.scheme,
                k_enc: Zeroizing::new(Vec::new()),
            };
            outcome = if stored.expires_ms <= now_ms {
                Err(ReferenceError::Expired)
            } else {
                Ok(SessionKey {
                    scheme: stored.scheme,
                    k_enc: stored.k_enc,
                })
            };
            Ok(EphemeralChange::Put {
                value: tombstone.encode(),
                forget_ms: row.forget_ms,
            })
        })?;
        outcome
    }

    /// Entries held (live, used or expired), for metrics and tests.
    /// Shared: the rows of every process as of this process's last insert
    /// (0 before its first), never a query, so metrics never wait for the
    /// store; rows taken, forgotten or added since, by any process, are
    /// not seen until the next insert here.
    pub fn len(&self) -> usize {
        match &self.table {
            Table::Memory(table) => Self::lock(table).map.len(),
            Table::Shared { count, .. } => count.load(Ordering::Relaxed),
        }
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey {
            scheme: Scheme::EcAes1,
            k_enc: Zeroizing::new(vec![7; 16]),
        }
    }

    #[test]
    fn single_use_expiry_and_capacity() {
        let t0 = Instant::now();
        let refs = References::new(Duration::from_secs(10), 2);
        let a = refs.insert(key(), t0).unwrap().to_string();
        assert_eq!(*refs.take(&a, t0).unwrap().1.k_enc, vec![7; 16]);
        assert_eq!(refs.take(&a, t0).unwrap_err(), ReferenceError::Used);
        let b = refs.insert(key(), t0).unwrap().to_string();
        // Full: the oldest entry (a's tombstone) leaves for c.
        let c = refs.insert(key(), t0).unwrap().to_string();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs.take(&a, t0).unwrap_err(), ReferenceError::Unknown);
        // Full again: b, the oldest live one, leaves for d.
        let d = refs.insert(key(), t0).unwrap().to_string();
        assert_eq!(refs.take(&b, t0).unwrap_err(), ReferenceError::Unknown);
        assert_eq!(*refs.take(&c, t0).unwrap().1.k_enc, vec![7; 16]);
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(refs.take(&d, t1).unwrap_err(), ReferenceError::Expired);
        assert_eq!(refs.take(&d, t1).unwrap_err(), ReferenceError::Used);
        // Past expiry + TTL, entries are forgotten.
        let t2 = t0 + Duration::from_secs(21);
        assert_eq!(refs.take(&d, t2).unwrap_err(), ReferenceError::Unknown);
        refs.insert(key(), t2).unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(
            refs.take("not-a-uuid", t2).unwrap_err(),
            ReferenceError::Unknown
        );
        assert_eq!(
            refs.take(&Uuid::new_v4().to_string(), t2).unwrap_err(),
            ReferenceError::Unknown
        );
    }

    /// Shared mode over a real store: each `References` has a store
    /// handle of its own, as separate processes would.
    mod shared {
        use super::*;
        use crate::store::{Store, StoreOptions};
        use std::sync::Barrier;

        /// 32 bytes that must never reach the database in clear.
        const K: &[u8; 32] = b"k_enc/never-in-the-db-in-clear!!";

        fn key() -> SessionKey {
            SessionKey {
                scheme: Scheme::EcAes2,
                k_enc: Zeroizing::new(K.to_vec()),
            }
        }

        /// One database (SQLite or PostgreSQL) and the KEK of its data
        /// directory.
        pub(crate) struct Site {
            pub(crate) dir: tempfile::TempDir,
            pub(crate) options: StoreOptions,
        }

        impl Site {
            pub(crate) fn sqlite() -> Site {
                let dir = tempfile::tempdir().unwrap();
                let options = StoreOptions::new(dir.path());
                Site { dir, options }
            }

            pub(crate) fn postgres(label: &str) -> Site {
                let dir = tempfile::tempdir().unwrap();
                let options = StoreOptions {
                    url: Some(crate::store::testing::fresh_pg_database(label)),
                    ..StoreOptions::new(dir.path())
                };
                Site { dir, options }
            }

            /// A new handle on the database.
            pub(crate) fn handle(&self) -> Arc<Store> {
                Arc::new(Store::open(&self.options).unwrap())
            }

            fn refs(&self, ttl_s: u64, capacity: usize) -> References {
                References::shared(self.handle(), Duration::from_secs(ttl_s), capacity)
            }
        }

        fn taken_once_through_another_handle(site: &Site) {
            let t0 = Instant::now();
            let (a, b) = (site.refs(10, 100), site.refs(10, 100));
            let id = a.insert(key(), t0).unwrap();
            let (got, k) = b.take(&id.to_string(), t0).unwrap();
            assert_eq!(got, id);
            assert_eq!(k.scheme, Scheme::EcAes2);
            assert_eq!(k.k_enc.as_slice(), K);
            // Used, from any handle, in any form of the UUID.
            assert_eq!(
                b.take(&id.to_string(), t0).unwrap_err(),
                ReferenceError::Used
            );
            assert_eq!(
                a.take(&id.to_string(), t0).unwrap_err(),
                ReferenceError::Used
            );
            let upper = id.to_string().to_uppercase();
            assert_eq!(a.take(&upper, t0).unwrap_err(), ReferenceError::Used);
            // Never issued.
            let other = Uuid::new_v4().to_string();
            assert_eq!(b.take(&other, t0).unwrap_err(), ReferenceError::Unknown);
            assert_eq!(b.take("nope", t0).unwrap_err(), ReferenceError::Unknown);
            // Just before expiry: good; after: expired, then used; past
            // the grace: unknown.
            let live = a.insert(key(), t0).unwrap().to_string();
            let t = t0 + Duration::from_millis(9_900);
            assert_eq!(b.take(&live, t).unwrap().1.k_enc.as_slice(), K);
            let late = a.insert(key(), t0).unwrap().to_string();
            let t1 = t0 + Duration::from_secs(11);
            assert_eq!(b.take(&late, t1).unwrap_err(), ReferenceError::Expired);
            assert_eq!(a.take(&late, t1).unwrap_err(), ReferenceError::Used);
            let t2 = t0 + Duration::from_secs(21);
            assert_eq!(b.take(&late, t2).unwrap_err(), ReferenceError::Unknown);
            // The store holds every handle's rows; a handle's len is the
            // count as of its last insert (b has made none).
            assert_eq!(site.handle().ephemeral_count(SHARED_KIND).unwrap(), 3);
            assert_eq!(a.len(), 3);
            assert_eq!(b.len(), 0);
        }

        fn one_of_eight_racing_handles_gets_the_key(site: &Site) {
            let id = site
                .refs(60, 100)
                .insert(key(), Instant::now())
                .unwrap()
                .to_string();
            let barrier = Arc::new(Barrier::new(8));
            let takers: Vec<_> = (0..8)
                .map(|_| {
                    let (refs, barrier, id) =
                        (site.refs(60, 100), Arc::clone(&barrier), id.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        refs.take(&id, Instant::now())
                            .map(|(_, k)| k.k_enc.to_vec())
                    })
                })
                .collect();
            let results: Vec<_> = takers.into_iter().map(|t| t.join().unwrap()).collect();
            let keys: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(keys, vec![&K.to_vec()], "exactly one taker gets the key");
            for r in &results {
                if let Err(e) = r {
                    assert_eq!(*e, ReferenceError::Used);
                }
            }
        }

        /// A full table forgets its oldest rows, whichever process added
        /// them, used or not; the new reference works.
        fn full_forgets_the_oldest_references(site: &Site) {
            // Later than every row the other tests left: these are newest.
            let t = Instant::now() + Duration::from_secs(600);
            let at = |s: u64| t + Duration::from_secs(s);
            let store = site.handle();
            let held = || store.ephemeral_count(SHARED_KIND).unwrap();
            let a = References::shared(Arc::clone(&store) as _, Duration::from_secs(10), 2);
            let b = site.refs(10, 2);
            let first = a.insert(key(), at(0)).unwrap().to_string();
            let second = b.insert(key(), at(1)).unwrap().to_string();
            assert_eq!(held(), 2, "the other tests' older rows went");
            assert_eq!((a.len(), b.len()), (2, 2));
            // Full: the oldest (a's) goes for b's new one.
            let third = b.insert(key(), at(2)).unwrap().to_string();
            assert_eq!(held(), 2);
            assert_eq!(b.len(), 2);
            assert_eq!(a.take(&first, at(2)).unwrap_err(), ReferenceError::Unknown);
            assert_eq!(a.take(&third, at(2)).unwrap().1.k_enc.as_slice(), K);
            // A used reference's tombstone counts, and goes in its turn.
            let fourth = a.insert(key(), at(3)).unwrap().to_string();
            assert_eq!(held(), 2);
            assert_eq!(b.take(&second, at(3)).unwrap_err(), ReferenceError::Unknown);
            assert_eq!(b.take(&third, at(3)).unwrap_err(), ReferenceError::Used);
            assert_eq!(b.take(&fourth, at(3)).unwrap().1.k_enc.as_slice(), K);
            assert_eq!(a.len(), 2);
        }

        fn run_all(site: &Site) {
            taken_once_through_another_handle(site);
            one_of_eight_racing_handles_gets_the_key(site);
            full_forgets_the_oldest_references(site);
        }

        #[test]
        fn shared_references_on_sqlite() {
            let site = Site::sqlite();
            run_all(&site);
            // Neither the key nor the reference is in the files in clear.
            let id = site.refs(10, 1000).insert(key(), Instant::now()).unwrap();
            let mut raw = Vec::new();
            for file in ["keypipe.db", "keypipe.db-wal"] {
                if let Ok(bytes) = std::fs::read(site.dir.path().join(file)) {
                    raw.extend_from_slice(&bytes);
                }
            }
            assert!(raw.len() > 4096, "read the database");
            assert!(!raw.windows(K.len()).any(|w| w == K), "k_enc in clear");
            assert!(
                !raw.windows(16).any(|w| w == id.as_bytes()),
                "reference in clear"
            );
            let text = id.to_string();
            assert!(!raw.windows(36).any(|w| w == text.as_bytes()));
        }

        #[test]
        fn shared_references_on_postgres() {
            let site = Site::postgres("refs");
            run_all(&site);
            let id = site.refs(10, 1000).insert(key(), Instant::now()).unwrap();
            let url = site.options.url.as_deref().unwrap();
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
            let rows = client
                .query(
                    "SELECT id, wrapped FROM ephemeral WHERE kind = $1",
                    &[&SHARED_KIND],
                )
                .unwrap();
            assert!(!rows.is_empty());
            let mut found = false;
            for row in rows {
                let (row_id_bytes, wrapped): (Vec<u8>, Vec<u8>) = (row.get(0), row.get(1));
                assert!(!wrapped.windows(K.len()).any(|w| w == K), "k_enc in clear");
                assert!(!row_id_bytes.windows(16).any(|w| w == id.as_bytes()));
                found |= row_id_bytes[..] == ref_id(&id)[..];
            }
            assert!(found, "the row of the reference, by its hash");
        }
    }
}
