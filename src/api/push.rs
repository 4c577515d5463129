//! ETSI GS QKD 004 push mode, the pushing half: after GET_KEY each stream's
//! chunks are POSTed, in index order, to its KMS at
//! `{uri}/api/v1/qkd/etsi004/key-material`.
//!
//! Rules:
//! - A chunk is taken from the engine (which wipes its copy) into a
//!   zeroizing request; that request is dropped (wiped) only after the KMS
//!   answered 201. Any other answer, a broken connection or a silent KMS
//!   makes the client resend it, same index, same bytes: never skipped,
//!   never re-drawn.
//! - Per KMS at most `queue_chunks` chunks are taken ahead of their 201s
//!   (bounded queue); the rest of the key waits in the engine (within TTL).
//! - A stream's `max_bps` paces its pushes (token bucket, 100 ms burst);
//!   0 means as fast as the link and the KMS go.
//! - GET_KEY with `index` restarts taking at that index (a KMS that
//!   restarted says where it stands); an index already acknowledged is
//!   refused, as its key no longer exists.
//!
//! The table is shared: HTTP handlers register, start and stop streams;
//! the node's outbound thread calls [`PushTable::fill`] and
//! [`PushTable::answer`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::metrics::Histogram;
use crate::http::{Client, Origin, OriginId, Outgoing, PushOutcome, request_bytes};
use crate::qkd::{Engine, GetKeyError, GetKeyReply, Status};

/// Path of the KMS endpoint, after the KMS base URI.
pub const KEY_MATERIAL_PATH: &str = "/api/v1/qkd/etsi004/key-material";

/// Why GET_KEY could not start pushing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The stream was not opened here (or is closed).
    #[error("no key stream with this key_stream_id is open on this node")]
    UnknownStream,
    /// The index was already acknowledged by the KMS; its key is erased.
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
    /// Chunks whose key expired (TTL) before they could be taken.
    pub expired: AtomicU64,
    /// Take-to-201 latency.
    pub latency: Histogram,
}

struct Stream {
    id: u32,
    ksid: Uuid,
    target: Origin,
    origin: Option<OriginId>,
    chunk: usize,
    max_bps: u32,
    /// GET_KEY was called and close was not.
    active: bool,
    /// CLOSE was called (or the engine dropped the stream).
    closed: bool,
    /// Next index to take from the engine.
    next: u32,
    /// Take instants of chunks awaiting their 201, oldest first.
    unacked: VecDeque<Instant>,
    /// The stream's TTL: a chunk not acknowledged this long after it was
    /// taken is dropped (zeroized), like undelivered key in the engine.
    ttl: Duration,
    tokens: f64,
    refilled: Instant,
    /// Pre-rendered `"metadata":{…}` member of every push of this stream.
    metadata: String,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<Uuid, Stream>,
    by_id: HashMap<u32, Uuid>,
    next_id: u32,
}

/// The streams this node pushes, shared by handlers and the outbound thread.
pub struct PushTable {
    inner: Mutex<Inner>,
    /// Most chunks per KMS taken ahead of their 201.
    queue_chunks: usize,
    stopping: AtomicBool,
    /// Push counters.
    pub stats: PushStats,
}

impl std::fmt::Debug for PushTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTable")
            .field("streams", &self.lock().streams.len())
            .finish_non_exhaustive()
    }
}

/// What [`PushTable::fill`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillState {
    /// Nothing to do until a handler or an answer changes something.
    Idle,
    /// A stream waits for key or for its pacing: look again soon.
    Waiting,
}

impl PushTable {
    /// A table allowing `queue_chunks` unacknowledged chunks per KMS.
    pub fn new(queue_chunks: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            queue_chunks: queue_chunks.max(1),
            stopping: AtomicBool::new(false),
            stats: PushStats::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// OPEN_CONNECT succeeded: `ksid` will push to `target` (`source` on
    /// the node that created the KSID, `destination` on the other).
    pub fn register(&self, ksid: Uuid, target: Origin, chunk: usize, max_bps: u32, ttl: Duration) {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1) & 0x7fff_ffff;
        inner.by_id.insert(id, ksid);
        let buffer = format!("{{\"key_stream_id\":\"{ksid}\"}}");
        let metadata = format!(
            "\"metadata\":{{\"size\":{},\"buffer\":{buffer}}}",
            buffer.len()
        );
        inner.streams.insert(
            ksid,
            Stream {
                id,
                ksid,
                target,
                origin: None,
                chunk,
                max_bps,
                active: false,
                closed: false,
                next: 0,
                unacked: VecDeque::new(),
                ttl,
                tokens: 0.0,
                refilled: Instant::now(),
                metadata,
            },
        );
    }

