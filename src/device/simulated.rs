//! `SimulatedLink`: two devices producing identical blocks from a shared
//! link secret, paced to a secret-key rate, with injectable outages.
//!
//! The key stream is AES-256-CTR (AES-NI where the CPU has it) under a key
//! derived from the link secret with BLAKE3 `derive_key`; block `n` is
//! bytes `n*block_size..(n+1)*block_size` of that stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ctr::cipher::{KeyIvInit, StreamCipher};

use super::{DevicePoll, QkdDevice};

/// BLAKE3 `derive_key` context for the link's stream-cipher key.
const CONTEXT: &str = "keypipe 2026 simulated QKD link v1 AES-256-CTR key";

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// Switches a simulated link up or down, for both of its devices at once.
#[derive(Debug, Clone, Default)]
pub struct LinkControl {
    down: Arc<AtomicBool>,
}

impl LinkControl {
    /// Takes the link down (`true`) or brings it back (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// True while an outage is injected.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

/// Constructor of simulated device pairs.
#[derive(Debug)]
pub struct SimulatedLink;

impl SimulatedLink {
    /// Two devices (node A's, node B's) that yield byte-identical blocks for
    /// identical block ids: block `n` is bytes `n*block_size..` of the
    /// AES-256-CTR stream keyed from `secret`. `rate_bps` paces each device to that many
    /// secret bits per second (0: as fast as possible).
    pub fn pair(
        secret: &[u8; 32],
        block_size: usize,
        rate_bps: u64,
    ) -> (SimulatedDevice, SimulatedDevice, LinkControl) {
        let control = LinkControl::default();
        let a = SimulatedDevice::new(secret, block_size, rate_bps, control.clone());
        let b = SimulatedDevice::new(secret, block_size, rate_bps, control.clone());
        (a, b, control)
    }
}

/// One end of a simulated link.
pub struct SimulatedDevice {
    stream: Aes256Ctr,
    block_size: usize,
    next_id: u64,
    rate_bps: u64,
    start: Instant,
    control: LinkControl,
}

impl std::fmt::Debug for SimulatedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedDevice")
            .field("block_size", &self.block_size)
            .field("next_id", &self.next_id)
            .field("rate_bps", &self.rate_bps)
            .finish_non_exhaustive()
    }
}

impl SimulatedDevice {
    /// One end of the link keyed by `secret`; see [`SimulatedLink::pair`].
    pub fn new(secret: &[u8; 32], block_size: usize, rate_bps: u64, control: LinkControl) -> Self {
        let key = zeroize::Zeroizing::new(blake3::derive_key(CONTEXT, secret));
        let stream = Aes256Ctr::new((&*key).into(), &Default::default());
        Self {
            stream,
            block_size,
            next_id: 0,
            rate_bps,
            start: Instant::now(),
            control,
        }
    }

    /// Time at which block number `n` (counted from start) is due.
    fn due(&self, n: u64) -> Duration {
        let bits = u128::from(n + 1) * self.block_size as u128 * 8;
        Duration::from_nanos(
            (bits * 1_000_000_000 / u128::from(self.rate_bps)).min(u64::MAX as u128) as u64,
        )
    }
}

impl QkdDevice for SimulatedDevice {
    fn block_size(&self) -> usize {
        self.block_size
    }

    fn poll(&mut self, out: &mut [u8]) -> DevicePoll {
        if self.control.is_down() {
            return DevicePoll::Down(Duration::from_millis(1));
        }
        if self.rate_bps > 0 {
            let due = self.due(self.next_id);
            let now = self.start.elapsed();
            if now < due {
                return DevicePoll::Pending(due - now);
            }
        }
        let block = &mut out[..self.block_size];
        block.fill(0);
        self.stream.apply_keystream(block);
        self.next_id += 1;
        DevicePoll::Ready(self.next_id - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_agree_and_blocks_differ() {
        let (mut a, mut b, _) = SimulatedLink::pair(&[7; 32], 48, 0);
        let (mut x, mut y) = ([0u8; 48], [0u8; 48]);
        let mut seen = std::collections::HashSet::new();
        for id in 0..100 {
            assert_eq!(a.poll(&mut x), DevicePoll::Ready(id));
            assert_eq!(b.poll(&mut y), DevicePoll::Ready(id));
            assert_eq!(x, y);
            assert!(seen.insert(x), "block {id} repeats an earlier block");
        }
        let (mut c, _, _) = SimulatedLink::pair(&[8; 32], 48, 0);
        c.poll(&mut y);
        assert_ne!(y, *seen.iter().next().unwrap());
    }

    #[test]
    fn outage_and_pacing() {
        let (mut a, _, control) = SimulatedLink::pair(&[1; 32], 1000, 8_000); // one block per second
        let mut buf = [0u8; 1000];
        control.set_down(true);
        assert!(matches!(a.poll(&mut buf), DevicePoll::Down(_)));
        control.set_down(false);
        match a.poll(&mut buf) {
            DevicePoll::Pending(wait) => assert!(wait > Duration::from_millis(500), "{wait:?}"),
            other => panic!("expected pacing, got {other:?}"),
        }
    }
}
