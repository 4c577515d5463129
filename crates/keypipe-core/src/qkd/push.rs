//! ETSI GS QKD 004 push mode, the scheduler (sans-IO): after GET_KEY each
//! stream's chunks are taken from the engine in index order and handed to
//! the caller to POST to its KMS; the KMS's answers come back here.
//!
//! Rules:
//! - A chunk is taken from the engine (which wipes its copy) and handed to
//!   the caller, who keeps its request until the KMS answered 201; any
//!   other answer, a broken connection or a silent KMS resends it, same
//!   index, same bytes: never skipped, never re-drawn. A 201 confirms the
//!   index to the engine (its ledger records it delivered).
//! - Per KMS at most `queue_chunks` chunks are taken ahead of their 201s;
//!   the rest of the key waits in the engine (within TTL).
//! - A stream's `max_bps` paces its pushes (token bucket, 100 ms burst).
//! - GET_KEY with `index` restarts taking at that index; an index already
//!   acknowledged is refused, as its key no longer exists.
//! - A chunk not acknowledged within the stream's TTL is dropped (zeroized).
//! - CLOSE stops taking at once; chunks taken but not yet sent are dropped
//!   (zeroized, counted) by the caller, and the close is answered once the
//!   chunks already sent are answered: no push of the stream follows it.
//! - Only streams that can make progress are visited: a stream waiting for
//!   key or pacing sleeps on a timer (1 ms while it took key within the
//!   last 200 ms, then doubling to 50 ms), a stream at its queue bound
//!   sleeps until a quarter of the queue is acknowledged, and a new GET_KEY
//!   wakes it.
//!
//! This file is long because the scheduler is one state machine: its
//! timers, queue bounds, pacing, TTL and close all act on the same
//! per-stream state.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;
use zeroize::Zeroizing;

use super::{GetKeyError, GetKeyReply, Status};

/// What a pushed request is: stream number and wire index (typed, never
/// packed into tag bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PushId {
    /// The stream's number in this pusher.
    pub stream: u32,
    /// The chunk's wire index.
    pub index: u32,
}

/// Where key comes from: the engine (a trait so the scheduler is tested on
/// its own).
pub trait KeySource {
    /// GET_KEY that never waits (see `Engine::try_get_key`).
    fn try_get_key(
        &self,
        ksid: &Uuid,
        index: u32,
        out: &mut [u8],
    ) -> Result<GetKeyReply, GetKeyError>;
    /// The consumer acknowledged these indexes.
    fn confirm(&self, ksid: &Uuid, indexes: &[u32]);
    /// Whether the stream is pushed (recorded for restarts).
    fn set_pushing(&self, ksid: &Uuid, pushing: bool);
}

/// Why GET_KEY could not start pushing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The stream was not opened here (or is closed).
    #[error("no key stream with this key_stream_id is open on this node")]
    UnknownStream,
    /// The index was already delivered to the KMS and acknowledged.
    #[error("index {0} was already delivered to the KMS and acknowledged; its key is erased")]
    Delivered(u32),
}

/// Push counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Chunks taken from the engine into a push.
    pub taken: AtomicU64,
    /// Chunks the KMS acknowledged (201).
    pub acked: AtomicU64,
    /// Answers other than 201 (each causes a resend).
    pub refused: AtomicU64,
    /// Chunks dropped because their key expired (TTL) or was lost.
    pub expired: AtomicU64,
    /// Chunks taken but not yet sent when their stream closed (zeroized).
    pub discarded: AtomicU64,
    /// Chunks the KMS refused for good (409: it holds other key for the
    /// index); dropped, never resent, so they block no other push.
    pub rejected: AtomicU64,
}

/// How one stream is pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushParams {
    /// Bytes per chunk (`key_chunk_size`).
    pub chunk: usize,
    /// Pace, bit/s (0: unpaced).
    pub max_bps: u32,
    /// How long a chunk may wait for its 201.
    pub ttl: Duration,
}

/// Backoff of a stream waiting for key or pacing.
const FIRST_NAP: Duration = Duration::from_millis(1);
const MAX_NAP: Duration = Duration::from_millis(50);
/// A stream that took key within this long naps only [`FIRST_NAP`].
const BUSY_WINDOW: Duration = Duration::from_millis(200);

