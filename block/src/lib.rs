//! Blocks in a bucket: Thanos meta.json, shipper, fetcher (not built yet).
//!
//! This crate is a placeholder in the workspace layout; it exports nothing yet.
