//! PromQL engine for Norn (issue 4: not built yet).
//!
//! This crate is a placeholder in the workspace layout; it exports nothing yet.
