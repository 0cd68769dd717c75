//! The integer native-histogram chunk (encoding 2), bit-exact with
//! `tsdb/chunkenc/histogram.go` (spec §5.4).
//!
//! Per sample: timestamp, count and zero count as delta-of-delta varbit integers; the
//! sum XOR-encoded; every bucket (already delta-encoded between buckets, as in the
//! model) as a delta-of-delta varbit integer. The first sample writes the layout.

use norn_model::histogram::CUSTOM_BUCKETS_SCHEMA;
use norn_model::{CounterResetHint, Histogram, Span};

use super::ChunkError;
use super::bstream::{BitReader, BitWriter};
use super::histogram_meta::{
    CounterResetHeader, FLAGS_POS, HEADER_SIZE, HistogramAppendError, Layout, NewChunkReason, absolute,
    custom_bounds_match, expand_spans_and_buckets, expand_spans_both_ways, insert_buckets, is_known_schema,
    is_stale_nan, read_layout, write_layout,
};
use super::varbit::{put_varbit_int, put_varbit_uint, read_varbit_int, read_varbit_uint};
use super::xor::{xor_read, xor_write};

const NAME: &str = "histogram";

/// An integer histogram chunk being built (or re-opened for appending).
#[derive(Debug, Clone)]
pub struct HistogramChunk {
    b: BitWriter,
    layout: Layout,
    t: i64,
    cnt: u64,
    z_cnt: u64,
    t_delta: i64,
    cnt_delta: i64,
    z_cnt_delta: i64,
    p_buckets: Vec<i64>,
    n_buckets: Vec<i64>,
    p_buckets_delta: Vec<i64>,
    n_buckets_delta: Vec<i64>,
    sum: f64,
    leading: u8,
    trailing: u8,
}

impl Default for HistogramChunk {
    fn default() -> Self {
        Self::new()
    }
}

/// What a histogram must look like to be written: the chunk's bucket layout, or a
/// prepared copy of the caller's histogram.
enum Prepared {
    AsIs,
    Expanded(Box<Histogram>),
    /// The chunk must be recoded to the histogram's (wider) layout first.
    Recode {
        pos_inserts: Vec<super::histogram_meta::Insert>,
        neg_inserts: Vec<super::histogram_meta::Insert>,
        h: Box<Histogram>,
    },
}

impl HistogramChunk {
    /// An empty chunk with an "unknown" counter-reset header.
    pub fn new() -> Self {
        HistogramChunk {
            b: BitWriter::from_bytes(vec![0; HEADER_SIZE], 0),
            layout: Layout::default(),
            t: 0,
            cnt: 0,
            z_cnt: 0,
            t_delta: 0,
            cnt_delta: 0,
            z_cnt_delta: 0,
            p_buckets: Vec::new(),
            n_buckets: Vec::new(),
            p_buckets_delta: Vec::new(),
            n_buckets_delta: Vec::new(),
            sum: 0.0,
            leading: 0xff,
            trailing: 0,
        }
    }

    /// Re-opens encoded chunk bytes for appending by decoding every sample.
    pub fn from_bytes(data: &[u8]) -> Result<Self, ChunkError> {
        let mut it = HistogramIterator::new(data)?;
        while it.advance() {}
        if let Some(e) = it.err() {
            return Err(e.clone());
        }
        let used_bits = it.bits_consumed();
        Ok(HistogramChunk {
            b: BitWriter::resume(data, used_bits),
            layout: it.layout,
            t: it.t,
            cnt: it.cnt,
            z_cnt: it.z_cnt,
            t_delta: it.t_delta,
            cnt_delta: it.cnt_delta,
            z_cnt_delta: it.z_cnt_delta,
            p_buckets: it.p_buckets,
            n_buckets: it.n_buckets,
            p_buckets_delta: it.p_buckets_delta,
            n_buckets_delta: it.n_buckets_delta,
            sum: f64::from_bits(it.sum),
            leading: it.leading,
            trailing: it.trailing,
        })
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        self.b.bytes()
    }

