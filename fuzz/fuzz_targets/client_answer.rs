#![no_main]
//! `keypipe_net::fuzzing::client_answer`: see its documentation for the input layout
//! and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keypipe_net::fuzzing::client_answer(data));
