//! A client of the NCP-KMS-compatible API: access-key credentials and
//! requests signed as the NCP API Gateway signs them (`/keys/v1/…` with
//! the API key in the string, `/keys/v2/…` without).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use keypipe_server::kms::gateway::{Scheme, signature};
use serde_json::Value;

use super::{Answer, Conn, read_answer};

/// An access key as `keypipe kms create-access-key` prints it.
#[derive(Debug, Clone)]
pub struct Creds {
    pub access: String,
    pub secret: String,
    pub api: String,
}

impl Creds {
    /// The credentials of `create-access-key`'s output.
    pub fn from_cli(created: &Value) -> Creds {
        let field = |name: &str| {
            created[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name} in {created}"))
                .to_owned()
        };
        Creds {
            access: field("access_key"),
            secret: field("secret_key"),
            api: field("api_key"),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A signed NCP call (`v` 1 or 2) at timestamp `ts`, on a connection of
/// its own: the answer, or the I/O error (no answer at all).
pub fn try_call_at(
    addr: SocketAddr,
    c: &Creds,
    v: u8,
    tag: &str,
    action: &str,
    body: &Value,
    ts: u64,
) -> std::io::Result<Answer> {
    use std::io::Write;
    let target = format!("/keys/v{v}/{tag}/{action}");
    let scheme = if v == 1 { Scheme::V1 } else { Scheme::V2 };
    let ts = ts.to_string();
    let sig = signature(
        scheme,
        c.secret.as_bytes(),
        "POST",
        &target,
        &ts,
        &c.access,
        &c.api,
    );
    let body = body.to_string();
    let mut conn = Conn::open(addr)?;
    write!(
        conn.stream,
        "POST {target} HTTP/1.1\r\nHost: t\r\nx-ncp-apigw-timestamp: {ts}\r\nx-ncp-iam-access-key: {}\r\n\
         x-ncp-apigw-signature-v{v}: {sig}\r\nx-ncp-apigw-api-key: {}\r\nContent-Length: {}\r\n\r\n{body}",
        c.access,
        c.api,
        body.len()
    )?;
    read_answer(&mut conn.reader)
}

/// [`try_call_at`], which must get an answer.
pub fn call_at(
    addr: SocketAddr,
    c: &Creds,
    v: u8,
    tag: &str,
    action: &str,
    body: &Value,
    ts: u64,
) -> Answer {
    try_call_at(addr, c, v, tag, action, body, ts)
        .unwrap_or_else(|e| panic!("{action} on {addr}: no answer: {e}"))
}

/// A timestamp no other call of this process used: each signed request is
/// accepted once (the signature covers method, path, timestamp and access
/// key, not the body), so two calls must never sign the same one. Strictly
/// increasing, and now unless calls come faster than one per millisecond
/// (then a little ahead: the server accepts 5 minutes either way).
pub fn unique_ts() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now_ms().max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// A signed call with a timestamp of its own ([`unique_ts`]).
pub fn call(addr: SocketAddr, c: &Creds, v: u8, tag: &str, action: &str, body: &Value) -> Answer {
    call_at(addr, c, v, tag, action, body, unique_ts())
}

/// [`call`], giving back the I/O error instead of panicking.
pub fn try_call(
    addr: SocketAddr,
    c: &Creds,
    v: u8,
    tag: &str,
    action: &str,
    body: &Value,
) -> std::io::Result<Answer> {
    try_call_at(addr, c, v, tag, action, body, unique_ts())
}
