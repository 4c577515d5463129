//! The poller thread: polls one device and pushes its blocks into the ring.
//! Backpressure: when the ring or the arena is full it stops polling (a real
//! device buffers, the simulated link pauses); a block is never dropped or
//! overwritten.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Device health as seen by the poller, read by the stream manager.
#[derive(Debug)]
pub struct DeviceState {
    up: AtomicBool,
    exhausted: AtomicBool,
}

impl Default for DeviceState {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            exhausted: AtomicBool::new(false),
        }
    }
}

impl DeviceState {
    /// False while the device reports an outage or has ended for good.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire) && !self.exhausted.load(Ordering::Acquire)
    }
}

/// A running poller thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts polling `device` into `ring`, taking slots from `arena`.
    pub fn spawn(
        mut device: Box<dyn QkdDevice>,
        arena: KeyArena,
        mut ring: RingProducer,
        counters: Arc<KeyCounters>,
        state: Arc<DeviceState>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("keypipe-poller".into())
            .spawn(move || {
                let mut slot: Option<KeyBlock> = None;
                while !stopping.load(Ordering::Acquire) {
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
                            let key = slot.take().expect("slot present");
                            // Only this thread pushes and the ring was not full.
                            if let Err(back) = ring.push(DeviceBlock {
                                id,
                                born: Stamp::now(),
                                key,
                            }) {
                                slot = Some(back.key);
                                tracing::error!("ring refused a block it had room for");
                                continue;
                            }
                            counters.produced();
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
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
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
        let poller =
            Poller::spawn(Box::new(dev), arena.clone(), tx, counters.clone(), state).unwrap();
        // Nobody consumes: the ring fills and the poller stalls.
        while counters.snapshot().ring_full_stalls < 3 {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ring.len(), 4);
        assert_eq!(
            counters.snapshot().produced,
            4,
            "nothing produced past a full ring"
        );
        // Now drain 1000 blocks: ids contiguous, bytes equal to the twin's.
        let mut expect = [0u8; 64];
        let mut next = 0;
        while next < 1000 {
            let Some(b) = ring.pop() else {
                thread::yield_now();
                continue;
            };
            assert_eq!(b.id, next, "no block skipped or repeated");
            assert_eq!(twin.poll(&mut expect), DevicePoll::Ready(next));
            assert_eq!(b.key.bytes(), &expect[..]);
            next += 1;
        }
        drop(poller);
        while ring.pop().is_some() {}
        assert_eq!(arena.free_slots(), 16, "every slot returned");
    }
}
