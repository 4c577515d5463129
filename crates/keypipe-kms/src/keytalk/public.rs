//! The public API (no authentication): `/public/{1.0.0,1.1.0,1.2.0,1.2.1}/`
//! `address-book-list` (`service`), `self-service-availability` and, from
//! 1.1.0, `smime-cert-enrollment-availability` (both take `cert`, a PEM
//! certificate).
//!
//! A certificate this CA issued for a KeyTalk enrolment, checked against
//! the Signing CA, its validity and revocation, is answered from its
//! service's configuration; any other certificate is answered "not
//! available" (HTTP 200, as the vendor's server does); no certificate at
//! all is a bad request: HTTP 400 with `{"status":"error","error":…}` (the
//! clients accept only these two).

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
            let Some(service) = kt.config.service(name) else {
                return error("unknown service");
            };
            (
                200,
                json!({
                    "status": "address-book-list",
                    "address-books": service.address_books(false),
                    "apply-address-books": flag(service.config.apply_address_books),
                }),
            )
        }
        "self-service-availability" => match certificate_service(kt, params) {
            Ok(service) => (
                200,
                json!({
                    // Not the vendor document's typo `…availablility`:
                    // the vendor's Python client checks this spelling.
                    "status": "self-service-availability",
                    "available": flag(service.is_ok_and(|s| s.config.self_service)),
                }),
            ),
            Err(e) => error(&e),
        },
        "smime-cert-enrollment-availability" if version != "1.0.0" => {
            match certificate_service(kt, params) {
                Ok(Ok(service)) if service.config.smime_enrollment => (
                    200,
                    json!({
                        "status": "smime-cert-enrollment-availability",
                        "available": "true",
                        "mobile-required": flag(service.config.mobile_required),
                    }),
                ),
                Ok(found) => (
                    200,
                    json!({
                        "status": "smime-cert-enrollment-availability",
                        "available": "false",
                        // One reason for every refusal: an anonymous caller
                        // learns nothing of the certificate's state.
                        "reason": if found.is_ok() {
                            "S/MIME enrolment is not enabled for this service"
                        } else {
                            "not a certificate of an eligible user of this server"
                        },
                    }),
                ),
                Err(e) => error(&e),
            }
        }
        _ => error("unknown call"),
    }
}

/// The service a presented certificate (`cert`, PEM) was enrolled for:
/// `Err` (HTTP 400) when `cert` is missing or not a certificate at all;
/// `Ok(Err(why))` (answered "not available", as the vendor's server does
/// for a valid certificate of no eligible user) when it is not a valid,
/// unrevoked enrolment certificate of this CA for a configured service.
fn certificate_service<'k>(
    kt: &'k KeyTalk,
    params: &Params,
) -> Result<Result<&'k super::config::Service, String>, String> {
    let pem = params.non_empty("cert").ok_or("cert is required")?;
    let der = super::csr::der_of(pem)
        .filter(|der| x509_parser::parse_x509_certificate(der).is_ok())
        .ok_or("cert: not a PEM certificate")?;
    match enrolled_service(kt, &der) {
        Err(Refused::Store) => Err("the server could not check the certificate; retry".into()),
        Err(Refused::Not(why)) => {
            tracing::debug!("keytalk public API: {why}");
            Ok(Err(why))
        }
        Ok(service) => Ok(Ok(service)),
    }
}

/// Why a certificate is not an enrolled user's.
enum Refused {
    /// The store failed (the caller gets a 400, not a wrong "no").
    Store,
    /// Not a valid, unrevoked enrolment certificate of a configured
    /// service.
    Not(String),
}

fn enrolled_service<'k>(
    kt: &'k KeyTalk,
    der: &[u8],
) -> Result<&'k super::config::Service, Refused> {
    let not = |why: &str| Refused::Not(why.to_owned());
    let serial = kt
        .ca
        .verify_enrolled(der, time::OffsetDateTime::now_utc())
        .map_err(|e| Refused::Not(e.to_string()))?;
    let record = kt
        .store
        .issued_one(&serial)
        .map_err(|_| Refused::Store)?
        .ok_or_else(|| not("not issued by this server"))?;
    if record.revoked_ms.is_some() {
        return Err(not("revoked"));
    }
    let service = &record
        .enrolment
        .as_ref()
        .ok_or_else(|| not("not a KeyTalk certificate"))?
        .service;
    kt.config
        .service(service)
        .ok_or_else(|| not("its service is no longer configured"))
}
