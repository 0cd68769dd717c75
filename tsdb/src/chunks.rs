//! Block chunk metadata shared by the head, blocks and compaction.
//!
//! Placeholder carrying only the shared-contract type until the block helper's full
//! `chunks.rs` (segment writer/reader) is merged; on merge their file replaces this one.

use crate::chunkenc::Chunk;

/// A chunk together with the closed time range `[min_time, max_time]` of its samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMeta {
    /// Timestamp of the first sample.
    pub min_time: i64,
    /// Timestamp of the last sample (inclusive).
    pub max_time: i64,
    /// The encoded chunk.
    pub chunk: Chunk,
}
