//! A small thread pool for handlers that may block (an OPEN_CONNECT waiting
//! for the peer's announcement; RSA, FFDHE or Argon2 work), so an event
//! loop never does. Results go back to the loop by its channel and `Waker`.
//!
//! Pool threads run at a lower CPU priority ([`POOL_NICE`]): when a burst
//! of slow work keeps every core busy, the event loops still get the CPU
//! as soon as a request arrives (the kernel lets a woken normal-priority
//! thread preempt them), so fast routes keep their latency; when the loops
//! are idle the pool still has all the cores.

use std::sync::Arc;
use std::thread;

use crossbeam::channel::{Sender, unbounded};

type Job = Box<dyn FnOnce() + Send>;

/// Nice value of pool threads (event loops run at the process's, 0 by
/// default): about a tenth of a loop's CPU share under contention.
pub(crate) const POOL_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`POOL_NICE`] (best effort: a
/// failure is logged once per thread and ignored).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take and return plain integers and
        // touch no memory of ours (PRIO_PROCESS with a tid: this thread only).
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, POOL_NICE)
        };
        if rc != 0 {
            tracing::debug!(
                "could not lower a pool thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

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
                    lower_priority();
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
