//! Every fuzz target's program (`ensync_proto::__fuzz::TARGETS`) run on stable over
//! random byte strings, a few thousand per target, so that a target whose invariants
//! drift from the code fails in an ordinary `cargo test` and not only under cargo-fuzz
//! (`scripts/fuzz.sh` runs the real fuzzer).
//!
//! The seed is fixed for reproducible CI; `ENSYNC_PROPTEST_SEED=<u64>` explores another
//! one and `ENSYNC_PROPTEST_SEED=random` a fresh one per run. A failing input is
//! shrunk by proptest: keep it as a file in `fuzz/corpus/<target>/`.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

fn config(cases: u32) -> Config {
    let rng_seed = match std::env::var("ENSYNC_PROPTEST_SEED").ok().as_deref() {
        Some("random") => RngSeed::Random,
        Some(seed) => RngSeed::Fixed(seed.parse().unwrap_or(20_261_201)),
        None => RngSeed::Fixed(20_261_201),
    };
    Config {
        cases,
        rng_seed,
        // The corpus files are the regressions (replayed by `fuzz_corpus.rs`).
        failure_persistence: None,
        ..Config::default()
    }
}

fn target(name: &str) -> ensync_proto::__fuzz::Target {
    ensync_proto::__fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1
}

fn run_target(name: &str, cases: u32, max_len: usize) {
    run_strategy(name, cases, prop::collection::vec(any::<u8>(), 0..max_len));
}

fn run_strategy(name: &str, cases: u32, strategy: impl Strategy<Value = Vec<u8>>) {
    let run = target(name);
    let mut runner = TestRunner::new(config(cases));
    let result = runner.run(&strategy, |data| {
        run(&data);
        Ok(())
    });
    if let Err(e) = result {
        panic!("fuzz target {name} failed on random input: {e}");
    }
}

#[test]
fn every_target_has_a_program_test() {
    let tested = ["envelope", "frame", "session", "ws", "ws_client"];
    for (name, _) in ensync_proto::__fuzz::TARGETS {
        assert!(
            tested.contains(name),
            "fuzz target {name} has no random-bytes test here: add one"
        );
    }
}

#[test]
fn session_program_over_random_bytes() {
    run_target("session", 2000, 96);
}

/// The session target reads one instruction per byte (`op % 18`) and then its operand
/// bytes; uniform bytes seldom get past `open` and a successful `Connect` reply. These
/// programs are whole instructions (an opcode below 18 and two operand bytes), so
/// connected sessions with subscriptions, deliveries and closes come up often.
#[test]
fn session_program_over_random_instructions() {
    let instruction = (0u8..18, any::<u8>(), any::<u8>()).prop_map(|(op, b, c)| [op, b, c]);
    let program = (any::<u8>(), prop::collection::vec(instruction, 0..40)).prop_map(
        |(flags, instructions)| {
            let mut data = vec![flags];
            data.extend(instructions.into_iter().flatten());
            data
        },
    );
    run_strategy("session", 20_000, program);
}

#[test]
fn envelope_program_over_random_bytes() {
    run_target("envelope", 2000, 512);
}

#[test]
fn frame_program_over_random_bytes() {
    run_target("frame", 4000, 512);
}

#[test]
fn ws_program_over_random_bytes() {
    run_target("ws", 4000, 512);
}

#[test]
fn ws_client_program_over_random_bytes() {
    run_target("ws_client", 4000, 256);
}
