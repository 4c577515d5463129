//! Short-lived state that every keypipe process of a site must see when
//! they share a database: key-agreement references, KeyTalk sessions and
//! one-time downloads, login and credential throttles. One table,
//! `ephemeral`, keyed by a kind and an id; each value is opaque to the
//! store and always wrapped under the KEK (associated data
//! `ephemeral:{kind}:{id as hex}`), so the database never holds a session
//! key, a cookie's state or a PKCS#12 package in clear. An id that is
//! itself a secret (a cookie, a download token) is passed hashed.
//!
//! A row lives until its `forget_ms`; a read never sees a row past it, and
//! every write first deletes such rows of its kind (indexed). The only
//! primitive is [`EphemeralStore::ephemeral_update`]: read a row, decide,
//! write or delete it, in one write transaction, so two processes cannot
//! both take a single-use reference or both count the same failure.

use zeroize::Zeroizing;

use super::master_keys::now_ms;
use super::sql::args;
use super::{Store, StoreError};

/// A row as the closure of [`EphemeralStore::ephemeral_update`] sees it.
pub struct EphemeralRow {
    /// The value, unwrapped.
    pub value: Zeroizing<Vec<u8>>,
    /// When the row is forgotten, ms since the epoch.
    pub forget_ms: u64,
}

/// What to do with the row.
pub enum EphemeralChange {
    /// Leave it as it is (or absent).
    Keep,
    /// Store this value, forgotten at `forget_ms` (ms since the epoch).
    Put {
        /// The new value (wrapped before it is written).
        value: Zeroizing<Vec<u8>>,
        /// When it is forgotten.
        forget_ms: u64,
    },
    /// Delete the row.
    Remove,
}

/// Shared short-lived state; [`Store`] implements it on both backends.
pub trait EphemeralStore: Send + Sync {
    /// Reads the row `(kind, id)` (`None` when absent or past its
    /// `forget_ms`), hands it to `decide`, and applies the change, all in
    /// one write transaction. On PostgreSQL `decide` may run more than
    /// once (a concurrent writer): only what its last run returned and
    /// captured counts.
    fn ephemeral_update(
        &self,
        kind: &str,
        id: &[u8],
        decide: &mut dyn FnMut(Option<EphemeralRow>) -> Result<EphemeralChange, StoreError>,
    ) -> Result<(), StoreError>;

    /// Rows of `kind` not yet forgotten.
    fn ephemeral_count(&self, kind: &str) -> Result<u64, StoreError>;

    /// Makes room for one more row of `kind` under `capacity`: forgets
    /// the rows past their time, then, while `capacity` or more are left,
    /// the ones forgotten soonest (the least recently renewed), in one
    /// write transaction. How many rows are left (below `capacity`).
    /// Processes making room at the same moment may each add their row,
    /// so the table can exceed `capacity` by that many.
    fn ephemeral_make_room(&self, kind: &str, capacity: u64) -> Result<u64, StoreError>;
}

fn aad(kind: &str, id: &[u8]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("ephemeral:{kind}:{hex}")
}

/// The associated data of a row, for `rewrap`.
pub(super) fn row_aad(kind: &str, id: &[u8]) -> String {
    aad(kind, id)
}

impl EphemeralStore for Store {
    fn ephemeral_update(
        &self,
        kind: &str,
        id: &[u8],
        decide: &mut dyn FnMut(Option<EphemeralRow>) -> Result<EphemeralChange, StoreError>,
    ) -> Result<(), StoreError> {
        let aad = aad(kind, id);
        // Not cached by the services: no generation bump.
        self.transact(false, |tx| {
            let now = now_ms();
            tx.execute(
                "DELETE FROM ephemeral WHERE kind = ?1 AND forget_ms <= ?2",
                args![kind, now],
            )?;
            let row = match tx.query_opt(
                "SELECT wrapped, forget_ms FROM ephemeral WHERE kind = ?1 AND id = ?2",
                args![kind, id],
            )? {
                Some(mut r) => {
                    let wrapped: Vec<u8> = r.get(0)?;
                    let value = self.kek.unwrap(&aad, &wrapped).map_err(|e| {
                        StoreError::Corrupt(format!("{kind} row (table ephemeral): {e}"))
                    })?;
                    Some(EphemeralRow {
                        value,
                        forget_ms: r.get(1)?,
                    })
                }
                None => None,
            };
            match decide(row)? {
                EphemeralChange::Keep => {}
                EphemeralChange::Remove => {
                    tx.execute(
                        "DELETE FROM ephemeral WHERE kind = ?1 AND id = ?2",
                        args![kind, id],
                    )?;
                }
                EphemeralChange::Put { value, forget_ms } => {
                    let wrapped = self.kek.wrap(&aad, &value)?;
                    let forget = i64::try_from(forget_ms).unwrap_or(i64::MAX);
                    tx.execute(
                        "INSERT INTO ephemeral (kind, id, wrapped, forget_ms) \
                         VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT (kind, id) DO UPDATE \
                         SET wrapped = excluded.wrapped, forget_ms = excluded.forget_ms",
                        args![kind, id, wrapped, forget],
                    )?;
                }
            }
            Ok(())
        })
    }

