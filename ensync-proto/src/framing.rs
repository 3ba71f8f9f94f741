//! SKELETON: framing (being written).
