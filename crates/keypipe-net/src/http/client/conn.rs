//! One origin's connection (per lane): connect (TLS or not), write the
//! queued requests pipelined, read and hand out the answers in order, and
//! reset with a growing backoff, keeping every unaccepted request to resend.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Poll, Token};
use rustls::{ClientConfig, ClientConnection};
use rustls_pki_types::ServerName;

use super::answer::{MAX_ANSWER_BODY, parse_answer};
use super::{Answer, OnAnswer, Origin, OriginId, Outgoing, Verdict};
use crate::http::transport::Transport;

const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Most bytes buffered for answers not yet whole (a peer that never ends
/// its header block is cut off).
const MAX_ANSWER_BUFFER: usize = MAX_ANSWER_BODY + 64 * 1024;
/// An origin that leaves requests unanswered this long is reconnected.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// One origin and lane of a [`Client`](super::Client): its connection and
/// its queue.
pub(super) struct OriginConn<T> {
    pub(super) origin: Origin,
    /// The TLS of an `https://` origin.
    tls: Option<Arc<ClientConfig>>,
    stream: Option<Transport>,
    pub(super) connected: bool,
    /// When the current connection was started (handshake timeout).
    connect_at: Option<Instant>,
    /// Every request not yet accepted, oldest first.
    pub(super) queue: VecDeque<Outgoing<T>>,
    /// `queue[..sent]` are written and await their answers.
    pub(super) sent: usize,
    /// Bytes of `queue[sent]` already written.
    pub(super) partial: usize,
    inbuf: Vec<u8>,
    pub(super) retry_at: Option<Instant>,
    backoff: Duration,
    waiting_since: Option<Instant>,
}

impl<T> OriginConn<T> {
    /// A connection to `origin`, not yet started, with an empty queue.
    pub(super) fn new(origin: Origin, tls: Option<Arc<ClientConfig>>) -> Self {
        OriginConn {
            origin,
            tls,
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
        }
    }
}

impl<T: Copy> OriginConn<T> {
    /// Drives this origin's connection as far as it goes without blocking.
    pub(super) fn step(
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
    pub(super) fn reset(&mut self, failed_at: Option<Instant>) {
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
