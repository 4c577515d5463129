//! Non-blocking outbound HTTP/1.1 client: one keep-alive connection per
//! origin and lane, requests pipelined (up to `max_in_flight` unanswered),
//! answers matched in order, and retry with backoff of everything not yet
//! accepted.
//!
//! A request stays queued, bytes unchanged, until the caller's callback
//! accepts its answer; only then is it dropped (its buffer is zeroizing, so
//! key material in it is wiped). A refused answer, a broken connection or a
//! silent peer resends every unaccepted request, in order. Requests carry
//! the caller's own typed id, handed back with the answer.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::{ClientConfig, ClientConnection};
use rustls_pki_types::ServerName;
use zeroize::Zeroizing;

use super::transport::Transport;

const WAKER: Token = Token(usize::MAX);
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Largest answer body accepted (answers to pushes and link sync are tiny).
const MAX_ANSWER_BODY: usize = 64 * 1024;
/// Most bytes buffered for answers not yet whole (a peer that never ends
/// its header block is cut off).
const MAX_ANSWER_BUFFER: usize = MAX_ANSWER_BODY + 64 * 1024;
/// An origin that leaves requests unanswered this long is reconnected.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Where requests go: `http[s]://host:port[/base]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// `https://`: the connection is TLS.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path prefix without a trailing `/` (may be empty).
    pub base_path: String,
    /// The address to connect to: set by [`Origin::parse`] for an IP
    /// literal, by [`Origin::resolve`] for a name.
    pub addr: Option<SocketAddr>,
}

/// Characters allowed in a URL path (RFC 3986 `pchar` and `/`): no space,
/// no control character, no `?` or `#`, so a path can never break the
/// request line it is written into.
fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/-._~!$&'()*+,;=:@%".contains(c)
}

impl Origin {
    /// Parses an `http[s]://host[:port][/path]` URL. The host is an IPv4
    /// address, a bracketed IPv6 address or a DNS name (letters, digits,
    /// `-`, `.`); the port defaults to 80 (http) or 443 (https).
    pub fn parse(url: &str) -> Result<Origin, String> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => {
                return Err(format!(
                    "{url:?}: only http:// and https:// URLs are supported"
                ));
            }
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !path.chars().all(path_char) {
            return Err(format!(
                "{url:?}: the path may only hold URL path characters"
            ));
        }
        // `[v6]` or `[v6]:port`; `name` or `name:port`.
        let (host, port) = match authority.find(']') {
            Some(end) if authority.starts_with('[') => {
                (&authority[..=end], authority[end + 1..].strip_prefix(':'))
            }
            _ => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        if host.len() < authority.len() && port.is_none() {
            return Err(format!("{url:?}: bad host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
        };
        let (host, addr) = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => {
                let ip = v6
                    .parse::<std::net::Ipv6Addr>()
                    .map_err(|_| format!("{url:?}: bad IPv6 address"))?;
                (v6, Some(SocketAddr::from((ip, port))))
            }
            None => {
                let name_ok = !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
                if !name_ok {
                    return Err(format!("{url:?}: bad host"));
                }
                let ip = host.parse::<std::net::Ipv4Addr>().ok();
                (host, ip.map(|ip| SocketAddr::from((ip, port))))
            }
        };
        Ok(Origin {
            tls,
            host: host.to_owned(),
            port,
            base_path: path.trim_end_matches('/').to_owned(),
            addr,
        })
    }

    /// Resolves a host name (blocking: call it off the event loops).
    pub fn resolve(&mut self) -> io::Result<()> {
        if self.addr.is_none() {
            self.addr = (self.host.as_str(), self.port).to_socket_addrs()?.next();
        }
        self.addr
            .map(|_| ())
            .ok_or_else(|| io::Error::other(format!("{}: no address", self.host)))
    }

    /// The base URI in one spelling (scheme, lower-case host, port, base
    /// path without a trailing `/`): two URIs naming the same KMS compare
    /// equal whatever their case, default port or trailing slash.
    pub fn canonical(&self) -> String {
        format!("{}{}", self.url().to_ascii_lowercase(), self.base_path)
    }

    /// The URL of this origin (without its base path).
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.authority()
        )
    }

    /// True when the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.addr.is_some_and(|a| a.ip().is_loopback())
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Builds a request with a body of `content_type` (`Content-Length`
/// framing, keep-alive).
pub fn request_bytes(
    method: &str,
    origin: &Origin,
    path: &str,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(160 + body.len()));
    let head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        origin.base_path,
        origin.authority(),
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    for (name, value) in extra_headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// One queued request.
pub struct Outgoing<T> {
    /// The whole request (head and body); zeroized when dropped.
    pub bytes: Zeroizing<Vec<u8>>,
    /// The caller's id, handed back with the answer.
    pub id: T,
}

/// One answer, as the caller sees it.
#[derive(Debug)]
pub struct Answer<'a, T> {
    /// The origin it came from.
    pub origin: OriginId,
    /// The id of the request it answers.
    pub id: T,
    /// Status code.
    pub status: u16,
    /// Value of the header the client was asked to watch, if present.
    pub header: Option<&'a [u8]>,
    /// The body.
    pub body: &'a [u8],
}

