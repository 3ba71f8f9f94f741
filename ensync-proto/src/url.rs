//! SKELETON: url (being written).
