//! What KeyTalk's tables ([`super::session::Sessions`],
//! [`super::oob::Downloads`], [`super::credentials::Failures`]) need to
//! keep their rows in the store's `ephemeral` table instead of this
//! process's memory, when several keypipe processes share one database
//! behind a load balancer that does not pin clients.
//!
//! Each table keeps its rules in pure functions over a time `Stamp`:
//! an [`Instant`] in memory (as before), milliseconds since the epoch in
//! the store (processes share no `Instant`; the store's `wall_ms` maps
//! one to the other, the same mapping as every other table's). A row's id
//! is always a hash (the store's `row_id`) of a cookie, a download token
//! or a user name, never the secret itself; its value is wrapped under
//! the KEK by the store.
//!
//! The service shares them when built with a store to share
//! ([`super::KeyTalk::with_shared`]): meant for a store that
//! `Store::is_shared()` (PostgreSQL); over SQLite (one process) they stay
//! in memory. Mixing the modes on one site splits its state: every
//! process of a site must be started the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::store::duration_ms;
use crate::store::{EphemeralChange, EphemeralRow, EphemeralStore, StoreError};

/// A busy mark ("a call of this session is running", "an attempt of this
/// user is being checked") older than this is taken for the mark of a
/// process that died mid-call, and ignored (shared mode only; in memory
/// a mark lives exactly as long as its call). An RCDP call runs for
/// seconds at most once on the pool (Argon2, RSA key generation, a few
/// store writes): a minute is far beyond the longest, and a crashed
/// process blocks a session or a user for at most that long.
pub const BUSY_STALE: Duration = Duration::from_secs(60);

/// Why a table could not add a row.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The OS random source failed (no id or token could be drawn).
    #[error("the OS random source failed")]
    NoRandomness,
    /// The shared table of downloads is at its capacity (it refuses new
    /// rows; the shared sessions make room instead).
    #[error("the table is full")]
    Full,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A point in time as a table's mode keeps it.
pub(super) trait Stamp: Copy + Ord {
    /// Time from `earlier` to `self` (zero when `earlier` is later).
    fn since(self, earlier: Self) -> Duration;
    /// `self` plus `d`.
    fn plus(self, d: Duration) -> Self;
}

impl Stamp for Instant {
    fn since(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }

    fn plus(self, d: Duration) -> Instant {
        self + d
    }
}

/// Milliseconds since the Unix epoch.
impl Stamp for u64 {
    fn since(self, earlier: u64) -> Duration {
        Duration::from_millis(self.saturating_sub(earlier))
    }

    fn plus(self, d: Duration) -> u64 {
        self.saturating_add(duration_ms(d))
    }
}

/// `result`'s value, or `or` when the store failed (logged, naming
/// `table`): what the methods that cannot return a store error answer.
pub(super) fn logged<T>(table: &str, result: Result<T, StoreError>, or: T) -> T {
    result.unwrap_or_else(|e| {
        tracing::error!("keytalk: {table} store: {e}");
        or
    })
}

/// `value` as JSON in a buffer of exactly its size (no reallocation
/// leaves a copy behind), zeroized when dropped.
pub(super) fn encode<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let fail = |e: serde_json::Error| StoreError::Corrupt(format!("keytalk row: {e}"));
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_err(fail)?;
    let mut out = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *out, value).map_err(fail)?;
    Ok(out)
}

/// A value [`encode`] wrote; a damaged one is [`StoreError::Corrupt`]
/// (the message names the position, never the content).
pub(super) fn decode<T: DeserializeOwned>(kind: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "{kind} row: {:?} error at column {}",
            e.classify(),
            e.column()
        ))
    })
}

/// A fresh holder for a busy mark (a session's call, a user's attempt):
/// random, so holders drawn by different processes do not collide; a
/// counter of this process when the OS random source fails.
pub(super) fn new_holder() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut raw = [0u8; 8];
    match getrandom::fill(&mut raw) {
        Ok(()) => u64::from_le_bytes(raw),
        Err(_) => NEXT.fetch_add(1, Ordering::Relaxed),
    }
}

