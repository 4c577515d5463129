//! Key agreement and login over HTTP: `POST /rest/key-agreement`,
//! `POST /rest/login[?client_reference_id=…]`, `POST /rest/refresh`,
//! `POST /rest/logout`, served by the sans-IO `kms::agreement` and
//! `kms::login` services.
//!
//! Every route runs on the pool: modular exponentiation (FFDHE), Argon2 and
//! durable store writes never stall the event loop. A failed login's 401
//! is held (not sent) until the throttle's delay ends, without holding a
//! thread. The throttle backs off per name and *source*: the address of
//! the connection the login came on (`Request::peer`; never a header such
//! as `X-Forwarded-For`, which the client chooses). Errors are
//! `{"message": "…"}` with 400 (malformed or refused input; nothing is
//! kept), 401 (credentials, tokens), 404 (unknown reference), 410 (used or
//! expired reference), 503 (more than `max_queued` requests on the pool;
//! with a shared store: the store cannot be reached now), 500 (internal;
//! details only in the log). A full table of pending agreements forgets
//! its oldest references rather than refusing new ones. Successful
//! answers carry `Cache-Control: no-store`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::pool_gate::PoolGate;
use super::{Handler, Router, parse_json};
use crate::http::{Method, Request, Response};
use crate::kms::agreement::{AgreementError, AgreementService, ReferenceError};
use crate::kms::json_escapes;
use crate::kms::login::{LoginError, LoginService, RefreshRequest};

/// The key-agreement and login routes (of every listener serving them).
#[derive(Debug, Clone)]
pub struct AgreementApi {
    agreement: Arc<AgreementService>,
    login: Arc<LoginService>,
    /// Requests on the pool (queued or running) at most; beyond, 503.
    gate: PoolGate,
}

fn message(status: u16, text: &str) -> Response {
    super::json(status, &json!({ "message": text }))
}

/// 503 (the store cannot be reached now) or 500, the detail logged only.
fn store_failure(what: &str, unavailable: bool, detail: &str) -> Response {
    tracing::error!("{what} store failure: {detail}");
    if unavailable {
        message(503, "service temporarily unavailable; retry")
    } else {
        message(500, "internal error")
    }
}

fn agreement_error(e: &AgreementError) -> Response {
    match e {
        AgreementError::BadRequest(m) => message(400, m),
        AgreementError::Random => message(500, &e.to_string()),
        AgreementError::Unavailable(detail) => store_failure("key agreement", true, detail),
        AgreementError::Store(detail) => store_failure("key agreement", false, detail),
    }
}

fn login_error(e: &LoginError) -> Response {
    match e {
        LoginError::BadRequest(m) => message(400, m),
        LoginError::Reference(r) => match r {
            ReferenceError::Unknown => message(404, &r.to_string()),
            ReferenceError::Used | ReferenceError::Expired => message(410, &r.to_string()),
            ReferenceError::Unavailable(detail) => store_failure("reference", true, detail),
            ReferenceError::Store(detail) => store_failure("reference", false, detail),
        },
        LoginError::Unauthorized { answer_at } => {
            message(401, &e.to_string()).held_until(*answer_at)
        }
        LoginError::InvalidToken => message(401, &e.to_string()),
        LoginError::Unavailable(detail) => store_failure("login", true, detail),
        LoginError::Store(detail) => store_failure("login", false, detail),
    }
}

/// The value of `name` in a query string (no percent-decoding: the
/// parameters served here never need it).
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

impl AgreementApi {
    /// Routes over the two services, with at most `max_queued` requests
    /// on the pool at once (more are answered 503 with `Retry-After: 1`,
    /// so unauthenticated Argon2 or FFDHE work never starves the pool the
    /// other protocols share).
    pub fn new(
        agreement: Arc<AgreementService>,
        login: Arc<LoginService>,
        max_queued: usize,
    ) -> Self {
        AgreementApi {
            agreement,
            login,
            gate: PoolGate::new(max_queued),
        }
    }

    /// The key-agreement service.
    pub fn service(&self) -> &Arc<AgreementService> {
        &self.agreement
    }

