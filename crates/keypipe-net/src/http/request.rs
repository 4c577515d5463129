//! HTTP/1.1 request parsing (sans-IO): bytes in, a [`Request`] or a
//! [`HttpError`] naming the status to answer out.
//!
//! Bodies framed by `Content-Length` or `Transfer-Encoding: chunked` (any
//! method, GET included). A message with both, or with a transfer coding
//! other than `chunked`, is refused (request smuggling guard).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::HttpError;
use crate::tls::PeerIdentity;

/// Size limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line plus headers, bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Longest body, bytes (413 beyond).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// Most header fields a request may have (431 beyond).
const MAX_HEADERS: usize = 64;

/// Request methods keypipe serves; anything else is [`Method::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// Any other method.
    Other,
}

impl Method {
    fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }

    /// The method's name (`"OTHER"` for [`Method::Other`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Other => "OTHER",
        }
    }
}

/// One parsed request. The body may carry key material (the KMS side of
/// ETSI 004), so it is zeroized on drop; `Debug` never shows it.
pub struct Request {
    /// The method.
    pub method: Method,
    /// The raw request target (path and query): a range of `head`.
    target: Range<usize>,
    /// The request head as received (request line and header fields).
    head: Vec<u8>,
    /// Name and value ranges of each header field in `head`, in order.
    fields: Vec<(Range<usize>, Range<usize>)>,
    /// The decoded body.
    pub body: Zeroizing<Vec<u8>>,
    /// The client wants the connection kept open after the answer.
    pub keep_alive: bool,
    /// The request is HTTP/1.0 (keep-alive must then be confirmed).
    pub http10: bool,
    /// Who sent it (set by the server; `None` for a request parsed alone).
    pub peer: Option<Arc<Peer>>,
}

/// The other end of a connection, as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// The connection is TLS.
    pub tls: bool,
    /// The identity of the client certificate it presented (verified).
    pub identity: Option<PeerIdentity>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target())
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// The raw request target (path and query), as received.
    pub fn target(&self) -> &str {
        // httparse checked the target's characters: ASCII.
        std::str::from_utf8(&self.head[self.target.clone()]).unwrap_or("/")
    }

    /// The path part of the target.
    pub fn path(&self) -> &str {
        let target = self.target();
        target.split_once('?').map_or(target, |(p, _)| p)
    }

    /// The query part of the target, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }

    /// The first header field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every header field, in order: name and value.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(n, v)| {
            // Names passed httparse's token check: ASCII.
            let name = std::str::from_utf8(&self.head[n.clone()]).unwrap_or("");
            (name, &self.head[v.clone()])
        })
    }
}

/// Outcome of [`parse`] on the bytes received so far.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed. `expects_continue`: the head is complete and
    /// asked for `100 Continue` before sending its body.
    Partial {
        /// Answer `100 Continue` now.
        expects_continue: bool,
    },
    /// A whole request, and how many bytes of the input it used.
    Complete(Request, usize),
}

