//! Per-series chunk building for all value types: floats cut by [`ChunkCutter`] (spec
//! §10.4), native histograms by byte size (spec §10.5); switching value type cuts.

use norn_model::{FloatHistogram, Histogram};

use super::cutter::{ChunkCutter, compute_chunk_end_time, range_for_timestamp};
use crate::chunkenc::{
    Chunk, CounterResetHeader, Encoding, FloatHistogramChunk, HistogramAppendError, HistogramChunk, Sample,
};
use crate::chunks::ChunkMeta;

/// Prometheus's `TargetBytesPerHistogramChunk`.
const TARGET_BYTES_PER_HISTOGRAM_CHUNK: usize = 1024;
/// Prometheus's `MinSamplesPerHistogramChunk`.
const MIN_SAMPLES_PER_HISTOGRAM_CHUNK: usize = 10;

/// The two histogram chunk types, so the cutting logic is written once.
pub(crate) trait HistChunk: Sized {
    type Value;
    const ENCODING: Encoding;
    fn empty() -> Self;
    fn len_bytes(&self) -> usize;
    fn samples(&self) -> usize;
    fn push(&mut self, t: i64, v: &Self::Value) -> Result<(), HistogramAppendError>;
    fn header_after(&self, v: &Self::Value) -> CounterResetHeader;
    fn set_header(&mut self, h: CounterResetHeader);
    fn copy_bytes(&self) -> Vec<u8>;
    fn finish(self) -> Vec<u8>;
}

impl HistChunk for HistogramChunk {
    type Value = Histogram;
    const ENCODING: Encoding = Encoding::Histogram;
    fn empty() -> Self {
        HistogramChunk::new()
    }
    fn len_bytes(&self) -> usize {
        self.bytes().len()
    }
    fn samples(&self) -> usize {
        self.num_samples()
    }
    fn push(&mut self, t: i64, v: &Histogram) -> Result<(), HistogramAppendError> {
        self.append(t, v)
    }
    fn header_after(&self, v: &Histogram) -> CounterResetHeader {
        self.next_chunk_header(v)
    }
    fn set_header(&mut self, h: CounterResetHeader) {
        self.set_counter_reset_header(h)
    }
    fn copy_bytes(&self) -> Vec<u8> {
        self.bytes().to_vec()
    }
    fn finish(self) -> Vec<u8> {
        self.into_bytes()
    }
}

impl HistChunk for FloatHistogramChunk {
    type Value = FloatHistogram;
    const ENCODING: Encoding = Encoding::FloatHistogram;
    fn empty() -> Self {
        FloatHistogramChunk::new()
    }
    fn len_bytes(&self) -> usize {
        self.bytes().len()
    }
    fn samples(&self) -> usize {
        self.num_samples()
    }
    fn push(&mut self, t: i64, v: &FloatHistogram) -> Result<(), HistogramAppendError> {
        self.append(t, v)
    }
    fn header_after(&self, v: &FloatHistogram) -> CounterResetHeader {
        self.next_chunk_header(v)
    }
    fn set_header(&mut self, h: CounterResetHeader) {
        self.set_counter_reset_header(h)
    }
    fn copy_bytes(&self) -> Vec<u8> {
        self.bytes().to_vec()
    }
    fn finish(self) -> Vec<u8> {
        self.into_bytes()
    }
}

/// An open histogram chunk with Prometheus's cutting state.
#[derive(Debug, Clone)]
pub(crate) struct HistOpen<C> {
    chunk: C,
    min_time: i64,
    max_time: i64,
    next_at: i64,
    computed_end: bool,
}

impl<C: HistChunk> HistOpen<C> {
    fn new(chunk: C, t: i64, range: i64) -> Self {
        HistOpen { chunk, min_time: t, max_time: i64::MIN, next_at: range_for_timestamp(t, range), computed_end: false }
    }

    fn meta(self) -> ChunkMeta {
        ChunkMeta {
            min_time: self.min_time,
            max_time: self.max_time,
            chunk: Chunk::new(C::ENCODING, self.chunk.finish()),
        }
    }

    fn copy_meta(&self) -> ChunkMeta {
        ChunkMeta {
            min_time: self.min_time,
            max_time: self.max_time,
            chunk: Chunk::new(C::ENCODING, self.chunk.copy_bytes()),
        }
    }

