#![no_main]
//! See `mirrorctl::fuzzing::config_istio` for what is checked and the input format.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mirrorctl::fuzzing::config_istio(data));
