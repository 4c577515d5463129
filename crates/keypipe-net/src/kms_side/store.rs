//! Key material pushed to this process (ETSI GS QKD 004 push mode, KMS
//! side), kept per key stream and index until a local consumer takes it.
//!
//! - Every index ever received for a KSID is remembered (a set of runs, a
//!   few words for a stream pushed in order): a push of an index already
//!   taken by a consumer is a node's retry after a lost 201, answered as
//!   received and never stored again, so no consumer gets a key twice.
//!   A KSID is remembered for 25 hours ([`FORGET_AFTER`]) after its last
//!   push, an hour longer than any stream's TTL (a node never resends
//!   past it).
//! - A repeated push of an index still held is accepted again if its bytes
//!   are the same, refused otherwise.
//! - Bounded: held key and the bookkeeping of each entry and stream count
//!   against `capacity_bytes`; beyond it a push is refused (the QKD node
//!   keeps the chunk and retries later, so nothing is lost).
//! - Key bytes are held in locked, dump-excluded memory of the store's own
//!   (a [`SecretHeap`] of `capacity_bytes`) and zeroized when taken out or
//!   dropped.
//! - Held key is in memory only, on purpose: writing QKD key to disk would
//!   put it in every backup, and a consumer takes it within milliseconds.
//!   A restart of this process loses what no consumer took yet (those
//!   indexes were acknowledged, so the node does not resend them), and
//!   forgets which indexes it received: consumers that must never see an
//!   index twice across their own restarts record what they consumed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use uuid::Uuid;
use zeroize::Zeroizing;

use keypipe_core::key::locked::{LockError, LockedBytes, SecretHeap};
use keypipe_core::qkd::MAX_TTL_S;
use keypipe_core::rangeset::RangeSet;

/// Bytes of bookkeeping counted per held chunk, beyond its key bytes.
pub const ENTRY_OVERHEAD: usize = 96;
/// Bytes counted per KSID remembered.
pub const STREAM_OVERHEAD: usize = 512;
/// A KSID with nothing held is forgotten this long after its last push.
/// Longer than the largest TTL a node accepts, so a node never resends an
/// index this side has forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(MAX_TTL_S as u64 + 3_600);
/// Most runs of received indexes kept per KSID (beyond, the smallest gaps
/// count as received: a late push there is acknowledged and dropped).
const MAX_RUNS: usize = 1024;

/// Why a push was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReceivedError {
    /// The store holds `capacity_bytes` already.
    #[error("key store full: consumers are not taking key")]
    Full,
    /// The index is held with different bytes.
    #[error("index already received with a different key")]
    Conflict,
    /// Another pusher (QKD node) sends this stream.
    #[error("this key stream is pushed by another QKD node")]
    OtherPusher,
}

/// How a push was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A new index.
    New,
    /// The same bytes again (a retry) while still held.
    Repeat,
    /// An index a consumer already took: acknowledged, not stored again.
    Consumed,
}

#[derive(Default)]
struct StreamKeys {
    held: BTreeMap<u32, LockedBytes>,
    seen: RangeSet,
    last_push: Option<Instant>,
    /// Who pushed the stream's first chunk: only it may push the rest.
    pusher: Option<String>,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<Uuid, StreamKeys>,
    /// Key bytes plus counted overhead.
    bytes: usize,
    /// Key bytes held.
    key_bytes: usize,
    received: u64,
    last_sweep: Option<Instant>,
}

/// Which chunk a consumer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// This index.
    Index(u32),
    /// The lowest index held.
    Next,
}

/// Why a consumer got no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TakeError {
    /// Not received (yet) within the wait.
    #[error("no key received for this index yet")]
    NotYet,
    /// The index was taken by a consumer already (never handed out twice).
    #[error("index already taken by a consumer")]
    Consumed,
    /// The chunk has `needed` bytes, more than the caller's buffer (the
    /// chunk stays held).
    #[error("key buffer too small: the chunk has {needed} bytes")]
    TooSmall {
        /// The chunk's length.
        needed: usize,
    },
    /// The store was closed ([`ReceivedKeys::close`]).
    #[error("the KMS side is shut down")]
    Closed,
}

/// The store. Thread-safe.
pub struct ReceivedKeys {
    inner: Mutex<Inner>,
    /// Signalled when a chunk arrives or the store closes.
    arrived: Condvar,
    closed: AtomicBool,
    capacity_bytes: usize,
    heap: SecretHeap,
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
    /// A store holding at most `capacity_bytes` of key and bookkeeping,
    /// its key in locked memory allocated now. Fails when that memory
    /// cannot be locked and locking is required.
    pub fn new(capacity_bytes: usize) -> Result<Self, LockError> {
        Ok(Self {
            inner: Mutex::new(Inner::default()),
            arrived: Condvar::new(),
            closed: AtomicBool::new(false),
            capacity_bytes,
            heap: SecretHeap::new(capacity_bytes, "KMS-side received key")?,
        })
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
        self.insert_at("", ksid, index, key, Instant::now())
    }

