//! Helpers shared by the cross-crate tests (finding Python, starting a node).

pub mod node;
