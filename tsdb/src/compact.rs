//! Merging blocks into one (Prometheus's `LeveledCompactor.Compact`), including
//! overlapping blocks: series present in several inputs get all their chunks, and where
//! chunks overlap or samples are deleted the samples are merged, deduplicated and
//! re-encoded into XOR chunks of at most 120 samples.

use std::path::Path;

use crate::block::{Block, BlockWriter};
use crate::meta::{BlockMeta, BlockMetaCompaction};
use crate::series::{SAMPLES_PER_CHUNK, Series, apply_deletions, merge_overlapping_chunks, merge_series};
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

/// Applies a series' deletions to its chunks and re-encodes groups of overlapping chunks
/// into chunks of at most 120 samples; other chunks are passed through undecoded.
fn flatten(s: Series) -> Result<Series> {
    let labels = s.labels.clone();
    let with_context = |e: TsdbError| match e {
        TsdbError::InvalidArgument(m) => TsdbError::InvalidArgument(format!("series {labels}: {m}")),
        e => e,
    };
    let s = apply_deletions(s).map_err(with_context)?;
    merge_overlapping_chunks(s, SAMPLES_PER_CHUNK).map_err(with_context)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockWriter;
    use crate::chunkenc::Sample;
    use crate::meta::BlockDesc;
    use crate::series::{encode_float_chunks, encode_samples};
    use crate::tombstones::{Tombstones, write_tombstones};
    use norn_model::Labels;

    fn write(parent: &Path, mint: i64, maxt: i64, series: &[(&str, Vec<(i64, f64)>)]) -> Block {
        let mut w = BlockWriter::new(parent, mint, maxt).unwrap();
        for (name, s) in series {
            w.add_series(&Labels::from_pairs([("s", *name)]), &encode_float_chunks(s.iter().copied(), 50)).unwrap();
        }
        let meta = w.finish().unwrap();
        Block::open(&parent.join(meta.ulid.to_string())).unwrap()
    }

    fn dump(b: &Block) -> Vec<(String, Vec<(i64, f64)>)> {
        b.select_all(i64::MIN, i64::MAX)
            .unwrap()
            .iter()
            .map(|s| {
                let samples = s
                    .samples(i64::MIN, i64::MAX)
                    .map(|r| match r.unwrap() {
                        Sample::Float(t, v) => (t, v),
                        o => panic!("{o:?}"),
                    })
                    .collect();
                (s.labels.get("s").unwrap().to_string(), samples)
            })
            .collect()
    }

    fn range(a: i64, b: i64, v: f64) -> Vec<(i64, f64)> {
        (a..b).map(|t| (t, v + t as f64)).collect()
    }

    #[test]
    fn adjacent_blocks_pass_chunks_through() {
        let dir = tempfile::tempdir().unwrap();
        let b1 = write(dir.path(), 0, 100, &[("a", range(0, 100, 0.0)), ("b", range(10, 20, 0.0))]);
        let b2 = write(dir.path(), 100, 200, &[("a", range(100, 200, 0.0)), ("c", range(150, 160, 0.0))]);
        let out = dir.path().join("out");
        let meta = compact_blocks(&[&b1, &b2], &out).unwrap();
        assert_eq!((meta.min_time, meta.max_time), (0, 200));
        assert_eq!(meta.compaction.level, 2);
        let mut sources = vec![b1.meta().ulid, b2.meta().ulid];
        sources.sort();
        assert_eq!(meta.compaction.sources, sources);
        assert_eq!(
            meta.compaction.parents,
            vec![
                BlockDesc { ulid: b1.meta().ulid, min_time: 0, max_time: 100 },
                BlockDesc { ulid: b2.meta().ulid, min_time: 100, max_time: 200 }
            ]
        );
        assert_eq!(meta.stats.num_series, 3);
        assert_eq!(meta.stats.num_samples, 220);
        // Chunks were copied, not re-cut: 2 + 1 + 2 + 1 chunks of ≤50 samples.
        assert_eq!(meta.stats.num_chunks, 6);
        let c = Block::open(&out.join(meta.ulid.to_string())).unwrap();
        let got = dump(&c);
        assert_eq!(got[0], ("a".to_string(), range(0, 200, 0.0)));
        assert_eq!(got[1], ("b".to_string(), range(10, 20, 0.0)));
        assert_eq!(got[2], ("c".to_string(), range(150, 160, 0.0)));
        // Compacting the result again raises the level and keeps the sources.
        let meta2 = compact_blocks(&[&c], &out).unwrap();
        assert_eq!(meta2.compaction.level, 3);
        assert_eq!(meta2.compaction.sources, sources);
    }

    #[test]
    fn overlapping_blocks_merge_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        // Same samples in both (duplicates), plus distinct ones interleaved.
        let mut a2 = range(0, 300, 0.0);
        a2.retain(|(t, _)| t % 2 == 0);
        a2.extend((0..300).filter(|t| t % 3 == 0 && t % 2 != 0).map(|t| (t, t as f64)));
        a2.sort_by_key(|s| s.0);
        let b1 =
            write(dir.path(), 0, 300, &[("a", range(0, 300, 0.0).into_iter().filter(|(t, _)| t % 2 == 0).collect())]);
        let b2 = write(dir.path(), 0, 300, &[("a", a2), ("z", vec![(5, 5.0)])]);
        let out = dir.path().join("out");
        let meta = compact_blocks(&[&b1, &b2], &out).unwrap();
        let c = Block::open(&out.join(meta.ulid.to_string())).unwrap();
        let got = dump(&c);
        let want: Vec<(i64, f64)> = (0..300).filter(|t| t % 2 == 0 || t % 3 == 0).map(|t| (t, t as f64)).collect();
        assert_eq!(got[0].1, want);
        assert_eq!(got[1].1, vec![(5, 5.0)]);
        // Re-encoded into chunks of at most 120 samples, non-overlapping.
        let s = &c.select_all(i64::MIN, i64::MAX).unwrap()[0];
        assert!(!s.has_overlapping_chunks());
        assert!(s.chunks.iter().all(|ch| ch.chunk.num_samples() <= 120));
        assert_eq!(s.chunks.len(), want.len().div_ceil(120));
        assert_eq!(meta.stats.num_samples, want.len() as u64 + 1);
    }

    #[test]
    fn tombstones_are_applied_during_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let b1 = write(dir.path(), 0, 100, &[("a", range(0, 100, 0.0)), ("b", range(0, 10, 0.0))]);
        let ids = b1.index().all_postings().unwrap();
        let mut t = Tombstones::new();
        t.add(ids[0], (10, 89));
        t.add(ids[1], (0, 9));
        write_tombstones(b1.dir(), &t).unwrap();
        let b1 = Block::open(b1.dir()).unwrap();
        let out = dir.path().join("out");
        let meta = compact_blocks(&[&b1], &out).unwrap();
        assert_eq!(meta.stats.num_series, 1);
        assert_eq!(meta.stats.num_tombstones, 0);
        let c = Block::open(&out.join(meta.ulid.to_string())).unwrap();
        let got = dump(&c);
        let mut want = range(0, 10, 0.0);
        want.extend(range(90, 100, 0.0));
        assert_eq!(got, vec![("a".to_string(), want)]);
    }

    fn hist(count: u64) -> norn_model::Histogram {
        norn_model::Histogram {
            schema: 0,
            count,
            sum: count as f64 * 1.5,
            positive_spans: vec![norn_model::Span { offset: 0, length: 2 }],
            // Delta-encoded: bucket 0 = count, bucket 1 = 0.
            positive_buckets: vec![count as i64, -(count as i64)],
            ..Default::default()
        }
    }

    #[test]
    fn overlapping_histogram_blocks_merge() {
        let dir = tempfile::tempdir().unwrap();
        let l = Labels::from_pairs([("s", "h")]);
        let mk = |ts: &[i64]| {
            let samples: Vec<Sample> = ts.iter().map(|&t| Sample::Histogram(t, Box::new(hist(t as u64)))).collect();
            let chunks = encode_samples(samples, 120).unwrap();
            let mut w = BlockWriter::new(dir.path(), 0, 1000).unwrap();
            w.add_series(&l, &chunks).unwrap();
            let m = w.finish().unwrap();
            Block::open(&dir.path().join(m.ulid.to_string())).unwrap()
        };
        let b1 = mk(&(0..200).step_by(2).collect::<Vec<_>>());
        let b2 = mk(&(0..200).step_by(3).collect::<Vec<_>>());
        assert_eq!(b1.meta().stats.num_histogram_samples, 100);
        let out = dir.path().join("out");
        let meta = compact_blocks(&[&b1, &b2], &out).unwrap();
        let c = Block::open(&out.join(meta.ulid.to_string())).unwrap();
        let s = &c.select_all(i64::MIN, i64::MAX).unwrap()[0];
        let got: Vec<i64> = s.samples(i64::MIN, i64::MAX).map(|r| r.unwrap().timestamp()).collect();
        let want: Vec<i64> = (0..200).filter(|t| t % 2 == 0 || t % 3 == 0).collect();
        assert_eq!(got, want);
        for smp in s.samples(i64::MIN, i64::MAX) {
            match smp.unwrap() {
                Sample::Histogram(t, mut h) => {
                    // The decoder reports its own counter-reset hints; compare the values.
                    h.counter_reset_hint = Default::default();
                    assert_eq!(*h, hist(t as u64));
                }
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(meta.stats.num_histogram_samples, want.len() as u64);
        assert!(s.chunks.iter().all(|ch| ch.chunk.num_samples() <= 120));
    }

    #[test]
    fn hints_follow_prometheus() {
        let u = || ulid::Ulid::generate();
        let mut m1 = BlockMeta::new(u(), 0, 10);
        let mut m2 = BlockMeta::new(u(), 10, 20);
        m1.compaction.hints = vec!["from-out-of-order".into(), "from-stale-series".into()];
        m2.compaction.hints = vec!["from-out-of-order".into()];
        m2.compaction.level = 3;
        assert_eq!(merged_compaction(&[&m1, &m2]).hints, vec!["from-out-of-order", "from-stale-series"]);
        assert_eq!(merged_compaction(&[&m1, &m2]).level, 4);
        m2.compaction.hints.clear();
        assert_eq!(merged_compaction(&[&m1, &m2]).hints, vec!["from-stale-series"]);
        assert!(compact_blocks(&[], Path::new("/nonexistent")).is_err());
    }
}
