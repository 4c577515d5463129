//! The key arena: one pre-allocated, memory-locked region cut into fixed-size
//! slots, each reached only through a [`KeyBlock`] handle.
//!
//! Key bytes live here and nowhere else inside the engine: queues carry
//! handles, never bytes. Dropping a handle zeroizes its slot and returns the
//! slot index to a lock-free free list.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fmt;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam::queue::ArrayQueue;
use zeroize::Zeroize;

use super::locked::{LockError, locking_required, protect};

/// Smallest block size the arena accepts, in bytes.
pub const MIN_BLOCK_SIZE: usize = 16;
/// Largest block size the arena accepts, in bytes (64 KiB).
pub const MAX_BLOCK_SIZE: usize = 64 * 1024;

/// Slots start on this alignment so they can be zeroized a word at a time.
const SLOT_ALIGN: usize = 16;
const PAGE: usize = 4096;

/// Why an arena could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArenaError {
    /// The block size is outside `MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE`.
    #[error("block size {0} is outside 16..=65536 bytes")]
    BlockSize(usize),
    /// Zero slots, or more than `u32::MAX`, or a region too large to allocate.
    #[error("arena of {0} slots cannot be allocated")]
    Capacity(usize),
    /// The region cannot be locked in memory and locking is required.
    #[error(transparent)]
    NotLocked(#[from] LockError),
}

/// What the operating system granted for the arena's protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protection {
    /// The region is locked in RAM (`mlock`): never written to swap.
    pub locked: bool,
    /// The region is excluded from core dumps (`MADV_DONTDUMP`).
    pub excluded_from_dumps: bool,
}

struct Region {
    base: NonNull<u8>,
    block_size: usize,
    stride: usize,
    free: ArrayQueue<u32>,
    protection: Protection,
}

// SAFETY: the region is plain memory that is never freed (see `POOL`);
// slot `i` is only accessed through the unique `KeyBlock` that holds index
// `i` (the free list hands every index to at most one handle at a time), so
// sharing the region between threads never creates two views of one slot
// where one is mutable.
unsafe impl Send for Region {}
// SAFETY: see `Send`; the free list is a lock-free MPMC queue.
unsafe impl Sync for Region {}

/// Regions whose arena was dropped, kept for reuse by a new arena of the
/// same geometry. Regions are never returned to the allocator: a handle may
/// outlive its arena, and giving every handle a reference count would put a
/// contended atomic on the hot path. Their memory stays locked and all-zero.
static POOL: Mutex<Vec<&'static Region>> = Mutex::new(Vec::new());

impl Region {
    /// Pointer to the first byte of slot `index`.
    fn slot_ptr(&self, index: u32) -> *mut u8 {
        debug_assert!((index as usize) < self.free.capacity());
        // SAFETY: `index < capacity`, and the allocation spans
        // `capacity * stride` bytes, so the offset stays inside it.
        unsafe { self.base.as_ptr().add(index as usize * self.stride) }
    }

    /// Zeroizes the whole stride of slot `index`, a word at a time.
    ///
    /// # Safety
    /// The caller must have exclusive access to slot `index`.
    unsafe fn wipe(&self, index: u32) {
        let (start, len) = (self.slot_ptr(index).cast::<u64>(), self.stride / 8);
        // Slots start at `base + index * stride`, `base` page aligned and
        // `stride` a multiple of 16: aligned for u64, and this slot's alone.
        // SAFETY: in bounds and aligned (above); the caller holds the slot.
        let words = unsafe { std::slice::from_raw_parts_mut(start, len) };
        words.zeroize();
    }

    /// True when no handle holds any slot.
    fn all_home(&self) -> bool {
        self.free.len() == self.free.capacity()
    }
}

/// Owns a region while an arena (and its clones) exist; returns it to the
/// pool when the last clone goes.
struct Owner {
    region: &'static Region,
}

impl Drop for Owner {
    fn drop(&mut self) {
        POOL.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.region);
    }
}

