#![no_main]
//! `keypipe_net::fuzzing::http_request`: see its documentation for the input layout
//! and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keypipe_net::fuzzing::http_request(data));
