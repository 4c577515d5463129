//! The poller thread: polls one device and pushes its blocks into the ring.
//! Backpressure: when the ring or the arena is full it stops polling (a real
//! device buffers, the simulated link pauses); a block is never dropped or
//! overwritten.
//!
//! The key ledger: no block enters the ring before the node's ledger has
//! durably recorded that its id is spent ([`Reserve`]). The poller reserves
//! ahead in batches (one durable write per batch, sized to about a fifth of
//! a second of the device's rate), so the ledger costs no wait in steady
//! state; a restarted node resumes past everything reserved.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{DevicePoll, QkdDevice};
use crate::key::{DeviceBlock, KeyArena, KeyBlock, KeyCounters, RingProducer, Stamp};

/// Longest nap between polls, so a stop request is seen quickly.
const MAX_NAP: Duration = Duration::from_millis(5);
/// Longest sleep while the ring is full (a pop wakes the poller sooner;
/// this bounds the rare wake-up lost to a race).
const FULL_WAIT: Duration = Duration::from_millis(5);
/// Nap while every arena slot is held (streams hold key; rare).
const ARENA_NAP: Duration = Duration::from_millis(2);
/// Pause after a failed ledger write before trying again.
const LEDGER_RETRY: Duration = Duration::from_millis(200);
/// Reservation batches, in blocks.
const MIN_BATCH: u64 = 16;
const MAX_BATCH: u64 = 16384;
/// A batch should last about this long at the device's rate.
const BATCH_TIME: Duration = Duration::from_millis(200);

/// The durable record of spent device positions (the node's key ledger).
pub trait Reserve: Send {
    /// Records, durably, that every block id below `below` may have been
    /// handed out: a restarted node starts its device at `below` or later.
    /// Returns only once the record is on stable storage.
    fn reserve(&mut self, below: u64) -> std::io::Result<()>;
}

/// A keyed digest of a block's bytes (64 bits), computed by the poller as
/// it reads each block, so key confirmation costs the delivery path
/// nothing.
pub type BlockDigest = Box<dyn Fn(&[u8]) -> u64 + Send>;

/// What the poller needs besides the device and the ring.
pub struct PollerConfig {
    /// The ledger ids are reserved in before a block enters the ring.
    pub ledger: Box<dyn Reserve>,
    /// Ids below this are already reserved.
    pub reserved: u64,
    /// Digest of each block (none: digest 0).
    pub digest: Option<BlockDigest>,
}

/// The poller's side of the ledger: what is durable, and how far ahead to
/// reserve.
struct Reservation {
    ledger: Box<dyn Reserve>,
    /// Ids below this are durably reserved.
    below: u64,
    batch: u64,
    last: Option<std::time::Instant>,
}

impl Reservation {
    /// Makes `id` durable (and some ahead of it); false when the ledger
    /// cannot be written.
    fn cover(&mut self, id: u64, state: &DeviceState) -> bool {
        if id < self.below && self.below - id > self.batch / 2 {
            return true;
        }
        let now = std::time::Instant::now();
        if let Some(last) = self.last {
            // Size batches to the device's pace: fewer writes when fast,
            // less key skipped on restart when slow.
            let took = now.duration_since(last);
            if took < BATCH_TIME / 2 {
                self.batch = (self.batch * 2).min(MAX_BATCH);
            } else if took > BATCH_TIME * 4 {
                self.batch = (self.batch / 2).max(MIN_BATCH);
            }
        }
        let below = id.saturating_add(1).saturating_add(self.batch);
        match self.ledger.reserve(below) {
            Ok(()) => {
                self.below = below;
                self.last = Some(now);
                if state.ledger_failed.swap(false, Ordering::AcqRel) {
                    tracing::info!("key ledger writable again");
                }
                true
            }
            // Ahead of need: the block is covered already, try later.
            Err(_) if id < self.below => true,
            Err(e) => {
                if !state.ledger_failed.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, "key ledger write failed: no key is handed out until it can be recorded");
                }
                false
            }
        }
    }
}

/// Device health as seen by the poller, read by the stream manager.
#[derive(Debug)]
pub struct DeviceState {
    up: AtomicBool,
    exhausted: AtomicBool,
    ledger_failed: AtomicBool,
    /// A background thread of the engine panicked: down for good.
    failed: AtomicBool,
}

impl Default for DeviceState {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            exhausted: AtomicBool::new(false),
            ledger_failed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        }
    }
}

