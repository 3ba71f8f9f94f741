//! SKELETON: ws (being written).
