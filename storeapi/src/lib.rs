//! Thanos StoreAPI and Prometheus remote write/read wire types for Norn (not built yet).
//!
//! This crate is a placeholder in the workspace layout; it exports nothing yet.
