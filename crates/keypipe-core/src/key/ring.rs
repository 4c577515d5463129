//! The bounded lock-free ring between a device poller and its node.
//!
//! It carries [`DeviceBlock`]s: a block id, its production time, a keyed
//! digest of its bytes (for key confirmation, computed by the poller off
//! the delivery path) and the handle of the arena slot holding the bytes
//! (40 bytes in all). The bytes themselves never enter the ring.
//!
//! There is exactly one producer (the device's poller thread) and one
//! consumer (the node, used under its lock), so the ring is single-producer
//! single-consumer: [`ring`] returns the two halves, each usable by one
//! thread at a time. Each side keeps a private copy of the other side's
//! index and reads the shared one only when its copy says full (or empty),
//! so in steady state a push or pop touches no line the other side writes,
//! apart from the slot itself.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::Duration;

use crossbeam::utils::CachePadded;

use super::{KeyBlock, Stamp};

/// One block as produced by a device: its id on the link, when it was
/// produced, and the slot holding its bytes.
#[derive(Debug)]
pub struct DeviceBlock {
    /// Block id on the link; both devices of a link give the same bytes for
    /// the same id.
    pub id: u64,
    /// When the device produced it (for key age in metadata).
    pub born: Stamp,
    /// A keyed digest of the bytes (64 bits; 0 when no digest key is set),
    /// from which lease check values are derived.
    pub digest: u64,
    /// The key bytes.
    pub key: KeyBlock,
}

/// The state both halves share.
struct Shared {
    /// Count of blocks ever popped (written by the consumer only).
    head: CachePadded<AtomicUsize>,
    /// Count of blocks ever pushed (written by the producer only).
    tail: CachePadded<AtomicUsize>,
    slots: Box<[UnsafeCell<MaybeUninit<DeviceBlock>>]>,
    producer: OnceLock<Thread>,
    producer_waiting: CachePadded<AtomicBool>,
}

// SAFETY: slot `i` is written only by the producer while `i` lies outside
// `head..tail` and read (moved out) only by the consumer while it lies
// inside; the Release stores of `tail`/`head` and the Acquire loads on the
// other side order those accesses. `DeviceBlock` is `Send`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the shared state only holds `Send` data.
unsafe impl Send for Shared {}

impl Shared {
    fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn len(&self) -> usize {
        let head = self.head.load(Ordering::Acquire);
        self.tail.load(Ordering::Acquire).wrapping_sub(head)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Both halves are gone: drop (and so zeroize) what is still queued.
        let (head, tail) = (*self.head.get_mut(), *self.tail.get_mut());
        for pos in head..tail {
            let slot = self.slots[pos % self.slots.len()].get_mut();
            // SAFETY: positions `head..tail` hold initialized blocks that
            // nobody else can reach any more.
            unsafe { slot.assume_init_drop() };
        }
    }
}

/// A ring of `capacity` blocks (at least 1): the producer half for the
/// device's poller, the consumer half for the node.
pub fn ring(capacity: usize) -> (RingProducer, RingConsumer) {
    let capacity = capacity.max(1);
    let shared = Arc::new(Shared {
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        slots: (0..capacity)
            .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
            .collect(),
        producer: OnceLock::new(),
        producer_waiting: CachePadded::new(AtomicBool::new(false)),
    });
    let producer = RingProducer {
        shared: Arc::clone(&shared),
        tail: 0,
        slot: 0,
        head_seen: 0,
    };
    (
        producer,
        RingConsumer {
            shared,
            head: 0,
            slot: 0,
            tail_seen: 0,
        },
    )
}

/// The pushing half of a ring (the device poller's).
pub struct RingProducer {
    shared: Arc<Shared>,
    tail: usize,
    slot: usize,
    head_seen: usize,
}

impl std::fmt::Debug for RingProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingProducer")
            .field("len", &self.shared.len())
            .finish_non_exhaustive()
    }
}

