//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally:
//! the decoder keeps its state between reads and looks at each input byte
//! once.
//!
//! Hence a body costs time linear in its size however it is cut into chunks
//! and reads (security review F11). Strict: a chunk-size line is
//! hex digits (no whitespace), optional extensions of visible characters,
//! and CRLF (a bare LF is refused); chunks, extensions and trailer fields
//! are bounded.

use zeroize::Zeroizing;

use super::HttpError;

/// Longest chunk-size line (size, extensions), bytes.
const MAX_SIZE_LINE: usize = 1024;
/// Most trailer bytes, and trailer fields.
const MAX_TRAILER_BYTES: usize = 4096;
const MAX_TRAILER_FIELDS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line that started at `line`.
    Size { line: usize },
    /// `left` bytes of chunk data to go.
    Data { left: usize },
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Reading a trailer line that started at `line`.
    Trailer { line: usize },
    /// The body is whole.
    Done,
}

/// A chunked body being decoded.
pub(super) struct Chunked {
    state: State,
    body: Zeroizing<Vec<u8>>,
    /// Input bytes decoded so far (from the start of the body).
    used: usize,
    chunks: usize,
    trailer_bytes: usize,
    trailer_fields: usize,
    /// Where the line being read has been examined up to.
    scan: usize,
    /// Input bytes examined so far (each once; the linear-time test).
    pub(super) work: usize,
}

impl Chunked {
    pub(super) fn new() -> Chunked {
        Chunked {
            state: State::Size { line: 0 },
            body: Zeroizing::new(Vec::new()),
            used: 0,
            chunks: 0,
            trailer_bytes: 0,
            trailer_fields: 0,
            scan: 0,
            work: 0,
        }
    }

    /// Decodes what `input` (the whole body received so far, from its
    /// start) adds: `Some(bytes used)` once the body is whole.
    pub(super) fn advance(
        &mut self,
        input: &[u8],
        max_body: usize,
        max_chunks: usize,
    ) -> Result<Option<usize>, HttpError> {
        loop {
            match self.state {
                State::Done => return Ok(Some(self.used)),
                State::Size { line } => {
                    let Some(end) =
                        self.line_end(input, line, MAX_SIZE_LINE, "chunk size line too long")?
                    else {
                        return Ok(None);
                    };
                    let size = chunk_size(&input[line..end])?;
                    self.used = end + 2;
                    if size == 0 {
                        self.state = State::Trailer { line: self.used };
                        continue;
                    }
                    self.chunks += 1;
                    if self.chunks > max_chunks {
                        return Err(HttpError::bad_request("too many chunks"));
                    }
                    if self.body.len() + size > max_body {
                        return Err(HttpError::BODY_TOO_LARGE);
                    }
                    self.reserve(size);
                    self.state = State::Data { left: size };
                }
                State::Data { left } => {
                    let n = left.min(input.len() - self.used);
                    if n == 0 {
                        return Ok(None);
                    }
                    self.work += n;
                    self.body
                        .extend_from_slice(&input[self.used..self.used + n]);
                    self.used += n;
                    self.state = match left - n {
                        0 => State::DataEnd,
                        left => State::Data { left },
                    };
                }
                State::DataEnd => {
                    if input.len() < self.used + 2 {
                        return Ok(None);
                    }
                    self.work += 2;
                    if &input[self.used..self.used + 2] != b"\r\n" {
                        return Err(HttpError::bad_request("chunk data not followed by CRLF"));
                    }
                    self.used += 2;
                    self.state = State::Size { line: self.used };
                }
                State::Trailer { line } => {
                    let room = MAX_TRAILER_BYTES.saturating_sub(self.trailer_bytes);
                    let Some(end) =
                        self.line_end(input, line, room, "trailer section too large")?
                    else {
                        return Ok(None);
                    };
                    self.used = end + 2;
                    if end == line {
                        self.state = State::Done;
                        continue;
                    }
                    self.trailer_bytes += end - line + 2;
                    self.trailer_fields += 1;
                    if self.trailer_fields > MAX_TRAILER_FIELDS {
                        return Err(HttpError::bad_request("too many trailer fields"));
                    }
                    self.state = State::Trailer { line: self.used };
                }
            }
        }
    }

    /// The end (index of its CR) of the line starting at `line`, looking
    /// only at bytes not examined before; a bare LF is an error, and so is
    /// a line longer than `max` (`too_long` says which).
    fn line_end(
        &mut self,
        input: &[u8],
        line: usize,
        max: usize,
        too_long: &'static str,
    ) -> Result<Option<usize>, HttpError> {
        for i in self.scan.max(line)..input.len() {
            self.work += 1;
            if input[i] == b'\n' {
                if i == line || input[i - 1] != b'\r' {
                    return Err(HttpError::bad_request("bare LF in chunked framing"));
                }
                self.scan = i + 1;
                return Ok(Some(i - 1));
            }
            if i - line >= max {
                return Err(HttpError::bad_request(too_long));
            }
        }
        self.scan = input.len();
        Ok(None)
    }

    /// Makes room for `more` body bytes, moving (and wiping) the old ones
    /// when the buffer must grow, so no copy of the body is left behind.
    fn reserve(&mut self, more: usize) {
        if self.body.capacity() - self.body.len() >= more {
            return;
        }
        let want = (self.body.len() + more).max(256).saturating_mul(2);
        let mut bigger = Zeroizing::new(Vec::with_capacity(want));
        bigger.extend_from_slice(&self.body);
        self.body = bigger;
    }

    /// The decoded body (once done).
    pub(super) fn take_body(&mut self) -> Zeroizing<Vec<u8>> {
        std::mem::replace(&mut self.body, Zeroizing::new(Vec::new()))
    }
}

/// The size of a chunk-size line's chunk: hex digits, then nothing or
/// extensions (`;` and visible characters).
fn chunk_size(line: &[u8]) -> Result<usize, HttpError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let bad = HttpError::bad_request("invalid chunk size");
    if digits == 0 || digits > 8 {
        return Err(bad);
    }
    let rest = &line[digits..];
    let ext_ok = rest.is_empty()
        || (rest[0] == b';'
            && rest
                .iter()
                .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)));
    if !ext_ok {
        return Err(bad);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| bad)?;
    usize::from_str_radix(text, 16).map_err(|_| bad)
}