/// A fixed pool of key slots. Cloning shares the same pool.
#[derive(Clone)]
pub struct KeyArena {
    owner: Arc<Owner>,
}

impl fmt::Debug for KeyArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyArena")
            .field("block_size", &self.region().block_size)
            .field("capacity", &self.capacity())
            .field("free", &self.free_slots())
            .field("protection", &self.region().protection)
            .finish()
    }
}

impl KeyArena {
    /// Allocates `capacity` slots of `block_size` bytes, locks them in memory
    /// and excludes them from core dumps where the OS allows. A refusal by
    /// the OS is logged as a warning and reported by [`KeyArena::protection`],
    /// or is an error when locking is required
    /// ([`locked::require_locking`](super::locked::require_locking)).
    /// A region left by a dropped arena of the same geometry is reused once
    /// all its slots are back.
    pub fn new(block_size: usize, capacity: usize) -> Result<Self, ArenaError> {
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(ArenaError::BlockSize(block_size));
        }
        if capacity == 0 || capacity > u32::MAX as usize {
            return Err(ArenaError::Capacity(capacity));
        }
        let reused = {
            let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
            let required = locking_required();
            let found = pool.iter().position(|r| {
                r.block_size == block_size
                    && r.free.capacity() == capacity
                    && r.all_home()
                    && (r.protection.locked || !required)
            });
            found.map(|i| pool.swap_remove(i))
        };
        let region = match reused {
            Some(region) => region,
            None => Box::leak(Box::new(Region::allocate(block_size, capacity)?)),
        };
        Ok(Self {
            owner: Arc::new(Owner { region }),
        })
    }

    fn region(&self) -> &'static Region {
        self.owner.region
    }

    /// Takes a free slot, or `None` when every slot is in use. The slot
    /// reads all zero.
    pub fn alloc(&self) -> Option<KeyBlock> {
        let region = self.region();
        let index = region.free.pop()?;
        Some(KeyBlock { region, index })
    }

    /// Bytes per slot.
    pub fn block_size(&self) -> usize {
        self.region().block_size
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.region().free.capacity()
    }

    /// Number of slots not held by any handle right now.
    pub fn free_slots(&self) -> usize {
        self.region().free.len()
    }

    /// What the OS granted: memory lock and core-dump exclusion.
    pub fn protection(&self) -> Protection {
        self.region().protection
    }

    /// Reads slot `index` directly, for tests that check a released slot
    /// was wiped. Returns `None` while a handle holds the slot (reading it
    /// then would race with the holder).
    #[doc(hidden)]
    pub fn peek_free_slot(&self, index: u32) -> Option<Vec<u8>> {
        let region = self.region();
        // Take the slot out of the free list so nobody can allocate it while
        // we read, then put it back.
        let mut taken = Vec::new();
        let mut found = None;
        while let Some(i) = region.free.pop() {
            taken.push(i);
            if i == index {
                let (start, len) = (region.slot_ptr(i), region.block_size);
                // SAFETY: we popped `index` from the free list: no handle
                // holds it until we push it back below.
                let bytes = unsafe { std::slice::from_raw_parts(start, len) };
                found = Some(bytes.to_vec());
                break;
            }
        }
        for i in taken {
            let _ = region.free.push(i);
        }
        found
    }
}

impl Region {
    fn allocate(block_size: usize, capacity: usize) -> Result<Region, ArenaError> {
        let stride = block_size.next_multiple_of(SLOT_ALIGN);
        let size = stride
            .checked_mul(capacity)
            .and_then(|s| s.checked_next_multiple_of(PAGE))
            .ok_or(ArenaError::Capacity(capacity))?;
        let layout =
            Layout::from_size_align(size, PAGE).map_err(|_| ArenaError::Capacity(capacity))?;
        // SAFETY: `layout` has a non-zero size (capacity >= 1, stride >= 16).
        let base =
            NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or(ArenaError::Capacity(capacity))?;
        // SAFETY: `base..base + size` was just allocated and is ours.
        let protection = match unsafe { protect(base, size, "key arena", locking_required()) } {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: allocated above with `layout`, never handed out.
                unsafe { dealloc(base.as_ptr(), layout) };
                return Err(ArenaError::NotLocked(e));
            }
        };
        let free = ArrayQueue::new(capacity);
        for index in 0..capacity as u32 {
            // Cannot fail: the queue has exactly `capacity` places.
            let _ = free.push(index);
        }
        Ok(Region {
            base,
            block_size,
            stride,
            free,
            protection,
        })
    }
}

