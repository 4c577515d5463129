//! API Gateway HMAC authentication of the NCP-KMS-compatible API (sans-IO).
//!
//! ```text
//! signature = Base64(HMAC-SHA256(secret_key,
//!     METHOD + " " + request_target + "\n" + timestamp + "\n" + access_key))
//! ```
//!
//! for v2; v1 inserts
//! `api_key + "\n"` before the access key and requires the
//! `x-ncp-apigw-api-key` header. Headers: `x-ncp-apigw-timestamp` (ms since
//! the epoch), `x-ncp-iam-access-key`, and the signature in
//! `x-ncp-apigw-signature-v2` or `x-ncp-apigw-signature-v1` (NCP's own tools
//! send the v2 string under the v1 name: both names are accepted for both
//! strings). The request target is signed exactly as received; the body is
//! not signed. A timestamp more than 5 minutes from the server clock is
//! refused. Signatures are compared in constant time.
//!
//! Which string is expected follows the path: `/keys/v1/…` requests use the
//! v1 string (and need the API key, which must be the access key's own),
//! `/keys/v2/…` the v2 string.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Largest accepted distance between the request's timestamp and ours.
pub(crate) const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// The signing scheme, chosen by the API path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `/keys/v1/…`: the string includes the API key.
    V1,
    /// `/keys/v2/…`.
    V2,
}

/// The authentication headers of a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// `x-ncp-apigw-timestamp`.
    pub timestamp: Option<&'a str>,
    /// `x-ncp-iam-access-key`.
    pub access_key: Option<&'a str>,
    /// `x-ncp-apigw-signature-v2` or `-v1`.
    pub signature: Option<&'a str>,
    /// `x-ncp-apigw-api-key` (v1).
    pub api_key: Option<&'a str>,
}

/// Why a request is not authenticated (the `details` of the 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A required header is absent.
    #[error("missing header {0}")]
    Missing(&'static str),
    /// The timestamp is not a number or too far from the server clock.
    #[error("timestamp missing, malformed or more than 5 minutes from the server clock")]
    Stale,
    /// No enabled access key of that name. (The three credential failures
    /// share one message, so access-key names cannot be probed.)
    #[error("invalid signature or credentials")]
    UnknownAccessKey,
    /// The API key is not the access key's own (v1).
    #[error("invalid signature or credentials")]
    WrongApiKey,
    /// The signature does not match.
    #[error("invalid signature or credentials")]
    BadSignature,
}

