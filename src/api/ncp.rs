//! NCP-KMS-compatible encryption API: `POST /keys/v1/{keyTag}/{action}` and
//! `POST /keys/v2/{keyTag}/{action}`, authenticated by the API Gateway HMAC
//! signature (`kms::gateway`), served by the sans-IO `kms::ncp` service.
//!
//! Authentication failures answer in the gateway's form: 401
//! `{"error":{"errorCode":"200","message":"Authentication Failed","details":"…"}}`,
//! a replayed signature included (each signed request is accepted once:
//! `kms::replay`). An authenticated access key without a grant for the
//! keyTag and action gets 403 `{"code":"FORBIDDEN","msg":"…"}`.
//! Every call on an RSA2048 key (private-key operations take about a
//! millisecond, and an array may hold many items) runs on the pool so it
//! never stalls the event loop.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::{Handler, Router};
use crate::http::{Method, Reply, Request, Response};
use crate::kms::gateway::{AuthError, Credentials, KeyInfo, Scheme, verify};
use crate::kms::keys::StoreKeys;
use crate::kms::ncp::{Action, KeySource, NcpService};
use crate::kms::replay::{ReplayCache, ReplayError};
use crate::store::{AccessKey, KeyType};

/// The NCP routes of one listener.
#[derive(Debug, Clone)]
pub struct NcpApi {
    keys: Arc<StoreKeys>,
    service: Arc<NcpService>,
    replay: Arc<ReplayCache>,
}

fn unauthorized(details: &str) -> Response {
    super::json(
        401,
        &json!({"error": {"errorCode": "200", "message": "Authentication Failed", "details": details}}),
    )
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.header(name).and_then(|v| std::str::from_utf8(v).ok())
}

impl NcpApi {
    /// Routes over `service`, authenticating against `keys`, each signed
    /// request once (`replay`, shared by the process's listeners).
    pub fn new(keys: Arc<StoreKeys>, service: Arc<NcpService>, replay: Arc<ReplayCache>) -> Self {
        Self {
            keys,
            service,
            replay,
        }
    }

    /// Adds `POST /keys/v1/…` and `POST /keys/v2/…`.
    pub fn mount(&self, router: &mut Router) {
        for (prefix, scheme) in [("/keys/v1/", Scheme::V1), ("/keys/v2/", Scheme::V2)] {
            let me = self.clone();
            let handler: Handler = Arc::new(move |req| me.call(scheme, prefix, req));
            router.route_prefix(Method::Post, prefix, handler);
        }
    }

    /// The request's access key once its signature checked out and was
    /// not seen before; else the answer.
    fn authenticate(&self, scheme: Scheme, req: &Request) -> Result<Arc<AccessKey>, Response> {
        let creds = Credentials {
            timestamp: header(req, "x-ncp-apigw-timestamp"),
            access_key: header(req, "x-ncp-iam-access-key"),
            signature: header(req, "x-ncp-apigw-signature-v2")
                .or_else(|| header(req, "x-ncp-apigw-signature-v1")),
            api_key: header(req, "x-ncp-apigw-api-key"),
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut store_failed = false;
        let mut found = None;
        let result = verify(
            scheme,
            "POST",
            req.target(),
            &creds,
            now_ms,
            |name, check| match self.keys.access_key(name) {
                Ok(Some(key)) if key.enabled => {
                    let checked = check(KeyInfo {
                        secret_key: key.secret_key.as_bytes(),
                        api_key: &key.api_key,
                    });
                    found = Some(key);
                    checked
                }
                Ok(_) => Err(AuthError::UnknownAccessKey),
                Err(e) => {
                    tracing::error!("access key lookup failed: {e}");
                    store_failed = true;
                    Err(AuthError::UnknownAccessKey)
                }
            },
        );
        match (result, found) {
            (Ok(()), Some(key)) => {
                let ts = creds.timestamp.and_then(|t| t.parse().ok()).unwrap_or(0);
                let signature = creds.signature.unwrap_or("");
                match self.replay.admit(&key.access_key, ts, signature, now_ms) {
                    Ok(()) => Ok(key),
                    Err(e @ ReplayError::Replayed) => Err(unauthorized(&e.to_string())),
                    Err(e @ ReplayError::Full) => Err(super::json(
                        503,
                        &json!({"code": "SERVICE_UNAVAILABLE", "msg": e.to_string()}),
                    )
                    .header("Retry-After", "1")),
                }
            }
            (Ok(()), None) => Err(unauthorized("invalid signature or credentials")),
            (Err(_), _) if store_failed => Err(super::json(
                500,
                &json!({"code": "INTERNAL_SERVER_ERROR", "msg": "Server internal error"}),
            )),
            (Err(e), _) => Err(unauthorized(&e.to_string())),
        }
    }

    fn call(&self, scheme: Scheme, prefix: &str, req: Request) -> Reply {
        let access = match self.authenticate(scheme, &req) {
            Ok(key) => key,
            Err(r) => return Reply::Now(r),
        };
        let rest = &req.path()[prefix.len()..];
        let Some((tag, action)) = rest
            .split_once('/')
            .filter(|(t, a)| !t.is_empty() && !a.is_empty() && !a.contains('/'))
        else {
            return Reply::Now(super::json(
                404,
                &json!({"code": "NOT_FOUND", "msg": "Not found: path must be /keys/{v1|v2}/{keyTag}/{action}"}),
            ));
        };
        // Unknown actions fall through to the service's own 404.
        if let Some(known) = Action::parse(action)
            && !access.allows(tag, known.as_str())
        {
            return Reply::Now(super::json(
                403,
                &json!({"code": "FORBIDDEN",
                        "msg": format!("access key {} has no grant to {} with key {tag}",
                                       access.access_key, known.as_str())}),
            ));
        }
        let (tag, action) = (tag.to_owned(), action.to_owned());
        let slow = matches!(
            self.keys.key(&tag),
            Ok(Some(ref k)) if k.key_type == KeyType::Rsa2048
        );
        let service = Arc::clone(&self.service);
        let run = move || {
            let reply = service.handle(&tag, &action, &req.body);
            Response::json(reply.status, reply.body)
        };
        if slow {
            Reply::Later(Box::new(run))
        } else {
            Reply::Now(run())
        }
    }
}
