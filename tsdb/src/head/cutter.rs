//! Float chunk cutting exactly as Prometheus's head does it (spec §10.4), so chunks we
//! write (head compaction, backfill) have the same boundaries as Prometheus's.

use crate::chunkenc::{Chunk, Encoding, XorChunk};
use crate::chunks::ChunkMeta;

/// Default number of samples Prometheus aims for per float chunk.
pub const DEFAULT_SAMPLES_PER_CHUNK: usize = 120;

/// Prometheus's hard byte budget for an XOR chunk (`chunkenc.MaxBytesPerXORChunk`).
const MAX_BYTES_PER_XOR_CHUNK: usize = 1024;

/// Worst-case size of one encoded sample; a chunk is cut before an append could push it
/// past the byte budget, since the next sample's size is unknown in advance.
const MAX_BYTES_PER_SAMPLE: usize = 19;

/// Go's `rangeForTimestamp`: the exclusive end of the `width`-aligned range holding `t`.
/// Uses truncating division like Go, which matters for negative timestamps.
pub fn range_for_timestamp(t: i64, width: i64) -> i64 {
    (t / width).saturating_mul(width).saturating_add(width)
}

/// Go's `computeChunkEndTime`: once a chunk is `1/ratio_to_full` full, spread the rest
/// of the range up to `max` into equally sized chunks at the observed sample rate.
/// The float arithmetic (and its truncation) is part of the format's behaviour.
pub fn compute_chunk_end_time(start: i64, cur: i64, max: i64, ratio_to_full: f64) -> i64 {
    let n = (max - start) as f64 / ((cur - start + 1) as f64 * ratio_to_full);
    if n <= 1.0 {
        return max;
    }
    (start as f64 + (max - start) as f64 / n.floor()) as i64
}

/// Splits an in-order stream of float samples of one series into XOR chunks the way
/// Prometheus's head does: chunks never cross a `chunk_range` boundary, aim for ~120
/// samples spread evenly over the range, and stay under 1024 bytes.
#[derive(Debug, Clone)]
pub struct ChunkCutter {
    chunk_range: i64,
    samples_per_chunk: usize,
    cur: Option<OpenChunk>,
    /// Forced end of the open chunk (exclusive); may be moved earlier by prediction.
    next_at: i64,
}

#[derive(Debug, Clone)]
struct OpenChunk {
    chunk: XorChunk,
    min_time: i64,
    max_time: i64,
}

impl OpenChunk {
    fn into_meta(self) -> ChunkMeta {
        ChunkMeta {
            min_time: self.min_time,
            max_time: self.max_time,
            chunk: Chunk::new(Encoding::Xor, self.chunk.into_bytes()),
        }
    }
}

impl ChunkCutter {
    /// A cutter for blocks/chunk ranges of `chunk_range` milliseconds (2h = 7 200 000 in
    /// Prometheus). Non-positive ranges are treated as 1 ms so cutting never divides by 0.
    pub fn new(chunk_range: i64) -> Self {
        Self::with_samples_per_chunk(chunk_range, DEFAULT_SAMPLES_PER_CHUNK)
    }

    /// Like [`ChunkCutter::new`] with a different sample target (Prometheus's
    /// `--storage.tsdb.samples-per-chunk`, minimum 4).
    pub fn with_samples_per_chunk(chunk_range: i64, samples_per_chunk: usize) -> Self {
        ChunkCutter {
            chunk_range: chunk_range.max(1),
            samples_per_chunk: samples_per_chunk.max(4),
            cur: None,
            next_at: 0,
        }
    }

    /// Timestamp of the last accepted sample, if any sample is in the open chunk.
    pub fn max_time(&self) -> Option<i64> {
        self.cur.as_ref().map(|c| c.max_time)
    }

    /// Number of samples in the open chunk.
    pub fn open_samples(&self) -> usize {
        self.cur.as_ref().map_or(0, |c| c.chunk.num_samples())
    }

    /// Appends a sample; returns the chunk that this sample closed, if it started a new
    /// one. Timestamps must strictly increase: like Prometheus's head (which reports
    /// them as out of order), a sample at or before the last one is dropped, so callers
    /// that care compare with [`ChunkCutter::max_time`] first.
    pub fn append(&mut self, t: i64, v: f64) -> Option<ChunkMeta> {
        let mut done = None;
        match &self.cur {
            None => {
                self.cut(t);
            }
            Some(c) => {
                if t <= c.max_time {
                    return None;
                }
                let (n, min_time, max_time) = (c.chunk.num_samples(), c.min_time, c.max_time);
                if c.chunk.bytes().len() > MAX_BYTES_PER_XOR_CHUNK - MAX_BYTES_PER_SAMPLE {
                    done = self.cut(t);
                } else {
                    if n == self.samples_per_chunk / 4 {
                        self.next_at = compute_chunk_end_time(min_time, max_time, self.next_at, 4.0);
                    }
                    if t >= self.next_at || n >= self.samples_per_chunk * 2 {
                        done = self.cut(t);
                    }
                }
            }
        }
        let c = self.cur.as_mut().expect("cut() always opens a chunk");
        c.chunk.append(t, v);
        c.max_time = t;
        done
    }

