//! Downsampling as Thanos's compactor does it (`pkg/compact/downsample`): raw blocks
//! spanning at least 40h get a 5m copy, 5m blocks spanning at least 10 days a 1h copy.
//! Each series becomes aggregate chunks (count, sum, min, max, counter per window; see
//! [`norn_tsdb::chunkenc::aggr`]) of about 140 windows each; windows end at
//! `k · resolution − 1` and are clipped to the batch's last sample.
//!
//! The counter aggregate folds counter resets into a running total and keeps each chunk's
//! first and last raw samples (the last one under the timestamp of the last window), so a
//! later pass, or a query across chunks, can still see resets between chunks.
//!
//! Native-histogram samples are not downsampled (Thanos does, with float-histogram
//! aggregates): they are left out of the downsampled block and counted in the log.

use std::path::Path;

use bytes::Bytes;
use norn_model::Labels;
use norn_tsdb::block::{Block, BlockWriter};
use norn_tsdb::chunkenc::aggr::{AGGR_ENCODING, AggrChunk, AggrType};
use norn_tsdb::chunkenc::{Chunk, Encoding, STALE_NAN_BITS, Sample, XorChunk};
use norn_tsdb::chunks::RawChunkMeta;
use norn_tsdb::meta::BlockMeta;

/// 5 minutes in ms.
pub const RES_5M: i64 = 5 * 60 * 1000;
/// 1 hour in ms.
pub const RES_1H: i64 = 60 * 60 * 1000;
/// Raw blocks spanning at least this long (40h) are downsampled to 5m.
pub const RANGE_5M: i64 = 40 * 60 * 60 * 1000;
/// 5m blocks spanning at least this long (10 days) are downsampled to 1h.
pub const RANGE_1H: i64 = 10 * 24 * 60 * 60 * 1000;
/// Windows per aggregate chunk the chunk count aims below.
const WINDOWS_PER_CHUNK: i64 = 140;
/// The raw scrape interval assumed when sizing chunks (Thanos's heuristic).
const ASSUMED_RAW_INTERVAL: i64 = 60 * 1000;

fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// End of the window of `t` (inclusive), as Thanos computes it (truncating remainder);
/// saturates instead of overflowing near `i64::MAX`.
pub fn current_window(t: i64, r: i64) -> i64 {
    (t - (t % r)).saturating_add(r - 1)
}

/// Fraction of `[mint, maxt]` that `count` samples `step` apart cover, at most 1.
fn range_fullness(mint: i64, maxt: i64, step: i64, count: usize) -> f64 {
    let f = count as f64 / (maxt.saturating_sub(mint) as f64 / step as f64);
    if f > 1.0 { 1.0 } else { f }
}

/// How many chunks a series of `count` samples at `in_res` over `[mint, maxt]` becomes at
/// `out_res`: enough for fewer than 140 windows each on average.
pub fn target_chunk_count(mint: i64, maxt: i64, in_res: i64, out_res: i64, count: usize) -> usize {
    let max_samples = (maxt.saturating_sub(mint) / out_res) as f64;
    let expected = ((max_samples * range_fullness(mint, maxt, in_res, count)) as i64).saturating_add(1);
    // The smallest x with expected / x ≤ 140 (Thanos counts up to it).
    (expected / (WINDOWS_PER_CHUNK + 1)).saturating_add(1).max(1) as usize
}

/// Running aggregates of one window, and the counter state since the batch began.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregator {
    /// Samples seen since the batch began.
    pub total: usize,
    /// Samples of the current window.
    pub count: usize,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// Counter value with resets folded in, since the batch began.
    pub counter: f64,
    /// The previous sample.
    pub last: f64,
}

impl Aggregator {
    fn reset(&mut self) {
        self.count = 0;
        self.sum = 0.0;
        self.min = f64::MAX;
        self.max = -f64::MAX;
    }

    fn add(&mut self, v: f64) {
        if self.total > 0 {
            // A drop is a counter reset: the counter restarted from zero and is now at v.
            if v < self.last { self.counter += v } else { self.counter += v - self.last }
        } else {
            self.counter = v;
        }
        self.last = v;
        self.sum += v;
        self.count += 1;
        self.total += 1;
        if v < self.min {
            self.min = v;
        }
        if v > self.max {
            self.max = v;
        }
    }
}

