//! Fuzz entry points (feature `fuzzing`): the link-sync session
//! ([`link_session`]), and the byte cursor every crate's entry points read
//! their input with ([`Input`], in `input`).
//!
//! Each entry point takes raw bytes, never panics on any input unless an
//! invariant of the code under test breaks, and is called both by a
//! cargo-fuzz target (`fuzz/fuzz_targets/`) and by the root package's
//! `tests/fuzz_regressions.rs`, which replays the checked-in seeds and
//! regressions.
//!
//! Structured inputs are read with a small byte cursor (the same idea as
//! `arbitrary::Unstructured`): a short input simply reads as zeros, so
//! every byte string is a valid input.
//!
//! [`link_session`]: crate::fuzzing::link_session
//! [`Input`]: crate::fuzzing::Input

mod input;
mod link_session;

pub use input::Input;
pub use link_session::link_session;
