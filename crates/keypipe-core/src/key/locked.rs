//! Locked secret memory: regions the operating system keeps in RAM (never
//! written to swap, `mlock`) and leaves out of core dumps
//! (`MADV_DONTDUMP`), and a small heap of variable-length secrets carved
//! from one such region.
//!
//! The key arena keeps device key here; [`SecretHeap`] keeps the other
//! long-lived secrets: the KEK and the NCP keys in use
//! ([`secrets`], one heap per process) and the key a KMS side holds for
//! its consumers (a heap of its own, sized to its capacity).
//!
//! Locking can fail (`RLIMIT_MEMLOCK`). By default that is a warning;
//! after [`require_locking`]`(true)` (the server's `require_mlock`) it is
//! an error, so a production process never runs with key that may reach
//! swap. Under Miri no system call is made: the logic is checked, not the
//! locking.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use zeroize::Zeroize;

use super::Protection;

const PAGE: usize = 4096;
/// Allocations are rounded up to this many bytes.
const GRANULE: usize = 16;
/// Size of the process-wide heap when nothing configured it first.
pub const DEFAULT_SECRETS_BYTES: usize = 8 << 20;

static REQUIRED: AtomicBool = AtomicBool::new(false);
static SECRETS: OnceLock<SecretHeap> = OnceLock::new();

/// From now on, a region that cannot be locked in memory is an error
/// (`true`) or a warning (`false`, the default).
pub fn require_locking(required: bool) {
    REQUIRED.store(required, Ordering::SeqCst);
}

/// Whether locking is required (see [`require_locking`]).
pub fn locking_required() -> bool {
    REQUIRED.load(Ordering::SeqCst)
}

/// A region could not be locked in memory while locking is required.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} ({bytes} bytes) cannot be locked in memory ({reason}) and require_mlock is on: \
     raise RLIMIT_MEMLOCK (systemd: LimitMEMLOCK=; shell: ulimit -l) or give the process \
     CAP_IPC_LOCK"
)]
pub struct LockError {
    /// What the region is for.
    pub what: &'static str,
    /// Its size.
    pub bytes: usize,
    /// The system's reason.
    pub reason: String,
}

/// Locks `base..base + size` in memory and excludes it from core dumps.
/// A refused lock is a warning, or an error when `required`.
///
/// # Safety
/// `base..base + size` must be a live allocation the caller owns.
pub(crate) unsafe fn protect(
    base: NonNull<u8>,
    size: usize,
    what: &'static str,
    required: bool,
) -> Result<Protection, LockError> {
    if cfg!(miri) {
        return Ok(Protection {
            locked: false,
            excluded_from_dumps: false,
        });
    }
    // SAFETY: the caller guarantees the range is a live allocation; mlock
    // only pins its pages.
    let locked = unsafe { libc::mlock(base.as_ptr().cast(), size) } == 0;
    if !locked {
        let reason = std::io::Error::last_os_error().to_string();
        if required {
            return Err(LockError {
                what,
                bytes: size,
                reason,
            });
        }
        tracing::warn!(
            bytes = size,
            error = %reason,
            "{what} could not be locked in memory (raise RLIMIT_MEMLOCK); its secrets may reach swap"
        );
    }
    #[cfg(target_os = "linux")]
    // SAFETY: as above; madvise only changes the mapping's dump flag.
    let excluded_from_dumps =
        unsafe { libc::madvise(base.as_ptr().cast(), size, libc::MADV_DONTDUMP) } == 0;
    #[cfg(not(target_os = "linux"))]
    let excluded_from_dumps = false;
    if !excluded_from_dumps {
        tracing::warn!(bytes = size, "{what} could not be excluded from core dumps");
    }
    Ok(Protection {
        locked,
        excluded_from_dumps,
    })
}

/// The process-wide secret heap (KEK, NCP keys in use): built on first
/// use with [`DEFAULT_SECRETS_BYTES`] unless [`configure_secrets`] built
/// it first. A lazily built heap only warns when it cannot be locked.
pub fn secrets() -> &'static SecretHeap {
    SECRETS.get_or_init(|| {
        SecretHeap::build(DEFAULT_SECRETS_BYTES, "secret memory", false)
            .expect("an unrequired lock never fails")
    })
}

/// Builds the process-wide secret heap with `bytes` (call before any
/// secret is stored; a heap already built is kept). Fails when it cannot
/// be locked and locking is required, also when a heap built before is
/// not locked.
pub fn configure_secrets(bytes: usize) -> Result<&'static SecretHeap, LockError> {
    if let Some(heap) = SECRETS.get() {
        if locking_required() && !heap.protection().locked && !cfg!(miri) {
            return Err(LockError {
                what: "secret memory",
                bytes: heap.capacity(),
                reason: "it was built unlocked before the settings applied".into(),
            });
        }
        return Ok(heap);
    }
    let heap = SecretHeap::new(bytes, "secret memory")?;
    Ok(SECRETS.get_or_init(|| heap))
}

/// The heap has no free run large enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("locked secret memory is full")]
pub struct HeapFull;