    /// GET_KEY: start (or resume) pushing `ksid`, at `index` if given.
    pub fn start(&self, ksid: &Uuid, index: Option<u32>) -> Result<(), PushError> {
        let mut inner = self.lock();
        let s = inner
            .streams
            .get_mut(ksid)
            .filter(|s| !s.closed)
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
        s.active = true;
        Ok(())
    }

    /// CLOSE: take no more key for `ksid`; chunks already taken are still
    /// delivered.
    pub fn stop(&self, ksid: &Uuid) {
        if let Some(s) = self.lock().streams.get_mut(ksid) {
            s.active = false;
            s.closed = true;
        }
    }

    /// Shutdown: take no more key anywhere.
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Takes key from `engine` into `client`'s queues as far as queues and
    /// pacing allow.
    pub fn fill(&self, engine: &Engine, client: &mut Client, now: Instant) -> FillState {
        let mut state = FillState::Idle;
        if self.stopping.load(Ordering::Acquire) {
            return state;
        }
        let mut inner = self.lock();
        let mut forget = Vec::new();
        for s in inner.streams.values_mut() {
            if let Some(origin) = s.origin {
                let stale = s
                    .unacked
                    .iter()
                    .take_while(|t| now.duration_since(**t) > s.ttl)
                    .count();
                if stale > 0 {
                    let id = s.id;
                    let dropped = client.drop_oldest(origin, stale, |tag| (tag >> 32) as u32 == id);
                    s.unacked.drain(..dropped);
                    self.stats
                        .expired
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                    tracing::warn!(ksid = %s.ksid, chunks = dropped, "TTL ended before the KMS acknowledged; key zeroized");
                }
            }
            if s.closed && s.unacked.is_empty() {
                forget.push(s.ksid);
            }
            if !s.active {
                continue;
            }
            let origin = *s.origin.get_or_insert_with(|| client.origin(&s.target));
            if s.max_bps > 0 {
                let rate = f64::from(s.max_bps) / 8.0;
                let burst = (rate / 10.0).max(s.chunk as f64);
                let dt = now.duration_since(s.refilled).as_secs_f64();
                s.tokens = (s.tokens + dt * rate).min(burst);
                s.refilled = now;
            }
            let mut key = Zeroizing::new(vec![0u8; s.chunk]);
            while client.queued(origin) < self.queue_chunks {
                if s.max_bps > 0 && s.tokens < s.chunk as f64 {
                    state = FillState::Waiting;
                    break;
                }
                match engine.try_get_key(&s.ksid, s.next, &mut key) {
                    Ok(GetKeyReply::Key { index, .. }) => {
                        let body = push_body(index, &key[..s.chunk], &s.metadata);
                        let bytes = request_bytes(
                            "POST",
                            client.origin_of(origin),
                            KEY_MATERIAL_PATH,
                            &[],
                            &body,
                        );
                        client.enqueue(
                            origin,
                            Outgoing {
                                bytes,
                                tag: (u64::from(s.id) << 32) | u64::from(index),
                            },
                        );
                        s.unacked.push_back(now);
                        s.next = index.wrapping_add(1);
                        s.tokens -= s.chunk as f64;
                        self.stats.taken.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(GetKeyReply::Status(Status::InsufficientKey))
                    | Ok(GetKeyReply::Status(Status::PeerNotConnectedGetKey))
                    | Ok(GetKeyReply::Status(Status::NoQkdConnection)) => {
                        state = FillState::Waiting;
                        break;
                    }
                    Ok(other) => {
                        tracing::warn!(ksid = %s.ksid, status = ?other.status(), "unexpected GET_KEY answer; pushing paused");
                        state = FillState::Waiting;
                        break;
                    }
                    Err(GetKeyError::Consumed) => {
                        // The TTL ran out before the KMS could take it.
                        tracing::warn!(ksid = %s.ksid, index = s.next, "key expired before it could be pushed");
                        self.stats.expired.fetch_add(1, Ordering::Relaxed);
                        s.next = s.next.wrapping_add(1);
                    }
                    Err(e) => {
                        tracing::debug!(ksid = %s.ksid, "stopped pushing: {e}");
                        s.active = false;
                        s.closed = true;
                        break;
                    }
                }
            }
        }
        for ksid in forget {
            if let Some(s) = inner.streams.remove(&ksid) {
                inner.by_id.remove(&s.id);
            }
        }
        state
    }

    /// The KMS answered the push tagged `tag` with `status`.
    pub fn answer(&self, tag: u64, status: u16, now: Instant) -> PushOutcome {
        if status != 201 {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(status, "KMS refused a key push; it will be resent");
            return PushOutcome::Retry;
        }
        let mut inner = self.lock();
        let id = (tag >> 32) as u32;
        if let Some(ksid) = inner.by_id.get(&id).copied()
            && let Some(s) = inner.streams.get_mut(&ksid)
            && let Some(taken) = s.unacked.pop_front()
        {
            self.stats
                .latency
                .observe(now.saturating_duration_since(taken));
        }
        self.stats.acked.fetch_add(1, Ordering::Relaxed);
        PushOutcome::Accepted
    }

    /// Chunks taken and not yet acknowledged, over all streams.
    pub fn unacked(&self) -> usize {
        self.lock().streams.values().map(|s| s.unacked.len()).sum()
    }
}

/// `{"status":0,"index":N,"key_buffer":"…","metadata":{…}}`, zeroizing.
fn push_body(index: u32, key: &[u8], metadata: &str) -> Zeroizing<Vec<u8>> {
    let b64_len = key.len().div_ceil(3) * 4;
    let mut body = Zeroizing::new(Vec::with_capacity(64 + b64_len + metadata.len()));
    body.extend_from_slice(b"{\"status\":0,\"index\":");
    body.extend_from_slice(index.to_string().as_bytes());
    body.extend_from_slice(b",\"key_buffer\":\"");
    let start = body.len();
    body.resize(start + b64_len, 0);
    let written = BASE64
        .encode_slice(key, &mut body[start..])
        .expect("buffer sized for the encoding");
    body.truncate(start + written);
    body.extend_from_slice(b"\",");
    body.extend_from_slice(metadata.as_bytes());
    body.push(b'}');
    body
}

/// The poll timeout of the outbound loop for `state`.
pub fn wait_for(state: FillState) -> Duration {
    match state {
        FillState::Idle => Duration::from_millis(50),
        FillState::Waiting => Duration::from_millis(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_kms_yaml_shape() {
        let body = push_body(7, &[0xff; 4], "\"metadata\":{\"size\":2,\"buffer\":{}}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 0);
        assert_eq!(v["index"], 7);
        assert_eq!(v["key_buffer"], "/////w==");
        assert!(v["metadata"]["buffer"].is_object());
    }

    #[test]
    fn resume_index_rules() {
        let t = PushTable::new(8);
        let k = Uuid::new_v4();
        t.register(
            k,
            Origin::parse("http://127.0.0.1:9").unwrap(),
            32,
            0,
            Duration::from_secs(60),
        );
        assert_eq!(
            t.start(&Uuid::new_v4(), None),
            Err(PushError::UnknownStream)
        );
        t.start(&k, Some(10)).unwrap();
        {
            let mut inner = t.lock();
            let s = inner.streams.get_mut(&k).unwrap();
            s.next = 13; // 10, 11, 12 taken; 11 and 12 not yet acknowledged
            s.unacked.extend([Instant::now(); 2]);
        }
        assert_eq!(t.start(&k, Some(10)), Err(PushError::Delivered(10)));
        t.start(&k, Some(11)).unwrap();
        assert_eq!(t.lock().streams[&k].next, 13);
        t.start(&k, Some(20)).unwrap();
        assert_eq!(t.lock().streams[&k].next, 20);
    }
}
