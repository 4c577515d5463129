//! HTTP adapters: one file per protocol maps requests to the services
//! below, and the [`Router`] dispatches by path and method.

mod agreement;
mod donau;
mod etsi004;
mod health;
mod key_material;
pub mod link;
mod metrics;
mod ncp;
pub mod push;
mod router;

pub use agreement::AgreementApi;
pub use donau::donau_route;
pub use etsi004::Etsi004;
pub use health::{HealthSources, healthz_route, metrics_route};
pub use key_material::key_material_route;
pub use metrics::{Histogram, RequestMetrics};
pub use ncp::NcpApi;
pub use router::{Handler, Router};

use crate::http::Response;

/// Parses a JSON body into `T`; the error message names the problem and
/// the field it is in (`qos.key_chunk_size: invalid type: string "x",
/// expected u32`). Never echoes values beyond what serde quotes of a
/// mistyped scalar.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.is_empty() {
        return Err("a JSON body is required".into());
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match (inner.classify(), path.as_str()) {
            (serde_json::error::Category::Data, ".") => format!("invalid request: {inner}"),
            (serde_json::error::Category::Data, _) => format!("invalid field {path}: {inner}"),
            _ => format!("body is not valid JSON: {inner}"),
        }
    })
}

/// A JSON response from a `serde_json::Value`.
pub(crate) fn json(status: u16, value: &serde_json::Value) -> Response {
    Response::json(status, value.to_string())
}
