//! Fuzz entry points (feature `fuzzing`), one file per layer fuzzed: the
//! HTTP request parser (`request`), the outbound client's parsers
//! (`client`), the ETSI 004 KMS side (`kms_side`) and TLS (`tls`).
//!
//! Each takes raw bytes, never panics on any input unless an invariant of
//! the code under test breaks, and is called both by a cargo-fuzz target
//! (`fuzz/fuzz_targets/`) and by the root package's
//! `tests/fuzz_regressions.rs`, which replays the checked-in seeds and
//! regressions.
//!
//! Structured inputs are read with a small byte cursor (the same idea as
//! `arbitrary::Unstructured`): a short input simply reads as zeros, so
//! every byte string is a valid input. Each function's documentation gives
//! its input layout; the seeds under `fuzz/seeds/<target>/` follow it.
//!
//! Not reachable from here (see `fuzz/README.md`): the chunked decoder
//! alone (private to `http`; fuzzed through
//! [`http_chunked`](crate::fuzzing::http_chunked)).

mod client;
mod kms_side;
mod request;
mod tls;

pub use client::{client_answer, origin_parse};
pub use kms_side::etsi004_kms_push;
pub use request::{http_chunked, http_differential, http_request};
pub use tls::tls_identity;
