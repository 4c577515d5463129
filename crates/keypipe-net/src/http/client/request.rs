//! Request encoding for the client: one HTTP/1.1 request to an [`Origin`],
//! head and body in a single zeroizing buffer (`Content-Length` framing,
//! keep-alive), ready to queue as it is.

use zeroize::Zeroizing;

use super::Origin;

/// Builds a request with a body of `content_type` (`Content-Length`
/// framing, keep-alive).
pub fn request_bytes(
    method: &str,
    origin: &Origin,
    path: &str,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(160 + body.len()));
    let head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        origin.base_path,
        origin.authority(),
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    for (name, value) in extra_headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}
