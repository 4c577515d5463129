//! Short-lived state that every keypipe process of a site must see when
//! they share a database: key-agreement references, KeyTalk sessions and
//! one-time downloads, login and credential throttles. One table,
//! `ephemeral`, keyed by a kind and an id; each value is opaque to the
//! store and always wrapped under the KEK (associated data
//! `ephemeral:{kind}:{id as hex}`), so the database never holds a session
//! key, a cookie's state or a PKCS#12 package in clear. An id that is
//! itself a secret (a cookie, a download token) is passed hashed
//! ([`row_id`]).
//!
//! A row lives until its `forget_ms`; a read never sees a row past it, and
//! every write first deletes such rows of its kinds (indexed). The one
//! write primitive is [`EphemeralStore::ephemeral_update_rows`]: read some
//! rows, decide, write or delete each, in one write transaction, so two
//! processes cannot both take a single-use reference or both count the
//! same failure, and a decision that depends on several rows (a source's
//! and its name's throttle) sees and changes them together.
//! [`EphemeralStore::ephemeral_update`] is its one-row form;
//! [`EphemeralStore::ephemeral_get`] reads one row in a read-only
//! transaction.
//!
//! The users of the table share two helpers: [`row_id`], how a row's id
//! is made from its parts (hashed, so no name, address or bearer secret
//! is stored in clear), and [`wall_ms`], the one mapping of this process
//! from [`Instant`]s to the wall-clock times rows hold.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::master_keys::now_ms;
use super::sql::{Tx, args};
use super::{Store, StoreError};

/// The id of a row made of `parts`: the SHA-256 of the parts, each
/// preceded by its length (8 bytes, big-endian), so `("ab", "c")` and
/// `("a", "bc")` differ. Ids are hashes so that what names a row (a user
/// name, an address, a cookie, a download token, a reference) is never
/// stored in clear. Two kinds may use the same parts: the kind is part of
/// the row's key.
pub fn row_id(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// Largest disagreement of the process's mapping of instants to wall-clock
/// times with the wall clock before it is re-anchored, ms.
const MAX_SKEW_MS: i128 = 100;

fn system_ms() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_millis()).unwrap_or(i128::MAX))
}