impl RingProducer {
    /// Appends a block, or gives it back when the ring is full (it is never
    /// dropped or overwritten).
    pub fn push(&mut self, block: DeviceBlock) -> Result<(), DeviceBlock> {
        if self.is_full() {
            return Err(block);
        }
        // SAFETY: position `tail` is outside `head..tail` (not full), so the
        // consumer does not touch this slot until the store below.
        unsafe { (*self.shared.slots[self.slot].get()).write(block) };
        self.tail = self.tail.wrapping_add(1);
        self.slot = if self.slot + 1 == self.shared.capacity() {
            0
        } else {
            self.slot + 1
        };
        self.shared.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// True when a push would be refused.
    pub fn is_full(&mut self) -> bool {
        let capacity = self.shared.capacity();
        if self.tail.wrapping_sub(self.head_seen) < capacity {
            return false;
        }
        self.head_seen = self.shared.head.load(Ordering::Acquire);
        self.tail.wrapping_sub(self.head_seen) >= capacity
    }

    /// Sleeps while the ring is full, until a pop makes room or `max`
    /// passes (or the thread is unparked). Always called from the same
    /// thread.
    pub fn wait_for_room(&mut self, max: Duration) {
        self.shared.producer.get_or_init(thread::current);
        self.shared.producer_waiting.store(true, Ordering::SeqCst);
        if self.is_full() {
            thread::park_timeout(max);
        }
        self.shared.producer_waiting.store(false, Ordering::SeqCst);
    }
}

/// The popping half of a ring (the node's).
pub struct RingConsumer {
    shared: Arc<Shared>,
    head: usize,
    slot: usize,
    tail_seen: usize,
}

impl std::fmt::Debug for RingConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingConsumer")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl RingConsumer {
    /// Takes the oldest block, waking the producer if it waits for room.
    pub fn pop(&mut self) -> Option<DeviceBlock> {
        if self.head == self.tail_seen {
            self.tail_seen = self.shared.tail.load(Ordering::Acquire);
            if self.head == self.tail_seen {
                return None;
            }
        }
        // The producer wrote this slot before its Release store of `tail`
        // (loaded with Acquire above) and reuses it only after our store below.
        // SAFETY: `head` is inside `head..tail`, so the slot is initialized.
        let block = unsafe { (*self.shared.slots[self.slot].get()).assume_init_read() };
        self.head = self.head.wrapping_add(1);
        self.slot = if self.slot + 1 == self.shared.capacity() {
            0
        } else {
            self.slot + 1
        };
        self.shared.head.store(self.head, Ordering::Release);
        // A waiting producer is woken once half the ring is free (not at
        // every pop: one wake-up per half ring, not per block); a wake-up
        // lost to the race with its `waiting` flag costs it at most its
        // `wait_for_room` timeout.
        if self.shared.producer_waiting.load(Ordering::Relaxed)
            && self.len() <= self.shared.capacity() / 2
            && self.shared.producer_waiting.swap(false, Ordering::SeqCst)
            && let Some(producer) = self.shared.producer.get()
        {
            producer.unpark();
        }
        Some(block)
    }

    /// Blocks waiting in the ring.
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// True when no block waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Maximum number of blocks.
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyArena;

    #[test]
    fn fifo_bounded_and_drops_leftovers() {
        let arena = KeyArena::new(16, 8).unwrap();
        let (mut tx, mut rx) = ring(3);
        for lap in 0..4u64 {
            for i in 0..3 {
                let block = DeviceBlock {
                    id: lap * 10 + i,
                    born: Stamp::now(),
                    digest: 0,
                    key: arena.alloc().unwrap(),
                };
                tx.push(block).unwrap();
            }
            let extra = DeviceBlock {
                id: 99,
                born: Stamp::now(),
                digest: 0,
                key: arena.alloc().unwrap(),
            };
            assert_eq!(
                tx.push(extra).unwrap_err().id,
                99,
                "full: refused, handed back"
            );
            assert_eq!(rx.len(), 3);
            for i in 0..3 {
                assert_eq!(rx.pop().unwrap().id, lap * 10 + i);
            }
            assert!(rx.pop().is_none());
        }
        tx.push(DeviceBlock {
            id: 1,
            born: Stamp::now(),
            digest: 0,
            key: arena.alloc().unwrap(),
        })
        .unwrap();
        assert_eq!(arena.free_slots(), 7);
        drop((tx, rx));
        assert_eq!(arena.free_slots(), 8, "queued block dropped with the ring");
    }

    /// Blocks the threaded tests pass: Miri interprets (about a million
    /// times slower) and explores interleavings, so fewer laps there.
    const THREADED_BLOCKS: u64 = if cfg!(miri) { 300 } else { 100_000 };

    #[test]
    fn threads_pass_every_block_in_order() {
        let arena = KeyArena::new(16, 64).unwrap();
        let (mut tx, mut rx) = ring(16);
        let producer = thread::spawn(move || {
            for id in 0..THREADED_BLOCKS {
                let mut block = loop {
                    if let Some(key) = arena.alloc() {
                        break DeviceBlock {
                            id,
                            born: Stamp::now(),
                            digest: 0,
                            key,
                        };
                    }
                    thread::yield_now();
                };
                block.key.bytes_mut()[..8].copy_from_slice(&id.to_le_bytes());
                while let Err(back) = tx.push(block) {
                    block = back;
                    tx.wait_for_room(Duration::from_millis(5));
                }
            }
        });
        for id in 0..THREADED_BLOCKS {
            let block = loop {
                match rx.pop() {
                    Some(b) => break b,
                    None => thread::yield_now(),
                }
            };
            assert_eq!(
                (block.id, &block.key.bytes()[..8]),
                (id, &id.to_le_bytes()[..])
            );
        }
        producer.join().unwrap();
    }

