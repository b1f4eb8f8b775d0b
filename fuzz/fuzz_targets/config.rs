//! Fuzz target: YAML bytes through the config loader, Istio's validation and the route table compiler.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::config(data));
