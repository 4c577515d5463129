//! `key_ID`s: UUIDs (version 8) that name a run of a directed stream's key
//! by its place, never by its bytes, so the issuing node makes them up
//! alone and the redeeming node reads them without asking anyone.
//!
//! The 122 free bits hold, high to low: 16 bits of the stream's tag (from
//! its KSID), the 56-bit offset of the key's first byte in the stream, its
//! length in bytes minus one (12 bits), and 38 bits of a keyed tag over
//! the stream and the span that both nodes compute from the link's secret:
//! a mistyped or made-up id is refused, and guessing the id of a key not
//! issued yet takes about 2^37 tries.

use uuid::Uuid;

use super::supply::Span;

/// Longest key one id can name, bytes.
pub const MAX_KEY_BYTES: u64 = 1 << 12;
/// Largest stream offset one id can name.
pub const MAX_OFFSET: u64 = (1 << 56) - 1;

const TAG_BITS: u32 = 16;
const MAC_BITS: u32 = 38;

/// The 16-bit tag of stream `ksid` in its key ids.
pub fn stream_tag(ksid: &Uuid) -> u32 {
    (ksid.as_u128() >> (128 - TAG_BITS)) as u32
}

/// The key id of `span`; `mac` is the keyed tag of the span.
pub fn encode(span: &Span, mac: u64) -> Uuid {
    debug_assert!(span.len >= 1 && span.len <= MAX_KEY_BYTES && span.first <= MAX_OFFSET);
    let payload: u128 = (u128::from(stream_tag(&span.ksid)) << 106)
        | (u128::from(span.first) << 50)
        | (u128::from(span.len - 1) << MAC_BITS)
        | u128::from(mac & ((1 << MAC_BITS) - 1));
    // Spread the 122 bits around the version (4) and variant (2) bits.
    let hi48 = payload >> 74;
    let mid12 = (payload >> 62) & 0xfff;
    let lo62 = payload & ((1 << 62) - 1);
    let bits = (hi48 << 80) | (0x8 << 76) | (mid12 << 64) | (0b10 << 62) | lo62;
    Uuid::from_u128(bits)
}

/// What a key id says: the stream tag, the offset, the length, and its
/// keyed tag; `None` when it is not one of ours (not version 8 / RFC
/// variant).
pub fn decode(id: &Uuid) -> Option<(u32, u64, u64, u64)> {
    let bits = id.as_u128();
    if (bits >> 76) & 0xf != 0x8 || (bits >> 62) & 0b11 != 0b10 {
        return None;
    }
    let hi48 = bits >> 80;
    let mid12 = (bits >> 64) & 0xfff;
    let lo62 = bits & ((1 << 62) - 1);
    let payload = (hi48 << 74) | (mid12 << 62) | lo62;
    let tag = (payload >> 106) as u32;
    let first = ((payload >> 50) & ((1 << 56) - 1)) as u64;
    let len = ((payload >> MAC_BITS) & 0xfff) as u64 + 1;
    let mac = (payload & ((1 << MAC_BITS) - 1)) as u64;
    Some((tag, first, len, mac))
}

