//! The server as its owner sees it: settings ([`ServerConfig`]), start
//! (`workers` event loops, each with its own `SO_REUSEPORT` listener on the
//! same address), the counters, and graceful shutdown.
//!
//! The kernel spreads new connections over the listeners; a connection
//! never migrates. Each worker's loop (`worker`) applies the connection
//! caps and the request and idle timeouts; the counters and the
//! per-address cap are in `stats`.

mod stats;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use mio::net::TcpListener;
use mio::{Poll, Waker};
use socket2::{Domain, Socket, Type};

pub use stats::ServerStats;
use worker::{WAKER, Worker};

use super::{Limits, Pool, Service};
use crate::tls::TlsAcceptor;

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
            let worker = Worker::new(
                poll,
                listener,
                Arc::clone(&shutdown.wakers[i]),
                Arc::clone(&service),
                pool.clone(),
                config.clone(),
                Arc::clone(&stats),
                Arc::clone(&shutdown.stop),
            );
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
