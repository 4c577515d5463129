//! Fuzz entry points (feature `fuzzing`): each takes raw bytes, never
//! panics on any input unless an invariant of the code under test breaks,
//! and is called both by a cargo-fuzz target (`fuzz/fuzz_targets/`) and by
//! the root package's `tests/fuzz_regressions.rs`, which replays the
//! checked-in seeds and regressions.
//!
//! Structured inputs are read with a small byte cursor (the same idea as
//! `arbitrary::Unstructured`): a short input simply reads as zeros, so
//! every byte string is a valid input. Each function's documentation gives
//! its input layout; the seeds under `fuzz/seeds/<target>/` follow it.
//!
//! Not reachable from here (see `fuzz/README.md`): the outbound client's
//! `parse_answer` (private to `http::client`) and the chunked decoder
//! alone (private to `http`; fuzzed through [`http_chunked`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use keypipe_core::fuzzing::Input;
use uuid::Uuid;

use crate::http::{
    Limits, Method, Origin, Parsed, Peer, Reply, Request, RequestParser, Service, parse,
    parse_answer, request_bytes,
};
use crate::kms_side::{Pushers, ReceivedKeys, key_material_route};
use crate::metrics::RequestMetrics;
use crate::router::Router;
use crate::tls::PeerIdentity;

// --- HTTP requests ------------------------------------------------------

/// Everything a parse can tell, comparable.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// More bytes needed (and whether `100 Continue` is due).
    Partial(bool),
    /// A request, and the bytes it used.
    Complete(Summary, usize),
    /// Refused: status and reason.
    Error(u16, &'static str),
}

/// A parsed request, comparable.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    method: Method,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    keep_alive: bool,
    http10: bool,
}

fn summary(req: &Request) -> Summary {
    Summary {
        method: req.method,
        target: req.target().to_owned(),
        headers: req
            .headers()
            .map(|(n, v)| (n.to_owned(), v.to_vec()))
            .collect(),
        body: req.body.to_vec(),
        keep_alive: req.keep_alive,
        http10: req.http10,
    }
}

fn outcome(result: Result<Parsed, crate::http::HttpError>) -> Outcome {
    match result {
        Ok(Parsed::Partial { expects_continue }) => Outcome::Partial(expects_continue),
        Ok(Parsed::Complete(req, used)) => Outcome::Complete(summary(&req), used),
        Err(e) => Outcome::Error(e.status, e.reason),
    }
}

/// Feeds `buf` to one parser, growing at the `cuts` (ascending, each at
/// most `buf.len()`), as a connection does, then whole; the first outcome
/// that is not `Partial`, or the last.
fn fed_in_pieces(buf: &[u8], cuts: &[usize], limits: &Limits) -> Outcome {
    let mut parser = RequestParser::default();
    for &cut in cuts {
        match outcome(parser.parse(&buf[..cut], limits)) {
            Outcome::Partial(_) => {}
            done => return done,
        }
    }
    outcome(parser.parse(buf, limits))
}

/// Asserts that feeding in pieces gave what a whole parse gives. One
/// difference is allowed, and only between two refusals: a head over the
/// size limit is refused (431) as soon as the bytes received pass the
/// limit, while a whole buffer is scanned on to its first LF, so a bare LF
/// beyond the limit is answered 400 instead.
fn assert_same(pieces: &Outcome, whole: &Outcome, how: &str) {
    if let (Outcome::Error(a, _), Outcome::Error(b, _)) = (pieces, whole)
        && (*a == 431 || *b == 431)
    {
        return;
    }
    assert_eq!(pieces, whole, "{how}");
}

/// The limits a fuzzer byte picks: the defaults, or small ones so every
/// limit is reachable with short inputs.
fn limits(input: &mut Input<'_>) -> Limits {
    if input.bool() {
        Limits {
            max_header_bytes: 16 + usize::from(input.byte()) * 4,
            max_body_bytes: usize::from(input.u16() % 4096),
            max_chunks: 1 + usize::from(input.byte() % 64),
        }
    } else {
        Limits::default()
    }
}

