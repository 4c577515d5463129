//! What the service answers: [`NcpReply`] (HTTP status and JSON body),
//! whose `Debug` hides success bodies, and the success body, written into
//! a buffer sized in advance so no partial copy of a secret is left behind.

use std::fmt;

use serde::Serialize;

use super::NcpError;
use super::request;

/// What to answer: HTTP status and JSON body.
///
/// `Debug` shows the body of errors but only the length of success bodies
/// (a `decrypt` answer carries plaintext).
#[derive(Clone, PartialEq, Eq)]
pub struct NcpReply {
    /// HTTP status.
    pub status: u16,
    /// The JSON body to send (`application/json`).
    pub body: String,
}

impl fmt::Debug for NcpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("NcpReply");
        d.field("status", &self.status);
        if self.status == 200 {
            d.field("body_len", &self.body.len());
        } else {
            d.field("body", &self.body);
        }
        d.finish()
    }
}

/// The success reply for `data`; `strings_len` bounds the length of the
/// strings in `data`, so that the body buffer never reallocates.
pub(super) fn success<D: Serialize>(data: D, strings_len: usize) -> Result<NcpReply, NcpError> {
    let mut buf = Vec::with_capacity(strings_len.saturating_add(128));
    serde_json::to_writer(
        &mut buf,
        &request::Success {
            code: "SUCCESS",
            msg: "",
            data,
        },
    )
    .map_err(|_| NcpError::Internal("cannot serialize the answer".into()))?;
    let body =
        String::from_utf8(buf).map_err(|_| NcpError::Internal("answer is not UTF-8".into()))?;
    Ok(NcpReply { status: 200, body })
}
