#![no_main]
//! `keypipe_server::api::fuzz_etsi004_request`: see its documentation for
//! the input layout and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keypipe_server::api::fuzz_etsi004_request(data));
