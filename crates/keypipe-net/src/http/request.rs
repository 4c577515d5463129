//! HTTP/1.1 request parsing (sans-IO): bytes in, a [`Request`] or a
//! [`HttpError`] naming the status to answer out.
//!
//! One concept, in one file: a [`Request`] is ranges into the head its
//! [`RequestParser`] kept, so the two are written together; most of the
//! length is tests (framing, limits, request smuggling guards).
//!
//! Bodies framed by `Content-Length` or `Transfer-Encoding: chunked` (any
//! method, GET included). A message with both, or with a transfer coding
//! other than `chunked`, is refused (request smuggling guard).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::HttpError;
use super::chunked::Chunked;
use crate::tls::PeerIdentity;

/// Size limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line plus headers, bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Longest body, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Most chunks of a chunked body (400 beyond).
    pub max_chunks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            max_chunks: 65_536,
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
            // The path only: a query may carry credentials.
            .field("path", &self.path())
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

/// Parses one request from the front of `buf` (a parser of its own: see
/// [`RequestParser`] for a connection's).
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
    RequestParser::default().parse(buf, limits)
}

/// What the head of a request said.
struct Head {
    method: Method,
    target: Range<usize>,
    head: Vec<u8>,
    fields: Vec<(Range<usize>, Range<usize>)>,
    keep_alive: bool,
    http10: bool,
    expects_continue: bool,
    /// `Content-Length`, or `None` for a chunked body.
    length: Option<usize>,
}

/// A connection's request parser: it keeps what it learnt between reads,
/// so every received byte is examined a bounded number of times however
/// the request is cut (the head's end is looked for in new bytes only,
/// the head is parsed once, a chunked body decoded incrementally).
/// `buf` must grow only at its end between calls until a request is
/// complete.
#[derive(Default)]
pub struct RequestParser {
    /// Bytes of the head already searched for its end.
    scanned: usize,
    head: Option<Head>,
    chunked: Option<Chunked>,
}

impl std::fmt::Debug for RequestParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestParser")
            .field("scanned", &self.scanned)
            .field("head", &self.head.is_some())
            .finish_non_exhaustive()
    }
}

impl RequestParser {
    /// Parses the request at the front of `buf`.
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
        if self.head.is_none() {
            let Some(head_len) = self.find_head_end(buf, limits)? else {
                return Ok(Parsed::Partial {
                    expects_continue: false,
                });
            };
            self.head = Some(parse_head(&buf[..head_len])?);
        }
        let head = self.head.as_ref().expect("parsed above");
        let head_len = head.head.len();
        let rest = &buf[head_len..];
        let (body, body_len) = match head.length {
            Some(n) => {
                if n > limits.max_body_bytes {
                    return Err(HttpError::BODY_TOO_LARGE);
                }
                if rest.len() < n {
                    return Ok(Parsed::Partial {
                        expects_continue: head.expects_continue,
                    });
                }
                (Zeroizing::new(rest[..n].to_vec()), n)
            }
            None => {
                let decoder = self.chunked.get_or_insert_with(Chunked::new);
                match decoder.advance(rest, limits.max_body_bytes, limits.max_chunks)? {
                    Some(used) => (decoder.take_body(), used),
                    None => {
                        return Ok(Parsed::Partial {
                            expects_continue: head.expects_continue,
                        });
                    }
                }
            }
        };
        let head = self.head.take().expect("parsed above");
        *self = RequestParser::default();
        Ok(Parsed::Complete(
            Request {
                method: head.method,
                target: head.target,
                head: head.head,
                fields: head.fields,
                body,
                keep_alive: head.keep_alive,
                http10: head.http10,
                peer: None,
            },
            head_len + body_len,
        ))
    }

    /// The length of the head (through its empty line) once it is whole,
    /// looking only at bytes not searched before; a bare LF is refused.
    fn find_head_end(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, HttpError> {
        for i in self.scanned..buf.len() {
            if buf[i] != b'\n' {
                continue;
            }
            if i == 0 || buf[i - 1] != b'\r' {
                return Err(HttpError::bad_request("bare LF in the request head"));
            }
            if i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n" {
                return if i + 1 > limits.max_header_bytes {
                    Err(HttpError::HEADER_TOO_LARGE)
                } else {
                    Ok(Some(i + 1))
                };
            }
        }
        self.scanned = buf.len();
        if buf.len() > limits.max_header_bytes {
            return Err(HttpError::HEADER_TOO_LARGE);
        }
        Ok(None)
    }

    /// Input bytes the chunked decoder examined (tests: linear work).
    #[cfg(test)]
    fn chunked_work(&self) -> usize {
        self.chunked.as_ref().map_or(0, |c| c.work)
    }
}

