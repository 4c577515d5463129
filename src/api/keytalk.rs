//! KeyTalk over HTTP, on two listeners:
//!
//! - the TLS listener: `/rcdp/{version}/{call}` (and the vendor
//!   document's `/rdp/` spelling), GET and POST alike, parameters from the
//!   query and an `application/x-www-form-urlencoded` body merged; every
//!   RCDP outcome is HTTP 200 with `Content-Type: application/json`,
//!   `Cache-Control: no-cache` and, within a session, exactly
//!   `Set-Cookie: keytalkcookie=<id>` (no attributes); and
//!   `/public/{version}/{call}` (200 or 400);
//! - the plain-HTTP listener (by design, as KeyTalk's port 8000):
//!   `GET /ca/1.0.0/{signing,primary,root}` (PEM as
//!   `application/octet-stream`; 404 for `root`, which keypipe has not)
//!   and the one-time download `GET /cert/?<token>` (404 once taken or
//!   expired; when the downloads are shared between processes it runs on
//!   the pool, and a store failure or a full pool answers 503).
//!
//! RCDP and public calls run on the pool (Argon2, key generation, store
//! writes), at most `max_queued` at once; more are answered at once, RCDP
//! with error 1000 (HTTP 200, as every RCDP answer), the public API with
//! a 400 (`error`: server busy).

use std::sync::Arc;
use std::time::Instant;

use super::pool_gate::PoolGate;
use super::{Handler, Router};
use crate::http::{Method, Reply, Request, Response};
use crate::kms::keytalk::answer::{self, Answer, json_body};
use crate::kms::keytalk::params::{Params, session_id};
use crate::kms::keytalk::{KeyTalk, Now, RcdpRequest, public};

/// The KeyTalk routes.
#[derive(Debug, Clone)]
pub struct KeyTalkApi {
    keytalk: Arc<KeyTalk>,
    gate: PoolGate,
}

/// More calls than `max_queued` are on the pool: an RCDP error (HTTP
/// 200, as every RCDP answer: the C++, Python and Apple clients fail on
/// any other status), retry later.
fn busy() -> Response {
    Response::json(
        200,
        Answer::error(answer::ERR_PROTOCOL, "server busy: retry in a second").to_body(),
    )
    .header("Cache-Control", "no-cache")
}

/// The public API's answer when too many calls are on the pool: a 400
/// with `error` (its clients accept only 200 and 400).
fn public_busy() -> Response {
    Response::json(
        400,
        json_body(
            &serde_json::json!({"status": "error", "error": "server busy: retry in a second"}),
        ),
    )
    .header("Cache-Control", "no-cache")
}

/// Parameters of `req`: its query, then its form body (any POST body that
/// is not JSON is read as a form).
fn params(req: &Request) -> Params {
    let query = req.query().unwrap_or("").as_bytes();
    let form = req
        .header("Content-Type")
        .is_none_or(|t| !t.to_ascii_lowercase().starts_with(b"application/json"));
    Params::parse(query, if form { &req.body } else { &[] })
}

impl KeyTalkApi {
    /// Routes over `keytalk`, at most `max_queued` calls on the pool.
    pub fn new(keytalk: Arc<KeyTalk>, max_queued: usize) -> KeyTalkApi {
        KeyTalkApi {
            keytalk,
            gate: PoolGate::new(max_queued),
        }
    }

    /// The service.
    pub fn service(&self) -> &Arc<KeyTalk> {
        &self.keytalk
    }

    fn pooled(&self, call: fn(&KeyTalk, &Request) -> Response, busy: fn() -> Response) -> Handler {
        let me = self.clone();
        Arc::new(move |req: Request| {
            let keytalk = Arc::clone(&me.keytalk);
            me.gate.run(busy, move || call(&keytalk, &req))
        })
    }

    /// RCDP and the public API (the TLS listener).
    pub fn mount(&self, router: &mut Router) {
        for prefix in ["/rcdp/", "/rdp/"] {
            for method in [Method::Get, Method::Post] {
                router.route_prefix(method, prefix, self.pooled(rcdp, busy));
            }
        }
        for method in [Method::Get, Method::Post] {
            router.route_prefix(method, "/public/", self.pooled(public_api, public_busy));
        }
    }

    /// The CA download and out-of-band downloads (the plain listener).
    pub fn mount_downloads(&self, router: &mut Router) {
        let kt = Arc::clone(&self.keytalk);
        router.route_prefix(
            Method::Get,
            "/ca/1.0.0/",
            Arc::new(move |req: Request| {
                let which = req.path().trim_start_matches("/ca/1.0.0/");
                Reply::Now(match kt.ca_pem(which) {
                    Some(pem) => Response::empty(200)
                        .header("Content-Type", "application/octet-stream")
                        .body(pem.into_bytes()),
                    None => not_found(),
                })
            }),
        );
        let me = self.clone();
        router.route(
            Method::Get,
            "/cert/",
            Arc::new(move |req: Request| {
                let kt = Arc::clone(&me.keytalk);
                if !kt.is_shared() {
                    return Reply::Now(download(&kt, &req));
                }
                // Shared, the download is a database transaction: on the
                // pool, as RCDP calls.
                me.gate.run(unavailable, move || download(&kt, &req))
            }),
        );
    }
}

/// `GET /cert/?<token>`: the package once, then 404; 503 when the shared
/// store fails (logged).
fn download(kt: &KeyTalk, req: &Request) -> Response {
    let token = req.query().unwrap_or("");
    match kt.download(token, Instant::now()) {
        Ok(Some(d)) => Response::empty(200)
            .header("Content-Type", d.content_type)
            .header("Cache-Control", "no-store")
            .body(d.body.to_vec()),
        Ok(None) => not_found(),
        Err(e) => {
            tracing::error!("keytalk: download store: {e}");
            unavailable()
        }
    }
}

/// 503: retry later (the pool is full, or the shared store failed).
fn unavailable() -> Response {
    Response::empty(503)
        .header("Content-Type", "text/plain")
        .body(&b"unavailable, retry later\n"[..])
}

fn not_found() -> Response {
    Response::empty(404)
        .header("Content-Type", "text/plain")
        .body(&b"not found\n"[..])
}

/// `/rcdp/{version}/{call}` (or `/rdp/…`).
fn rcdp(kt: &KeyTalk, req: &Request) -> Response {
    let path = req.path();
    let rest = path
        .strip_prefix("/rcdp/")
        .or_else(|| path.strip_prefix("/rdp/"))
        .unwrap_or("");
    let (version, action) = rest.split_once('/').unwrap_or((rest, ""));
    let sid = session_id(
        req.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .map(|(_, v)| v),
    );
    let reply = kt.rcdp(
        RcdpRequest {
            version,
            action: action.trim_end_matches('/'),
            params: params(req),
            sid,
        },
        Now::current(),
    );
    let mut response =
        Response::json(200, reply.answer.to_body()).header("Cache-Control", "no-cache");
    if let Some(sid) = &reply.sid {
        response = response.header("Set-Cookie", format!("keytalkcookie={}", sid.as_str()));
    }
    response
}

/// `/public/{version}/{call}`.
fn public_api(kt: &KeyTalk, req: &Request) -> Response {
    let rest = req.path().trim_start_matches("/public/");
    let (version, call) = rest.split_once('/').unwrap_or((rest, ""));
    let (status, body) = public::serve(kt, version, call, &params(req));
    Response::json(status, json_body(&body)).header("Cache-Control", "no-cache")
}
