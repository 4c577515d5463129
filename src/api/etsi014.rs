//! ETSI GS QKD 014 over HTTP (`/api/v1/keys/{SAE_ID}/status|enc_keys|
//! dec_keys`) on a node's own TLS listener: the caller's SAE ID is the CN
//! of its client certificate (OU `sae`); the path's SAE ID is
//! percent-decoded. GET and POST are both served for the key routes (GET
//! with a query, POST with a JSON body); every non-200 answer is
//! `{"message": …}`.
//!
//! `enc_keys` runs on the event loop when key is ready (the usual case);
//! when it is not, the request waits on the pool (bounded: more waiting
//! requests are answered 503 at once) for at most `etsi014.wait_ms`.

use std::sync::Arc;

use super::pool_gate::PoolGate;
use super::{Handler, Router};
use crate::http::{Method, Reply, Request, Response};
use crate::kms::etsi014::request::{
    key_ids_from_body, key_ids_from_query, key_request_from_body, key_request_from_query,
    percent_decode,
};
use crate::kms::etsi014::{Answer, Etsi014, Refusal, Short};

const PREFIX: &str = "/api/v1/keys/";

/// The 014 routes of one node.
#[derive(Debug, Clone)]
pub struct Etsi014Api {
    service: Arc<Etsi014>,
    gate: PoolGate,
}

fn respond(answer: Answer) -> Response {
    match answer {
        // A key container: the connection wipes it once sent.
        Ok(body) => Response::json(200, body),
        Err(refusal) => refused(&refusal),
    }
}

fn refused(refusal: &Refusal) -> Response {
    Response::json(refusal.status, refusal.body())
}

impl Etsi014Api {
    /// Routes over `service`; at most `max_waiting` `enc_keys` wait for
    /// key on the pool at once.
    pub fn new(service: Arc<Etsi014>, max_waiting: usize) -> Etsi014Api {
        Etsi014Api {
            service,
            gate: PoolGate::new(max_waiting),
        }
    }

    /// The service.
    pub fn service(&self) -> &Arc<Etsi014> {
        &self.service
    }

    /// Adds the routes to `router`.
    pub fn mount(&self, router: &mut Router) {
        for method in [Method::Get, Method::Post] {
            let me = self.clone();
            let handler: Handler = Arc::new(move |req| me.call(req));
            router.route_prefix(method, PREFIX, handler);
        }
    }

    fn call(&self, req: Request) -> Reply {
        if req.method == Method::Head {
            // A HEAD answer has no body: keys taken for it would be lost.
            return Reply::Now(not_allowed("use GET or POST", "GET, POST"));
        }
        let rest = &req.path()[PREFIX.len()..];
        let Some((id, action)) = rest.rsplit_once('/') else {
            return Reply::Now(not_found());
        };
        let sae = percent_decode(id);
        let caller = req
            .peer
            .as_ref()
            .and_then(|p| p.identity.as_ref())
            .filter(|i| i.role == "sae")
            .map(|i| i.name.clone());
        let caller = caller.as_deref();
        let post = req.method == Method::Post;
        match action {
            "status" if !post => Reply::Now(respond(self.service.status(caller, &sae))),
            "status" => Reply::Now(not_allowed("status is GET only", "GET")),
            "enc_keys" => {
                let parsed = match post {
                    true => key_request_from_body(&req.body),
                    false => key_request_from_query(req.query()),
                };
                let checked = parsed.and_then(|r| self.service.enc_request(caller, &sae, &r));
                match checked {
                    Ok(request) => self.enc_keys(request),
                    Err(refusal) => Reply::Now(refused(&refusal)),
                }
            }
            "dec_keys" => {
                let ids = match post {
                    true => key_ids_from_body(&req.body),
                    false => key_ids_from_query(req.query()),
                };
                Reply::Now(respond(
                    ids.and_then(|ids| self.service.dec_keys(caller, &sae, &ids)),
                ))
            }
            _ => Reply::Now(not_found()),
        }
    }

    /// Issues at once when key is ready, else waits on the pool.
    fn enc_keys(&self, request: crate::kms::etsi014::EncRequest) -> Reply {
        match self.service.enc_keys(&request, std::time::Duration::ZERO) {
            Ok(answer) => Reply::Now(respond(answer)),
            Err(Short(busy)) => {
                let service = Arc::clone(&self.service);
                let wait = service.config().wait;
                self.gate.run(
                    move || refused(&busy),
                    move || match service.enc_keys(&request, wait) {
                        Ok(answer) => respond(answer),
                        Err(Short(refusal)) => refused(&refusal).header("Retry-After", "1"),
                    },
                )
            }
        }
    }
}

/// 405 with `Allow` and a JSON message.
fn not_allowed(message: &'static str, allow: &'static str) -> Response {
    refused(&Refusal {
        status: 405,
        message: message.into(),
    })
    .header("Allow", allow)
}

fn not_found() -> Response {
    Response::json(
        404,
        br#"{"message":"no such path: /api/v1/keys/{SAE_ID}/status, enc_keys or dec_keys"}"#
            .as_slice(),
    )
}
