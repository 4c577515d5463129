//! `cert`: issuing the authenticated user's certificate from the
//! service's profile and delivering it.
//!
//! Server-made keys come as `format=PEM` (certificate(s), then the key as
//! `ENCRYPTED PRIVATE KEY`) or `format=P12` (Base64 in band, raw DER out of
//! band), both under the passphrase = the first 30 characters of the
//! session id. With a `csr` (2.2.0+), the CSR is held to `csr-requirements`
//! and the answer is the certificate (chain) as PEM; a CSR that does not
//! match ends the session with `eoc`, as the vendor's server does.
//! `include-chain` adds the Signing CA and the Primary CA; `out-of-band`
//! (2.1.0+) parks the package for one download, its room taken before the
//! certificate is issued (a full table of downloads refuses the call, and
//! nothing is issued). Every certificate is recorded in the store with its
//! service, user and device.

use std::sync::atomic::Ordering;

use base64::Engine;
use serde_json::json;
use zeroize::Zeroizing;

use super::answer::{Answer, ERR_PROTOCOL};
use super::config::Service;
use super::csr::{self, CsrRequirements};
use super::params::Params;
use super::session::Session;
use super::shared::TableError;
use super::{KeyTalk, Now, package};
use crate::ca::{EnrolKey, EnrolRequest, Enrolled};
use crate::store::Enrolment;

/// Characters of the session id that make the passphrase.
pub const PASSPHRASE_LEN: usize = 30;

/// What a CSR for `user` of `service` must be.
pub fn csr_requirements(service: &Service, user: &str) -> Result<CsrRequirements, String> {
    Ok(CsrRequirements {
        key_size: service.config.cert.csr_key_size,
        signing_algo: service.config.cert.csr_signing_algo.clone(),
        subject: service.subject(user)?,
    })
}

/// How the package is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pem,
    P12,
}

fn issue(
    kt: &KeyTalk,
    service: &Service,
    user: &str,
    session: &Session,
    key: EnrolKey,
) -> Result<Enrolled, String> {
    let request = EnrolRequest {
        subject: service.subject(user)?,
        ekus: service.ekus.clone(),
        sans: service.sans(user)?,
        days: service.config.cert.days,
        key,
        enrolment: Enrolment {
            service: service.name().to_owned(),
            holder: user.to_owned(),
            device: session.device.clone(),
        },
    };
    kt.ca.enrol(kt.store.as_ref(), &request).map_err(|e| {
        tracing::error!(
            service = service.name(),
            user,
            "keytalk: issuing failed: {e}"
        );
        "the certificate could not be issued".to_owned()
    })
}

/// The answer when a package cannot be parked for its download.
fn park_refused(e: TableError) -> Answer {
    match e {
        TableError::NoRandomness => {
            Answer::error(ERR_PROTOCOL, "no randomness for a download token")
        }
        TableError::Full => Answer::error(ERR_PROTOCOL, "too many downloads waiting: retry later"),
        TableError::Store(e) => super::service::unavailable("download", &e),
    }
}

