//! norn receive: remote-write ingestion (issue 3: not built yet).
//!
//! This crate is a placeholder in the workspace layout; it exports nothing yet.