/// Checks what a whole parse accepted: the request's parts are
/// consistent, and writing it out again (`Content-Length` framing)
/// parses to the same request.
fn check_request(buf: &[u8], s: &Summary, used: usize) {
    assert!(used <= buf.len(), "used more bytes than given");
    assert!(s.body.len() <= used, "a body longer than the bytes used");
    assert!(!s.target.is_empty(), "an empty request target");
    let lengths: Vec<&[u8]> = s
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_slice())
        .collect();
    if let Some(first) = lengths.first() {
        let n: usize = std::str::from_utf8(first)
            .expect("an accepted Content-Length is ASCII")
            .parse()
            .expect("an accepted Content-Length is a number");
        assert_eq!(s.body.len(), n, "body length against Content-Length");
    }
    // Written out again without the transfer coding.
    let framed = |n: &str| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    };
    let version = if s.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let mut again = format!("{} {} {version}\r\n", s.method.as_str(), s.target).into_bytes();
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, value) in s.headers.iter().filter(|(n, _)| !framed(n)) {
        headers.push((name.clone(), value.clone()));
    }
    if s.headers.iter().any(|(n, _)| framed(n)) {
        headers.push((
            "Content-Length".into(),
            s.body.len().to_string().into_bytes(),
        ));
    }
    for (name, value) in &headers {
        again.extend_from_slice(name.as_bytes());
        again.extend_from_slice(b": ");
        again.extend_from_slice(value);
        again.extend_from_slice(b"\r\n");
    }
    again.extend_from_slice(b"\r\n");
    again.extend_from_slice(&s.body);
    let roomy = Limits {
        max_header_bytes: again.len(),
        max_body_bytes: s.body.len(),
        max_chunks: 1,
    };
    let Outcome::Complete(back, n) = outcome(parse(&again, &roomy)) else {
        panic!(
            "a request written out again does not parse: {:?}",
            String::from_utf8_lossy(&again)
        );
    };
    assert_eq!(n, again.len());
    assert_eq!(
        (back.method, &back.target, &back.body),
        (s.method, &s.target, &s.body)
    );
    assert_eq!((back.keep_alive, back.http10), (s.keep_alive, s.http10));
    let trimmed = |v: &[u8]| v.trim_ascii().to_vec();
    let want: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.clone(), trimmed(v)))
        .collect();
    let got: Vec<(String, Vec<u8>)> = back
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), trimmed(v)))
        .collect();
    assert_eq!(got, want, "header fields written out again");
}

/// The HTTP request parser ([`parse`], [`RequestParser`]).
///
/// Input: one byte choosing the limits (defaults, or small ones from the
/// next four bytes), two bytes for a cut point and one for a stride, then
/// the request bytes. Invariants: the incremental parser gives the same
/// outcome fed in two pieces cut at the fuzzer's point, or in pieces of
/// `stride` bytes, as fed whole; an accepted request is consistent (body
/// within the bytes used and equal to `Content-Length`) and written out
/// again parses to the same method, target, header fields and body.
pub fn http_request(data: &[u8]) {
    let mut input = Input::new(data);
    let limits = limits(&mut input);
    let cut = usize::from(input.u16());
    let stride = 1 + usize::from(input.byte() % 64);
    let buf = input.rest();
    let whole = outcome(parse(buf, &limits));
    let cut = cut % (buf.len() + 1);
    assert_same(
        &fed_in_pieces(buf, &[cut], &limits),
        &whole,
        &format!("fed in two pieces cut at {cut}"),
    );
    let cuts: Vec<usize> = (stride..buf.len()).step_by(stride).collect();
    assert_same(
        &fed_in_pieces(buf, &cuts, &limits),
        &whole,
        &format!("fed {stride} bytes at a time"),
    );
    if let Outcome::Complete(s, used) = &whole {
        check_request(buf, s, *used);
        // The next request of a pipeline parses (or not) without panic.
        let _ = parse(&buf[*used..], &limits);
    }
}

