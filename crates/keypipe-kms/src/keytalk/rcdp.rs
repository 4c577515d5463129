//! One RCDP call from request to reply: the request, its time and the
//! reply, the session taken for the call (and given back however it ends),
//! and the routing of each call allowed in the session's phase.

use std::time::Instant;

use zeroize::Zeroizing;

use super::answer::{Answer, ERR_PROTOCOL};
use super::params::Params;
use super::phase::{Action, Phase};
use super::service::unavailable;
use super::session::{Holder, Session, Sessions, Taken};
use super::shared::TableError;
use super::version::Version;
use super::{KeyTalk, MAX_SESSIONS_PER_USER, cert};

/// The time of a request: monotonic (sessions, delays) and wall clock
/// (handshake, expiry, messages).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic.
    pub instant: Instant,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: i64,
}

impl Now {
    /// The current time.
    pub fn current() -> Now {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Now {
            instant: Instant::now(),
            unix_ms,
        }
    }
}

/// One RCDP request, parsed.
pub struct RcdpRequest<'a> {
    /// The version in the path (`2.4.1`).
    pub version: &'a str,
    /// The call (`hello`, …).
    pub action: &'a str,
    /// Query and form parameters, merged.
    pub params: Params,
    /// The session id from the `Cookie` header.
    pub sid: Option<String>,
}

impl std::fmt::Debug for RcdpRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The session id is a secret; parameters show their names only.
        f.debug_struct("RcdpRequest")
            .field("version", &self.version)
            .field("action", &self.action)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// One RCDP answer and the session cookie to send with it.
pub struct RcdpReply {
    /// The JSON answer (always sent with HTTP 200).
    pub answer: Answer,
    /// The session id for `Set-Cookie: keytalkcookie=…`, when the request
    /// belongs to a live session.
    pub sid: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for RcdpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RcdpReply")
            .field("answer", &self.answer.status_text())
            .finish_non_exhaustive()
    }
}

/// A session taken by a call: released when dropped (an early return or a
/// panic), so the session is never left held.
struct Lease<'a> {
    sessions: &'a Sessions,
    sid: &'a str,
    /// The call: a session another call took since is not its to release.
    holder: Holder,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.sessions.release(self.sid, self.holder);
    }
}

impl KeyTalk {
    /// Serves one RCDP call.
    pub fn rcdp(&self, req: RcdpRequest<'_>, now: Now) -> RcdpReply {
        let none = |answer| RcdpReply { answer, sid: None };
        let Some(action) = Action::parse(req.action) else {
            return none(Answer::error(
                ERR_PROTOCOL,
                format!("unknown call {:?}", req.action),
            ));
        };
        match action {
            Action::Hello => {
                let Some(version) = Version::propose(req.version) else {
                    return none(Answer::error(
                        ERR_PROTOCOL,
                        format!(
                            "RCDP {} is not supported (2.0.0 to {})",
                            req.version,
                            Version::NEWEST
                        ),
                    ));
                };
                let sid = match self.sessions.try_open(version, now.instant) {
                    Ok(sid) => sid,
                    Err(TableError::NoRandomness) => {
                        return none(Answer::error(ERR_PROTOCOL, "no randomness for a session"));
                    }
                    // Not produced by sessions (a full table makes room);
                    // only downloads are ever full.
                    Err(TableError::Full) => {
                        return none(Answer::error(
                            ERR_PROTOCOL,
                            "too many sessions: retry later",
                        ));
                    }
                    Err(TableError::Store(e)) => return none(unavailable("session", &e)),
                };
                return RcdpReply {
                    answer: Answer::status("hello").text("version", version.as_str()),
                    sid: Some(sid),
                };
            }
            Action::Eoc | Action::Error => {
                if let Some(sid) = &req.sid
                    && let Err(e) = self.sessions.try_end(sid)
                {
                    return none(unavailable("session", &e));
                }
                return none(Answer::eoc());
            }
            _ => {}
        }
        if Version::parse(req.version).is_none() {
            return none(Answer::error(
                ERR_PROTOCOL,
                format!("RCDP {} is not supported", req.version),
            ));
        }
        let Some(sid) = req.sid.map(Zeroizing::new) else {
            return none(Answer::error(
                ERR_PROTOCOL,
                "no session (no keytalkcookie): start with hello",
            ));
        };
        let mut session = match self.sessions.try_take(&sid, now.instant) {
            Err(e) => return none(unavailable("session", &e)),
            Ok(Taken::Session(s)) => s,
            Ok(Taken::Gone) => {
                return none(Answer::error(
                    ERR_PROTOCOL,
                    "unknown or expired session: start with hello",
                ));
            }
            Ok(Taken::Busy) => {
                return RcdpReply {
                    answer: Answer::error(
                        ERR_PROTOCOL,
                        "another call of this session is running: one at a time",
                    ),
                    sid: Some(sid),
                };
            }
        };
        // Gives the session back if the call below panics.
        let lease = Lease {
            sessions: &self.sessions,
            sid: &sid,
            holder: session.holder(),
        };
        if !action.allowed_in(session.phase) {
            let phase = match session.phase {
                Phase::Hello => "hello",
                Phase::Connected => "handshake",
                Phase::Authenticated => "authentication",
            };
            let answer = Answer::error(
                ERR_PROTOCOL,
                format!("{} is not allowed after {phase}", action.as_str()),
            );
            drop(lease);
            return RcdpReply {
                answer,
                sid: Some(sid),
            };
        }
        let (answer, keep) = self.dispatch(action, &sid, &mut session, &req.params, now);
        if !keep {
            let closed = self.sessions.try_close(&sid, lease.holder);
            // Not given back even when it could not be deleted: it stays
            // held until it expires (or, shared, its mark goes stale).
            std::mem::forget(lease);
            return none(match closed {
                Ok(()) => answer,
                Err(e) => unavailable("session", &e),
            });
        }
        let mut saved = Ok(());
        if action == Action::Authentication
            && session.phase == Phase::Authenticated
            && let Some(user) = &session.user
        {
            saved = self
                .sessions
                .try_limit_user(user, &sid, MAX_SESSIONS_PER_USER - 1);
        }
        let saved = saved.and_then(|()| self.sessions.try_put(&sid, session));
        if let Err(e) = saved {
            // The lease gives the session back as it was, if it can.
            drop(lease);
            return none(unavailable("session", &e));
        }
        std::mem::forget(lease);
        RcdpReply {
            answer,
            sid: Some(sid),
        }
    }

    /// Runs an allowed call: the answer, and whether the session goes on.
    fn dispatch(
        &self,
        action: Action,
        sid: &str,
        session: &mut Session,
        params: &Params,
        now: Now,
    ) -> (Answer, bool) {
        match action {
            Action::Handshake => (self.handshake(session, params, now), true),
            Action::AuthRequirements => (self.auth_requirements(session, params), true),
            Action::Authentication => self.authentication(session, params, now),
            Action::ChangePassword => self.change_password(session, params, now),
            Action::LastMessages => (self.last_messages(session, params), true),
            Action::CsrRequirements => (self.csr_requirements(session), true),
            Action::Cert => cert::deliver(self, sid, session, params, now),
            Action::Hello | Action::Eoc | Action::Error => (Answer::eoc(), false),
        }
    }
}
