//! Client references: the keys an agreement left for one later login,
//! single use, expiring.
//!
//! A reference is a UUIDv4. Taking it hands out `k_enc` once and leaves a
//! tombstone, so a second use is told apart from a reference never issued
//! (`Used` vs `Unknown`); entries (tombstones too) are forgotten one TTL
//! after they expired. The table is bounded: when full, expired and used
//! entries are purged, and if it is still full a new agreement is refused.

use std::collections::HashMap;
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
    /// The table is full (too many agreements awaiting their login).
    #[error("too many key agreements awaiting their login; retry later")]
    Full,
}

struct Entry {
    expires: Instant,
    key: Option<SessionKey>,
}

/// The table of references.
pub struct References {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<Uuid, Entry>>,
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
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers `key` under a fresh random reference.
    pub fn insert(&self, key: SessionKey, now: Instant) -> Result<Uuid, ReferenceError> {
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            let ttl = self.ttl;
            entries.retain(|_, e| e.key.is_some() && e.expires > now || e.expires + ttl > now);
            if entries.len() >= self.capacity {
                entries.retain(|_, e| e.key.is_some() && e.expires > now);
            }
            if entries.len() >= self.capacity {
                return Err(ReferenceError::Full);
            }
        }
        loop {
            let id = Uuid::new_v4();
            if let std::collections::hash_map::Entry::Vacant(v) = entries.entry(id) {
                v.insert(Entry {
                    expires: now + self.ttl,
                    key: Some(key),
                });
                return Ok(id);
            }
        }
    }

    /// Takes the key of `id` (once).
    pub fn take(&self, id: &str, now: Instant) -> Result<SessionKey, ReferenceError> {
        let id = Uuid::parse_str(id).map_err(|_| ReferenceError::Unknown)?;
        let mut entries = self.lock();
        let entry = entries.get_mut(&id).ok_or(ReferenceError::Unknown)?;
        if entry.expires + self.ttl <= now {
            entries.remove(&id);
            return Err(ReferenceError::Unknown);
        }
        let key = entry.key.take().ok_or(ReferenceError::Used)?;
        if entry.expires <= now {
            return Err(ReferenceError::Expired);
        }
        Ok(key)
    }

    /// Entries held (live, used or expired), for metrics and tests.
    pub fn len(&self) -> usize {
        self.lock().len()
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
        assert_eq!(*refs.take(&a, t0).unwrap().k_enc, vec![7; 16]);
        assert_eq!(refs.take(&a, t0).unwrap_err(), ReferenceError::Used);
        let b = refs.insert(key(), t0).unwrap().to_string();
        // a's tombstone makes room for c; then two live entries fill it.
        let c = refs.insert(key(), t0).unwrap().to_string();
        assert_eq!(refs.insert(key(), t0).unwrap_err(), ReferenceError::Full);
        assert_eq!(refs.take(&a, t0).unwrap_err(), ReferenceError::Unknown);
        assert_eq!(*refs.take(&c, t0).unwrap().k_enc, vec![7; 16]);
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(refs.take(&b, t1).unwrap_err(), ReferenceError::Expired);
        assert_eq!(refs.take(&b, t1).unwrap_err(), ReferenceError::Used);
        // Past expiry + TTL, entries are forgotten and make room.
        let t2 = t0 + Duration::from_secs(21);
        refs.insert(key(), t2).unwrap();
        refs.insert(key(), t2).unwrap();
        assert_eq!(refs.take(&a, t2).unwrap_err(), ReferenceError::Unknown);
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