/// Serves `cert`: the answer, and whether the session goes on.
pub(super) fn deliver(
    kt: &KeyTalk,
    sid: &str,
    session: &mut Session,
    params: &Params,
    now: Now,
) -> (Answer, bool) {
    let Some((service, user)) = kt
        .authenticated_service(session)
        .map(|(s, u)| (s, u.to_owned()))
    else {
        return (Answer::error(ERR_PROTOCOL, "not authenticated"), true);
    };
    if session.certificates >= super::MAX_CERTIFICATES_PER_SESSION {
        return (
            Answer::error(
                ERR_PROTOCOL,
                format!(
                    "at most {} certificates per session: start a new one",
                    super::MAX_CERTIFICATES_PER_SESSION
                ),
            ),
            true,
        );
    }
    let version = session.version;
    let flags = (
        params.flag("include-chain", false),
        params.flag("out-of-band", false),
    );
    let (chain, out_of_band) = match flags {
        (Ok(c), Ok(o)) => (c, o && version.has_out_of_band()),
        (Err(e), _) | (_, Err(e)) => return (Answer::error(ERR_PROTOCOL, e), true),
    };
    let csr_text = params.non_empty("csr");
    let format = match (csr_text, params.non_empty("format")) {
        (Some(_), _) => Format::Pem,
        (None, Some(f)) if f.eq_ignore_ascii_case("PEM") => Format::Pem,
        (None, Some(f)) if f.eq_ignore_ascii_case("P12") => Format::P12,
        (None, _) => return (Answer::error(ERR_PROTOCOL, "format: PEM or P12"), true),
    };
    let key = match csr_text {
        Some(_) if !version.has_csr() => {
            return (
                Answer::error(ERR_PROTOCOL, "a CSR needs RCDP 2.2.0 or later"),
                true,
            );
        }
        Some(text) => {
            let want = match csr_requirements(service, &user) {
                Ok(w) => w,
                Err(e) => return (Answer::error(ERR_PROTOCOL, e), true),
            };
            match csr::check(text, &want) {
                Ok(spki) => EnrolKey::Csr(spki),
                Err(e) => {
                    kt.stats.csr_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(service = service.name(), user, "keytalk: CSR refused: {e}");
                    return (Answer::eoc(), false);
                }
            }
        }
        None => EnrolKey::Generate(service.key_type),
    };
    let from_csr = matches!(key, EnrolKey::Csr(_));
    // Room for the download before the certificate exists: a full table
    // refuses now, and nothing is issued, recorded or counted.
    let slot = if out_of_band {
        match kt.downloads.try_reserve() {
            Ok(slot) => Some(slot),
            Err(e) => return (park_refused(e), true),
        }
    } else {
        None
    };
    let enrolled = match issue(kt, service, &user, session, key) {
        Ok(e) => e,
        Err(e) => return (Answer::error(ERR_PROTOCOL, e), true),
    };
    let mut certs: Vec<&[u8]> = vec![&enrolled.cert_der];
    if chain {
        certs.extend(kt.ca.chain_der());
    }
    let passphrase = Zeroizing::new(sid.chars().take(PASSPHRASE_LEN).collect::<String>());
    let packaged: Result<(&'static str, Zeroizing<Vec<u8>>), String> =
        match (&enrolled.key_pkcs8, format) {
            (None, _) => {
                let pem: String = certs
                    .iter()
                    .map(|der| crate::ca::pem("CERTIFICATE", der))
                    .collect();
                Ok(("application/x-pem-file", Zeroizing::new(pem.into_bytes())))
            }
            (Some(key), Format::Pem) => package::pem_bundle(&certs, key, passphrase.as_bytes())
                .map(|pem| {
                    (
                        "application/x-pem-file",
                        Zeroizing::new(pem.as_bytes().to_vec()),
                    )
                })
                .map_err(|e| e.to_string()),
            (Some(key), Format::P12) => {
                let friendly = format!("{} {}", service.name(), user);
                package::p12(certs[0], &certs[1..], key, &passphrase, &friendly)
                    .map(|der| ("application/x-pkcs12", Zeroizing::new(der)))
                    .map_err(|e| e.to_string())
            }
        };
    let (content_type, body) = match packaged {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("keytalk: packaging failed: {e}");
            return (
                Answer::error(ERR_PROTOCOL, "the certificate could not be packaged"),
                true,
            );
        }
    };
    session.certificates += 1;
    kt.stats.certificates.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        service = service.name(),
        user,
        serial = %enrolled.serial,
        csr = from_csr,
        "keytalk: certificate issued"
    );
    let mut a = Answer::status("cert");
    if let Some(slot) = slot {
        // Only the store can fail here (the room was found above).
        let token = match slot.park(content_type, body, now.instant) {
            Ok(token) => token,
            Err(e) => return (park_refused(TableError::Store(e)), true),
        };
        a = a.text(
            "cert-url-templ",
            format!("{}{token}", kt.config.download_url),
        );
    } else if format == Format::P12 && !from_csr {
        a = a.text(
            "cert",
            base64::engine::general_purpose::STANDARD.encode(body.as_slice()),
        );
    } else {
        let text = String::from_utf8_lossy(&body).into_owned();
        a = a.text("cert", text);
    }
    a = a.flag("execute-sync", false);
    if version.has_store_to_system() {
        a = a.flag("store-to-system", service.config.store_to_system);
    }
    // The 5.5 C++ client reads both unconditionally: always sent, with
    // the books from 2.4.1 (the version that has them).
    let books = version >= super::version::Version::V2_4_1;
    a = a
        .value(
            "address-books",
            if books {
                service.address_books(true)
            } else {
                json!([])
            },
        )
        .flag(
            "apply-address-books",
            books && service.config.apply_address_books,
        );
    (a, true)
}
