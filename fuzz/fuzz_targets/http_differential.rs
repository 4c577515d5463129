#![no_main]
//! `keypipe_net::fuzzing::http_differential`: see its documentation for the input layout
//! and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keypipe_net::fuzzing::http_differential(data));