/// Parses one request from the front of `buf`.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(HttpError::HEADER_TOO_LARGE);
            }
            return Ok(Parsed::Partial {
                expects_continue: false,
            });
        }
        Err(httparse::Error::Version) => return Err(HttpError::VERSION),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HEADER_TOO_LARGE),
        Err(e) => return Err(HttpError::bad_request(httparse_reason(e))),
    };
    if head_len > limits.max_header_bytes {
        return Err(HttpError::HEADER_TOO_LARGE);
    }
    let minor = req.version.unwrap_or(1);
    let method = Method::parse(req.method.unwrap_or(""));
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut connection_close = minor == 0;
    let mut expects_continue = false;
    let mut fields = Vec::with_capacity(req.headers.len());
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let target = req.path.map_or(0..0, |p| range(p.as_bytes()));
    for h in req.headers.iter() {
        fields.push((range(h.name.as_bytes()), range(h.value)));
        let name = h.name.as_bytes();
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or(HttpError::bad_request("invalid Content-Length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(HttpError::bad_request("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if is("transfer-encoding") {
            if !h.value.eq_ignore_ascii_case(b"chunked") || chunked {
                return Err(HttpError::NOT_IMPLEMENTED);
            }
            chunked = true;
        } else if is("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    connection_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                    connection_close = false;
                }
            }
        } else if is("expect") && h.value.eq_ignore_ascii_case(b"100-continue") {
            // HTTP/1.0 clients never get 1xx answers (RFC 9110 §15.2).
            expects_continue = minor >= 1;
        }
    }
    if chunked && content_length.is_some() {
        return Err(HttpError::bad_request(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let rest = &buf[head_len..];
    let (body, body_len) = if chunked {
        match decode_chunked(rest, limits.max_body_bytes)? {
            Some(decoded) => decoded,
            None => return Ok(Parsed::Partial { expects_continue }),
        }
    } else {
        let n = content_length.unwrap_or(0);
        if n > limits.max_body_bytes {
            return Err(HttpError::BODY_TOO_LARGE);
        }
        if rest.len() < n {
            return Ok(Parsed::Partial { expects_continue });
        }
        (Zeroizing::new(rest[..n].to_vec()), n)
    };
    Ok(Parsed::Complete(
        Request {
            method,
            target,
            head: buf[..head_len].to_vec(),
            fields,
            body,
            keep_alive: !connection_close,
            http10: minor == 0,
            peer: None,
        },
        head_len + body_len,
    ))
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid request line",
        _ => "malformed request",
    }
}

/// A decoded body and the bytes of input it used.
type Decoded = (Zeroizing<Vec<u8>>, usize);

/// Decodes a chunked body at the front of `buf`: `None` while incomplete,
/// else the body and the bytes used (chunks, trailer and final CRLF).
fn decode_chunked(buf: &[u8], max_body: usize) -> Result<Option<Decoded>, HttpError> {
    let mut body = Zeroizing::new(Vec::new());
    let mut pos = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[pos..]) else {
            if buf.len() - pos > 1024 {
                return Err(HttpError::bad_request("chunk size line too long"));
            }
            return Ok(None);
        };
        let line = &buf[pos..pos + line_end];
        let size_hex = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or(&[])
            .trim_ascii();
        let size = std::str::from_utf8(size_hex)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 8)
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or(HttpError::bad_request("invalid chunk size"))?;
        pos += line_end + 2;
        if size == 0 {
            // Trailer fields, ignored, up to an empty line.
            loop {
                let Some(end) = find_crlf(&buf[pos..]) else {
                    return Ok(None);
                };
                pos += end + 2;
                if end == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if body.len() + size > max_body {
            return Err(HttpError::BODY_TOO_LARGE);
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(HttpError::bad_request("chunk not followed by CRLF"));
        }
        if body.capacity() < body.len() + size {
            // Grow by hand so no unwiped copy of the body is left behind.
            let mut bigger = Zeroizing::new(Vec::with_capacity((body.len() + size).max(256) * 2));
            bigger.extend_from_slice(&body);
            body = bigger;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &[u8]) -> (Request, usize) {
        match parse(raw, &Limits::default()) {
            Ok(Parsed::Complete(r, n)) => (r, n),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn content_length_body_and_pipelining() {
        let raw = b"GET /a?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n";
        let (r, n) = complete(raw);
        assert_eq!(
            (r.method, r.path(), r.query()),
            (Method::Get, "/a", Some("x=1"))
        );
        assert_eq!(r.body.as_slice(), b"abc");
        assert!(r.keep_alive);
        let (r2, n2) = complete(&raw[n..]);
        assert_eq!(r2.path(), "/b");
        assert_eq!(n + n2, raw.len());
    }

    #[test]
    fn chunked_body_in_pieces() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n";
        for cut in 0..raw.len() {
            assert!(matches!(
                parse(&raw[..cut], &Limits::default()),
                Ok(Parsed::Partial { .. })
            ));
        }
        let (r, n) = complete(raw);
        assert_eq!((r.body.as_slice(), n), (&b"abcde"[..], raw.len()));
    }

    #[test]
    fn limits_and_errors() {
        let limits = Limits {
            max_header_bytes: 64,
            max_body_bytes: 8,
        };
        let status = |raw: &[u8]| parse(raw, &limits).map(|_| 0).unwrap_or_else(|e| e.status);
        assert_eq!(status(&[b'a'; 65]), 431);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: 9\r\n\r\n"), 413);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n"),
            413
        );
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status(b"\x01\x02 garbage\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
    }

    #[test]
    fn connection_semantics() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
        let head = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(
            parse(head, &Limits::default()),
            Ok(Parsed::Partial {
                expects_continue: true
            })
        ));
    }
}
