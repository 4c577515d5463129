//! Key derivation and key confirmation of the profile (SP 800-56C one-step
//! extraction-then-expansion with HKDF-SHA256, SP 800-56A key confirmation
//! with HMAC-SHA256):
//!
//! ```text
//! okm   = HKDF-SHA256(salt = nonce, ikm = Z,
//!                     info = "key-agreement/v1" ‖ scheme ‖ lp(id_C) ‖ lp(id_S) ‖ lp(pub_C) ‖ lp(pub_S))
//! k_enc = okm[0 .. 16 or 32],  k_mac = okm[next 32]
//! proof = HMAC-SHA256(k_mac, "KC_1_V" ‖ id_S ‖ id_C ‖ pub_S ‖ pub_C ‖ nonce)
//! ```
//!
//! `lp(x)` is `x`'s length as 4 bytes big-endian, then `x`; `scheme` is the
//! ASCII wire name; `pub_C`/`pub_S` are the keys exactly as sent (the
//! decoded `public_key` fields); `Z` is padded to the field size.

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::Scheme;

/// Length of `k_mac`.
pub const MAC_KEY_LEN: usize = 32;

/// The inputs of a derivation, all public except `z`.
#[derive(Clone, Copy)]
pub struct Transcript<'a> {
    /// The scheme agreed.
    pub scheme: Scheme,
    /// The salt.
    pub nonce: &'a [u8],
    /// The client's identifier.
    pub id_c: &'a [u8],
    /// The server's identifier.
    pub id_s: &'a [u8],
    /// The client's public key, as sent.
    pub pub_c: &'a [u8],
    /// The server's public key, as sent.
    pub pub_s: &'a [u8],
}

impl std::fmt::Debug for Transcript<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcript")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// `k_enc` and `k_mac`, zeroized on drop.
pub struct DerivedKeys {
    /// The encryption key (16 or 32 bytes).
    pub k_enc: Zeroizing<Vec<u8>>,
    /// The MAC key (32 bytes).
    pub k_mac: Zeroizing<[u8; MAC_KEY_LEN]>,
}

impl std::fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivedKeys(<redacted>)")
    }
}

fn lp(x: &[u8]) -> [u8; 4] {
    u32::try_from(x.len())
        .expect("inputs are bounded far below 4 GiB")
        .to_be_bytes()
}

/// Derives `k_enc` and `k_mac` from the shared secret `z`.
pub fn derive(z: &[u8], t: &Transcript<'_>) -> DerivedKeys {
    let hk = Hkdf::<Sha256>::new(Some(t.nonce), z);
    let enc_len = t.scheme.enc_key_len();
    let mut okm = Zeroizing::new([0u8; 32 + MAC_KEY_LEN]);
    let info: [&[u8]; 10] = [
        b"key-agreement/v1",
        t.scheme.name().as_bytes(),
        &lp(t.id_c),
        t.id_c,
        &lp(t.id_s),
        t.id_s,
        &lp(t.pub_c),
        t.pub_c,
        &lp(t.pub_s),
        t.pub_s,
    ];
    hk.expand_multi_info(&info, &mut okm[..enc_len + MAC_KEY_LEN])
        .expect("at most 64 bytes, far below HKDF's limit");
    let mut k_mac = Zeroizing::new([0u8; MAC_KEY_LEN]);
    k_mac.copy_from_slice(&okm[enc_len..enc_len + MAC_KEY_LEN]);
    DerivedKeys {
        k_enc: Zeroizing::new(okm[..enc_len].to_vec()),
        k_mac,
    }
}

/// The server's key-confirmation tag.
pub fn proof(k_mac: &[u8; MAC_KEY_LEN], t: &Transcript<'_>) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(k_mac).expect("any key length");
    for part in [
        b"KC_1_V".as_slice(),
        t.id_s,
        t.id_c,
        t.pub_s,
        t.pub_c,
        t.nonce,
    ] {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The KDF vector of docs/key-agreement.md, computed independently with
    /// Python's standard library (HKDF written out with `hmac` and `hashlib`).
    #[test]
    fn known_answer_derivation_and_proof() {
        let z: Vec<u8> = (1..=32).collect();
        let nonce: Vec<u8> = (0xa0..=0xaf).collect();
        let t = Transcript {
            scheme: Scheme::EcAes1,
            nonce: &nonce,
            id_c: b"client-1",
            id_s: b"Broker",
            pub_c: &[0x04; 65],
            pub_s: &[0x05; 65],
        };
        let keys = derive(&z, &t);
        assert_eq!(hex(&keys.k_enc), "ed9e4236d2afd7e033e186118667a24a");
        assert_eq!(
            hex(&keys.k_mac[..]),
            "a645b260180422540be07f749cbc34043e9f44f92a3a78a0d940661bce55c0d0"
        );
        assert_eq!(
            hex(&proof(&keys.k_mac, &t)),
            "6dad5200c2265023dd66ea914d01b15dd57b4d66510ff46e8c7498e16fa97c9b"
        );
        // A 32-byte k_enc is the first 32 bytes of a longer output.
        let long = derive(
            &z,
            &Transcript {
                scheme: Scheme::EcAes2,
                ..t
            },
        );
        assert_eq!(long.k_enc.len(), 32);
        assert_ne!(long.k_enc[..16], keys.k_enc[..]);
    }
}
