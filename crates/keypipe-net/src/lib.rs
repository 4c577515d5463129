//! keypipe's network face of the engine, over `keypipe-core`:
//! - [`http`]: the hand-rolled HTTP/1.1 server (mio event loops, httparse)
//!   and outbound client; it knows no protocol;
//! - [`tls`]: TLS by rustls for listeners and outbound connections;
//! - [`router`] and [`metrics`]: dispatch by path and method, and the
//!   request counters;
//! - [`link`]: link sync with the peer node over HTTP;
//! - [`push`]: ETSI GS QKD 004 push mode, QKD side (pushes to KMSes);
//! - [`push_mode`]: the same push mode as calls (OPEN_CONNECT, GET_KEY,
//!   CLOSE), under the HTTP routes and the C ABI;
//! - [`linked`]: the engine, its link, its pushes and the outbound thread;
//! - [`kms_side`]: ETSI GS QKD 004 push mode, KMS side (key received by
//!   push, for local consumers);
//! - `fuzzing` (feature `fuzzing`): fuzz entry points.
//!
//! No SQL, no KMS service, no command line: the C library links this.

/// Fuzz entry points, for `fuzz/` and the fuzz regression tests.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http;
pub mod kms_side;
pub mod link;
pub mod linked;
pub mod metrics;
pub mod push;
pub mod push_mode;
pub mod router;
pub mod tls;