struct Stream<T> {
    id: u32,
    ksid: Uuid,
    target: T,
    chunk: usize,
    max_bps: u32,
    ttl: Duration,
    /// GET_KEY was called and close was not.
    active: bool,
    /// CLOSE was called: nothing more is taken.
    closing: bool,
    /// The caller dropped this stream's unsent chunks after the close.
    purged: bool,
    /// The close gave up waiting: drop what is in flight too.
    abandoned: bool,
    /// Next index to take.
    next: u32,
    /// Take instants of chunks awaiting their 201, oldest first (and their
    /// indexes).
    unacked: VecDeque<(Instant, u32)>,
    tokens: f64,
    refilled: Instant,
    nap: Duration,
    /// The earliest time this stream is due (its entry in `timers`).
    due: Option<Instant>,
    /// The last visit stopped at a full queue.
    queue_full: bool,
    /// When a chunk was last taken.
    progressed: Instant,
}

/// Makes stream `s` due at `at` (at most one live timer per stream: a
/// later time than the one it has changes nothing).
fn schedule<T>(timers: &mut BTreeSet<(Instant, u32)>, s: &mut Stream<T>, at: Instant) {
    if s.due.is_some_and(|d| d <= at) {
        return;
    }
    if let Some(old) = s.due.take() {
        timers.remove(&(old, s.id));
    }
    s.due = Some(at);
    timers.insert((at, s.id));
}

/// What the caller must do besides sending: drop requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discard<T> {
    /// Drop (zeroize) the `count` oldest requests of `stream` queued for
    /// `target`: their TTL ended.
    Expired {
        /// The KMS.
        target: T,
        /// The stream.
        stream: u32,
        /// How many.
        count: usize,
    },
    /// Drop every request of `stream` queued for `target` and not yet sent
    /// (all of them when `all`): the stream closed. Report the count with
    /// [`Pusher::purged`].
    Closed {
        /// The KMS.
        target: T,
        /// The stream.
        stream: u32,
        /// Drop those in flight too (the close gave up waiting).
        all: bool,
    },
}

/// The streams this node pushes.
pub struct Pusher<T> {
    streams: HashMap<Uuid, Stream<T>>,
    by_id: HashMap<u32, Uuid>,
    next_id: u32,
    /// Streams to visit, by the time they are due.
    timers: BTreeSet<(Instant, u32)>,
    /// Acknowledged indexes not yet told to the engine.
    confirmations: HashMap<Uuid, Vec<u32>>,
    queue_chunks: usize,
    stopping: bool,
    /// Push counters.
    pub stats: PushStats,
}

impl<T> std::fmt::Debug for Pusher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

/// Pre-rendered pieces of one push.
pub struct Take<'a, T> {
    /// The KMS.
    pub target: &'a T,
    /// The request's id.
    pub id: PushId,
    /// The stream.
    pub ksid: Uuid,
    /// The chunk (wiped when the buffer is reused or dropped).
    pub key: &'a [u8],
}

impl<T: Clone + Eq + std::hash::Hash> Pusher<T> {
    /// A pusher allowing `queue_chunks` unacknowledged chunks per KMS.
    pub fn new(queue_chunks: usize) -> Self {
        Self {
            streams: HashMap::new(),
            by_id: HashMap::new(),
            next_id: 0,
            timers: BTreeSet::new(),
            confirmations: HashMap::new(),
            queue_chunks: queue_chunks.max(1),
            stopping: false,
            stats: PushStats::default(),
        }
    }

    /// OPEN_CONNECT succeeded: `ksid` will push to `target` as `params`
    /// say, from index `next`.
    pub fn register(&mut self, ksid: Uuid, target: T, params: PushParams, next: u32, now: Instant) {
        let PushParams {
            chunk,
            max_bps,
            ttl,
        } = params;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.by_id.insert(id, ksid);
        self.streams.insert(
            ksid,
            Stream {
                id,
                ksid,
                target,
                chunk: chunk.max(1),
                max_bps,
                ttl,
                active: false,
                closing: false,
                purged: false,
                abandoned: false,
                next,
                unacked: VecDeque::new(),
                tokens: 0.0,
                refilled: now,
                nap: FIRST_NAP,
                due: None,
                queue_full: false,
                progressed: now,
            },
        );
    }

    /// True when `ksid` is registered (and not closing).
    pub fn knows(&self, ksid: &Uuid) -> bool {
        self.streams.get(ksid).is_some_and(|s| !s.closing)
    }