impl DeviceState {
    /// False while the device reports an outage, has ended for good, or
    /// its ledger cannot be written.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
            && !self.exhausted.load(Ordering::Acquire)
            && !self.ledger_failed.load(Ordering::Acquire)
            && !self.failed.load(Ordering::Acquire)
    }

    /// True once a background thread panicked: the device stays down.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Runs the body of background thread `what`; a panic (a bug, never
    /// bad input) marks the device down for good instead of stopping the
    /// thread silently, so callers get "no QKD connection" rather than
    /// waiting for key that never comes.
    pub fn run_guarded(&self, what: &str, body: impl FnOnce()) {
        if catch_unwind(AssertUnwindSafe(body)).is_err() {
            self.failed.store(true, Ordering::Release);
            self.up.store(false, Ordering::Release);
            tracing::error!("{what} thread panicked: the QKD device is down until restart");
        }
    }

    /// True while the key ledger cannot be written (no key flows).
    pub fn ledger_failed(&self) -> bool {
        self.ledger_failed.load(Ordering::Acquire)
    }
}

/// A running poller thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Poller {
    stop: Arc<AtomicBool>,
    skip: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts polling `device` into `ring`, taking slots from `arena`.
    /// Every block id is reserved in `config.ledger` before the block enters
    /// the ring.
    pub fn spawn(
        mut device: Box<dyn QkdDevice>,
        arena: KeyArena,
        mut ring: RingProducer,
        counters: Arc<KeyCounters>,
        state: Arc<DeviceState>,
        config: PollerConfig,
    ) -> std::io::Result<Self> {
        let PollerConfig {
            ledger,
            reserved,
            digest,
        } = config;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let skip = Arc::new(AtomicU64::new(0));
        let skip_to = Arc::clone(&skip);
        let mut reservation = Reservation {
            ledger,
            below: reserved,
            batch: MIN_BATCH,
            last: None,
        };
        let guard = Arc::clone(&state);
        let thread = thread::Builder::new()
            .name("keypipe-poller".into())
            .spawn(move || {
                guard.run_guarded("device poller", move || {
                    let mut slot: Option<KeyBlock> = None;
                    // A block read but not yet durably reserved (the slot holds
                    // it): its id and digest.
                    let mut unreserved: Option<(u64, u64)> = None;
                    while !stopping.load(Ordering::Acquire) {
                        let position = skip_to.swap(0, Ordering::AcqRel);
                        if position > 0 {
                            device.skip_to(position);
                        }
                        if let Some((id, sum)) = unreserved {
                            if !reservation.cover(id, &state) {
                                thread::park_timeout(LEDGER_RETRY);
                                continue;
                            }
                            unreserved = None;
                            let key = slot.take().expect("slot holds the block");
                            if let Err(back) = ring.push(DeviceBlock {
                                id,
                                born: Stamp::now(),
                                digest: sum,
                                key,
                            }) {
                                slot = Some(back.key);
                                unreserved = Some((id, sum));
                                ring.wait_for_room(FULL_WAIT);
                                continue;
                            }
                            counters.produced();
                            continue;
                        }
                        if ring.is_full() {
                            counters.stalled();
                            ring.wait_for_room(FULL_WAIT);
                            continue;
                        }
                        if slot.is_none() {
                            slot = arena.alloc();
                        }
                        let Some(block) = slot.as_mut() else {
                            counters.stalled();
                            thread::park_timeout(ARENA_NAP);
                            continue;
                        };
                        match device.poll(block.bytes_mut()) {
                            DevicePoll::Ready(id) => {
                                state.up.store(true, Ordering::Release);
                                // Handed out (into the ring) once durably reserved.
                                let sum = digest.as_ref().map_or(0, |d| d(block.bytes()));
                                unreserved = Some((id, sum));
                            }
                            DevicePoll::Pending(wait) => thread::park_timeout(wait.min(MAX_NAP)),
                            DevicePoll::Down(wait) => {
                                if state.up.swap(false, Ordering::AcqRel) {
                                    tracing::warn!("QKD device down");
                                }
                                thread::park_timeout(wait.min(MAX_NAP));
                            }
                            DevicePoll::Exhausted => {
                                state.exhausted.store(true, Ordering::Release);
                                tracing::info!("QKD device exhausted: no more key");
                                break;
                            }
                        }
                    }
                })
            })?;
        Ok(Self {
            stop,
            skip,
            thread: Some(thread),
        })
    }
}

impl Poller {
    /// Asks the device to move forward to `position` (the peer node is
    /// there already); blocks below it that are already read still come
    /// out of the ring and are discarded by the node.
    pub fn skip_to(&self, position: u64) {
        (self.skipper())(position);
    }

