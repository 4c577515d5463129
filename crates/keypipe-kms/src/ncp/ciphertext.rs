//! The text form of NCP KMS ciphertexts and signatures:
//! `ncpkms:v{n}:{payload}`.
//!
//! - `n` is the key version, decimal, `1..=u32::MAX`, without sign or
//!   leading zeros (`v1`, `v12`; never `v0`, `v01`, `v+1`);
//! - `payload` is standard Base64 (RFC 4648 §4 alphabet) with canonical
//!   padding, not empty; no whitespace anywhere.
//!
//! The parser is strict: anything else is refused, before any Base64 is
//! decoded when the text is longer than the caller's limit allows.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The fixed start of every ciphertext and signature text.
pub const PREFIX: &str = "ncpkms:v";

/// Why a ciphertext (or signature) text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CiphertextError {
    /// The text does not start with `ncpkms:v`.
    #[error("does not start with `ncpkms:v`")]
    Prefix,
    /// The version is missing, not decimal, zero, has leading zeros, does
    /// not fit a u32, or is not followed by `:`.
    #[error("malformed version in `ncpkms:v{{n}}:` prefix")]
    Version,
    /// Nothing after the prefix.
    #[error("empty payload after the `ncpkms:v{{n}}:` prefix")]
    Empty,
    /// The payload is longer than allowed.
    #[error("payload too large")]
    TooLarge,
    /// The payload is not standard, padded Base64.
    #[error("payload is not valid Base64")]
    Base64,
}

/// A parsed ciphertext or signature text. Its payload is ciphertext or a
/// signature, never secret; `Debug` shows its length only all the same.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext {
    /// The key version of the prefix.
    pub version: u32,
    /// The decoded payload.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ciphertext")
            .field("version", &self.version)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Splits `text` into its version and its (still encoded) payload,
/// checking the prefix and version syntax only.
pub fn split(text: &str) -> Result<(u32, &str), CiphertextError> {
    let rest = text.strip_prefix(PREFIX).ok_or(CiphertextError::Prefix)?;
    let colon = rest.find(':').ok_or(CiphertextError::Version)?;
    let digits = &rest[..colon];
    let bytes = digits.as_bytes();
    if bytes.is_empty()
        || bytes.len() > 10
        || bytes[0] == b'0'
        || !bytes.iter().all(u8::is_ascii_digit)
    {
        return Err(CiphertextError::Version);
    }
    let version: u32 = digits.parse().map_err(|_| CiphertextError::Version)?;
    Ok((version, &rest[colon + 1..]))
}

/// Parses `text`, refusing a payload that decodes to more than
/// `max_payload` bytes.
pub fn parse(text: &str, max_payload: usize) -> Result<Ciphertext, CiphertextError> {
    let (version, encoded) = split(text)?;
    if encoded.is_empty() {
        return Err(CiphertextError::Empty);
    }
    if encoded.len() > max_encoded_len(max_payload) {
        return Err(CiphertextError::TooLarge);
    }
    let payload = STANDARD
        .decode(encoded)
        .map_err(|_| CiphertextError::Base64)?;
    if payload.len() > max_payload {
        return Err(CiphertextError::TooLarge);
    }
    Ok(Ciphertext { version, payload })
}

/// The text form of `payload` under key version `version`.
pub fn format(version: u32, payload: &[u8]) -> String {
    let mut out = String::with_capacity(formatted_len(payload.len()));
    format_into(&mut out, version, payload);
    out
}

/// Appends the text form of `payload` under `version` to `out`.
pub fn format_into(out: &mut String, version: u32, payload: &[u8]) {
    use std::fmt::Write as _;
    out.push_str(PREFIX);
    // Writing into a String cannot fail.
    let _ = write!(out, "{version}:");
    STANDARD.encode_string(payload, out);
}

/// An upper bound of the text length of a payload of `payload_len` bytes.
pub fn formatted_len(payload_len: usize) -> usize {
    PREFIX.len() + 11 + max_encoded_len(payload_len)
}