/// A chunked body exactly as RFC 9112 §7.1 spells it, read the simple
/// way: `Some((body, bytes used))` when `input` starts with a whole one.
/// Limits are not checked (the decoder under test has its own).
fn dechunk_reference(input: &[u8]) -> Option<(Vec<u8>, usize)> {
    fn line(input: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let rest = input.get(at..)?;
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let text = &rest[..end];
        if text.contains(&b'\n') {
            return None;
        }
        Some((text, at + end + 2))
    }
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (text, next) = line(input, at)?;
        let digits = text.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 8 {
            return None;
        }
        let ext = &text[digits..];
        if !ext.is_empty()
            && (ext[0] != b';' || !ext.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)))
        {
            return None;
        }
        let size = usize::from_str_radix(std::str::from_utf8(&text[..digits]).ok()?, 16).ok()?;
        at = next;
        if size == 0 {
            break;
        }
        let data = input.get(at..at.checked_add(size)?)?;
        body.extend_from_slice(data);
        at += size;
        if input.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
    loop {
        let (text, next) = line(input, at)?;
        at = next;
        if text.is_empty() {
            return Some((body, at));
        }
    }
}

const CHUNKED_HEAD: &[u8] = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";

/// The chunked decoder, through the request parser (the decoder itself is
/// private to `http`): a request with `Transfer-Encoding: chunked` and the
/// fuzzer's bytes as its body.
///
/// Input: one byte choosing the limits (as in [`http_request`]), three
/// two-byte cut points, one byte of chunk size for the re-encoding, then
/// the body bytes. Invariants: the same outcome whatever the pieces the
/// body arrives in; a decoded body is never longer than its encoding, and
/// equals what a simple reference decoder reads from the same bytes;
/// encoding any payload (the body bytes themselves) in chunks and decoding
/// gives it back.
pub fn http_chunked(data: &[u8]) {
    let mut input = Input::new(data);
    let limits = limits(&mut input);
    let mut cuts = [input.u16(), input.u16(), input.u16()].map(usize::from);
    let chunk_size = 1 + usize::from(input.byte());
    let payload = input.rest();
    let mut buf = CHUNKED_HEAD.to_vec();
    buf.extend_from_slice(payload);
    for c in &mut cuts {
        *c %= buf.len() + 1;
    }
    cuts.sort_unstable();
    let whole = outcome(parse(&buf, &limits));
    assert_same(
        &fed_in_pieces(&buf, &cuts, &limits),
        &whole,
        &format!("fed in pieces cut at {cuts:?}"),
    );
    if let Outcome::Complete(s, used) = &whole {
        let encoded = &buf[CHUNKED_HEAD.len()..*used];
        assert!(
            s.body.len() <= encoded.len(),
            "body longer than its encoding"
        );
        let (reference, n) =
            dechunk_reference(encoded).expect("the reference reads what the decoder accepted");
        assert_eq!(
            (&reference, n),
            (&s.body, encoded.len()),
            "the reference decoder disagrees"
        );
    }
    // Encode → decode is the identity.
    let mut encoded = CHUNKED_HEAD.to_vec();
    for chunk in payload.chunks(chunk_size) {
        encoded.extend_from_slice(format!("{:x};e=1\r\n", chunk.len()).as_bytes());
        encoded.extend_from_slice(chunk);
        encoded.extend_from_slice(b"\r\n");
    }
    encoded.extend_from_slice(b"0\r\nT: v\r\n\r\n");
    match outcome(parse(&encoded, &Limits::default())) {
        Outcome::Complete(s, n) => {
            assert_eq!(n, encoded.len());
            assert_eq!(s.body, payload, "chunked round trip");
        }
        other => panic!("a well-formed chunked body was refused: {other:?}"),
    }
}

