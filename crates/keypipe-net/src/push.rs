//! ETSI GS QKD 004 push mode over HTTP: the push body, and the table the
//! HTTP handlers and the node's outbound thread share around the sans-IO
//! scheduler ([`Pusher`], rules in `qkd::push`).
//!
//! Body: `{"status":0,"index":N,"key_buffer":"<base64>","metadata":
//! {"size":S,"buffer":{"key_stream_id":"…"}}}` POSTed to
//! `{uri}/api/v1/qkd/etsi004/key-material`.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mio::Waker;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::http::{Client, Origin, OriginId, Outgoing, Verdict, request_bytes};
use crate::metrics::Histogram;
use keypipe_core::qkd::push::{Discard, KeySource, PushId, PushParams, PushStats, Pusher};
use keypipe_core::qkd::{Engine, GetKeyError, GetKeyReply, Qos};

pub use keypipe_core::qkd::push::PushError;

/// Path of the KMS endpoint, after the KMS base URI.
pub const KEY_MATERIAL_PATH: &str = "/api/v1/qkd/etsi004/key-material";

/// The engine as the scheduler's key source.
struct EngineSource<'a>(&'a Engine);

impl KeySource for EngineSource<'_> {
    fn try_get_key(
        &self,
        ksid: &Uuid,
        index: u32,
        out: &mut [u8],
    ) -> Result<GetKeyReply, GetKeyError> {
        self.0.try_get_key(ksid, index, out)
    }
    fn confirm(&self, ksid: &Uuid, indexes: &[u32]) {
        self.0.confirm(ksid, indexes);
    }
    fn set_pushing(&self, ksid: &Uuid, pushing: bool) {
        self.0.set_pushing(ksid, pushing);
    }
}

/// A KMS this node pushes to, by number (looked up once, not per push).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target(u32);

/// The KMSes pushed to: their origins, and (outbound thread) their client
/// ids once known.
#[derive(Default)]
struct Targets {
    by_origin: HashMap<Origin, Target>,
    origins: Vec<Origin>,
    /// Client id and request head of each target, once known.
    resolved: Vec<Option<(OriginId, Arc<str>)>>,
}

/// The streams this node pushes, shared by handlers and the outbound thread.
pub struct Pushes {
    pusher: Mutex<Pusher<Target>>,
    targets: Mutex<Targets>,
    progress: Condvar,
    engine: Arc<Engine>,
    waker: Arc<Waker>,
    /// `"metadata":{…}` member of each stream's pushes.
    metadata: Mutex<HashMap<Uuid, Arc<str>>>,
    /// Take-to-201 latency.
    pub latency: Histogram,
    /// Closes waiting for their pushes to be answered.
    closing: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Pushes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pushes").finish_non_exhaustive()
    }
}

