//! ETSI GS QKD 004 push mode, QKD side (`/api/v1/kms/etsi004/…`):
//! `open-connect` (201 + body), `get-key` (205, no content: pushing
//! starts), `close` (204, no content).
//!
//! Errors are `{"status": N, "message": "…"}` with HTTP 400 for statuses
//! 3, 5, 8 and 500 for 2, 4, 6, 7. A body that is not JSON, lacks a
//! required field, has a wrong type or a bad UUID or URL is 400 with
//! **status 3** and a message naming the problem (the decisions page lets
//! us choose; 3 is the spec's own example of a 400). An unknown KSID is 400,
//! status 3.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{Caller, Handler, KmsAccess, Router, parse_json};
use crate::http::{Method, Origin, Reply, Request, Response};
use crate::push::Pushes;
use crate::push_mode::{OpenRefused, PushMode, StartError};
use crate::qkd::{Engine, MAX_URI_LEN, OpenReply, Qos, Status};

/// Longest a close waits for the stream's pushes already on the wire.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Status used for malformed requests (see the module docs).
const MALFORMED: Status = Status::PeerNotConnectedGetKey;

/// The HTTP code for an ETSI status (decisions page: 3, 5, 8 -> 400;
/// 2, 4, 6, 7 -> 500; 0, 1 -> success).
fn http_code(status: Status) -> u16 {
    match status.code() {
        0 | 1 => 200,
        3 | 5 | 8 => 400,
        _ => 500,
    }
}

fn error(status: Status, message: &str) -> Response {
    super::json(
        http_code(status),
        &json!({ "status": status.code(), "message": message }),
    )
}

fn malformed(message: impl AsRef<str>) -> Response {
    error(MALFORMED, message.as_ref())
}

/// A caller refused by the access rules: 403, status 3.
fn forbidden(message: &str) -> Response {
    super::json(
        403,
        &json!({ "status": MALFORMED.code(), "message": message }),
    )
}

/// The QoS object: every field may be absent or null (the node chooses).
#[derive(Debug, Default, Deserialize)]
struct QosBody {
    key_chunk_size: Option<u32>,
    max_bps: Option<u32>,
    min_bps: Option<u32>,
    jitter: Option<u32>,
    priority: Option<u32>,
    timeout: Option<u32>,
    ttl: Option<u32>,
    metadata_mimetype: Option<String>,
}

impl QosBody {
    fn to_qos(&self) -> Qos {
        let d = Qos::default();
        Qos {
            key_chunk_size: self.key_chunk_size.unwrap_or(d.key_chunk_size),
            max_bps: self.max_bps.unwrap_or(d.max_bps),
            min_bps: self.min_bps.unwrap_or(d.min_bps),
            jitter: self.jitter.unwrap_or(d.jitter),
            priority: self.priority.unwrap_or(d.priority),
            timeout: self.timeout.unwrap_or(d.timeout),
            ttl: self.ttl.unwrap_or(d.ttl),
            metadata_mimetype: self
                .metadata_mimetype
                .clone()
                .unwrap_or(d.metadata_mimetype),
        }
    }
}

#[derive(Debug, Deserialize)]
struct OpenConnectBody {
    source: String,
    destination: String,
    #[serde(default)]
    key_stream_id: Option<String>,
    qos: QosBody,
}

#[derive(Debug, Deserialize)]
struct GetKeyBody {
    key_stream_id: String,
    #[serde(default)]
    index: Option<u32>,
    // `metadata` is accepted and ignored: pushed chunks carry their own.
}

#[derive(Debug, Deserialize)]
struct CloseBody {
    key_stream_id: String,
}

fn parse_ksid(text: &str) -> Result<Uuid, Response> {
    Uuid::parse_str(text).map_err(|_| malformed(format!("key_stream_id {text:?} is not a UUID")))
}

/// Parses a body naming a stream, and its `key_stream_id`; the error
/// answer when either is malformed.
fn body_and_ksid<T: serde::de::DeserializeOwned>(
    body: &[u8],
    ksid_of: impl Fn(&T) -> &String,
) -> Result<(T, Uuid), Response> {
    let body: T = parse_json(body).map_err(malformed)?;
    let ksid = parse_ksid(ksid_of(&body))?;
    Ok((body, ksid))
}