/// Our request-head parsing against `httparse` on the same bytes. We are
/// stricter (bare LF, `Host`, framing), so only "we accept ⇒ `httparse`
/// accepts, with the same method, target, version and header fields" is
/// asserted.
///
/// Input: the request bytes.
pub fn http_differential(data: &[u8]) {
    let Ok(Parsed::Complete(req, _)) = parse(data, &Limits::default()) else {
        return;
    };
    let head_len = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an accepted head ends with an empty line")
        + 4;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut theirs = httparse::Request::new(&mut headers);
    let n = match theirs.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("we accepted a head httparse refuses: {other:?}"),
    };
    assert_eq!(n, head_len, "where the head ends");
    let method = theirs.method.expect("a complete request has a method");
    match req.method {
        Method::Other => assert!(
            !["GET", "HEAD", "POST", "PUT", "DELETE"].contains(&method),
            "{method} read as another method"
        ),
        m => assert_eq!(m.as_str(), method),
    }
    assert_eq!(Some(req.target()), theirs.path, "request target");
    assert_eq!(req.http10, theirs.version == Some(0), "version");
    let ours: Vec<(&str, &[u8])> = req.headers().collect();
    let other: Vec<(&str, &[u8])> = theirs.headers.iter().map(|h| (h.name, h.value)).collect();
    assert_eq!(ours, other, "header fields");
}

// --- outbound origins ---------------------------------------------------

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

// --- ETSI 004, KMS side -------------------------------------------------

/// The pushing peers a fuzzer byte picks, and whether the pusher rules
/// must let it push with `nodes` = `["node-a"]` (`listed`) or empty.
fn pusher_peer(choice: u8, listed: bool) -> (Option<Arc<Peer>>, Option<String>) {
    let peer = |addr: &str, identity: Option<(&str, &str)>| {
        Some(Arc::new(Peer {
            addr: addr.parse::<SocketAddr>().expect("a literal address"),
            tls: identity.is_some(),
            identity: identity.map(|(name, role)| PeerIdentity {
                name: name.into(),
                role: role.into(),
                serial: "01".into(),
                spki_sha256: [0; 32],
            }),
        }))
    };
    match choice % 6 {
        0 => (None, Some(String::new())),
        1 => (
            peer("127.0.0.1:9", None),
            (!listed).then(|| "\0local".into()),
        ),
        2 => (peer("10.0.0.1:9", None), None),
        3 => (
            peer("10.0.0.1:9", Some(("node-a", "node"))),
            listed.then(|| "node-a".into()),
        ),
        4 => (peer("10.0.0.1:9", Some(("node-b", "node"))), None),
        _ => (peer("10.0.0.1:9", Some(("node-a", "kms"))), None),
    }
}

/// What an independent reading of a push body (`serde_json::Value`, all
/// escapes resolved) says it holds: the stream, the index and the key,
/// when it is a valid push. The route may refuse more (escapes, duplicate
/// fields), never accept more.
fn read_push(body: &[u8]) -> Option<(Uuid, u32, Vec<u8>)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("status")?.as_u64()? != 0 {
        return None;
    }
    let index = u32::try_from(v.get("index")?.as_u64()?).ok()?;
    let key = BASE64.decode(v.get("key_buffer")?.as_str()?).ok()?;
    let ksid = Uuid::parse_str(v["metadata"]["buffer"]["key_stream_id"].as_str()?).ok()?;
    (!key.is_empty()).then_some((ksid, index, key))
}

