//! Fuzz entry point: envelope (SKELETON, being written).

/// Feeds arbitrary bytes to the envelope code under test; must never panic.
pub fn run(data: &[u8]) {
    let _ = data;
}
