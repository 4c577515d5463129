//! Key material pushed to this process (ETSI GS QKD 004 push mode, KMS
//! side), kept per key stream and index until a local consumer takes it.
//!
//! Bounded: beyond `capacity_bytes` of held key a push is refused (the QKD
//! node keeps the chunk and retries later, so nothing is lost). A repeated
//! push of an index already held with the same bytes is accepted again (a
//! node retries when it missed our answer); different bytes are refused.
//! Key bytes are zeroized when taken out or dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use subtle::ConstantTimeEq;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Why a push was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReceivedError {
    /// The store holds `capacity_bytes` already.
    #[error("key store full: consumers are not taking key")]
    Full,
    /// The index is held with different bytes.
    #[error("index already received with a different key")]
    Conflict,
}

/// How a push was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A new index.
    New,
    /// The same bytes again (a retry).
    Repeat,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<Uuid, BTreeMap<u32, Zeroizing<Vec<u8>>>>,
    bytes: usize,
    received: u64,
}

/// The store. Thread-safe.
pub struct ReceivedKeys {
    inner: Mutex<Inner>,
    capacity_bytes: usize,
}

impl std::fmt::Debug for ReceivedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (chunks, bytes, _) = self.stats();
        f.debug_struct("ReceivedKeys")
            .field("chunks", &chunks)
            .field("bytes", &bytes)
            .finish()
    }
}

impl ReceivedKeys {
    /// A store holding at most `capacity_bytes` of key.
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores chunk `index` of stream `ksid`.
    pub fn insert(
        &self,
        ksid: Uuid,
        index: u32,
        key: Zeroizing<Vec<u8>>,
    ) -> Result<Received, ReceivedError> {
        let mut inner = self.lock();
        if let Some(held) = inner.streams.get(&ksid).and_then(|s| s.get(&index)) {
            return if bool::from(held.as_slice().ct_eq(key.as_slice())) {
                Ok(Received::Repeat)
            } else {
                Err(ReceivedError::Conflict)
            };
        }
        if inner.bytes + key.len() > self.capacity_bytes {
            return Err(ReceivedError::Full);
        }
        inner.bytes += key.len();
        inner.received += 1;
        inner.streams.entry(ksid).or_default().insert(index, key);
        Ok(Received::New)
    }

    /// Takes chunk `index` of `ksid` out of the store.
    pub fn take(&self, ksid: &Uuid, index: u32) -> Option<Zeroizing<Vec<u8>>> {
        let mut inner = self.lock();
        let stream = inner.streams.get_mut(ksid)?;
        let key = stream.remove(&index)?;
        if stream.is_empty() {
            inner.streams.remove(ksid);
        }
        inner.bytes -= key.len();
        Some(key)
    }

    /// Takes the lowest-indexed chunk of `ksid` held.
    pub fn take_next(&self, ksid: &Uuid) -> Option<(u32, Zeroizing<Vec<u8>>)> {
        let index = *self.lock().streams.get(ksid)?.keys().next()?;
        self.take(ksid, index).map(|k| (index, k))
    }

    /// Chunks held, bytes held, chunks received since start.
    pub fn stats(&self) -> (usize, usize, u64) {
        let inner = self.lock();
        let chunks = inner.streams.values().map(BTreeMap::len).sum();
        (chunks, inner.bytes, inner.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_conflict_full_take() {
        let store = ReceivedKeys::new(8);
        let k = Uuid::new_v4();
        let key = |b: u8| Zeroizing::new(vec![b; 4]);
        assert_eq!(store.insert(k, 1, key(1)), Ok(Received::New));
        assert_eq!(store.insert(k, 1, key(1)), Ok(Received::Repeat));
        assert_eq!(store.insert(k, 1, key(2)), Err(ReceivedError::Conflict));
        assert_eq!(store.insert(k, 0, key(3)), Ok(Received::New));
        assert_eq!(store.insert(k, 2, key(4)), Err(ReceivedError::Full));
        let (i, first) = store.take_next(&k).unwrap();
        assert_eq!((i, first.as_slice()), (0, &[3u8; 4][..]));
        assert_eq!(store.insert(k, 2, key(4)), Ok(Received::New));
        assert_eq!(store.stats(), (2, 8, 3));
        assert!(store.take(&k, 9).is_none());
    }
}
