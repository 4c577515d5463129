//! proptest strategies shared by the crate's property tests.

use proptest::prelude::*;

/// `encode` of some bytes, kept as is or with one character
/// replaced, inserted or removed: canonical text and its nearest
/// non-canonical neighbours.
pub(crate) fn near_canonical(encode: fn(&[u8]) -> String) -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(any::<u8>(), 0..40),
        0..4u8,
        any::<prop::sample::Index>(),
        prop::sample::select(&['A', 'Q', 'g', 'w', 'B', '+', '/', '=', '-', '_', ' ', '.'][..]),
    )
        .prop_map(move |(bytes, op, at, c)| {
            let mut chars: Vec<char> = encode(&bytes).chars().collect();
            match op {
                1 if !chars.is_empty() => {
                    let i = at.index(chars.len());
                    chars[i] = c;
                }
                2 => chars.insert(at.index(chars.len() + 1), c),
                3 if !chars.is_empty() => {
                    chars.remove(at.index(chars.len()));
                }
                _ => {}
            }
            chars.into_iter().collect()
        })
}