/// An open-connect request as parsed (sans-IO): its body, the KSID it
/// names (none, empty or nil: the node picks one) and its KMS origins.
struct OpenConnect {
    body: OpenConnectBody,
    ksid: Option<Uuid>,
    source: Origin,
    destination: Origin,
}

/// Parses an open-connect body; the error answer when it is malformed.
fn parse_open_connect(bytes: &[u8]) -> Result<OpenConnect, Response> {
    let body: OpenConnectBody = parse_json(bytes).map_err(malformed)?;
    let ksid = match body.key_stream_id.as_deref() {
        None | Some("") => None,
        Some(text) => Some(parse_ksid(text)?).filter(|k| !k.is_nil()),
    };
    let origin = |name: &str, url: &str| {
        if url.len() > MAX_URI_LEN {
            return Err(malformed(format!(
                "{name}: longer than {MAX_URI_LEN} bytes"
            )));
        }
        Origin::parse(url).map_err(|e| malformed(format!("{name}: {e}")))
    };
    let source = origin("source", &body.source)?;
    let destination = origin("destination", &body.destination)?;
    Ok(OpenConnect {
        body,
        ksid,
        source,
        destination,
    })
}

/// Fuzz entry (`fuzz/` and the fuzz regression tests): the QKD side's
/// request bodies.
/// Byte 0 picks open-connect, get-key or close; the rest is the body.
/// Never panics; a refusal is a 400; an accepted body's KSID is the one
/// its text names, its origins are what `Origin::parse` makes of its URIs,
/// and its QoS takes every field given.
#[doc(hidden)]
pub fn fuzz_request_body(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let refused = |r: Response| assert_eq!(r.status, 400, "a refusal is 400");
    match kind % 3 {
        0 => match parse_open_connect(body) {
            Ok(open) => {
                let named = open.body.key_stream_id.as_deref().unwrap_or("");
                assert_eq!(
                    open.ksid,
                    Uuid::parse_str(named).ok().filter(|k| !k.is_nil())
                );
                assert_eq!(Origin::parse(&open.body.source).ok(), Some(open.source));
                assert_eq!(
                    Origin::parse(&open.body.destination).ok(),
                    Some(open.destination)
                );
                let qos = open.body.qos.to_qos();
                if let Some(size) = open.body.qos.key_chunk_size {
                    assert_eq!(qos.key_chunk_size, size);
                }
            }
            Err(r) => refused(r),
        },
        1 => match body_and_ksid(body, |b: &GetKeyBody| &b.key_stream_id) {
            Ok((b, ksid)) => assert_eq!(Uuid::parse_str(&b.key_stream_id).ok(), Some(ksid)),
            Err(r) => refused(r),
        },
        _ => match body_and_ksid(body, |b: &CloseBody| &b.key_stream_id) {
            Ok((b, ksid)) => assert_eq!(Uuid::parse_str(&b.key_stream_id).ok(), Some(ksid)),
            Err(r) => refused(r),
        },
    }
}

fn qos_json(q: &Qos) -> serde_json::Value {
    json!({
        "key_chunk_size": q.key_chunk_size,
        "max_bps": q.max_bps,
        "min_bps": q.min_bps,
        "jitter": q.jitter,
        "priority": q.priority,
        "timeout": q.timeout,
        "ttl": q.ttl,
        "metadata_mimetype": q.metadata_mimetype,
    })
}

/// Calls waiting on the pool: how many in all, and per caller.
#[derive(Debug, Default)]
struct Waiting {
    /// (all, by caller)
    counts: Mutex<(usize, HashMap<String, usize>)>,
}

/// One of a bounded number of calls allowed to wait on the pool (each KMS
/// at most half of them, so one cannot make the others wait); released on
/// drop.
struct WaitSlot {
    waiting: Arc<Waiting>,
    caller: String,
}