/// Aggregates `data` (sorted) per window of `res` and calls `emit(window end, state)` at
/// the end of each window; the last window ends at the last sample's time at the latest,
/// so a following batch never overlaps. Returns the last window's timestamp.
pub fn downsample_batch(data: &[(i64, f64)], res: i64, mut emit: impl FnMut(i64, &Aggregator)) -> i64 {
    let mut a = Aggregator::default();
    // Thanos starts from -1 as "no window yet", which mis-aggregates negative timestamps.
    let mut next_t: Option<i64> = None;
    let Some(&(last_t, _)) = data.last() else { return -1 };
    for &(t, v) in data {
        if next_t.is_none_or(|n| t > n) {
            if let Some(n) = next_t {
                emit(n, &a);
            }
            a.reset();
            next_t = Some(current_window(t, res).min(last_t));
        }
        a.add(v);
    }
    let end = next_t.unwrap_or(-1);
    if a.total > 0 {
        emit(end, &a);
    }
    end
}

/// One aggregate chunk under construction.
struct Builder {
    mint: i64,
    maxt: i64,
    parts: [Option<XorChunk>; 5],
}

impl Builder {
    fn new() -> Builder {
        Builder { mint: i64::MAX, maxt: i64::MIN, parts: Default::default() }
    }

    fn all() -> Builder {
        let mut b = Builder::new();
        for p in b.parts.iter_mut() {
            *p = Some(XorChunk::new());
        }
        b
    }

    fn append(&mut self, t: AggrType, ts: i64, v: f64) {
        self.parts[t as usize].get_or_insert_with(XorChunk::new).append(ts, v);
    }

    fn window(&mut self, t: i64) {
        self.mint = self.mint.min(t);
        self.maxt = self.maxt.max(t);
    }

    fn encode(self) -> (RawChunkMeta, u64) {
        let mut a = AggrChunk::default();
        for (slot, p) in a.parts.iter_mut().zip(self.parts) {
            *slot = p.map(|c| Chunk::new(Encoding::Xor, c.into_bytes()));
        }
        let n = a.num_samples() as u64;
        let meta = RawChunkMeta {
            min_time: self.mint,
            max_time: self.maxt,
            encoding: AGGR_ENCODING,
            data: Bytes::from(a.encode()),
        };
        (meta, n)
    }
}

/// Aggregate chunks of raw float samples (sorted by time, stale markers already left
/// out), with the number of windows written (the block's sample count).
pub fn downsample_raw(data: &[(i64, f64)], res: i64) -> (Vec<RawChunkMeta>, u64) {
    let (Some(first), Some(last)) = (data.first(), data.last()) else { return (Vec::new(), 0) };
    let n_chunks = target_chunk_count(first.0, last.0, ASSUMED_RAW_INTERVAL, res, data.len());
    let batch_size = data.len() / n_chunks + 1;
    let mut out = Vec::with_capacity(n_chunks);
    let mut total = 0;
    let mut rest = data;
    while !rest.is_empty() {
        let mut j = batch_size.min(rest.len());
        // A batch ends at a window's end, so every window lies within one chunk.
        let end = current_window(rest[j - 1].0, res);
        while j < rest.len() && rest[j].0 <= end {
            j += 1;
        }
        let batch: Vec<(i64, f64)> = rest[..j].iter().copied().filter(|s| !s.1.is_nan()).collect();
        rest = &rest[j..];
        if batch.is_empty() {
            continue;
        }
        let mut b = Builder::all();
        // The counter chunk starts with the first raw sample and ends with the last.
        b.append(AggrType::Counter, batch[0].0, batch[0].1);
        let last_t = downsample_batch(&batch, res, |t, a| {
            b.window(t);
            b.append(AggrType::Count, t, a.count as f64);
            b.append(AggrType::Sum, t, a.sum);
            b.append(AggrType::Min, t, a.min);
            b.append(AggrType::Max, t, a.max);
            b.append(AggrType::Counter, t, a.counter);
        });
        b.append(AggrType::Counter, last_t, batch[batch.len() - 1].1);
        let (c, n) = b.encode();
        out.push(c);
        total += n;
    }
    (out, total)
}

