//! One server connection: bytes in, requests to the service, responses out
//! in request order (pipelining), keep-alive and timeouts.
//!
//! The socket is reached only through `Read`/`Write` of a [`Transport`]:
//! plain TCP or a rustls session over it, which the protocol code never
//! notices. A TLS client's certificate identity is read once, when its
//! handshake completes, and handed to the service with each request; a
//! certificate revoked since then gets 403 and the connection ends.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use mio::net::TcpStream;
use zeroize::Zeroize;

use super::inbuf::InBuf;
use super::request::{Limits, Method, Parsed, Peer, RequestParser};
use super::transport::Transport;
use super::{Connection, HttpError, Reply, Response, Service};
use crate::tls::{PeerIdentity, TlsAcceptor};

/// Most requests of one connection parsed ahead of their answers.
const MAX_PIPELINE: usize = 32;
/// Answer bytes not yet taken by the socket above which no more requests
/// are read.
const MAX_UNSENT: usize = 64 * 1024;
/// Reads per wake-up before other connections get their turn.
const READ_BUDGET: usize = 16;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 8 * 1024;

/// What the loop should do with the connection after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Wait for the next event.
    Wait,
    /// Serve again soon without waiting for an event (budget used up).
    Again,
    /// Close and forget it.
    Close,
}

/// Everything a connection needs from its worker to dispatch a request.
pub(super) struct Dispatch<'a> {
    pub service: &'a dyn Service,
    pub limits: &'a Limits,
    /// Runs a [`Reply::Later`] job; the answer comes back through
    /// [`Conn::complete`] with the given sequence number.
    pub later: &'a dyn Fn(u64, Box<dyn FnOnce() -> Response + Send>),
    /// The listener's TLS (revocation of client certificates).
    pub tls: Option<&'a TlsAcceptor>,
}

struct Slot {
    head_only: bool,
    keep_alive: bool,
    /// HTTP/1.0 keep-alive: say so in the answer.
    confirm_keep_alive: bool,
    response: Option<Response>,
}

pub(super) struct Conn {
    stream: Transport,
    /// Who is at the other end; the identity is filled in once the TLS
    /// handshake is done.
    peer: Arc<Peer>,
    handshake_done: bool,
    /// When the connection was accepted (the TLS handshake's deadline).
    opened: Instant,
    /// Received bytes not yet parsed; may hold key material (zeroized).
    inbuf: InBuf,
    /// What the parser learnt of the request at the front of `inbuf`.
    parser: RequestParser,
    out: BytesMut,
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    first_seq: u64,
    read_closed: bool,
    /// Given up on (a timeout): close now, whatever is unsent.
    aborted: bool,
    /// No more requests are read; close once the answers are out.
    closing: bool,
    continue_sent: bool,
    partial_since: Option<Instant>,
    last_progress: Instant,
}

impl Conn {
    pub(super) fn new(stream: Transport, addr: SocketAddr, now: Instant) -> Conn {
        let tls = stream.is_tls();
        Conn {
            stream,
            peer: Arc::new(Peer {
                addr,
                tls,
                identity: None,
            }),
            handshake_done: !tls,
            opened: now,
            inbuf: InBuf::new(),
            parser: RequestParser::default(),
            out: BytesMut::new(),
            slots: VecDeque::new(),
            first_seq: 0,
            read_closed: false,
            aborted: false,
            closing: false,
            continue_sent: false,
            partial_since: None,
            last_progress: now,
        }
    }

    pub(super) fn stream(&mut self) -> &mut TcpStream {
        self.stream.tcp()
    }

    /// The other end's address.
    pub(super) fn peer_addr(&self) -> SocketAddr {
        self.peer.addr
    }

    /// Ends TLS politely (`close_notify`, best effort) before the close.
    pub(super) fn close_notify(&mut self) {
        if self.handshake_done && !self.aborted {
            self.stream.close_notify();
        }
    }

    /// Once the TLS handshake is done: the client certificate's identity.
    fn note_handshake(&mut self) {
        if self.handshake_done || self.stream.is_handshaking() {
            return;
        }
        self.handshake_done = true;
        let identity = self
            .stream
            .peer_certificate()
            .and_then(PeerIdentity::from_der);
        if identity.is_some() {
            self.peer = Arc::new(Peer {
                identity,
                ..(*self.peer).clone()
            });
        }
    }

