//! GNUnet's encoding of an RSA public key, as Taler publishes it:
//! `u16be len(n) ‖ u16be len(e) ‖ n ‖ e`, with `n` and `e` minimal
//! big-endian (no sign byte). Taler sends it Crockford-encoded, and its
//! `pub_key_hash` is the SHA-512 of these bytes.

/// Strips leading zero bytes.
fn minimal(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    &bytes[zeros..]
}

/// Encodes the public key `(n, e)` (big-endian, leading zeros allowed).
/// `None` when a part is longer than 65 535 bytes.
pub fn encode(n: &[u8], e: &[u8]) -> Option<Vec<u8>> {
    let (n, e) = (minimal(n), minimal(e));
    let n_len = u16::try_from(n.len()).ok()?;
    let e_len = u16::try_from(e.len()).ok()?;
    let mut out = Vec::with_capacity(4 + n.len() + e.len());
    out.extend_from_slice(&n_len.to_be_bytes());
    out.extend_from_slice(&e_len.to_be_bytes());
    out.extend_from_slice(n);
    out.extend_from_slice(e);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let enc = encode(&[0, 0xc3, 0x01], &[0x01, 0x00, 0x01]).unwrap();
        assert_eq!(enc, [0, 2, 0, 3, 0xc3, 0x01, 0x01, 0x00, 0x01]);
        assert!(encode(&vec![1u8; 70_000], &[3]).is_none());
    }
}
