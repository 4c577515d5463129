//! Key confirmation and device fingerprints: short keyed hashes that let
//! the two nodes of a link prove they hold the same bytes under the same
//! ids without ever sending a key byte.
//!
//! Both are BLAKE3 in keyed mode (a MAC) under keys derived from the link
//! secret with `derive_key`, one key per purpose.

use uuid::Uuid;
use zeroize::Zeroizing;

const CONFIRM_CONTEXT: &str = "keypipe 2026 link v2 key confirmation";
const DIGEST_CONTEXT: &str = "keypipe 2026 link v2 block digest";
const FINGERPRINT_CONTEXT: &str = "keypipe 2026 link v2 device fingerprint";
const LEDGER_ID_CONTEXT: &str = "keypipe 2026 ledger device id";
const KEY_ID_CONTEXT: &str = "keypipe 2026 link v2 directed key id";
const DIRECTED_KSID_CONTEXT: &str = "keypipe 2026 link v2 directed stream id";

/// The keys of key confirmation and device fingerprints of one link.
pub struct ConfirmKeys {
    digest: Zeroizing<[u8; 32]>,
    confirm: Zeroizing<[u8; 32]>,
    fingerprint: Zeroizing<[u8; 32]>,
    key_id: Zeroizing<[u8; 32]>,
    directed_ksid: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for ConfirmKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfirmKeys(<redacted>)")
    }
}

impl ConfirmKeys {
    /// The keys of a link whose nodes share `link_secret`.
    pub fn from_link_secret(link_secret: &[u8; 32]) -> Self {
        Self {
            digest: Zeroizing::new(blake3::derive_key(DIGEST_CONTEXT, link_secret)),
            confirm: Zeroizing::new(blake3::derive_key(CONFIRM_CONTEXT, link_secret)),
            fingerprint: Zeroizing::new(blake3::derive_key(FINGERPRINT_CONTEXT, link_secret)),
            key_id: Zeroizing::new(blake3::derive_key(KEY_ID_CONTEXT, link_secret)),
            directed_ksid: Zeroizing::new(blake3::derive_key(DIRECTED_KSID_CONTEXT, link_secret)),
        }
    }

    /// Fresh random keys, for two nodes in one process (nothing crosses a
    /// network, both ends share this value).
    pub fn random() -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut()).expect("the OS random source works");
        Self::from_link_secret(&secret)
    }

    /// The keyed digest of a block's bytes (64 bits), computed once per
    /// block as the device produces it (see `device::BlockDigest`).
    pub fn digest(&self, bytes: &[u8]) -> u64 {
        let out = blake3::keyed_hash(&self.digest, bytes);
        u64::from_be_bytes(out.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// The digest function for the device poller.
    pub fn digester(&self) -> crate::device::BlockDigest {
        let keys = self.clone();
        Box::new(move |bytes| keys.digest(bytes))
    }

    /// The check value of device block `block_id` whose bytes have
    /// `digest`, leased as stream block `stream_block` of `ksid`: 64 bits
    /// of a keyed hash binding the bytes (through their digest) to their
    /// place.
    pub fn check(&self, ksid: &Uuid, stream_block: u64, block_id: u64, digest: u64) -> u64 {
        let mut h = blake3::Hasher::new_keyed(&self.confirm);
        h.update(&digest.to_be_bytes());
        h.update(ksid.as_bytes());
        h.update(&stream_block.to_be_bytes());
        h.update(&block_id.to_be_bytes());
        let out = h.finalize();
        u64::from_be_bytes(out.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// The fingerprint of a device with `identity` and `block_size`, as
    /// exchanged at session start (hex of 128 bits).
    pub fn fingerprint(&self, identity: &[u8], block_size: usize) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.fingerprint);
        h.update(&(block_size as u64).to_be_bytes());
        h.update(identity);
        hex(&h.finalize().as_bytes()[..16])
    }
}

impl ConfirmKeys {
    /// A keyed tag (64 bits) of the run of `len` bytes at `first` of
    /// directed stream `ksid`: both nodes compute the same, so a key id
    /// carrying some of its bits is checked on the redeeming node without
    /// asking the issuer.
    pub fn key_id_tag(&self, ksid: &Uuid, first: u64, len: u64) -> u64 {
        let mut h = blake3::Hasher::new_keyed(&self.key_id);
        h.update(ksid.as_bytes());
        h.update(&first.to_be_bytes());
        h.update(&len.to_be_bytes());
        let out = h.finalize();
        u64::from_be_bytes(out.as_bytes()[..8].try_into().expect("8 bytes"))
    }
}

impl ConfirmKeys {
    /// The KSID of the directed stream `name` describes (a version-8 UUID
    /// of a keyed hash): the same on both nodes of the link, and not
    /// guessable without the link's secret.
    pub fn directed_ksid(&self, name: &[u8]) -> Uuid {
        let out = blake3::keyed_hash(&self.directed_ksid, name);
        let bytes: [u8; 16] = out.as_bytes()[..16].try_into().expect("16 bytes");
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }
}

impl Clone for ConfirmKeys {
    fn clone(&self) -> Self {
        Self {
            digest: self.digest.clone(),
            confirm: self.confirm.clone(),
            fingerprint: self.fingerprint.clone(),
            key_id: self.key_id.clone(),
            directed_ksid: self.directed_ksid.clone(),
        }
    }
}

/// The id under which the ledger records a device with `identity`: one-way
/// from it, so the ledger file holds nothing derived from key in clear.
pub fn ledger_device_id(identity: &[u8]) -> [u8; 16] {
    let full = blake3::derive_key(LEDGER_ID_CONTEXT, identity);
    full[..16].try_into().expect("16 bytes")
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_bind_the_bytes_the_id_and_the_stream() {
        let keys = ConfirmKeys::from_link_secret(&[1; 32]);
        let k = Uuid::from_u128(7);
        let check = |keys: &ConfirmKeys, k, sb, id, bytes: &[u8]| {
            keys.check(&k, sb, id, keys.digest(bytes))
        };
        let base = check(&keys, k, 3, 9, &[5; 64]);
        let again = ConfirmKeys::from_link_secret(&[1; 32]);
        assert_eq!(base, check(&again, k, 3, 9, &[5; 64]));
        let mut other = [5u8; 64];
        other[63] ^= 1;
        for different in [
            check(&keys, k, 3, 9, &other),
            check(&keys, k, 4, 9, &[5; 64]),
            check(&keys, k, 3, 10, &[5; 64]),
            check(&keys, Uuid::from_u128(8), 3, 9, &[5; 64]),
            check(&ConfirmKeys::from_link_secret(&[2; 32]), k, 3, 9, &[5; 64]),
        ] {
            assert_ne!(different, base);
        }
        let f = keys.fingerprint(b"dev", 64);
        assert_eq!(f.len(), 32);
        assert_ne!(f, keys.fingerprint(b"dev", 32));
        assert_ne!(f, keys.fingerprint(b"deu", 64));
        assert_ne!(ledger_device_id(b"a"), ledger_device_id(b"b"));
    }
}