    /// Reads, dispatches and writes as far as possible.
    pub(super) fn pump(&mut self, d: &Dispatch<'_>, now: Instant) -> Step {
        let mut reads = 0;
        loop {
            let parsed = self.parse_requests(d, now);
            if self.flush(now).is_err() {
                return Step::Close;
            }
            if self.finished() {
                return Step::Close;
            }
            // Backpressure: a client that does not read its answers gets
            // no more served (the writable event resumes it).
            if self.read_closed
                || self.closing
                || self.slots.len() >= MAX_PIPELINE
                || self.out.len() >= MAX_UNSENT
            {
                return Step::Wait;
            }
            if parsed {
                continue; // room again: requests may be waiting in `inbuf`
            }
            if reads == READ_BUDGET {
                return Step::Again;
            }
            reads += 1;
            match self.read_some(d.limits) {
                Ok(true) => self.last_progress = now,
                Ok(false) => return Step::Wait,
                Err(_) => return Step::Close,
            }
        }
    }

    /// The answer to the request numbered `seq` is ready.
    pub(super) fn complete(&mut self, seq: u64, response: Response) {
        if let Some(slot) = seq
            .checked_sub(self.first_seq)
            .and_then(|i| self.slots.get_mut(i as usize))
        {
            slot.response = Some(response);
        }
    }

    /// Applies the request and idle timeouts.
    pub(super) fn check_timeouts(&mut self, now: Instant, request: Duration, idle: Duration) {
        if !self.handshake_done && now.duration_since(self.opened) > request {
            // A TLS handshake that does not finish in time is dropped.
            self.aborted = true;
            return;
        }
        if self.closing {
            if now.duration_since(self.last_progress) > idle {
                // Answers nobody reads: dropped, with what TLS still holds.
                self.aborted = true;
                self.slots.clear();
                wipe(&mut self.out);
            }
            return;
        }
        if self
            .partial_since
            .is_some_and(|t| now.duration_since(t) > request)
        {
            self.fail(HttpError::TIMEOUT);
        } else if self.inbuf.is_empty()
            && self.slots.is_empty()
            && now.duration_since(self.last_progress) > idle
        {
            self.closing = true;
        }
    }

    /// Graceful shutdown: answer what was received, read nothing more.
    pub(super) fn shut_down(&mut self) {
        if self.partial_since.is_none() || self.inbuf.is_empty() {
            self.closing = true;
        }
    }

    /// True when the connection has nothing left to do: every answer is
    /// out, TLS's buffered records too (a peer that half-closed still gets
    /// its whole answer), or it was given up on.
    pub(super) fn finished(&self) -> bool {
        self.aborted
            || ((self.closing || self.read_closed)
                && self.slots.is_empty()
                && self.out.is_empty()
                && !self.stream.wants_write())
    }

    /// Answers `err` (after the requests already received) and stops reading.
    fn fail(&mut self, err: HttpError) {
        self.slots.push_back(Slot {
            head_only: false,
            keep_alive: false,
            confirm_keep_alive: false,
            response: Some(err.response()),
        });
        self.stop_reading();
    }

    fn stop_reading(&mut self) {
        self.closing = true;
        self.partial_since = None;
        self.inbuf.clear();
        self.parser = RequestParser::default();
    }

