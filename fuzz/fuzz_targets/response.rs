//! Fuzz target: the relay's response head parser and body codec, whole and read by read.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::response(data));
