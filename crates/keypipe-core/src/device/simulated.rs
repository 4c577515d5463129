//! `SimulatedLink`: two devices producing identical blocks from a shared
//! link secret, paced to a secret-key rate, with injectable outages.
//!
//! The key stream is AES-256-CTR (AES-NI where the CPU has it) under a key
//! derived from the link secret with BLAKE3 `derive_key`; block `n` is
//! bytes `n*block_size..(n+1)*block_size` of that stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use zeroize::Zeroizing;

use super::{DevicePoll, QkdDevice};

/// BLAKE3 `derive_key` context for the link's stream-cipher key.
const CONTEXT: &str = "keypipe 2026 simulated QKD link v1 AES-256-CTR key";
/// BLAKE3 `derive_key` context of the device's identity (one-way from the
/// secret, so the identity never reveals the key stream).
const IDENTITY_CONTEXT: &str = "keypipe 2026 simulated QKD link v1 device identity";

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
        let a = SimulatedDevice::new(secret, block_size, rate_bps, control.clone(), 0);
        let b = SimulatedDevice::new(secret, block_size, rate_bps, control.clone(), 0);
        (a, b, control)
    }
}

/// One end of a simulated link.
pub struct SimulatedDevice {
    stream: Aes256Ctr,
    block_size: usize,
    next_id: u64,
    /// The id this device started at (pacing counts from there).
    first_id: u64,
    identity: Zeroizing<Vec<u8>>,
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
    /// One end of the link keyed by `secret`, whose first block is block
    /// `start` of the link's key stream (a node resumes past the key it
    /// spent); see [`SimulatedLink::pair`].
    pub fn new(
        secret: &[u8; 32],
        block_size: usize,
        rate_bps: u64,
        control: LinkControl,
        start: u64,
    ) -> Self {
        let key = Zeroizing::new(blake3::derive_key(CONTEXT, secret));
        let stream = Aes256Ctr::new((&*key).into(), &Default::default());
        let identity = Self::identity_of(secret);
        let mut device = Self {
            stream,
            block_size,
            next_id: 0,
            first_id: 0,
            identity,
            rate_bps,
            start: Instant::now(),
            control,
        };
        device.seek(start);
        device.first_id = start;
        device
    }

    /// What identifies the key stream of a link keyed by `secret` (one-way
    /// from it).
    pub fn identity_of(secret: &[u8; 32]) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(blake3::derive_key(IDENTITY_CONTEXT, secret).to_vec())
    }

    /// Positions the key stream at block `id`.
    fn seek(&mut self, id: u64) {
        let offset = u128::from(id) * self.block_size as u128;
        self.stream.seek(offset);
        self.next_id = id;
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
            let due = self.due(self.next_id - self.first_id);
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

    fn identity(&self) -> Zeroizing<Vec<u8>> {
        self.identity.clone()
    }

    fn skip_to(&mut self, position: u64) {
        if position > self.next_id {
            // Skipped blocks cost no time: pacing counts produced blocks.
            self.first_id += position - self.next_id;
            self.seek(position);
        }
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
        assert_ne!(*c.identity(), *a.identity());
        assert_eq!(*b.identity(), *a.identity());
    }

    #[test]
    fn a_device_started_at_a_position_continues_the_same_stream() {
        let (mut a, _, _) = SimulatedLink::pair(&[7; 32], 48, 0);
        let mut blocks = vec![[0u8; 48]; 10];
        for (id, block) in blocks.iter_mut().enumerate() {
            assert_eq!(a.poll(block), DevicePoll::Ready(id as u64));
        }
        let mut late = SimulatedDevice::new(&[7; 32], 48, 0, LinkControl::default(), 7);
        let mut buf = [0u8; 48];
        assert_eq!(late.poll(&mut buf), DevicePoll::Ready(7));
        assert_eq!(buf, blocks[7]);
        late.skip_to(9);
        assert_eq!(late.poll(&mut buf), DevicePoll::Ready(9));
        assert_eq!(buf, blocks[9]);
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