/// The unique handle to one arena slot. Dropping it zeroizes the slot and
/// returns it to the free list. Its `Debug` output never shows key bytes.
pub struct KeyBlock {
    region: &'static Region,
    index: u32,
}

impl KeyBlock {
    /// The slot's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: this handle is the only holder of slot `index` (see
        // `Region`), and the slice lives no longer than `&self`.
        unsafe {
            std::slice::from_raw_parts(self.region.slot_ptr(self.index), self.region.block_size)
        }
    }

    /// The slot's bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the view exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(self.region.slot_ptr(self.index), self.region.block_size)
        }
    }

    /// Zeroizes `range` of the slot now (e.g. a chunk already delivered),
    /// keeping the rest.
    pub fn wipe_range(&mut self, range: std::ops::Range<usize>) {
        self.bytes_mut()[range].zeroize();
    }

    /// The slot's index in its arena (not secret).
    pub fn slot(&self) -> u32 {
        self.index
    }
}

impl Drop for KeyBlock {
    fn drop(&mut self) {
        // SAFETY: this handle holds the slot exclusively until the push below.
        unsafe { self.region.wipe(self.index) };
        // Cannot fail: the queue holds at most `capacity` indexes and this
        // one is not in it.
        let _ = self.region.free.push(self.index);
    }
}

