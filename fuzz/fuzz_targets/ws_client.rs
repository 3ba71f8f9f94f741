#![no_main]
//! cargo-fuzz target: see `ensync_proto::__fuzz::ws_client`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ensync_proto::__fuzz::ws_client::run(data));
