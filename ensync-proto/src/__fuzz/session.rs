//! Fuzz entry point: session (SKELETON, being written).

/// Feeds arbitrary bytes to the session code under test; must never panic.
pub fn run(data: &[u8]) {
    let _ = data;
}
