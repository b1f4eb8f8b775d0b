//! Fuzz target: the HTTP/1 request framing watcher, the same bytes whole and in the reads the input starts with.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::request_framing(data));
