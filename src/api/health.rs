//! `GET /healthz` (200 when the device, the ledger and the peer link are
//! up and pairing is not refused, 503 otherwise, JSON detail) and
//! `GET /metrics` (Prometheus text format).
//!
//! The detail and the metrics tell when key flows and how much (traffic
//! analysis, security review F20): they go only to callers on loopback
//! or with a verified client certificate of a QKD node or a KMS. Anyone else gets the bare
//! liveness answer of `/healthz` (`{"status":"ok"}` or `"degraded"`, same
//! HTTP code) and 403 from `/metrics`.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Handler, Router};
use crate::http::{Method, Reply, Request, Response, ServerStats};
use crate::kms_side::ReceivedKeys;
use crate::link::NetLink;
use crate::push::Pushes;
use crate::qkd::Engine;
use keypipe_net::metrics::RequestMetrics;

/// What health and metrics report on.
#[derive(Debug, Clone)]
pub struct HealthSources {
    /// The node's name (a label on every metric).
    pub node: String,
    /// The node's name as a JSON string.
    pub node_json: String,
    /// The engine, when this listener fronts a node.
    pub engine: Option<Arc<Engine>>,
    /// The network link to the peer node.
    pub link: Option<Arc<NetLink>>,
    /// Push counters.
    pub push: Option<Arc<Pushes>>,
    /// The KMS-side store.
    pub received: Option<Arc<ReceivedKeys>>,
    /// The key-agreement service, when this listener serves it.
    pub agreement: Option<Arc<crate::kms::agreement::AgreementService>>,
    /// KeyTalk enrolment, when this node serves it.
    pub keytalk: Option<Arc<crate::kms::keytalk::KeyTalk>>,
    /// Requests by route and status.
    pub requests: Arc<RequestMetrics>,
    /// The listener's connection counters (set once it started).
    pub server: Arc<std::sync::OnceLock<Arc<ServerStats>>>,
}

/// True when `req`'s caller may see the detail: on loopback, or with a
/// verified client certificate of a QKD node or a KMS (or in-process).
fn may_see_detail(req: &Request) -> bool {
    req.peer.as_deref().is_none_or(|p| {
        p.addr.ip().is_loopback()
            || p.identity
                .as_ref()
                .is_some_and(|id| id.role == "node" || id.role == "kms")
    })
}

fn healthz(src: &HealthSources, req: &Request) -> Response {
    if !may_see_detail(req) {
        let ok = src.engine.as_ref().is_none_or(|e| {
            let s = e.stats();
            s.device_up && s.link_up && src.link.as_ref().is_none_or(|l| l.refusal().is_none())
        });
        return Response::json(
            if ok { 200 } else { 503 },
            if ok {
                r#"{"status":"ok"}"#
            } else {
                r#"{"status":"degraded"}"#
            },
        );
    }
    // Hand-formatted: this is the cheapest endpoint and load balancers
    // poll it. The node name comes from the configuration (JSON-escaped once).
    let Some(engine) = &src.engine else {
        return Response::json(
            200,
            format!("{{\"node\":{},\"status\":\"ok\"}}", src.node_json),
        );
    };
    let s = engine.stats();
    let refusal = src.link.as_ref().and_then(|l| l.refusal());
    let ok = s.device_up && s.link_up && refusal.is_none();
    let pairing = match &refusal {
        Some(why) => serde_json::Value::from(format!("refused: {why}")).to_string(),
        None => "\"ok\"".into(),
    };
    Response::json(
        if ok { 200 } else { 503 },
        format!(
            "{{\"device_up\":{},\"ledger_ok\":{},\"link_up\":{},\"node\":{},\"pairing\":{pairing},\"ring_capacity\":{},\"ring_fill\":{},\"status\":\"{}\",\"streams\":{}}}",
            s.device_up,
            !s.ledger_failed,
            s.link_up,
            src.node_json,
            s.ring_capacity,
            s.ring_len,
            if ok { "ok" } else { "degraded" },
            s.streams
        ),
    )
}