/// True when `mac` (38 bits from an id) matches the full keyed tag.
pub fn mac_matches(mac: u64, full: u64) -> bool {
    // Not secret (it is in the id), so no constant-time compare is needed.
    mac == full & ((1 << MAC_BITS) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_rfc_9562_version_8() {
        let ksid = Uuid::from_u128(0xdead_beef_0123_4567_89ab_cdef_0011_2233);
        for (first, len) in [(0, 1), (12345, 32), (MAX_OFFSET, MAX_KEY_BYTES)] {
            let span = Span { ksid, first, len };
            let id = encode(&span, 0xabcdef12);
            assert_eq!(id.get_version_num(), 8);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (tag, f, l, mac) = decode(&id).unwrap();
            assert_eq!((tag, f, l), (stream_tag(&ksid), first, len));
            assert!(mac_matches(mac, 0xabcdef12));
            assert!(!mac_matches(mac, 0xabcdef13));
        }
        assert!(
            decode(&Uuid::new_v4()).is_none(),
            "a version-4 id is not ours"
        );
        let a = encode(
            &Span {
                ksid,
                first: 0,
                len: 32,
            },
            1,
        );
        let b = encode(
            &Span {
                ksid,
                first: 32,
                len: 32,
            },
            1,
        );
        assert_ne!(a, b);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A keyed tag of a span, as the service's supply computes one (the
        /// tests' fake supply's construction).
        fn keyed_tag(span: &Span) -> u64 {
            let h = blake3::keyed_hash(
                &[7; 32],
                &[
                    span.ksid.as_bytes().as_slice(),
                    &span.first.to_be_bytes(),
                    &span.len.to_be_bytes(),
                ]
                .concat(),
            );
            u64::from_be_bytes(h.as_bytes()[..8].try_into().unwrap())
        }

        /// What `Etsi014::resolve` does with an id on a link holding the one
        /// stream `ksid`: the span it names, if its tag and keyed tag match.
        fn resolve(id: &Uuid, ksid: Uuid) -> Option<Span> {
            let (tag, first, len, mac) = decode(id)?;
            let span = Span { ksid, first, len };
            (tag == stream_tag(&ksid) && mac_matches(mac, keyed_tag(&span))).then_some(span)
        }

        fn span() -> impl Strategy<Value = Span> {
            (
                any::<u128>(),
                prop_oneof![Just(0), Just(MAX_OFFSET), 0..=MAX_OFFSET],
                prop_oneof![Just(1), Just(MAX_KEY_BYTES), 1..=MAX_KEY_BYTES],
            )
                .prop_map(|(k, first, len)| Span {
                    ksid: Uuid::from_u128(k),
                    first,
                    len,
                })
        }

        proptest! {
            #[test]
            fn decode_of_encode_is_identity_for_version_8_ids(span in span(), mac in any::<u64>()) {
                let id = encode(&span, mac);
                prop_assert_eq!(id.get_version_num(), 8);
                prop_assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
                let (tag, first, len, got_mac) = decode(&id).unwrap();
                prop_assert_eq!((tag, first, len), (stream_tag(&span.ksid), span.first, span.len));
                prop_assert_eq!(got_mac, mac & ((1 << MAC_BITS) - 1));
                prop_assert!(mac_matches(got_mac, mac));
                // Through the text form too.
                let text = id.hyphenated().to_string();
                prop_assert_eq!(decode(&text.parse().unwrap()), Some((tag, first, len, got_mac)));
            }

            #[test]
            fn issued_ids_resolve_and_a_flipped_bit_is_refused(span in span(), bit in 0u32..128) {
                let id = encode(&span, keyed_tag(&span));
                prop_assert_eq!(resolve(&id, span.ksid), Some(span));
                let flipped = Uuid::from_u128(id.as_u128() ^ (1u128 << bit));
                // The version and variant bits make it not ours; any other
                // bit names another span (or stream) or breaks the tag.
                let ours = !matches!(bit, 76..=79 | 62..=63);
                prop_assert_eq!(decode(&flipped).is_some(), ours, "bit {}", bit);
                if let Some(fields) = decode(&flipped) {
                    prop_assert_ne!(Some(fields), decode(&id));
                }
                prop_assert_eq!(resolve(&flipped, span.ksid), None, "bit {}", bit);
            }

            #[test]
            fn ids_of_other_versions_or_variants_are_not_ours(bits in any::<u128>()) {
                let id = Uuid::from_u128(bits);
                let ours = (bits >> 76) & 0xf == 8 && (bits >> 62) & 0b11 == 0b10;
                prop_assert_eq!(decode(&id).is_some(), ours);
                if ours {
                    // Every id of ours is the encoding of what it decodes to.
                    let (tag, first, len, mac) = decode(&id).unwrap();
                    let ksid = Uuid::from_u128(u128::from(tag) << 112);
                    prop_assert_eq!(encode(&Span { ksid, first, len }, mac), id);
                }
            }
        }
    }
}