/// Free space: runs of granules, indexed by start (to merge neighbours)
/// and by size (best fit).
#[derive(Default)]
struct Free {
    by_start: BTreeMap<usize, usize>,
    by_size: BTreeSet<(usize, usize)>,
    used: usize,
}

impl Free {
    fn insert(&mut self, start: usize, len: usize) {
        self.by_start.insert(start, len);
        self.by_size.insert((len, start));
    }

    fn remove(&mut self, start: usize, len: usize) {
        self.by_start.remove(&start);
        self.by_size.remove(&(len, start));
    }

    /// The start of the smallest free run of at least `len` bytes, taken.
    fn take(&mut self, len: usize) -> Option<usize> {
        let &(run, start) = self.by_size.range((len, 0)..).next()?;
        self.remove(start, run);
        if run > len {
            self.insert(start + len, run - len);
        }
        self.used += len;
        Some(start)
    }

    /// Returns `start..start + len`, merged with free neighbours.
    fn give(&mut self, mut start: usize, mut len: usize) {
        self.used -= len;
        if let Some((&before, &before_len)) = self.by_start.range(..start).next_back()
            && before + before_len == start
        {
            self.remove(before, before_len);
            start = before;
            len += before_len;
        }
        if let Some(&after_len) = self.by_start.get(&(start + len)) {
            self.remove(start + len, after_len);
            len += after_len;
        }
        self.insert(start, len);
    }
}

struct Region {
    base: NonNull<u8>,
    layout: Layout,
    protection: Protection,
    free: Mutex<Free>,
}

// SAFETY: the region is plain memory owned by this struct until it drops;
// each byte range is reached only through the one `LockedBytes` the free
// list handed it to (the free list, behind a mutex, never hands a range to
// two holders), so threads never share a mutable view of one byte.
unsafe impl Send for Region {}
// SAFETY: see `Send`.
unsafe impl Sync for Region {}

impl Region {
    fn free(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // Every `LockedBytes` holds the region, so none is left: all bytes
        // were wiped when their holders dropped.
        #[cfg(not(miri))]
        // SAFETY: the range is this region's live allocation.
        unsafe {
            libc::munlock(self.base.as_ptr().cast(), self.layout.size());
            #[cfg(target_os = "linux")]
            libc::madvise(
                self.base.as_ptr().cast(),
                self.layout.size(),
                libc::MADV_DODUMP,
            );
        }
        // SAFETY: allocated in `SecretHeap::build` with this layout.
        unsafe { dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// A fixed amount of locked, dump-excluded memory from which secrets of
/// any length are carved (best fit, in 16-byte granules). Cloning shares
/// the heap; it is freed when the last clone and the last secret in it go.
#[derive(Clone)]
pub struct SecretHeap {
    region: Arc<Region>,
}

impl fmt::Debug for SecretHeap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretHeap")
            .field("capacity", &self.capacity())
            .field("used", &self.used())
            .field("protection", &self.region.protection)
            .finish()
    }
}

impl SecretHeap {
    /// A heap of `bytes` (rounded up to whole pages), allocated now and
    /// locked: `what` names it in messages. Fails when it cannot be locked
    /// and locking is required.
    pub fn new(bytes: usize, what: &'static str) -> Result<SecretHeap, LockError> {
        Self::build(bytes, what, locking_required())
    }

    fn build(bytes: usize, what: &'static str, required: bool) -> Result<SecretHeap, LockError> {
        let size = bytes
            .max(1)
            .checked_next_multiple_of(PAGE)
            .filter(|&s| s <= isize::MAX as usize - PAGE)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Layout::new::<u8>()));
        let layout = Layout::from_size_align(size, PAGE).expect("page-aligned size");
        // SAFETY: `layout` has a non-zero size.
        let Some(base) = NonNull::new(unsafe { alloc_zeroed(layout) }) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: `base..base + size` was just allocated and is ours.
        let protection = match unsafe { protect(base, size, what, required) } {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: allocated above with `layout`, never handed out.
                unsafe { dealloc(base.as_ptr(), layout) };
                return Err(e);
            }
        };
        let mut free = Free::default();
        free.insert(0, size);
        Ok(SecretHeap {
            region: Arc::new(Region {
                base,
                layout,
                protection,
                free: Mutex::new(free),
            }),
        })
    }

    /// `len` zero bytes of locked memory.
    pub fn zeroed(&self, len: usize) -> Result<LockedBytes, HeapFull> {
        let cap = len.checked_next_multiple_of(GRANULE).ok_or(HeapFull)?;
        let offset = if cap == 0 {
            0
        } else {
            self.region.free().take(cap).ok_or(HeapFull)?
        };
        Ok(LockedBytes {
            region: Arc::clone(&self.region),
            offset,
            len,
            cap,
        })
    }

    /// A locked copy of `bytes`.
    pub fn copy_of(&self, bytes: &[u8]) -> Result<LockedBytes, HeapFull> {
        let mut out = self.zeroed(bytes.len())?;
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Bytes in the heap.
    pub fn capacity(&self) -> usize {
        self.region.layout.size()
    }

    /// Bytes handed out (rounded up to granules).
    pub fn used(&self) -> usize {
        self.region.free().used
    }

    /// What the system granted.
    pub fn protection(&self) -> Protection {
        self.region.protection
    }
}