/// Samples of a float chunk without stale markers, going forward in time only.
fn expand_xor(c: &Chunk, out: &mut Vec<(i64, f64)>) -> Result<(), String> {
    let mut it = c.iter().map_err(|e| e.to_string())?;
    let mut last_t = i64::MIN;
    for s in it.by_ref() {
        if let Sample::Float(t, v) = s
            && !is_stale(v)
            && t >= last_t
        {
            out.push((t, v));
            last_t = t;
        }
    }
    it.err().map_or(Ok(()), |e| Err(e.to_string()))
}

/// Thanos's `ApplyCounterResetsSeriesIterator` over the counter chunks of consecutive
/// aggregate chunks: a monotonic series of the counter with resets folded in. A sample
/// repeating the previous timestamp is a chunk's true last raw value: it is not emitted
/// but is what the next chunk's first value is compared with. Returns the samples and
/// the true last raw value.
pub fn apply_counter_resets(chunks: &[Vec<(i64, f64)>]) -> (Vec<(i64, f64)>, f64) {
    let mut out: Vec<(i64, f64)> = Vec::new();
    let (mut last_t, mut last_v, mut total_v) = (i64::MIN, 0.0, 0.0);
    for &(t, v) in chunks.iter().flatten() {
        if v.is_nan() {
            continue;
        }
        if out.is_empty() {
            (last_t, last_v, total_v) = (t, v, v);
        } else if t > last_t {
            total_v += if v >= last_v { v - last_v } else { v };
            (last_t, last_v) = (t, v);
        } else {
            if t == last_t {
                last_v = v;
            }
            continue;
        }
        out.push((t, total_v));
    }
    (out, last_v)
}

/// Re-aggregates consecutive aggregate chunks of one float series at `res`.
fn downsample_aggr_batch(chunks: &[AggrChunk], res: i64) -> Result<(RawChunkMeta, u64), String> {
    let mut b = Builder::new();
    let mut buf: Vec<(i64, f64)> = Vec::new();
    // Count, sum, min and max: the same window aggregation over the finer windows' values
    // (counts are summed).
    for (at, pick) in [
        (AggrType::Count, (|a: &Aggregator| a.sum) as fn(&Aggregator) -> f64),
        (AggrType::Sum, |a| a.sum),
        (AggrType::Min, |a| a.min),
        (AggrType::Max, |a| a.max),
    ] {
        buf.clear();
        for c in chunks {
            if let Some(sub) = c.get(at) {
                expand_xor(sub, &mut buf).map_err(|e| format!("{} aggregate: {e}", at.name()))?;
            }
        }
        if buf.is_empty() {
            continue;
        }
        downsample_batch(&buf, res, |t, a| {
            b.window(t);
            b.append(at, t, pick(a));
        });
    }
    let mut counters = Vec::with_capacity(chunks.len());
    for c in chunks {
        if let Some(sub) = c.get(AggrType::Counter) {
            let mut v = Vec::new();
            expand_xor(sub, &mut v).map_err(|e| format!("counter aggregate: {e}"))?;
            counters.push(v);
        }
    }
    let (series, last_raw) = apply_counter_resets(&counters);
    if let Some(&(t0, v0)) = series.first() {
        b.append(AggrType::Counter, t0, v0);
        let last_t = downsample_batch(&series, res, |t, a| {
            b.window(t);
            b.append(AggrType::Counter, t, a.counter);
        });
        b.append(AggrType::Counter, last_t, last_raw);
    }
    if b.mint > b.maxt {
        return Err("aggregate chunks without samples".into());
    }
    Ok(b.encode())
}

/// Aggregate chunks of a series' aggregate chunks (from a block at `in_res`) at `out_res`.
/// Chunks are only ever combined whole, so each chunk's first and last raw counter
/// values survive.
pub fn downsample_aggr(
    chunks: &[(i64, i64, AggrChunk)],
    in_res: i64,
    out_res: i64,
) -> Result<(Vec<RawChunkMeta>, u64), String> {
    let (Some(first), Some(last)) = (chunks.first(), chunks.last()) else { return Ok((Vec::new(), 0)) };
    let samples: usize = chunks.iter().map(|c| c.2.num_samples()).sum();
    let n_chunks = target_chunk_count(first.0, last.1, in_res, out_res, samples);
    let batch = (chunks.len() / n_chunks).max(1);
    let aggrs: Vec<AggrChunk> = chunks.iter().map(|c| c.2.clone()).collect();
    let mut out = Vec::new();
    let mut total = 0;
    for part in aggrs.chunks(batch) {
        let (c, n) = downsample_aggr_batch(part, out_res)?;
        out.push(c);
        total += n;
    }
    Ok((out, total))
}

