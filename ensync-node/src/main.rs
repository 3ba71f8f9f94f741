//! The `ensync` command-line tool.
fn main() {}
