//! Fuzz entry points of the HTTP request parser ([`parse`],
//! [`RequestParser`]): whole against in pieces, the chunked decoder against
//! a reference, and our heads against `httparse`.

use keypipe_core::fuzzing::Input;

use crate::http::{Limits, Method, Parsed, Request, RequestParser, parse};

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