/// What downsampling one block did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockReport {
    pub series: usize,
    /// Series with native-histogram samples, which were left out.
    pub histogram_series: usize,
}

/// Downsamples the block in `src` (whose meta is `meta`, at resolution `in_res`) to
/// `out_res`, writing the new block under `out_parent`. The new block keeps the time
/// range and compaction section of the source; its `thanos` section is for the caller
/// to write at upload.
pub fn downsample_block(
    src: &Path,
    meta: &BlockMeta,
    in_res: i64,
    out_res: i64,
    out_parent: &Path,
) -> Result<(BlockMeta, BlockReport), String> {
    if in_res >= out_res {
        return Err(format!("target resolution {out_res} not coarser than the block's {in_res}"));
    }
    let block = Block::open(src).map_err(|e| format!("opening {}: {e}", src.display()))?;
    let mut w = BlockWriter::new(out_parent, meta.min_time, meta.max_time).map_err(|e| e.to_string())?;
    w.set_compaction(meta.compaction.clone());
    let mut report = BlockReport::default();
    let ids = block.index().all_postings().map_err(|e| e.to_string())?;
    let mut refs = Vec::new();
    let mut samples: Vec<(i64, f64)> = Vec::new();
    for id in ids {
        let labels: Labels = block.index().series_into(id, &mut refs).map_err(|e| e.to_string())?;
        let ctx = |e: String| format!("series {labels}: {e}");
        for (i, r) in refs.iter().enumerate().skip(1) {
            if refs[i - 1].max_time >= r.min_time {
                return Err(ctx(format!(
                    "overlapping chunks [{}, {}] and [{}, {}]",
                    refs[i - 1].min_time,
                    refs[i - 1].max_time,
                    r.min_time,
                    r.max_time
                )));
            }
        }
        let mut has_histograms = false;
        let (chunks, n) = if in_res == 0 {
            samples.clear();
            for r in &refs {
                let c = block.chunks().chunk(r.chunk_ref).map_err(|e| ctx(e.to_string()))?;
                if c.encoding == Encoding::Xor {
                    expand_xor(&c, &mut samples).map_err(ctx)?;
                } else {
                    has_histograms = true;
                }
            }
            downsample_raw(&samples, out_res)
        } else {
            let mut aggrs = Vec::with_capacity(refs.len());
            for r in &refs {
                let (enc, data) = block.chunks().raw_chunk(r.chunk_ref).map_err(|e| ctx(e.to_string()))?;
                if enc == AGGR_ENCODING {
                    let a = AggrChunk::decode(&data).map_err(|e| ctx(e.to_string()))?;
                    if a.is_histogram() {
                        has_histograms = true;
                    } else {
                        aggrs.push((r.min_time, r.max_time, a));
                    }
                    continue;
                }
                // A raw chunk in a downsampled block (Thanos has written such): aggregate
                // it at the finest resolution first; empty ones are dropped.
                let c = Chunk::new(Encoding::from_u8(enc).map_err(|e| ctx(e.to_string()))?, data);
                if c.encoding != Encoding::Xor {
                    has_histograms = true;
                    continue;
                }
                samples.clear();
                expand_xor(&c, &mut samples).map_err(ctx)?;
                for m in downsample_raw(&samples, RES_5M).0 {
                    let a = AggrChunk::decode(&m.data).map_err(|e| ctx(e.to_string()))?;
                    aggrs.push((m.min_time, m.max_time, a));
                }
            }
            downsample_aggr(&aggrs, in_res, out_res).map_err(ctx)?
        };
        if has_histograms {
            report.histogram_series += 1;
        }
        if chunks.is_empty() {
            continue;
        }
        w.add_series_raw(&labels, &chunks, n).map_err(|e| e.to_string())?;
        report.series += 1;
    }
    let out = w.finish().map_err(|e| e.to_string())?;
    Ok((out, report))
}

