//! Randomness for new key material of the KMS services.
//!
//! Every draw mixes the operating system's generator with fresh QKD key
//! when the node has a device: `seed = BLAKE3 derive_key("keypipe kms
//! entropy v1", os_32 ‖ qkd_32)`, expanded with BLAKE3's keyed XOF. Never
//! QKD key alone (the OS part is always there) and never key that was or
//! will be delivered to a stream: the QKD part comes from blocks the leader
//! node takes outside every stream (the follower skips them). Each 32-byte
//! piece of a block is used once, then wiped; a new block is taken when one
//! runs out. Without a device (or on a follower node, or when the ring is
//! empty) the OS generator alone is used; `draws_with_qkd` counts the rest.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroizing;

/// A source of fresh QKD key for local use.
pub trait QkdSource: Send + Sync {
    /// A whole fresh block, or `None` when there is none now.
    fn take_block(&self) -> Option<Zeroizing<Vec<u8>>>;
}

/// The KMS's random generator.
#[derive(Default)]
pub struct Entropy {
    qkd: Option<Box<dyn QkdSource>>,
    /// The current QKD block and how much of it is used.
    block: Mutex<(Zeroizing<Vec<u8>>, usize)>,
    /// Draws that mixed in QKD key.
    pub draws_with_qkd: AtomicU64,
    /// Draws from the OS generator alone.
    pub draws_os_only: AtomicU64,
}

impl std::fmt::Debug for Entropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entropy")
            .field("qkd", &self.qkd.is_some())
            .finish_non_exhaustive()
    }
}

impl Entropy {
    /// OS generator only.
    pub fn os_only() -> Self {
        Self::default()
    }

    /// OS generator mixed with `qkd`.
    pub fn with_qkd(qkd: Box<dyn QkdSource>) -> Self {
        Self {
            qkd: Some(qkd),
            ..Self::default()
        }
    }

    /// 32 unused bytes of QKD key, if any.
    fn qkd_piece(&self) -> Option<Zeroizing<[u8; 32]>> {
        let qkd = self.qkd.as_ref()?;
        let mut state = self.block.lock().unwrap_or_else(|p| p.into_inner());
        if state.0.len() < state.1 + 32 {
            *state = (qkd.take_block()?, 0);
            if state.0.len() < 32 {
                return None;
            }
        }
        let at = state.1;
        let mut piece = Zeroizing::new([0u8; 32]);
        piece.copy_from_slice(&state.0[at..at + 32]);
        zeroize::Zeroize::zeroize(&mut state.0[at..at + 32]);
        state.1 += 32;
        Some(piece)
    }

    /// Fills `out` with fresh random bytes.
    pub fn fill(&self, out: &mut [u8]) -> Result<(), getrandom::Error> {
        let mut input = Zeroizing::new([0u8; 64]);
        getrandom::fill(&mut input[..32])?;
        match self.qkd_piece() {
            Some(piece) => {
                input[32..].copy_from_slice(&piece[..]);
                self.draws_with_qkd.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.draws_os_only.fetch_add(1, Ordering::Relaxed);
            }
        }
        let seed = Zeroizing::new(blake3::derive_key("keypipe kms entropy v1", &input[..]));
        blake3::Hasher::new_keyed(&seed).finalize_xof().fill(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl QkdSource for Fixed {
        fn take_block(&self) -> Option<Zeroizing<Vec<u8>>> {
            Some(Zeroizing::new(vec![7u8; 64]))
        }
    }

    #[test]
    fn mixes_and_never_repeats() {
        let e = Entropy::with_qkd(Box::new(Fixed));
        let (mut a, mut b) = ([0u8; 48], [0u8; 48]);
        e.fill(&mut a).unwrap();
        e.fill(&mut b).unwrap();
        assert_ne!(
            a, b,
            "the OS part makes draws differ even with equal QKD input"
        );
        e.fill(&mut b).unwrap(); // third piece: a second block is taken
        assert_eq!(e.draws_with_qkd.load(Ordering::Relaxed), 3);
        let os = Entropy::os_only();
        os.fill(&mut a).unwrap();
        assert_eq!(os.draws_os_only.load(Ordering::Relaxed), 1);
    }
}
