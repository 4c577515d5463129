//! Fuzz entry points of the outbound client's parsers: origin URLs
//! ([`Origin::parse`], read back by the server's request parser) and the
//! answers a KMS or peer node sends (`parse_answer`).

use keypipe_core::fuzzing::Input;

use crate::http::{Limits, Origin, Parsed, parse, parse_answer, request_bytes};

/// `Origin::parse` (KMS and peer URIs from configuration and from ETSI
/// 004 `source`/`destination`).
///
/// Input: the URL bytes (read as UTF-8, lossily). Invariants: an accepted
/// URL has a non-empty host, a port, a base path of path characters
/// without a trailing `/`; its `url()` and `canonical()` parse again to
/// the same origin (`canonical` is idempotent), and so does it spelled
/// without its port when that is the default; a request built for it by
/// the client (`request_bytes`) parses on our server side to the same
/// path, `Host` and body.
pub fn origin_parse(data: &[u8]) {
    let url = String::from_utf8_lossy(data);
    let Ok(origin) = Origin::parse(&url) else {
        return;
    };
    assert!(!origin.host.is_empty(), "empty host");
    assert!(!origin.base_path.ends_with('/'), "base path ends with /");
    assert!(
        origin.base_path.is_empty() || origin.base_path.starts_with('/'),
        "base path without a leading /"
    );
    let authority = origin.authority();
    assert!(
        !authority
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()),
        "authority {authority:?} could break a request head"
    );
    let again = Origin::parse(&origin.url()).expect("url() parses");
    assert_eq!(
        (again.tls, &again.host, again.port, again.addr),
        (origin.tls, &origin.host, origin.port, origin.addr),
        "url() round trip"
    );
    let canonical = origin.canonical();
    let back = Origin::parse(&canonical).expect("canonical() parses");
    assert_eq!(back.canonical(), canonical, "canonical() is idempotent");
    assert_eq!(back.base_path, origin.base_path);
    // The default port may be left out, whatever the host.
    if origin.port == if origin.tls { 443 } else { 80 } {
        let scheme = if origin.tls { "https" } else { "http" };
        let host = if origin.host.contains(':') {
            format!("[{}]", origin.host)
        } else {
            origin.host.clone()
        };
        let short = format!("{scheme}://{host}{}", origin.base_path);
        match Origin::parse(&short) {
            Ok(o) => assert_eq!(o, origin, "{short:?} against {url:?}"),
            Err(e) => panic!("{short:?} (the default port left out) refused: {e}"),
        }
    }
    // The client's request for this origin, read by our server side.
    let body = b"{\"k\":1}";
    let bytes = request_bytes(
        "POST",
        &origin,
        "/api/x",
        "application/json",
        &[("X-Test", "1")],
        body,
    );
    let req = match parse(&bytes, &Limits::default()) {
        Ok(Parsed::Complete(req, n)) if n == bytes.len() => req,
        other => panic!(
            "our own request for {url:?} does not parse: {other:?} {:?}",
            String::from_utf8_lossy(&bytes)
        ),
    };
    assert_eq!(req.path(), format!("{}/api/x", origin.base_path));
    assert_eq!(req.header("host"), Some(authority.as_bytes()));
    assert_eq!(req.body.as_slice(), body);
}

/// The outbound client's answer parser (`http::client::answer`, security
/// review F9), on an answer a KMS or peer node sent: byte 0 picks the
/// watched header (none or `X-Mac`), the rest is the answer. Never panics; an
/// answer it accepts lies inside the input, its body within the client's
/// bound and its watched header inside the head; every shorter prefix of
/// it asks for more bytes (a partial read is never an error) and the
/// answer alone parses the same.
pub fn client_answer(data: &[u8]) {
    let mut input = Input::new(data);
    let watch = input.bool().then_some("x-mac");
    let buf = input.rest();
    let Ok(Some(answer)) = parse_answer(buf, watch) else {
        return;
    };
    let whole = answer.head + answer.body;
    assert!(whole <= buf.len(), "answer beyond the input");
    assert!(answer.body <= 64 << 20, "body above the client's bound");
    if let Some((a, b)) = answer.header {
        assert!(
            a <= b && b <= answer.head,
            "watched header outside the head"
        );
    }
    let alone = parse_answer(&buf[..whole], watch).expect("the answer alone parses");
    assert_eq!(alone.as_ref(), Some(&answer));
    for cut in [
        whole.saturating_sub(1),
        answer.head.saturating_sub(1),
        whole / 2,
    ] {
        if cut < whole {
            assert!(
                matches!(parse_answer(&buf[..cut], watch), Ok(None)),
                "a prefix of {cut} of {whole} bytes is an error"
            );
        }
    }
}