/// A secret in a [`SecretHeap`]: derefs to its bytes, wiped and returned
/// to the heap on drop. `Debug` never shows the bytes.
pub struct LockedBytes {
    region: Arc<Region>,
    offset: usize,
    len: usize,
    /// Bytes reserved (`len` rounded up to granules; 0 for an empty one).
    cap: usize,
}

impl LockedBytes {
    /// A locked copy of `bytes` in the process-wide heap ([`secrets`]).
    pub fn secret(bytes: &[u8]) -> Result<LockedBytes, HeapFull> {
        secrets().copy_of(bytes)
    }

    fn ptr(&self) -> *mut u8 {
        // SAFETY: `offset + cap <= size` (handed out by the free list), so
        // the pointer stays inside the region.
        unsafe { self.region.base.as_ptr().add(self.offset) }
    }
}

impl Deref for LockedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `offset..offset + len` is inside the region, initialised
        // (zeroed at allocation) and held by this value alone.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }
}

impl DerefMut for LockedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as in `deref`, and `&mut self` makes the view unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) }
    }
}

impl Drop for LockedBytes {
    fn drop(&mut self) {
        if self.cap == 0 {
            return;
        }
        // SAFETY: the whole reserved range (granule padding included) is
        // this value's alone until it is given back just below.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.cap) }.zeroize();
        self.region.free().give(self.offset, self.cap);
    }
}

impl fmt::Debug for LockedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockedBytes({} bytes, redacted)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secrets_round_trip_and_are_wiped_on_drop() {
        let heap = SecretHeap::new(PAGE, "test").unwrap();
        let a = heap.copy_of(b"first secret").unwrap();
        assert_eq!(&*a, b"first secret");
        assert_eq!(heap.used(), GRANULE);
        let (offset, region) = (a.offset, Arc::clone(&a.region));
        drop(a);
        assert_eq!(heap.used(), 0);
        // SAFETY: the range is free and no one else uses this heap.
        let wiped = unsafe { std::slice::from_raw_parts(region.base.as_ptr().add(offset), 16) };
        assert_eq!(wiped, &[0u8; 16]);
        assert_eq!(
            format!("{:?}", heap.copy_of(b"xyz").unwrap()),
            "LockedBytes(3 bytes, redacted)"
        );
    }

    #[test]
    fn a_full_heap_refuses_then_serves_again_after_a_drop() {
        let heap = SecretHeap::new(PAGE, "test").unwrap();
        let big = heap.zeroed(PAGE - GRANULE).unwrap();
        let last = heap.zeroed(GRANULE).unwrap();
        assert_eq!(heap.zeroed(1).unwrap_err(), HeapFull);
        assert!(heap.zeroed(0).is_ok(), "an empty secret takes nothing");
        assert_eq!(
            heap.zeroed(usize::MAX - 3).unwrap_err(),
            HeapFull,
            "no wrap-around"
        );
        drop(big);
        assert!(heap.zeroed(PAGE - GRANULE).is_ok(), "freed runs merge");
        drop(last);
    }

    proptest! {
        // Under Miri: few cases, and no regression file (no file system).
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 4 } else { 128 },
            failure_persistence: if cfg!(miri) { None } else { ProptestConfig::default().failure_persistence },
            ..ProptestConfig::default()
        })]
        /// Against a model: live secrets never overlap, keep their bytes,
        /// and the heap's use is the sum of theirs; after all drops the
        /// whole heap is one free run again.
        #[test]
        fn live_secrets_never_overlap_and_keep_their_bytes(
            ops in proptest::collection::vec((0usize..600, any::<bool>(), any::<u8>()), 1..120)
        ) {
            let heap = SecretHeap::new(2 * PAGE, "test").unwrap();
            let mut live: Vec<(LockedBytes, u8)> = Vec::new();
            for (len, drop_one, fill) in ops {
                if drop_one && !live.is_empty() {
                    let at = len % live.len();
                    live.swap_remove(at);
                } else if let Ok(mut s) = heap.zeroed(len) {
                    prop_assert!(s.iter().all(|&b| b == 0));
                    s.fill(fill);
                    live.push((s, fill));
                }
                let mut spans: Vec<_> = live.iter().filter(|(s, _)| s.cap > 0).map(|(s, _)| (s.offset, s.offset + s.cap)).collect();
                spans.sort();
                prop_assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "overlap");
                prop_assert_eq!(heap.used(), live.iter().map(|(s, _)| s.cap).sum::<usize>());
                for (s, fill) in &live {
                    prop_assert!(s.iter().all(|b| b == fill));
                }
            }
            live.clear();
            prop_assert_eq!(heap.used(), 0);
            prop_assert!(heap.zeroed(2 * PAGE).is_ok());
        }
    }
}
