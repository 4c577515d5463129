//! JSON bodies that carry secrets, read without serde_json's scratch
//! buffer (security review F14).
//!
//! serde_json unescapes a string that holds escapes into a scratch `Vec`
//! of its own, which it frees without wiping: a secret sent with escapes
//! would stay in freed heap memory. Secret fields (Base64, ciphertexts,
//! passwords) only ever need the escapes real encoders add to printable
//! ASCII: `\/` (PHP's `json_encode`, some Java libraries) and `\uXXXX`
//! (.NET escapes `+` as `\u002B`). [`resolve`] rewrites those into a
//! zeroizing copy of the body before serde sees it, and refuses any other
//! escape (`\"`, `\\`, control characters, non-ASCII), so no string of the
//! body ever goes through the scratch buffer. A body without `\` is used
//! as it is, with no copy.

use zeroize::Zeroizing;

/// A body holding an escape that [`resolve`] does not rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "JSON escapes are accepted only for `/` and printable ASCII (\\uXXXX) in this body: \
     its secret fields never need others"
)]
pub struct EscapeRefused;

/// The body with `\/` and `\uXXXX` of printable ASCII (but `"` and `\`)
/// inside strings replaced by the character, in a zeroizing copy; `None`
/// when the body has no `\` (use it as it is).
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
                Some(b'/') => (b'/', 2),
                Some(b'u') => (printable(body.get(i + 2..i + 6)).ok_or(EscapeRefused)?, 6),
                _ => return Err(EscapeRefused),
            };
            out.push(c);
            i += len;
            continue;
        }
        out.push(b);
        i += 1;
    }
    Ok(Some(out))
}

/// The printable ASCII character (not `"` or `\`) of four hex digits.
fn printable(hex: Option<&[u8]>) -> Option<u8> {
    let hex = std::str::from_utf8(hex?).ok()?;
    let c = u8::try_from(u16::from_str_radix(hex, 16).ok()?).ok()?;
    ((0x20..0x7f).contains(&c) && c != b'"' && c != b'\\' && !hex.starts_with('+')).then_some(c)
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
            r#"{"p":"\u00e9"}"#,
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
}