    /// GET_KEY: start (or resume) pushing `ksid`, at `index` if given.
    pub fn start(
        &mut self,
        source: &dyn KeySource,
        ksid: &Uuid,
        index: Option<u32>,
        now: Instant,
    ) -> Result<(), PushError> {
        let s = self
            .streams
            .get_mut(ksid)
            .filter(|s| !s.closing)
            .ok_or(PushError::UnknownStream)?;
        if let Some(i) = index {
            // How far behind the next untaken index `i` is.
            let behind = s.next.wrapping_sub(i);
            let in_flight = s.unacked.len() as u32;
            if behind == 0 || behind > u32::MAX / 2 {
                s.next = i; // at or ahead: take from there
            } else if behind > in_flight {
                return Err(PushError::Delivered(i));
            } // else: still queued, it is being resent
        }
        if !s.active {
            source.set_pushing(ksid, true);
        }
        s.active = true;
        s.nap = FIRST_NAP;
        schedule(&mut self.timers, s, now);
        Ok(())
    }

    /// CLOSE: take no more key for `ksid`. The caller drops its unsent
    /// chunks (see [`Discard::Closed`]); [`Pusher::close_done`] tells when
    /// the rest is answered.
    pub fn close(&mut self, source: &dyn KeySource, ksid: &Uuid, now: Instant) -> bool {
        let Some(s) = self.streams.get_mut(ksid) else {
            return false;
        };
        if !s.closing {
            s.active = false;
            s.closing = true;
            source.set_pushing(ksid, false);
            if s.unacked.is_empty() {
                // Nothing taken is on the way: done at once.
                let ksid = s.ksid;
                self.forget(&ksid);
            } else {
                schedule(&mut self.timers, s, now);
            }
        }
        true
    }

    /// True once a closing stream has nothing left on the way (or is gone).
    pub fn close_done(&self, ksid: &Uuid) -> bool {
        self.streams
            .get(ksid)
            .is_none_or(|s| s.purged && s.unacked.is_empty())
    }

    /// The close gave up waiting: drop the stream's requests in flight too.
    pub fn abandon(&mut self, ksid: &Uuid, now: Instant) {
        if let Some(s) = self.streams.get_mut(ksid) {
            s.purged = false;
            s.closing = true;
            s.active = false;
            s.abandoned = true;
            s.unacked.clear();
            schedule(&mut self.timers, s, now);
        }
    }

    /// The caller dropped `count` unsent requests of stream `stream` after
    /// its close.
    pub fn purged(&mut self, stream: u32, count: usize) {
        let Some(s) = self
            .by_id
            .get(&stream)
            .and_then(|k| self.streams.get_mut(k))
        else {
            return;
        };
        for _ in 0..count.min(s.unacked.len()) {
            s.unacked.pop_back();
        }
        self.stats
            .discarded
            .fetch_add(count as u64, Ordering::Relaxed);
        s.purged = true;
        if s.unacked.is_empty() {
            let ksid = s.ksid;
            self.forget(&ksid);
        }
    }

    fn forget(&mut self, ksid: &Uuid) {
        if let Some(s) = self.streams.remove(ksid) {
            self.by_id.remove(&s.id);
        }
    }

    /// Shutdown: take no more key anywhere.
    pub fn stop_all(&mut self) {
        self.stopping = true;
    }

