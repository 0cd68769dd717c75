//! What every Norn component shares: HTTP/gRPC servers, health, metrics (not built yet).
//!
//! This crate is a placeholder in the workspace layout; it exports nothing yet.
