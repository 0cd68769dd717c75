//! norn compact: bucket compactor (not built yet).
//!
//! This crate is a placeholder in the workspace layout; it exports nothing yet.
