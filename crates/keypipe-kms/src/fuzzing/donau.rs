//! The Donau fuzz entry points: Taler amounts with `If-None-Match`, and
//! the Crockford Base32 and RSA key encodings.

use keypipe_core::fuzzing::Input;
use serde_json::Value;

use crate::donau::{Amount, amount, crockford, none_match, rsa_encoding};

/// Taler amounts (`donau::Amount`, text and JSON) and the Donau's
/// `If-None-Match` check (`donau::none_match`).
///
/// Input: the text (lossy UTF-8); also read as an amount's parts.
/// Invariants: an accepted amount is within bounds and its text is
/// canonical (formatting and parsing again gives the same amount and
/// text); JSON reads the same; any amount within bounds formats and parses
/// back; `*` and the tag itself match, weakly.
pub fn donau_amount(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = text.parse::<Amount>();
    if let Ok(a) = &parsed {
        amount::check_currency(&a.currency).expect("an accepted currency");
        assert!(a.value <= amount::MAX_VALUE && a.fraction < amount::FRACTION_BASE);
        let canonical = a.to_string();
        assert_eq!(canonical.parse::<Amount>().as_ref(), Ok(a));
        assert_eq!(
            canonical.parse::<Amount>().map(|b| b.to_string()),
            Ok(canonical)
        );
    }
    let via_json = serde_json::from_value::<Amount>(Value::String(text.to_string()));
    assert_eq!(via_json.ok(), parsed.ok(), "JSON and text agree");
    let mut input = Input::new(data);
    let currency: String = (0..1 + input.byte() % 11)
        .map(|_| char::from(b'A' + input.byte() % 26))
        .collect();
    let built = Amount {
        currency,
        value: input.u64() % (amount::MAX_VALUE + 1),
        fraction: u32::from(input.u16()) * 1_000 % amount::FRACTION_BASE,
    };
    assert_eq!(built.to_string().parse::<Amount>().as_ref(), Ok(&built));
    let etag = "\"0123456789abcdef\"";
    let matches = none_match(&text, etag);
    assert_eq!(
        matches,
        none_match(&text, &format!("W/{etag}")),
        "weak compare"
    );
    if text.split(',').any(|t| t.trim() == "*") {
        assert!(matches);
    }
    assert!(none_match(&format!("{text},{etag}"), etag));
}

/// Decodes Crockford Base32 as the Donau writes it (the reference).
fn crockford_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
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
    (acc == 0).then_some(out)
}

/// The Donau's Crockford Base32 (`donau::crockford::encode`) and RSA key
/// encoding (`donau::rsa_encoding::encode`).
///
/// Input: the bytes (and, split by the first byte, an RSA `n` and `e`).
/// Invariants: the encoding has the expected length and alphabet and a
/// reference decoder gives the bytes back; the RSA encoding is the two
/// lengths and the minimal parts.
pub fn donau_crockford(data: &[u8]) {
    let text = crockford::encode(data);
    assert_eq!(text.len(), (data.len() * 8).div_ceil(5));
    assert_eq!(crockford_decode(&text).as_deref(), Some(data), "round trip");
    let mut input = Input::new(data);
    let split = usize::from(input.byte());
    let rest = input.rest();
    let (n, e) = rest.split_at(split.min(rest.len()));
    let encoded = rsa_encoding::encode(n, e).expect("parts shorter than 64 KiB");
    let minimal = |x: &[u8]| {
        x.iter()
            .skip_while(|&&b| b == 0)
            .copied()
            .collect::<Vec<_>>()
    };
    let (n, e) = (minimal(n), minimal(e));
    assert_eq!(&encoded[..2], (n.len() as u16).to_be_bytes());
    assert_eq!(&encoded[2..4], (e.len() as u16).to_be_bytes());
    assert_eq!(encoded[4..], [n, e].concat());
}