impl WaitSlot {
    fn take(waiting: &Arc<Waiting>, max: usize, caller: &Caller) -> Option<WaitSlot> {
        // Local callers (no certificate) are one party: only the total
        // binds them.
        let (caller, share) = match caller {
            Caller::Kms(name) => (name.clone(), max.div_ceil(2)),
            Caller::Local => (String::new(), max),
        };
        let mut counts = waiting.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mine = counts.1.get(&caller).copied().unwrap_or(0);
        if counts.0 >= max || mine >= share {
            return None;
        }
        counts.0 += 1;
        *counts.1.entry(caller.clone()).or_insert(0) += 1;
        Some(WaitSlot {
            waiting: Arc::clone(waiting),
            caller,
        })
    }
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        let mut counts = self
            .waiting
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.0 -= 1;
        if let Some(n) = counts.1.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                counts.1.remove(&self.caller);
            }
        }
    }
}

/// The ETSI 004 QKD-side routes of one node.
#[derive(Debug, Clone)]
pub struct Etsi004 {
    mode: PushMode,
    access: Arc<KmsAccess>,
    waiting: Arc<Waiting>,
    max_waiting: usize,
}

impl Etsi004 {
    /// Routes over `engine`, pushing through `push`, for the callers
    /// `access` allows; at most `max_waiting` open-connect calls wait on
    /// the pool at once (more: status 6).
    pub fn new(
        engine: Arc<Engine>,
        push: Arc<Pushes>,
        access: KmsAccess,
        max_waiting: usize,
    ) -> Self {
        Self {
            mode: PushMode::new(engine, push),
            access: Arc::new(access),
            waiting: Arc::default(),
            max_waiting: max_waiting.max(1),
        }
    }

    /// The caller of `req` when it may use an existing stream `ksid` (or
    /// the stream is not open here: the engine says so), else the 403.
    fn allow_existing(&self, req: &Request, ksid: &Uuid) -> Result<Caller, Response> {
        let caller = self.access.caller(req).map_err(|m| forbidden(&m))?;
        if let Some(target) = self.mode.target_of(ksid) {
            self.access
                .allow_existing(&caller, &target)
                .map_err(|m| forbidden(&m))?;
        }
        Ok(caller)
    }

    /// Adds the three routes to `router`.
    pub fn mount(&self, router: &mut Router) {
        let me = self.clone();
        let open: Handler = Arc::new(move |req| me.open_connect(req));
        let me = self.clone();
        let get: Handler = Arc::new(move |req| Reply::Now(me.get_key(&req)));
        let me = self.clone();
        let close: Handler = Arc::new(move |req| me.close(&req));
        router
            .route(Method::Post, "/api/v1/kms/etsi004/open-connect", open)
            .route(Method::Get, "/api/v1/kms/etsi004/get-key", get)
            .route(Method::Put, "/api/v1/kms/etsi004/close", close);
    }

    fn open_connect(&self, req: Request) -> Reply {
        let caller = match self.access.caller(&req) {
            Ok(c) => c,
            Err(m) => return Reply::Now(forbidden(&m)),
        };
        let OpenConnect {
            body,
            ksid,
            source,
            destination,
        } = match parse_open_connect(&req.body) {
            Ok(parsed) => parsed,
            Err(r) => return Reply::Now(r),
        };
        // Naming a KSID the peer has not announced yet waits (up to the
        // timeout) for the announcement, and a host name needs DNS: both
        // run on the pool, a bounded number at a time.
        let waits = ksid.is_some_and(|k| !self.mode.engine().knows(&k));
        if !waits && source.addr.is_some() && destination.addr.is_some() {
            return Reply::Now(self.open_connect_now(&body, ksid, (source, destination), &caller));
        }
        // No DNS on behalf of a caller for names it may not use anyway.
        if let Err(m) = self
            .access
            .may_name(&caller, &body.source, &body.destination)
        {
            return Reply::Now(forbidden(&m));
        }
        let Some(slot) = WaitSlot::take(&self.waiting, self.max_waiting, &caller) else {
            return Reply::Now(error(
                Status::Timeout,
                "too many open-connect calls are waiting for the peer node; retry",
            ));
        };
        let me = self.clone();
        Reply::Later(Box::new(move || {
            let _slot = slot;
            let (mut source, mut destination) = (source, destination);
            for (name, origin) in [("source", &mut source), ("destination", &mut destination)] {
                if let Err(e) = origin.resolve() {
                    return malformed(format!("cannot resolve the {name} KMS host: {e}"));
                }
            }
            me.open_connect_now(&body, ksid, (source, destination), &caller)
        }))
    }

