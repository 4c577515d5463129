//! HTTP/1.1 responses, serialized into `bytes` buffers.
//!
//! Framing rules kept here once for every protocol: 1xx and 204 carry no
//! `Content-Length` and no content; 205 carries `Content-Length: 0` and no
//! content (RFC 9110 §15.3.6); a HEAD answer carries the length of the GET
//! answer but no content.

use std::borrow::Cow;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

/// One response. Its body may be secret (a KMS decrypt answer): the
/// connection wipes the body and the serialized bytes once sent, and
/// `Debug` shows only the body's length.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra header fields (`Content-Length` and `Connection` are added).
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// Content (ignored for 204 and 205).
    pub body: Bytes,
    /// Close the connection after this response.
    pub close: bool,
    /// Not sent before this instant (a deliberate delay, e.g. after a
    /// failed login). The worker holds the answer without blocking; later
    /// answers on the same connection wait behind it, in order.
    pub hold_until: Option<Instant>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Response {
    /// An empty response with `status`.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            close: false,
            hold_until: None,
        }
    }

    /// A JSON response.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Self::empty(status)
            .header("Content-Type", "application/json")
            .body(body)
    }

    /// Adds a header field.
    pub fn header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Sets the content.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Holds the response back until `when` (see [`Response::hold_until`]).
    pub fn held_until(mut self, when: Instant) -> Self {
        self.hold_until = Some(when);
        self
    }

    /// Marks the connection to be closed after this response.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Appends the serialized response to `out`. `head_only`: the request
    /// was HEAD. `connection`: the `Connection` header to add, if any. A
    /// 503 without a `Retry-After` header gets `Retry-After: 1`.
    pub fn write_to(&self, out: &mut BytesMut, head_only: bool, connection: Connection) {
        let no_content = matches!(self.status, 100..=199 | 204 | 205 | 304);
        out.reserve(128 + self.body.len());
        out.put_slice(b"HTTP/1.1 ");
        put_u64(out, u64::from(self.status));
        out.put_u8(b' ');
        out.put_slice(reason(self.status).as_bytes());
        out.put_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        // Every 503 says when to come back (1 s unless the handler said).
        if self.status == 503
            && !self
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("retry-after"))
        {
            out.put_slice(b"Retry-After: 1\r\n");
        }
        match self.status {
            100..=199 | 204 | 304 => {}
            205 => out.put_slice(b"Content-Length: 0\r\n"),
            _ => {
                out.put_slice(b"Content-Length: ");
                put_u64(out, self.body.len() as u64);
                out.put_slice(b"\r\n");
            }
        }
        match connection {
            Connection::Omit => {}
            Connection::Close => out.put_slice(b"Connection: close\r\n"),
            Connection::KeepAlive => out.put_slice(b"Connection: keep-alive\r\n"),
        }
        out.put_slice(b"\r\n");
        if !no_content && !head_only {
            out.put_slice(&self.body);
        }
    }
}

/// The `Connection` header of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// None: HTTP/1.1 keep-alive is the default.
    Omit,
    /// `Connection: close`: the connection ends after this response.
    Close,
    /// `Connection: keep-alive`: confirms keep-alive to an HTTP/1.0 client.
    KeepAlive,
}

fn put_u64(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// The reason phrase of `status`.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        205 => "Reset Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Response, head: bool, close: bool) -> String {
        let mut out = BytesMut::new();
        let connection = if close {
            Connection::Close
        } else {
            Connection::Omit
        };
        r.write_to(&mut out, head, connection);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn framing_per_status() {
        let ok = Response::json(201, "{}");
        assert_eq!(
            text(&ok, false, false),
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        assert_eq!(
            text(&ok, true, true),
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            text(&Response::empty(204).body("x"), false, false),
            "HTTP/1.1 204 No Content\r\n\r\n"
        );
        assert_eq!(
            text(&Response::empty(205).body("x"), false, false),
            "HTTP/1.1 205 Reset Content\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn every_503_says_when_to_come_back() {
        assert!(text(&Response::empty(503), false, false).contains("\r\nRetry-After: 1\r\n"));
        let own = text(
            &Response::empty(503).header("Retry-After", "5"),
            false,
            false,
        );
        assert!(own.contains("Retry-After: 5") && !own.contains("Retry-After: 1"));
        assert!(!text(&Response::empty(500), false, false).contains("Retry-After"));
    }
}
