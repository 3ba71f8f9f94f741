//! SKELETON: the EnSync-compatible node (being written).
