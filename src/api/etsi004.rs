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

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::push::{PushError, PushTable};
use super::{Handler, Router, parse_json};
use crate::http::{Method, Origin, Reply, Request, Response};
use crate::qkd::{Engine, GetKeyError, OpenReply, Qos, Status};

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

/// The ETSI 004 QKD-side routes of one node.
#[derive(Debug, Clone)]
pub struct Etsi004 {
    engine: Arc<Engine>,
    push: Arc<PushTable>,
}

impl Etsi004 {
    /// Routes over `engine`, pushing through `push`.
    pub fn new(engine: Arc<Engine>, push: Arc<PushTable>) -> Self {
        Self { engine, push }
    }

    /// Adds the three routes to `router`.
    pub fn mount(&self, router: &mut Router) {
        let me = self.clone();
        let open: Handler = Arc::new(move |req| me.open_connect(req));
        let me = self.clone();
        let get: Handler = Arc::new(move |req| Reply::Now(me.get_key(&req)));
        let me = self.clone();
        let close: Handler = Arc::new(move |req| Reply::Now(me.close(&req)));
        router
            .route(Method::Post, "/api/v1/kms/etsi004/open-connect", open)
            .route(Method::Get, "/api/v1/kms/etsi004/get-key", get)
            .route(Method::Put, "/api/v1/kms/etsi004/close", close);
    }

    fn open_connect(&self, req: Request) -> Reply {
        let body: OpenConnectBody = match parse_json(&req.body) {
            Ok(b) => b,
            Err(e) => return Reply::Now(malformed(e)),
        };
        let ksid = match body.key_stream_id.as_deref() {
            None | Some("") => None,
            Some(text) => match parse_ksid(text) {
                Ok(k) => Some(k).filter(|k| !k.is_nil()),
                Err(r) => return Reply::Now(r),
            },
        };
        for (name, url) in [("source", &body.source), ("destination", &body.destination)] {
            if let Err(e) = Origin::parse(url) {
                return Reply::Now(malformed(format!("{name}: {e}")));
            }
        }
        let me = self.clone();
        let run = move || me.open_connect_now(&body, ksid);
        match ksid {
            // Naming a KSID may wait (up to its timeout) for the peer's
            // announcement: off the event loop.
            Some(_) => Reply::Later(Box::new(run)),
            None => Reply::Now(run()),
        }
    }

    fn open_connect_now(&self, body: &OpenConnectBody, ksid: Option<Uuid>) -> Response {
        let qos = body.qos.to_qos();
        let OpenReply { status, ksid, qos } =
            self.engine
                .open_connect(&body.source, &body.destination, &qos, ksid);
        match (status, ksid) {
            (Status::Successful | Status::PeerNotConnected, Some(k)) => {
                // The node that created the KSID is the source side.
                let created_here = body.key_stream_id.as_deref().is_none_or(str::is_empty);
                let target = if created_here {
                    &body.source
                } else {
                    &body.destination
                };
                match Origin::parse(target) {
                    Ok(origin) => self.push.register(
                        k,
                        origin,
                        qos.key_chunk_size as usize,
                        qos.max_bps,
                        Duration::from_secs(u64::from(qos.ttl)),
                    ),
                    Err(e) => return malformed(e),
                }
                super::json(
                    201,
                    &json!({
                        "source": body.source,
                        "destination": body.destination,
                        "key_stream_id": k.to_string(),
                        "qos": qos_json(&qos),
                        "status": status.code(),
                    }),
                )
            }
            (Status::QosNotMet, _) => super::json(
                500,
                &json!({
                    "status": status.code(),
                    "message": status.message(),
                    "qos": qos_json(&qos),
                }),
            ),
            (s, _) => error(s, s.message()),
        }
    }

    fn get_key(&self, req: &Request) -> Response {
        let body: GetKeyBody = match parse_json(&req.body) {
            Ok(b) => b,
            Err(e) => return malformed(e),
        };
        let ksid = match parse_ksid(&body.key_stream_id) {
            Ok(k) => k,
            Err(r) => return r,
        };
        match self.engine.stream_qos(&ksid) {
            Ok(_) => {}
            Err(GetKeyError::QosConflict) => {
                return error(Status::KsidInUse, &GetKeyError::QosConflict.to_string());
            }
            Err(_) => return error(Status::PeerNotConnectedGetKey, "unknown key_stream_id"),
        }
        match self.push.start(&ksid, body.index) {
            Ok(()) => Response::empty(205),
            Err(e @ PushError::UnknownStream) => {
                error(Status::PeerNotConnectedGetKey, &e.to_string())
            }
            Err(e @ PushError::Delivered(_)) => error(Status::InsufficientKey, &e.to_string()),
        }
    }

    fn close(&self, req: &Request) -> Response {
        let body: CloseBody = match parse_json(&req.body) {
            Ok(b) => b,
            Err(e) => return malformed(e),
        };
        let ksid = match parse_ksid(&body.key_stream_id) {
            Ok(k) => k,
            Err(r) => return r,
        };
        // Stop taking key first, so the pusher never races the close.
        self.push.stop(&ksid);
        match self.engine.close(&ksid) {
            Ok(_) => Response::empty(204),
            Err(_) => error(Status::PeerNotConnectedGetKey, "unknown key_stream_id"),
        }
    }
}
