//! HTTP adapters: one file per protocol maps requests to the services
//! below, and the [`Router`] dispatches by path and method.

mod etsi004;
mod health;
mod key_material;
pub mod link;
mod metrics;
pub mod push;
mod router;

pub use etsi004::Etsi004;
pub use health::{HealthSources, healthz_route, metrics_route};
pub use key_material::key_material_route;
pub use metrics::{Histogram, RequestMetrics};
pub use router::{Handler, Router};

use crate::http::Response;

/// Parses a JSON body into `T`; the error message names the problem
/// (serde's text: field, expected type, position).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.is_empty() {
        return Err("a JSON body is required".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// A JSON response from a `serde_json::Value`.
pub(crate) fn json(status: u16, value: &serde_json::Value) -> Response {
    Response::json(status, value.to_string())
}
