//! Handles a C caller owns, safe against a free racing a call in flight
//! (security review F17): every call counts itself in, a shut-down handle
//! refuses new calls and wakes blocked ones, and free waits until the
//! calls in flight have left before it releases anything.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crate::errors::{KP_ERR_NULL_ARGUMENT, KP_ERR_SHUT_DOWN, fail, kp_result};

/// What a C handle points to: the object and its call accounting.
pub(crate) struct Handle<T> {
    inner: T,
    calls: AtomicUsize,
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
        self.handle.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T> Handle<T> {
    /// A handle around `inner`.
    pub(crate) fn new(inner: T) -> Self {
        Handle {
            inner,
            calls: AtomicUsize::new(0),
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
        handle.calls.fetch_add(1, Ordering::SeqCst);
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
        handle.calls.fetch_add(1, Ordering::SeqCst);
        let closed = handle.closed.load(Ordering::SeqCst);
        Some((Call { handle }, closed))
    }

    /// Shuts the handle down: new calls fail with `KP_ERR_SHUT_DOWN`,
    /// `wake` makes blocked calls return, and this waits until no call is
    /// in flight (so the handle can be freed next). Idempotent.
    pub(crate) fn shut_down(&self, wake: impl Fn(&T)) {
        self.closed.store(true, Ordering::SeqCst);
        wake(&self.inner);
        while self.calls.load(Ordering::SeqCst) > 0 {
            wake(&self.inner);
            thread::sleep(Duration::from_micros(200));
        }
    }
}
