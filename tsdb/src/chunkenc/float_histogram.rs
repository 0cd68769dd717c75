//! The float native-histogram chunk (encoding 3), bit-exact with
//! `tsdb/chunkenc/float_histogram.go` (spec §5.5).
//!
//! Same header and layout as the integer chunk; per sample the timestamp is a
//! delta-of-delta varbit integer and count, zero count, sum and every (absolute) bucket
//! are XOR-encoded, each with its own leading/trailing window.

use norn_model::histogram::CUSTOM_BUCKETS_SCHEMA;
use norn_model::{CounterResetHint, FloatHistogram, Span};

use super::ChunkError;
use super::bstream::{BitReader, BitWriter};
use super::histogram_meta::{
    CounterResetHeader, FLAGS_POS, HEADER_SIZE, HistogramAppendError, Insert, Layout, NewChunkReason,
    custom_bounds_match, expand_spans_and_buckets, expand_spans_both_ways, insert_buckets, is_known_schema,
    is_stale_nan, read_layout, write_layout,
};
use super::varbit::{put_varbit_int, read_varbit_int};
use super::xor::{xor_read, xor_write};

const NAME: &str = "floathistogram";

/// One XOR-encoded field: its last value and window.
#[derive(Debug, Clone, Copy)]
struct XorValue {
    value: u64,
    leading: u8,
    trailing: u8,
}

impl XorValue {
    fn new(v: f64) -> Self {
        XorValue { value: v.to_bits(), leading: 0xff, trailing: 0 }
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.value)
    }

    fn write(&mut self, b: &mut BitWriter, v: f64) {
        xor_write(b, v, self.get(), &mut self.leading, &mut self.trailing);
        self.value = v.to_bits();
    }

    fn read(&mut self, r: &mut BitReader<'_>) -> Option<()> {
        xor_read(r, &mut self.value, &mut self.leading, &mut self.trailing)
    }
}

enum Prepared {
    AsIs,
    Expanded(Box<FloatHistogram>),
    Recode { pos_inserts: Vec<Insert>, neg_inserts: Vec<Insert>, h: Box<FloatHistogram> },
}

/// A float histogram chunk being built (or re-opened for appending).
#[derive(Debug, Clone)]
pub struct FloatHistogramChunk {
    b: BitWriter,
    layout: Layout,
    t: i64,
    t_delta: i64,
    cnt: XorValue,
    z_cnt: XorValue,
    sum: XorValue,
    p_buckets: Vec<XorValue>,
    n_buckets: Vec<XorValue>,
}

impl Default for FloatHistogramChunk {
    fn default() -> Self {
        Self::new()
    }
}

impl FloatHistogramChunk {
    /// An empty chunk with an "unknown" counter-reset header.
    pub fn new() -> Self {
        FloatHistogramChunk {
            b: BitWriter::from_bytes(vec![0; HEADER_SIZE], 0),
            layout: Layout::default(),
            t: 0,
            t_delta: 0,
            cnt: XorValue::new(0.0),
            z_cnt: XorValue::new(0.0),
            sum: XorValue::new(0.0),
            p_buckets: Vec::new(),
            n_buckets: Vec::new(),
        }
    }

