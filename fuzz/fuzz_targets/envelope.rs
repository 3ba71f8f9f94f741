#![no_main]
//! cargo-fuzz target: see `ensync_proto::__fuzz::envelope`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ensync_proto::__fuzz::envelope::run(data));
