//! Answer parsing for the client (sans-IO, by httparse): the whole answer
//! at the front of the bytes received, its status, head and body lengths
//! (bounded) and where the watched header's value lies.

use std::io;

/// Largest answer body accepted (answers to pushes and link sync are tiny).
pub(super) const MAX_ANSWER_BODY: usize = 64 * 1024;

/// One answer at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParsedAnswer {
    /// Its status code.
    pub(crate) status: u16,
    /// Bytes of its head.
    pub(crate) head: usize,
    /// Bytes of its body.
    pub(crate) body: usize,
    /// Where the watched header's value lies in the buffer.
    pub(crate) header: Option<(usize, usize)>,
}

/// One answer at the front of `buf`, whole, or `None` when more is needed.
pub(crate) fn parse_answer(buf: &[u8], watch: Option<&str>) -> io::Result<Option<ParsedAnswer>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::other(format!("bad answer: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let header = watch.and_then(|name| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| {
                let start = h.value.as_ptr() as usize - buf.as_ptr() as usize;
                (start, start + h.value.len())
            })
    });
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| io::Error::other("bad Content-Length in answer"))
        })
        .transpose()?;
    let body = match (status, length) {
        (100..=199 | 204 | 304, _) => 0,
        (_, Some(n)) if n <= MAX_ANSWER_BODY => n,
        (_, Some(_)) => return Err(io::Error::other("answer body too large")),
        (_, None) => return Err(io::Error::other("answer without Content-Length")),
    };
    Ok((buf.len() >= head + body).then_some(ParsedAnswer {
        status,
        head,
        body,
        header,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_content_length_is_an_error_not_a_panic() {
        let answer = b"HTTP/1.1 201 Created\r\nContent-Length: 18446744073709551615\r\n\r\n";
        assert!(parse_answer(answer, None).is_err());
        let ok = b"HTTP/1.1 201 Created\r\nX-Mac: ab\r\nContent-Length: 2\r\n\r\n{}";
        let parsed = parse_answer(ok, Some("x-mac")).unwrap().unwrap();
        assert_eq!(
            (parsed.status, parsed.head, parsed.body),
            (201, ok.len() - 2, 2)
        );
        let (a, b) = parsed.header.unwrap();
        assert_eq!(&ok[a..b], b"ab");
    }
}