    /// Re-opens encoded chunk bytes for appending by decoding every sample.
    pub fn from_bytes(data: &[u8]) -> Result<Self, ChunkError> {
        let mut it = FloatHistogramIterator::new(data)?;
        while it.advance() {}
        if let Some(e) = it.err() {
            return Err(e.clone());
        }
        let used_bits = it.bits_consumed();
        Ok(FloatHistogramChunk {
            b: BitWriter::resume(data, used_bits),
            layout: it.layout,
            t: it.t,
            t_delta: it.t_delta,
            cnt: it.cnt,
            z_cnt: it.z_cnt,
            sum: it.sum,
            p_buckets: it.p_buckets,
            n_buckets: it.n_buckets,
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

    /// Sets the counter-reset header.
    pub fn set_counter_reset_header(&mut self, h: CounterResetHeader) {
        let b = &mut self.b.bytes_mut()[FLAGS_POS];
        *b = (*b & 0b0011_1111) | h as u8;
    }

    /// Decodes the samples.
    pub fn iter(&self) -> FloatHistogramIterator<'_> {
        FloatHistogramIterator::new(self.b.bytes()).expect("own bytes carry a header")
    }

    /// The header a chunk cut after this one should start with when `h` is its first
    /// sample.
    pub fn next_chunk_header(&self, h: &FloatHistogram) -> CounterResetHeader {
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

    /// Appends a float histogram; same rules as [`super::HistogramChunk::append`].
    pub fn append(&mut self, t: i64, h: &FloatHistogram) -> Result<(), HistogramAppendError> {
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

    fn prepare_counter(&self, h: &FloatHistogram) -> Result<Prepared, HistogramAppendError> {
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
        if is_stale_nan(self.sum.get()) {
            return Err(E::new_chunk(NewChunkReason::AfterStale, H::Unknown));
        }
        if h.count < self.cnt.get() {
            return Err(E::new_chunk(NewChunkReason::CounterReset, H::CounterReset));
        }
        let l = &self.layout;
        if h.schema != l.schema || h.zero_threshold != l.zero_threshold {
            return Err(E::new_chunk(NewChunkReason::LayoutChange, H::Unknown));
        }
        if h.schema == CUSTOM_BUCKETS_SCHEMA && !custom_bounds_match(&h.custom_values, &l.custom_values) {
            return Err(E::new_chunk(NewChunkReason::CounterReset, H::CounterReset));
        }
        if h.zero_count < self.z_cnt.get() {
            return Err(E::new_chunk(NewChunkReason::CounterReset, H::CounterReset));
        }
        let reset = || E::new_chunk(NewChunkReason::CounterReset, H::CounterReset);
        let values = |v: &[XorValue]| v.iter().map(XorValue::get).collect::<Vec<f64>>();
        let (pf, pb) = expand_spans_and_buckets(
            &l.positive_spans,
            &h.positive_spans,
            &values(&self.p_buckets),
            &h.positive_buckets,
        )
        .ok_or_else(reset)?;
        let (nf, nb) = expand_spans_and_buckets(
            &l.negative_spans,
            &h.negative_spans,
            &values(&self.n_buckets),
            &h.negative_buckets,
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
                if !pb.is_empty() {
                    h2.positive_spans = expand_spans_both_ways(&l.positive_spans, &h.positive_spans).2;
                }
                if !nb.is_empty() {
                    h2.negative_spans = expand_spans_both_ways(&l.negative_spans, &h.negative_spans).2;
                }
            }
            h2.positive_buckets = insert_buckets(&h.positive_buckets, &pb, false);
            h2.negative_buckets = insert_buckets(&h.negative_buckets, &nb, false);
        }
        if pf.is_empty() && nf.is_empty() {
            return Ok(Prepared::Expanded(h2));
        }
        Ok(Prepared::Recode { pos_inserts: pf, neg_inserts: nf, h: h2 })
    }

    fn prepare_gauge(&self, h: &FloatHistogram) -> Result<Prepared, HistogramAppendError> {
        use CounterResetHeader as H;
        use HistogramAppendError as E;
        if self.num_samples() > 0 && self.counter_reset_header() != H::Gauge {
            return Err(E::new_chunk(NewChunkReason::KindChange, H::Gauge));
        }
        if is_stale_nan(h.sum) {
            return Ok(Prepared::AsIs);
        }
        if is_stale_nan(self.sum.get()) {
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
            h2.positive_buckets = insert_buckets(&h.positive_buckets, &pb, false);
            h2.negative_buckets = insert_buckets(&h.negative_buckets, &nb, false);
        }
        if pf.is_empty() && nf.is_empty() {
            return Ok(Prepared::Expanded(h2));
        }
        Ok(Prepared::Recode { pos_inserts: pf, neg_inserts: nf, h: h2 })
    }

    fn recode(&mut self, pos_inserts: &[Insert], neg_inserts: &[Insert], pos_spans: &[Span], neg_spans: &[Span]) {
        let header = self.counter_reset_header();
        let mut out = FloatHistogramChunk::new();
        let mut it = self.iter();
        for (t, mut old) in it.by_ref() {
            old.positive_spans = pos_spans.to_vec();
            old.negative_spans = neg_spans.to_vec();
            if !pos_inserts.is_empty() {
                old.positive_buckets = insert_buckets(&old.positive_buckets, pos_inserts, false);
            }
            if !neg_inserts.is_empty() {
                old.negative_buckets = insert_buckets(&old.negative_buckets, neg_inserts, false);
            }
            out.append_raw(t, &old);
        }
        debug_assert!(it.err().is_none(), "own chunk decodes");
        out.set_counter_reset_header(header);
        *self = out;
    }

    /// Writes a sample whose buckets match the chunk layout.
    fn append_raw(&mut self, t: i64, h: &FloatHistogram) {
        let stale_h;
        let h = if is_stale_nan(h.sum) {
            stale_h = FloatHistogram { sum: h.sum, ..Default::default() };
            &stale_h
        } else {
            h
        };
        let num = self.num_samples() as u16;
        let mut t_delta = 0i64;
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
            put_varbit_int(b, t);
            b.write_bits(h.count.to_bits(), 64);
            b.write_bits(h.zero_count.to_bits(), 64);
            b.write_bits(h.sum.to_bits(), 64);
            self.cnt = XorValue::new(h.count);
            self.z_cnt = XorValue::new(h.zero_count);
            self.sum = XorValue::new(h.sum);
            for v in h.positive_buckets.iter().chain(&h.negative_buckets) {
                b.write_bits(v.to_bits(), 64);
            }
            self.p_buckets = h.positive_buckets.iter().map(|v| XorValue::new(*v)).collect();
            self.n_buckets = h.negative_buckets.iter().map(|v| XorValue::new(*v)).collect();
        } else {
            t_delta = t.wrapping_sub(self.t);
            put_varbit_int(b, t_delta.wrapping_sub(self.t_delta));
            self.cnt.write(b, h.count);
            self.z_cnt.write(b, h.zero_count);
            self.sum.write(b, h.sum);
            for (x, v) in self.p_buckets.iter_mut().zip(&h.positive_buckets) {
                x.write(b, *v);
            }
            for (x, v) in self.n_buckets.iter_mut().zip(&h.negative_buckets) {
                x.write(b, *v);
            }
        }
        let n = (num + 1).to_be_bytes();
        self.b.bytes_mut()[..2].copy_from_slice(&n);
        self.t = t;
        self.t_delta = t_delta;
    }
}

/// Decodes a float histogram chunk lazily.
#[derive(Debug, Clone)]
pub struct FloatHistogramIterator<'a> {
    br: BitReader<'a>,
    data_bits: usize,
    num_total: u16,
    num_read: u16,
    header: CounterResetHeader,
    layout: Layout,
    t: i64,
    t_delta: i64,
    cnt: XorValue,
    z_cnt: XorValue,
    sum: XorValue,
    p_buckets: Vec<XorValue>,
    n_buckets: Vec<XorValue>,
    err: Option<ChunkError>,
}

impl<'a> FloatHistogramIterator<'a> {
    /// An iterator over encoded chunk bytes (starting with the 3-byte header).
    pub fn new(data: &'a [u8]) -> Result<Self, ChunkError> {
        if data.len() < HEADER_SIZE {
            return Err(ChunkError::Corrupt { encoding: NAME, reason: "chunk shorter than its 3-byte header" });
        }
        Ok(FloatHistogramIterator {
            br: BitReader::new(&data[HEADER_SIZE..]),
            data_bits: (data.len() - HEADER_SIZE) * 8,
            num_total: u16::from_be_bytes([data[0], data[1]]),
            num_read: 0,
            header: CounterResetHeader::from_flags(data[FLAGS_POS]),
            layout: Layout::default(),
            t: 0,
            t_delta: 0,
            cnt: XorValue::new(0.0),
            z_cnt: XorValue::new(0.0),
            sum: XorValue::new(0.0),
            p_buckets: Vec::new(),
            n_buckets: Vec::new(),
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

    fn advance(&mut self) -> bool {
        const TRUNC: &str = "truncated or invalid sample data";
        if self.num_read >= self.num_total {
            return false;
        }
        let br = &mut self.br;
        if self.num_read == 0 {
            let layout = match read_layout(br) {
                Ok(l) => l,
                Err(reason) => return self.fail(reason),
            };
            let (Some(np), Some(nn)) = (
                norn_model::histogram::spans_len(&layout.positive_spans),
                norn_model::histogram::spans_len(&layout.negative_spans),
            ) else {
                return self.fail("bucket count overflows");
            };
            // Each bucket of the first sample takes 64 bits.
            if np.saturating_add(nn) > br.bits_remaining() / 64 {
                return self.fail("bucket count exceeds chunk size");
            }
            self.layout = layout;
            let Some(t) = read_varbit_int(br) else { return self.fail(TRUNC) };
            let Some(cnt) = br.read_bits(64) else { return self.fail(TRUNC) };
            let Some(z_cnt) = br.read_bits(64) else { return self.fail(TRUNC) };
            let Some(sum) = br.read_bits(64) else { return self.fail(TRUNC) };
            let fresh = |value| XorValue { value, leading: 0xff, trailing: 0 };
            let mut p = Vec::with_capacity(np);
            for _ in 0..np {
                let Some(v) = br.read_bits(64) else { return self.fail(TRUNC) };
                p.push(fresh(v));
            }
            let mut n = Vec::with_capacity(nn);
            for _ in 0..nn {
                let Some(v) = br.read_bits(64) else { return self.fail(TRUNC) };
                n.push(fresh(v));
            }
            (self.t, self.cnt, self.z_cnt, self.sum, self.p_buckets, self.n_buckets) =
                (t, fresh(cnt), fresh(z_cnt), fresh(sum), p, n);
            self.num_read = 1;
            return true;
        }
        let Some(t_dod) = read_varbit_int(br) else { return self.fail(TRUNC) };
        self.t_delta = self.t_delta.wrapping_add(t_dod);
        self.t = self.t.wrapping_add(self.t_delta);
        let ok = self.cnt.read(br).and_then(|_| self.z_cnt.read(br)).and_then(|_| self.sum.read(br));
        if ok.is_none() {
            return self.fail(TRUNC);
        }
        if !is_stale_nan(self.sum.get()) {
            for x in self.p_buckets.iter_mut().chain(self.n_buckets.iter_mut()) {
                if x.read(br).is_none() {
                    self.err = Some(ChunkError::Corrupt { encoding: NAME, reason: TRUNC });
                    self.num_read = self.num_total;
                    return false;
                }
            }
        }
        self.num_read += 1;
        true
    }

    fn at(&self) -> FloatHistogram {
        let sum = self.sum.get();
        if is_stale_nan(sum) {
            return FloatHistogram { sum, ..Default::default() };
        }
        FloatHistogram {
            counter_reset_hint: self.header.hint_for(self.num_read),
            schema: self.layout.schema,
            zero_threshold: self.layout.zero_threshold,
            zero_count: self.z_cnt.get(),
            count: self.cnt.get(),
            sum,
            positive_spans: self.layout.positive_spans.clone(),
            negative_spans: self.layout.negative_spans.clone(),
            positive_buckets: self.p_buckets.iter().map(XorValue::get).collect(),
            negative_buckets: self.n_buckets.iter().map(XorValue::get).collect(),
            custom_values: self.layout.custom_values.clone(),
        }
    }
}

impl Iterator for FloatHistogramIterator<'_> {
    type Item = (i64, FloatHistogram);
    fn next(&mut self) -> Option<(i64, FloatHistogram)> {
        if self.advance() { Some((self.t, self.at())) } else { None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkenc::histogram::tests::{arb_spans, sp};
    use crate::chunkenc::histogram_meta::STALE_NAN_BITS;
    use proptest::prelude::*;

    fn fh(count: f64, sum: f64, pos: &[f64]) -> FloatHistogram {
        FloatHistogram {
            schema: 3,
            zero_threshold: 0.001,
            zero_count: 1.0,
            count,
            sum,
            positive_spans: sp(&[(-1, pos.len() as u32)]),
            positive_buckets: pos.to_vec(),
            negative_spans: sp(&[(0, 1)]),
            negative_buckets: vec![0.5],
            ..Default::default()
        }
    }

    fn decoded(c: &FloatHistogramChunk) -> Vec<(i64, FloatHistogram)> {
        let mut it = c.iter();
        let v: Vec<_> = it.by_ref().collect();
        assert!(it.err().is_none(), "{:?}", it.err());
        v
    }

    #[test]
    fn round_trip_reset_and_recode() {
        let mut c = FloatHistogramChunk::new();
        c.append(10, &fh(5.0, 1.0, &[1.0, 2.0])).unwrap();
        c.append(20, &fh(6.0, 1.5, &[1.0, 3.0])).unwrap();
        let got = decoded(&c);
        assert_eq!(got[1].1.positive_buckets, vec![1.0, 3.0]);
        assert_eq!(got[1].1.counter_reset_hint, CounterResetHint::NotCounterReset);
        let e = c.append(30, &fh(6.0, 1.5, &[0.5, 3.0])).unwrap_err();
        assert!(matches!(e, HistogramAppendError::NeedsNewChunk { reason: NewChunkReason::CounterReset, .. }));
        // A new bucket: the chunk is recoded to three buckets.
        c.append(30, &fh(8.0, 2.0, &[1.0, 3.0, 2.0])).unwrap();
        let got = decoded(&c);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].1.positive_buckets, vec![1.0, 2.0, 0.0]);
        assert_eq!(got[2].1.positive_buckets, vec![1.0, 3.0, 2.0]);
        let reopened = FloatHistogramChunk::from_bytes(c.bytes()).unwrap();
        assert_eq!(reopened.bytes(), c.bytes());
        // Stale marker then nothing but stale markers.
        let stale = f64::from_bits(STALE_NAN_BITS);
        c.append(40, &FloatHistogram { sum: stale, ..Default::default() }).unwrap();
        assert!(c.append(50, &fh(8.0, 2.0, &[1.0, 3.0, 2.0])).is_err());
        assert_eq!(decoded(&c)[3].1.sum.to_bits(), STALE_NAN_BITS);
    }

    #[test]
    fn known_bytes_single_sample() {
        let h = FloatHistogram {
            count: 1.0,
            sum: 2.0,
            positive_spans: sp(&[(0, 1)]),
            positive_buckets: vec![1.0],
            ..Default::default()
        };
        let mut c = FloatHistogramChunk::new();
        c.append(0, &h).unwrap();
        c.append(1, &h).unwrap();
        let mut w = BitWriter::default();
        w.write_bits(0, 8); // zero threshold 0
        for (v, n) in [(0, 1), (0b10001, 5), (0b10001, 5), (0, 1), (0, 1), (0, 1)] {
            w.write_bits(v, n);
        }
        for v in [1.0f64, 0.0, 2.0, 1.0] {
            w.write_bits(v.to_bits(), 64);
        }
        // Sample 1: Δt = 1 ("10" "001"), then four unchanged values (one 0 bit each).
        w.write_bits(0b10001, 5);
        w.write_bits(0, 4);
        let mut want = vec![0, 2, 0];
        want.extend_from_slice(w.bytes());
        assert_eq!(c.bytes(), want.as_slice());
    }

    fn arb_float_histogram() -> impl Strategy<Value = FloatHistogram> {
        (arb_spans(4), arb_spans(3), -4i32..9, any::<u64>(), any::<u64>(), any::<u64>())
            .prop_flat_map(|(ps, ns, schema, c, z, s)| {
                let np = norn_model::histogram::spans_len(&ps).unwrap();
                let nn = norn_model::histogram::spans_len(&ns).unwrap();
                (
                    proptest::collection::vec(any::<u64>(), np),
                    proptest::collection::vec(any::<u64>(), nn),
                    Just((ps, ns, schema, c, z, s)),
                )
            })
            .prop_map(|(pb, nb, (ps, ns, schema, c, z, s))| FloatHistogram {
                counter_reset_hint: CounterResetHint::Gauge,
                schema,
                zero_threshold: 0.0,
                zero_count: f64::from_bits(z),
                count: f64::from_bits(c),
                sum: if s == STALE_NAN_BITS { 0.0 } else { f64::from_bits(s) },
                positive_spans: ps,
                negative_spans: ns,
                positive_buckets: pb.into_iter().map(f64::from_bits).collect(),
                negative_buckets: nb.into_iter().map(f64::from_bits).collect(),
                custom_values: Vec::new(),
            })
    }

    fn bits(h: &FloatHistogram) -> Vec<u64> {
        [h.count, h.zero_count, h.sum]
            .into_iter()
            .chain(h.positive_buckets.iter().copied())
            .chain(h.negative_buckets.iter().copied())
            .map(f64::to_bits)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn prop_gauge_round_trip(first in arb_float_histogram(),
                                 rest in proptest::collection::vec((1i64..(1 << 40), proptest::collection::vec(any::<u64>(), 32)), 0..20)) {
            let mut c = FloatHistogramChunk::new();
            let mut t = -(1i64 << 50);
            c.append(t, &first).unwrap();
            let mut want = vec![(t, first.clone())];
            for (dt, vals) in rest {
                t += dt;
                let mut h = first.clone();
                for (k, v) in [&mut h.count, &mut h.zero_count, &mut h.sum].into_iter()
                    .chain(h.positive_buckets.iter_mut()).chain(h.negative_buckets.iter_mut()).enumerate() {
                    // Mix in repeated and arbitrary values so every XOR branch is hit.
                    if vals[k % 32] % 3 != 0 { *v = f64::from_bits(vals[k % 32]); }
                }
                if h.sum.to_bits() == STALE_NAN_BITS { h.sum = 0.0; }
                c.append(t, &h).unwrap();
                want.push((t, h));
            }
            let got = decoded(&c);
            prop_assert_eq!(got.len(), want.len());
            for ((gt, gh), (wt, wh)) in got.iter().zip(&want) {
                prop_assert_eq!(gt, wt);
                prop_assert_eq!(bits(gh), bits(wh));
                prop_assert_eq!(&gh.positive_spans, &wh.positive_spans);
                prop_assert_eq!(&gh.negative_spans, &wh.negative_spans);
            }
            let reopened = FloatHistogramChunk::from_bytes(c.bytes()).unwrap();
            prop_assert_eq!(reopened.bytes(), c.bytes());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Float counters whose buckets appear (recoding) or go missing while empty
        /// (expanding the sample) keep every non-empty bucket, on both sides.
        #[test]
        fn prop_counter_with_changing_buckets(steps in proptest::collection::vec(
            (proptest::collection::vec(0u8..4, 8), proptest::option::of((-12i64..12, 0u8..5, any::<bool>())), any::<bool>()), 1..25)) {
            use std::collections::BTreeMap;
            let (mut pos, mut neg) = (BTreeMap::<i64, f64>::new(), BTreeMap::<i64, f64>::new());
            let mut c = FloatHistogramChunk::new();
            let mut want = Vec::new();
            fn layout(m: &BTreeMap<i64, f64>, drop_empty: bool) -> (Vec<Span>, Vec<f64>) {
                let mut spans: Vec<Span> = Vec::new();
                let (mut vals, mut last) = (Vec::new(), None::<i64>);
                for (&i, &v) in m.iter().filter(|(_, v)| !drop_empty || **v != 0.0) {
                    match last {
                        Some(l) if i == l + 1 => spans.last_mut().unwrap().length += 1,
                        Some(l) => spans.push(Span { offset: (i - l - 1) as i32, length: 1 }),
                        None => spans.push(Span { offset: i as i32, length: 1 }),
                    }
                    vals.push(v);
                    last = Some(i);
                }
                (spans, vals)
            }
            for (i, (incs, new_bucket, drop_empty)) in steps.into_iter().enumerate() {
                for (k, v) in pos.values_mut().chain(neg.values_mut()).enumerate() {
                    *v += f64::from(incs[k % 8]) * 0.5;
                }
                if let Some((idx, v, negative)) = new_bucket {
                    if negative { neg.entry(idx).or_insert(f64::from(v)); } else { pos.entry(idx).or_insert(f64::from(v)); }
                }
                let (ps, pb) = layout(&pos, drop_empty);
                let (ns, nb) = layout(&neg, drop_empty);
                let h = FloatHistogram {
                    schema: 0,
                    count: pos.values().chain(neg.values()).sum(),
                    sum: i as f64,
                    positive_spans: ps,
                    positive_buckets: pb,
                    negative_spans: ns,
                    negative_buckets: nb,
                    ..Default::default()
                };
                c.append(i as i64 * 1000, &h).unwrap();
                want.push(h);
            }
            let nonzero = |spans: &[Span], vals: &[f64]| -> Vec<(i64, u64)> {
                crate::chunkenc::histogram_meta::bucket_indexes(spans)
                    .zip(vals.iter())
                    .filter(|(_, v)| **v != 0.0)
                    .map(|(i, v)| (i, v.to_bits()))
                    .collect()
            };
            let got = decoded(&c);
            prop_assert_eq!(got.len(), want.len());
            for ((_, g), w) in got.iter().zip(&want) {
                prop_assert_eq!(g.count.to_bits(), w.count.to_bits());
                prop_assert_eq!(nonzero(&g.positive_spans, &g.positive_buckets), nonzero(&w.positive_spans, &w.positive_buckets));
                prop_assert_eq!(nonzero(&g.negative_spans, &g.negative_buckets), nonzero(&w.negative_spans, &w.negative_buckets));
            }
            let reopened = FloatHistogramChunk::from_bytes(c.bytes()).unwrap();
            prop_assert_eq!(reopened.bytes(), c.bytes());
        }
    }
}
