//! `norn tools …`: offline utilities that mirror promtool's, byte for byte in output.

pub mod format;
pub mod selector;
pub mod tsdb;
pub mod wal_head;
