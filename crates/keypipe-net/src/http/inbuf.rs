//! A connection's receive buffer, which wipes every byte leaving its live
//! part (on consume, on growth: the old allocation, and on drop), as
//! received bytes may be key material (the KMS side of ETSI 004).
//!
//! The storage is initialized once, not per read.

use std::io::{self, Read};

use zeroize::{Zeroize, Zeroizing};

pub(super) struct InBuf {
    /// Fully initialized; `buf[..filled]` is live.
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
}

impl InBuf {
    pub(super) fn new() -> InBuf {
        InBuf {
            buf: Zeroizing::new(Vec::new()),
            filled: 0,
        }
    }

    /// The bytes received and not consumed.
    pub(super) fn data(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    pub(super) fn len(&self) -> usize {
        self.filled
    }

    pub(super) fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// One `read` into at least `space` free bytes; the count read. The
    /// buffer grows by doubling, but never past `cap` (beyond what is
    /// needed now), so a connection's memory stays near its limit.
    pub(super) fn read_from(
        &mut self,
        r: &mut impl Read,
        space: usize,
        cap: usize,
    ) -> io::Result<usize> {
        if self.buf.len() - self.filled < space {
            let need = self.filled + space;
            let size = need.next_power_of_two().min(cap.max(need));
            let mut bigger = Zeroizing::new(vec![0u8; size]);
            bigger[..self.filled].copy_from_slice(&self.buf[..self.filled]);
            self.buf = bigger; // the old allocation is wiped on drop
        }
        let n = r.read(&mut self.buf[self.filled..])?;
        self.filled += n;
        Ok(n)
    }

    /// Drops the first `n` live bytes, wiping what they leave behind.
    pub(super) fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.buf[self.filled - n..self.filled].zeroize();
        self.filled -= n;
    }

    /// Wipes and drops every live byte.
    pub(super) fn clear(&mut self) {
        self.buf[..self.filled].zeroize();
        self.filled = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_wipes_the_tail_and_growth_keeps_data() {
        let mut b = InBuf::new();
        let mut src: &[u8] = b"abcdef";
        assert_eq!(b.read_from(&mut src, 8, 1 << 20).unwrap(), 6);
        b.consume(2);
        assert_eq!(b.data(), b"cdef");
        assert!(b.buf[4..].iter().all(|&x| x == 0), "tail wiped");
        let mut more: &[u8] = &[b'x'; 100];
        b.read_from(&mut more, 100, 110).unwrap();
        assert_eq!(b.buf.len(), 110, "not past the cap: 128 would be");
        assert_eq!(&b.data()[..5], b"cdefx");
        assert_eq!(b.len(), 104);
        b.clear();
        assert!(b.is_empty() && b.buf.iter().all(|&x| x == 0));
    }
}
