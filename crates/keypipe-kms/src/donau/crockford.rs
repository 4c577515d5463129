//! Crockford Base32 as GNU Taler writes it: alphabet
//! `0123456789ABCDEFGHJKMNPQRSTVWXYZ`, RFC 4648 bit order (most significant
//! bits first), no padding, upper case. A 32-byte key is 52 characters, a
//! 64-byte hash 103.

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Encodes `data`.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &byte in data {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha512};

    #[test]
    fn vectors_of_the_decisions_page() {
        assert_eq!(encode(&[0xff]), "ZW");
        assert_eq!(encode(b"Hello"), "91JPRV3F");
        assert_eq!(
            encode(&Sha512::digest(b"")),
            "SY1Y2DBYXYWBVWAM518DCVC00ZB21S051DBHBQ43YJMJ3MVCX774FM6H7HERBWNGZY1HHMM7FVP2YRXS66YMEGBTG6JKGCKTZ4KXMFG"
        );
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0u8; 32]).len(), 52);
        assert_eq!(encode(&[0u8; 64]).len(), 103);
    }

    /// Property tests. The module has no decoder (the server only
    /// publishes Crockford text), so the inverse is this test's own strict
    /// decoder, written from the module's documentation: the upper-case
    /// alphabet only (no aliases, no lower case), RFC 4648 bit order, no
    /// padding, zero trailing bits.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Strict decoding; `None` for a character outside the alphabet, an
        /// impossible length or non-zero trailing bits.
        fn decode(text: &str) -> Option<Vec<u8>> {
            let mut out = Vec::new();
            let (mut acc, mut bits) = (0u32, 0u32);
            for c in text.bytes() {
                let v = ALPHABET.iter().position(|&a| a == c)? as u32;
                acc = (acc << 5) | v;
                bits += 5;
                if bits >= 8 {
                    bits -= 8;
                    out.push((acc >> bits) as u8);
                    acc &= (1 << bits) - 1;
                }
            }
            // At most 4 leftover bits (a 5th would have made a whole char
            // of padding), all zero.
            (bits < 5 && acc == 0).then_some(out)
        }

        /// Bit-by-bit reference encoder: bit `i` of the output stream is
        /// bit `7 - i % 8` of byte `i / 8`, zero past the end.
        fn reference_encode(data: &[u8]) -> String {
            let bit = |i: usize| data.get(i / 8).map_or(0, |b| (b >> (7 - i % 8)) & 1);
            (0..(data.len() * 8).div_ceil(5))
                .map(|c| {
                    let v = (0..5).fold(0usize, |v, k| (v << 1) | usize::from(bit(c * 5 + k)));
                    char::from(ALPHABET[v])
                })
                .collect()
        }

        proptest! {
            #[test]
            fn decode_of_encode_is_identity(
                data in proptest::collection::vec(any::<u8>(), 0..200),
            ) {
                let text = encode(&data);
                prop_assert_eq!(decode(&text), Some(data));
            }

            #[test]
            fn encoded_length_is_ceil_8n_over_5_in_the_upper_case_alphabet(
                data in proptest::collection::vec(any::<u8>(), 0..200),
            ) {
                let text = encode(&data);
                prop_assert_eq!(text.len(), (data.len() * 8).div_ceil(5));
                prop_assert!(text.bytes().all(|c| ALPHABET.contains(&c)), "{}", text);
                prop_assert!(!text.bytes().any(|c| b"ILOU".contains(&c) || c.is_ascii_lowercase()));
            }

            #[test]
            fn encode_matches_the_bit_by_bit_reference(
                data in proptest::collection::vec(any::<u8>(), 0..200),
            ) {
                prop_assert_eq!(encode(&data), reference_encode(&data));
            }

            #[test]
            fn encode_concatenates_at_five_byte_boundaries(
                a in proptest::collection::vec(any::<u8>(), 0..16).prop_map(|mut a| {
                    a.truncate(a.len() / 5 * 5);
                    a
                }),
                b in proptest::collection::vec(any::<u8>(), 0..40),
            ) {
                let joined = [&a[..], &b[..]].concat();
                prop_assert_eq!(encode(&joined), encode(&a) + &encode(&b));
            }
        }
    }
}
