#![no_main]
//! `keypipe_kms::fuzzing::login_request`: see its documentation for the input layout
//! and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keypipe_kms::fuzzing::login_request(data));
