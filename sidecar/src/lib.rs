//! norn sidecar (issue 6: not built yet).
//!
//! This crate is a placeholder in the workspace layout; it exports nothing yet.
