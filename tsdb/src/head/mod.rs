//! The in-memory head block: appendable series backed by the WAL.

mod cutter;

pub use cutter::{ChunkCutter, DEFAULT_SAMPLES_PER_CHUNK, compute_chunk_end_time, range_for_timestamp};
