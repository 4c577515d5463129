//! Request parameters as the real clients send them, read leniently: the
//! query string and a form body merged (query first), form decoding
//! (`+` is a space) that leaves a malformed `%` escape as it is, raw
//! UTF-8 bytes accepted, booleans in any case, ISO-8601 times in every
//! spelling the clients use, and the session cookie however it is echoed.

use std::fmt;

/// The session id's length (lower-case hex characters).
pub const SID_LEN: usize = 32;

/// The parameters of one request.
#[derive(Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be passwords: names only.
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Params {
    /// The parameters of a query string and a form body (either may be
    /// empty), in that order.
    pub fn parse(query: &[u8], body: &[u8]) -> Params {
        Params(
            crate::form::pairs(query)
                .chain(crate::form::pairs(body))
                .collect(),
        )
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first non-empty value of `name`.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// A boolean parameter (`true`/`True`/`TRUE`/`1`, `false`/…/`0`),
    /// `default` when absent or empty; `Err` naming it when unreadable.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, String> {
        match self.non_empty(name) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
            Some(_) => Err(format!("{name}: true or false")),
        }
    }

    /// Adds a parameter (tests).
    #[cfg(test)]
    pub fn with(mut self, name: &str, value: &str) -> Params {
        self.0.push((name.into(), value.into()));
        self
    }
}

/// The session id of a request's `Cookie` headers: the first
/// `keytalkcookie=` pair of any of them (attributes such as `Path=/` that
/// some clients echo, other cookies and later duplicates are ignored),
/// when it is a well-formed id (32 hex digits, read in lower case).
pub fn session_id<'a>(cookies: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    for header in cookies {
        for pair in header.split(|&b| b == b';' || b == b',') {
            let pair = pair.trim_ascii();
            let Some(value) = pair
                .strip_prefix(b"keytalkcookie=")
                .or_else(|| pair.strip_prefix(b"KEYTALKCOOKIE="))
            else {
                continue;
            };
            let value = value.trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            if value.len() == SID_LEN && value.iter().all(u8::is_ascii_hexdigit) {
                return Some(String::from_utf8_lossy(value).to_ascii_lowercase());
            }
            return None;
        }
    }
    None
}

/// Parses an ISO-8601 UTC time as the clients write it
/// (`2016-04-22T10:44:35Z`, `…+0000`, `…+00:00`, `…+00`, 0 to 9 fraction
/// digits, a space for the `T`, an offset other than zero): seconds since
/// the epoch.
pub fn parse_utc(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let digits: String = rest[1..].chars().filter(|c| *c != ':').collect();
            if !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let (h, m) = match digits.len() {
                2 => (digits.parse::<i64>().ok()?, 0),
                4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?),
                _ => return None,
            };
            sign * (h * 3600 + m * 60)
        }
    };
    let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?)
            .ok()?;
    let t = date
        .with_hms(
            u8::try_from(hour).ok()?,
            u8::try_from(minute).ok()?,
            u8::try_from(second.min(59)).ok()?,
        )
        .ok()?
        .assume_utc();
    Some(t.unix_timestamp() - offset)
}

/// A time as every client parses it: `YYYY-MM-DDTHH:MM:SS+0000`.
pub fn format_utc(unix_seconds: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+0000",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The `responses` of a challenge-response, as an object
/// `{"name": "value"}` or an array of `{"name", "value"}`.
pub fn responses(raw: &str) -> Option<Vec<(String, String)>> {
    let value: serde_json::Value = serde_json::from_str(raw).ok()?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| Some((k.clone(), text(v)?)))
            .collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| Some((text(item.get("name")?)?, text(item.get("value")?)?)))
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_is_lenient_and_merges() {
        let p = Params::parse(
            b"a=1+2&b=%41%zz%4&c",
            b"d=%E2%82%AC&a=ignored&e=caf\xc3\xa9",
        );
        assert_eq!(p.get("a"), Some("1 2"), "query first");
        assert_eq!(p.get("b"), Some("A%zz%4"));
        assert_eq!(p.get("c"), Some(""));
        assert_eq!(p.get("d"), Some("€"));
        assert_eq!(p.get("e"), Some("café"), "raw UTF-8");
        assert_eq!(format!("{p:?}"), r#"["a", "b", "c", "d", "a", "e"]"#);
        for (v, want) in [
            ("True", true),
            ("FALSE", false),
            ("true", true),
            ("0", false),
        ] {
            assert_eq!(Params::default().with("f", v).flag("f", !want), Ok(want));
        }
        assert!(Params::default().with("f", "yes").flag("f", false).is_err());
        assert_eq!(Params::default().flag("f", true), Ok(true));
    }

    #[test]
    fn cookies_are_read_leniently() {
        let sid = "a622bb821bec1f5315668c8f9a8e780f";
        for header in [
            format!("keytalkcookie={sid}"),
            format!("keytalkcookie={sid}; Path=/"),
            format!("other=1; keytalkcookie={sid}; keytalkcookie=ffffffffffffffffffffffffffffffff"),
            format!("keytalkcookie={}", sid.to_uppercase()),
            format!("keytalkcookie=\"{sid}\""),
        ] {
            assert_eq!(
                session_id([header.as_bytes()]).as_deref(),
                Some(sid),
                "{header}"
            );
        }
        assert_eq!(session_id([&b"keytalkcookie=abc"[..]]), None);
        assert_eq!(
            session_id([
                &b"other=1"[..],
                &b"keytalkcookie=a622bb821bec1f5315668c8f9a8e780f"[..]
            ])
            .as_deref(),
            Some(sid)
        );
    }

    #[test]
    fn times_in_every_client_spelling() {
        let want = 1_461_321_875; // 2016-04-22T10:44:35Z
        for s in [
            "2016-04-22T10:44:35Z",
            "2016-04-22T10:44:35+0000",
            "2016-04-22T10:44:35+00:00",
            "2016-04-22T10:44:35+00",
            "2016-04-22T10:44:35.12345Z",
            "2016-04-22T10:44:35.614010Z",
            "2016-04-22 10:44:35",
            "2016-04-22T12:44:35+02:00",
        ] {
            assert_eq!(parse_utc(s), Some(want), "{s}");
        }
        for s in [
            "2016-04-22",
            "2016-13-22T10:44:35Z",
            "2016-04-22T10:44:35X",
            "x",
        ] {
            assert_eq!(parse_utc(s), None, "{s}");
        }
        assert_eq!(format_utc(want), "2016-04-22T10:44:35+0000");
    }

    #[test]
    fn responses_as_object_or_array() {
        let mut a = responses(r#"{"CK":"123","RES":"456"}"#).unwrap();
        a.sort();
        assert_eq!(
            a,
            [("CK".into(), "123".into()), ("RES".into(), "456".into())]
        );
        let b = responses(r#"[{"name":"RES","value":"123"}]"#).unwrap();
        assert_eq!(b, [("RES".to_owned(), "123".to_owned())]);
        assert_eq!(responses("[1]"), None);
        assert_eq!(responses("nope"), None);
    }
}
