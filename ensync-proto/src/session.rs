//! SKELETON: session (being written).
