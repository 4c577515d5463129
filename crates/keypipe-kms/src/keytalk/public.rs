//! The public API (no authentication): `/public/{1.0.0,1.1.0,1.2.0,1.2.1}/`
//! `address-book-list` (`service`), `self-service-availability` and, from
//! 1.1.0, `smime-cert-enrollment-availability` (both take `cert`, a PEM
//! certificate this CA issued, checked against the Signing CA, its
//! validity and revocation, and answer from its service's
//! configuration). Success is HTTP 200; a bad request is HTTP 400 with
//! `{"status":"error","error":…}` (the clients accept only these two).

use serde_json::{Value, json};

use super::KeyTalk;
use super::params::Params;

/// The public API versions served.
pub const VERSIONS: [&str; 4] = ["1.0.0", "1.1.0", "1.2.0", "1.2.1"];

fn error(text: &str) -> (u16, Value) {
    (400, json!({ "status": "error", "error": text }))
}

fn flag(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// Serves `/public/{version}/{call}`: HTTP status and JSON.
pub fn serve(kt: &KeyTalk, version: &str, call: &str, params: &Params) -> (u16, Value) {
    if !VERSIONS.contains(&version) {
        return error("unknown public API version");
    }
    match call {
        "address-book-list" => {
            let Some(name) = params.non_empty("service") else {
                return error("service is required");
            };
            if kt.config.service(name).is_none() {
                return error("unknown service");
            }
            (
                200,
                json!({
                    "status": "address-book-list",
                    "address-books": [],
                    "apply-address-books": "false",
                }),
            )
        }
        "self-service-availability" => match certificate_service(kt, params) {
            Ok(service) => (
                200,
                json!({
                    // The vendor's spelling.
                    "status": "self-service-availablility",
                    "available": flag(service.config.self_service),
                }),
            ),
            Err(e) => error(&e),
        },
        "smime-cert-enrollment-availability" if version != "1.0.0" => {
            match certificate_service(kt, params) {
                Ok(service) if service.config.smime_enrollment => (
                    200,
                    json!({
                        "status": "smime-cert-enrollment-availability",
                        "available": "true",
                        "mobile-required": flag(service.config.mobile_required),
                    }),
                ),
                Ok(_) => (
                    200,
                    json!({
                        "status": "smime-cert-enrollment-availability",
                        "available": "false",
                        "reason": "S/MIME enrolment is not enabled for this service",
                    }),
                ),
                Err(e) => error(&e),
            }
        }
        _ => error("unknown call"),
    }
}

/// The service a presented certificate (`cert`, PEM) was enrolled for.
fn certificate_service<'k>(
    kt: &'k KeyTalk,
    params: &Params,
) -> Result<&'k super::config::Service, String> {
    let pem = params.non_empty("cert").ok_or("cert is required")?;
    let der = super::csr::der_of(pem).ok_or("cert: not a PEM certificate")?;
    let serial = kt
        .ca
        .verify_enrolled(&der, time::OffsetDateTime::now_utc())
        .map_err(|e| e.to_string())?;
    let record = kt
        .store
        .issued_one(&serial)
        .map_err(|_| "the certificate store failed")?
        .ok_or("certificate: not issued by this server")?;
    if record.revoked_ms.is_some() {
        return Err("certificate: revoked".into());
    }
    let service = record
        .enrolment
        .as_ref()
        .ok_or("certificate: not a KeyTalk certificate")?
        .service
        .clone();
    kt.config
        .service(&service)
        .ok_or_else(|| "certificate: its service is no longer configured".into())
}