    /// Adds the four routes.
    pub fn mount(&self, router: &mut Router) {
        type Call = fn(&AgreementApi, &Request) -> Response;
        let routes: [(&'static str, Call); 4] = [
            ("/rest/key-agreement", AgreementApi::agree),
            ("/rest/login", AgreementApi::log_in),
            ("/rest/refresh", AgreementApi::refresh),
            ("/rest/logout", AgreementApi::log_out),
        ];
        for (path, call) in routes {
            let me = self.clone();
            let handler: Handler = Arc::new(move |req: Request| {
                let job = me.clone();
                me.gate.run(
                    || {
                        message(
                            503,
                            "too many key-agreement and login requests in progress; retry",
                        )
                    },
                    move || call(&job, &req),
                )
            });
            router.route(Method::Post, path, handler);
        }
    }

    fn agree(&self, req: &Request) -> Response {
        serve(
            req,
            |spec| {
                self.agreement
                    .agree(&spec, Instant::now())
                    .map(|info| json_answer(&info))
            },
            agreement_error,
        )
    }

    fn log_in(&self, req: &Request) -> Response {
        let reference = query_param(req.query(), "client_reference_id");
        let source = source(req);
        serve(
            req,
            |body| {
                self.login
                    .login(reference, &body, source, Instant::now())
                    .map(|tokens| json_answer(&tokens))
            },
            login_error,
        )
    }

    fn refresh(&self, req: &Request) -> Response {
        #[derive(serde::Serialize)]
        struct Answer<'a> {
            access_token: &'a str,
        }
        serve(
            req,
            |body: RefreshRequest| {
                self.login.refresh(&body.refresh_token).map(|access| {
                    json_answer(&Answer {
                        access_token: &access,
                    })
                })
            },
            login_error,
        )
    }

    fn log_out(&self, req: &Request) -> Response {
        serve(
            req,
            |body: RefreshRequest| {
                self.login
                    .logout(&body.refresh_token)
                    .map(|()| Response::empty(204))
            },
            login_error,
        )
    }
}

/// The address `req` came from: its connection's peer. (The server always
/// sets it; a request without one, parsed alone, counts as `0.0.0.0`.)
fn source(req: &Request) -> IpAddr {
    req.peer
        .as_ref()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.addr.ip())
}

/// Parses the JSON body as `B` (400 naming the problem) and answers with
/// `call`, mapping its error with `error`.
fn serve<B: serde::de::DeserializeOwned, E>(
    req: &Request,
    call: impl FnOnce(B) -> Result<Response, E>,
    error: fn(&E) -> Response,
) -> Response {
    // The password and keys: escapes resolved in a zeroizing copy (F14).
    let resolved = match json_escapes::resolve(&req.body) {
        Ok(resolved) => resolved,
        Err(e) => return message(400, &e.to_string()),
    };
    match parse_json(resolved.as_ref().map_or(&req.body[..], |b| b.as_slice())) {
        Ok(body) => call(body).unwrap_or_else(|e| error(&e)),
        Err(m) => message(400, &m),
    }
}

/// A 200 JSON answer, never to be cached (it carries tokens or a
/// reference).
fn json_answer(value: &impl serde::Serialize) -> Response {
    Response::json(
        200,
        serde_json::to_vec(value).expect("the answer serializes"),
    )
    .header("Cache-Control", "no-store")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("a=1&client_reference_id=x"), "client_reference_id"),
            Some("x")
        );
        assert_eq!(
            query_param(Some("client_reference_id"), "client_reference_id"),
            None
        );
        assert_eq!(query_param(None, "a"), None);
    }

    /// Shared-store failures: 503 when the store cannot be reached now,
    /// else 500; never the detail.
    #[test]
    fn store_failures_answer_503_or_500_without_detail() {
        let cases: [(Response, u16); 6] = [
            (
                agreement_error(&AgreementError::Unavailable("SECRET-DETAIL".into())),
                503,
            ),
            (
                agreement_error(&AgreementError::Store("SECRET-DETAIL".into())),
                500,
            ),
            (
                login_error(&LoginError::Unavailable("SECRET-DETAIL".into())),
                503,
            ),
            (login_error(&LoginError::Store("SECRET-DETAIL".into())), 500),
            (
                login_error(&LoginError::Reference(ReferenceError::Used)),
                410,
            ),
            (
                login_error(&LoginError::Reference(ReferenceError::Unknown)),
                404,
            ),
        ];
        for (response, status) in cases {
            assert_eq!(response.status, status);
            let body = String::from_utf8_lossy(&response.body).into_owned();
            assert!(!body.contains("SECRET-DETAIL"), "{body}");
        }
    }
}
