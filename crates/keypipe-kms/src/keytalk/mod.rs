//! KeyTalk certificate enrolment, sans-IO: RCDP v2 (2.0.0 to 2.4.1), the
//! public API and the CA download, over keypipe's CA and user store; the
//! server's HTTP adapter (`api::keytalk`) turns requests into calls here.
//! The protocol as served, and every decision: `docs/keytalk.md`.
//!
//! One concept per file: `service` (the service of one process, where
//! its tables live), `rcdp` (one call from request to reply, routing),
//! `calls` (`handshake`, `auth-requirements`, `last-messages`,
//! `csr-requirements`), `authentication` (`authentication`,
//! `change-password`), [`version`] (what each version adds), [`params`]
//! (lenient request reading, the cookie, times), [`phase`] (the clients'
//! transition table), [`session`] (ids, expiry), [`credentials`]
//! (passwords, devices, delays and locks), [`csr`] (CSR checks),
//! [`cert`] (issuing and delivering), [`package`] (PEM and P12),
//! [`oob`] (one-time downloads), [`public`] (the public API), [`answer`]
//! (JSON typing rules), [`config`] (services) and [`shared`] (tables in
//! the store when several processes share it).

pub mod answer;
mod authentication;
mod calls;
pub mod cert;
pub mod config;
pub mod credentials;
pub mod csr;
pub mod oob;
pub mod package;
pub mod params;
pub mod phase;
pub mod public;
mod rcdp;
mod service;
pub mod session;
pub mod shared;
pub mod version;

pub use rcdp::{Now, RcdpReply, RcdpRequest};
pub use service::{KeyTalk, KeyTalkBackend, KeyTalkStats, Resolver};

/// Longest `USERID` and `HWSIG` accepted (bytes).
pub const MAX_FIELD: usize = 256;

/// Authenticated sessions one user keeps at most (the ones unused
/// longest end).
pub const MAX_SESSIONS_PER_USER: usize = 16;

/// Certificates one session may have issued.
pub const MAX_CERTIFICATES_PER_SESSION: u32 = 8;

/// Out-of-band downloads waiting at most.
pub const MAX_DOWNLOADS: usize = 10_000;

#[cfg(test)]
mod tests;