    /// Consumes the chunk, returning its bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.b.bytes
    }

    /// Number of samples.
    pub fn num_samples(&self) -> usize {
        let b = self.b.bytes();
        usize::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Timestamp of the last sample (meaningless when empty).
    pub fn last_timestamp(&self) -> i64 {
        self.t
    }

    /// The counter-reset header.
    pub fn counter_reset_header(&self) -> CounterResetHeader {
        CounterResetHeader::from_flags(self.b.bytes()[FLAGS_POS])
    }

    /// Sets the counter-reset header (use the one a failed append suggested, or
    /// [`HistogramChunk::next_chunk_header`] when cutting for size).
    pub fn set_counter_reset_header(&mut self, h: CounterResetHeader) {
        let b = &mut self.b.bytes_mut()[FLAGS_POS];
        *b = (*b & 0b0011_1111) | h as u8;
    }

    /// Decodes the samples.
    pub fn iter(&self) -> HistogramIterator<'_> {
        HistogramIterator::new(self.b.bytes()).expect("own bytes carry a header")
    }

    /// The header a chunk cut after this one should start with when `h` is its first
    /// sample (what Prometheus derives from the previous appender).
    pub fn next_chunk_header(&self, h: &Histogram) -> CounterResetHeader {
        match h.counter_reset_hint {
            CounterResetHint::Gauge => CounterResetHeader::Gauge,
            CounterResetHint::CounterReset => CounterResetHeader::CounterReset,
            _ => match self.prepare_counter(h) {
                Ok(_) => CounterResetHeader::NotCounterReset,
                Err(HistogramAppendError::NeedsNewChunk { header, .. }) => header,
                Err(_) => CounterResetHeader::Unknown,
            },
        }
    }

    /// Appends a histogram. Timestamps must increase (the head enforces it). New buckets
    /// are absorbed by recoding the chunk as Prometheus does; a counter reset, a changed
    /// schema/zero threshold/custom bounds, a gauge/counter switch, a sample after a stale
    /// marker or a full chunk return [`HistogramAppendError::NeedsNewChunk`] with the
    /// header the next chunk should get.
    pub fn append(&mut self, t: i64, h: &Histogram) -> Result<(), HistogramAppendError> {
        if !is_stale_nan(h.sum) {
            if !h.is_consistent() {
                return Err(HistogramAppendError::Invalid("spans and buckets disagree"));
            }
            // Readers (ours and Prometheus') reject other schemas, so never write them.
            if !is_known_schema(i64::from(h.schema)) {
                return Err(HistogramAppendError::Invalid("unknown schema"));
            }
        }
        let num = self.num_samples();
        if num == 0 {
            self.append_raw(t, h);
            match h.counter_reset_hint {
                CounterResetHint::Gauge => self.set_counter_reset_header(CounterResetHeader::Gauge),
                CounterResetHint::CounterReset => self.set_counter_reset_header(CounterResetHeader::CounterReset),
                _ => {}
            }
            return Ok(());
        }
        if num == usize::from(u16::MAX) {
            return Err(HistogramAppendError::new_chunk(NewChunkReason::Full, self.next_chunk_header(h)));
        }
        let prepared = if h.counter_reset_hint == CounterResetHint::Gauge {
            self.prepare_gauge(h)?
        } else {
            self.prepare_counter(h)?
        };
        match prepared {
            Prepared::AsIs => self.append_raw(t, h),
            Prepared::Expanded(h2) => self.append_raw(t, &h2),
            Prepared::Recode { pos_inserts, neg_inserts, h: h2 } => {
                self.recode(&pos_inserts, &neg_inserts, &h2.positive_spans, &h2.negative_spans);
                self.append_raw(t, &h2);
            }
        }
        Ok(())
    }

    /// Prometheus' `appendable`: counter histograms.
    fn prepare_counter(&self, h: &Histogram) -> Result<Prepared, HistogramAppendError> {
        use CounterResetHeader as H;
        use HistogramAppendError as E;
        if self.num_samples() > 0 && self.counter_reset_header() == H::Gauge {
            return Err(E::new_chunk(NewChunkReason::KindChange, H::NotCounterReset));
        }
        if h.counter_reset_hint == CounterResetHint::CounterReset {
            return Err(E::new_chunk(NewChunkReason::CounterReset, H::CounterReset));
        }
        if is_stale_nan(h.sum) {
            return Ok(Prepared::AsIs);
        }
        if is_stale_nan(self.sum) {
            return Err(E::new_chunk(NewChunkReason::AfterStale, H::Unknown));
        }
        if h.count < self.cnt {
            return Err(E::new_chunk(NewChunkReason::CounterReset, H::CounterReset));
        }
        let l = &self.layout;
        if h.schema != l.schema || h.zero_threshold != l.zero_threshold {
            return Err(E::new_chunk(NewChunkReason::LayoutChange, H::Unknown));
        }
        if h.schema == CUSTOM_BUCKETS_SCHEMA && !custom_bounds_match(&h.custom_values, &l.custom_values) {
            return Err(E::new_chunk(NewChunkReason::CounterReset, H::CounterReset));
        }
        if h.zero_count < self.z_cnt {
            return Err(E::new_chunk(NewChunkReason::CounterReset, H::CounterReset));
        }
        let reset = || E::new_chunk(NewChunkReason::CounterReset, H::CounterReset);
        let (pf, pb) = expand_spans_and_buckets(
            &l.positive_spans,
            &h.positive_spans,
            &absolute(&self.p_buckets),
            &absolute(&h.positive_buckets),
        )
        .ok_or_else(reset)?;
        let (nf, nb) = expand_spans_and_buckets(
            &l.negative_spans,
            &h.negative_spans,
            &absolute(&self.n_buckets),
            &absolute(&h.negative_buckets),
        )
        .ok_or_else(reset)?;
        if pf.is_empty() && nf.is_empty() && pb.is_empty() && nb.is_empty() {
            return Ok(Prepared::AsIs);
        }
        let mut h2 = Box::new(h.clone());
        if !pb.is_empty() || !nb.is_empty() {
            if pf.is_empty() && nf.is_empty() {
                h2.positive_spans = l.positive_spans.clone();
                h2.negative_spans = l.negative_spans.clone();
            } else {
                // Only sides with backward inserts get the union layout, as Prometheus'
                // adjustForInserts leaves the other side's spans untouched.
                if !pb.is_empty() {
                    h2.positive_spans = expand_spans_both_ways(&l.positive_spans, &h.positive_spans).2;
                }
                if !nb.is_empty() {
                    h2.negative_spans = expand_spans_both_ways(&l.negative_spans, &h.negative_spans).2;
                }
            }
            h2.positive_buckets = insert_buckets(&h.positive_buckets, &pb, true);
            h2.negative_buckets = insert_buckets(&h.negative_buckets, &nb, true);
        }
        if pf.is_empty() && nf.is_empty() {
            return Ok(Prepared::Expanded(h2));
        }
        Ok(Prepared::Recode { pos_inserts: pf, neg_inserts: nf, h: h2 })
    }

    /// Prometheus' `appendableGauge`: gauge histograms (no reset checks; layouts merge).
    fn prepare_gauge(&self, h: &Histogram) -> Result<Prepared, HistogramAppendError> {
        use CounterResetHeader as H;
        use HistogramAppendError as E;
        if self.num_samples() > 0 && self.counter_reset_header() != H::Gauge {
            return Err(E::new_chunk(NewChunkReason::KindChange, H::Gauge));
        }
        if is_stale_nan(h.sum) {
            return Ok(Prepared::AsIs);
        }
        if is_stale_nan(self.sum) {
            return Err(E::new_chunk(NewChunkReason::AfterStale, H::Gauge));
        }
        let l = &self.layout;
        if h.schema != l.schema
            || h.zero_threshold != l.zero_threshold
            || (h.schema == CUSTOM_BUCKETS_SCHEMA && !custom_bounds_match(&h.custom_values, &l.custom_values))
        {
            return Err(E::new_chunk(NewChunkReason::LayoutChange, H::Gauge));
        }
        let (pf, pb, pm) = expand_spans_both_ways(&l.positive_spans, &h.positive_spans);
        let (nf, nb, nm) = expand_spans_both_ways(&l.negative_spans, &h.negative_spans);
        if pf.is_empty() && nf.is_empty() && pb.is_empty() && nb.is_empty() {
            return Ok(Prepared::AsIs);
        }
        let mut h2 = Box::new(h.clone());
        if !pb.is_empty() || !nb.is_empty() {
            h2.positive_spans = pm;
            h2.negative_spans = nm;
            h2.positive_buckets = insert_buckets(&h.positive_buckets, &pb, true);
            h2.negative_buckets = insert_buckets(&h.negative_buckets, &nb, true);
        }
        if pf.is_empty() && nf.is_empty() {
            return Ok(Prepared::Expanded(h2));
        }
        Ok(Prepared::Recode { pos_inserts: pf, neg_inserts: nf, h: h2 })
    }

    /// Rewrites the chunk with new buckets inserted into every sample.
    fn recode(
        &mut self,
        pos_inserts: &[super::histogram_meta::Insert],
        neg_inserts: &[super::histogram_meta::Insert],
        pos_spans: &[Span],
        neg_spans: &[Span],
    ) {
        let header = self.counter_reset_header();
        let mut out = HistogramChunk::new();
        let mut it = self.iter();
        for (t, mut old) in it.by_ref() {
            old.positive_spans = pos_spans.to_vec();
            old.negative_spans = neg_spans.to_vec();
            if !pos_inserts.is_empty() {
                old.positive_buckets = insert_buckets(&old.positive_buckets, pos_inserts, true);
            }
            if !neg_inserts.is_empty() {
                old.negative_buckets = insert_buckets(&old.negative_buckets, neg_inserts, true);
            }
            out.append_raw(t, &old);
        }
        debug_assert!(it.err().is_none(), "own chunk decodes");
        out.set_counter_reset_header(header);
        *self = out;
    }

    /// Writes a sample whose buckets match the chunk layout (Prometheus'
    /// `appendHistogram`).
    fn append_raw(&mut self, t: i64, h: &Histogram) {
        let stale_h;
        let h = if is_stale_nan(h.sum) {
            // No buckets, and an empty layout if it is the first sample.
            stale_h = Histogram { sum: h.sum, ..Default::default() };
            &stale_h
        } else {
            h
        };
        let num = self.num_samples() as u16;
        let (mut t_delta, mut cnt_delta, mut z_cnt_delta) = (0i64, 0i64, 0i64);
        let b = &mut self.b;
        if num == 0 {
            write_layout(b, h.schema, h.zero_threshold, &h.positive_spans, &h.negative_spans, &h.custom_values);
            self.layout = Layout {
                schema: h.schema,
                zero_threshold: h.zero_threshold,
                positive_spans: h.positive_spans.clone(),
                negative_spans: h.negative_spans.clone(),
                custom_values: if h.schema == CUSTOM_BUCKETS_SCHEMA { h.custom_values.clone() } else { Vec::new() },
            };
            self.p_buckets = vec![0; h.positive_buckets.len()];
            self.n_buckets = vec![0; h.negative_buckets.len()];
            self.p_buckets_delta = vec![0; h.positive_buckets.len()];
            self.n_buckets_delta = vec![0; h.negative_buckets.len()];
            put_varbit_int(b, t);
            put_varbit_uint(b, h.count);
            put_varbit_uint(b, h.zero_count);
            b.write_bits(h.sum.to_bits(), 64);
            for v in h.positive_buckets.iter().chain(&h.negative_buckets) {
                put_varbit_int(b, *v);
            }
        } else {
            // Sample 1 goes through the same code with previous deltas of 0.
            t_delta = t.wrapping_sub(self.t);
            cnt_delta = (h.count as i64).wrapping_sub(self.cnt as i64);
            z_cnt_delta = (h.zero_count as i64).wrapping_sub(self.z_cnt as i64);
            let mut cnt_dod = cnt_delta.wrapping_sub(self.cnt_delta);
            let mut z_cnt_dod = z_cnt_delta.wrapping_sub(self.z_cnt_delta);
            if is_stale_nan(h.sum) {
                cnt_dod = 0;
                z_cnt_dod = 0;
            }
            put_varbit_int(b, t_delta.wrapping_sub(self.t_delta));
            put_varbit_int(b, cnt_dod);
            put_varbit_int(b, z_cnt_dod);
            xor_write(b, h.sum, self.sum, &mut self.leading, &mut self.trailing);
            for (i, v) in h.positive_buckets.iter().enumerate() {
                let delta = v.wrapping_sub(self.p_buckets[i]);
                put_varbit_int(b, delta.wrapping_sub(self.p_buckets_delta[i]));
                self.p_buckets_delta[i] = delta;
            }
            for (i, v) in h.negative_buckets.iter().enumerate() {
                let delta = v.wrapping_sub(self.n_buckets[i]);
                put_varbit_int(b, delta.wrapping_sub(self.n_buckets_delta[i]));
                self.n_buckets_delta[i] = delta;
            }
        }
        let n = (num + 1).to_be_bytes();
        self.b.bytes_mut()[..2].copy_from_slice(&n);
        self.t = t;
        self.cnt = h.count;
        self.z_cnt = h.zero_count;
        self.t_delta = t_delta;
        self.cnt_delta = cnt_delta;
        self.z_cnt_delta = z_cnt_delta;
        self.p_buckets[..h.positive_buckets.len()].copy_from_slice(&h.positive_buckets);
        self.n_buckets[..h.negative_buckets.len()].copy_from_slice(&h.negative_buckets);
        self.sum = h.sum;
    }
}

