#![no_main]
//! `keypipe_core::fuzzing::link_session`: see its documentation for the input layout
//! and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keypipe_core::fuzzing::link_session(data));