    fn ephemeral_count(&self, kind: &str) -> Result<u64, StoreError> {
        self.read(|tx| {
            tx.query_opt(
                "SELECT count(*) FROM ephemeral WHERE kind = ?1 AND forget_ms > ?2",
                args![kind, now_ms()],
            )?
            .ok_or_else(|| StoreError::Corrupt("count(*) returned no row".into()))?
            .get(0)
        })
    }

    fn ephemeral_make_room(&self, kind: &str, capacity: u64) -> Result<u64, StoreError> {
        self.transact(false, |tx| {
            tx.execute(
                "DELETE FROM ephemeral WHERE kind = ?1 AND forget_ms <= ?2",
                args![kind, now_ms()],
            )?;
            let left: u64 = tx
                .query_opt(
                    "SELECT count(*) FROM ephemeral WHERE kind = ?1",
                    args![kind],
                )?
                .ok_or_else(|| StoreError::Corrupt("count(*) returned no row".into()))?
                .get(0)?;
            let excess = (left + 1).saturating_sub(capacity.max(1));
            if excess == 0 {
                return Ok(left);
            }
            let gone = tx.execute(
                "DELETE FROM ephemeral WHERE kind = ?1 AND id IN \
                 (SELECT id FROM ephemeral WHERE kind = ?1 ORDER BY forget_ms, id LIMIT ?2)",
                args![kind, i64::try_from(excess).unwrap_or(i64::MAX)],
            )?;
            Ok(left - gone)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn put(store: &Store, id: &[u8], value: &[u8], forget_ms: u64) {
        store
            .ephemeral_update("t", id, &mut |_| {
                Ok(EphemeralChange::Put {
                    value: Zeroizing::new(value.to_vec()),
                    forget_ms,
                })
            })
            .unwrap();
    }

    fn get(store: &Store, id: &[u8]) -> Option<Vec<u8>> {
        let mut seen = None;
        store
            .ephemeral_update("t", id, &mut |row| {
                seen = row.map(|r| r.value.to_vec());
                Ok(EphemeralChange::Keep)
            })
            .unwrap();
        seen
    }

    pub(crate) fn round_trip(store: &Store) {
        let later = now_ms() as u64 + 60_000;
        assert_eq!(get(store, b"a"), None);
        put(store, b"a", b"SECRET-ONE", later);
        put(store, b"b", b"two", later);
        assert_eq!(get(store, b"a").as_deref(), Some(&b"SECRET-ONE"[..]));
        assert_eq!(store.ephemeral_count("t").unwrap(), 2);
        // Past its time a row is gone, and the next write purges it.
        put(store, b"old", b"x", 1);
        assert_eq!(get(store, b"old"), None);
        store
            .ephemeral_update("t", b"a", &mut |_| Ok(EphemeralChange::Remove))
            .unwrap();
        assert_eq!(get(store, b"a"), None);
        assert_eq!(store.ephemeral_count("t").unwrap(), 1);
        // A failing decision changes nothing.
        let err = store.ephemeral_update("t", b"b", &mut |_| Err(StoreError::Random));
        assert!(err.is_err());
        assert_eq!(get(store, b"b").as_deref(), Some(&b"two"[..]));
        // Room under a capacity of 3: the rows forgotten soonest go first.
        put(store, b"c", b"three", later + 1);
        put(store, b"d", b"four", later + 2);
        assert_eq!(store.ephemeral_make_room("t", 3).unwrap(), 2);
        assert_eq!(get(store, b"b"), None, "the least recently renewed went");
        assert_eq!(get(store, b"c").as_deref(), Some(&b"three"[..]));
        assert_eq!(store.ephemeral_make_room("t", 10).unwrap(), 2);
        assert_eq!(store.ephemeral_make_room("other", 1).unwrap(), 0);
    }

    #[test]
    fn rows_round_trip_expire_and_are_wrapped_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreOptions::new(dir.path())).unwrap();
        round_trip(&store);
        let raw = std::fs::read(dir.path().join("keypipe.db-wal")).unwrap();
        assert!(!raw.windows(10).any(|w| w == b"SECRET-ONE"));
    }
}
