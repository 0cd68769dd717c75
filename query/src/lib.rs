//! norn query: StoreAPI fan-out and the Prometheus HTTP API (issue 5: not built yet).
//!
//! This crate is a placeholder in the workspace layout; it exports nothing yet.