impl Pushes {
    /// A table over `engine` allowing `queue_chunks` unacknowledged chunks
    /// per KMS; `waker` wakes the outbound thread.
    pub fn new(engine: Arc<Engine>, queue_chunks: usize, waker: Arc<Waker>) -> Self {
        Self {
            pusher: Mutex::new(Pusher::new(queue_chunks)),
            targets: Mutex::new(Targets::default()),
            progress: Condvar::new(),
            engine,
            waker,
            metadata: Mutex::new(HashMap::new()),
            latency: Histogram::default(),
            closing: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pusher<Target>> {
        self.pusher.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Push counters.
    pub fn with_stats<R>(&self, f: impl FnOnce(&PushStats) -> R) -> R {
        f(&self.lock().stats)
    }

    /// OPEN_CONNECT succeeded: `ksid` pushes to `target` (`source` on the
    /// node that created the KSID, `destination` on the other), from index
    /// `next`.
    pub fn register(&self, ksid: Uuid, target: Origin, qos: &Qos, next: u32) {
        let buffer = format!("{{\"key_stream_id\":\"{ksid}\"}}");
        let metadata = format!(
            "\"metadata\":{{\"size\":{},\"buffer\":{buffer}}}",
            buffer.len()
        );
        self.metadata
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ksid, metadata.into());
        let target = {
            let mut t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
            let next_id = Target(t.origins.len() as u32);
            match t.by_origin.get(&target) {
                Some(&id) => id,
                None => {
                    t.by_origin.insert(target.clone(), next_id);
                    t.origins.push(target);
                    next_id
                }
            }
        };
        let params = PushParams {
            chunk: qos.key_chunk_size as usize,
            max_bps: qos.max_bps,
            ttl: Duration::from_secs(u64::from(qos.ttl.max(1))),
        };
        self.lock()
            .register(ksid, target, params, next, Instant::now());
    }

    /// GET_KEY: start (or resume) pushing `ksid`, at `index` if given.
    pub fn start(&self, ksid: &Uuid, index: Option<u32>) -> Result<(), PushError> {
        let started = self
            .lock()
            .start(&EngineSource(&self.engine), ksid, index, Instant::now());
        let _ = self.waker.wake();
        started
    }

    /// After a restart: resumes pushing the streams that were pushed, each
    /// at its first index not acknowledged (key lost in the restart is
    /// skipped). Streams whose URI no longer parses are logged and left.
    pub fn resume(&self) -> usize {
        let mut resumed = 0;
        for (ksid, uri, qos, next) in self.engine.pushing_streams() {
            let mut target = match Origin::parse(&uri) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%ksid, "cannot resume pushing: {e}");
                    continue;
                }
            };
            if let Err(e) = target.resolve() {
                tracing::warn!(%ksid, "cannot resume pushing: {e}");
                continue;
            }
            self.register(ksid, target, &qos, next);
            if self.start(&ksid, None).is_ok() {
                resumed += 1;
            }
        }
        if resumed > 0 {
            tracing::info!(streams = resumed, "pushing resumed after the restart");
        }
        resumed
    }

    /// True when `ksid` is registered here and not closed.
    pub fn knows(&self, ksid: &Uuid) -> bool {
        self.lock().knows(ksid)
    }

    /// CLOSE, pushing side: nothing more is taken; chunks not sent yet are
    /// dropped; returns once the chunks already sent are answered (at most
    /// `wait`; then those are dropped too). After it returns, no push of
    /// the stream leaves this node. Blocks: call it off the event loop.
    pub fn close(&self, ksid: &Uuid, wait: Duration) {
        let start = Instant::now();
        let mut p = self.lock();
        if !p.close(&EngineSource(&self.engine), ksid, start) {
            return;
        }
        let _ = self.waker.wake();
        self.closing
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        while !p.close_done(ksid) {
            let left = wait.saturating_sub(start.elapsed());
            if left.is_zero() {
                tracing::warn!(%ksid, "close: pushes in flight not answered in time; dropped");
                p.abandon(ksid, Instant::now());
                let _ = self.waker.wake();
                let grace = Instant::now();
                while !p.close_done(ksid) && grace.elapsed() < Duration::from_secs(1) {
                    p = self
                        .progress
                        .wait_timeout(p, Duration::from_millis(10))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                break;
            }
            p = self
                .progress
                .wait_timeout(p, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(p);
        self.closing
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.metadata
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(ksid);
    }

    /// Wakes closes waiting on the pushes' progress (no syscall when none
    /// waits).
    fn wake_closers(&self) {
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.progress.notify_all();
        }
    }

    /// True when a close of `ksid` would not have to wait.
    pub fn close_is_quick(&self, ksid: &Uuid) -> bool {
        self.lock().close_done(ksid)
    }

    /// Shutdown: take no more key anywhere.
    pub fn stop_all(&self) {
        self.lock().stop_all();
        let _ = self.waker.wake();
    }

    /// Chunks taken and not yet acknowledged, over all streams.
    pub fn unacked(&self) -> usize {
        self.lock().unacked()
    }

    /// Outbound thread: takes key into `client`'s queues as far as queues
    /// and pacing allow, and drops what expired or was closed; returns when
    /// a stream is next due.
    pub fn fill<T: Copy>(
        &self,
        client: &mut Client<T>,
        now: Instant,
        id: impl Fn(PushId) -> T,
        is_stream: impl Fn(&T, u32) -> bool,
    ) -> Option<Instant> {
        let mut p = self.lock();
        let metadata = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let Targets {
            origins, resolved, ..
        } = &mut *targets;
        resolved.resize(origins.len(), None);
        let resolved = std::cell::RefCell::new(resolved);
        let client = std::cell::RefCell::new(client);
        let resolve = |target: &Target| {
            let mut r = resolved.borrow_mut();
            r[target.0 as usize]
                .get_or_insert_with(|| {
                    let origin = &origins[target.0 as usize];
                    (
                        client.borrow_mut().origin(origin),
                        request_head(origin).into(),
                    )
                })
                .clone()
        };
        let origin_of = |target: &Target| resolve(target).0;
        let discards = p.poll(
            &EngineSource(&self.engine),
            now,
            &mut |target| {
                let o = origin_of(target);
                client.borrow().queued(o)
            },
            &mut |take| {
                let (o, head) = resolve(take.target);
                let meta = metadata.get(&take.ksid).map_or("\"metadata\":{}", |m| m);
                let bytes = push_request(&head, take.id.index, take.key, meta);
                client.borrow_mut().enqueue(
                    o,
                    Outgoing {
                        bytes,
                        id: id(take.id),
                    },
                );
            },
        );
        let mut progressed = false;
        for d in discards {
            match d {
                Discard::Expired {
                    target,
                    stream,
                    count,
                } => {
                    let o = origin_of(&target);
                    client
                        .borrow_mut()
                        .drop_oldest(o, count, |t| is_stream(t, stream));
                }
                Discard::Closed {
                    target,
                    stream,
                    all,
                } => {
                    let o = origin_of(&target);
                    let dropped = if all {
                        client
                            .borrow_mut()
                            .drop_oldest(o, usize::MAX, |t| is_stream(t, stream))
                    } else {
                        client.borrow_mut().drop_unsent(o, |t| is_stream(t, stream))
                    };
                    p.purged(stream, dropped);
                    progressed = true;
                }
            }
        }
        let due = p.next_due();
        drop(targets);
        drop(metadata);
        drop(p);
        if progressed {
            self.wake_closers();
        }
        due
    }

    /// Outbound thread: the KMS answered push `id` with `status`.
    pub fn answer(&self, id: PushId, status: u16, now: Instant) -> Verdict {
        let latency = self.lock().answer(id, status, now);
        self.wake_closers();
        match latency {
            Some(l) => {
                self.latency.observe(l);
                Verdict::Accept
            }
            None => Verdict::Retry,
        }
    }
}

/// The request line and headers of a push to `origin`, up to the value of
/// `Content-Length`.
fn request_head(origin: &Origin) -> String {
    let mut head = String::from_utf8(
        request_bytes(
            "POST",
            origin,
            KEY_MATERIAL_PATH,
            "application/json",
            &[],
            b"",
        )
        .to_vec(),
    )
    .expect("the head is ASCII");
    // `request_bytes` ends with "Content-Length: 0\r\n\r\n".
    head.truncate(head.len() - "0\r\n\r\n".len());
    head
}

/// One push request, head and body written once into one zeroizing
/// buffer: `head` (see [`request_head`]), the length, then
/// `{"status":0,"index":N,"key_buffer":"…","metadata":{…}}`.
fn push_request(head: &str, index: u32, key: &[u8], metadata: &str) -> Zeroizing<Vec<u8>> {
    const OPEN: &[u8] = b"{\"status\":0,\"index\":";
    const KEY: &[u8] = b",\"key_buffer\":\"";
    let b64_len = key.len().div_ceil(3) * 4;
    let index = index.to_string();
    let body_len = OPEN.len() + index.len() + KEY.len() + b64_len + 2 + metadata.len() + 1;
    let length = body_len.to_string();
    let mut out = Zeroizing::new(Vec::with_capacity(head.len() + length.len() + 4 + body_len));
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(length.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(OPEN);
    out.extend_from_slice(index.as_bytes());
    out.extend_from_slice(KEY);
    let start = out.len();
    out.resize(start + b64_len, 0);
    let written = BASE64
        .encode_slice(key, &mut out[start..])
        .expect("buffer sized for the encoding");
    debug_assert_eq!(written, b64_len);
    out.extend_from_slice(b"\",");
    out.extend_from_slice(metadata.as_bytes());
    out.push(b'}');
    debug_assert_eq!(out.capacity(), out.len(), "sized once: never reallocated");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_kms_yaml_shape() {
        let origin = Origin::parse("http://127.0.0.1:9/kms").unwrap();
        let head = request_head(&origin);
        let req = push_request(
            &head,
            7,
            &[0xff; 4],
            "\"metadata\":{\"size\":2,\"buffer\":{}}",
        );
        let text = std::str::from_utf8(&req).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("POST /kms/api/v1/qkd/etsi004/key-material HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.ends_with(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 0);
        assert_eq!(v["index"], 7);
        assert_eq!(v["key_buffer"], "/////w==");
        assert!(v["metadata"]["buffer"].is_object());
    }
}
