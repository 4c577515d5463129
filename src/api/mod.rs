//! HTTP adapters: one file per protocol maps its routes to the services
//! below, plus `/healthz` and `/metrics`, who may use the ETSI 004 QKD side
//! (`kms_access`) and the bound on pool work (`pool_gate`). The router,
//! the link-sync routes, the pushes and the KMS-side route live in
//! `keypipe-net` (the C library serves them too).

mod agreement;
mod donau;
mod etsi004;
mod etsi014;
mod health;
mod keytalk;
mod kms_access;
mod ncp;
mod pool_gate;

pub use agreement::AgreementApi;
pub use donau::donau_route;
pub use etsi004::Etsi004;
/// Fuzz entry: the ETSI 004 QKD side's request bodies (`fuzz/`).
#[doc(hidden)]
pub use etsi004::fuzz_request_body as fuzz_etsi004_request;
pub use etsi014::Etsi014Api;
pub use health::{HealthSources, healthz_route, metrics_route};
pub use keypipe_net::kms_side::key_material_route;
pub use keypipe_net::metrics::{Histogram, RequestMetrics};
pub use keypipe_net::router::{Handler, Router};
pub use keytalk::KeyTalkApi;
pub use kms_access::{Caller, KmsAccess};
pub use ncp::NcpApi;

pub(crate) use keypipe_net::router::{json, parse_json};
