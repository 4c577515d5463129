//! The KeyTalk fuzz entry points: request parameters (query, form,
//! cookie, times) with the URL decoding under them, and client CSRs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use der::Decode;
use keypipe_core::fuzzing::Input;

use crate::ca::Subject;
use crate::keytalk::csr::{self, CsrRequirements};
use crate::keytalk::params::{self, Params};
use crate::{form, keytalk};

/// Every byte as `%XX`, but unreserved characters as they are.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// KeyTalk request parameters (`keytalk::params`: query and form merged,
/// session cookie, ISO-8601 times, challenge responses) and the shared URL
/// decoding under them (`form`), with the small parsers of the RCDP path
/// (version, action, hardware signature).
///
/// Input: a length-prefixed query, then the form body. Invariants:
/// decoding never grows text more than three times (U+FFFD); encoded then
/// decoded text and pairs come back unchanged; `Params` sees the query's
/// values before the body's; a session id is 32 lower-case hex digits;
/// an accepted time formats and parses back to itself; versions and
/// actions round-trip their names.
pub fn keytalk_form(data: &[u8]) {
    let mut input = Input::new(data);
    let query = input.chunk();
    let body = input.rest();
    for raw in [query, body] {
        for plus in [false, true] {
            let decoded = form::percent_decode(raw, plus);
            assert!(decoded.len() <= 3 * raw.len(), "decoding grew the text");
        }
        let text = String::from_utf8_lossy(raw);
        assert_eq!(
            form::percent_decode(percent_encode(&text).as_bytes(), true),
            text,
            "percent round trip"
        );
        let pairs: Vec<(String, String)> = form::pairs(raw).collect();
        assert!(pairs.len() <= raw.iter().filter(|&&b| b == b'&').count() + 1);
        let encoded: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        let again: Vec<(String, String)> = form::pairs(encoded.join("&").as_bytes()).collect();
        assert_eq!(again, pairs, "pairs round trip");
    }
    let params = Params::parse(query, body);
    let all: Vec<(String, String)> = form::pairs(query).chain(form::pairs(body)).collect();
    for (name, _) in &all {
        let first = all.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(params.get(name), first, "the first value of {name:?}");
        if let Ok(flag) = params.flag(name, false) {
            let v = first.unwrap_or_default();
            let truthy = v.eq_ignore_ascii_case("true") || v == "1";
            assert_eq!(flag, truthy);
        }
    }
    let cookies: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    if let Some(sid) = params::session_id(cookies) {
        assert_eq!(sid.len(), params::SID_LEN);
        assert!(
            sid.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }
    for text in [
        String::from_utf8_lossy(query),
        String::from_utf8_lossy(body),
    ] {
        if let Some(t) = params::parse_utc(&text)
            && time::OffsetDateTime::from_unix_timestamp(t)
                .is_ok_and(|d| (0..=9999).contains(&d.year()))
        {
            assert_eq!(
                params::parse_utc(&params::format_utc(t)),
                Some(t),
                "{text:?}"
            );
        }
        let _ = params::responses(&text);
        if let Some(v) = keytalk::version::Version::propose(&text) {
            assert!(v <= keytalk::version::Version::NEWEST);
        }
        if let Some(v) = keytalk::version::Version::parse(&text) {
            assert_eq!(v.as_str(), text);
        }
        if let Some(a) = keytalk::phase::Action::parse(&text) {
            assert_eq!(a.as_str(), text);
        }
        let sig = keytalk::credentials::normalize_hwsig(&text);
        assert!(keytalk::credentials::same_hwsig(&sig, &sig));
    }
    // Any time in years 0 to 9999 formats and parses back.
    let mut t = Input::new(query);
    let secs = (t.u64() % 315_537_897_600) as i64 - 62_167_219_200;
    assert_eq!(params::parse_utc(&params::format_utc(secs)), Some(secs));
}

/// KeyTalk CSRs (`keytalk::csr::der_of`, `check`): PEM or Base64 DER, then
/// PKCS#10 parsing, key size, signature, digest and subject checks.
///
/// Input: the CSR text (lossy UTF-8). Invariants: an accepted CSR's
/// public key is DER; the same DER sent as Base64 (also with every `+`
/// turned into a space, as an unescaped form value arrives) or as PEM
/// reads the same.
pub fn keytalk_csr(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let want = CsrRequirements {
        key_size: 2048,
        signing_algo: "sha256".into(),
        subject: Subject {
            cn: "user".into(),
            ..Subject::default()
        },
    };
    if let Some(der) = csr::der_of(&text) {
        let b64 = BASE64.encode(&der);
        assert_eq!(csr::der_of(&b64).as_ref(), Some(&der));
        let spaced = b64.replace('+', " ");
        assert_eq!(
            csr::der_of(&spaced).as_ref(),
            Some(&der),
            "Base64 whose `+` a form turned into spaces: {spaced:?}"
        );
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
        );
        assert_eq!(csr::der_of(&pem).as_ref(), Some(&der));
    }
    if let Ok(spki) = csr::check(&text, &want) {
        assert!(spki::SubjectPublicKeyInfoRef::from_der(&spki).is_ok());
    }
    let der_text = BASE64.encode(data);
    let _ = csr::check(&der_text, &want);
}