    /// Appends `v`, returning the chunk it closed (if any). `Err` only for a malformed
    /// histogram, which the appender rejects before it gets here.
    fn append(&mut self, t: i64, v: &C::Value, range: i64) -> Result<Option<ChunkMeta>, HistogramAppendError> {
        let mut closed = None;
        let n = self.chunk.samples();
        if n > 0 {
            let bytes = self.chunk.len_bytes();
            let next_range_start =
                if self.computed_end { range_for_timestamp(self.min_time, range) } else { self.next_at };
            if !self.computed_end && bytes >= TARGET_BYTES_PER_HISTOGRAM_CHUNK / 4 {
                let ratio = TARGET_BYTES_PER_HISTOGRAM_CHUNK as f64 / bytes as f64;
                self.next_at = compute_chunk_end_time(self.min_time, self.max_time, self.next_at, ratio);
                self.computed_end = true;
            }
            if (t >= self.next_at || bytes >= TARGET_BYTES_PER_HISTOGRAM_CHUNK * 2)
                && (n >= MIN_SAMPLES_PER_HISTOGRAM_CHUNK || t >= next_range_start)
            {
                closed = Some(self.cut(t, v, range));
            }
        }
        match self.chunk.push(t, v) {
            Ok(()) => {}
            Err(HistogramAppendError::NeedsNewChunk { header, .. }) => {
                let mut c = C::empty();
                c.set_header(header);
                let old = std::mem::replace(self, HistOpen::new(c, t, range));
                debug_assert!(closed.is_none() || old.chunk.samples() == 0);
                if old.chunk.samples() > 0 {
                    closed = Some(old.meta());
                }
                self.chunk.push(t, v)?;
            }
            Err(e) => return Err(e),
        }
        self.max_time = t;
        Ok(closed)
    }

    fn cut(&mut self, t: i64, v: &C::Value, range: i64) -> ChunkMeta {
        let mut c = C::empty();
        c.set_header(self.chunk.header_after(v));
        std::mem::replace(self, HistOpen::new(c, t, range)).meta()
    }
}

/// The open chunk of a series.
#[derive(Debug, Clone)]
pub(crate) enum Open {
    None,
    Float(ChunkCutter),
    Histogram(HistOpen<HistogramChunk>),
    FloatHistogram(HistOpen<FloatHistogramChunk>),
}

/// Builds a series' chunks from in-order samples of any type.
#[derive(Debug, Clone)]
pub(crate) struct ChunkBuilder {
    range: i64,
    samples_per_chunk: usize,
    open: Open,
    /// Completed chunks, ascending.
    pub closed: Vec<ChunkMeta>,
    /// A copy of the open chunk as it is now, made by [`ChunkBuilder::open_snapshot`] and
    /// dropped by every change to the open chunk: repeated queries of a series that got
    /// no sample since share one copy instead of copying the open chunk each time.
    snapshot: Option<ChunkMeta>,
}

impl ChunkBuilder {
    pub fn new(range: i64, samples_per_chunk: usize) -> Self {
        ChunkBuilder { range, samples_per_chunk, open: Open::None, closed: Vec::new(), snapshot: None }
    }

