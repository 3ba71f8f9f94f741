//! Runs each example binary (on its embedded node) and checks that it finished by
//! itself, successfully, having done what it says.
//!
//! `cargo test` builds the examples next to the test binaries (`target/<profile>/examples/`)
//! before it runs any test, so this costs no extra build. When a binary is missing or
//! older than its source (e.g. `cargo test --test examples` alone, which does not build
//! examples), the test says so on stderr and checks nothing rather than run a stale one.

use std::path::PathBuf;
use std::process::Command;
use std::time::SystemTime;

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The example's binary if cargo built it from the current sources.
fn example_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let dir = exe.parent()?.parent()?.join("examples");
    let binary = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let built = modified(&binary)?;
    let sources = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let newest_source = [
        sources.join(format!("{name}.rs")),
        sources.join("common/mod.rs"),
    ]
    .iter()
    .filter_map(|p| modified(p))
    .max()?;
    (built >= newest_source).then_some(binary)
}

/// Runs the example on its embedded node; returns its stdout, or `None` when the binary
/// is not there to run.
fn run(name: &str) -> Option<String> {
    let Some(binary) = example_binary(name) else {
        eprintln!(
            "examples/{name}: no up-to-date binary in target/*/examples (run the whole \
             `cargo test -p ensync-tokio`, which builds the examples); not run"
        );
        return None;
    };
    let out = Command::new(&binary)
        .env_remove("ENSYNC_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("start the example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "examples/{name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("started an embedded EnSync node"),
        "examples/{name} did not use an embedded node:\n{stdout}"
    );
    Some(stdout)
}

fn assert_lines(name: &str, stdout: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            stdout.contains(line),
            "examples/{name}: {line:?} missing from:\n{stdout}"
        );
    }
}

#[test]
fn quickstart_receives_its_event() {
    if let Some(out) = run("quickstart") {
        assert_lines(
            "quickstart",
            &out,
            &["Received order update: order-123 is completed"],
        );
    }
}

#[test]
fn publishing_prints_event_ids() {
    if let Some(out) = run("publishing") {
        assert_lines(
            "publishing",
            &out,
            &[
                "Published event: ",
                "Published event with metadata: ",
                "Published typed event: ",
                "Published to 2 recipients: ",
            ],
        );
        let ids: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("Published event: "))
            .collect();
        assert_eq!(ids.len(), 1);
        assert!(
            ids[0].len() >= 16 && ids[0].chars().all(|c| c.is_ascii_alphanumeric()),
            "{ids:?}"
        );
    }
}

#[test]
fn subscribing_handles_every_published_event() {
    if let Some(out) = run("subscribing") {
        let mut expected = Vec::new();
        for i in 1..=3 {
            expected.push(format!("Email sent to: user{i}@example.com"));
        }
        expected.push("handled 3 of 3".to_owned());
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert_lines("subscribing", &out, &expected);
    }
}

#[test]
fn reply_reaches_the_caller() {
    if let Some(out) = run("reply") {
        assert_lines(
            "reply",
            &out,
            &[
                "service: received request",
                "caller: reply",
                "Processing complete",
            ],
        );
    }
}

#[test]
fn manual_ack_defers_and_discards() {
    if let Some(out) = run("manual_ack") {
        assert_lines(
            "manual_ack",
            &out,
            &[
                "acknowledged ack-me",
                "deferred defer-me",
                "discarded discard-me",
                "came back after",
                "the discarded job is not delivered again",
            ],
        );
    }
}

#[test]
fn pause_resume_holds_then_delivers() {
    if let Some(out) = run("pause_resume") {
        assert_lines(
            "pause_resume",
            &out,
            &[
                "nothing delivered while paused",
                "received order 1",
                "received order 2",
            ],
        );
        let resumed = out.find("resumed").expect("resumed line");
        let first = out.find("received order 1").expect("order 1 line");
        assert!(resumed < first, "delivered before resume:\n{out}");
    }
}

#[test]
fn replay_returns_the_acknowledged_event() {
    if let Some(out) = run("replay") {
        assert_lines(
            "replay",
            &out,
            &["acknowledged ", "replayed ", "\"invoice\":\"INV-42\""],
        );
    }
}