fn metrics(src: &HealthSources, req: &Request) -> Response {
    if !may_see_detail(req) {
        return Response::json(
            403,
            r#"{"message":"metrics are served to callers on loopback or with a node's or a KMS's client certificate"}"#,
        );
    }
    let mut out = String::with_capacity(4096);
    let node = &src.node;
    let gauge = |out: &mut String, name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {v}"
        );
    };
    if let Some(engine) = &src.engine {
        let s = engine.stats();
        let c = s.counters;
        gauge(
            &mut out,
            "keypipe_key_blocks_produced_total",
            "counter",
            "Key blocks the device produced.",
            c.produced as f64,
        );
        gauge(
            &mut out,
            "keypipe_key_blocks_delivered_total",
            "counter",
            "Key blocks handed to streams.",
            c.consumed as f64,
        );
        gauge(
            &mut out,
            "keypipe_key_blocks_expired_total",
            "counter",
            "Key blocks zeroized unused (TTL, close).",
            c.expired as f64,
        );
        gauge(
            &mut out,
            "keypipe_ring_fill_blocks",
            "gauge",
            "Key blocks waiting in the ring.",
            s.ring_len as f64,
        );
        gauge(
            &mut out,
            "keypipe_ring_capacity_blocks",
            "gauge",
            "Ring capacity.",
            s.ring_capacity as f64,
        );
        gauge(
            &mut out,
            "keypipe_streams",
            "gauge",
            "Key streams known to the node.",
            s.streams as f64,
        );
        gauge(
            &mut out,
            "keypipe_device_up",
            "gauge",
            "1 when the QKD device produces key.",
            f64::from(u8::from(s.device_up)),
        );
        gauge(
            &mut out,
            "keypipe_link_up",
            "gauge",
            "1 when the peer node answers.",
            f64::from(u8::from(s.link_up)),
        );
        let refused = src.link.as_ref().is_some_and(|l| l.refusal().is_some());
        gauge(
            &mut out,
            "keypipe_link_pairing_refused",
            "gauge",
            "1 while pairing with the peer node is refused (device or ledger mismatch).",
            f64::from(u8::from(refused)),
        );
        gauge(
            &mut out,
            "keypipe_key_chunks_lost_total",
            "counter",
            "Chunks never handed out on this node: expired, lost in a restart, or not on both nodes.",
            c.lost_chunks as f64,
        );
        gauge(
            &mut out,
            "keypipe_key_confirmation_failures_total",
            "counter",
            "Leased blocks whose check value did not match (their stream stopped).",
            c.mismatches as f64,
        );
        gauge(
            &mut out,
            "keypipe_key_held_blocks",
            "gauge",
            "Key blocks held by streams.",
            s.held_blocks as f64,
        );
        gauge(
            &mut out,
            "keypipe_ledger_position_blocks",
            "gauge",
            "Lowest device block id this node can still take (everything below is spent).",
            s.position as f64,
        );
        gauge(
            &mut out,
            "keypipe_ledger_failed",
            "gauge",
            "1 while the key ledger cannot be written (no key flows).",
            f64::from(u8::from(s.ledger_failed)),
        );
    }
    if let Some(push) = &src.push {
        push.with_stats(|p| {
            gauge(
                &mut out,
                "keypipe_push_chunks_taken_total",
                "counter",
                "Key chunks taken into pushes.",
                p.taken.load(Ordering::Relaxed) as f64,
            );
            gauge(
                &mut out,
                "keypipe_push_chunks_acked_total",
                "counter",
                "Key chunks a KMS acknowledged (201).",
                p.acked.load(Ordering::Relaxed) as f64,
            );
            gauge(
                &mut out,
                "keypipe_push_refused_total",
                "counter",
                "Push answers other than 201 (resent).",
                p.refused.load(Ordering::Relaxed) as f64,
            );
            gauge(
                &mut out,
                "keypipe_push_rejected_total",
                "counter",
                "Chunks a KMS refused for good (409), dropped and not resent.",
                p.rejected.load(Ordering::Relaxed) as f64,
            );
            gauge(
                &mut out,
                "keypipe_push_expired_total",
                "counter",
                "Chunks whose key expired, or was lost, before the push.",
                p.expired.load(Ordering::Relaxed) as f64,
            );
            gauge(
                &mut out,
                "keypipe_push_discarded_total",
                "counter",
                "Chunks taken but not sent when their stream closed (zeroized).",
                p.discarded.load(Ordering::Relaxed) as f64,
            );
        });
        push.latency.render(
            &mut out,
            "keypipe_push_latency_seconds",
            "Key chunk taken to KMS 201.",
            &format!("node=\"{node}\""),
        );
    }
    if let Some(received) = &src.received {
        let (chunks, bytes, total) = received.stats();
        gauge(
            &mut out,
            "keypipe_kms_received_chunks_total",
            "counter",
            "Key chunks received (KMS side).",
            total as f64,
        );
        gauge(
            &mut out,
            "keypipe_kms_held_chunks",
            "gauge",
            "Key chunks held for local consumers.",
            chunks as f64,
        );
        gauge(
            &mut out,
            "keypipe_kms_held_bytes",
            "gauge",
            "Key bytes held for local consumers.",
            bytes as f64,
        );
    }
    if let Some(agreement) = &src.agreement {
        gauge(
            &mut out,
            "keypipe_key_agreement_references",
            "gauge",
            "Client references held (awaiting login, used or expired, until forgotten).",
            agreement.pending() as f64,
        );
    }
    if let Some(kt) = &src.keytalk {
        let st = kt.stats();
        for (name, kind, help, value) in [
            (
                "keypipe_keytalk_sessions",
                "gauge",
                "KeyTalk sessions open.",
                kt.sessions() as u64,
            ),
            (
                "keypipe_keytalk_certificates_total",
                "counter",
                "KeyTalk certificates delivered.",
                st.certificates.load(Ordering::Relaxed),
            ),
            (
                "keypipe_keytalk_auth_failures_total",
                "counter",
                "KeyTalk failed authentications.",
                st.auth_failures.load(Ordering::Relaxed),
            ),
            (
                "keypipe_keytalk_csr_refused_total",
                "counter",
                "KeyTalk CSRs refused (each ended its session).",
                st.csr_refused.load(Ordering::Relaxed),
            ),
        ] {
            gauge(&mut out, name, kind, help, value as f64);
        }
    }
    if let Some(server) = src.server.get() {
        gauge(
            &mut out,
            "keypipe_http_open_connections",
            "gauge",
            "Open HTTP connections.",
            server.open_connections.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "keypipe_http_refused_connections_total",
            "counter",
            "Connections refused by the cap.",
            server.refused.load(Ordering::Relaxed) as f64,
        );
    }
    src.requests.render(&mut out, node);
    Response::empty(200)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(out)
}

/// Adds `GET /healthz`.
pub fn healthz_route(router: &mut Router, src: HealthSources) {
    let handler: Handler = Arc::new(move |req| Reply::Now(healthz(&src, &req)));
    router.route(Method::Get, "/healthz", handler);
}

/// Adds `GET /metrics`.
pub fn metrics_route(router: &mut Router, src: HealthSources) {
    let handler: Handler = Arc::new(move |req| Reply::Now(metrics(&src, &req)));
    router.route(Method::Get, "/metrics", handler);
}