    fn open_connect_now(
        &self,
        body: &OpenConnectBody,
        ksid: Option<Uuid>,
        origins: (Origin, Origin),
        caller: &Caller,
    ) -> Response {
        let qos = body.qos.to_qos();
        let opened = self.mode.open(
            &body.source,
            &body.destination,
            &qos,
            ksid,
            origins,
            |uri, origin| {
                let open = self.mode.engine().target_uris();
                self.access.allow_target(caller, uri, origin, &open)
            },
        );
        let OpenReply {
            status,
            ksid,
            qos,
            detail,
        } = match opened {
            Ok(reply) => reply,
            Err(OpenRefused::NotAllowed(m)) => return forbidden(&m),
            Err(e @ OpenRefused::DestinationMismatch { .. }) => {
                return error(Status::KsidInUse, &e.to_string());
            }
        };
        match (status, ksid) {
            (Status::Successful | Status::PeerNotConnected, Some(k)) => super::json(
                201,
                &json!({
                    "source": body.source,
                    "destination": body.destination,
                    "key_stream_id": k.to_string(),
                    "qos": qos_json(&qos),
                    "status": status.code(),
                }),
            ),
            (Status::QosNotMet, _) => super::json(
                500,
                &json!({
                    "status": status.code(),
                    "message": status.message(),
                    "qos": qos_json(&qos),
                }),
            ),
            (s, _) => error(s, detail.unwrap_or(s.message())),
        }
    }

    fn get_key(&self, req: &Request) -> Response {
        let (body, ksid) = match body_and_ksid(&req.body, |b: &GetKeyBody| &b.key_stream_id) {
            Ok(parsed) => parsed,
            Err(r) => return r,
        };
        if let Err(r) = self.allow_existing(req, &ksid) {
            return r;
        }
        match self.mode.start(&ksid, body.index) {
            Ok(()) => Response::empty(205),
            Err(e @ StartError::QosConflict) => error(Status::KsidInUse, &e.to_string()),
            Err(e @ StartError::StreamFailed) => error(Status::NoQkdConnection, &e.to_string()),
            Err(e @ StartError::UnknownStream) => {
                error(Status::PeerNotConnectedGetKey, &e.to_string())
            }
            Err(e @ StartError::Delivered(_)) => error(Status::InsufficientKey, &e.to_string()),
        }
    }

    /// CLOSE: nothing more is pushed after the 204. Pushes already on the
    /// wire are answered first (at most [`CLOSE_WAIT`]), on the pool when
    /// there are any.
    fn close(&self, req: &Request) -> Reply {
        let ksid = match body_and_ksid(&req.body, |b: &CloseBody| &b.key_stream_id) {
            Ok((_, ksid)) => ksid,
            Err(r) => return Reply::Now(r),
        };
        let caller = match self.allow_existing(req, &ksid) {
            Ok(c) => c,
            Err(r) => return Reply::Now(r),
        };
        if self.mode.close_is_quick(&ksid) {
            return Reply::Now(self.close_now(&ksid));
        }
        let Some(slot) = WaitSlot::take(&self.waiting, self.max_waiting, &caller) else {
            return Reply::Now(error(
                Status::Timeout,
                "too many calls are waiting on this node; retry the close",
            ));
        };
        let me = self.clone();
        Reply::Later(Box::new(move || {
            let _slot = slot;
            me.close_now(&ksid)
        }))
    }

    fn close_now(&self, ksid: &uuid::Uuid) -> Response {
        match self.mode.close(ksid, CLOSE_WAIT) {
            Ok(_) => Response::empty(204),
            Err(_) => error(Status::PeerNotConnectedGetKey, "unknown key_stream_id"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_takes_at_most_half_the_waiting_slots() {
        let waiting = Arc::new(Waiting::default());
        let greedy = Caller::Kms("greedy".into());
        let held: Vec<_> = (0..2)
            .map(|_| WaitSlot::take(&waiting, 4, &greedy).unwrap())
            .collect();
        assert!(WaitSlot::take(&waiting, 4, &greedy).is_none(), "half of 4");
        let other = WaitSlot::take(&waiting, 4, &Caller::Kms("other".into()));
        assert!(other.is_some(), "another KMS still gets one");
        drop(held);
        assert!(
            WaitSlot::take(&waiting, 4, &greedy).is_some(),
            "released on drop"
        );
    }
}
