//! NCP-KMS-compatible encryption API: `POST /keys/v1/{keyTag}/{action}` and
//! `POST /keys/v2/{keyTag}/{action}`, authenticated by the API Gateway HMAC
//! signature (`kms::gateway`), served by the sans-IO `kms::ncp` service.
//!
//! Authentication failures answer in the gateway's form: 401
//! `{"error":{"errorCode":"200","message":"Authentication Failed","details":"…"}}`,
//! a replayed signature included (each signed request is accepted once:
//! `kms::replay`). An authenticated access key without a grant for the
//! keyTag and action gets 403 `{"code":"FORBIDDEN","msg":"…"}`.
//!
//! The event loop never reads the store (security review F19): a request
//! is answered there only when the access key and the master key are in
//! the cache, checked against the store's write counter within
//! `kms::keys::RECHECK` (an unknown access key counts: unknown names are
//! cached too, boundedly). Otherwise it goes to the pool, which reads the
//! store and fills the cache. Every call on an RSA2048 key (private-key
//! operations take about a millisecond, and an array may hold many items)
//! runs on the pool too.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::{Handler, Router};
use crate::http::{Method, Reply, Request, Response};
use crate::kms::gateway::{AuthError, Credentials, KeyInfo, Scheme, verify};
use crate::kms::keys::StoreKeys;
use crate::kms::ncp::{Action, NcpService};
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
    /// not seen before; else the answer. On the loop, the access key comes
    /// from the cache alone: `Err(None)` when the store must be asked
    /// (nothing was admitted yet: the pool authenticates from scratch).
    fn authenticate(
        &self,
        scheme: Scheme,
        req: &Request,
        place: Place,
    ) -> Result<Arc<AccessKey>, Option<Response>> {
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
        // Some(true): the store could not be reached now (503); Some(false): it failed (500).
        let mut store_failed: Option<bool> = None;
        let mut needs_store = false;
        let mut found = None;
        let result = verify(
            scheme,
            "POST",
            req.target(),
            &creds,
            now_ms,
            |name, check| {
                let looked_up = match place {
                    Place::Loop => match self.keys.peek_access_key(name) {
                        Some(known) => Ok(known),
                        None => {
                            needs_store = true;
                            return Err(AuthError::UnknownAccessKey);
                        }
                    },
                    Place::Pool => self.keys.access_key(name),
                };
                match looked_up {
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
                        store_failed = Some(e.is_unavailable());
                        Err(AuthError::UnknownAccessKey)
                    }
                }
            },
        );
        if needs_store {
            return Err(None);
        }
        match (result, found) {
            (Ok(()), Some(key)) => {
                let ts = creds.timestamp.and_then(|t| t.parse().ok()).unwrap_or(0);
                let signature = creds.signature.unwrap_or("");
                match self.replay.admit(&key.access_key, ts, signature, now_ms) {
                    Ok(()) => Ok(key),
                    Err(e @ ReplayError::Replayed) => Err(Some(unauthorized(&e.to_string()))),
                    // 503s carry `Retry-After` (the response writer adds it).
                    Err(e @ ReplayError::Full) => Err(Some(super::json(
                        503,
                        &json!({"code": "SERVICE_UNAVAILABLE", "msg": e.to_string()}),
                    ))),
                }
            }
            (Ok(()), None) => Err(Some(unauthorized("invalid signature or credentials"))),
            (Err(_), _) if store_failed == Some(true) => Err(Some(unavailable())),
            (Err(_), _) if store_failed.is_some() => Err(Some(internal_error())),
            (Err(e), _) => Err(Some(unauthorized(&e.to_string()))),
        }
    }

    /// Serves a request on the event loop when the caches can answer it
    /// and its work is fast; else on the pool.
    fn call(&self, scheme: Scheme, prefix: &'static str, req: Request) -> Reply {
        let access = match self.authenticate(scheme, &req, Place::Loop) {
            Ok(key) => key,
            Err(Some(r)) => return Reply::Now(r),
            Err(None) => {
                let me = self.clone();
                return Reply::Later(Box::new(move || {
                    match me.authenticate(scheme, &req, Place::Pool) {
                        Ok(access) => me.dispatch(prefix, &req, &access, Place::Pool),
                        Err(r) => r,
                    }
                    .unwrap_or_else(internal_error)
                }));
            }
        };
        match self.dispatch(prefix, &req, &access, Place::Loop) {
            Some(r) => Reply::Now(r),
            None => {
                let me = self.clone();
                Reply::Later(Box::new(move || {
                    me.dispatch(prefix, &req, &access, Place::Pool)
                        .unwrap_or_else(internal_error)
                }))
            }
        }
    }

    /// The answer to an authenticated request; on the loop, `None` when
    /// the master key is not in the (fresh) cache or is an RSA key (its
    /// private-key operations take about a millisecond each): serve it on
    /// the pool. On the pool, always an answer.
    fn dispatch(
        &self,
        prefix: &str,
        req: &Request,
        access: &AccessKey,
        place: Place,
    ) -> Option<Response> {
        let rest = &req.path()[prefix.len()..];
        let Some((tag, action)) = rest
            .split_once('/')
            .filter(|(t, a)| !t.is_empty() && !a.is_empty() && !a.contains('/'))
        else {
            return Some(super::json(
                404,
                &json!({"code": "NOT_FOUND", "msg": "Not found: path must be /keys/{v1|v2}/{keyTag}/{action}"}),
            ));
        };
        // Unknown actions fall through to the service's own 404.
        if let Some(known) = Action::parse(action)
            && !access.allows(tag, known.as_str())
        {
            return Some(super::json(
                403,
                &json!({"code": "FORBIDDEN",
                        "msg": format!("access key {} has no grant to {} with key {tag}",
                                       access.access_key, known.as_str())}),
            ));
        }
        let run = || {
            let reply = self.service.handle(tag, action, &req.body);
            Response::json(reply.status, reply.body)
        };
        match place {
            Place::Pool => Some(run()),
            Place::Loop => match self.keys.peek_key(tag) {
                // Not cached, or the cache must be checked first.
                None => None,
                Some(Some(key)) if key.key_type == KeyType::Rsa2048 => None,
                // Encryptions to reserve first: a store write.
                Some(Some(key)) if !self.service.serves_from_memory(&key, action) => None,
                // The service finds exactly what was peeked, reading nothing.
                Some(peeked) => Some(self.keys.pinned(tag, peeked, run)),
            },
        }
    }
}

