//! The RCDP phases and which call each allows: the clients' own
//! transition table (the C++ client's `verifyTransition`):
//!
//! | call | allowed in |
//! |---|---|
//! | `hello` | any (starts a new session) |
//! | `handshake` | hello |
//! | `auth-requirements`, `authentication` | connected (again after `DELAY`, `EXPIRED`, `CHALLENGE`) |
//! | `change-password` | connected or authenticated (`OK` goes back to connected) |
//! | `last-messages`, `csr-requirements`, `cert` | authenticated |
//! | `eoc`, `error` | any, even without a session (both end it) |
//!
//! `LOCKED` ends the session.

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Phase {
    /// After `hello`.
    Hello,
    /// After `handshake`: authentication may run.
    Connected,
    /// Authenticated: the service may be used.
    Authenticated,
}

/// An RCDP call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `hello`.
    Hello,
    /// `handshake`.
    Handshake,
    /// `auth-requirements`.
    AuthRequirements,
    /// `authentication`.
    Authentication,
    /// `change-password`.
    ChangePassword,
    /// `last-messages`.
    LastMessages,
    /// `cert`.
    Cert,
    /// `csr-requirements`.
    CsrRequirements,
    /// `eoc`.
    Eoc,
    /// `error` (sent by a client).
    Error,
}

/// Every call with its name.
const ACTIONS: [(Action, &str); 10] = [
    (Action::Hello, "hello"),
    (Action::Handshake, "handshake"),
    (Action::AuthRequirements, "auth-requirements"),
    (Action::Authentication, "authentication"),
    (Action::ChangePassword, "change-password"),
    (Action::LastMessages, "last-messages"),
    (Action::Cert, "cert"),
    (Action::CsrRequirements, "csr-requirements"),
    (Action::Eoc, "eoc"),
    (Action::Error, "error"),
];

impl Action {
    /// The call named `s` (the last path segment).
    pub fn parse(s: &str) -> Option<Action> {
        ACTIONS.iter().find(|(_, n)| *n == s).map(|(a, _)| *a)
    }

    /// The call's name.
    pub fn as_str(self) -> &'static str {
        ACTIONS
            .iter()
            .find(|(a, _)| *a == self)
            .map_or("", |(_, n)| n)
    }

    /// True when a session in `phase` may make this call.
    pub fn allowed_in(self, phase: Phase) -> bool {
        match self {
            Action::Hello | Action::Eoc | Action::Error => true,
            Action::Handshake => phase == Phase::Hello,
            Action::AuthRequirements | Action::Authentication => phase == Phase::Connected,
            Action::ChangePassword => matches!(phase, Phase::Connected | Phase::Authenticated),
            Action::LastMessages | Action::Cert | Action::CsrRequirements => {
                phase == Phase::Authenticated
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_transition_table() {
        use Action::*;
        let all = [
            Hello,
            Handshake,
            AuthRequirements,
            Authentication,
            ChangePassword,
            LastMessages,
            Cert,
            CsrRequirements,
            Eoc,
            Error,
        ];
        for a in all {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        let allowed = |p| all.iter().filter(|a| a.allowed_in(p)).count();
        assert_eq!(allowed(Phase::Hello), 4);
        assert_eq!(allowed(Phase::Connected), 6);
        assert_eq!(allowed(Phase::Authenticated), 7);
        assert!(!Cert.allowed_in(Phase::Connected));
        assert!(!Authentication.allowed_in(Phase::Authenticated));
        assert!(ChangePassword.allowed_in(Phase::Authenticated));
        assert_eq!(Action::parse("nope"), None);
    }
}
