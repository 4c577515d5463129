//! URL decoding shared by the services that read query strings and forms
//! (KeyTalk, ETSI 014): lenient, never failing.

/// `%XX` decoded to its byte; any other `%` stays as it is; bytes that are
/// not UTF-8 become U+FFFD. With `plus_is_space` (query strings and
/// forms), `+` is a space; in a path segment it stays a `+`.
pub fn percent_decode(raw: &[u8], plus_is_space: bool) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < raw.len() && hex(raw[i + 1]).is_some() && hex(raw[i + 2]).is_some() => {
                out.push(hex(raw[i + 1]).unwrap_or(0) << 4 | hex(raw[i + 2]).unwrap_or(0));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// The `name=value` pairs of a query string or form body, decoded, in
/// order (a pair without `=` has an empty value).
pub fn pairs(raw: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    raw.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            (percent_decode(k, true), percent_decode(v, true))
        })
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_leniently() {
        assert_eq!(percent_decode(b"a%20b%2Cc+d%zz%4", false), "a b,c+d%zz%4");
        assert_eq!(percent_decode(b"a+b%2B", true), "a b+");
        assert_eq!(percent_decode(b"%ff", true), "\u{fffd}");
        let got: Vec<_> = pairs(b"a+b=c%2B&&x&y=").collect();
        assert_eq!(
            got,
            [
                ("a b".into(), "c+".into()),
                ("x".into(), String::new()),
                ("y".into(), String::new())
            ]
        );
    }
}