/// The signature string of a request.
pub fn signature(
    scheme: Scheme,
    secret_key: &[u8],
    method: &str,
    target: &str,
    timestamp: &str,
    access_key: &str,
    api_key: &str,
) -> String {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(secret_key).expect("HMAC takes any key length");
    mac.update(method.as_bytes());
    mac.update(b" ");
    mac.update(target.as_bytes());
    mac.update(b"\n");
    mac.update(timestamp.as_bytes());
    mac.update(b"\n");
    if scheme == Scheme::V1 {
        mac.update(api_key.as_bytes());
        mac.update(b"\n");
    }
    mac.update(access_key.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// What the verifier needs to know about the access key named in a request.
#[derive(Debug, Clone, Copy)]
pub struct KeyInfo<'a> {
    /// Its secret.
    pub secret_key: &'a [u8],
    /// Its API key.
    pub api_key: &'a str,
}

/// Checks `creds` for `method target` at `now_ms`; `lookup` finds the
/// access key (enabled ones only) and hands its secret to `check`.
pub fn verify(
    scheme: Scheme,
    method: &str,
    target: &str,
    creds: &Credentials<'_>,
    now_ms: u64,
    lookup: impl FnOnce(
        &str,
        &mut dyn FnMut(KeyInfo<'_>) -> Result<(), AuthError>,
    ) -> Result<(), AuthError>,
) -> Result<(), AuthError> {
    let timestamp = creds
        .timestamp
        .ok_or(AuthError::Missing("x-ncp-apigw-timestamp"))?;
    let access_key = creds
        .access_key
        .ok_or(AuthError::Missing("x-ncp-iam-access-key"))?;
    let given = creds
        .signature
        .ok_or(AuthError::Missing("x-ncp-apigw-signature-v2"))?;
    let api_key = match scheme {
        Scheme::V1 => creds
            .api_key
            .ok_or(AuthError::Missing("x-ncp-apigw-api-key"))?,
        Scheme::V2 => "",
    };
    let ts: u64 = timestamp.parse().map_err(|_| AuthError::Stale)?;
    if ts.abs_diff(now_ms) > MAX_SKEW_MS {
        return Err(AuthError::Stale);
    }
    lookup(access_key, &mut |key: KeyInfo<'_>| {
        if scheme == Scheme::V1 && !bool::from(key.api_key.as_bytes().ct_eq(api_key.as_bytes())) {
            return Err(AuthError::WrongApiKey);
        }
        let expected = signature(
            scheme,
            key.secret_key,
            method,
            target,
            timestamp,
            access_key,
            api_key,
        );
        if bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_page_vectors() {
        let v2 = signature(
            Scheme::V2,
            b"SKEXAMPLE",
            "POST",
            "/keys/v2/a1b2c3/encrypt",
            "1700000000000",
            "AKEXAMPLE",
            "",
        );
        assert_eq!(v2, "pCOR2nRPVAqHYjaINdvENtISrL6J/4lA4XzIXrB67/w=");
        let v1 = signature(
            Scheme::V1,
            b"SKEXAMPLE",
            "POST",
            "/keys/v1/a1b2c3/encrypt",
            "1700000000000",
            "AKEXAMPLE",
            "APIKEYEXAMPLE",
        );
        assert_eq!(v1, "omxMaP5AEpw4Pe8mGX8YkfxJikBZgP3PiPXqL5wCQSM=");
    }

    fn check(scheme: Scheme, creds: Credentials<'_>, now: u64) -> Result<(), AuthError> {
        verify(
            scheme,
            "POST",
            "/keys/v1/a1b2c3/encrypt",
            &creds,
            now,
            |ak, check| {
                if ak != "AKEXAMPLE" {
                    return Err(AuthError::UnknownAccessKey);
                }
                check(KeyInfo {
                    secret_key: b"SKEXAMPLE",
                    api_key: "APIKEYEXAMPLE",
                })
            },
        )
    }

    #[test]
    fn verify_accepts_and_refuses() {
        let good = Credentials {
            timestamp: Some("1700000000000"),
            access_key: Some("AKEXAMPLE"),
            signature: Some("omxMaP5AEpw4Pe8mGX8YkfxJikBZgP3PiPXqL5wCQSM="),
            api_key: Some("APIKEYEXAMPLE"),
        };
        let now = 1_700_000_000_000;
        assert_eq!(check(Scheme::V1, good, now + 60_000), Ok(()));
        assert_eq!(
            check(Scheme::V1, good, now + MAX_SKEW_MS + 1),
            Err(AuthError::Stale)
        );
        let bad_sig = Credentials {
            signature: Some("pCOR2nRPVAqHYjaINdvENtISrL6J/4lA4XzIXrB67/w="),
            ..good
        };
        assert_eq!(
            check(Scheme::V1, bad_sig, now),
            Err(AuthError::BadSignature)
        );
        let other_api = Credentials {
            api_key: Some("OTHER"),
            ..good
        };
        assert_eq!(
            check(Scheme::V1, other_api, now),
            Err(AuthError::WrongApiKey)
        );
        let unknown = Credentials {
            access_key: Some("AKOTHER"),
            ..good
        };
        assert_eq!(
            check(Scheme::V1, unknown, now),
            Err(AuthError::UnknownAccessKey)
        );
        let no_api = Credentials {
            api_key: None,
            ..good
        };
        assert_eq!(
            check(Scheme::V1, no_api, now),
            Err(AuthError::Missing("x-ncp-apigw-api-key"))
        );
        let no_ts = Credentials {
            timestamp: None,
            ..good
        };
        assert!(matches!(
            check(Scheme::V1, no_ts, now),
            Err(AuthError::Missing(_))
        ));
    }
}
