//! The server: `workers` threads, each with its own mio `Poll` and its own
//! `SO_REUSEPORT` listener on the same address (the kernel spreads new
//! connections; a connection never migrates), a global connection cap,
//! request and idle timeouts, and graceful shutdown.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, unbounded};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Socket, Type};

use super::conn::{Conn, Dispatch, Step};
use super::transport::Transport;
use super::{Limits, Pool, Response, Service};
use crate::tls::TlsAcceptor;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// Answers a worker holds back at most (see `Response::hold_until`);
/// beyond, an answer to hold is replaced by a closing 503, so a flood of
/// held answers cannot grow memory without bound.
const MAX_HELD: usize = 65_536;

/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(100);

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Event-loop threads (0: one per core).
    pub workers: usize,
    /// Request size limits.
    pub limits: Limits,
    /// A request must arrive whole within this time of its first byte (408).
    pub request_timeout: Duration,
    /// A keep-alive connection with nothing to do is closed after this.
    pub idle_timeout: Duration,
    /// Most open connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Most open connections from one address that is not loopback; more
    /// are answered 503 and closed (one host cannot take every slot).
    pub max_connections_per_ip: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// TLS on this listener (`None`: plain HTTP).
    pub tls: Option<Arc<TlsAcceptor>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 0,
            limits: Limits::default(),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            shutdown_grace: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// Counters of one server, for `/metrics`.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections open now.
    pub open_connections: AtomicUsize,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections refused by the caps.
    pub refused: AtomicU64,
    /// Open connections by source address (not loopback).
    per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// The address a per-address cap counts: an IPv6 address by its /64 (one
/// host usually holds a whole /64).
fn cap_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl ServerStats {
    /// Counts a connection from `ip` in, unless `ip` has `cap` open.
    fn admit_ip(&self, ip: std::net::IpAddr, cap: usize) -> bool {
        if ip.is_loopback() {
            return true;
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(cap_key(ip)).or_insert(0);
        if *n >= cap {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts a connection from `ip` out.
    fn release_ip(&self, ip: std::net::IpAddr) {
        if ip.is_loopback() {
            return;
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let key = cap_key(ip);
        if let Some(n) = map.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&key);
            }
        }
    }
}

/// Tells a running server to stop; cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    stop: Arc<AtomicBool>,
    wakers: Arc<Vec<Arc<Waker>>>,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("stopping", &self.stop.load(Ordering::Relaxed))
            .finish()
    }
}

impl Shutdown {
    /// Stop accepting, finish in-flight requests (at most the grace time),
    /// then end the worker threads.
    pub fn trigger(&self) {
        self.stop.store(true, Ordering::Release);
        for w in self.wakers.iter() {
            let _ = w.wake();
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shutdown: Shutdown,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<ServerStats>,
}

impl Server {
    /// Binds `config.listen` once per worker and starts serving `service`;
    /// slow handlers run on `pool`.
    pub fn start(
        name: &str,
        config: &ServerConfig,
        service: Arc<dyn Service>,
        pool: Pool,
    ) -> io::Result<Server> {
        let workers = match config.workers {
            0 => thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        if config.listen.port() != 0 {
            // SO_REUSEPORT would let a second server (same user) silently
            // share the port; a plain bind first fails if anyone listens.
            drop(std::net::TcpListener::bind(config.listen)?);
        }
        let mut listeners = Vec::with_capacity(workers);
        let mut addr = config.listen;
        for _ in 0..workers {
            let listener = bind_reuseport(addr)?;
            addr = listener.local_addr()?;
            listeners.push(listener);
        }
        let stats = Arc::new(ServerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut polls = Vec::with_capacity(workers);
        let mut wakers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let poll = Poll::new()?;
            wakers.push(Arc::new(Waker::new(poll.registry(), WAKER)?));
            polls.push(poll);
        }
        let shutdown = Shutdown {
            stop,
            wakers: Arc::new(wakers),
        };
        let mut threads = Vec::with_capacity(workers);
        for (i, (poll, listener)) in polls.into_iter().zip(listeners).enumerate() {
            let (done_tx, done_rx) = unbounded();
            let worker = Worker {
                poll,
                listener: Some(listener),
                waker: Arc::clone(&shutdown.wakers[i]),
                conns: Vec::new(),
                free: Vec::new(),
                again: Vec::new(),
                done_tx,
                done_rx,
                held: BTreeMap::new(),
                held_seq: 0,
                service: Arc::clone(&service),
                pool: pool.clone(),
                config: config.clone(),
                stats: Arc::clone(&stats),
                stop: Arc::clone(&shutdown.stop),
            };
            threads.push(
                thread::Builder::new()
                    .name(format!("{name}-http-{i}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(Server {
            addr,
            shutdown,
            threads,
            stats,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's counters.
    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Waits until every worker ended (after a shutdown).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into()))
}

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

struct Worker {
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
    fn run(mut self) {
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
            let busy = super::HttpError {
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
                    .unwrap_or_else(|_| super::HttpError::INTERNAL.response());
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
        super::Connection::Close,
    );
    let _ = stream.write(&out);
}