    /// Parses and dispatches the complete requests in `inbuf`; true when
    /// at least one was.
    fn parse_requests(&mut self, d: &Dispatch<'_>, now: Instant) -> bool {
        let mut parsed = false;
        while !self.closing
            && !self.inbuf.is_empty()
            && self.slots.len() < MAX_PIPELINE
            && self.out.len() < MAX_UNSENT
        {
            match self.parser.parse(self.inbuf.data(), d.limits) {
                Ok(Parsed::Complete(mut req, used)) => {
                    parsed = true;
                    self.inbuf.consume(used);
                    if let (Some(tls), Some(id)) = (d.tls, &self.peer.identity)
                        && tls.is_revoked(id)
                    {
                        self.fail(HttpError::REVOKED);
                        return parsed;
                    }
                    req.peer = Some(Arc::clone(&self.peer));
                    self.continue_sent = false;
                    self.partial_since = (!self.inbuf.is_empty()).then_some(now);
                    let keep_alive = req.keep_alive;
                    let confirm_keep_alive = keep_alive && req.http10;
                    let head_only = req.method == Method::Head;
                    let seq = self.first_seq + self.slots.len() as u64;
                    // A panicking handler costs its request a 500, never
                    // the worker thread (and every connection on it).
                    let reply = catch_unwind(AssertUnwindSafe(|| d.service.call(req)))
                        .unwrap_or_else(|_| Reply::Now(HttpError::INTERNAL.response()));
                    let response = match reply {
                        // A held answer goes the way of a pool answer: the
                        // worker keeps it until it is due.
                        Reply::Now(r) if r.hold_until.is_some_and(|t| t > now) => {
                            (d.later)(seq, Box::new(move || r));
                            None
                        }
                        Reply::Now(r) => Some(r),
                        Reply::Later(job) => {
                            (d.later)(seq, job);
                            None
                        }
                    };
                    self.slots.push_back(Slot {
                        head_only,
                        keep_alive,
                        confirm_keep_alive,
                        response,
                    });
                    if !keep_alive {
                        self.stop_reading();
                    }
                }
                Ok(Parsed::Partial { expects_continue }) => {
                    self.partial_since.get_or_insert(now);
                    if expects_continue && !self.continue_sent && self.slots.is_empty() {
                        self.continue_sent = true;
                        self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    return parsed;
                }
                Err(e) => {
                    self.fail(e);
                    return parsed;
                }
            }
        }
        parsed
    }

    /// Serializes ready answers in order and writes what the socket takes.
    fn flush(&mut self, now: Instant) -> io::Result<()> {
        self.stream.flush_tls()?;
        while let Some(slot) = self.slots.front_mut() {
            let Some(response) = slot.response.take() else {
                break;
            };
            let close = response.close || !slot.keep_alive;
            let connection = match (close, slot.confirm_keep_alive) {
                (true, _) => Connection::Close,
                (false, true) => Connection::KeepAlive,
                (false, false) => Connection::Omit,
            };
            let head: usize = response
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum();
            reserve_wiping(&mut self.out, 256 + head + response.body.len());
            response.write_to(&mut self.out, slot.head_only, connection);
            // Answers may carry secrets (a KMS decrypt): no copy of an
            // answer outlives its sending. The body is wiped here, the
            // serialized bytes as the socket takes them.
            if let Ok(mut body) = response.body.try_into_mut() {
                body.as_mut().zeroize();
            }
            self.slots.pop_front();
            self.first_seq += 1;
            if close {
                self.slots.clear();
                self.stop_reading();
                break;
            }
        }
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out[..n].zeroize();
                    self.out.advance(n);
                    self.last_progress = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out.is_empty() {
            self.out.clear();
        }
        self.stream.flush_tls()?;
        Ok(())
    }

    /// One read into `inbuf`: `Ok(false)` when nothing more is available
    /// now; end of stream drops an unfinished request.
    fn read_some(&mut self, limits: &Limits) -> io::Result<bool> {
        // Chunked framing may add overhead to a body at the limit.
        let cap = limits.max_header_bytes + 2 * limits.max_body_bytes + 64 * 1024;
        if self.inbuf.len() >= cap {
            self.fail(HttpError::BODY_TOO_LARGE);
            return Ok(true);
        }
        let result = self.inbuf.read_from(&mut self.stream, READ_CHUNK, cap);
        self.note_handshake();
        match result {
            Ok(0) => {
                self.read_closed = true;
                self.stop_reading();
                Ok(true)
            }
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        wipe(&mut self.out);
    }
}

/// Empties `out`, zeroing its whole allocation (unsent answers may be
/// secret).
fn wipe(out: &mut BytesMut) {
    let capacity = out.capacity();
    out.clear();
    out.resize(capacity, 0);
    out.clear();
}

/// Makes room for `more` bytes in `out` without leaving unsent bytes behind
/// in a freed allocation: when `out` must grow, its bytes move to a new
/// buffer and the old one is wiped.
fn reserve_wiping(out: &mut BytesMut, more: usize) {
    if out.capacity() - out.len() >= more {
        return;
    }
    let mut bigger = BytesMut::with_capacity((out.len() + more).next_power_of_two());
    bigger.extend_from_slice(out);
    wipe(out);
    *out = bigger;
}
