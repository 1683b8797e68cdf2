#![no_main]
//! See `mirrorctl::fuzzing::upstream_response` for what is checked and the input format.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mirrorctl::fuzzing::upstream_response(data));
