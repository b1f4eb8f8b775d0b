//! Fuzz target: the h2c upgrade: a request head, its stream-1 header block, and the splice into the client's bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::h2c(data));