    /// Takes key from `source` for every stream that is due, as far as the
    /// per-KMS queues (`queued(target)` requests waiting) and pacing
    /// allow; hands each chunk to `emit` and returns the requests to drop.
    /// Also tells `source` the indexes acknowledged since the last call.
    pub fn poll(
        &mut self,
        source: &dyn KeySource,
        now: Instant,
        queued: &mut dyn FnMut(&T) -> usize,
        emit: &mut dyn FnMut(Take<'_, T>),
    ) -> Vec<Discard<T>> {
        for (ksid, indexes) in self.confirmations.drain() {
            source.confirm(&ksid, &indexes);
        }
        let mut drops = Vec::new();
        let mut key = Zeroizing::new(Vec::new());
        while let Some(&(due, id)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            let Some(ksid) = self.by_id.get(&id).copied() else {
                continue;
            };
            let Some(s) = self.streams.get_mut(&ksid) else {
                continue;
            };
            s.due = None;
            let stale = s
                .unacked
                .iter()
                .take_while(|(t, _)| now.duration_since(*t) > s.ttl)
                .count();
            if stale > 0 {
                s.unacked.drain(..stale);
                self.stats
                    .expired
                    .fetch_add(stale as u64, Ordering::Relaxed);
                tracing::warn!(ksid = %s.ksid, chunks = stale, "TTL ended before the KMS acknowledged; key zeroized");
                drops.push(Discard::Expired {
                    target: s.target.clone(),
                    stream: s.id,
                    count: stale,
                });
            }
            if s.closing {
                if !s.purged {
                    drops.push(Discard::Closed {
                        target: s.target.clone(),
                        stream: s.id,
                        all: s.abandoned,
                    });
                }
                continue;
            }
            if !s.active || self.stopping {
                continue;
            }
            if let Some(first) = s.unacked.front() {
                // Come back when the oldest chunk's TTL ends.
                let at = first.0 + s.ttl + Duration::from_millis(1);
                schedule(&mut self.timers, s, at);
            }
            if s.max_bps > 0 {
                let rate = f64::from(s.max_bps) / 8.0;
                let burst = (rate / 10.0).max(s.chunk as f64);
                let dt = now.duration_since(s.refilled).as_secs_f64();
                s.tokens = (s.tokens + dt * rate).min(burst);
                s.refilled = now;
            }
            key.resize(s.chunk, 0);
            let mut waiting = false;
            loop {
                if queued(&s.target) >= self.queue_chunks {
                    // 201s wake the stream once a quarter of the queue is
                    // free: refills go in batches, the thread sleeps between.
                    s.queue_full = true;
                    if s.unacked.len() <= self.queue_chunks * 3 / 4 {
                        // Other streams fill this KMS's queue: their 201s
                        // do not wake this one, a timer does.
                        schedule(&mut self.timers, s, now + FIRST_NAP);
                    }
                    break;
                }
                if s.max_bps > 0 && s.tokens < s.chunk as f64 {
                    waiting = true;
                    break;
                }
                match source.try_get_key(&s.ksid, s.next, &mut key) {
                    Ok(GetKeyReply::Key { index, .. }) => {
                        emit(Take {
                            target: &s.target,
                            id: PushId {
                                stream: s.id,
                                index,
                            },
                            ksid: s.ksid,
                            key: &key[..s.chunk],
                        });
                        s.unacked.push_back((now, index));
                        s.next = index.wrapping_add(1);
                        s.tokens -= s.chunk as f64;
                        s.nap = FIRST_NAP;
                        s.progressed = now;
                        self.stats.taken.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(GetKeyReply::Status(
                        Status::InsufficientKey
                        | Status::PeerNotConnectedGetKey
                        | Status::NoQkdConnection,
                    )) => {
                        waiting = true;
                        break;
                    }
                    Ok(other) => {
                        tracing::warn!(ksid = %s.ksid, status = ?other.status(), "unexpected GET_KEY answer; pushing paused");
                        waiting = true;
                        break;
                    }
                    Err(GetKeyError::Consumed) => {
                        // Expired, or lost in a restart of either node:
                        // never pushed; the KMS sees the index skipped.
                        tracing::debug!(ksid = %s.ksid, index = s.next, "key of this index is gone; skipped");
                        self.stats.expired.fetch_add(1, Ordering::Relaxed);
                        s.next = s.next.wrapping_add(1);
                    }
                    Err(e) => {
                        tracing::warn!(ksid = %s.ksid, "stopped pushing: {e}");
                        s.active = false;
                        break;
                    }
                }
            }
            if waiting && s.active {
                schedule(&mut self.timers, s, now + s.nap);
                // A stream that moved recently keeps looking every
                // millisecond (its key is about to arrive); one that waits
                // long backs off.
                if now.duration_since(s.progressed) > BUSY_WINDOW {
                    s.nap = (s.nap * 2).min(MAX_NAP);
                }
            }
        }
        drops
    }

    /// The KMS answered push `id` with `status`: `Some(latency since it
    /// was taken)` when it is accepted (201), `None` when it must be resent.
    ///
    /// 201 acknowledges the chunk. 409 (the KMS holds other key for this
    /// index: an injection, or a bug) refuses it for good: the chunk is
    /// dropped and counted, so one poisoned index never blocks the
    /// pushes behind it. Any other answer is transient: `None`, resend.
    pub fn answer(&mut self, id: PushId, status: u16, now: Instant) -> Option<Duration> {
        match status {
            201 => {
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
            }
            409 => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    index = id.index,
                    "KMS holds other key for this index (409): chunk dropped, not resent"
                );
            }
            _ => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(status, "KMS refused a key push; it will be resent");
                return None;
            }
        }
        let Some(ksid) = self.by_id.get(&id.stream).copied() else {
            return Some(Duration::ZERO);
        };
        let Some(s) = self.streams.get_mut(&ksid) else {
            return Some(Duration::ZERO);
        };
        let taken = s.unacked.pop_front();
        self.confirmations.entry(ksid).or_default().push(id.index);
        let latency = taken.map_or(Duration::ZERO, |(t, _)| now.saturating_duration_since(t));
        if s.closing && s.purged && s.unacked.is_empty() {
            self.forget(&ksid);
        } else if s.active && (!s.queue_full || s.unacked.len() <= self.queue_chunks * 3 / 4) {
            s.queue_full = false;
            schedule(&mut self.timers, s, now);
        }
        Some(latency)
    }

    /// Chunks taken and not yet acknowledged, over all streams.
    pub fn unacked(&self) -> usize {
        self.streams.values().map(|s| s.unacked.len()).sum()
    }

    /// The earliest time a stream is due (for the caller's poll timeout).
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::qkd::GetKeyReply;

    /// A key source handing out index `i` as `chunk` bytes of `i`, up to a
    /// limit; records confirmations.
    struct Source {
        limit: u32,
        taken: RefCell<Vec<u32>>,
        confirmed: RefCell<Vec<u32>>,
        pushing: RefCell<Vec<bool>>,
    }

    impl KeySource for Source {
        fn try_get_key(
            &self,
            _: &Uuid,
            index: u32,
            out: &mut [u8],
        ) -> Result<GetKeyReply, GetKeyError> {
            if self.taken.borrow().contains(&index) {
                return Err(GetKeyError::Consumed);
            }
            if index >= self.limit {
                return Ok(GetKeyReply::Status(Status::InsufficientKey));
            }
            out.fill(index as u8);
            self.taken.borrow_mut().push(index);
            Ok(GetKeyReply::Key {
                index,
                metadata: None,
            })
        }
        fn confirm(&self, _: &Uuid, indexes: &[u32]) {
            self.confirmed.borrow_mut().extend_from_slice(indexes);
        }
        fn set_pushing(&self, _: &Uuid, pushing: bool) {
            self.pushing.borrow_mut().push(pushing);
        }
    }

    fn source(limit: u32) -> Source {
        Source {
            limit,
            taken: RefCell::default(),
            confirmed: RefCell::default(),
            pushing: RefCell::default(),
        }
    }

    #[test]
    fn resume_index_rules() {
        let src = source(100);
        let mut p: Pusher<u8> = Pusher::new(8);
        let k = Uuid::new_v4();
        let now = Instant::now();
        p.register(
            k,
            1,
            PushParams {
                chunk: 32,
                max_bps: 0,
                ttl: Duration::from_secs(60),
            },
            0,
            now,
        );
        assert_eq!(
            p.start(&src, &Uuid::new_v4(), None, now),
            Err(PushError::UnknownStream)
        );
        p.start(&src, &k, Some(10), now).unwrap();
        let sent = RefCell::new(Vec::new());
        p.poll(&src, now, &mut |_| sent.borrow().len(), &mut |t| {
            sent.borrow_mut().push(t.id.index)
        });
        assert_eq!(
            *sent.borrow(),
            (10..18).collect::<Vec<_>>(),
            "8 ahead at most"
        );
        // Acknowledge 10, leave 11..18 unacknowledged.
        assert!(
            p.answer(
                PushId {
                    stream: 0,
                    index: 10
                },
                201,
                now
            )
            .is_some()
        );
        let next = p.streams[&k].next;
        let in_flight = p.streams[&k].unacked.len() as u32;
        assert_eq!(
            p.start(&src, &k, Some(next - in_flight - 1), now),
            Err(PushError::Delivered(next - in_flight - 1))
        );
        p.start(&src, &k, Some(next - 1), now).unwrap();
        assert_eq!(p.streams[&k].next, next, "a queued index is being resent");
        p.start(&src, &k, Some(next + 20), now).unwrap();
        assert_eq!(p.streams[&k].next, next + 20);
        // The 201 reached the engine as a confirmation.
        p.poll(&src, now, &mut |_| 100, &mut |_| {});
        assert_eq!(*src.confirmed.borrow(), vec![10]);
        assert_eq!(*src.pushing.borrow(), vec![true]);
    }

    #[test]
    fn close_takes_nothing_more_and_waits_for_what_was_sent() {
        let src = source(1000);
        let mut p: Pusher<u8> = Pusher::new(4);
        let k = Uuid::new_v4();
        let now = Instant::now();
        p.register(
            k,
            1,
            PushParams {
                chunk: 16,
                max_bps: 0,
                ttl: Duration::from_secs(60),
            },
            0,
            now,
        );
        p.start(&src, &k, None, now).unwrap();
        let taken = RefCell::new(Vec::new());
        p.poll(&src, now, &mut |_| taken.borrow().len(), &mut |t| {
            taken.borrow_mut().push(t.id)
        });
        let sent = taken.into_inner();
        assert_eq!(sent.len(), 4, "the queue bound");
        assert!(p.close(&src, &k, now));
        assert!(!p.close_done(&k));
        let drops = p.poll(&src, now, &mut |_| 0, &mut |_| {
            panic!("nothing taken after close")
        });
        assert_eq!(
            drops,
            vec![Discard::Closed {
                target: 1,
                stream: 0,
                all: false
            }]
        );
        // Two of the four were not sent yet: dropped by the caller.
        p.purged(0, 2);
        assert!(!p.close_done(&k), "two are on the wire");
        p.answer(sent[0], 201, now);
        assert!(!p.close_done(&k));
        p.answer(sent[1], 201, now);
        assert!(p.close_done(&k));
        assert_eq!(p.stats.discarded.load(Ordering::Relaxed), 2);
        assert_eq!(*src.pushing.borrow(), vec![true, false]);
    }

    #[test]
    fn a_stream_behind_a_queue_other_streams_fill_is_not_forgotten() {
        let src = source(u32::MAX);
        let mut p: Pusher<u8> = Pusher::new(4);
        let params = PushParams {
            chunk: 16,
            max_bps: 0,
            ttl: Duration::from_secs(60),
        };
        let (busy, quiet) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let now = Instant::now();
        p.register(busy, 1, params, 0, now);
        p.register(quiet, 1, params, 0, now);
        p.start(&src, &busy, None, now).unwrap();
        let taken = RefCell::new(Vec::new());
        p.poll(&src, now, &mut |_| taken.borrow().len(), &mut |t| {
            taken.borrow_mut().push(t.ksid)
        });
        assert_eq!(taken.borrow().len(), 4, "busy filled the KMS's queue");
        p.start(&src, &quiet, None, now).unwrap();
        p.poll(&src, now, &mut |_| 4, &mut |_| panic!("the queue is full"));
        // Nothing of `quiet` is on the way, so no 201 of its own wakes it:
        // a timer does, and it gets its turn once there is room.
        let due = p.next_due().expect("quiet stays scheduled");
        // Room for two more requests.
        p.poll(&src, due, &mut |_| taken.borrow().len() - 2, &mut |t| {
            taken.borrow_mut().push(t.ksid)
        });
        assert!(taken.borrow().contains(&quiet));
    }

    #[test]
    fn a_stream_without_key_sleeps_and_wakes_on_a_timer() {
        let src = source(0);
        let mut p: Pusher<u8> = Pusher::new(4);
        let k = Uuid::new_v4();
        let now = Instant::now();
        p.register(
            k,
            1,
            PushParams {
                chunk: 16,
                max_bps: 0,
                ttl: Duration::from_secs(60),
            },
            0,
            now,
        );
        p.start(&src, &k, None, now).unwrap();
        p.poll(&src, now, &mut |_| 0, &mut |_| {});
        let due = p.next_due().unwrap();
        assert!(due > now, "parked");
        p.poll(&src, now, &mut |_| 0, &mut |_| {
            panic!("not visited before it is due")
        });
        // Long without key: it backs off.
        let late = now + Duration::from_millis(300);
        p.poll(&src, late, &mut |_| 0, &mut |_| {});
        let next = p.next_due().unwrap();
        p.poll(&src, next, &mut |_| 0, &mut |_| {});
        assert!(
            p.next_due().unwrap() - next >= Duration::from_millis(2),
            "backs off"
        );
    }
}