/// Decodes an integer histogram chunk lazily.
#[derive(Debug, Clone)]
pub struct HistogramIterator<'a> {
    br: BitReader<'a>,
    data_bits: usize,
    num_total: u16,
    num_read: u16,
    header: CounterResetHeader,
    layout: Layout,
    t: i64,
    cnt: u64,
    z_cnt: u64,
    t_delta: i64,
    cnt_delta: i64,
    z_cnt_delta: i64,
    p_buckets: Vec<i64>,
    n_buckets: Vec<i64>,
    p_buckets_delta: Vec<i64>,
    n_buckets_delta: Vec<i64>,
    sum: u64,
    leading: u8,
    trailing: u8,
    err: Option<ChunkError>,
}

impl<'a> HistogramIterator<'a> {
    /// An iterator over encoded chunk bytes (starting with the 3-byte header).
    pub fn new(data: &'a [u8]) -> Result<Self, ChunkError> {
        if data.len() < HEADER_SIZE {
            return Err(ChunkError::Corrupt { encoding: NAME, reason: "chunk shorter than its 3-byte header" });
        }
        Ok(HistogramIterator {
            br: BitReader::new(&data[HEADER_SIZE..]),
            data_bits: (data.len() - HEADER_SIZE) * 8,
            num_total: u16::from_be_bytes([data[0], data[1]]),
            num_read: 0,
            header: CounterResetHeader::from_flags(data[FLAGS_POS]),
            layout: Layout::default(),
            t: 0,
            cnt: 0,
            z_cnt: 0,
            t_delta: 0,
            cnt_delta: 0,
            z_cnt_delta: 0,
            p_buckets: Vec::new(),
            n_buckets: Vec::new(),
            p_buckets_delta: Vec::new(),
            n_buckets_delta: Vec::new(),
            sum: 0,
            leading: 0xff,
            trailing: 0,
            err: None,
        })
    }

