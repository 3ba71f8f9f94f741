//! Fuzz entry point: frame (SKELETON, being written).

/// Feeds arbitrary bytes to the frame code under test; must never panic.
pub fn run(data: &[u8]) {
    let _ = data;
}
