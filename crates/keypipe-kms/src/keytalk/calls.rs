//! The RCDP calls that neither check credentials nor issue: `handshake`
//! (the clock check), `auth-requirements`, `last-messages` and
//! `csr-requirements`, and the service a call names.

use serde_json::{Value, json};

use super::answer::{Answer, ERR_PROTOCOL, ERR_TIME_OUT_OF_SYNC};
use super::config::Service;
use super::params::{self, Params};
use super::phase::Phase;
use super::session::Session;
use super::{KeyTalk, Now, cert};

impl KeyTalk {
    pub(super) fn handshake(&self, session: &mut Session, params: &Params, now: Now) -> Answer {
        let Some(raw) = params.non_empty("caller-utc") else {
            return Answer::error(ERR_PROTOCOL, "caller-utc is required");
        };
        let Some(caller) = params::parse_utc(raw) else {
            return Answer::error(ERR_PROTOCOL, "caller-utc: an ISO 8601 UTC time");
        };
        let server = now.unix_ms.div_euclid(1000);
        let diff = caller - server;
        if diff.unsigned_abs() > self.config.max_clock_skew.as_secs() {
            return Answer::error(ERR_TIME_OUT_OF_SYNC, diff.to_string());
        }
        session.phase = Phase::Connected;
        Answer::status("handshake").text("server-utc", params::format_utc(server))
    }

    pub(super) fn service_of(
        &self,
        session: &Session,
        params: &Params,
    ) -> Result<&Service, Answer> {
        let name = params
            .non_empty("service")
            .or(session.service.as_deref())
            .ok_or_else(|| Answer::error(ERR_PROTOCOL, "service is required"))?;
        self.config
            .service(name)
            .ok_or_else(|| Answer::error(ERR_PROTOCOL, format!("unknown service {name:?}")))
    }

    pub(super) fn auth_requirements(&self, session: &mut Session, params: &Params) -> Answer {
        let service = match self.service_of(session, params) {
            Ok(s) => s,
            Err(a) => return a,
        };
        session.service = Some(service.name().to_owned());
        let c = &service.config;
        let types: Vec<&str> = c.credential_types.iter().map(|t| t.as_str()).collect();
        let mut a = Answer::status("auth-requirements")
            .value("credential-types", json!(types))
            .text("password-prompt", c.password_prompt.clone());
        if let Some(formula) = &c.hwsig_formula {
            a = a.text("hwsig_formula", formula.clone());
        }
        if !c.service_uris.is_empty() {
            a = a
                .value("service-uris", json!(c.service_uris))
                .flag("resolve-service-uris", c.resolve_service_uris)
                .flag("calc-service-uris-digest", c.calc_service_uris_digest);
        }
        if session.version.has_csr() {
            a = a.flag("use-tpm-vsc-authentication", false);
        }
        if session.version.has_locked_delay() {
            a = a.flag("use-kerberos-authentication", false);
        }
        a
    }

    pub(super) fn last_messages(&self, session: &Session, params: &Params) -> Answer {
        let from = params.non_empty("from-utc").and_then(params::parse_utc);
        let service = session
            .service
            .as_deref()
            .and_then(|s| self.config.service(s));
        let messages: Vec<Value> = service
            .map(|s| s.messages.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|(t, _)| from.is_none_or(|f| *t >= f))
            .map(|(t, text)| json!({ "text": text, "utc": params::format_utc(*t) }))
            .collect();
        Answer::status("last-messages").value("messages", Value::Array(messages))
    }

    pub(super) fn csr_requirements(&self, session: &Session) -> Answer {
        if !session.version.has_csr() {
            return Answer::error(ERR_PROTOCOL, "csr-requirements needs RCDP 2.2.0 or later");
        }
        let Some((service, user)) = self.authenticated_service(session) else {
            return Answer::error(ERR_PROTOCOL, "not authenticated");
        };
        match cert::csr_requirements(service, user) {
            Ok(req) => {
                // Only the fields the certificate has: the vendor's Python
                // client sets every field it is given on its CSR, and an
                // empty `c` makes OpenSSL refuse it.
                let subject: serde_json::Map<String, Value> = req
                    .subject
                    .fields()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), Value::from(v)))
                    .collect();
                Answer::status("csr-requirements")
                    .number("key-size", i64::from(req.key_size))
                    .text("signing-algo", req.signing_algo.clone())
                    .value("subject", Value::Object(subject))
            }
            Err(e) => Answer::error(ERR_PROTOCOL, e),
        }
    }

    /// The service and user of an authenticated session.
    pub(super) fn authenticated_service<'s>(
        &self,
        session: &'s Session,
    ) -> Option<(&Service, &'s str)> {
        let service = self.config.service(session.service.as_deref()?)?;
        Some((service, session.user.as_deref()?))
    }
}