    /// Number of samples the header announces.
    pub fn num_samples(&self) -> usize {
        usize::from(self.num_total)
    }

    /// The chunk's counter-reset header.
    pub fn counter_reset_header(&self) -> CounterResetHeader {
        self.header
    }

    /// The error that ended iteration early, if any.
    pub fn err(&self) -> Option<&ChunkError> {
        self.err.as_ref()
    }

    fn bits_consumed(&self) -> usize {
        HEADER_SIZE * 8 + self.data_bits - self.br.bits_remaining()
    }

    fn fail(&mut self, reason: &'static str) -> bool {
        self.err = Some(ChunkError::Corrupt { encoding: NAME, reason });
        self.num_read = self.num_total;
        false
    }

    /// Decodes the next sample into the iterator state.
    fn advance(&mut self) -> bool {
        const TRUNC: &str = "truncated or invalid sample data";
        if self.num_read >= self.num_total {
            return false;
        }
        if self.num_read == 0 {
            let layout = match read_layout(&mut self.br) {
                Ok(l) => l,
                Err(reason) => return self.fail(reason),
            };
            let (Some(np), Some(nn)) = (
                norn_model::histogram::spans_len(&layout.positive_spans),
                norn_model::histogram::spans_len(&layout.negative_spans),
            ) else {
                return self.fail("bucket count overflows");
            };
            // Each bucket of the first sample takes at least one bit.
            if np.saturating_add(nn) > self.br.bits_remaining() {
                return self.fail("bucket count exceeds chunk size");
            }
            self.layout = layout;
            let Some(t) = read_varbit_int(&mut self.br) else { return self.fail(TRUNC) };
            let Some(cnt) = read_varbit_uint(&mut self.br) else { return self.fail(TRUNC) };
            let Some(z_cnt) = read_varbit_uint(&mut self.br) else { return self.fail(TRUNC) };
            let Some(sum) = self.br.read_bits(64) else { return self.fail(TRUNC) };
            self.p_buckets = Vec::with_capacity(np);
            self.n_buckets = Vec::with_capacity(nn);
            for _ in 0..np {
                let Some(v) = read_varbit_int(&mut self.br) else { return self.fail(TRUNC) };
                self.p_buckets.push(v);
            }
            for _ in 0..nn {
                let Some(v) = read_varbit_int(&mut self.br) else { return self.fail(TRUNC) };
                self.n_buckets.push(v);
            }
            self.p_buckets_delta = vec![0; np];
            self.n_buckets_delta = vec![0; nn];
            (self.t, self.cnt, self.z_cnt, self.sum) = (t, cnt, z_cnt, sum);
            self.num_read = 1;
            return true;
        }
        let Some(t_dod) = read_varbit_int(&mut self.br) else { return self.fail(TRUNC) };
        let Some(cnt_dod) = read_varbit_int(&mut self.br) else { return self.fail(TRUNC) };
        let Some(z_cnt_dod) = read_varbit_int(&mut self.br) else { return self.fail(TRUNC) };
        self.t_delta = self.t_delta.wrapping_add(t_dod);
        self.t = self.t.wrapping_add(self.t_delta);
        self.cnt_delta = self.cnt_delta.wrapping_add(cnt_dod);
        self.cnt = (self.cnt as i64).wrapping_add(self.cnt_delta) as u64;
        self.z_cnt_delta = self.z_cnt_delta.wrapping_add(z_cnt_dod);
        self.z_cnt = (self.z_cnt as i64).wrapping_add(self.z_cnt_delta) as u64;
        if xor_read(&mut self.br, &mut self.sum, &mut self.leading, &mut self.trailing).is_none() {
            return self.fail(TRUNC);
        }
        if !is_stale_nan(f64::from_bits(self.sum)) {
            for (v, d) in self.p_buckets.iter_mut().zip(self.p_buckets_delta.iter_mut()) {
                let Some(dod) = read_varbit_int(&mut self.br) else {
                    self.err = Some(ChunkError::Corrupt { encoding: NAME, reason: TRUNC });
                    self.num_read = self.num_total;
                    return false;
                };
                *d = d.wrapping_add(dod);
                *v = v.wrapping_add(*d);
            }
            for (v, d) in self.n_buckets.iter_mut().zip(self.n_buckets_delta.iter_mut()) {
                let Some(dod) = read_varbit_int(&mut self.br) else {
                    self.err = Some(ChunkError::Corrupt { encoding: NAME, reason: TRUNC });
                    self.num_read = self.num_total;
                    return false;
                };
                *d = d.wrapping_add(dod);
                *v = v.wrapping_add(*d);
            }
        }
        self.num_read += 1;
        true
    }

