//! The `authentication` and `change-password` calls: the checks in order
//! (service URIs, password, membership, expiry, challenge, device) within
//! one counted attempt, and what each outcome leaves in the session.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::answer::{Answer, ERR_DIGEST, ERR_PROTOCOL, ERR_RESOLVED_IP};
use super::config::Service;
use super::credentials::{self, Attempt, AuthResult};
use super::params::{self, Params};
use super::phase::Phase;
use super::session::{Pending, Session};
use super::version::Version;
use super::{KeyTalk, MAX_FIELD, Now};
use crate::login::password;

/// What a login proved before its device is checked.
struct Verified<'a> {
    user: &'a str,
    /// The device's signature, when the service asks for one.
    hwsig: Option<String>,
    /// The password's validity, seconds (-1: forever).
    validity: i64,
}

fn auth_answer(result: &AuthResult, version: Version) -> Answer {
    let a = Answer::status("auth-result");
    match result {
        AuthResult::Ok(validity) => a
            .text("auth-status", "OK")
            .number("password-validity", *validity),
        AuthResult::Delay(secs) => a
            .text("auth-status", "DELAY")
            .number("delay", i64::try_from(*secs).unwrap_or(i64::MAX)),
        AuthResult::Locked(secs) => {
            let a = a.text("auth-status", "LOCKED");
            if version.has_locked_delay() {
                a.number("delay", i64::try_from(*secs).unwrap_or(i64::MAX))
            } else {
                a
            }
        }
        AuthResult::Expired => a.text("auth-status", "EXPIRED"),
        AuthResult::Challenge(name, prompt) => a
            .text("auth-status", "CHALLENGE")
            .value("challenges", json!([{ "name": name, "value": prompt }])),
    }
}

