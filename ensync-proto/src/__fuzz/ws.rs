//! Fuzz entry point: ws (SKELETON, being written).

/// Feeds arbitrary bytes to the ws code under test; must never panic.
pub fn run(data: &[u8]) {
    let _ = data;
}