    /// The halves dropped on two threads with blocks still queued: the
    /// last drop releases (zeroizes) what is left, after the producer's
    /// writes of those slots (the shared `Arc` orders them).
    #[test]
    fn halves_dropped_on_two_threads_release_what_is_queued() {
        let arena = KeyArena::new(16, 8).unwrap();
        for _ in 0..if cfg!(miri) { 6 } else { 2_000 } {
            let (mut tx, mut rx) = ring(4);
            let producer = thread::spawn({
                let arena = arena.clone();
                move || {
                    for id in 0..4u64 {
                        let mut key = arena.alloc().unwrap();
                        key.bytes_mut().fill(id as u8 + 1);
                        let block = DeviceBlock {
                            id,
                            born: Stamp::now(),
                            digest: 0,
                            key,
                        };
                        tx.push(block).unwrap();
                    }
                }
            });
            let first = loop {
                match rx.pop() {
                    Some(b) => break b,
                    None => thread::yield_now(),
                }
            };
            assert_eq!((first.id, first.key.bytes()), (0, &[1u8; 16][..]));
            drop(rx);
            producer.join().unwrap();
            drop(first);
            assert_eq!(arena.free_slots(), 8, "every queued block released");
        }
    }

    /// The ring and the arena against a model: a FIFO of block ids and the
    /// set of slots held.
    mod model {
        use std::collections::{HashSet, VecDeque};

        use proptest::prelude::*;

        use super::*;

        const SLOTS: usize = 6;
        const BLOCK: usize = 16;

        #[derive(Debug, Clone)]
        enum Op {
            /// Allocate a block and push it (or hand it back when full).
            Push,
            /// Pop a block and keep it.
            Pop,
            /// Drop the `i`-th block kept.
            Release(usize),
            /// Drop the producer and the consumer (and what the ring holds)
            /// and start a new ring.
            NewRing,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => Just(Op::Push),
                4 => Just(Op::Pop),
                3 => (0..8usize).prop_map(Op::Release),
                1 => Just(Op::NewRing),
            ]
        }

        /// The bytes block `id` is filled with (never all zero).
        fn pattern(id: u64) -> [u8; BLOCK] {
            let mut out = [0u8; BLOCK];
            for (i, b) in out.iter_mut().enumerate() {
                *b = (id as u8).wrapping_mul(31).wrapping_add(i as u8) | 1;
            }
            out
        }

        /// Under Miri: a few cases, and no failure file (Miri isolates the
        /// file system); each case still runs up to 200 operations.
        fn config() -> ProptestConfig {
            if cfg!(miri) {
                ProptestConfig {
                    cases: 4,
                    failure_persistence: None,
                    ..ProptestConfig::default()
                }
            } else {
                ProptestConfig::default()
            }
        }

        proptest! {
            #![proptest_config(config())]

            /// Blocks come out in order with their bytes; no slot is held
            /// twice; every slot released (dropped, or left in a dropped
            /// ring) is zero and free again; nothing is lost.
            #[test]
            fn ring_and_arena_agree_with_a_model(ops in proptest::collection::vec(op(), 1..200)) {
                let arena = KeyArena::new(BLOCK, SLOTS).unwrap();
                let (mut tx, mut rx) = ring(3);
                let mut queued: VecDeque<u64> = VecDeque::new();
                let mut kept: Vec<DeviceBlock> = Vec::new();
                let mut next_id = 0u64;
                for op in ops {
                    match op {
                        Op::Push => {
                            let Some(mut key) = arena.alloc() else {
                                prop_assert_eq!(queued.len() + kept.len(), SLOTS, "alloc failed with free slots");
                                continue;
                            };
                            key.bytes_mut().copy_from_slice(&pattern(next_id));
                            let block = DeviceBlock { id: next_id, born: Stamp::now(), digest: 0, key };
                            match tx.push(block) {
                                Ok(()) => queued.push_back(next_id),
                                Err(back) => {
                                    prop_assert_eq!(queued.len(), 3, "refused while not full");
                                    prop_assert_eq!(back.id, next_id);
                                }
                            }
                            next_id += 1;
                        }
                        Op::Pop => match rx.pop() {
                            Some(block) => {
                                prop_assert_eq!(Some(block.id), queued.pop_front(), "out of order");
                                prop_assert_eq!(block.key.bytes(), &pattern(block.id)[..]);
                                kept.push(block);
                            }
                            None => prop_assert!(queued.is_empty(), "empty while holding blocks"),
                        },
                        Op::Release(i) if !kept.is_empty() => {
                            let block = kept.swap_remove(i % kept.len());
                            let slot = block.key.slot();
                            drop(block);
                            prop_assert_eq!(arena.peek_free_slot(slot), Some(vec![0u8; BLOCK]), "not wiped");
                        }
                        Op::Release(_) => {}
                        Op::NewRing => {
                            (tx, rx) = ring(3);
                            queued.clear();
                        }
                    }
                    let held: HashSet<u32> = kept.iter().map(|b| b.key.slot()).collect();
                    prop_assert_eq!(held.len(), kept.len(), "a slot held twice");
                    prop_assert_eq!(arena.free_slots(), SLOTS - kept.len() - queued.len());
                    prop_assert_eq!(rx.len(), queued.len());
                }
                drop((tx, rx, kept));
                prop_assert_eq!(arena.free_slots(), SLOTS);
                for slot in 0..SLOTS as u32 {
                    prop_assert_eq!(arena.peek_free_slot(slot), Some(vec![0u8; BLOCK]));
                }
            }
        }
    }
}