    /// [`Poller::skip_to`] as a function other threads can keep.
    pub fn skipper(&self) -> impl Fn(u64) + Send + 'static {
        let skip = Arc::clone(&self.skip);
        let thread = self.thread.as_ref().map(|t| t.thread().clone());
        move |position| {
            skip.fetch_max(position, Ordering::AcqRel);
            if let Some(t) = &thread {
                t.unpark();
            }
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::SimulatedLink;

    #[test]
    fn stalled_consumer_loses_nothing() {
        let arena = KeyArena::new(64, 16).unwrap();
        let (tx, mut ring) = crate::key::ring(4);
        let counters = Arc::new(KeyCounters::default());
        let state = Arc::new(DeviceState::default());
        let (dev, mut twin, _) = SimulatedLink::pair(&[3; 32], 64, 0);
        let reserved = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ledger = Recorder(Arc::clone(&reserved));
        let config = PollerConfig {
            ledger: Box::new(ledger),
            reserved: 0,
            digest: Some(Box::new(|b: &[u8]| u64::from(b[0]))),
        };
        let poller = Poller::spawn(
            Box::new(dev),
            arena.clone(),
            tx,
            counters.clone(),
            state,
            config,
        )
        .unwrap();
        // Nobody consumes: the ring fills and the poller stalls. The
        // counters are Relaxed statistics that order nothing: seeing three
        // stalls does not make the ring's fourth push visible yet (Miri's
        // weak-memory emulation showed it), so wait for all three.
        while counters.snapshot().ring_full_stalls < 3
            || counters.snapshot().produced < 4
            || ring.len() < 4
        {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ring.len(), 4);
        assert_eq!(
            counters.snapshot().produced,
            4,
            "nothing produced past a full ring"
        );
        // Now drain 1000 blocks (a few dozen under Miri, which interprets
        // every AES round): ids contiguous, bytes equal to the twin's.
        let blocks = if cfg!(miri) { 24 } else { 1000 };
        let mut expect = [0u8; 64];
        let mut next = 0;
        while next < blocks {
            let Some(b) = ring.pop() else {
                thread::yield_now();
                continue;
            };
            assert_eq!(b.id, next, "no block skipped or repeated");
            assert_eq!(
                b.digest,
                u64::from(b.key.bytes()[0]),
                "digest of its own bytes"
            );
            assert_eq!(twin.poll(&mut expect), DevicePoll::Ready(next));
            assert_eq!(b.key.bytes(), &expect[..]);
            next += 1;
        }
        drop(poller);
        let highest = ring.pop().map_or(next, |b| b.id + 1);
        while ring.pop().is_some() {}
        assert_eq!(arena.free_slots(), 16, "every slot returned");
        let reserved = reserved.lock().unwrap();
        assert!(
            reserved.windows(2).all(|w| w[0] < w[1]),
            "reservations only grow: {reserved:?}"
        );
        assert!(
            *reserved.last().unwrap() >= highest,
            "every block handed out was reserved first"
        );
        assert!(reserved.len() < 200, "batched: {} writes", reserved.len());
    }

    /// Records reservations (stands in for the ledger file here; the real
    /// ledger is tested in `qkd::ledger`).
    struct Recorder(Arc<std::sync::Mutex<Vec<u64>>>);

    impl Reserve for Recorder {
        fn reserve(&mut self, below: u64) -> std::io::Result<()> {
            self.0.lock().unwrap().push(below);
            Ok(())
        }
    }

    struct FailingLedger(Arc<AtomicBool>);

    impl Reserve for FailingLedger {
        fn reserve(&mut self, _: u64) -> std::io::Result<()> {
            if self.0.load(Ordering::SeqCst) {
                Err(std::io::Error::other("disk full"))
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn nothing_enters_the_ring_while_the_ledger_cannot_be_written() {
        let arena = KeyArena::new(64, 8).unwrap();
        let (tx, mut ring) = crate::key::ring(4);
        let counters = Arc::new(KeyCounters::default());
        let state = Arc::new(DeviceState::default());
        let failing = Arc::new(AtomicBool::new(true));
        let (dev, mut twin, _) = SimulatedLink::pair(&[4; 32], 64, 0);
        let config = PollerConfig {
            ledger: Box::new(FailingLedger(Arc::clone(&failing))),
            reserved: 0,
            digest: None,
        };
        let poller = Poller::spawn(
            Box::new(dev),
            arena.clone(),
            tx,
            counters,
            Arc::clone(&state),
            config,
        )
        .unwrap();
        // Once the poller has met the failing ledger (its first block can
        // take Miri more than 100 ms of its clock), and a while after.
        while !state.ledger_failed() {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(100));
        assert!(ring.pop().is_none(), "no block without a ledger record");
        assert!(!state.is_up() && state.ledger_failed());
        failing.store(false, Ordering::SeqCst);
        let block = loop {
            if let Some(b) = ring.pop() {
                break b;
            }
            thread::sleep(Duration::from_millis(5));
        };
        let mut expect = [0u8; 64];
        assert_eq!(twin.poll(&mut expect), DevicePoll::Ready(0));
        assert_eq!(
            (block.id, block.key.bytes()),
            (0, &expect[..]),
            "the held block, not lost"
        );
        assert!(state.is_up());
        drop(poller);
    }
}
