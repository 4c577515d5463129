//! Dispatch by path (exact, else the longest registered prefix), then
//! method: 404 for an unknown path, 405 with `Allow` for a known path and
//! another method; and the JSON helpers handlers share.
//!
//! HEAD is served by a GET handler. Every answer is counted by route and
//! status.

use std::sync::Arc;

use crate::http::{Method, Reply, Request, Response, Service};
use crate::metrics::RequestMetrics;

/// A request handler.
pub type Handler = Arc<dyn Fn(Request) -> Reply + Send + Sync>;

struct Route {
    path: &'static str,
    /// `path` is a prefix: it matches every path starting with it.
    prefix: bool,
    metric: usize,
    methods: Vec<(Method, Handler)>,
}

/// The route table of one listener.
pub struct Router {
    routes: Vec<Route>,
    metrics: Arc<RequestMetrics>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|r| r.path))
            .finish()
    }
}

impl Router {
    /// An empty router counting into `metrics`.
    pub fn new(metrics: Arc<RequestMetrics>) -> Self {
        Self {
            routes: Vec::new(),
            metrics,
        }
    }

    /// Serves `method path` with `handler`.
    pub fn route(&mut self, method: Method, path: &'static str, handler: Handler) -> &mut Self {
        self.add(method, path, false, handler)
    }

    /// Serves `method` on every path starting with `prefix` (after exact
    /// routes; the longest prefix wins). The handler sees the whole path.
    pub fn route_prefix(
        &mut self,
        method: Method,
        prefix: &'static str,
        handler: Handler,
    ) -> &mut Self {
        self.add(method, prefix, true, handler)
    }

    fn add(
        &mut self,
        method: Method,
        path: &'static str,
        prefix: bool,
        handler: Handler,
    ) -> &mut Self {
        let metric = self.metrics.register(path);
        match self
            .routes
            .iter_mut()
            .find(|r| r.path == path && r.prefix == prefix)
        {
            Some(r) => r.methods.push((method, handler)),
            None => self.routes.push(Route {
                path,
                prefix,
                metric,
                methods: vec![(method, handler)],
            }),
        }
        self
    }

    fn find(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| !r.prefix && r.path == path)
            .or_else(|| {
                self.routes
                    .iter()
                    .filter(|r| r.prefix && path.starts_with(r.path))
                    .max_by_key(|r| r.path.len())
            })
    }

    /// The paths served.
    pub fn paths(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.routes.iter().map(|r| r.path)
    }
}

impl Service for Router {
    fn call(&self, req: Request) -> Reply {
        let Some(route) = self.find(req.path()) else {
            self.metrics.count(None, 404);
            return Reply::Now(json(404, &serde_json::json!({ "message": "no such path" })));
        };
        let wanted = match req.method {
            Method::Head => [Method::Head, Method::Get],
            m => [m, m],
        };
        let Some((_, handler)) = wanted
            .iter()
            .find_map(|w| route.methods.iter().find(|(m, _)| m == w))
        else {
            let mut allow: Vec<&str> = route.methods.iter().map(|(m, _)| m.as_str()).collect();
            if allow.contains(&"GET") {
                allow.push("HEAD");
            }
            self.metrics.count(Some(route.metric), 405);
            return Reply::Now(
                json(405, &serde_json::json!({ "message": "method not allowed" }))
                    .header("Allow", allow.join(", ")),
            );
        };
        let metric = route.metric;
        match handler(req) {
            Reply::Now(r) => {
                self.metrics.count(Some(metric), r.status);
                Reply::Now(r)
            }
            Reply::Later(job) => {
                let metrics = Arc::clone(&self.metrics);
                Reply::Later(Box::new(move || {
                    let r: Response = job();
                    metrics.count(Some(metric), r.status);
                    r
                }))
            }
        }
    }
}

/// Parses a JSON body into `T`; the error message names the problem and
/// the field it is in (`qos.key_chunk_size: invalid type: string "x",
/// expected u32`). Never echoes values beyond what serde quotes of a
/// mistyped scalar.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.is_empty() {
        return Err("a JSON body is required".into());
    }
    // JSON is UTF-8 (RFC 8259); serde would skip an ignored field's
    // string without checking it.
    let body = std::str::from_utf8(body).map_err(|_| "body is not UTF-8 JSON".to_owned())?;
    let de = &mut serde_json::Deserializer::from_str(body);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match (inner.classify(), path.as_str()) {
            (serde_json::error::Category::Data, ".") => format!("invalid request: {inner}"),
            (serde_json::error::Category::Data, _) => format!("invalid field {path}: {inner}"),
            _ => format!("body is not valid JSON: {inner}"),
        }
    })?;
    // Bytes after the JSON value (but white space) make the body invalid.
    de.end()
        .map_err(|e| format!("body is not valid JSON: {e}"))?;
    Ok(value)
}

/// A JSON response from a `serde_json::Value`.
pub fn json(status: u16, value: &serde_json::Value) -> Response {
    Response::json(status, value.to_string())
}
