//! HTTP/1.1 without a framework: a sans-IO request parser and response
//! writer, the server, a pool for slow handlers and a pipelined outbound
//! client; here, the [`Service`] a server calls and [`HttpError`].
//!
//! The server runs one mio event loop per worker thread, each with its own
//! `SO_REUSEPORT` listener; the client is non-blocking too. This layer
//! knows no protocol: a [`Service`] maps each [`Request`] to a
//! [`Response`], now or later (on the pool).

mod chunked;
mod client;
mod conn;
mod inbuf;
mod pool;
mod request;
mod response;
mod server;
mod transport;

#[cfg(feature = "fuzzing")]
pub(crate) use client::parse_answer;
pub use client::{Answer, Client, OnAnswer, Origin, OriginId, Outgoing, Verdict, request_bytes};
pub use pool::Pool;
pub use request::{Limits, Method, Parsed, Peer, Request, RequestParser, parse};
pub use response::{Connection, Response, reason};
pub use server::{Server, ServerConfig, ServerStats, Shutdown};

/// An HTTP-level error: the status to answer, and why. The connection is
/// closed after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    /// Status code.
    pub status: u16,
    /// Human-readable reason, sent in the body.
    pub reason: &'static str,
}

impl HttpError {
    /// 431: the header block exceeds the limit (or has too many fields).
    pub const HEADER_TOO_LARGE: HttpError = HttpError {
        status: 431,
        reason: "request header block too large",
    };
    /// 413: the body exceeds the limit.
    pub const BODY_TOO_LARGE: HttpError = HttpError {
        status: 413,
        reason: "request body too large",
    };
    /// 505: not HTTP/1.0 or HTTP/1.1.
    pub const VERSION: HttpError = HttpError {
        status: 505,
        reason: "only HTTP/1.0 and HTTP/1.1 are supported",
    };
    /// 501: a transfer coding other than `chunked`.
    pub const NOT_IMPLEMENTED: HttpError = HttpError {
        status: 501,
        reason: "only the chunked transfer coding is supported",
    };
    /// 408: the request did not arrive in time.
    pub const TIMEOUT: HttpError = HttpError {
        status: 408,
        reason: "request not received in time",
    };

    /// 403: the client certificate was revoked since the handshake.
    pub const REVOKED: HttpError = HttpError {
        status: 403,
        reason: "client certificate revoked",
    };

    /// 500: a handler failed (panicked); the panic is contained.
    pub const INTERNAL: HttpError = HttpError {
        status: 500,
        reason: "internal error",
    };

    /// 400 with `reason`.
    pub const fn bad_request(reason: &'static str) -> HttpError {
        HttpError {
            status: 400,
            reason,
        }
    }

    /// The response sent for this error (JSON `{"message": …}`, closing).
    pub fn response(&self) -> Response {
        Response::json(
            self.status,
            serde_json::json!({ "message": self.reason }).to_string(),
        )
        .closing()
    }
}

/// How a [`Service`] answers a request.
pub enum Reply {
    /// The response, computed on the event loop.
    Now(Response),
    /// Slow work (it may block): run on the pool, answered when done.
    /// Later requests on the same connection wait for it, in order.
    Later(Box<dyn FnOnce() -> Response + Send>),
}

/// A protocol (or a router of protocols) served over HTTP.
pub trait Service: Send + Sync + 'static {
    /// Answers one request. Must not block; blocking work goes in
    /// [`Reply::Later`].
    fn call(&self, req: Request) -> Reply;
}
