//! A Prometheus-format time-series database engine.
//!
//! Everything here reads and writes bytes exactly as Prometheus does (see
//! `../shared/spec/tsdb-format.md`): blocks that promtool and Prometheus open, and
//! Prometheus's blocks opened by us. The crate is synchronous and does no networking;
//! async callers run it on blocking threads.

pub mod backfill;
pub mod block;
pub mod chunkenc;
pub mod chunks;
pub mod compact;
pub mod db;
pub mod encoding;
pub mod error;
pub mod exemplar;
pub mod head;
pub mod index;
pub mod meta;
pub mod mmap;
pub mod series;
pub mod tombstones;
pub mod wal;

pub use error::{Result, TsdbError};