    /// Closes and returns the open chunk, if it has samples. The cutter can be reused.
    pub fn finish(&mut self) -> Option<ChunkMeta> {
        self.cur.take().map(OpenChunk::into_meta)
    }

    /// A copy of the open chunk, for readers that must see not-yet-cut data.
    pub fn open_chunk(&self) -> Option<ChunkMeta> {
        self.cur.as_ref().map(|c| ChunkMeta {
            min_time: c.min_time,
            max_time: c.max_time,
            chunk: Chunk::new(Encoding::Xor, c.chunk.bytes().to_vec()),
        })
    }

    fn cut(&mut self, mint: i64) -> Option<ChunkMeta> {
        let prev = self.cur.replace(OpenChunk { chunk: XorChunk::new(), min_time: mint, max_time: i64::MIN });
        self.next_at = range_for_timestamp(mint, self.chunk_range);
        prev.map(OpenChunk::into_meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H2: i64 = 7_200_000;

    fn cut_all(samples: impl IntoIterator<Item = (i64, f64)>) -> Vec<ChunkMeta> {
        let mut c = ChunkCutter::new(H2);
        let mut out: Vec<ChunkMeta> = samples.into_iter().filter_map(|(t, v)| c.append(t, v)).collect();
        out.extend(c.finish());
        out
    }

    fn counts(chunks: &[ChunkMeta]) -> Vec<usize> {
        chunks.iter().map(|c| c.chunk.num_samples()).collect()
    }

    #[test]
    fn range_and_end_time_match_go() {
        let cases = [(0, H2), (1, H2), (H2 - 1, H2), (H2, 2 * H2), (-1, H2), (-H2, 0), (-H2 - 1, 0)];
        for (t, want) in cases {
            assert_eq!(range_for_timestamp(t, H2), want, "t={t}");
        }
        // 30 samples 15s apart fill 435s of 7200s: n = 7200000/(435001*4) = 4.13 -> 4 chunks.
        assert_eq!(compute_chunk_end_time(0, 435_000, H2, 4.0), 1_800_000);
        assert_eq!(compute_chunk_end_time(0, 3_000_000, H2, 4.0), H2);
    }

    #[test]
    fn fifteen_second_scrapes_give_120_sample_chunks() {
        // Two hours at 15s = 480 samples -> four chunks of 120.
        let chunks = cut_all((0..960).map(|i| (i * 15_000, i as f64)));
        assert_eq!(counts(&chunks), vec![120; 8]);
        assert_eq!(chunks[0].min_time, 0);
        assert_eq!(chunks[3].max_time, H2 - 15_000);
        assert_eq!(chunks[4].min_time, H2);
        for c in &chunks {
            let ts: Vec<i64> = c.chunk.iter().unwrap().map(|s| s.timestamp()).collect();
            assert_eq!((ts[0], *ts.last().unwrap()), (c.min_time, c.max_time));
        }
    }

    #[test]
    fn chunks_never_cross_the_range_boundary() {
        // Sparse samples (one per 10 min) starting mid-range: the first chunk ends at 2h.
        let chunks = cut_all((0..30).map(|i| (3_600_000 + i * 600_000, 1.0)));
        for c in &chunks {
            assert_eq!(range_for_timestamp(c.min_time, H2), range_for_timestamp(c.max_time, H2));
        }
        assert_eq!(counts(&chunks), vec![6, 12, 12]);
    }

    #[test]
    fn dense_samples_cut_at_240_or_byte_limit() {
        // 1ms apart, constant value: tiny samples, 240-sample cap applies (prediction
        // happened at 30 samples but the range is far away).
        let chunks = cut_all((0..1000).map(|i| (i, 0.0)));
        assert!(chunks.iter().all(|c| c.chunk.num_samples() <= 241), "{:?}", counts(&chunks));
        // Random-looking values: the 1005-byte rule cuts before 240.
        let chunks = cut_all((0..1000).map(|i| {
            (i * 1000, f64::from_bits(0x4000_0000_0000_0000 ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        }));
        for c in &chunks {
            assert!(c.chunk.data.len() <= 1024, "{}", c.chunk.data.len());
        }
        assert_eq!(counts(&chunks).iter().sum::<usize>(), 1000);
    }

    #[test]
    fn out_of_order_and_duplicates_are_dropped() {
        let mut c = ChunkCutter::new(H2);
        assert!(c.append(10, 1.0).is_none());
        assert!(c.append(10, 2.0).is_none());
        assert!(c.append(5, 2.0).is_none());
        assert_eq!(c.open_samples(), 1);
        assert_eq!(c.max_time(), Some(10));
        let m = c.finish().unwrap();
        assert_eq!((m.min_time, m.max_time), (10, 10));
        assert!(c.finish().is_none());
    }
}