/// The wall-clock time of `at` under `anchor` (an instant and its time).
fn project((instant, ms): (Instant, i128), at: Instant) -> i128 {
    let nanos = match at.checked_duration_since(instant) {
        Some(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        None => -i128::try_from(instant.duration_since(at).as_nanos()).unwrap_or(i128::MAX),
    };
    ms.saturating_add(nanos.div_euclid(1_000_000))
}

/// The wall-clock time of `at`, ms since the epoch: what rows hold (their
/// `forget_ms`, the times in their values), as processes do not share
/// `Instant`s. One mapping for the whole process, whichever table asks,
/// anchored once, so the distance between two instants carries over
/// exactly; re-anchored when the wall clock moved more than 100 ms away
/// from it (a clock step, drift), so processes agree on times to about
/// that plus the skew of their clocks.
pub fn wall_ms(at: Instant) -> u64 {
    static ANCHOR: Mutex<Option<(Instant, i128)>> = Mutex::new(None);
    let mut anchor = ANCHOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = (Instant::now(), system_ms());
    let current = match *anchor {
        Some(a) if (project(a, now.0) - now.1).abs() <= MAX_SKEW_MS => a,
        _ => *anchor.insert(now),
    };
    u64::try_from(project(current, at).max(0)).unwrap_or(u64::MAX)
}

/// The instant of wall-clock time `ms`, given that `at` is `at_ms` (back
/// from [`wall_ms`]).
pub fn instant_at(at: Instant, at_ms: u64, ms: u64) -> Instant {
    if ms >= at_ms {
        at.checked_add(Duration::from_millis(ms - at_ms))
            .unwrap_or(at)
    } else {
        at.checked_sub(Duration::from_millis(at_ms - ms))
            .unwrap_or(at)
    }
}

/// `d` in whole ms, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A row as a decision sees it.
pub struct EphemeralRow {
    /// The value, unwrapped.
    pub value: Zeroizing<Vec<u8>>,
    /// When the row is forgotten, ms since the epoch.
    pub forget_ms: u64,
}

/// What to do with a row.
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
    /// Reads the rows `keys` (`(kind, id)` pairs, all different; a row is
    /// `None` when absent or past its `forget_ms`), hands them to `decide`
    /// in the order of `keys`, and applies the changes it returns (one per
    /// key, in the same order), all in one write transaction: no other
    /// writer changes any of the rows between the read and the write. On
    /// PostgreSQL `decide` may run more than once (a concurrent writer):
    /// only what its last run returned and captured counts. An error of
    /// `decide`, or a count of changes other than the count of keys,
    /// changes nothing.
    fn ephemeral_update_rows(
        &self,
        keys: &[(&str, &[u8])],
        decide: &mut dyn FnMut(
            Vec<Option<EphemeralRow>>,
        ) -> Result<Vec<EphemeralChange>, StoreError>,
    ) -> Result<(), StoreError>;

    /// Reads the row `(kind, id)` (`None` when absent or past its
    /// `forget_ms`), hands it to `decide`, and applies the change, all in
    /// one write transaction: [`EphemeralStore::ephemeral_update_rows`]
    /// for one row, with the same caveats.
    fn ephemeral_update(
        &self,
        kind: &str,
        id: &[u8],
        decide: &mut dyn FnMut(Option<EphemeralRow>) -> Result<EphemeralChange, StoreError>,
    ) -> Result<(), StoreError> {
        self.ephemeral_update_rows(&[(kind, id)], &mut |rows| {
            Ok(vec![decide(rows.into_iter().next().flatten())?])
        })
    }

    /// The row `(kind, id)` (`None` when absent or past its `forget_ms`),
    /// read in a read-only transaction: it writes nothing (not even the
    /// purge of forgotten rows), so it never conflicts with a writer. The
    /// row may have changed by the time the caller acts on it: a decision
    /// that must still hold when its change is written belongs in
    /// [`EphemeralStore::ephemeral_update_rows`].
    fn ephemeral_get(&self, kind: &str, id: &[u8]) -> Result<Option<EphemeralRow>, StoreError>;

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

impl Store {
    /// The row `(kind, id)` in `tx`, unwrapped; `None` when absent or past
    /// its `forget_ms` at `now`.
    fn ephemeral_row(
        &self,
        tx: &mut dyn Tx,
        kind: &str,
        id: &[u8],
        now: i64,
    ) -> Result<Option<EphemeralRow>, StoreError> {
        let Some(mut r) = tx.query_opt(
            "SELECT wrapped, forget_ms FROM ephemeral \
             WHERE kind = ?1 AND id = ?2 AND forget_ms > ?3",
            args![kind, id, now],
        )?
        else {
            return Ok(None);
        };
        let wrapped: Vec<u8> = r.get(0)?;
        let value = self
            .kek
            .unwrap(&aad(kind, id), &wrapped)
            .map_err(|e| StoreError::Corrupt(format!("{kind} row (table ephemeral): {e}")))?;
        Ok(Some(EphemeralRow {
            value,
            forget_ms: r.get(1)?,
        }))
    }
}

impl EphemeralStore for Store {
    fn ephemeral_update_rows(
        &self,
        keys: &[(&str, &[u8])],
        decide: &mut dyn FnMut(
            Vec<Option<EphemeralRow>>,
        ) -> Result<Vec<EphemeralChange>, StoreError>,
    ) -> Result<(), StoreError> {
        if let Some((kind, _)) = keys
            .iter()
            .enumerate()
            .find_map(|(i, key)| keys[..i].contains(key).then_some(key))
        {
            return Err(StoreError::Database(format!(
                "ephemeral: a {kind} row listed twice in one update"
            )));
        }
        let mut kinds: Vec<&str> = keys.iter().map(|(kind, _)| *kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        // Rows are written in one order, whatever the order of `keys`, so
        // two updates of the same rows never wait for each other in turn.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&i| keys[i]);
        // Not cached by the services: no generation bump.
        self.transact(false, |tx| {
            let now = now_ms();
            for kind in &kinds {
                tx.execute(
                    "DELETE FROM ephemeral WHERE kind = ?1 AND forget_ms <= ?2",
                    args![*kind, now],
                )?;
            }
            let mut rows = Vec::with_capacity(keys.len());
            for (kind, id) in keys {
                rows.push(self.ephemeral_row(tx, kind, id, now)?);
            }
            let mut changes: Vec<Option<EphemeralChange>> =
                decide(rows)?.into_iter().map(Some).collect();
            if changes.len() != keys.len() {
                return Err(StoreError::Database(format!(
                    "ephemeral: {} changes decided for {} rows",
                    changes.len(),
                    keys.len()
                )));
            }
            for &i in &order {
                let (kind, id) = keys[i];
                match changes[i].take() {
                    None | Some(EphemeralChange::Keep) => {}
                    Some(EphemeralChange::Remove) => {
                        tx.execute(
                            "DELETE FROM ephemeral WHERE kind = ?1 AND id = ?2",
                            args![kind, id],
                        )?;
                    }
                    Some(EphemeralChange::Put { value, forget_ms }) => {
                        let wrapped = self.kek.wrap(&aad(kind, id), &value)?;
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
            }
            Ok(())
        })
    }

    fn ephemeral_get(&self, kind: &str, id: &[u8]) -> Result<Option<EphemeralRow>, StoreError> {
        self.read(|tx| self.ephemeral_row(tx, kind, id, now_ms()))
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
        let row = store.ephemeral_get("t", id).unwrap();
        row.map(|r| r.value.to_vec())
    }

    /// Rows of kind `t` in the table, forgotten or not (what was purged).
    fn stored(store: &Store) -> u64 {
        store
            .read(|tx| {
                tx.query_opt("SELECT count(*) FROM ephemeral WHERE kind = 't'", &[])?
                    .ok_or_else(|| StoreError::Corrupt("no count".into()))?
                    .get(0)
            })
            .unwrap()
    }

    fn value(v: &[u8], forget_ms: u64) -> EphemeralChange {
        EphemeralChange::Put {
            value: Zeroizing::new(v.to_vec()),
            forget_ms,
        }
    }

    /// Several rows, of several kinds, in one transaction.
    fn several_rows(store: &Store, later: u64) {
        let keys: [(&str, &[u8]); 3] = [("t", b"m1"), ("u", b"m1"), ("t", b"m2")];
        store
            .ephemeral_update_rows(&keys, &mut |rows| {
                assert!(rows.iter().all(Option::is_none));
                Ok(vec![
                    value(b"one", later),
                    value(b"u-one", later),
                    EphemeralChange::Keep,
                ])
            })
            .unwrap();
        let seen = |store: &Store| -> Vec<Option<Vec<u8>>> {
            keys.iter()
                .map(|(kind, id)| {
                    let row = store.ephemeral_get(kind, id).unwrap();
                    row.map(|r| r.value.to_vec())
                })
                .collect()
        };
        assert_eq!(
            seen(store),
            [Some(b"one".to_vec()), Some(b"u-one".to_vec()), None]
        );
        // Rows reach the decision in the order of the keys; the changes
        // apply to them in that order.
        store
            .ephemeral_update_rows(&keys, &mut |rows| {
                let values: Vec<_> = rows
                    .iter()
                    .map(|r| r.as_ref().map(|r| r.value.to_vec()))
                    .collect();
                assert_eq!(
                    values,
                    [Some(b"one".to_vec()), Some(b"u-one".to_vec()), None]
                );
                Ok(vec![
                    EphemeralChange::Remove,
                    value(b"u-two", later),
                    value(b"two", later),
                ])
            })
            .unwrap();
        let after = [None, Some(b"u-two".to_vec()), Some(b"two".to_vec())];
        assert_eq!(seen(store), after);
        // A failing decision, a wrong count of changes or a key listed
        // twice change nothing.
        let err = store.ephemeral_update_rows(&keys, &mut |_| {
            Ok(vec![EphemeralChange::Remove, EphemeralChange::Remove])
        });
        assert!(err.is_err());
        let err = store.ephemeral_update_rows(&keys, &mut |_| Err(StoreError::Random));
        assert!(matches!(err, Err(StoreError::Random)));
        let twice: [(&str, &[u8]); 2] = [("t", b"m2"), ("t", b"m2")];
        let err = store.ephemeral_update_rows(&twice, &mut |_| {
            Ok(vec![EphemeralChange::Remove, EphemeralChange::Remove])
        });
        assert!(err.is_err());
        assert_eq!(seen(store), after);
        for (kind, id) in &keys {
            store
                .ephemeral_update(kind, id, &mut |_| Ok(EphemeralChange::Remove))
                .unwrap();
        }
    }

    pub(crate) fn round_trip(store: &Store) {
        let later = now_ms() as u64 + 60_000;
        assert_eq!(get(store, b"a"), None);
        put(store, b"a", b"SECRET-ONE", later);
        put(store, b"b", b"two", later);
        assert_eq!(get(store, b"a").as_deref(), Some(&b"SECRET-ONE"[..]));
        assert_eq!(store.ephemeral_count("t").unwrap(), 2);
        // Past its time a row is gone; reading changes nothing, the next
        // write purges it.
        put(store, b"old", b"x", 1);
        assert_eq!(get(store, b"old"), None);
        assert_eq!(stored(store), 3, "a read purges nothing");
        assert_eq!(store.ephemeral_count("t").unwrap(), 2);
        put(store, b"c", b"three", later);
        assert_eq!(stored(store), 3, "a write purges");
        store
            .ephemeral_update("t", b"c", &mut |_| Ok(EphemeralChange::Remove))
            .unwrap();
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
        several_rows(store, later);
    }

    #[test]
    fn row_ids_tell_their_parts_apart() {
        let id = |parts: &[&[u8]]| row_id(parts);
        assert_ne!(id(&[b"ab", b"c"]), id(&[b"a", b"bc"]));
        assert_ne!(id(&[b"abc"]), id(&[b"abc", b""]));
        assert_ne!(id(&[]), id(&[b""]));
        assert_eq!(id(&[b"a", b"bc"]), id(&[b"a", b"bc"]));
    }

    #[test]
    fn wall_clock_times_keep_the_distance_between_instants() {
        let t = Instant::now();
        let later = t + Duration::from_millis(1_234);
        let (at, at_later) = (wall_ms(t), wall_ms(later));
        assert_eq!(at_later - at, 1_234);
        assert!(at.abs_diff(system_ms() as u64) < 1_000);
        assert_eq!(instant_at(t, at, at_later), later);
        assert_eq!(instant_at(later, at_later, at), t);
        assert_eq!(duration_ms(Duration::MAX), u64::MAX);
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
