#![no_main]
//! `keypipe_net::fuzzing::origin_parse`: see its documentation for the input layout
//! and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keypipe_net::fuzzing::origin_parse(data));
