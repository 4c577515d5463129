//! Client references: the keys an agreement left for one later login,
//! single use, expiring.
//!
//! A reference is a UUIDv4. Taking it hands out `k_enc` once and leaves a
//! tombstone, so a second use is told apart from a reference never issued
//! (`Used` vs `Unknown`); entries (tombstones too) are forgotten one TTL
//! after they expired. The table is bounded: every reference lives the
//! same TTL, so entries are kept in a queue in expiry order; forgotten
//! ones leave from its front, and when the table is full the oldest entry
//! leaves to make room (its login then gets `Unknown`): a flood of
//! agreements can shorten how long a reference waits, never refuse new
//! agreements.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;
use zeroize::Zeroizing;

use super::Scheme;

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

/// Why a reference could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
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
}

struct Entry {
    expires: Instant,
    key: Option<SessionKey>,
}

/// The table of references.
pub struct References {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    map: HashMap<Uuid, Entry>,
    /// Every id in `map`, oldest (soonest to expire) first.
    order: VecDeque<Uuid>,
}

impl Table {
    fn pop_oldest(&mut self) {
        if let Some(id) = self.order.pop_front() {
            self.map.remove(&id);
        }
    }
}

impl std::fmt::Debug for References {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("References")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl References {
    /// A table of at most `capacity` entries living `ttl`.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        References {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers `key` under a fresh random reference.
    pub fn insert(&self, key: SessionKey, now: Instant) -> Uuid {
        let mut table = self.lock();
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

    /// Takes the key of `id` (once), with the id in the form it was issued.
    pub fn take(&self, id: &str, now: Instant) -> Result<(Uuid, SessionKey), ReferenceError> {
        let id = Uuid::parse_str(id).map_err(|_| ReferenceError::Unknown)?;
        let mut table = self.lock();
        let entry = table.map.get_mut(&id).ok_or(ReferenceError::Unknown)?;
        if entry.expires + self.ttl <= now {
            // Left to be forgotten from the queue's front.
            return Err(ReferenceError::Unknown);
        }
        let key = entry.key.take().ok_or(ReferenceError::Used)?;
        if entry.expires <= now {
            return Err(ReferenceError::Expired);
        }
        Ok((id, key))
    }

    /// Entries held (live, used or expired), for metrics and tests.
    pub fn len(&self) -> usize {
        self.lock().map.len()
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
        let a = refs.insert(key(), t0).to_string();
        assert_eq!(*refs.take(&a, t0).unwrap().1.k_enc, vec![7; 16]);
        assert_eq!(refs.take(&a, t0).unwrap_err(), ReferenceError::Used);
        let b = refs.insert(key(), t0).to_string();
        // Full: the oldest entry (a's tombstone) leaves for c.
        let c = refs.insert(key(), t0).to_string();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs.take(&a, t0).unwrap_err(), ReferenceError::Unknown);
        // Full again: b, the oldest live one, leaves for d.
        let d = refs.insert(key(), t0).to_string();
        assert_eq!(refs.take(&b, t0).unwrap_err(), ReferenceError::Unknown);
        assert_eq!(*refs.take(&c, t0).unwrap().1.k_enc, vec![7; 16]);
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(refs.take(&d, t1).unwrap_err(), ReferenceError::Expired);
        assert_eq!(refs.take(&d, t1).unwrap_err(), ReferenceError::Used);
        // Past expiry + TTL, entries are forgotten.
        let t2 = t0 + Duration::from_secs(21);
        assert_eq!(refs.take(&d, t2).unwrap_err(), ReferenceError::Unknown);
        refs.insert(key(), t2);
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
}
