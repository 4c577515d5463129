#![no_main]
//! `keypipe_kms::fuzzing::donau_crockford`: see its documentation for the input layout
//! and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keypipe_kms::fuzzing::donau_crockford(data));