    fn close_open(&mut self) {
        self.snapshot = None;
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Float(mut c) => self.closed.extend(c.finish()),
            Open::Histogram(h) => self.closed.push(h.meta()),
            Open::FloatHistogram(h) => self.closed.push(h.meta()),
        }
    }

    pub fn append_float(&mut self, t: i64, v: f64) {
        self.snapshot = None;
        if !matches!(self.open, Open::Float(_)) {
            self.close_open();
            self.open = Open::Float(ChunkCutter::with_samples_per_chunk(self.range, self.samples_per_chunk));
        }
        if let Open::Float(c) = &mut self.open
            && let Some(done) = c.append(t, v)
        {
            self.closed.push(done);
        }
    }

    pub fn append_histogram(&mut self, t: i64, h: &Histogram) -> Result<(), HistogramAppendError> {
        self.snapshot = None;
        if !matches!(self.open, Open::Histogram(_)) {
            self.close_open();
            self.open = Open::Histogram(HistOpen::new(HistogramChunk::new(), t, self.range));
        }
        if let Open::Histogram(o) = &mut self.open {
            self.closed.extend(o.append(t, h, self.range)?);
        }
        Ok(())
    }

    pub fn append_float_histogram(&mut self, t: i64, h: &FloatHistogram) -> Result<(), HistogramAppendError> {
        self.snapshot = None;
        if !matches!(self.open, Open::FloatHistogram(_)) {
            self.close_open();
            self.open = Open::FloatHistogram(HistOpen::new(FloatHistogramChunk::new(), t, self.range));
        }
        if let Open::FloatHistogram(o) = &mut self.open {
            self.closed.extend(o.append(t, h, self.range)?);
        }
        Ok(())
    }

    /// Appends any sample; malformed histograms are skipped.
    pub fn append_sample(&mut self, s: &Sample) {
        match s {
            Sample::Float(t, v) => self.append_float(*t, *v),
            Sample::Histogram(t, h) => {
                let _ = self.append_histogram(*t, h);
            }
            Sample::FloatHistogram(t, h) => {
                let _ = self.append_float_histogram(*t, h);
            }
        }
    }

    /// A copy of the open chunk, if it has samples.
    pub fn open_chunk(&self) -> Option<ChunkMeta> {
        match &self.open {
            Open::None => None,
            Open::Float(c) => c.open_chunk(),
            Open::Histogram(h) => (h.chunk.samples() > 0).then(|| h.copy_meta()),
            Open::FloatHistogram(h) => (h.chunk.samples() > 0).then(|| h.copy_meta()),
        }
    }

    /// Like [`ChunkBuilder::open_chunk`], but the copy is kept and handed out again (a
    /// reference-count bump of its bytes) until the open chunk changes.
    pub fn open_snapshot(&mut self) -> Option<ChunkMeta> {
        if self.snapshot.is_none() {
            self.snapshot = self.open_chunk();
        }
        self.snapshot.clone()
    }

    /// The closed chunks and, when `open`, [`ChunkBuilder::open_snapshot`]'s copy of the
    /// open chunk, borrowed.
    pub fn closed_and_snapshot(&mut self, open: bool) -> (&[ChunkMeta], Option<&ChunkMeta>) {
        if !open {
            return (&self.closed, None);
        }
        if self.snapshot.is_none() {
            self.snapshot = self.open_chunk();
        }
        (&self.closed, self.snapshot.as_ref())
    }

    /// Time of the newest sample in the open chunk.
    pub fn open_max_time(&self) -> Option<i64> {
        match &self.open {
            Open::None => None,
            Open::Float(c) => c.max_time(),
            Open::Histogram(h) => (h.chunk.samples() > 0).then_some(h.max_time),
            Open::FloatHistogram(h) => (h.chunk.samples() > 0).then_some(h.max_time),
        }
    }

    /// Drops the open chunk without keeping it.
    pub fn drop_open(&mut self) {
        self.snapshot = None;
        self.open = Open::None;
    }

    /// All chunks, the open one closed.
    pub fn finish(mut self) -> Vec<ChunkMeta> {
        self.close_open();
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use norn_model::{CounterResetHint, Span};

    use super::*;

    fn hist(i: u64) -> Histogram {
        Histogram {
            counter_reset_hint: CounterResetHint::Unknown,
            schema: 0,
            zero_threshold: 1e-128,
            zero_count: i,
            count: 3 * i,
            sum: i as f64 * 1.5,
            positive_spans: vec![Span { offset: 0, length: 2 }],
            negative_spans: vec![],
            positive_buckets: vec![i as i64, i as i64],
            negative_buckets: vec![],
            custom_values: vec![],
        }
    }

    #[test]
    fn type_switch_cuts_and_histograms_round_trip() {
        let mut b = ChunkBuilder::new(7_200_000, 120);
        b.append_float(1, 1.0);
        b.append_histogram(2, &hist(1)).unwrap();
        b.append_histogram(3, &hist(2)).unwrap();
        b.append_float_histogram(4, &hist(3).to_float()).unwrap();
        b.append_float(5, 2.0);
        let chunks = b.finish();
        let encs: Vec<Encoding> = chunks.iter().map(|c| c.chunk.encoding).collect();
        assert_eq!(encs, vec![Encoding::Xor, Encoding::Histogram, Encoding::FloatHistogram, Encoding::Xor]);
        let hs: Vec<Sample> = chunks[1].chunk.iter().unwrap().collect();
        assert_eq!(hs.len(), 2);
        assert!(matches!(&hs[1], Sample::Histogram(3, h) if h.count == 6));
    }

    #[test]
    fn counter_reset_and_size_cut_histogram_chunks() {
        let mut b = ChunkBuilder::new(7_200_000, 120);
        for i in 1..=5 {
            b.append_histogram(i, &hist(i as u64 * 10)).unwrap();
        }
        b.append_histogram(6, &hist(1)).unwrap(); // counter went down: reset
        assert_eq!(b.closed.len(), 1);
        assert_eq!(b.closed[0].chunk.num_samples(), 5);
        // Many samples 15s apart over 2h: chunks are cut, never crossing 2h, each
        // with at least 10 samples unless at the boundary.
        let mut b = ChunkBuilder::new(7_200_000, 120);
        for i in 0..2000u64 {
            b.append_histogram(i as i64 * 15_000, &hist(i * 1000 + i * i)).unwrap();
        }
        let chunks = b.finish();
        assert!(chunks.len() > 1);
        for c in &chunks {
            assert_eq!(range_for_timestamp(c.min_time, 7_200_000), range_for_timestamp(c.max_time, 7_200_000));
        }
        assert_eq!(chunks.iter().map(|c| c.chunk.num_samples()).sum::<usize>(), 2000);
    }
}