    /// [`ReceivedKeys::insert`] by `pusher` (who the pushing node is): a
    /// stream's chunks are taken only from the pusher of its first one.
    pub fn insert_from(
        &self,
        pusher: &str,
        ksid: Uuid,
        index: u32,
        key: Zeroizing<Vec<u8>>,
    ) -> Result<Received, ReceivedError> {
        self.insert_at(pusher, ksid, index, key, Instant::now())
    }

    fn insert_at(
        &self,
        pusher: &str,
        ksid: Uuid,
        index: u32,
        key: Zeroizing<Vec<u8>>,
        now: Instant,
    ) -> Result<Received, ReceivedError> {
        let mut inner = self.lock();
        sweep(&mut inner, now);
        if let Some(stream) = inner.streams.get_mut(&ksid) {
            if stream.pusher.as_deref().is_some_and(|p| p != pusher) {
                return Err(ReceivedError::OtherPusher);
            }
            if let Some(held) = stream.held.get(&index) {
                return if bool::from(held.ct_eq(key.as_slice())) {
                    Ok(Received::Repeat)
                } else {
                    Err(ReceivedError::Conflict)
                };
            }
            if stream.seen.contains(u64::from(index)) {
                stream.last_push = Some(now);
                return Ok(Received::Consumed);
            }
        }
        let new_stream = !inner.streams.contains_key(&ksid);
        let cost = key.len() + ENTRY_OVERHEAD + if new_stream { STREAM_OVERHEAD } else { 0 };
        if inner.bytes + cost > self.capacity_bytes {
            return Err(ReceivedError::Full);
        }
        let key = self.heap.copy_of(&key).map_err(|_| ReceivedError::Full)?;
        inner.bytes += cost;
        inner.key_bytes += key.len();
        inner.received += 1;
        let stream = inner.streams.entry(ksid).or_default();
        stream.pusher.get_or_insert_with(|| pusher.to_owned());
        stream.seen.insert(u64::from(index));
        if stream.seen.runs() > MAX_RUNS {
            stream.seen.cap_runs(MAX_RUNS);
        }
        stream.last_push = Some(now);
        stream.held.insert(index, key);
        drop(inner);
        self.arrived.notify_all();
        Ok(Received::New)
    }

    /// Takes chunk `index` of `ksid` out of the store (once: the index
    /// stays remembered as received).
    pub fn take(&self, ksid: &Uuid, index: u32) -> Option<LockedBytes> {
        let mut inner = self.lock();
        let stream = inner.streams.get_mut(ksid)?;
        let key = stream.held.remove(&index)?;
        inner.bytes -= key.len() + ENTRY_OVERHEAD;
        inner.key_bytes -= key.len();
        Some(key)
    }

    /// Takes the lowest-indexed chunk of `ksid` held.
    pub fn take_next(&self, ksid: &Uuid) -> Option<(u32, LockedBytes)> {
        let index = *self.lock().streams.get(ksid)?.held.keys().next()?;
        self.take(ksid, index).map(|k| (index, k))
    }

    /// Takes a chunk for a consumer, waiting at most `timeout` for it to
    /// arrive: `put` gets the key bytes (at most `capacity`; the store's
    /// copy is zeroized right after) and the answer is the chunk's index
    /// and length. A chunk is handed out once: asking again for a taken
    /// index is [`TakeError::Consumed`], never key. An index not pushed
    /// yet waits; a gap below later indexes waits too (its push may be in
    /// flight, or the node lost it: then the wait ends with
    /// [`TakeError::NotYet`]).
    pub fn take_into(
        &self,
        ksid: &Uuid,
        want: Want,
        capacity: usize,
        timeout: Duration,
        put: impl FnOnce(&[u8]),
    ) -> Result<(u32, usize), TakeError> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(TakeError::Closed);
            }
            let found = inner.streams.get(ksid).and_then(|s| match want {
                Want::Index(i) if s.held.contains_key(&i) => Some(Ok(i)),
                Want::Index(i) if s.seen.contains(u64::from(i)) => Some(Err(TakeError::Consumed)),
                Want::Index(_) => None,
                Want::Next => s.held.keys().next().map(|&i| Ok(i)),
            });
            match found {
                Some(Err(e)) => return Err(e),
                Some(Ok(index)) => {
                    let stream = inner.streams.get_mut(ksid).expect("found above");
                    let needed = stream.held[&index].len();
                    if needed > capacity {
                        return Err(TakeError::TooSmall { needed });
                    }
                    let key = stream.held.remove(&index).expect("found above");
                    inner.bytes -= key.len() + ENTRY_OVERHEAD;
                    inner.key_bytes -= key.len();
                    drop(inner);
                    put(&key);
                    return Ok((index, needed));
                }
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TakeError::NotYet);
            }
            inner = self
                .arrived
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Wakes every waiting consumer; later takes answer
    /// [`TakeError::Closed`]. Pushes are still stored (and acknowledged).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        drop(self.lock());
        self.arrived.notify_all();
    }

    /// Chunks held, key bytes held, chunks received since start.
    pub fn stats(&self) -> (usize, usize, u64) {
        let inner = self.lock();
        let chunks = inner.streams.values().map(|s| s.held.len()).sum();
        (chunks, inner.key_bytes, inner.received)
    }
}

