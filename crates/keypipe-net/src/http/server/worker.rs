//! One worker thread's event loop: its own mio `Poll` and listener,
//! accepting under the caps, pumping connections, answers back from the
//! pool (or held until due), timeouts, and the graceful end of a shutdown.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, unbounded};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use super::{ServerConfig, ServerStats};
use crate::http::conn::{Conn, Dispatch, Step};
use crate::http::transport::Transport;
use crate::http::{Pool, Response, Service};

const LISTENER: Token = Token(0);
/// The token of a worker's `Waker` (wakes it for a shutdown or a pool
/// answer).
pub(super) const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// Answers a worker holds back at most (see `Response::hold_until`);
/// beyond, an answer to hold is replaced by a closing 503, so a flood of
/// held answers cannot grow memory without bound.
const MAX_HELD: usize = 65_536;

/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(100);

/// An answer computed on the pool, on its way back to its connection.
struct Done {
    slot: usize,
    generation: u64,
    seq: u64,
    response: Response,
}

struct Entry {
    conn: Conn,
    generation: u64,
}

/// One event loop: its connections (by slot), answers coming back from
/// the pool, and answers held until due.
pub(super) struct Worker {
    poll: Poll,
    listener: Option<TcpListener>,
    waker: Arc<Waker>,
    conns: Vec<Option<Entry>>,
    free: Vec<usize>,
    again: Vec<usize>,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    /// Answers held until their `hold_until`, by due time (then arrival).
    held: BTreeMap<(Instant, u64), Done>,
    held_seq: u64,
    service: Arc<dyn Service>,
    pool: Pool,
    config: ServerConfig,
    stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    /// A worker on `poll` serving `listener`, woken by `waker`, that ends
    /// once `stop` is set and its connections are done.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        poll: Poll,
        listener: TcpListener,
        waker: Arc<Waker>,
        service: Arc<dyn Service>,
        pool: Pool,
        config: ServerConfig,
        stats: Arc<ServerStats>,
        stop: Arc<AtomicBool>,
    ) -> Worker {
        let (done_tx, done_rx) = unbounded();
        Worker {
            poll,
            listener: Some(listener),
            waker,
            conns: Vec::new(),
            free: Vec::new(),
            again: Vec::new(),
            done_tx,
            done_rx,
            held: BTreeMap::new(),
            held_seq: 0,
            service,
            pool,
            config,
            stats,
            stop,
        }
    }

    /// Serves until a shutdown has finished every connection.
    pub(super) fn run(mut self) {
        if let Some(l) = self.listener.as_mut()
            && let Err(e) = self
                .poll
                .registry()
                .register(l, LISTENER, Interest::READABLE)
        {
            tracing::error!("cannot register listener: {e}");
            return;
        }
        let mut events = Events::with_capacity(1024);
        let mut generation = 0u64;
        let mut next_tick = Instant::now() + TICK;
        let mut grace_end: Option<Instant> = None;
        loop {
            let timeout = if self.again.is_empty() {
                let wake = match self.held.first_key_value() {
                    Some((&(due, _), _)) => due.min(next_tick),
                    None => next_tick,
                };
                wake.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!("poll failed: {e}");
                return;
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now, &mut generation),
                    WAKER => {}
                    Token(t) => self.serve(t - FIRST_CONN, now),
                }
            }
            let stopping = self.stop.load(Ordering::Acquire);
            while let Ok(done) = self.done_rx.try_recv() {
                match done.response.hold_until {
                    Some(due) if due > now && !stopping => self.hold(due, done, now),
                    _ => self.deliver(done, now),
                }
            }
            while self
                .held
                .first_key_value()
                .is_some_and(|(&(due, _), _)| due <= now || stopping)
            {
                if let Some((_, done)) = self.held.pop_first() {
                    self.deliver(done, now);
                }
            }
            for slot in std::mem::take(&mut self.again) {
                self.serve(slot, now);
            }
            if self.stop.load(Ordering::Acquire) {
                let end = *grace_end.get_or_insert_with(|| {
                    if let Some(mut l) = self.listener.take() {
                        let _ = self.poll.registry().deregister(&mut l);
                    }
                    now + self.config.shutdown_grace
                });
                for slot in 0..self.conns.len() {
                    if let Some(e) = self.conns[slot].as_mut() {
                        e.conn.shut_down();
                        if e.conn.finished() || now >= end {
                            self.close(slot);
                        }
                    }
                }
                if self.conns.iter().all(Option::is_none) {
                    return;
                }
            }
            if now >= next_tick {
                next_tick = now + TICK;
                for slot in 0..self.conns.len() {
                    if let Some(e) = self.conns[slot].as_mut() {
                        e.conn.check_timeouts(
                            now,
                            self.config.request_timeout,
                            self.config.idle_timeout,
                        );
                        self.serve(slot, now);
                    }
                }
            }
        }
    }

    /// Keeps `done` until `due`; past [`MAX_HELD`] answers, a closing 503
    /// goes out instead.
    fn hold(&mut self, due: Instant, done: Done, now: Instant) {
        if self.held.len() < MAX_HELD {
            self.held_seq += 1;
            self.held.insert((due, self.held_seq), done);
        } else {
            let busy = crate::http::HttpError {
                status: 503,
                reason: "server busy",
            };
            let response = busy.response();
            self.deliver(Done { response, ..done }, now);
        }
    }

    /// Hands a pool (or held) answer to its connection, if still open.
    fn deliver(&mut self, done: Done, now: Instant) {
        if let Some(Some(e)) = self.conns.get_mut(done.slot)
            && e.generation == done.generation
        {
            e.conn.complete(done.seq, done.response);
            self.serve(done.slot, now);
        }
    }

    fn accept(&mut self, now: Instant, generation: &mut u64) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (mut stream, addr) = match listener.accept() {
                // A dual-stack listener sees IPv4 callers as ::ffff:a.b.c.d:
                // one spelling for every check (loopback, caps).
                Ok((s, a)) => (s, SocketAddr::new(a.ip().to_canonical(), a.port())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and friends: back off until the next event.
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            };
            let open = self.stats.open_connections.fetch_add(1, Ordering::AcqRel);
            if open >= self.config.max_connections
                || !self
                    .stats
                    .admit_ip(addr.ip(), self.config.max_connections_per_ip)
            {
                if open < self.config.max_connections {
                    tracing::debug!(ip = %addr.ip(), "per-address connection cap reached");
                }
                self.stats.open_connections.fetch_sub(1, Ordering::AcqRel);
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                if self.config.tls.is_none() {
                    refuse(&mut stream);
                }
                continue;
            }
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let transport = match &self.config.tls {
                None => Transport::plain(stream),
                Some(tls) => match tls.accept() {
                    Ok(session) => Transport::tls(stream, session),
                    Err(e) => {
                        tracing::warn!("TLS session refused: {e}");
                        self.stats.open_connections.fetch_sub(1, Ordering::AcqRel);
                        self.stats.release_ip(addr.ip());
                        self.free.push(slot);
                        continue;
                    }
                },
            };
            *generation += 1;
            let mut conn = Conn::new(transport, addr, now);
            if self
                .poll
                .registry()
                .register(
                    conn.stream(),
                    Token(slot + FIRST_CONN),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                self.stats.open_connections.fetch_sub(1, Ordering::AcqRel);
                self.stats.release_ip(addr.ip());
                self.free.push(slot);
                continue;
            }
            self.conns[slot] = Some(Entry {
                conn,
                generation: *generation,
            });
        }
    }

    fn serve(&mut self, slot: usize, now: Instant) {
        let Some(Some(entry)) = self.conns.get_mut(slot) else {
            return;
        };
        let generation = entry.generation;
        let (tx, waker, pool) = (&self.done_tx, &self.waker, &self.pool);
        let later = |seq: u64, job: Box<dyn FnOnce() -> Response + Send>| {
            let (tx, waker) = (tx.clone(), Arc::clone(waker));
            pool.spawn(move || {
                let response = catch_unwind(AssertUnwindSafe(job))
                    .unwrap_or_else(|_| crate::http::HttpError::INTERNAL.response());
                let _ = tx.send(Done {
                    slot,
                    generation,
                    seq,
                    response,
                });
                let _ = waker.wake();
            });
        };
        let dispatch = Dispatch {
            service: &*self.service,
            limits: &self.config.limits,
            later: &later,
            tls: self.config.tls.as_deref(),
        };
        match entry.conn.pump(&dispatch, now) {
            Step::Wait => {}
            Step::Again => self.again.push(slot),
            Step::Close => self.close(slot),
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut e) = self.conns[slot].take() {
            e.conn.close_notify();
            let _ = self.poll.registry().deregister(e.conn.stream());
            self.stats.open_connections.fetch_sub(1, Ordering::AcqRel);
            self.stats.release_ip(e.conn.peer_addr().ip());
            self.free.push(slot);
        }
    }
}

/// Best-effort 503 to a connection over the cap, then close.
fn refuse(stream: &mut mio::net::TcpStream) {
    use std::io::Write;
    let mut out = bytes::BytesMut::new();
    Response::json(503, r#"{"message":"too many connections"}"#).write_to(
        &mut out,
        false,
        crate::http::Connection::Close,
    );
    let _ = stream.write(&out);
}
