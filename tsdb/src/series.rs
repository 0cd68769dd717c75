//! [`Series`], the unit heads, blocks, queriers and compaction exchange: labels, chunks
//! and deleted intervals, decoded lazily by [`Series::samples`].

use std::path::PathBuf;

use norn_model::Labels;

use crate::chunkenc::{
    Chunk, CounterResetHeader, Encoding, FloatHistogramChunk, HistogramAppendError, HistogramChunk, Sample, SampleIter,
    XorChunk,
};
use crate::chunks::ChunkMeta;
use crate::tombstones::{add_interval, is_deleted};
use crate::{Result, TsdbError};

/// Samples per chunk when we re-encode merged data, as Prometheus targets.
pub const SAMPLES_PER_CHUNK: usize = 120;

/// A series with its (possibly overlapping) chunks and deleted intervals.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: Labels,
    /// Chunks sorted by `min_time`; they may overlap (e.g. after merging blocks).
    pub chunks: Vec<ChunkMeta>,
    /// Deleted intervals (closed), sorted and disjoint; samples in them are skipped.
    pub deleted: Vec<(i64, i64)>,
}

impl Series {
    /// A series without deletions.
    pub fn new(labels: Labels, chunks: Vec<ChunkMeta>) -> Self {
        Series { labels, chunks, deleted: Vec::new() }
    }

    /// The samples with timestamps in `[mint, maxt]`, in time order, decoded lazily.
    /// Overlapping chunks are merged; when several chunks hold the same timestamp the
    /// sample of the chunk that comes first (by `min_time`, then position) wins.
    pub fn samples(&self, mint: i64, maxt: i64) -> SeriesSamples<'_> {
        let mut order: Vec<usize> = (0..self.chunks.len())
            .filter(|&i| self.chunks[i].max_time >= mint && self.chunks[i].min_time <= maxt)
            .collect();
        order.sort_by_key(|&i| self.chunks[i].min_time);
        SeriesSamples { series: self, mint, maxt, order, next: 0, active: Vec::new(), failed: false }
    }

    /// Whether any two chunks overlap in time.
    pub fn has_overlapping_chunks(&self) -> bool {
        let mut ranges: Vec<(i64, i64)> = self.chunks.iter().map(|c| (c.min_time, c.max_time)).collect();
        ranges.sort_unstable();
        ranges.windows(2).any(|w| w[1].0 <= w[0].1)
    }
}

struct Active<'a> {
    it: SampleIter<'a>,
    cur: Sample,
    rank: usize,
}

/// Iterator over a series' samples; see [`Series::samples`].
pub struct SeriesSamples<'a> {
    series: &'a Series,
    mint: i64,
    maxt: i64,
    /// Indices of the chunks overlapping the range, by `min_time`.
    order: Vec<usize>,
    next: usize,
    active: Vec<Active<'a>>,
    failed: bool,
}

impl std::fmt::Debug for SeriesSamples<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesSamples")
            .field("labels", &self.series.labels)
            .field("mint", &self.mint)
            .field("maxt", &self.maxt)
            .finish_non_exhaustive()
    }
}

fn chunk_err(series: &Series, e: crate::chunkenc::ChunkError) -> TsdbError {
    // Series are detached from their files; the labels say which series is broken.
    TsdbError::Chunk { path: PathBuf::from(series.labels.to_string()), source: e }
}

impl<'a> SeriesSamples<'a> {
    /// The next sample of `it` within the range; `Ok(None)` when it is exhausted.
    fn pull(series: &Series, it: &mut SampleIter<'a>, mint: i64, maxt: i64) -> Result<Option<Sample>> {
        for s in it.by_ref() {
            let t = s.timestamp();
            if t < mint {
                continue;
            }
            if t > maxt {
                return Ok(None);
            }
            return Ok(Some(s));
        }
        match it.err() {
            Some(e) => Err(chunk_err(series, e.clone())),
            None => Ok(None),
        }
    }