/// The store behind the shared tables.
#[derive(Clone)]
pub(super) struct Shared(Arc<dyn EphemeralStore>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl Shared {
    /// Over `store`.
    pub(super) fn new(store: Arc<dyn EphemeralStore>) -> Shared {
        Shared(store)
    }

    /// Reads the row `(kind, id)`, lets `decide` choose the change and an
    /// outcome, applies the change and gives the outcome, in one
    /// transaction. `decide` may run more than once (a concurrent writer
    /// on PostgreSQL): the outcome is its last run's.
    pub(super) fn update<R>(
        &self,
        kind: &str,
        id: &[u8],
        mut decide: impl FnMut(Option<EphemeralRow>) -> Result<(EphemeralChange, R), StoreError>,
    ) -> Result<R, StoreError> {
        let mut outcome = None;
        self.0.ephemeral_update(kind, id, &mut |row| {
            let (change, out) = decide(row)?;
            outcome = Some(out);
            Ok(change)
        })?;
        outcome.ok_or_else(|| StoreError::Corrupt(format!("{kind}: no decision was made")))
    }

    /// The row `(kind, id)`, read only (see
    /// [`EphemeralStore::ephemeral_get`]).
    pub(super) fn get(&self, kind: &str, id: &[u8]) -> Result<Option<EphemeralRow>, StoreError> {
        self.0.ephemeral_get(kind, id)
    }

    /// Rows of `kind` not yet forgotten.
    pub(super) fn count(&self, kind: &str) -> Result<u64, StoreError> {
        self.0.ephemeral_count(kind)
    }

    /// Makes room for one more row of `kind` under `capacity`, forgetting
    /// the rows past their time, then the ones forgotten soonest: how many
    /// are left (below `capacity`). See
    /// [`EphemeralStore::ephemeral_make_room`].
    pub(super) fn make_room(&self, kind: &str, capacity: u64) -> Result<u64, StoreError> {
        self.0.ephemeral_make_room(kind, capacity)
    }
}

#[cfg(test)]
pub(super) mod testing {
    //! Two handles on one database, SQLite or PostgreSQL.

    use std::sync::Arc;

    use crate::store::{Store, StoreOptions};

    /// Where a test's database is.
    pub struct Db {
        /// The directory (KEK file, SQLite files).
        pub dir: tempfile::TempDir,
        /// PostgreSQL's connection string; `None`: SQLite in `dir`.
        pub url: Option<String>,
    }

    impl Db {
        /// SQLite in a fresh directory.
        pub fn sqlite() -> Db {
            Db {
                dir: tempfile::tempdir().unwrap(),
                url: None,
            }
        }

        /// A fresh database on the test PostgreSQL cluster.
        pub fn postgres(label: &str) -> Db {
            Db {
                dir: tempfile::tempdir().unwrap(),
                url: Some(crate::store::testing::fresh_pg_database(label)),
            }
        }

        /// A new handle on the database (each its own connection, as
        /// another process's).
        pub fn open(&self) -> Arc<Store> {
            let options = StoreOptions {
                url: self.url.clone(),
                ..StoreOptions::new(self.dir.path())
            };
            Arc::new(Store::open_with_env(&options, &|_| None).unwrap())
        }

        /// True when `needle` is nowhere in the database: no byte of
        /// SQLite's files (the database and its WAL), no kind, id or value
        /// of PostgreSQL's `ephemeral` rows (where these tables write).
        pub fn lacks(&self, needle: &[u8]) -> bool {
            let has = |raw: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
            match &self.url {
                None => ["keypipe.db", "keypipe.db-wal"]
                    .iter()
                    .all(|name| !has(&std::fs::read(self.dir.path().join(name)).unwrap())),
                Some(url) => {
                    let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
                    let rows = db
                        .query("SELECT kind, id, wrapped FROM ephemeral", &[])
                        .unwrap();
                    rows.iter().all(|r| {
                        let (kind, id, wrapped): (String, Vec<u8>, Vec<u8>) =
                            (r.get(0), r.get(1), r.get(2));
                        !has(kind.as_bytes()) && !has(&id) && !has(&wrapped)
                    })
                }
            }
        }
    }
}
