//! SKELETON: payload_meta (being written).