/// The caller's answer handler.
pub type OnAnswer<'a, T> = dyn FnMut(Answer<'_, T>) -> Verdict + 'a;

/// The caller's verdict on an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done: drop the request.
    Accept,
    /// Not accepted: reconnect after a backoff and resend it (and every
    /// request after it).
    Retry,
}

/// Index of an origin in a [`Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OriginId(usize);

struct OriginConn<T> {
    origin: Origin,
    /// The TLS of an `https://` origin.
    tls: Option<Arc<ClientConfig>>,
    stream: Option<Transport>,
    connected: bool,
    /// When the current connection was started (handshake timeout).
    connect_at: Option<Instant>,
    /// Every request not yet accepted, oldest first.
    queue: VecDeque<Outgoing<T>>,
    /// `queue[..sent]` are written and await their answers.
    sent: usize,
    /// Bytes of `queue[sent]` already written.
    partial: usize,
    inbuf: Vec<u8>,
    retry_at: Option<Instant>,
    backoff: Duration,
    waiting_since: Option<Instant>,
}

/// The client: a mio `Poll` over one connection per origin and lane.
pub struct Client<T> {
    /// The TLS of `https://` origins that were not given their own.
    tls: Option<Arc<ClientConfig>>,
    poll: Poll,
    waker: Arc<Waker>,
    events: Events,
    conns: Vec<OriginConn<T>>,
    index: HashMap<(Origin, u8), usize>,
    max_in_flight: usize,
    watch: Option<&'static str>,
}