/// The padded Base64 length of `len` bytes (saturating).
pub(crate) fn max_encoded_len(len: usize) -> usize {
    len.div_ceil(3).saturating_mul(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_then_parse() {
        for (version, payload) in [
            (1u32, &b"x"[..]),
            (12, b"hello world"),
            (u32::MAX, &[0u8, 255, 7, 9][..]),
        ] {
            let text = format(version, payload);
            assert!(text.len() <= formatted_len(payload.len()));
            let parsed = parse(&text, 64).unwrap();
            assert_eq!(parsed.version, version);
            assert_eq!(parsed.payload, payload);
        }
        assert_eq!(format(3, b"abc"), "ncpkms:v3:YWJj");
        assert_eq!(format(10, b"ab"), "ncpkms:v10:YWI=");
    }

    #[test]
    fn refuses_bad_prefixes() {
        for text in [
            "",
            "ncpkms",
            "ncpkms:",
            "ncpkms:x1:YWJj",
            "foo:v1:YWJj",
            "NCPKMS:v1:YWJj",
            " ncpkms:v1:YWJj",
            "ncpkms:V1:YWJj",
        ] {
            assert_eq!(parse(text, 64), Err(CiphertextError::Prefix), "{text:?}");
        }
    }

    #[test]
    fn refuses_bad_versions() {
        for text in [
            "ncpkms:v:YWJj",
            "ncpkms:v0:YWJj",
            "ncpkms:v01:YWJj",
            "ncpkms:v+1:YWJj",
            "ncpkms:v-1:YWJj",
            "ncpkms:v1a:YWJj",
            "ncpkms:v 1:YWJj",
            "ncpkms:v4294967296:YWJj",
            "ncpkms:v99999999999:YWJj",
            "ncpkms:v1",
            "ncpkms:v1YWJj",
            "ncpkms:v١:YWJj",
        ] {
            assert_eq!(parse(text, 64), Err(CiphertextError::Version), "{text:?}");
        }
        assert_eq!(
            parse("ncpkms:v4294967295:YWJj", 64).unwrap().version,
            u32::MAX
        );
    }

    #[test]
    fn refuses_bad_payloads() {
        assert_eq!(parse("ncpkms:v1:", 64), Err(CiphertextError::Empty));
        for text in [
            "ncpkms:v1:YWJ",
            "ncpkms:v1:YWI",
            "ncpkms:v1:YW==",
            "ncpkms:v1:YWJj\n",
            "ncpkms:v1:YW Jj",
            "ncpkms:v1:YWJj:",
            "ncpkms:v1:YW-_",
            "ncpkms:v1:YWJ=",
            "ncpkms:v1:=YWJ",
            "ncpkms:v1:ncpkms:v1:YWJj",
        ] {
            assert_eq!(parse(text, 64), Err(CiphertextError::Base64), "{text:?}");
        }
        // Limits: 3 bytes ok with max 3, refused with max 2, long text refused
        // before decoding.
        assert!(parse("ncpkms:v1:YWJj", 3).is_ok());
        assert_eq!(parse("ncpkms:v1:YWJj", 2), Err(CiphertextError::TooLarge));
        let long = format!("ncpkms:v1:{}", "A".repeat(1000));
        assert_eq!(parse(&long, 64), Err(CiphertextError::TooLarge));
    }

    #[test]
    fn split_keeps_payload_encoded() {
        assert_eq!(split("ncpkms:v7:abc"), Ok((7, "abc")));
        assert_eq!(split("ncpkms:v7:"), Ok((7, "")));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn version() -> impl Strategy<Value = u32> {
            prop_oneof![Just(1), Just(u32::MAX), 1..=u32::MAX]
        }

        fn payload() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 1..300)
        }

        use crate::test_strategies::near_canonical;

        /// Text near the form: the prefix (sometimes damaged), a version
        /// (sometimes not canonical) and a payload over the Base64
        /// alphabet with strays.
        fn near_ciphertext() -> impl Strategy<Value = String> {
            (
                prop_oneof![
                    3 => Just("ncpkms:v"),
                    1 => Just("ncpkms:"),
                    1 => Just("NCPKMS:v"),
                    1 => Just(""),
                ],
                prop_oneof![
                    3 => "[1-9][0-9]{0,9}",
                    1 => "[0-9+ -]{0,12}",
                    1 => Just("4294967296".to_owned()),
                ],
                prop_oneof![3 => Just(":"), 1 => Just(""), 1 => Just("::")],
                prop_oneof![
                    3 => near_canonical(|b| format(1, b)["ncpkms:v1:".len()..].to_owned()),
                    1 => "[A-Za-z0-9+/=_ -]{0,40}",
                ],
            )
                .prop_map(|(p, v, c, b)| format!("{p}{v}{c}{b}"))
        }

        proptest! {
            #[test]
            fn parse_of_format_is_identity(
                version in version(),
                payload in payload(),
                slack in 0usize..8,
            ) {
                let text = format(version, &payload);
                prop_assert!(text.len() <= formatted_len(payload.len()));
                let parsed = parse(&text, payload.len() + slack);
                prop_assert_eq!(parsed, Ok(Ciphertext { version, payload: payload.clone() }));
                // format_into appends the same text.
                let mut out = String::from("x");
                format_into(&mut out, version, &payload);
                prop_assert_eq!(&out[1..], text.as_str());
            }

            #[test]
            fn payload_longer_than_max_payload_is_refused(
                version in version(),
                payload in payload(),
                // Short by 1 or 2 bytes often: the encoded lengths are
                // then equal and only the decoded length tells.
                short_by in prop_oneof![1usize..3, 1usize..400],
            ) {
                let max = payload.len().saturating_sub(short_by);
                let text = format(version, &payload);
                prop_assert_eq!(parse(&text, max), Err(CiphertextError::TooLarge));
            }

            #[test]
            fn arbitrary_text_never_panics_and_only_canonical_text_is_accepted(
                text in prop_oneof![any::<String>(), near_ciphertext()],
                max in 0usize..64,
            ) {
                if let Ok(c) = parse(&text, max) {
                    prop_assert!(c.version >= 1 && !c.payload.is_empty() && c.payload.len() <= max);
                    prop_assert_eq!(format(c.version, &c.payload), text);
                }
            }

            #[test]
            fn non_canonical_versions_are_refused(
                payload in payload(),
                version in prop_oneof![
                    "0[0-9]{0,10}",
                    "[+-][0-9]{1,5}",
                    "[1-9][0-9]{10,15}",
                    (u64::from(u32::MAX) + 1..=9_999_999_999u64).prop_map(|v| v.to_string()),
                ],
            ) {
                let good = format(1, &payload);
                let text = good.replacen("v1:", &format!("v{version}:"), 1);
                prop_assert_eq!(parse(&text, 1024), Err(CiphertextError::Version), "{}", text);
            }

            #[test]
            fn version_zero_and_empty_payloads_do_not_parse(
                version in version(),
                payload in payload(),
            ) {
                prop_assert_eq!(parse(&format(0, &payload), 1024), Err(CiphertextError::Version));
                prop_assert_eq!(parse(&format(version, &[]), 1024), Err(CiphertextError::Empty));
            }

            #[test]
            fn non_canonical_base64_payloads_are_refused(
                version in version(),
                payload in payload(),
                mutation in 0..4u8,
                at in any::<prop::sample::Index>(),
            ) {
                let good = format(version, &payload);
                let b64 = split(&good).unwrap().1;
                let prefix = &good[..good.len() - b64.len()];
                let bad = match mutation {
                    // Padding dropped (only when there is some).
                    0 => {
                        prop_assume!(b64.ends_with('='));
                        b64.trim_end_matches('=').to_owned()
                    }
                    // Non-zero trailing bits in the last data character.
                    1 => {
                        let pad = b64.len() - b64.trim_end_matches('=').len();
                        prop_assume!(pad > 0);
                        let mut chars: Vec<u8> = b64.bytes().collect();
                        let last = b64.len() - pad - 1;
                        const ALPHABET: &[u8] =
                            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                        let v = ALPHABET.iter().position(|&c| c == chars[last]).unwrap();
                        // pad 1: 2 unused bits; pad 2: 4 unused bits.
                        chars[last] = ALPHABET[v | 1];
                        prop_assume!(chars[last] != b64.as_bytes()[last]);
                        String::from_utf8(chars).unwrap()
                    }
                    // Whitespace inside.
                    2 => {
                        let i = at.index(b64.len() + 1);
                        format!("{}{}{}", &b64[..i], [" ", "\n", "\r\n", "\t"][i % 4], &b64[i..])
                    }
                    // The URL-safe alphabet.
                    _ => {
                        prop_assume!(b64.contains(['+', '/']));
                        b64.replace('+', "-").replace('/', "_")
                    }
                };
                let text = format!("{prefix}{bad}");
                prop_assert_eq!(parse(&text, 1024), Err(CiphertextError::Base64), "{}", text);
            }
        }
    }
}
