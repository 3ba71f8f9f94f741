//! Entry points shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and the
//! corpus replay test (`tests/fuzz_corpus.rs`), so every seed corpus is replayed by an
//! ordinary `cargo test` on stable. Not a stable API.
//!
//! Each submodule exposes `pub fn run(data: &[u8])`, which must never panic.

pub mod envelope;
pub mod frame;
pub mod session;
pub mod ws;
pub mod ws_client;

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets by name (the name of their `fuzz/corpus/<name>` folder) and entry point.
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope::run),
    ("frame", frame::run),
    ("session", session::run),
    ("ws", ws::run),
    ("ws_client", ws_client::run),
];