impl<T> std::fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("origins", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl<T: Copy> Client<T> {
    /// A client pipelining up to `max_in_flight` requests per origin; the
    /// value of answer header `watch` (lower case), if given, is handed to
    /// the caller with each answer.
    pub fn new(max_in_flight: usize, watch: Option<&'static str>) -> io::Result<Client<T>> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Client {
            tls: None,
            poll,
            waker,
            events: Events::with_capacity(256),
            conns: Vec::new(),
            index: HashMap::new(),
            max_in_flight: max_in_flight.max(1),
            watch,
        })
    }

    /// Wakes a [`Client::run`] in progress (from any thread).
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Sets the TLS of `https://` origins (those not given their own).
    pub fn set_tls(&mut self, tls: Option<Arc<ClientConfig>>) {
        self.tls = tls;
    }

    /// The id of `origin` (lane 0), added on first use.
    pub fn origin(&mut self, origin: &Origin) -> OriginId {
        self.origin_lane(origin, 0, None)
    }

    /// The id of `origin` on `lane`: each lane has its own connection and
    /// queue (link sync never waits behind pushes to the same host). An
    /// `https://` origin uses `tls`, else the client's [`Client::set_tls`].
    pub fn origin_lane(
        &mut self,
        origin: &Origin,
        lane: u8,
        tls: Option<Arc<ClientConfig>>,
    ) -> OriginId {
        if let Some(&i) = self.index.get(&(origin.clone(), lane)) {
            return OriginId(i);
        }
        self.index.insert((origin.clone(), lane), self.conns.len());
        self.conns.push(OriginConn {
            origin: origin.clone(),
            tls: tls.or_else(|| self.tls.clone()),
            stream: None,
            connected: false,
            connect_at: None,
            queue: VecDeque::new(),
            sent: 0,
            partial: 0,
            inbuf: Vec::new(),
            retry_at: None,
            backoff: FIRST_BACKOFF,
            waiting_since: None,
        });
        OriginId(self.conns.len() - 1)
    }

    /// The origin behind `id`.
    pub fn origin_of(&self, id: OriginId) -> &Origin {
        &self.conns[id.0].origin
    }

    /// Requests queued for `id` and not yet accepted.
    pub fn queued(&self, id: OriginId) -> usize {
        self.conns[id.0].queue.len()
    }

    /// True when no request is queued anywhere.
    pub fn is_idle(&self) -> bool {
        self.conns.iter().all(|c| c.queue.is_empty())
    }

    /// True when the origin is connected and not backing off.
    pub fn is_connected(&self, id: OriginId) -> bool {
        let c = &self.conns[id.0];
        c.connected && c.retry_at.is_none()
    }

    /// Queues a request for `id`.
    pub fn enqueue(&mut self, id: OriginId, request: Outgoing<T>) {
        self.conns[id.0].queue.push_back(request);
    }

    /// Drops (and zeroizes) every request of `id` matching `pred` that has
    /// not started on the wire; returns how many.
    pub fn drop_unsent(&mut self, id: OriginId, pred: impl Fn(&T) -> bool) -> usize {
        let c = &mut self.conns[id.0];
        let first_unsent = c.sent + usize::from(c.partial > 0);
        let before = c.queue.len();
        let mut i = 0;
        c.queue.retain(|r| {
            let keep = i < first_unsent || !pred(&r.id);
            i += 1;
            keep
        });
        before - c.queue.len()
    }

    /// Drops (and zeroizes) the `n` oldest requests of `id` whose id
    /// satisfies `pred`; returns how many were dropped. The connection is
    /// restarted if any of them was in flight (the others are resent).
    pub fn drop_oldest(&mut self, id: OriginId, n: usize, pred: impl Fn(&T) -> bool) -> usize {
        let c = &mut self.conns[id.0];
        let mut left = n;
        let mut in_flight = false;
        let mut i = 0;
        while i < c.queue.len() && left > 0 {
            if pred(&c.queue[i].id) {
                in_flight |= i < c.sent || (i == c.sent && c.partial > 0);
                c.queue.remove(i);
                left -= 1;
            } else {
                i += 1;
            }
        }
        if in_flight {
            c.reset(None);
        }
        n - left
    }

    /// Moves requests for at most `timeout`: connects, writes, reads
    /// answers and hands each to `on_answer`.
    pub fn run(&mut self, timeout: Duration, on_answer: &mut OnAnswer<'_, T>) -> io::Result<()> {
        let now = Instant::now();
        let watch = self.watch;
        for (i, c) in self.conns.iter_mut().enumerate() {
            c.step(i, &self.poll, now, self.max_in_flight, watch, on_answer);
        }
        let mut wait = timeout;
        for c in &self.conns {
            if let Some(t) = c.retry_at.filter(|_| !c.queue.is_empty()) {
                wait = wait.min(t.saturating_duration_since(now));
            }
        }
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let ready: Vec<usize> = self
            .events
            .iter()
            .map(|e| e.token().0)
            .filter(|&t| t < self.conns.len())
            .collect();
        let now = Instant::now();
        for i in ready {
            self.conns[i].step(i, &self.poll, now, self.max_in_flight, watch, on_answer);
        }
        Ok(())
    }
}

impl<T: Copy> OriginConn<T> {
    /// Drives this origin's connection as far as it goes without blocking.
    fn step(
        &mut self,
        me: usize,
        poll: &Poll,
        now: Instant,
        max_in_flight: usize,
        watch: Option<&'static str>,
        on_answer: &mut OnAnswer<'_, T>,
    ) {
        if self.queue.is_empty() && self.stream.is_none() {
            return;
        }
        if self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.retry_at = None;
        if self.stream.is_none()
            && let Err(e) = self.connect(me, poll, now)
        {
            tracing::debug!(origin = %self.origin.authority(), "connect failed: {e}");
            self.reset(Some(now));
            return;
        }
        if !self.connected {
            match self
                .stream
                .as_mut()
                .map(|s| (s.tcp().take_error(), s.tcp().peer_addr()))
            {
                Some((Ok(None), Ok(_))) => self.connected = true,
                Some((Ok(None), Err(e))) if e.kind() == io::ErrorKind::NotConnected => return,
                _ => {
                    self.reset(Some(now));
                    return;
                }
            }
        }
        if let Err(e) = self.read_answers(me, now, watch, on_answer) {
            tracing::debug!(origin = %self.origin.authority(), "connection dropped: {e}");
            self.reset(Some(now));
            return;
        }
        if self.retry_at.is_some() {
            return;
        }
        if let Err(e) = self.write_requests(max_in_flight) {
            tracing::debug!(origin = %self.origin.authority(), "write failed: {e}");
            self.reset(Some(now));
            return;
        }
        let handshaking = self.stream.as_ref().is_some_and(Transport::is_handshaking);
        if handshaking
            && self
                .connect_at
                .is_some_and(|t| now.duration_since(t) > ANSWER_TIMEOUT)
        {
            tracing::warn!(origin = %self.origin.authority(), "TLS handshake timed out, reconnecting");
            self.reset(Some(now));
            return;
        }
        if self.sent > 0 {
            let since = *self.waiting_since.get_or_insert(now);
            if now.duration_since(since) > ANSWER_TIMEOUT {
                tracing::warn!(origin = %self.origin.authority(), "no answer, reconnecting");
                self.reset(Some(now));
            }
        } else {
            self.waiting_since = None;
        }
    }

