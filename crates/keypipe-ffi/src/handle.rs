//! Handles a C caller owns, safe against a free racing a call in flight
//! (security review F17): calls count themselves in and out, and shutdown
//! and free wait for them.
//!
//! A shut-down handle refuses new calls and wakes blocked ones; free waits
//! until every call in flight has left, `kp_*_shutdown` calls included,
//! before it releases anything.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use crate::errors::{KP_ERR_NULL_ARGUMENT, KP_ERR_SHUT_DOWN, fail, kp_result};

/// One ordinary call in flight (the low half of [`Handle::in_flight`]).
const CALL: u64 = 1;
/// One `kp_*_shutdown` in flight (the high half).
const SHUTDOWN: u64 = 1 << 32;
/// The ordinary calls of an `in_flight` value.
const CALLS: u64 = SHUTDOWN - 1;

/// What a C handle points to: the object and its call accounting.
pub(crate) struct Handle<T> {
    inner: T,
    /// Calls in flight: ordinary calls count [`CALL`], shutdowns
    /// [`SHUTDOWN`], in one word so one load sees both.
    in_flight: AtomicU64,
    closed: AtomicBool,
}

/// One call in flight on a handle; leaving drops the count.
pub(crate) struct Call<'a, T> {
    handle: &'a Handle<T>,
}

impl<T> std::ops::Deref for Call<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.handle.inner
    }
}

impl<T> Drop for Call<'_, T> {
    fn drop(&mut self) {
        // The last touch of the handle by this call.
        self.handle.in_flight.fetch_sub(CALL, Ordering::SeqCst);
    }
}

impl<T> Handle<T> {
    /// A handle around `inner`.
    pub(crate) fn new(inner: T) -> Self {
        Handle {
            inner,
            in_flight: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Enters a call on `handle` (`None`: the C pointer was NULL):
    /// `KP_ERR_NULL_ARGUMENT`, or `KP_ERR_SHUT_DOWN` once shut down.
    pub(crate) fn enter<'a>(
        handle: Option<&'a Self>,
        what: &str,
    ) -> Result<Call<'a, T>, kp_result> {
        let handle = handle.ok_or_else(|| fail(KP_ERR_NULL_ARGUMENT, format!("{what} is NULL")))?;
        handle.in_flight.fetch_add(CALL, Ordering::SeqCst);
        let call = Call { handle };
        if handle.closed.load(Ordering::SeqCst) {
            return Err(fail(KP_ERR_SHUT_DOWN, format!("the {what} was shut down")));
        }
        Ok(call)
    }

    /// Enters a call that still runs on a shut-down handle (reading its
    /// counters); `None` for NULL. The call is counted like any other, so
    /// a free waits for it.
    pub(crate) fn enter_even_closed(handle: Option<&Self>) -> Option<(Call<'_, T>, bool)> {
        let handle = handle?;
        handle.in_flight.fetch_add(CALL, Ordering::SeqCst);
        let closed = handle.closed.load(Ordering::SeqCst);
        Some((Call { handle }, closed))
    }

    /// `kp_*_shutdown`: new calls fail with `KP_ERR_SHUT_DOWN`, `wake`
    /// makes blocked calls return, and this returns once no ordinary call
    /// is in flight. Idempotent, and counted itself, so a free that races
    /// it waits until it has left.
    pub(crate) fn shut_down(&self, wake: impl Fn(&T)) {
        self.in_flight.fetch_add(SHUTDOWN, Ordering::SeqCst);
        self.close_until(&wake, |n| n & CALLS == 0);
        // The last touch of the handle by this shutdown.
        self.in_flight.fetch_sub(SHUTDOWN, Ordering::SeqCst);
    }

    /// The first half of `kp_*_free`: shuts the handle down and returns
    /// once nothing at all is in flight (shutdowns included), so the
    /// handle can be dropped next.
    pub(crate) fn shut_down_for_free(&self, wake: impl Fn(&T)) {
        self.close_until(&wake, |n| n == 0);
    }

    fn close_until(&self, wake: &impl Fn(&T), done: impl Fn(u64) -> bool) {
        self.closed.store(true, Ordering::SeqCst);
        wake(&self.inner);
        while !done(self.in_flight.load(Ordering::SeqCst)) {
            wake(&self.inner);
            thread::sleep(Duration::from_micros(200));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex, mpsc};

    /// A free racing a shutdown still inside the handle (here: parked in
    /// its wake) waits until that shutdown has left. Before, free counted
    /// only ordinary calls and dropped the handle under the shutdown
    /// (security review F17, found again by the issue-12 review).
    #[test]
    fn free_waits_for_a_shutdown_still_in_flight() {
        let (parked_tx, parked) = mpsc::channel::<()>();
        let (release, release_rx) = mpsc::channel::<()>();
        let handle = Arc::new(Handle::new(Mutex::new((parked_tx, release_rx))));
        let call = Handle::enter(Some(&*handle), "x").ok().unwrap();
        let shutdown = {
            let handle = Arc::clone(&handle);
            thread::spawn(move || {
                handle.shut_down(|pair| {
                    let pair = pair.lock().unwrap();
                    let _ = pair.0.send(());
                    let _ = pair.1.recv();
                })
            })
        };
        parked.recv().unwrap(); // the shutdown is inside its first wake
        drop(call); // no ordinary call in flight any more
        let (freed_tx, freed) = mpsc::channel();
        let free = {
            let handle = Arc::clone(&handle);
            thread::spawn(move || {
                handle.shut_down_for_free(|_| {});
                freed_tx.send(()).unwrap();
            })
        };
        assert!(
            freed.recv_timeout(Duration::from_millis(200)).is_err(),
            "free went ahead while a shutdown was still using the handle"
        );
        release.send(()).unwrap();
        freed.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(handle.in_flight.load(Ordering::SeqCst), 0);
        shutdown.join().unwrap();
        free.join().unwrap();
    }

    #[test]
    fn calls_after_a_shutdown_are_refused_and_counted_out() {
        let handle = Handle::new(());
        handle.shut_down(|_| {});
        assert!(Handle::enter(Some(&handle), "x").is_err());
        assert_eq!(handle.in_flight.load(Ordering::SeqCst), 0);
        let (_call, closed) = Handle::enter_even_closed(Some(&handle)).unwrap();
        assert!(closed);
        assert_eq!(handle.in_flight.load(Ordering::SeqCst), CALL);
    }
}
