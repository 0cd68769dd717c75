//! Merging blocks into one (Prometheus's `LeveledCompactor.Compact`), including
//! overlapping blocks: series present in several inputs get all their chunks, and where
//! chunks overlap or samples are deleted the samples are merged, deduplicated and
//! re-encoded into XOR chunks of at most 120 samples.

use std::path::Path;

use crate::block::{Block, BlockWriter};
use crate::chunkenc::Sample;
use crate::meta::{BlockMeta, BlockMetaCompaction};
use crate::series::{SAMPLES_PER_CHUNK, Series, encode_float_chunks, merge_series};
use crate::{Result, TsdbError};

/// Hint kept on a merged block only if every input has it.
const HINT_OOO: &str = "from-out-of-order";

/// The compaction section of a block merged from `metas`, per spec §2.
pub fn merged_compaction(metas: &[&BlockMeta]) -> BlockMetaCompaction {
    let level = metas.iter().map(|m| m.compaction.level).max().unwrap_or(0) + 1;
    let mut sources: Vec<_> = metas.iter().flat_map(|m| m.compaction.sources.iter().copied()).collect();
    sources.sort();
    sources.dedup();
    let parents = metas.iter().map(|m| m.desc()).collect();
    let mut hints: Vec<String> = Vec::new();
    for m in metas {
        for h in &m.compaction.hints {
            let keep = if h == HINT_OOO { metas.iter().all(|o| o.compaction.hints.contains(h)) } else { true };
            if keep && !hints.contains(h) {
                hints.push(h.clone());
            }
        }
    }
    hints.sort();
    BlockMetaCompaction { level, sources, deletable: false, parents, failed: false, hints }
}

/// Rewrites a series whose chunks overlap or carry deletions into fresh, non-overlapping
/// XOR chunks; leaves other series untouched (chunks are passed through without decoding).
fn flatten(s: Series) -> Result<Series> {
    if !s.has_overlapping_chunks() && s.deleted.is_empty() {
        return Ok(s);
    }
    let mut floats = Vec::new();
    for smp in s.samples(i64::MIN, i64::MAX) {
        match smp? {
            Sample::Float(t, v) => floats.push((t, v)),
            other => {
                return Err(TsdbError::InvalidArgument(format!(
                    "series {}: merging overlapping histogram chunks (sample at {}) is not supported",
                    s.labels,
                    other.timestamp()
                )));
            }
        }
    }
    let chunks = encode_float_chunks(floats, SAMPLES_PER_CHUNK);
    Ok(Series { labels: s.labels, chunks, deleted: Vec::new() })
}

/// Merges `blocks` into a new block under `parent` and returns its meta: level one above
/// the highest input, sources the sorted union, parents in input order, time range the
/// union of the inputs'.
pub fn compact_blocks(blocks: &[&Block], parent: &Path) -> Result<BlockMeta> {
    if blocks.is_empty() {
        return Err(TsdbError::InvalidArgument("compaction needs at least one block".to_string()));
    }
    let metas: Vec<&BlockMeta> = blocks.iter().map(|b| b.meta()).collect();
    let min_time = metas.iter().map(|m| m.min_time).min().unwrap_or(0);
    let max_time = metas.iter().map(|m| m.max_time).max().unwrap_or(0);
    let sets = blocks.iter().map(|b| b.select_all(i64::MIN, i64::MAX)).collect::<Result<Vec<_>>>()?;
    let merged = merge_series(sets);
    let mut w = BlockWriter::new(parent, min_time, max_time)?;
    w.set_compaction(merged_compaction(&metas));
    for s in merged {
        let s = flatten(s)?;
        w.add_series(&s.labels, &s.chunks)?;
    }
    w.finish()
}