    fn connect(&mut self, me: usize, poll: &Poll, now: Instant) -> io::Result<()> {
        // Resolved beforehand: the outbound loop never blocks on DNS.
        let addr = self
            .origin
            .addr
            .ok_or_else(|| io::Error::other("host name not resolved"))?;
        let session = match (self.origin.tls, &self.tls) {
            (false, _) => None,
            (true, None) => {
                return Err(io::Error::other(
                    "https:// origin but no TLS client settings ([tls] ca, cert, key)",
                ));
            }
            (true, Some(config)) => {
                let name = ServerName::try_from(self.origin.host.clone())
                    .map_err(|e| io::Error::other(format!("TLS server name: {e}")))?;
                Some(ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?)
            }
        };
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        poll.registry().register(
            &mut stream,
            Token(me),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.stream = Some(match session {
            Some(session) => Transport::tls(stream, session),
            None => Transport::plain(stream),
        });
        self.connected = false;
        self.connect_at = Some(now);
        Ok(())
    }

    /// Forgets the connection; with `failed_at`, waits a growing backoff
    /// before reconnecting. Everything queued will be sent again.
    fn reset(&mut self, failed_at: Option<Instant>) {
        self.stream = None;
        self.connected = false;
        self.connect_at = None;
        self.sent = 0;
        self.partial = 0;
        self.inbuf.clear();
        self.waiting_since = None;
        if let Some(t) = failed_at {
            self.retry_at = Some(t + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn write_requests(&mut self, max_in_flight: usize) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        while self.sent < self.queue.len() && self.sent < max_in_flight {
            let end = self.queue.len().min(max_in_flight);
            let slices: Vec<IoSlice<'_>> = self
                .queue
                .range(self.sent..end)
                .enumerate()
                .map(|(i, r)| IoSlice::new(&r.bytes[if i == 0 { self.partial } else { 0 }..]))
                .collect();
            let mut n = match stream.write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            while n > 0 {
                let left = self.queue[self.sent].bytes.len() - self.partial;
                if n >= left {
                    n -= left;
                    self.sent += 1;
                    self.partial = 0;
                } else {
                    self.partial += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    fn read_answers(
        &mut self,
        me: usize,
        now: Instant,
        watch: Option<&'static str>,
        on_answer: &mut OnAnswer<'_, T>,
    ) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => {
                    self.parse_answers(me, now, watch, on_answer)?;
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    if self.inbuf.len() > MAX_ANSWER_BUFFER {
                        // Parse what is whole first (every turn reads on).
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.parse_answers(me, now, watch, on_answer)?;
        if self.inbuf.len() > MAX_ANSWER_BUFFER {
            // An answer never whole within the bound cuts the connection.
            return Err(io::Error::other("answer too large"));
        }
        Ok(())
    }

    fn parse_answers(
        &mut self,
        me: usize,
        now: Instant,
        watch: Option<&'static str>,
        on_answer: &mut OnAnswer<'_, T>,
    ) -> io::Result<()> {
        let mut used = 0;
        while used < self.inbuf.len() {
            let Some(parsed) = parse_answer(&self.inbuf[used..], watch)? else {
                break;
            };
            let body = &self.inbuf[used + parsed.head..used + parsed.head + parsed.body];
            let header = parsed.header.map(|(a, b)| &self.inbuf[used + a..used + b]);
            used += parsed.head + parsed.body;
            if (100..200).contains(&parsed.status) {
                continue;
            }
            if self.sent == 0 {
                return Err(io::Error::other("answer to no request"));
            }
            let id = self.queue[0].id;
            self.waiting_since = Some(now);
            let answer = Answer {
                origin: OriginId(me),
                id,
                status: parsed.status,
                header,
                body,
            };
            match on_answer(answer) {
                Verdict::Accept => {
                    self.queue.pop_front();
                    self.sent -= 1;
                    self.backoff = FIRST_BACKOFF;
                }
                Verdict::Retry => {
                    self.reset(Some(now));
                    return Ok(());
                }
            }
        }
        self.inbuf.drain(..used);
        Ok(())
    }
}

/// One answer at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParsedAnswer {
    /// Its status code.
    pub(crate) status: u16,
    /// Bytes of its head.
    pub(crate) head: usize,
    /// Bytes of its body.
    pub(crate) body: usize,
    /// Where the watched header's value lies in the buffer.
    pub(crate) header: Option<(usize, usize)>,
}

/// One answer at the front of `buf`, whole, or `None` when more is needed.
pub(crate) fn parse_answer(buf: &[u8], watch: Option<&str>) -> io::Result<Option<ParsedAnswer>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::other(format!("bad answer: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let header = watch.and_then(|name| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| {
                let start = h.value.as_ptr() as usize - buf.as_ptr() as usize;
                (start, start + h.value.len())
            })
    });
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| io::Error::other("bad Content-Length in answer"))
        })
        .transpose()?;
    let body = match (status, length) {
        (100..=199 | 204 | 304, _) => 0,
        (_, Some(n)) if n <= MAX_ANSWER_BODY => n,
        (_, Some(_)) => return Err(io::Error::other("answer body too large")),
        (_, None) => return Err(io::Error::other("answer without Content-Length")),
    };
    Ok((buf.len() >= head + body).then_some(ParsedAnswer {
        status,
        head,
        body,
        header,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_content_length_is_an_error_not_a_panic() {
        let answer = b"HTTP/1.1 201 Created\r\nContent-Length: 18446744073709551615\r\n\r\n";
        assert!(parse_answer(answer, None).is_err());
        let ok = b"HTTP/1.1 201 Created\r\nX-Mac: ab\r\nContent-Length: 2\r\n\r\n{}";
        let parsed = parse_answer(ok, Some("x-mac")).unwrap().unwrap();
        assert_eq!(
            (parsed.status, parsed.head, parsed.body),
            (201, ok.len() - 2, 2)
        );
        let (a, b) = parsed.header.unwrap();
        assert_eq!(&ok[a..b], b"ab");
    }

    #[test]
    fn dropping_a_partly_written_request_restarts_the_connection() {
        let mut client: Client<u32> = Client::new(8, None).unwrap();
        let id = client.origin(&Origin::parse("http://127.0.0.1:9").unwrap());
        for tag in [1, 2, 3, 4] {
            let bytes = Zeroizing::new(vec![b'x'; 100]);
            client.enqueue(id, Outgoing { bytes, id: tag });
        }
        let c = &mut client.conns[id.0];
        c.connected = true;
        c.partial = 40; // request 1 is partly on the wire
        assert_eq!(
            client.drop_unsent(id, |&t| t != 4),
            2,
            "2 and 3, not the half-sent 1"
        );
        assert_eq!(client.queued(id), 2);
        assert_eq!(client.drop_oldest(id, 1, |&t| t == 1), 1);
        let c = &client.conns[id.0];
        assert_eq!((c.partial, c.sent, c.queue.len()), (0, 0, 1));
        assert!(!c.connected, "the half-sent request must not be spliced");
        let lane = client.origin_lane(&Origin::parse("http://127.0.0.1:9").unwrap(), 1, None);
        assert_ne!(lane, id, "a lane has its own connection");
    }

    #[test]
    fn origins() {
        let o = Origin::parse("http://127.0.0.1:7004/kms/").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.base_path.as_str()),
            ("127.0.0.1", 7004, "/kms")
        );
        assert_eq!(Origin::parse("http://h").unwrap().port, 80);
        assert_eq!(
            Origin::parse("http://[::1]:9").unwrap().authority(),
            "[::1]:9"
        );
        let canon = |u: &str| Origin::parse(u).unwrap().canonical();
        assert_eq!(
            canon("https://KMS.example"),
            canon("https://kms.example:443/")
        );
        assert_eq!(canon("http://h:80/k/"), "http://h:80/k");
        assert_ne!(canon("http://h"), canon("https://h"));
        assert_ne!(canon("http://h/a"), canon("http://h/b"));
        assert_ne!(canon("http://h:81"), canon("http://h"));
        let secure = Origin::parse("https://kms.example:8443/base").unwrap();
        assert!(secure.tls && secure.port == 8443);
        assert_eq!(Origin::parse("https://h").unwrap().port, 443);
        assert!(Origin::parse("ftp://h").is_err());
        assert!(Origin::parse("http://h:x").is_err());
        assert!(Origin::parse("http://:80").is_err());
        for bad in [
            "http://h/a b",
            "http://h/x\r\nX-Evil: 1",
            "http://h/p?q",
            "http://h o:1",
            "http://h\r\n:1",
            "http://[zz]:1",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            Origin::parse("http://kms.example-1.net:8080/base")
                .unwrap()
                .addr
                .is_none()
        );
        assert!(Origin::parse("http://10.0.0.1").unwrap().addr.is_some());
    }
}