impl KeyTalk {
    /// The checks of `resolved` and `digests`, when the service asks.
    fn check_uris(&self, service: &Service, params: &Params) -> Result<(), Answer> {
        let c = &service.config;
        if c.resolve_service_uris && !c.service_uris.is_empty() {
            let resolved: Value = params
                .get("resolved")
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null);
            let ok = c.service_uris.iter().all(|uri| {
                let theirs: Vec<String> = resolved
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e.get("uri").and_then(Value::as_str) == Some(uri))
                    .flat_map(|e| {
                        e.get("ips")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .filter_map(|ip| ip.as_str().map(|s| s.trim_matches(['[', ']']).to_owned()))
                    .collect();
                let ours = (self.resolver)(uri);
                theirs.iter().any(|ip| ours.iter().any(|o| o == ip))
            });
            if !ok {
                return Err(Answer::error(
                    ERR_RESOLVED_IP,
                    "none of the resolved addresses matches the server's",
                ));
            }
        }
        if c.calc_service_uris_digest && !c.service_uris.is_empty() {
            let digests: Value = params
                .get("digests")
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null);
            let ok = c.service_uris.iter().all(|uri| {
                let theirs = digests
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|e| e.get("uri").and_then(Value::as_str) == Some(uri))
                    .and_then(|e| e.get("digest").and_then(Value::as_str));
                theirs.is_some_and(|d| {
                    c.uri_digests
                        .get(uri)
                        .is_some_and(|want| want.eq_ignore_ascii_case(d))
                })
            });
            if !ok {
                return Err(Answer::error(ERR_DIGEST, "a service file's digest differs"));
            }
        }
        Ok(())
    }

    pub(super) fn authentication(
        &self,
        session: &mut Session,
        params: &Params,
        now: Now,
    ) -> (Answer, bool) {
        let service = match self.service_of(session, params) {
            Ok(s) => s,
            Err(a) => return (a, true),
        };
        let answering_challenge = matches!(session.pending, Pending::Challenge { .. })
            && params.non_empty("responses").is_some();
        let missing = credentials::missing(service, |name| params.non_empty(name).is_some());
        if !missing.is_empty() && !answering_challenge {
            return (
                Answer::error(
                    ERR_PROTOCOL,
                    format!("missing credentials: {}", missing.join(", ")),
                ),
                true,
            );
        }
        if let Err(a) = self.check_uris(service, params) {
            return (a, true);
        }
        let user = match (&session.pending, params.non_empty("USERID")) {
            (Pending::Challenge { user, .. }, None) => user.clone(),
            (_, Some(u)) => u.to_owned(),
            (_, None) => return (Answer::error(ERR_PROTOCOL, "USERID is required"), true),
        };
        let hwsig = credentials::wants_hwsig(service)
            .then(|| credentials::normalize_hwsig(params.get("HWSIG").unwrap_or("")));
        if user.len() > MAX_FIELD || hwsig.as_ref().is_some_and(|h| h.len() > MAX_FIELD) {
            return (
                Answer::error(
                    ERR_PROTOCOL,
                    format!("USERID and HWSIG: at most {MAX_FIELD} bytes"),
                ),
                true,
            );
        }
        session.service = Some(service.name().to_owned());
        let result = self.authenticate(session, service, &user, hwsig, params, now);
        let keep = !matches!(result, AuthResult::Locked(_));
        (auth_answer(&result, session.version), keep)
    }

    /// A failed attempt: nothing half done stays in the session.
    fn fail(
        &self,
        session: &mut Session,
        attempt: Attempt<'_>,
        user: &str,
        now: Now,
    ) -> AuthResult {
        session.pending = Pending::None;
        session.device = None;
        self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::info!(user, "keytalk: authentication failed");
        attempt.failed(now.instant)
    }

    fn authenticate(
        &self,
        session: &mut Session,
        service: &Service,
        user: &str,
        hwsig: Option<String>,
        params: &Params,
        now: Now,
    ) -> AuthResult {
        let attempt = match self.failures.begin(user, now.instant) {
            Ok(a) => a,
            Err(held) => return held,
        };
        let domain = &self.config.domain;
        // The challenge step: the password was checked in the previous
        // round, for this user and this service; now its answer (as
        // PASSWD, or the first of `responses`).
        if let Pending::Challenge {
            user: u,
            service: s,
            hwsig: first,
        } = &session.pending
            && u == user
        {
            let (same_service, first) = (s == service.name(), first.clone());
            let answer = params
                .get("responses")
                .and_then(params::responses)
                .and_then(|r| r.into_iter().next().map(|(_, v)| v))
                .or_else(|| params.get("PASSWD").map(str::to_owned))
                .unwrap_or_default();
            let answer = Zeroizing::new(answer);
            if !same_service || !credentials::challenge_answered(service, &answer) {
                return self.fail(session, attempt, user, now);
            }
            // Membership and expiry may have changed since the password.
            if !self.member(user, service) {
                return self.fail(session, attempt, user, now);
            }
            let Some(validity) = self.validity(user, now) else {
                session.pending = Pending::Expired(user.to_owned());
                return AuthResult::Expired;
            };
            let verified = Verified {
                user,
                hwsig: first,
                validity,
            };
            return self.authenticated(session, service, verified, attempt, now);
        }
        let given = Zeroizing::new(params.get("PASSWD").unwrap_or("").to_owned());
        let record = match self.store.user(domain, user) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("keytalk: user store: {e}");
                return AuthResult::Delay(1);
            }
        };
        let hash = record
            .as_ref()
            .map_or(password::decoy(), |r| &r.password_hash);
        let password_ok = password::verify(hash, given.as_bytes()) && record.is_some();
        if !password_ok
            || !self.member(user, service)
            || hwsig.as_ref().is_some_and(String::is_empty)
        {
            return self.fail(session, attempt, user, now);
        }
        let Some(validity) = self.validity(user, now) else {
            // The count stays; only a changed password clears it.
            session.pending = Pending::Expired(user.to_owned());
            return AuthResult::Expired;
        };
        if let Some(c) = &service.config.challenge {
            session.pending = Pending::Challenge {
                user: user.to_owned(),
                service: service.name().to_owned(),
                hwsig,
            };
            return AuthResult::Challenge(c.name.clone(), c.prompt.clone());
        }
        let verified = Verified {
            user,
            hwsig,
            validity,
        };
        self.authenticated(session, service, verified, attempt, now)
    }

    fn member(&self, user: &str, service: &Service) -> bool {
        self.store
            .is_member(&self.config.domain, user, service.name())
            .unwrap_or(false)
    }

    /// Seconds the user's password stays valid (-1: forever), or `None`
    /// when it has expired (or cannot be read).
    fn validity(&self, user: &str, now: Now) -> Option<i64> {
        match self.store.password_expiry(&self.config.domain, user) {
            Ok(expires) => credentials::validity(expires, now.unix_ms),
            Err(_) => None,
        }
    }

    /// Every check passed (password, membership, expiry, challenge) but
    /// the device's: registers it on first use (only now, so a password
    /// alone never claims a device), checks it, and opens the service.
    fn authenticated(
        &self,
        session: &mut Session,
        service: &Service,
        verified: Verified<'_>,
        attempt: Attempt<'_>,
        now: Now,
    ) -> AuthResult {
        let Verified {
            user,
            hwsig,
            validity,
        } = verified;
        if let Some(hwsig) = &hwsig {
            match self
                .store
                .register_device(&self.config.domain, user, service.name(), hwsig)
            {
                Ok(r) if credentials::same_hwsig(&r, hwsig) => {}
                Ok(_) => {
                    tracing::info!(
                        user,
                        "keytalk: device signature differs from the registered one"
                    );
                    return self.fail(session, attempt, user, now);
                }
                Err(e) => {
                    tracing::error!("keytalk: device store: {e}");
                    return AuthResult::Delay(1);
                }
            }
        }
        attempt.succeeded();
        session.phase = Phase::Authenticated;
        session.pending = Pending::None;
        session.user = Some(user.to_owned());
        session.service = Some(service.name().to_owned());
        session.device = hwsig;
        session.certificates = 0;
        AuthResult::Ok(validity)
    }

    pub(super) fn change_password(
        &self,
        session: &mut Session,
        params: &Params,
        now: Now,
    ) -> (Answer, bool) {
        let user = match (&session.pending, session.phase, &session.user) {
            (Pending::Expired(u), _, _) => u.clone(),
            (_, Phase::Authenticated, Some(u)) => u.clone(),
            _ => {
                return (
                    Answer::error(
                        1005,
                        "change-password needs an authenticated user or an expired password",
                    ),
                    true,
                );
            }
        };
        let (Some(old), Some(new)) = (params.get("old-password"), params.get("new-password"))
        else {
            return (
                Answer::error(ERR_PROTOCOL, "old-password and new-password are required"),
                true,
            );
        };
        if new.len() > 1024 {
            return (
                Answer::error(ERR_PROTOCOL, "new-password: at most 1024 bytes"),
                true,
            );
        }
        let (old, new) = (
            Zeroizing::new(old.to_owned()),
            Zeroizing::new(new.to_owned()),
        );
        let result = self.set_password(session, &user, &old, &new, now);
        let keep = !matches!(result, AuthResult::Locked(_));
        (auth_answer(&result, session.version), keep)
    }

    fn set_password(
        &self,
        session: &mut Session,
        user: &str,
        old: &str,
        new: &str,
        now: Now,
    ) -> AuthResult {
        let attempt = match self.failures.begin(user, now.instant) {
            Ok(a) => a,
            Err(held) => return held,
        };
        let domain = &self.config.domain;
        let ok = self
            .store
            .user(domain, user)
            .ok()
            .flatten()
            .is_some_and(|r| password::verify(&r.password_hash, old.as_bytes()));
        if !ok {
            // The session stays where it was (expired or authenticated).
            self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(user, "keytalk: change-password with a wrong old password");
            return attempt.failed(now.instant);
        }
        if new.chars().count() < self.config.min_password_length || new == old {
            // Not a failure of the user's: retry at once.
            return AuthResult::Delay(0);
        }
        let Some(hash) = password::hash(new.as_bytes()) else {
            return AuthResult::Delay(1);
        };
        let max_age = session
            .service
            .as_deref()
            .and_then(|s| self.config.service(s))
            .and_then(|s| s.config.password_max_age_days);
        let expires = max_age.map(|d| now.unix_ms + i64::from(d) * 86_400_000);
        match self.store.set_password(domain, user, &hash, expires) {
            Ok(true) => {}
            _ => return AuthResult::Delay(1),
        }
        attempt.succeeded();
        tracing::info!(user, "keytalk: password changed");
        // The user authenticates again with the new password.
        session.phase = Phase::Connected;
        session.pending = Pending::None;
        session.user = None;
        session.device = None;
        AuthResult::Ok(credentials::validity(expires, now.unix_ms).unwrap_or(-1))
    }
}