/// Parses a whole head (request line, fields, empty line).
fn parse_head(buf: &[u8]) -> Result<Head, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n == buf.len() => {}
        Ok(_) => return Err(HttpError::bad_request("malformed request head")),
        Err(httparse::Error::Version) => return Err(HttpError::VERSION),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HEADER_TOO_LARGE),
        Err(e) => return Err(HttpError::bad_request(httparse_reason(e))),
    }
    let minor = req.version.unwrap_or(1);
    let method = Method::parse(req.method.unwrap_or(""));
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut host = false;
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
            if minor == 0 {
                return Err(HttpError::bad_request(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            if !h.value.eq_ignore_ascii_case(b"chunked") || chunked {
                return Err(HttpError::NOT_IMPLEMENTED);
            }
            chunked = true;
        } else if is("host") {
            if host {
                return Err(HttpError::bad_request("more than one Host header"));
            }
            host = true;
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
    if minor >= 1 && !host {
        return Err(HttpError::bad_request("Host header required in HTTP/1.1"));
    }
    if chunked && content_length.is_some() {
        return Err(HttpError::bad_request(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(Head {
        method,
        target,
        head: buf.to_vec(),
        fields,
        keep_alive: !connection_close,
        http10: minor == 0,
        expects_continue,
        length: if chunked {
            None
        } else {
            Some(content_length.unwrap_or(0))
        },
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &[u8]) -> (Request, usize) {
        match parse(raw, &Limits::default()) {
            Ok(Parsed::Complete(r, n)) => (r, n),
            other => panic!("not complete: {other:?}"),
        }
    }

    fn status(raw: &[u8], limits: &Limits) -> u16 {
        match parse(raw, limits) {
            Ok(Parsed::Complete(..)) => 0,
            Ok(Parsed::Partial { .. }) => 1,
            Err(e) => e.status,
        }
    }

    #[test]
    fn content_length_body_and_pipelining() {
        let raw = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
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
    fn chunked_body_in_pieces_with_one_parser() {
        let raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n";
        for cut in 0..raw.len() {
            assert!(matches!(
                parse(&raw[..cut], &Limits::default()),
                Ok(Parsed::Partial { .. })
            ));
        }
        // One parser fed a growing buffer, a byte at a time.
        let mut parser = RequestParser::default();
        for cut in 1..raw.len() {
            assert!(matches!(
                parser.parse(&raw[..cut], &Limits::default()),
                Ok(Parsed::Partial { .. })
            ));
        }
        let Ok(Parsed::Complete(r, n)) = parser.parse(raw, &Limits::default()) else {
            panic!("not complete");
        };
        assert_eq!((r.body.as_slice(), n), (&b"abcde"[..], raw.len()));
    }

    /// Security review F11: 2 MiB of one-byte chunks, received in 8 KiB
    /// reads, is decoded looking at each byte a bounded number of times
    /// (before: every read re-decoded the whole body, quadratic).
    #[test]
    fn a_body_of_one_byte_chunks_costs_linear_work() {
        let chunks = 2 << 20;
        let mut raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let head = raw.len();
        for _ in 0..chunks {
            raw.extend_from_slice(b"1\r\nX\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        let limits = Limits {
            max_body_bytes: 4 << 20,
            max_chunks: 4 << 20,
            ..Limits::default()
        };
        let mut parser = RequestParser::default();
        let mut end = 0;
        let (r, used) = loop {
            end = (end + 8192).min(raw.len());
            match parser.parse(&raw[..end], &limits).unwrap() {
                Parsed::Complete(r, n) => break (r, n),
                Parsed::Partial { .. } => assert!(end < raw.len()),
            }
            assert!(
                parser.chunked_work() <= 2 * end,
                "work {} after {end} bytes",
                parser.chunked_work()
            );
        };
        assert_eq!((r.body.len(), used), (chunks, raw.len()));
        assert!(r.body.iter().all(|&b| b == b'X'));
        assert!(raw.len() - head > 6 * chunks);
    }

    #[test]
    fn limits_and_errors() {
        let limits = Limits {
            max_header_bytes: 64,
            max_body_bytes: 8,
            max_chunks: 2,
        };
        assert_eq!(status(&[b'a'; 65], &limits), 431);
        assert_eq!(
            status(
                b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n",
                &limits
            ),
            413
        );
        assert_eq!(
            status(
                b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n",
                &limits
            ),
            413
        );
        assert_eq!(
            status(
                b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n1\r\nb\r\n1\r\n",
                &limits
            ),
            400,
            "too many chunks"
        );
        let d = Limits::default();
        assert_eq!(status(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", &d), 505);
        assert_eq!(status(b"\x01\x02 garbage\r\n\r\n", &d), 400);
        assert_eq!(
            status(
                b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n",
                &d
            ),
            400
        );
        assert_eq!(
            status(
                b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
                &d
            ),
            501
        );
        assert_eq!(
            status(
                b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                &d
            ),
            400
        );
    }

    /// Security review F22: strict framing, as RFC 9112 asks.
    #[test]
    fn lenient_framing_is_refused() {
        let d = Limits::default();
        let te = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
        for (raw, why) in [
            ("GET / HTTP/1.1\r\n\r\n".to_owned(), "no Host in HTTP/1.1"),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_owned(),
                "two Hosts",
            ),
            (
                "GET / HTTP/1.1\nHost: h\n\n".to_owned(),
                "bare LF in the head",
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n".to_owned(),
                "one bare LF in the head",
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_owned(),
                "TE from HTTP/1.0",
            ),
            (
                format!("{te} 3\r\nabc\r\n0\r\n\r\n"),
                "space before the size",
            ),
            (
                format!("{te}3 \r\nabc\r\n0\r\n\r\n"),
                "space after the size",
            ),
            (format!("{te}3\nabc\r\n0\r\n\r\n"), "bare LF after the size"),
            (
                format!("{te}3;\x01\r\nabc\r\n0\r\n\r\n"),
                "control character in an extension",
            ),
            (
                format!("{te}3\r\nabcX\r\n0\r\n\r\n"),
                "data longer than its size",
            ),
            (format!("{te}0\r\nT: v\n\r\n"), "bare LF in a trailer"),
            (
                format!(
                    "{te}0\r\n{}\r\n",
                    "T: vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\n"
                        .repeat(80)
                ),
                "trailer too large",
            ),
            (format!("{te}123456789\r\n"), "size of 9 digits"),
        ] {
            assert_eq!(status(raw.as_bytes(), &d), 400, "{why}");
        }
        // Still accepted: HTTP/1.0 without Host, extensions, trailers.
        assert_eq!(status(b"GET / HTTP/1.0\r\n\r\n", &d), 0);
        assert_eq!(
            status(
                format!("{te}3;a=b;c\r\nabc\r\n0\r\nT: v\r\n\r\n").as_bytes(),
                &d
            ),
            0
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
            !complete(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
        let head =
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(
            parse(head, &Limits::default()),
            Ok(Parsed::Partial {
                expects_continue: true
            })
        ));
    }
}