/// The ETSI 004 KMS side's `POST /api/v1/qkd/etsi004/key-material`
/// (`kms_side::route`), through the router as the server calls it, into a
/// fresh store: a sequence of pushes from fuzzer-chosen pushers.
///
/// Input: one byte choosing the pusher rules, then per push (at most 8):
/// a byte choosing the pusher, a byte choosing a raw body (length-prefixed
/// bytes) or a push built from the next bytes (status, stream, index, key,
/// optional fuzzer bytes spliced in). Invariants: every answer is 201, 400,
/// 403, 409 or 503 with a JSON body; a push is stored only from a pusher
/// the rules allow, and only as an independent reading of its body says
/// (stream, index, Base64-decoded key); a stream's key comes from its first
/// pusher only; an index held is never overwritten with other key; what is
/// stored is what consumers take out.
pub fn etsi004_kms_push(data: &[u8]) {
    let mut input = Input::new(data);
    let listed = input.bool();
    let pushers = Pushers {
        nodes: if listed {
            vec!["node-a".into()]
        } else {
            Vec::new()
        },
    };
    // Room for 8 pushes of at most 255 bytes (a bigger store costs a
    // bigger locked heap per input).
    let store = Arc::new(ReceivedKeys::new(16 << 10).expect("a small locked key store"));
    let mut router = Router::new(Arc::new(RequestMetrics::default()));
    key_material_route(&mut router, Arc::clone(&store), pushers);
    // (stream, index) -> key, and stream -> pusher, as accepted so far.
    let mut held: HashMap<(Uuid, u32), Vec<u8>> = HashMap::new();
    let mut owner: HashMap<Uuid, String> = HashMap::new();
    for _ in 0..8 {
        if input.is_empty() {
            break;
        }
        let (peer, allowed_as) = pusher_peer(input.byte(), listed);
        let body = if input.bool() {
            input.chunk().to_vec()
        } else {
            let status = input.byte() % 3;
            let ksid = Uuid::from_u128(0x5ca1ab1e + u128::from(input.byte() % 3));
            let index = input.byte() % 4;
            let key = BASE64.encode(input.chunk());
            let mut body = format!(
                r#"{{"status":{status},"index":{index},"key_buffer":"{key}","metadata":{{"buffer":{{"key_stream_id":"{ksid}"}}}}}}"#
            )
            .into_bytes();
            let junk = input.chunk();
            if !junk.is_empty() {
                let at = usize::from(input.byte()) % (body.len() + 1);
                body.splice(at..at, junk.iter().copied());
            }
            body
        };
        let mut raw = format!(
            "POST /api/v1/qkd/etsi004/key-material HTTP/1.1\r\nHost: kms\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        let Ok(Parsed::Complete(mut req, _)) = parse(&raw, &Limits::default()) else {
            panic!("a well-formed push request does not parse");
        };
        req.peer = peer;
        let Reply::Now(resp) = router.call(req) else {
            panic!("the key-material route answers at once");
        };
        let answer: serde_json::Value =
            serde_json::from_slice(&resp.body).expect("the answer is JSON");
        match resp.status {
            201 => {
                assert_eq!(answer["status"], 0);
                let pusher = allowed_as.expect("stored from a pusher the rules refuse");
                let (ksid, index, key) = read_push(&body).expect("stored a push that is not valid");
                let first = owner.entry(ksid).or_insert_with(|| pusher.clone());
                assert_eq!(*first, pusher, "a stream took key from a second pusher");
                if let Some(before) = held.insert((ksid, index), key.clone()) {
                    assert_eq!(before, key, "an index held was overwritten");
                }
            }
            403 => assert!(allowed_as.is_none(), "an allowed pusher was refused"),
            400 | 409 | 503 => assert_eq!(answer["status"], 3),
            other => panic!("key-material answered {other}"),
        }
    }
    for ((ksid, index), key) in held {
        let taken = store.take(&ksid, index).expect("an accepted push is held");
        assert_eq!(&taken[..], &key[..], "held key differs");
    }
}

/// `PeerIdentity::from_der`: the identity read from a client certificate
/// (after the TLS layer verified it).
///
/// Input: certificate DER. Invariants: the serial is lower-case hex.
pub fn tls_identity(data: &[u8]) {
    if let Some(id) = PeerIdentity::from_der(data) {
        assert!(
            id.serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert!(id.serial.len().is_multiple_of(2));
    }
}

// --- The outbound client's answers ---------------------------------------

/// The outbound client's answer parser (`http::client`, security review
/// F9), on an answer a KMS or peer node sent: byte 0 picks the watched
/// header (none or `X-Mac`), the rest is the answer. Never panics; an
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