impl fmt::Debug for KeyBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBlock")
            .field("slot", &self.index)
            .field("len", &self.region.block_size)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_bounds_are_enforced() {
        assert_eq!(KeyArena::new(15, 4).unwrap_err(), ArenaError::BlockSize(15));
        assert_eq!(
            KeyArena::new(65537, 4).unwrap_err(),
            ArenaError::BlockSize(65537)
        );
        assert_eq!(KeyArena::new(16, 0).unwrap_err(), ArenaError::Capacity(0));
        assert!(KeyArena::new(16, 1).is_ok());
        assert!(KeyArena::new(65536, 2).is_ok());
    }

    #[test]
    fn dropped_handle_slot_reads_all_zero_and_is_reused() {
        let arena = KeyArena::new(33, 2).unwrap();
        let mut a = arena.alloc().unwrap();
        let mut b = arena.alloc().unwrap();
        assert!(arena.alloc().is_none(), "only two slots");
        assert!(a.bytes().iter().all(|&x| x == 0));
        a.bytes_mut().fill(0xA5);
        b.bytes_mut().fill(0x5A);
        let slot = a.slot();
        assert_eq!(
            arena.peek_free_slot(slot),
            None,
            "held slot is not readable"
        );
        drop(a);
        assert_eq!(arena.peek_free_slot(slot), Some(vec![0u8; 33]));
        assert_eq!(b.bytes(), &[0x5A; 33][..], "neighbour untouched");
        assert_eq!(arena.free_slots(), 1);
        let again = arena.alloc().unwrap();
        assert_eq!(again.slot(), slot);
        assert!(again.bytes().iter().all(|&x| x == 0));
    }

    #[test]
    fn wipe_range_clears_only_that_range() {
        let arena = KeyArena::new(64, 1).unwrap();
        let mut a = arena.alloc().unwrap();
        a.bytes_mut().fill(7);
        a.wipe_range(16..48);
        assert!(a.bytes()[..16].iter().all(|&x| x == 7));
        assert!(a.bytes()[16..48].iter().all(|&x| x == 0));
        assert!(a.bytes()[48..].iter().all(|&x| x == 7));
    }

    #[test]
    fn debug_never_shows_bytes() {
        let arena = KeyArena::new(16, 1).unwrap();
        let mut a = arena.alloc().unwrap();
        a.bytes_mut().fill(0xAB);
        let text = format!("{a:?} {arena:?}");
        assert!(
            !text.contains("171") && !text.to_lowercase().contains("ab, "),
            "{text}"
        );
    }

    #[test]
    fn handle_may_outlive_its_arena_and_the_region_is_reused() {
        // A geometry no other test uses, so the pool holds only ours.
        let arena = KeyArena::new(4000, 3).unwrap();
        let mut kept = arena.alloc().unwrap();
        kept.bytes_mut().fill(9);
        drop(arena);
        assert_eq!(kept.bytes()[3999], 9, "still valid memory");
        let other = KeyArena::new(4000, 3).unwrap();
        assert_eq!(
            other.free_slots(),
            3,
            "a region with a slot out is not reused"
        );
        drop(kept);
        drop(other);
        let again = KeyArena::new(4000, 3).unwrap();
        assert_eq!(again.free_slots(), 3);
        for i in 0..3 {
            assert_eq!(
                again.peek_free_slot(i),
                Some(vec![0u8; 4000]),
                "reused slots are zero"
            );
        }
    }

    #[test]
    fn handles_cross_threads() {
        let arena = KeyArena::new(16, 64).unwrap();
        let handles: Vec<_> = (0..64).map(|_| arena.alloc().unwrap()).collect();
        std::thread::spawn(move || drop(handles)).join().unwrap();
        assert_eq!(arena.free_slots(), 64);
    }

    /// Laps of the threaded tests: Miri interprets every instruction (and
    /// checks every access for races), so far fewer there.
    const LAPS: usize = if cfg!(miri) { 12 } else { 20_000 };

    /// Threads take, fill, check and drop slots of one small arena at
    /// once: a slot goes to one holder at a time, each holder finds it
    /// zeroed, and a wipe by the last holder never races the next one's
    /// writes (the free list orders them).
    #[test]
    fn threads_share_the_free_list_never_a_slot() {
        let arena = KeyArena::new(48, 2).unwrap();
        std::thread::scope(|s| {
            for t in 1..=3u8 {
                let arena = &arena;
                s.spawn(move || {
                    for _ in 0..LAPS {
                        let Some(mut block) = arena.alloc() else {
                            std::thread::yield_now();
                            continue;
                        };
                        assert!(block.bytes().iter().all(|&b| b == 0), "handed out unwiped");
                        block.bytes_mut().fill(t);
                        std::thread::yield_now();
                        assert!(
                            block.bytes().iter().all(|&b| b == t),
                            "another holder wrote"
                        );
                    }
                });
            }
        });
        assert_eq!(arena.free_slots(), 2);
    }

    /// A new arena of a dropped arena's geometry, made while another
    /// thread drops that arena's last handles: it reuses the region only
    /// with every slot home, and then finds every slot zeroed.
    #[test]
    fn region_reuse_races_handles_dropped_elsewhere() {
        // A geometry no other test uses.
        const BLOCK: usize = 80;
        const SLOTS: usize = 3;
        for _ in 0..LAPS.min(200) {
            let arena = KeyArena::new(BLOCK, SLOTS).unwrap();
            let mut held: Vec<_> = (0..SLOTS).map(|_| arena.alloc().unwrap()).collect();
            for block in &mut held {
                block.bytes_mut().fill(0xEE);
            }
            drop(arena);
            let dropper = std::thread::spawn(move || drop(held));
            let again = KeyArena::new(BLOCK, SLOTS).unwrap();
            let blocks: Vec<_> = std::iter::from_fn(|| again.alloc()).collect();
            assert_eq!(blocks.len(), SLOTS);
            for block in &blocks {
                assert!(block.bytes().iter().all(|&b| b == 0), "reused unwiped");
            }
            dropper.join().unwrap();
        }
    }
}