    /// Advances active iterator `i`, removing it when exhausted.
    fn advance(&mut self, i: usize) -> Result<()> {
        let a = &mut self.active[i];
        match Self::pull(self.series, &mut a.it, self.mint, self.maxt)? {
            Some(s) => a.cur = s,
            None => {
                self.active.swap_remove(i);
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Option<Sample>> {
        loop {
            // Open every chunk that may hold a sample before the earliest pending one.
            while let Some(&ci) = self.order.get(self.next) {
                let c = &self.series.chunks[ci];
                let frontier = self.active.iter().map(|a| a.cur.timestamp()).min();
                if frontier.is_some_and(|f| c.min_time > f) {
                    break;
                }
                self.next += 1;
                let mut it = c.chunk.iter().map_err(|e| chunk_err(self.series, e))?;
                if let Some(cur) = Self::pull(self.series, &mut it, self.mint, self.maxt)? {
                    self.active.push(Active { it, cur, rank: self.next });
                }
            }
            let Some(best) =
                (0..self.active.len()).min_by_key(|&i| (self.active[i].cur.timestamp(), self.active[i].rank))
            else {
                return Ok(None);
            };
            let t = self.active[best].cur.timestamp();
            let a = &mut self.active[best];
            let next = Self::pull(self.series, &mut a.it, self.mint, self.maxt)?;
            let s = match next {
                Some(n) => std::mem::replace(&mut a.cur, n),
                None => self.active.swap_remove(best).cur,
            };
            // Drop the same timestamp from other chunks.
            let mut i = 0;
            while i < self.active.len() {
                if self.active[i].cur.timestamp() == t {
                    self.advance(i)?;
                    // `advance` may have swapped another iterator into `i`; look again.
                    continue;
                }
                i += 1;
            }
            if is_deleted(&self.series.deleted, t) {
                continue;
            }
            return Ok(Some(s));
        }
    }
}

impl Iterator for SeriesSamples<'_> {
    type Item = Result<Sample>;

    fn next(&mut self) -> Option<Result<Sample>> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(s) => s.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Encodes float samples (time-ordered) into XOR chunks of at most `per_chunk` samples.
pub fn encode_float_chunks(samples: impl IntoIterator<Item = (i64, f64)>, per_chunk: usize) -> Vec<ChunkMeta> {
    let mut out = Vec::new();
    let mut cur: Option<(XorChunk, i64, i64)> = None;
    for (t, v) in samples {
        let (c, _, last) = cur.get_or_insert_with(|| (XorChunk::new(), t, t));
        c.append(t, v);
        *last = t;
        if c.num_samples() >= per_chunk
            && let Some((c, min, max)) = cur.take()
        {
            out.push(ChunkMeta { min_time: min, max_time: max, chunk: Chunk::new(Encoding::Xor, c.into_bytes()) });
        }
    }
    if let Some((c, min, max)) = cur {
        out.push(ChunkMeta { min_time: min, max_time: max, chunk: Chunk::new(Encoding::Xor, c.into_bytes()) });
    }
    out
}

/// A chunk being filled by [`encode_samples`].
enum OpenChunk {
    Xor(XorChunk),
    Histogram(HistogramChunk),
    FloatHistogram(FloatHistogramChunk),
}

impl OpenChunk {
    fn num_samples(&self) -> usize {
        match self {
            OpenChunk::Xor(c) => c.num_samples(),
            OpenChunk::Histogram(c) => c.num_samples(),
            OpenChunk::FloatHistogram(c) => c.num_samples(),
        }
    }

    fn into_chunk(self) -> Chunk {
        match self {
            OpenChunk::Xor(c) => Chunk::new(Encoding::Xor, c.into_bytes()),
            OpenChunk::Histogram(c) => Chunk::new(Encoding::Histogram, c.into_bytes()),
            OpenChunk::FloatHistogram(c) => Chunk::new(Encoding::FloatHistogram, c.into_bytes()),
        }
    }

    fn same_type(&self, s: &Sample) -> bool {
        matches!(
            (self, s),
            (OpenChunk::Xor(_), Sample::Float(..))
                | (OpenChunk::Histogram(_), Sample::Histogram(..))
                | (OpenChunk::FloatHistogram(_), Sample::FloatHistogram(..))
        )
    }

    /// The header a chunk cut after this one should start with when `s` comes next.
    fn next_header(&self, s: &Sample) -> CounterResetHeader {
        match (self, s) {
            (OpenChunk::Histogram(c), Sample::Histogram(_, h)) => c.next_chunk_header(h),
            (OpenChunk::FloatHistogram(c), Sample::FloatHistogram(_, h)) => c.next_chunk_header(h),
            _ => CounterResetHeader::Unknown,
        }
    }

    fn fresh(s: &Sample, header: CounterResetHeader) -> OpenChunk {
        match s {
            Sample::Float(..) => OpenChunk::Xor(XorChunk::new()),
            Sample::Histogram(..) => {
                let mut c = HistogramChunk::new();
                c.set_counter_reset_header(header);
                OpenChunk::Histogram(c)
            }
            Sample::FloatHistogram(..) => {
                let mut c = FloatHistogramChunk::new();
                c.set_counter_reset_header(header);
                OpenChunk::FloatHistogram(c)
            }
        }
    }

    fn append(&mut self, s: &Sample) -> Result<(), HistogramAppendError> {
        match (self, s) {
            (OpenChunk::Xor(c), Sample::Float(t, v)) => {
                c.append(*t, *v);
                Ok(())
            }
            (OpenChunk::Histogram(c), Sample::Histogram(t, h)) => c.append(*t, h),
            (OpenChunk::FloatHistogram(c), Sample::FloatHistogram(t, h)) => c.append(*t, h),
            _ => Err(HistogramAppendError::Invalid("sample type does not match chunk")),
        }
    }
}

/// Encodes time-ordered samples of any type into chunks of at most `per_chunk` samples,
/// as Prometheus re-encodes merged series: a new chunk also starts where the value type
/// changes or a histogram chunk cannot take the next histogram (counter reset, layout
/// change).
pub fn encode_samples(samples: impl IntoIterator<Item = Sample>, per_chunk: usize) -> Result<Vec<ChunkMeta>> {
    let mut out = Vec::new();
    let mut cur: Option<(OpenChunk, i64, i64)> = None;
    let flush = |cur: &mut Option<(OpenChunk, i64, i64)>, out: &mut Vec<ChunkMeta>| {
        if let Some((c, min_time, max_time)) = cur.take() {
            out.push(ChunkMeta { min_time, max_time, chunk: c.into_chunk() });
        }
    };
    for s in samples {
        let t = s.timestamp();
        let mut header = CounterResetHeader::Unknown;
        if let Some((c, ..)) = &cur
            && (!c.same_type(&s) || c.num_samples() >= per_chunk)
        {
            header = c.next_header(&s);
            flush(&mut cur, &mut out);
        }
        let (c, _, max) = cur.get_or_insert_with(|| (OpenChunk::fresh(&s, header), t, t));
        match c.append(&s) {
            Ok(()) => *max = t,
            Err(HistogramAppendError::NeedsNewChunk { header, .. }) => {
                flush(&mut cur, &mut out);
                let mut c = OpenChunk::fresh(&s, header);
                c.append(&s).map_err(|e| TsdbError::InvalidArgument(format!("sample at {t}: {e}")))?;
                cur = Some((c, t, t));
            }
            Err(e) => return Err(TsdbError::InvalidArgument(format!("sample at {t}: {e}"))),
        }
    }
    flush(&mut cur, &mut out);
    Ok(out)
}

/// Applies `deleted` to the chunks that overlap a deleted interval by re-encoding each
/// such chunk without the deleted samples (one chunk in, at most one out; emptied chunks
/// are dropped), as Prometheus does when it compacts a block with tombstones. Chunks
/// that do not touch a deleted interval are kept as they are.
pub fn apply_deletions(s: Series) -> Result<Series> {
    if s.deleted.is_empty() {
        return Ok(s);
    }
    let mut chunks = Vec::with_capacity(s.chunks.len());
    for c in &s.chunks {
        let overlaps = s.deleted.iter().any(|&(a, b)| a <= c.max_time && c.min_time <= b);
        if !overlaps {
            chunks.push(c.clone());
            continue;
        }
        let mut it = c.chunk.iter().map_err(|e| chunk_err(&s, e))?;
        let kept: Vec<Sample> = it.by_ref().filter(|smp| !is_deleted(&s.deleted, smp.timestamp())).collect();
        if let Some(e) = it.err() {
            return Err(chunk_err(&s, e.clone()));
        }
        chunks.extend(encode_samples(kept, usize::from(u16::MAX))?);
    }
    Ok(Series { labels: s.labels, chunks, deleted: Vec::new() })
}

/// [`apply_deletions`] for merging, where there is no way to report an error: a series
/// whose chunks cannot be re-encoded keeps them and its deletions, so nothing deleted
/// reappears (its deletions may then also hide samples of the series it is merged with).
fn materialise_deletions(s: Series) -> Series {
    match apply_deletions(s.clone()) {
        Ok(s) => s,
        Err(_) => s,
    }
}

/// Re-encodes each group of mutually overlapping chunks into chunks of at most
/// `per_chunk` samples (merged, equal timestamps deduplicated); chunks that overlap no
/// other are kept as they are. This is Prometheus's vertical compaction of one series.
pub fn merge_overlapping_chunks(s: Series, per_chunk: usize) -> Result<Series> {
    if !s.has_overlapping_chunks() {
        return Ok(s);
    }
    let mut sorted = s.chunks.clone();
    sorted.sort_by_key(|c| c.min_time);
    let mut out = Vec::with_capacity(sorted.len());
    let mut group: Vec<ChunkMeta> = Vec::new();
    let mut group_max = i64::MIN;
    let flush = |group: &mut Vec<ChunkMeta>, out: &mut Vec<ChunkMeta>| -> Result<()> {
        if group.len() == 1 {
            out.append(group);
        } else if !group.is_empty() {
            let tmp = Series { labels: s.labels.clone(), chunks: std::mem::take(group), deleted: s.deleted.clone() };
            let samples = tmp.samples(i64::MIN, i64::MAX).collect::<Result<Vec<Sample>>>()?;
            out.extend(encode_samples(samples, per_chunk)?);
        }
        Ok(())
    };
    for c in sorted {
        if !group.is_empty() && c.min_time > group_max {
            flush(&mut group, &mut out)?;
        }
        group_max = if group.is_empty() { c.max_time } else { group_max.max(c.max_time) };
        group.push(c);
    }
    flush(&mut group, &mut out)?;
    Ok(Series { labels: s.labels, chunks: out, deleted: s.deleted })
}

/// Merges sets of series, each sorted by labels, into one sorted set. Series with equal
/// labels become one series whose chunks are all of theirs, sorted by `min_time` (they
/// may overlap; [`Series::samples`] merges them). Deleted intervals that differ between
/// the merged series are applied to their own chunks first, so they do not spill over.
pub fn merge_series(sets: Vec<Vec<Series>>) -> Vec<Series> {
    let mut all: Vec<Series> = sets.into_iter().flatten().collect();
    // Stable, so equal label sets keep their input order.
    all.sort_by(|a, b| a.labels.cmp(&b.labels));
    let mut out: Vec<Series> = Vec::with_capacity(all.len());
    let mut group: Vec<Series> = Vec::new();
    let flush = |group: &mut Vec<Series>, out: &mut Vec<Series>| {
        if group.len() == 1 {
            out.extend(group.pop());
            return;
        }
        if group.is_empty() {
            return;
        }
        let same_deleted = group.windows(2).all(|w| w[0].deleted == w[1].deleted);
        let mut deleted = Vec::new();
        if same_deleted {
            deleted = group[0].deleted.clone();
        } else {
            for s in group.iter_mut() {
                *s = materialise_deletions(std::mem::replace(s, Series::new(s.labels.clone(), Vec::new())));
                // Deletions that could not be applied to the chunks stay in force.
                for &iv in &s.deleted {
                    add_interval(&mut deleted, iv);
                }
            }
        }
        let labels = group[0].labels.clone();
        let mut chunks: Vec<ChunkMeta> = group.drain(..).flat_map(|s| s.chunks).collect();
        chunks.sort_by_key(|c| c.min_time);
        out.push(Series { labels, chunks, deleted });
    };
    for s in all {
        if group.last().is_some_and(|g| g.labels != s.labels) {
            flush(&mut group, &mut out);
        }
        group.push(s);
    }
    flush(&mut group, &mut out);
    out
}

/// Normalises a list of intervals (sorted, coalesced).
pub fn normalise_intervals(ivs: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for &iv in ivs {
        add_interval(&mut out, iv);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(samples: &[(i64, f64)]) -> ChunkMeta {
        encode_float_chunks(samples.iter().copied(), usize::MAX).pop().unwrap()
    }

    fn collect(s: &Series, mint: i64, maxt: i64) -> Vec<(i64, f64)> {
        s.samples(mint, maxt)
            .map(|r| match r.unwrap() {
                Sample::Float(t, v) => (t, v),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn lbl(v: &str) -> Labels {
        Labels::from_pairs([("a", v)])
    }

    #[test]
    fn samples_range_deletions_and_overlap() {
        let c1 = floats(&[(1, 1.0), (2, 2.0), (5, 5.0)]);
        let c2 = floats(&[(2, 20.0), (3, 3.0), (4, 4.0), (9, 9.0)]);
        let c3 = floats(&[(10, 10.0), (11, 11.0)]);
        let s = Series { labels: lbl("x"), chunks: vec![c1, c2, c3], deleted: vec![(4, 4)] };
        type Case<'a> = (i64, i64, &'a [(i64, f64)]);
        let cases: &[Case<'_>] = &[
            (i64::MIN, i64::MAX, &[(1, 1.0), (2, 2.0), (3, 3.0), (5, 5.0), (9, 9.0), (10, 10.0), (11, 11.0)]),
            (2, 5, &[(2, 2.0), (3, 3.0), (5, 5.0)]),
            (6, 8, &[]),
            (11, 100, &[(11, 11.0)]),
        ];
        for (mint, maxt, want) in cases {
            assert_eq!(collect(&s, *mint, *maxt), *want, "[{mint}, {maxt}]");
        }
        assert!(s.has_overlapping_chunks());
    }

    #[test]
    fn broken_chunk_yields_error_once() {
        let bad = ChunkMeta { min_time: 0, max_time: 5, chunk: Chunk::new(Encoding::Xor, vec![0u8, 9, 1]) };
        let s = Series::new(lbl("x"), vec![bad]);
        let got: Vec<_> = s.samples(i64::MIN, i64::MAX).collect();
        assert!(got.iter().any(|r| r.is_err()));
        assert!(got.last().unwrap().is_err());
    }

    #[test]
    fn merge_groups_and_sorts() {
        let a =
            vec![Series::new(lbl("1"), vec![floats(&[(5, 1.0)])]), Series::new(lbl("3"), vec![floats(&[(1, 1.0)])])];
        let b =
            vec![Series::new(lbl("1"), vec![floats(&[(1, 2.0)])]), Series::new(lbl("2"), vec![floats(&[(1, 1.0)])])];
        let m = merge_series(vec![a, b]);
        let names: Vec<_> = m.iter().map(|s| s.labels.get("a").unwrap().to_string()).collect();
        assert_eq!(names, ["1", "2", "3"]);
        assert_eq!(collect(&m[0], i64::MIN, i64::MAX), vec![(1, 2.0), (5, 1.0)]);
        assert_eq!(m[0].chunks[0].min_time, 1);
    }

    #[test]
    fn merge_keeps_deletions_to_their_own_chunks() {
        let a = vec![Series { labels: lbl("1"), chunks: vec![floats(&[(1, 1.0), (2, 2.0)])], deleted: vec![(2, 2)] }];
        let b = vec![Series::new(lbl("1"), vec![floats(&[(2, 20.0), (3, 3.0)])])];
        let m = merge_series(vec![a, b]);
        assert_eq!(m.len(), 1);
        assert!(m[0].deleted.is_empty());
        assert_eq!(collect(&m[0], i64::MIN, i64::MAX), vec![(1, 1.0), (2, 20.0), (3, 3.0)]);
        let same = |d: Vec<(i64, i64)>| Series { labels: lbl("1"), chunks: vec![floats(&[(1, 1.0)])], deleted: d };
        let m = merge_series(vec![vec![same(vec![(0, 5)])], vec![same(vec![(0, 5)])]]);
        assert_eq!(m[0].deleted, vec![(0, 5)]);
        assert!(collect(&m[0], i64::MIN, i64::MAX).is_empty());
    }

    #[test]
    fn only_overlapping_chunks_are_reencoded() {
        let a = floats(&[(1, 1.0), (5, 5.0)]);
        let b = floats(&[(3, 3.0), (5, 50.0), (7, 7.0)]);
        let c = floats(&[(10, 10.0), (11, 11.0)]);
        let s = Series::new(lbl("x"), vec![c.clone(), b, a]);
        let m = merge_overlapping_chunks(s.clone(), 120).unwrap();
        assert_eq!(m.chunks.len(), 2);
        assert_eq!(m.chunks[1], c, "the lone chunk passes through untouched");
        assert_eq!((m.chunks[0].min_time, m.chunks[0].max_time), (1, 7));
        assert_eq!(collect(&m, i64::MIN, i64::MAX), collect(&s, i64::MIN, i64::MAX));
        assert!(!m.has_overlapping_chunks());
        let d = apply_deletions(Series { deleted: vec![(10, 10)], ..m.clone() }).unwrap();
        assert_eq!(d.chunks[0], m.chunks[0]);
        assert_eq!(collect(&d, i64::MIN, i64::MAX).last(), Some(&(11, 11.0)));
        let gone = apply_deletions(Series { deleted: vec![(0, 100)], ..m }).unwrap();
        assert!(gone.chunks.is_empty());
    }

    #[test]
    fn encode_splits_chunks() {
        let cs = encode_float_chunks((0..250).map(|i| (i, i as f64)), 120);
        assert_eq!(cs.iter().map(|c| c.chunk.num_samples()).collect::<Vec<_>>(), vec![120, 120, 10]);
        assert_eq!((cs[1].min_time, cs[1].max_time), (120, 239));
        assert_eq!(normalise_intervals(&[(5, 6), (1, 4)]), vec![(1, 6)]);
    }
}
