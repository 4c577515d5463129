//! Each signed NCP request is accepted once (security review F10): the
//! signature does not cover the body, so a captured request replayed with
//! another body would be a decryption oracle for its key.
//!
//! A request's signature is a function of (method, target, timestamp,
//! access key) only, so two requests to the same path with the same
//! timestamp carry the same signature: a client sends at most one request
//! per millisecond per path and access key, or gives each its own
//! timestamp (any value within the 5-minute window is valid).
//!
//! The cache holds a 64-bit fingerprint (a keyed hash, so nobody can aim
//! at one) of every signature seen in the window, with its access key,
//! about 30 bytes each, and forgets an entry once its timestamp is out of
//! the window (plus a window of margin): by then the gateway refuses the
//! request as stale anyway.
//! It is bounded: when full of entries still in the window, new requests
//! are refused (503) rather than let through unchecked. So the capacity
//! bounds the sustained rate of signed requests: `capacity` per 5
//! minutes (the default 4 million: about 13 000 requests/s sustained,
//! and any burst up to 4 million; about 120 MB when full). Two different
//! requests share a fingerprint with odds of one in 2^64 per stored
//! entry; the loser gets one 401 and retries with another timestamp.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use crate::gateway::MAX_SKEW_MS;

/// Why a request is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The same signed request was seen within the window.
    #[error("request replayed: this signature was already used")]
    Replayed,
    /// The cache is full of requests still in the window.
    #[error("too many signed requests in the last 5 minutes; retry later")]
    Full,
}

#[derive(Default)]
struct Inner {
    seen: HashSet<u64>,
    /// (timestamp, fingerprint) in arrival order, to forget by age: the
    /// front goes once its timestamp left the window (an entry behind it
    /// may stay a little longer than needed, never shorter).
    by_arrival: VecDeque<(u64, u64)>,
}

/// The replay cache of one process.
pub struct ReplayCache {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Keys the fingerprints (random per process).
    hasher: RandomState,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The default capacity: 4 million signed requests per 5 minutes.
pub const DEFAULT_CAPACITY: usize = 4_000_000;

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::new(DEFAULT_CAPACITY)
    }
}

impl ReplayCache {
    /// A cache of at most `capacity` signatures.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::default(),
            capacity: capacity.max(1),
            hasher: RandomState::new(),
        }
    }

    /// Admits the request signed `signature` by `access_key` at
    /// `timestamp_ms` (already verified), once.
    pub fn admit(
        &self,
        access_key: &str,
        timestamp_ms: u64,
        signature: &str,
        now_ms: u64,
    ) -> Result<(), ReplayError> {
        let id = self.hasher.hash_one((access_key, signature));
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Entries whose timestamp left the window can no longer be replayed
        // (with a second window of margin: a thread that checked the
        // signature a little earlier, or a clock stepped back, still finds
        // them).
        let horizon = now_ms.saturating_sub(2 * MAX_SKEW_MS);
        while let Some(&(ts, old)) = inner.by_arrival.front() {
            if ts >= horizon {
                break;
            }
            inner.by_arrival.pop_front();
            inner.seen.remove(&old);
        }
        if inner.seen.contains(&id) {
            return Err(ReplayError::Replayed);
        }
        if inner.seen.len() >= self.capacity {
            return Err(ReplayError::Full);
        }
        inner.seen.insert(id);
        inner.by_arrival.push_back((timestamp_ms, id));
        Ok(())
    }

    /// Signatures held.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_signature_forgotten_after_the_window_bounded() {
        let cache = ReplayCache::new(2);
        let now = 10 * MAX_SKEW_MS;
        assert_eq!(cache.admit("AK", now, "sig-1", now), Ok(()));
        assert_eq!(
            cache.admit("AK", now, "sig-1", now),
            Err(ReplayError::Replayed)
        );
        assert_eq!(
            cache.admit("AK2", now, "sig-1", now),
            Ok(()),
            "per access key"
        );
        assert_eq!(cache.admit("AK", now, "sig-2", now), Err(ReplayError::Full));
        // Two windows on, the old entries go; their requests are stale by
        // then (the gateway refuses them before the cache).
        let later = now + 2 * MAX_SKEW_MS + 1;
        assert_eq!(cache.admit("AK", later, "sig-2", later), Ok(()));
        assert_eq!(cache.len(), 1);
    }
}