    /// The histogram at the current position.
    fn at(&self) -> Histogram {
        let sum = f64::from_bits(self.sum);
        if is_stale_nan(sum) {
            return Histogram { sum, ..Default::default() };
        }
        Histogram {
            counter_reset_hint: self.header.hint_for(self.num_read),
            schema: self.layout.schema,
            zero_threshold: self.layout.zero_threshold,
            zero_count: self.z_cnt,
            count: self.cnt,
            sum,
            positive_spans: self.layout.positive_spans.clone(),
            negative_spans: self.layout.negative_spans.clone(),
            positive_buckets: self.p_buckets.clone(),
            negative_buckets: self.n_buckets.clone(),
            custom_values: self.layout.custom_values.clone(),
        }
    }
}

impl Iterator for HistogramIterator<'_> {
    type Item = (i64, Histogram);
    fn next(&mut self) -> Option<(i64, Histogram)> {
        if self.advance() { Some((self.t, self.at())) } else { None }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chunkenc::histogram_meta::STALE_NAN_BITS;
    use proptest::prelude::*;

    pub(crate) fn sp(v: &[(i32, u32)]) -> Vec<Span> {
        v.iter().map(|&(offset, length)| Span { offset, length }).collect()
    }

    fn hist(count: u64, zero: u64, sum: f64, pos: &[i64]) -> Histogram {
        Histogram {
            schema: 0,
            zero_threshold: 2f64.powi(-128),
            zero_count: zero,
            count,
            sum,
            positive_spans: sp(&[(0, 2), (1, pos.len() as u32 - 2)]),
            positive_buckets: pos.to_vec(),
            ..Default::default()
        }
    }

    fn decoded(c: &HistogramChunk) -> Vec<(i64, Histogram)> {
        let mut it = c.iter();
        let v: Vec<_> = it.by_ref().collect();
        assert!(it.err().is_none(), "{:?}", it.err());
        v
    }

    #[test]
    fn round_trip_and_hints() {
        let mut c = HistogramChunk::new();
        let hs: Vec<Histogram> =
            (0..10u64).map(|i| hist(10 + i * 3, i, 1.5 * i as f64, &[1 + i as i64, 0, -1, i as i64])).collect();
        for (i, h) in hs.iter().enumerate() {
            c.append(1000 + i as i64 * 15_000 + (i as i64 % 3), h).unwrap();
        }
        assert_eq!(c.counter_reset_header(), CounterResetHeader::Unknown);
        let got = decoded(&c);
        assert_eq!(got.len(), 10);
        for (i, (t, h)) in got.iter().enumerate() {
            assert_eq!(*t, 1000 + i as i64 * 15_000 + (i as i64 % 3));
            let mut want = hs[i].clone();
            want.counter_reset_hint =
                if i == 0 { CounterResetHint::Unknown } else { CounterResetHint::NotCounterReset };
            assert_eq!(h, &want);
        }
        let reopened = HistogramChunk::from_bytes(c.bytes()).unwrap();
        assert_eq!(reopened.bytes(), c.bytes());
    }

    #[test]
    fn known_bytes_single_sample() {
        // Layout: zero threshold byte 116 (2^-128), schema 0 ("0"), one positive span
        // [0,1] ("10 001" "10 001"... see below), no negative spans.
        let h = Histogram {
            schema: 0,
            zero_threshold: 2f64.powi(-128),
            count: 1,
            sum: 1.0,
            positive_spans: sp(&[(0, 1)]),
            positive_buckets: vec![1],
            ..Default::default()
        };
        let mut c = HistogramChunk::new();
        c.append(0, &h).unwrap();
        // bits after the header: 01110100 (116) | 0 (schema) | 10001 (1 span) | 10001 (len 1)
        // | 0 (offset 0) | 0 (no neg spans) | 0 (t=0) | 10001 (count 1) | 0 (zero count)
        // | 64 bits of 1.0 | 10001 (bucket 1)
        let mut w = BitWriter::default();
        w.write_bits(116, 8);
        for (v, n) in [(0, 1), (0b10001, 5), (0b10001, 5), (0, 1), (0, 1), (0, 1), (0b10001, 5), (0, 1)] {
            w.write_bits(v, n);
        }
        w.write_bits(1f64.to_bits(), 64);
        w.write_bits(0b10001, 5);
        let mut want = vec![0, 1, 0];
        want.extend_from_slice(w.bytes());
        assert_eq!(c.bytes(), want.as_slice());
    }

    #[test]
    fn counter_reset_and_layout_changes_need_new_chunks() {
        let mut c = HistogramChunk::new();
        c.append(1, &hist(10, 1, 5.0, &[2, 1, 0, 1])).unwrap();
        // Count went down.
        let e = c.append(2, &hist(5, 1, 5.0, &[2, 1, 0, 1])).unwrap_err();
        assert_eq!(
            e,
            HistogramAppendError::NeedsNewChunk {
                reason: NewChunkReason::CounterReset,
                header: CounterResetHeader::CounterReset
            }
        );
        // A bucket went down (absolute 3 → 2 in the second bucket).
        let e = c.append(2, &hist(11, 1, 5.0, &[2, 0, 0, 1])).unwrap_err();
        assert!(matches!(e, HistogramAppendError::NeedsNewChunk { reason: NewChunkReason::CounterReset, .. }));
        // Schema change.
        let mut h = hist(11, 1, 5.0, &[2, 1, 0, 1]);
        h.schema = 1;
        let e = c.append(2, &h).unwrap_err();
        assert_eq!(
            e,
            HistogramAppendError::NeedsNewChunk {
                reason: NewChunkReason::LayoutChange,
                header: CounterResetHeader::Unknown
            }
        );
        assert_eq!(c.next_chunk_header(&hist(11, 1, 5.0, &[2, 1, 0, 1])), CounterResetHeader::NotCounterReset);
        // Gauge after counter.
        let mut g = hist(11, 1, 5.0, &[2, 1, 0, 1]);
        g.counter_reset_hint = CounterResetHint::Gauge;
        let e = c.append(2, &g).unwrap_err();
        assert_eq!(
            e,
            HistogramAppendError::NeedsNewChunk {
                reason: NewChunkReason::KindChange,
                header: CounterResetHeader::Gauge
            }
        );
        // Invalid input.
        let mut bad = hist(11, 1, 5.0, &[2, 1, 0, 1]);
        bad.positive_buckets.pop();
        assert!(matches!(c.append(2, &bad), Err(HistogramAppendError::Invalid(_))));
        let mut odd = hist(11, 1, 5.0, &[2, 1, 0, 1]);
        odd.schema = 60;
        assert_eq!(HistogramChunk::new().append(2, &odd), Err(HistogramAppendError::Invalid("unknown schema")));
        assert_eq!(c.num_samples(), 1);
    }

    #[test]
    fn new_buckets_recode_the_chunk() {
        let mut c = HistogramChunk::new();
        let h1 = Histogram {
            count: 3,
            positive_spans: sp(&[(0, 2)]),
            positive_buckets: vec![1, 1],
            sum: 1.0,
            ..Default::default()
        };
        let h2 = Histogram {
            count: 6,
            positive_spans: sp(&[(0, 3)]),
            positive_buckets: vec![1, 1, 1],
            sum: 2.0,
            ..Default::default()
        };
        c.append(1, &h1).unwrap();
        c.append(2, &h2).unwrap();
        let got = decoded(&c);
        assert_eq!(got[0].1.positive_spans, sp(&[(0, 3)]));
        assert_eq!(got[0].1.positive_buckets, vec![1, 1, -2]);
        assert_eq!(got[1].1.positive_buckets, vec![1, 1, 1]);
        // Same bytes as writing the expanded histograms from the start.
        let mut d = HistogramChunk::new();
        d.append(1, &Histogram { positive_spans: sp(&[(0, 3)]), positive_buckets: vec![1, 1, -2], ..h1.clone() })
            .unwrap();
        d.append(2, &h2).unwrap();
        assert_eq!(c.bytes(), d.bytes());
        // A histogram missing an empty bucket of the chunk is expanded instead.
        let h3 = Histogram {
            count: 7,
            positive_spans: sp(&[(0, 2)]),
            positive_buckets: vec![2, 0],
            sum: 3.0,
            ..Default::default()
        };
        let mut e = HistogramChunk::new();
        e.append(1, &Histogram { positive_spans: sp(&[(0, 3)]), positive_buckets: vec![1, 1, -2], ..h1 }).unwrap();
        e.append(2, &h3).unwrap();
        assert_eq!(decoded(&e)[1].1.positive_buckets, vec![2, 0, -2]);
    }

    #[test]
    fn stale_markers() {
        let stale = f64::from_bits(STALE_NAN_BITS);
        let mut c = HistogramChunk::new();
        c.append(1, &hist(10, 1, 5.0, &[2, 1, 0, 1])).unwrap();
        c.append(2, &Histogram { sum: stale, ..Default::default() }).unwrap();
        c.append(3, &Histogram { sum: stale, ..Default::default() }).unwrap();
        let e = c.append(4, &hist(10, 1, 5.0, &[2, 1, 0, 1])).unwrap_err();
        assert!(matches!(e, HistogramAppendError::NeedsNewChunk { reason: NewChunkReason::AfterStale, .. }));
        let got = decoded(&c);
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].1.sum.to_bits(), STALE_NAN_BITS);
        assert!(got[1].1.positive_buckets.is_empty());
        // A chunk starting with a stale marker.
        let mut s = HistogramChunk::new();
        s.append(1, &Histogram { sum: stale, count: 5, ..Default::default() }).unwrap();
        let got = decoded(&s);
        assert_eq!(got[0].1.count, 0);
    }

    #[test]
    fn gauge_and_custom_buckets() {
        let mut c = HistogramChunk::new();
        let g = |count: u64, buckets: Vec<i64>| Histogram {
            counter_reset_hint: CounterResetHint::Gauge,
            schema: CUSTOM_BUCKETS_SCHEMA,
            count,
            sum: count as f64,
            positive_spans: sp(&[(0, buckets.len() as u32)]),
            positive_buckets: buckets,
            custom_values: vec![0.1, 0.5, 1.0, 33554.43, 1e9],
            ..Default::default()
        };
        c.append(1, &g(10, vec![5, 0, -3])).unwrap();
        c.append(2, &g(3, vec![1, 0, 1])).unwrap(); // gauges may go down
        assert_eq!(c.counter_reset_header(), CounterResetHeader::Gauge);
        let got = decoded(&c);
        assert_eq!(got[1].1.counter_reset_hint, CounterResetHint::Gauge);
        assert_eq!(got[1].1.custom_values, vec![0.1, 0.5, 1.0, 33554.43, 1e9]);
        assert_eq!(got[1].1.positive_buckets, vec![1, 0, 1]);
        let mut other = g(3, vec![1, 0, 1]);
        other.custom_values[0] = 0.2;
        assert!(c.append(3, &other).is_err());
    }

    pub(crate) fn arb_spans(max_spans: usize) -> impl Strategy<Value = Vec<Span>> {
        proptest::collection::vec((0i32..5, 0u32..4), 0..max_spans).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (o, l))| Span { offset: if i == 0 { o - 2 } else { o }, length: l })
                .collect()
        })
    }

    fn arb_histogram() -> impl Strategy<Value = Histogram> {
        (arb_spans(4), arb_spans(3), -4i32..9, any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>())
            .prop_flat_map(|(ps, ns, schema, count, zc, sum_bits, big)| {
                let np = norn_model::histogram::spans_len(&ps).unwrap();
                let nn = norn_model::histogram::spans_len(&ns).unwrap();
                let bucket = if big { -(1i64 << 40)..(1i64 << 40) } else { -5i64..5 };
                (
                    proptest::collection::vec(bucket.clone(), np),
                    proptest::collection::vec(bucket, nn),
                    Just((ps, ns, schema, count, zc, sum_bits)),
                )
            })
            .prop_map(|(pb, nb, (ps, ns, schema, count, zc, sum_bits))| Histogram {
                counter_reset_hint: CounterResetHint::Gauge,
                schema,
                zero_threshold: 0.001,
                zero_count: zc,
                count,
                sum: if sum_bits == STALE_NAN_BITS { 0.0 } else { f64::from_bits(sum_bits) },
                positive_spans: ps,
                negative_spans: ns,
                positive_buckets: pb,
                negative_buckets: nb,
                custom_values: Vec::new(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn prop_gauge_round_trip(first in arb_histogram(), rest in proptest::collection::vec((1i64..1_000_000_000, any::<u64>(), any::<u64>(), any::<u64>(), proptest::collection::vec(-(1i64 << 50)..(1i64 << 50), 16)), 0..20)) {
            // Gauge samples sharing the first sample's layout with arbitrary values.
            let mut c = HistogramChunk::new();
            let mut want = vec![(i64::MIN / 2, first.clone())];
            c.append(i64::MIN / 2, &first).unwrap();
            let mut t = i64::MIN / 2;
            for (dt, count, zc, sum_bits, vals) in rest {
                t += dt;
                let mut h = first.clone();
                h.count = count;
                h.zero_count = zc;
                h.sum = f64::from_bits(sum_bits);
                if h.sum.to_bits() == STALE_NAN_BITS { h.sum = 1.0; }
                let n = h.positive_buckets.len();
                for (i, b) in h.positive_buckets.iter_mut().chain(h.negative_buckets.iter_mut()).enumerate() {
                    *b = vals[i % 16] / (i as i64 + 1) + (n as i64);
                }
                c.append(t, &h).unwrap();
                want.push((t, h));
            }
            let got = decoded(&c);
            prop_assert_eq!(got.len(), want.len());
            for ((gt, gh), (wt, wh)) in got.iter().zip(&want) {
                prop_assert_eq!(gt, wt);
                prop_assert_eq!(gh.sum.to_bits(), wh.sum.to_bits());
                if wh.sum.to_bits() != STALE_NAN_BITS {
                    prop_assert_eq!(gh.count, wh.count);
                    prop_assert_eq!(gh.zero_count, wh.zero_count);
                    prop_assert_eq!(&gh.positive_buckets, &wh.positive_buckets);
                    prop_assert_eq!(&gh.negative_buckets, &wh.negative_buckets);
                    prop_assert_eq!(&gh.positive_spans, &wh.positive_spans);
                    prop_assert_eq!(gh.schema, wh.schema);
                }
            }
            let reopened = HistogramChunk::from_bytes(c.bytes()).unwrap();
            prop_assert_eq!(reopened.bytes(), c.bytes());
        }
    }

    /// Canonical spans and delta buckets for sparse `index → count` buckets.
    fn to_spans(m: &std::collections::BTreeMap<i64, i64>) -> (Vec<Span>, Vec<i64>) {
        let mut spans: Vec<Span> = Vec::new();
        let (mut deltas, mut last_idx, mut last_v) = (Vec::new(), None::<i64>, 0i64);
        for (&i, &v) in m {
            match last_idx {
                Some(l) if i == l + 1 => spans.last_mut().unwrap().length += 1,
                Some(l) => spans.push(Span { offset: (i - l - 1) as i32, length: 1 }),
                None => spans.push(Span { offset: i as i32, length: 1 }),
            }
            deltas.push(v - last_v);
            last_v = v;
            last_idx = Some(i);
        }
        (spans, deltas)
    }

    fn nonzero_buckets(spans: &[Span], deltas: &[i64]) -> Vec<(i64, i64)> {
        crate::chunkenc::histogram_meta::bucket_indexes(spans).zip(absolute(deltas)).filter(|(_, v)| *v != 0).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Counters whose buckets appear (recoding the chunk) and whose empty buckets go
        /// missing (expanding the sample) decode to the same non-empty buckets.
        #[test]
        fn prop_counter_with_changing_buckets(steps in proptest::collection::vec(
            (proptest::collection::vec(0i64..4, 8), proptest::option::of((-12i64..12, 0i64..5)), any::<bool>()), 1..25)) {
            let mut m = std::collections::BTreeMap::new();
            let mut c = HistogramChunk::new();
            let mut want = Vec::new();
            let mut zero = 0u64;
            for (i, (incs, new_bucket, drop_empty)) in steps.into_iter().enumerate() {
                for (k, v) in m.values_mut().enumerate() {
                    *v += incs[k % 8];
                }
                if let Some((idx, v)) = new_bucket {
                    m.entry(idx).or_insert(v);
                }
                zero += incs[0] as u64;
                let shown: std::collections::BTreeMap<i64, i64> =
                    m.iter().filter(|(_, v)| !drop_empty || **v != 0).map(|(k, v)| (*k, *v)).collect();
                let (spans, deltas) = to_spans(&shown);
                let h = Histogram {
                    schema: 1,
                    zero_threshold: 2f64.powi(-128),
                    zero_count: zero,
                    count: zero + m.values().sum::<i64>() as u64,
                    sum: i as f64,
                    positive_spans: spans,
                    positive_buckets: deltas,
                    ..Default::default()
                };
                c.append(i as i64 * 1000, &h).unwrap();
                want.push(h);
            }
            let got = decoded(&c);
            prop_assert_eq!(got.len(), want.len());
            for ((_, g), w) in got.iter().zip(&want) {
                prop_assert_eq!(g.count, w.count);
                prop_assert_eq!(g.zero_count, w.zero_count);
                prop_assert_eq!(nonzero_buckets(&g.positive_spans, &g.positive_buckets),
                                nonzero_buckets(&w.positive_spans, &w.positive_buckets));
            }
            // Reopening the (possibly recoded) chunk gives the same appender state.
            let reopened = HistogramChunk::from_bytes(c.bytes()).unwrap();
            prop_assert_eq!(reopened.bytes(), c.bytes());
        }
    }
}