/// Merges downsampled blocks of one group into one under `out_parent` (their chunks are
/// passed through; the aggregate chunks are not re-encoded). Blocks whose series' chunks
/// overlap are refused: vertical compaction of downsampled data is not supported.
pub fn merge_downsampled(srcs: &[&Path], out_parent: &Path) -> Result<BlockMeta, String> {
    let blocks = srcs
        .iter()
        .map(|d| Block::open(d).map_err(|e| format!("opening {}: {e}", d.display())))
        .collect::<Result<Vec<_>, _>>()?;
    let metas: Vec<&BlockMeta> = blocks.iter().map(|b| b.meta()).collect();
    let (Some(mint), Some(maxt)) = (metas.iter().map(|m| m.min_time).min(), metas.iter().map(|m| m.max_time).max())
    else {
        return Err("no blocks to merge".into());
    };
    let mut all: Vec<(Labels, usize, Vec<norn_tsdb::chunks::ChunkRef>)> = Vec::new();
    for (bi, b) in blocks.iter().enumerate() {
        for id in b.index().all_postings().map_err(|e| e.to_string())? {
            let (l, refs) = b.index().series(id).map_err(|e| e.to_string())?;
            all.push((l, bi, refs));
        }
    }
    // Stable: a series' parts stay in block order.
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut w = BlockWriter::new(out_parent, mint, maxt).map_err(|e| e.to_string())?;
    w.set_compaction(norn_tsdb::compact::merged_compaction(&metas));
    let mut i = 0;
    while i < all.len() {
        let mut j = i + 1;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let labels = &all[i].0;
        let mut chunks: Vec<RawChunkMeta> = Vec::new();
        let mut n = 0u64;
        for (_, bi, refs) in &all[i..j] {
            for r in refs {
                let (enc, data) = blocks[*bi].chunks().raw_chunk(r.chunk_ref).map_err(|e| e.to_string())?;
                n += if enc == AGGR_ENCODING {
                    AggrChunk::decode(&data).map_err(|e| format!("series {labels}: {e}"))?.num_samples() as u64
                } else {
                    Chunk::new(Encoding::from_u8(enc).map_err(|e| e.to_string())?, data.clone()).num_samples() as u64
                };
                chunks.push(RawChunkMeta { min_time: r.min_time, max_time: r.max_time, encoding: enc, data });
            }
        }
        chunks.sort_by_key(|c| (c.min_time, c.max_time));
        w.add_series_raw(labels, &chunks, n)
            .map_err(|e| format!("{e} (overlapping downsampled blocks are not merged)"))?;
        i = j;
    }
    w.finish().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The aggregates of an encoded chunk as (timestamp, value) lists.
    fn decode(c: &RawChunkMeta) -> Vec<Vec<(i64, f64)>> {
        assert_eq!(c.encoding, AGGR_ENCODING);
        let a = AggrChunk::decode(&c.data).unwrap();
        AggrType::ALL
            .iter()
            .map(|&t| {
                let mut v = Vec::new();
                if let Some(s) = a.get(t) {
                    expand_xor(s, &mut v).unwrap();
                }
                v
            })
            .collect()
    }

    #[test]
    fn windows_and_chunk_counts() {
        for (t, r, want) in [
            (0, 300_000, 299_999),
            (299_999, 300_000, 299_999),
            (300_000, 300_000, 599_999),
            (i64::MAX, 300_000, i64::MAX),
        ] {
            assert_eq!(current_window(t, r), want);
        }
        // Thanos's loop: the smallest x with expected / x ≤ 140.
        for count in [1usize, 100, 140, 141, 700, 705, 11_520, 1_000_000] {
            let (mint, maxt) = (0, count as i64 * 60_000);
            let x = target_chunk_count(mint, maxt, 60_000, 60_000, count);
            let expected = count as i64 + 1;
            assert!(expected / x as i64 <= 140 && (x == 1 || expected / (x as i64 - 1) > 140), "{count}: {x}");
        }
        assert!(target_chunk_count(i64::MIN, i64::MAX, 60_000, RES_5M, 3) >= 1);
        // 2 days of 15s samples at 5m: 576 windows → 5 chunks (≤ 140 windows each).
        assert_eq!(target_chunk_count(0, 2 * 86_400_000, 60_000, RES_5M, 11_520), 5);
        // Sparse data: the expected windows shrink with the fullness.
        assert_eq!(target_chunk_count(0, 2 * 86_400_000, 60_000, RES_5M, 100), 1);
        assert_eq!(target_chunk_count(5, 5, 60_000, RES_5M, 1), 1);
    }

    const M: i64 = 60_000;

    #[test]
    fn raw_to_5m_hand_computed() {
        // Minute samples of a counter that resets at 7m, with a stale marker and a NaN.
        // Windows end at 4m59.999s, 9m59.999s, and (clipped to the last sample) 11m.
        let stale = f64::from_bits(STALE_NAN_BITS);
        let raw: Vec<(i64, f64)> = vec![
            (0, 1.0),
            (M, 3.0),
            (2 * M, 5.0),
            (3 * M, f64::NAN),
            (4 * M, 6.0),
            (5 * M, 8.0),
            (6 * M, 10.0),
            (7 * M, 2.0),
            (8 * M, 4.0),
            (10 * M, 5.0),
            (11 * M, 7.0),
        ];
        let mut data = raw.clone();
        data.insert(9, (9 * M, stale));
        data.retain(|s| !is_stale(s.1)); // the block reader drops stale markers
        let (chunks, n) = downsample_raw(&data, RES_5M);
        assert_eq!((chunks.len(), n), (1, 3));
        let (w1, w2, w3) = (5 * M - 1, 10 * M - 1, 11 * M);
        assert_eq!((chunks[0].min_time, chunks[0].max_time), (w1, w3));
        let got = decode(&chunks[0]);
        // count, sum, min, max
        assert_eq!(got[0], vec![(w1, 4.0), (w2, 4.0), (w3, 2.0)]);
        assert_eq!(got[1], vec![(w1, 15.0), (w2, 24.0), (w3, 12.0)]);
        assert_eq!(got[2], vec![(w1, 1.0), (w2, 2.0), (w3, 5.0)]);
        assert_eq!(got[3], vec![(w1, 6.0), (w2, 10.0), (w3, 7.0)]);
        // counter: first raw sample, per window 1→6 (+5), then 8, 10, reset to 2 (+2), 4
        // → 6+4+2+2 = 14, then 5, 7 → 17; last raw value under the last window's time.
        assert_eq!(got[4], vec![(0, 1.0), (w1, 6.0), (w2, 14.0), (w3, 17.0), (w3, 7.0)]);
    }

    #[test]
    fn raw_batches_cut_at_window_ends() {
        // 3 days of minute samples, constant 1: 864 windows of 5 samples → 7 chunks,
        // each ending on a window end, together covering every sample once.
        let data: Vec<(i64, f64)> = (0..3 * 1440).map(|i| (i * M, 1.0)).collect();
        let (chunks, n) = downsample_raw(&data, RES_5M);
        assert_eq!(chunks.len(), target_chunk_count(0, data.last().unwrap().0, M, RES_5M, data.len()));
        assert_eq!(n, 864);
        let mut count = 0.0;
        for (i, c) in chunks.iter().enumerate() {
            let got = decode(c);
            count += got[0].iter().map(|s| s.1).sum::<f64>();
            assert!(got[0].iter().all(|s| s.1 == 5.0), "chunk {i}: whole windows only");
            if i > 0 {
                assert!(c.min_time > chunks[i - 1].max_time);
            }
        }
        assert_eq!(count, data.len() as f64);
    }

    #[test]
    fn counter_resets_across_chunks() {
        // Two chunks' counters: the second chunk starts below the first's last raw value
        // (12, kept under a repeated timestamp), so a reset between them is seen.
        let a = vec![(0, 10.0), (100, 15.0), (100, 12.0)];
        let b = vec![(200, 3.0), (300, 9.0), (300, 9.0)];
        let (s, last) = apply_counter_resets(&[a, b]);
        assert_eq!(s, vec![(0, 10.0), (100, 15.0), (200, 18.0), (300, 24.0)]);
        assert_eq!(last, 9.0);
        // No reset when the next chunk continues above the last raw value.
        let (s, _) = apply_counter_resets(&[vec![(0, 1.0), (10, 4.0), (10, 4.0)], vec![(20, 6.0), (20, 6.0)]]);
        assert_eq!(s, vec![(0, 1.0), (10, 4.0), (20, 6.0)]);
    }

    #[test]
    fn five_minutes_to_one_hour_hand_computed() {
        // Two 5m chunks of a counter over 2h, the second after a reset.
        let h = 60 * M;
        let first: Vec<(i64, f64)> = (0..60).map(|i| (i * M, i as f64)).collect(); // 0..59 over the first hour
        let second: Vec<(i64, f64)> = (60..120).map(|i| (i * M, (i - 60) as f64 * 2.0)).collect(); // reset, 0..118
        let (c1, _) = downsample_raw(&first, RES_5M);
        let (c2, _) = downsample_raw(&second, RES_5M);
        let aggrs: Vec<(i64, i64, AggrChunk)> =
            c1.iter().chain(&c2).map(|c| (c.min_time, c.max_time, AggrChunk::decode(&c.data).unwrap())).collect();
        assert_eq!(aggrs.len(), 2);
        let (out, n) = downsample_aggr(&aggrs, RES_5M, RES_1H).unwrap();
        assert_eq!((out.len(), n), (1, 2));
        let got = decode(&out[0]);
        let (w1, w2) = (h - 1, 119 * M);
        assert_eq!(got[0], vec![(w1, 60.0), (w2, 60.0)]);
        assert_eq!(got[1], vec![(w1, (0..60).sum::<i64>() as f64), (w2, (0..60).map(|i| 2 * i).sum::<i64>() as f64)]);
        assert_eq!(got[2], vec![(w1, 0.0), (w2, 0.0)]);
        assert_eq!(got[3], vec![(w1, 59.0), (w2, 118.0)]);
        // Counter: 59 in the first hour, then the reset adds the full 118 → 177; the last
        // raw value is 118.
        assert_eq!(got[4], vec![(0, 0.0), (w1, 59.0), (w2, 177.0), (w2, 118.0)]);
    }

    proptest::proptest! {
        /// Whatever the samples, each window of each chunk aggregates exactly the raw
        /// samples of that window, chunks do not overlap, and the counter chunks carry the
        /// counter's whole increase.
        #[test]
        fn raw_downsampling_matches_a_direct_computation(
            gaps in proptest::collection::vec((1i64..400_000, -5i32..20), 1..600),
            start in 0i64..10_000_000,
        ) {
            let mut t = start;
            let mut v = 0.0f64;
            let mut data = Vec::new();
            for (g, d) in gaps {
                t += g;
                v = if d < 0 { f64::from(-d) } else { v + f64::from(d) };
                data.push((t, v));
            }
            let (chunks, n) = downsample_raw(&data, RES_5M);
            let mut want: std::collections::BTreeMap<i64, (f64, f64, f64, f64)> = Default::default();
            for &(t, v) in &data {
                let e = want.entry(t / RES_5M).or_insert((0.0, 0.0, f64::MAX, -f64::MAX));
                *e = (e.0 + 1.0, e.1 + v, e.2.min(v), e.3.max(v));
            }
            proptest::prop_assert_eq!(n as usize, want.len());
            let mut got = Vec::new();
            let mut increase = 0.0;
            for (i, c) in chunks.iter().enumerate() {
                if i > 0 {
                    proptest::prop_assert!(c.min_time > chunks[i - 1].max_time);
                }
                let a = decode(c);
                for (k, &(t, cnt)) in a[0].iter().enumerate() {
                    got.push((t / RES_5M, (cnt, a[1][k].1, a[2][k].1, a[3][k].1)));
                }
                let ctr = &a[4];
                proptest::prop_assert_eq!(ctr.len(), a[0].len() + 2);
                increase += ctr[ctr.len() - 2].1 - ctr[0].1;
            }
            let want: Vec<(i64, (f64, f64, f64, f64))> = want.into_iter().collect();
            proptest::prop_assert_eq!(got.len(), want.len());
            for ((gw, g), (ww, w)) in got.iter().zip(&want) {
                proptest::prop_assert_eq!(gw, ww);
                proptest::prop_assert_eq!((g.0, g.2, g.3), (w.0, w.2, w.3));
                proptest::prop_assert!((g.1 - w.1).abs() <= 1e-9 * w.1.abs().max(1.0));
            }
            // Within chunks the counter adds every rise and every post-reset value; across
            // chunk boundaries a reader does that from the kept raw values.
            let mut true_inc = 0.0;
            let mut between = 0.0;
            let firsts: std::collections::HashSet<i64> = chunks.iter().map(|c| decode(c)[4][0].0).collect();
            for w in data.windows(2) {
                let d = if w[1].1 >= w[0].1 { w[1].1 - w[0].1 } else { w[1].1 };
                true_inc += d;
                if firsts.contains(&w[1].0) {
                    between += d;
                }
            }
            proptest::prop_assert_eq!(increase + between, true_inc);
        }
    }
}
