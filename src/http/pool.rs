//! A small thread pool for handlers that may block (an OPEN_CONNECT waiting
//! for the peer's announcement, later RSA or FFDHE work), so an event loop
//! never does. Results travel back to the loop through its channel and
//! `Waker`.

use std::sync::Arc;
use std::thread;

use crossbeam::channel::{Sender, unbounded};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads running queued jobs in order of arrival.
/// Cloning shares the pool; the threads end when the last clone is dropped
/// and the queue is empty.
#[derive(Clone)]
pub struct Pool {
    jobs: Arc<Sender<Job>>,
    threads: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("queued", &self.jobs.len())
            .finish()
    }
}

impl Pool {
    /// A pool of `threads` threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let (tx, rx) = unbounded::<Job>();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("keypipe-pool-{i}"))
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })?;
        }
        Ok(Pool {
            jobs: Arc::new(tx),
            threads: threads.max(1),
        })
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Queues `job`.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        // The receivers live as long as their threads, which only end when
        // every sender is gone, so this cannot fail while `self` exists.
        let _ = self.jobs.send(Box::new(job));
    }
}
