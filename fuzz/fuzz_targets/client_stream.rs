#![no_main]
//! See `mirrorctl::fuzzing::client_stream` for what is checked and the input format.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mirrorctl::fuzzing::client_stream(data));
