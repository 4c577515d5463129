//! Errors of the NCP KMS service and their wire form
//! (`{"code": CODE, "msg": MESSAGE}`).
//!
//! Messages name fields, indexes, versions and limits; they never carry
//! plaintext, key material or any other request data.

use serde::Serialize;

use super::NcpReply;

/// Why an NCP KMS call failed. Each variant maps to one HTTP status and
/// one NCP error code (see [`NcpError::status`] and [`NcpError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NcpError {
    /// 400 `INVALID_REQUEST`: the body, a field, a ciphertext or a
    /// signature text is malformed, too large, or does not decrypt.
    #[error("Invalid request: {0}")]
    InvalidRequest(String),
    /// 404 `NOT_FOUND`: unknown key tag or action.
    #[error("Not found: {0}")]
    NotFound(String),
    /// 422 `INVALID_STATUS`: the key, or the key version needed, is
    /// disabled.
    #[error("Invalid status: {0}")]
    InvalidStatus(String),
    /// 422 `UNPROCESSABLE_ENTITY`: the key's type cannot do the action.
    #[error("Unprocessable entity: {0}")]
    Unprocessable(String),
    /// 500 `INTERNAL_SERVER_ERROR`: the key source failed, stored key
    /// material is unusable, or the OS random source failed. The detail is
    /// for logs only: the reply says just "Server internal error".
    #[error("Server internal error: {0}")]
    Internal(String),
    /// 503 `SERVICE_UNAVAILABLE`: the store cannot be reached now (the
    /// reply carries `Retry-After`). The detail is for logs only.
    #[error("Service unavailable: {0}")]
    Unavailable(String),
}

impl From<crate::store::StoreError> for NcpError {
    /// A store that cannot be reached now is 503; any other failure 500.
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            NcpError::Unavailable(e.to_string())
        } else {
            NcpError::Internal(e.to_string())
        }
    }
}

impl NcpError {
    /// The HTTP status of the reply.
    pub fn status(&self) -> u16 {
        match self {
            NcpError::InvalidRequest(_) => 400,
            NcpError::NotFound(_) => 404,
            NcpError::InvalidStatus(_) | NcpError::Unprocessable(_) => 422,
            NcpError::Internal(_) => 500,
            NcpError::Unavailable(_) => 503,
        }
    }

    /// The NCP error code of the reply body.
    pub fn code(&self) -> &'static str {
        match self {
            NcpError::InvalidRequest(_) => "INVALID_REQUEST",
            NcpError::NotFound(_) => "NOT_FOUND",
            NcpError::InvalidStatus(_) => "INVALID_STATUS",
            NcpError::Unprocessable(_) => "UNPROCESSABLE_ENTITY",
            NcpError::Internal(_) => "INTERNAL_SERVER_ERROR",
            NcpError::Unavailable(_) => "SERVICE_UNAVAILABLE",
        }
    }

    /// The message sent to the client: the error's text, except for
    /// [`NcpError::Internal`], whose detail is withheld.
    pub fn message(&self) -> String {
        match self {
            NcpError::Internal(_) => "Server internal error".to_owned(),
            NcpError::Unavailable(_) => "Service temporarily unavailable; retry".to_owned(),
            other => other.to_string(),
        }
    }

    /// The reply for this error: its status and
    /// `{"code": CODE, "msg": MESSAGE}`.
    pub fn to_reply(&self) -> NcpReply {
        #[derive(Serialize)]
        struct Body<'a> {
            code: &'a str,
            msg: &'a str,
        }
        let msg = self.message();
        let body = serde_json::to_string(&Body {
            code: self.code(),
            msg: &msg,
        })
        // Serializing two strings cannot fail; keep a fixed answer anyway.
        .unwrap_or_else(|_| {
            r#"{"code":"INTERNAL_SERVER_ERROR","msg":"Server internal error"}"#.to_owned()
        });
        NcpReply {
            status: self.status(),
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_codes_and_bodies() {
        let cases = [
            (NcpError::InvalidRequest("x".into()), 400, "INVALID_REQUEST"),
            (NcpError::NotFound("x".into()), 404, "NOT_FOUND"),
            (NcpError::InvalidStatus("x".into()), 422, "INVALID_STATUS"),
            (
                NcpError::Unprocessable("x".into()),
                422,
                "UNPROCESSABLE_ENTITY",
            ),
            (NcpError::Internal("x".into()), 500, "INTERNAL_SERVER_ERROR"),
            (
                NcpError::Unavailable("x".into()),
                503,
                "SERVICE_UNAVAILABLE",
            ),
        ];
        for (err, status, code) in cases {
            let reply = err.to_reply();
            assert_eq!(reply.status, status);
            let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(v["code"], code);
            assert!(v["msg"].is_string());
            assert_eq!(v.as_object().unwrap().len(), 2);
        }
    }

    #[test]
    fn internal_detail_is_not_sent() {
        let reply = NcpError::Internal("sqlite: /var/lib/db locked".into()).to_reply();
        assert!(!reply.body.contains("sqlite"));
        assert!(reply.body.contains("Server internal error"));
    }
}