/// Forgets KSIDs with nothing held whose last push is older than
/// [`FORGET_AFTER`] (at most once a minute).
fn sweep(inner: &mut Inner, now: Instant) {
    if inner
        .last_sweep
        .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
    {
        return;
    }
    inner.last_sweep = Some(now);
    let before = inner.streams.len();
    inner.streams.retain(|_, s| {
        !s.held.is_empty()
            || s.last_push
                .is_some_and(|t| now.duration_since(t) < FORGET_AFTER)
    });
    inner.bytes -= (before - inner.streams.len()) * STREAM_OVERHEAD;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(vec![b; 4])
    }

    #[test]
    fn repeat_conflict_full_take() {
        let per = 4 + ENTRY_OVERHEAD;
        let store = ReceivedKeys::new(STREAM_OVERHEAD + 2 * per).unwrap();
        let k = Uuid::new_v4();
        assert_eq!(store.insert(k, 1, key(1)), Ok(Received::New));
        assert_eq!(store.insert(k, 1, key(1)), Ok(Received::Repeat));
        assert_eq!(store.insert(k, 1, key(2)), Err(ReceivedError::Conflict));
        assert_eq!(store.insert(k, 0, key(3)), Ok(Received::New));
        assert_eq!(store.insert(k, 2, key(4)), Err(ReceivedError::Full));
        let (i, first) = store.take_next(&k).unwrap();
        assert_eq!((i, &first[..]), (0, &[3u8; 4][..]));
        assert_eq!(store.insert(k, 2, key(4)), Ok(Received::New));
        assert_eq!(store.stats(), (2, 8, 3));
        assert!(store.take(&k, 9).is_none());
    }

    #[test]
    fn a_resend_of_a_taken_index_is_never_stored_again() {
        // F18: push i, the 201 is lost, the consumer takes i, the node
        // resends i: the consumer must not get it again.
        let store = ReceivedKeys::new(1 << 20).unwrap();
        let k = Uuid::new_v4();
        assert_eq!(store.insert(k, 5, key(9)), Ok(Received::New));
        assert_eq!(&store.take(&k, 5).unwrap()[..], &[9; 4]);
        assert_eq!(store.insert(k, 5, key(9)), Ok(Received::Consumed));
        assert!(store.take(&k, 5).is_none(), "nothing to take twice");
        assert!(store.take_next(&k).is_none());
        assert_eq!(store.stats(), (0, 0, 1));
    }

    #[test]
    fn bookkeeping_counts_against_the_capacity_and_old_streams_are_forgotten() {
        // One-byte pushes to many KSIDs cannot exhaust memory: each costs
        // its bookkeeping.
        let store = ReceivedKeys::new(100 * (1 + ENTRY_OVERHEAD + STREAM_OVERHEAD)).unwrap();
        let mut stored = 0;
        for _ in 0..1000 {
            if store
                .insert(Uuid::new_v4(), 0, Zeroizing::new(vec![1]))
                .is_ok()
            {
                stored += 1;
            }
        }
        assert_eq!(stored, 100);
        let store = ReceivedKeys::new(1 << 20).unwrap();
        let k = Uuid::new_v4();
        let t0 = Instant::now();
        store.insert_at("", k, 0, key(1), t0).unwrap();
        store.take(&k, 0).unwrap();
        let later = t0 + FORGET_AFTER + Duration::from_secs(61);
        store
            .insert_at("", Uuid::new_v4(), 0, key(2), later)
            .unwrap();
        assert_eq!(store.lock().streams.len(), 1, "the idle KSID is forgotten");
        assert_eq!(store.lock().bytes, 4 + ENTRY_OVERHEAD + STREAM_OVERHEAD);
    }
}
