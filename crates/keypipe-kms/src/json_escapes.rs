//! JSON bodies that carry secrets, read without serde_json's scratch
//! buffer (security review F14).
//!
//! serde_json unescapes a string that holds escapes into a scratch `Vec`
//! of its own, which it frees without wiping: a secret sent with escapes
//! would stay in freed heap memory. [`resolve`] rewrites the escapes that
//! stand for a character JSON may also carry raw, `\/` (PHP's
//! `json_encode`, some Java libraries) and `\uXXXX` (.NET escapes `+` as
//! `\u002B`; Python's `json.dumps` escapes every non-ASCII character;
//! surrogate pairs included), into a zeroizing copy of the body before
//! serde sees it, and refuses the rest: `\"` and `\\` (their characters
//! cannot stand raw in a JSON string) and control characters, so no string
//! of the body ever goes through the scratch buffer. Base64 fields,
//! ciphertexts, names and encrypted passwords never need those; a *plain*
//! password (off by default) holding `"` or `\` cannot be sent. A body
//! without `\` is used as it is, with no copy.

use zeroize::{Zeroize, Zeroizing};

/// A body holding an escape that [`resolve`] does not rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "JSON escapes of `\"`, `\\` and control characters are refused in this body (it may \
     carry secrets; its fields never need them)"
)]
pub struct EscapeRefused;

/// The body with `\/` and `\uXXXX` (but of `"`, `\` or a control
/// character) inside strings replaced by their characters, in a zeroizing
/// copy; `None` when the body has no `\` (use it as it is).
pub fn resolve(body: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, EscapeRefused> {
    if !body.contains(&b'\\') {
        return Ok(None);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(body.len()));
    let mut in_string = false;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == b'"' {
            in_string = !in_string;
        } else if b == b'\\' && in_string {
            let (c, len) = match body.get(i + 1) {
                Some(b'/') => ('/', 2),
                Some(b'u') => unicode(&body[i..]).ok_or(EscapeRefused)?,
                _ => return Err(EscapeRefused),
            };
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            utf8.zeroize();
            i += len;
            continue;
        }
        out.push(b);
        i += 1;
    }
    Ok(Some(out))
}

/// The character of `\uXXXX` (or of a surrogate pair `\uD8XX\uDCXX`) at
/// the start of `text`, and the escape's length; `None` for `"`, `\`, a
/// control character, a lone surrogate or bad hex.
fn unicode(text: &[u8]) -> Option<(char, usize)> {
    let unit = |at: usize| -> Option<u32> {
        let hex = text.get(at..at + 4)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let first = unit(2)?;
    let (code, len) = match first {
        0xD800..=0xDBFF => {
            if text.get(6..8)? != b"\\u" {
                return None;
            }
            let low = unit(8)?;
            if !(0xDC00..=0xDFFF).contains(&low) {
                return None;
            }
            (0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00), 12)
        }
        0xDC00..=0xDFFF => return None,
        c => (c, 6),
    };
    let c = char::from_u32(code)?;
    (!c.is_control() && c != '"' && c != '\\').then_some((c, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(body: &str) -> Result<String, EscapeRefused> {
        resolve(body.as_bytes())
            .map(|o| o.map_or(body.to_owned(), |v| String::from_utf8(v.to_vec()).unwrap()))
    }

    #[test]
    fn plain_bodies_are_not_copied() {
        assert!(resolve(br#"{"plaintext":"YWJj+/=="}"#).unwrap().is_none());
    }

    #[test]
    fn slash_and_printable_unicode_escapes_become_their_characters() {
        assert_eq!(
            resolved(r#"{"p":"a\/b\u002Bc\u002f"}"#).unwrap(),
            r#"{"p":"a/b+c/"}"#
        );
        // The result parses to the same value serde would have given.
        let a: serde_json::Value = serde_json::from_str(r#"{"p":"a\/b\u002Bc"}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(&resolved(r#"{"p":"a\/b\u002Bc"}"#).unwrap()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn other_escapes_are_refused() {
        for body in [
            r#"{"p":"a\"b"}"#,
            r#"{"p":"a\\b"}"#,
            r#"{"p":"a\nb"}"#,
            r#"{"p":"\u0022"}"#,
            r#"{"p":"\u005c"}"#,
            r#"{"p":"\u0000"}"#,
            r#"{"p":"\u001f"}"#,
            r#"{"p":"\u007f"}"#,
            r#"{"p":"\ud83d"}"#,
            r#"{"p":"\ude00"}"#,
            r#"{"p":"\ud83d\u0041"}"#,
            r#"{"p":"\u+02B"}"#,
            r#"{"p":"\u00"}"#,
            r#"{"p":"\"#,
        ] {
            assert_eq!(resolved(body), Err(EscapeRefused), "{body}");
        }
    }

    #[test]
    fn a_backslash_outside_strings_is_left_for_the_parser_to_refuse() {
        let out = resolved(r#"{"p":1}\"#).unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(&out).is_err());
    }

    proptest::proptest! {
        /// Any string, written with every non-ASCII character and `/`
        /// escaped (as Python and PHP do): resolved, it parses to the same
        /// string; refused exactly when it holds `"`, `\` or a control
        /// character.
        #[test]
        fn resolved_bodies_parse_to_the_same_value(text in "(\\PC|[\"\\\\\u{0}-\u{1f}a/é😀])*") {
            let mut body = String::from("{\"p\":\"");
            for c in text.chars() {
                match c {
                    '"' => body.push_str("\\\""),
                    '\\' => body.push_str("\\\\"),
                    '/' => body.push_str("\\/"),
                    c if c.is_control() || !c.is_ascii() => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            body.push_str(&format!("\\u{u:04x}"));
                        }
                    }
                    c => body.push(c),
                }
            }
            body.push_str("\"}");
            let refused = text.chars().any(|c| c == '"' || c == '\\' || c.is_control());
            match resolve(body.as_bytes()) {
                Ok(resolved) => {
                    proptest::prop_assert!(!refused);
                    let bytes = resolved.as_ref().map_or(body.as_bytes(), |b| b.as_slice());
                    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                    proptest::prop_assert_eq!(v["p"].as_str(), Some(text.as_str()));
                }
                Err(EscapeRefused) => proptest::prop_assert!(refused),
            }
        }
    }
}