/// Where a request is being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// An event loop: answers only from the caches, never the store.
    Loop,
    /// The pool: the store may be read.
    Pool,
}

/// 503: the store cannot be reached now (the reply gets `Retry-After`).
fn unavailable() -> Response {
    super::json(
        503,
        &json!({"code": "SERVICE_UNAVAILABLE", "msg": "Service temporarily unavailable; retry"}),
    )
}

fn internal_error() -> Response {
    super::json(
        500,
        &json!({"code": "INTERNAL_SERVER_ERROR", "msg": "Server internal error"}),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::http::{Limits, Parsed, parse};
    use crate::kms::gateway::signature;
    use crate::kms::keys::RECHECK;
    use crate::store::{Grant, KeyStore, Store, StoreOptions};

    struct Fixture {
        _dir: tempfile::TempDir,
        api: NcpApi,
        access: AccessKey,
        tag: String,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&StoreOptions::new(dir.path())).unwrap());
        let access = store.create_access_key().unwrap();
        let all = Grant {
            key_tag: "*".into(),
            actions: vec!["*".into()],
        };
        store.set_grant(&access.access_key, &all).unwrap();
        let tag = store
            .create_key("k", KeyType::Aes256, false, &[7u8; 32])
            .unwrap();
        let keys = Arc::new(StoreKeys::new(Arc::clone(&store) as _).unwrap());
        let service = Arc::new(NcpService::new(Arc::clone(&keys) as _));
        let api = NcpApi::new(keys, service, Arc::new(ReplayCache::new(1000)));
        Fixture {
            _dir: dir,
            api,
            access,
            tag,
        }
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    /// A v2-signed encrypt of `tag` by `access` (with `secret`), signed at
    /// `ts` (a new `ts`, a new signature: not a replay).
    fn encrypt(access: &str, secret: &str, tag: &str, ts: u64) -> Request {
        let target = format!("/keys/v2/{tag}/encrypt");
        let ts = ts.to_string();
        let sig = signature(
            Scheme::V2,
            secret.as_bytes(),
            "POST",
            &target,
            &ts,
            access,
            "",
        );
        let body = r#"{"plaintext":"aGVsbG8="}"#;
        let raw = format!(
            "POST {target} HTTP/1.1\r\nHost: t\r\nx-ncp-apigw-timestamp: {ts}\r\n\
             x-ncp-iam-access-key: {access}\r\nx-ncp-apigw-signature-v2: {sig}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        match parse(raw.as_bytes(), &Limits::default()) {
            Ok(Parsed::Complete(req, _)) => req,
            _ => panic!("the test request parses"),
        }
    }

    /// Where the reply was made (true: on the loop) and its status.
    fn served(api: &NcpApi, req: Request) -> (bool, u16) {
        match api.call(Scheme::V2, "/keys/v2/", req) {
            Reply::Now(r) => (true, r.status),
            Reply::Later(job) => (false, job().status),
        }
    }

    /// Security review F19: a cache miss (an unknown access key included)
    /// reads the store on the pool, never on the event loop; what the
    /// cache knows, unknown names included, is answered on the loop.
    #[test]
    fn cache_misses_are_served_on_the_pool_and_hits_on_the_loop() {
        let f = fixture();
        let (ak, secret) = (&f.access.access_key, f.access.secret_key.as_str());
        let mut ts = now_ms();
        let mut next = || {
            ts += 1;
            ts
        };
        // Each step starts on a stale cache, so the pool's read also
        // checks the write counter and the loop steps after it find the
        // cache fresh.
        let stale = || std::thread::sleep(RECHECK + Duration::from_millis(5));

        stale();
        let unknown = "NOSUCHACCESSKEY00000";
        let (loop_, status) = served(&f.api, encrypt(unknown, "x", &f.tag, next()));
        assert_eq!((loop_, status), (false, 401), "an unknown name: the pool");
        let (loop_, status) = served(&f.api, encrypt(unknown, "x", &f.tag, next()));
        assert_eq!(
            (loop_, status),
            (true, 401),
            "known to be unknown: the loop"
        );

        stale();
        let (loop_, status) = served(&f.api, encrypt(ak, secret, &f.tag, next()));
        assert_eq!((loop_, status), (false, 200), "a cold access key: the pool");
        let (loop_, status) = served(&f.api, encrypt(ak, secret, &f.tag, next()));
        assert_eq!((loop_, status), (true, 200), "both keys cached: the loop");

        // An unknown master key: the pool once, then the loop.
        stale();
        let (loop_, status) = served(&f.api, encrypt(ak, secret, "nosuchtag", next()));
        assert_eq!((loop_, status), (false, 404));
        let (loop_, status) = served(&f.api, encrypt(ak, secret, "nosuchtag", next()));
        assert_eq!((loop_, status), (true, 404));

        // A stale cache is checked against the store on the pool, even for
        // a cached key; a replayed request is refused wherever it lands.
        stale();
        let replayed = next();
        let (loop_, status) = served(&f.api, encrypt(ak, secret, &f.tag, replayed));
        assert_eq!((loop_, status), (false, 200));
        let (loop_, status) = served(&f.api, encrypt(ak, secret, &f.tag, replayed));
        assert_eq!((loop_, status), (true, 401));
    }
}
