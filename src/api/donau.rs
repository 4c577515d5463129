//! GNU Taler Donau `GET {base_path}keys` (and `HEAD`): the answer the
//! `kms::donau` service built, served from memory on the event loop, with
//! `ETag`, `Cache-Control`, and 304 for a matching `If-None-Match`.

use std::sync::Arc;

use super::{Handler, Router};
use crate::http::{Method, Reply, Request, Response};
use crate::kms::donau::{Donau, none_match};

/// How long clients may cache the key list.
const CACHE_CONTROL: &str = "public, max-age=60";

/// Mounts `GET {base_path}keys` over `donau`.
pub fn donau_route(router: &mut Router, base_path: &str, donau: Arc<Donau>) {
    // Once per listener at start-up: the router keeps static paths.
    let path: &'static str = format!("{base_path}keys").leak();
    let handler: Handler = Arc::new(move |req: Request| Reply::Now(keys(&donau, &req)));
    router.route(Method::Get, path, handler);
}

fn keys(donau: &Donau, req: &Request) -> Response {
    let published = donau.published();
    let fresh = req
        .header("if-none-match")
        .and_then(|v| std::str::from_utf8(v).ok())
        .is_some_and(|v| none_match(v, &published.etag));
    let response = if fresh {
        Response::empty(304)
    } else {
        Response::json(200, published.body.clone())
    };
    response
        .header("ETag", published.etag.clone())
        .header("Cache-Control", CACHE_CONTROL)
}
