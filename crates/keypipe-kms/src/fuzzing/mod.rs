//! Fuzz entry points (feature `fuzzing`), one file per service fuzzed:
//! ETSI 014 (`etsi014`), the NCP KMS (`ncp`), key agreement and login
//! (`agreement`), KeyTalk (`keytalk`), the Donau (`donau`) and the API
//! gateway (`gateway`).
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

mod agreement;
mod donau;
mod etsi014;
mod gateway;
mod keytalk;
mod ncp;

pub use agreement::{agreement_public_key, agreement_request, login_request};
pub use donau::{donau_amount, donau_crockford};
pub use etsi014::etsi014_request;
pub use gateway::gateway_verify;
pub use keytalk::{keytalk_csr, keytalk_form};
pub use ncp::{ncp_ciphertext, ncp_request};
