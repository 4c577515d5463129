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
}
