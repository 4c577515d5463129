//! The outbound HTTP/1.1 client's loop ([`Client`]) and the types its
//! callers use: one keep-alive connection per origin and lane, requests
//! pipelined, answers matched in order, retry with backoff.
//!
//! Up to `max_in_flight` requests per connection are unanswered at once.
//! A request stays queued, bytes unchanged, until the caller's callback
//! accepts its answer; only then is it dropped (its buffer is zeroizing, so
//! key material in it is wiped). A refused answer, a broken connection or a
//! silent peer resends every unaccepted request, in order. Requests carry
//! the caller's own typed id, handed back with the answer.
//!
//! The parts: [`Origin`] URLs (`origin`), request encoding (`request`),
//! one origin's connection (`conn`) and answer parsing (`answer`).

mod answer;
mod conn;
mod origin;
mod request;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use rustls::ClientConfig;
use zeroize::Zeroizing;

#[cfg(feature = "fuzzing")]
pub(crate) use answer::parse_answer;
use conn::OriginConn;
pub use origin::Origin;
pub use request::request_bytes;

const WAKER: Token = Token(usize::MAX);

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
        self.conns.push(OriginConn::new(
            origin.clone(),
            tls.or_else(|| self.tls.clone()),
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
