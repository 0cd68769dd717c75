//! What the integer and float histogram chunks share (`tsdb/chunkenc/histogram_meta.go`):
//! the chunk header flags, the layout block written before the first sample, and the
//! bucket-layout comparisons that decide whether a histogram fits an existing chunk.

use norn_model::histogram::CUSTOM_BUCKETS_SCHEMA;
use norn_model::{CounterResetHint, Span};

use super::bstream::{BitReader, BitWriter};
use super::varbit::{put_varbit_int, put_varbit_uint, read_varbit_int, read_varbit_uint};

/// Bytes before the bit stream: BE16 sample count, then the flags byte.
pub(crate) const HEADER_SIZE: usize = 3;
/// Position of the flags byte.
pub(crate) const FLAGS_POS: usize = 2;
const HEADER_MASK: u8 = 0b1100_0000;

/// The value Prometheus uses as the stale marker (`model/value.StaleNaN`).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is the stale marker (compared bitwise: other NaNs are ordinary values).
#[inline]
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// The counter-reset information a histogram chunk carries in the top two bits of its
/// flags byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum CounterResetHeader {
    /// Nothing is known; readers must detect resets themselves.
    #[default]
    Unknown = 0b0000_0000,
    /// The chunk was cut because of a counter reset.
    CounterReset = 0b1000_0000,
    /// The chunk was cut without a counter reset.
    NotCounterReset = 0b0100_0000,
    /// The chunk holds gauge histograms.
    Gauge = 0b1100_0000,
}

impl CounterResetHeader {
    /// From the flags byte (other bits ignored).
    pub fn from_flags(b: u8) -> Self {
        match b & HEADER_MASK {
            0b1000_0000 => Self::CounterReset,
            0b0100_0000 => Self::NotCounterReset,
            0b1100_0000 => Self::Gauge,
            _ => Self::Unknown,
        }
    }

    /// The hint a decoded histogram gets: gauge chunks hold gauges; after the first
    /// sample there are no resets inside a chunk; the first sample's relation to the
    /// previous chunk is not trusted (that chunk may be gone or added out of order),
    /// as in Prometheus' `counterResetHint`.
    pub(crate) fn hint_for(self, num_read: u16) -> CounterResetHint {
        if self == Self::Gauge {
            CounterResetHint::Gauge
        } else if num_read > 1 {
            CounterResetHint::NotCounterReset
        } else {
            CounterResetHint::Unknown
        }
    }
}

/// Why a histogram cannot go into the current chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewChunkReason {
    /// A counter reset was hinted or detected.
    CounterReset,
    /// Schema, zero threshold, custom bounds or buckets changed in a way this chunk cannot
    /// absorb (Prometheus would sometimes recode the chunk instead; we cut).
    LayoutChange,
    /// A gauge histogram met a counter chunk or the other way round.
    KindChange,
    /// The previous sample was a stale marker; only stale markers may follow it.
    AfterStale,
    /// The chunk holds the maximum number of samples.
    Full,
}

impl std::fmt::Display for NewChunkReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NewChunkReason::CounterReset => "counter reset",
            NewChunkReason::LayoutChange => "bucket layout change",
            NewChunkReason::KindChange => "gauge/counter histogram kind change",
            NewChunkReason::AfterStale => "sample after stale marker",
            NewChunkReason::Full => "chunk full",
        })
    }
}

/// A histogram could not be appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistogramAppendError {
    /// Cut a new chunk, start it with `header` (see `set_counter_reset_header`), and
    /// append the histogram there.
    #[error("histogram needs a new chunk: {reason}")]
    NeedsNewChunk { reason: NewChunkReason, header: CounterResetHeader },
    /// The histogram itself is malformed (spans and buckets disagree).
    #[error("invalid histogram: {0}")]
    Invalid(&'static str),
}

impl HistogramAppendError {
    pub(crate) fn new_chunk(reason: NewChunkReason, header: CounterResetHeader) -> Self {
        HistogramAppendError::NeedsNewChunk { reason, header }
    }
}

/// The layout block that precedes the first sample.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Layout {
    pub schema: i32,
    pub zero_threshold: f64,
    pub positive_spans: Vec<Span>,
    pub negative_spans: Vec<Span>,
    pub custom_values: Vec<f64>,
}

pub(crate) fn write_layout(
    b: &mut BitWriter,
    schema: i32,
    zero_threshold: f64,
    pos: &[Span],
    neg: &[Span],
    custom_values: &[f64],
) {
    put_zero_threshold(b, zero_threshold);
    put_varbit_int(b, i64::from(schema));
    put_spans(b, pos);
    put_spans(b, neg);
    if schema == CUSTOM_BUCKETS_SCHEMA {
        put_varbit_uint(b, custom_values.len() as u64);
        for v in custom_values {
            put_custom_bound(b, *v);
        }
    }
}

/// Schemas Prometheus accepts when reading: custom buckets and the reserved exponential
/// range (−9 ..= 52).
pub(crate) fn is_known_schema(s: i64) -> bool {
    s == i64::from(CUSTOM_BUCKETS_SCHEMA) || (-9..=52).contains(&s)
}

pub(crate) fn read_layout(r: &mut BitReader<'_>) -> Result<Layout, &'static str> {
    const TRUNC: &str = "truncated layout";
    let zero_threshold = read_zero_threshold(r).ok_or(TRUNC)?;
    let schema = read_varbit_int(r).ok_or(TRUNC)?;
    if !is_known_schema(schema) {
        return Err("unknown histogram schema");
    }
    let positive_spans = read_spans(r)?;
    let negative_spans = read_spans(r)?;
    let mut custom_values = Vec::new();
    if schema == i64::from(CUSTOM_BUCKETS_SCHEMA) {
        let n = read_varbit_uint(r).ok_or(TRUNC)?;
        // Each bound takes at least 5 bits; a larger count cannot be real.
        if n > (r.bits_remaining() / 5) as u64 {
            return Err("custom bound count exceeds chunk size");
        }
        custom_values.reserve(n as usize);
        for _ in 0..n {
            custom_values.push(read_custom_bound(r).ok_or(TRUNC)?);
        }
    }
    Ok(Layout { schema: schema as i32, zero_threshold, positive_spans, negative_spans, custom_values })
}

fn put_spans(b: &mut BitWriter, spans: &[Span]) {
    put_varbit_uint(b, spans.len() as u64);
    for s in spans {
        put_varbit_uint(b, u64::from(s.length));
        put_varbit_int(b, i64::from(s.offset));
    }
}

fn read_spans(r: &mut BitReader<'_>) -> Result<Vec<Span>, &'static str> {
    const TRUNC: &str = "truncated span";
    let n = read_varbit_uint(r).ok_or(TRUNC)?;
    // A span takes at least 2 bits.
    if n > (r.bits_remaining() / 2) as u64 {
        return Err("span count exceeds chunk size");
    }
    let mut spans = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let length = read_varbit_uint(r).ok_or(TRUNC)?;
        let offset = read_varbit_int(r).ok_or(TRUNC)?;
        let length = u32::try_from(length).map_err(|_| "span length out of range")?;
        let offset = i32::try_from(offset).map_err(|_| "span offset out of range")?;
        spans.push(Span { offset, length });
    }
    Ok(spans)
}

/// Zero threshold: 0 → byte 0; a power of two 2^-243 ..= 2^10 → one byte holding the
/// exponent; anything else → byte 255 plus the raw float.
fn put_zero_threshold(b: &mut BitWriter, t: f64) {
    if t == 0.0 {
        b.write_byte(0);
        return;
    }
    match frexp_half_exponent(t) {
        Some(exp) if (-242..=11).contains(&exp) => b.write_byte((exp + 243) as u8),
        _ => {
            b.write_byte(255);
            b.write_bits(t.to_bits(), 64);
        }
    }
}

/// If `t` is exactly 0.5·2^exp (a positive power of two, normal or subnormal), `exp`
/// as Go's `math.Frexp` returns it.
fn frexp_half_exponent(t: f64) -> Option<i32> {
    if !t.is_finite() || t <= 0.0 {
        return None;
    }
    let bits = t.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = bits & ((1u64 << 52) - 1);
    if biased == 0 {
        // Subnormal: a power of two iff exactly one mantissa bit is set.
        if mantissa.count_ones() != 1 {
            return None;
        }
        let p = mantissa.trailing_zeros() as i32; // t = 2^(p - 1074)
        return Some(p - 1074 + 1);
    }
    if mantissa != 0 {
        return None;
    }
    // t = 2^(biased - 1023) = 0.5 · 2^(biased - 1022)
    Some(biased - 1022)
}

fn read_zero_threshold(r: &mut BitReader<'_>) -> Option<f64> {
    match r.read_byte()? {
        0 => Some(0.0),
        255 => r.read_bits(64).map(f64::from_bits),
        b => Some(pow2(i32::from(b) - 244)),
    }
}

/// 2^e for the exponents the one-byte threshold form covers (all normal floats).
fn pow2(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// Custom bound: multiples of 0.001 in 0 ..= 33554.43 are stored as `x·1000 + 1` varbit;
/// others as a 0 bit and the raw float.
fn put_custom_bound(b: &mut BitWriter, f: f64) {
    let tf = f * 1000.0;
    if !(0.0..=33_554_430.0).contains(&tf) || !is_whole_when_multiplied(f) {
        b.write_bit(false);
        b.write_bits(f.to_bits(), 64);
        return;
    }
    put_varbit_uint(b, tf.round() as u64 + 1);
}

fn is_whole_when_multiplied(f: f64) -> bool {
    // Go converts to uint; values reaching here are within 0 ..= 33554430 or NaN.
    let i = (f * 1000.0).round();
    if i.is_nan() || i < 0.0 {
        return false;
    }
    i / 1000.0 == f
}

fn read_custom_bound(r: &mut BitReader<'_>) -> Option<f64> {
    match read_varbit_uint(r)? {
        0 => r.read_bits(64).map(f64::from_bits),
        v => Some((v - 1) as f64 / 1000.0),
    }
}

/// Global bucket indexes the spans cover, in order.
pub(crate) fn bucket_indexes(spans: &[Span]) -> impl Iterator<Item = i64> + '_ {
    let mut idx: i64 = 0;
    spans.iter().enumerate().flat_map(move |(i, s)| {
        let start = if i == 0 { i64::from(s.offset) } else { idx + i64::from(s.offset) };
        idx = start + i64::from(s.length);
        start..start + i64::from(s.length)
    })
}

/// Positions in a bucket slice before which `num` new (empty) buckets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insert {
    pub pos: usize,
    pub num: usize,
}

/// Compares the chunk's buckets `a` (absolute counts) with the new histogram's `b`.
/// Returns `None` on a counter reset (a bucket shrank, or a used bucket disappeared);
/// otherwise the inserts that grow `a`'s layout to `b`'s (forward) and those that grow
/// `b` by buckets that are empty in `a` (backward).
pub(crate) fn expand_spans_and_buckets<T: Copy + PartialOrd + Default>(
    a_spans: &[Span],
    b_spans: &[Span],
    a_abs: &[T],
    b_abs: &[T],
) -> Option<(Vec<Insert>, Vec<Insert>)> {
    let zero = T::default();
    let mut ai = bucket_indexes(a_spans).zip(a_abs.iter().copied()).peekable();
    let mut bi = bucket_indexes(b_spans).zip(b_abs.iter().copied()).peekable();
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    let (mut a_pos, mut b_pos) = (0usize, 0usize);
    fn push(v: &mut Vec<Insert>, pos: usize) {
        match v.last_mut() {
            Some(last) if last.pos == pos => last.num += 1,
            _ => v.push(Insert { pos, num: 1 }),
        }
    }
    loop {
        match (ai.peek().copied(), bi.peek().copied()) {
            (Some((ax, av)), Some((bx, bv))) if ax == bx => {
                if av > bv {
                    return None;
                }
                ai.next();
                bi.next();
                a_pos += 1;
                b_pos += 1;
            }
            (Some((ax, av)), b) if b.is_none_or(|(bx, _)| ax < bx) => {
                // `b` lacks a bucket of `a`: fine only if it was empty.
                if av != zero {
                    return None;
                }
                push(&mut bwd, b_pos);
                ai.next();
                a_pos += 1;
            }
            (_, Some(_)) => {
                push(&mut fwd, a_pos);
                bi.next();
                b_pos += 1;
            }
            _ => return Some((fwd, bwd)),
        }
    }
}

/// Like [`expand_spans_and_buckets`] without counter-reset checks (gauges): inserts in
/// both directions and the union layout.
pub(crate) fn expand_spans_both_ways(a: &[Span], b: &[Span]) -> (Vec<Insert>, Vec<Insert>, Vec<Span>) {
    let mut ai = bucket_indexes(a).peekable();
    let mut bi = bucket_indexes(b).peekable();
    let (mut fwd, mut bwd, mut merged) = (Vec::new(), Vec::new(), Vec::<Span>::new());
    let (mut a_pos, mut b_pos) = (0usize, 0usize);
    let mut last: Option<i64> = None;
    let mut add = |idx: i64, merged: &mut Vec<Span>| {
        match last {
            Some(l) if idx == l + 1 => merged.last_mut().expect("span exists").length += 1,
            Some(l) => merged.push(Span { offset: (idx - l - 1) as i32, length: 1 }),
            None => merged.push(Span { offset: idx as i32, length: 1 }),
        }
        last = Some(idx);
    };
    fn push(v: &mut Vec<Insert>, pos: usize) {
        match v.last_mut() {
            Some(last) if last.pos == pos => last.num += 1,
            _ => v.push(Insert { pos, num: 1 }),
        }
    }
    loop {
        match (ai.peek().copied(), bi.peek().copied()) {
            (Some(x), Some(y)) if x == y => {
                add(x, &mut merged);
                ai.next();
                bi.next();
                a_pos += 1;
                b_pos += 1;
            }
            (Some(x), y) if y.is_none_or(|y| x < y) => {
                push(&mut bwd, b_pos);
                add(x, &mut merged);
                ai.next();
                a_pos += 1;
            }
            (_, Some(y)) => {
                push(&mut fwd, a_pos);
                add(y, &mut merged);
                bi.next();
                b_pos += 1;
            }
            _ => return (fwd, bwd, merged),
        }
    }
}

/// Bucket values that can be delta-adjusted; integers wrap like Go's do.
pub(crate) trait BucketValue: Copy + Default {
    fn plus(self, o: Self) -> Self;
    fn negated(self) -> Self;
}

impl BucketValue for i64 {
    fn plus(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    fn negated(self) -> Self {
        self.wrapping_neg()
    }
}

impl BucketValue for f64 {
    fn plus(self, o: Self) -> Self {
        self + o
    }
    fn negated(self) -> Self {
        -self
    }
}

/// Inserts empty buckets into `input`. For delta-encoded (integer) buckets, the first
/// inserted bucket of a run cancels the running value and the bucket after the run gets
/// it back, so every old bucket keeps its absolute count.
pub(crate) fn insert_buckets<T: BucketValue>(input: &[T], inserts: &[Insert], deltas: bool) -> Vec<T> {
    let extra: usize = inserts.iter().map(|i| i.num).sum();
    let mut out = Vec::with_capacity(input.len() + extra);
    let mut acc = T::default();
    let mut ii = 0;
    let emit_run = |out: &mut Vec<T>, acc: T, num: usize| {
        out.push(if deltas { acc.negated() } else { T::default() });
        for _ in 1..num {
            out.push(T::default());
        }
    };
    for (i, &d) in input.iter().enumerate() {
        if ii < inserts.len() && inserts[ii].pos == i {
            emit_run(&mut out, acc, inserts[ii].num);
            ii += 1;
            out.push(if deltas { d.plus(acc) } else { d });
        } else {
            out.push(d);
        }
        acc = acc.plus(d);
    }
    while ii < inserts.len() {
        emit_run(&mut out, acc, inserts[ii].num);
        acc = T::default();
        ii += 1;
    }
    out
}

/// Absolute counts from delta-encoded integer buckets.
pub(crate) fn absolute(deltas: &[i64]) -> Vec<i64> {
    let mut acc = 0i64;
    deltas
        .iter()
        .map(|d| {
            acc = acc.wrapping_add(*d);
            acc
        })
        .collect()
}

/// Whether two custom-bound lists are identical (exact float equality).
pub(crate) fn custom_bounds_match(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(v: &[(i32, u32)]) -> Vec<Span> {
        v.iter().map(|&(offset, length)| Span { offset, length }).collect()
    }

    #[test]
    fn zero_threshold_encodings() {
        let cases: &[(f64, &[u8])] =
            // Each write is a whole byte, after which Go's bstream holds an empty trailing byte.
            &[(0.0, &[0, 0]), (2f64.powi(-128), &[116, 0]), (1.0, &[244, 0]), (1024.0, &[254, 0]), (2f64.powi(-243), &[1, 0])];
        for &(t, want) in cases {
            let mut w = BitWriter::default();
            put_zero_threshold(&mut w, t);
            assert_eq!(w.bytes(), want, "threshold {t}");
            let mut r = BitReader::new(w.bytes());
            assert_eq!(read_zero_threshold(&mut r).map(f64::to_bits), Some(t.to_bits()));
        }
        for t in [2048.0, 2f64.powi(-244), 0.001, 3.0, f64::INFINITY, -1.0, f64::NAN, 5e-324] {
            let mut w = BitWriter::default();
            put_zero_threshold(&mut w, t);
            assert_eq!(w.bytes().len(), 10, "threshold {t}");
            assert_eq!(w.bytes()[0], 255);
            let mut r = BitReader::new(w.bytes());
            assert_eq!(read_zero_threshold(&mut r).map(f64::to_bits), Some(t.to_bits()));
        }
    }

    #[test]
    fn custom_bounds_round_trip() {
        for f in [0.0, 0.001, 1.5, 33554.43, 33554.431, -1.0, 0.0001, f64::INFINITY, 1e300, f64::NAN] {
            let mut w = BitWriter::default();
            put_custom_bound(&mut w, f);
            let mut r = BitReader::new(w.bytes());
            assert_eq!(read_custom_bound(&mut r).map(f64::to_bits), Some(f.to_bits()), "{f}");
        }
        let mut w = BitWriter::default();
        put_custom_bound(&mut w, 0.005); // 5 + 1 = 6 → "10" "110"
        assert_eq!(w.bytes(), &[0b1011_0000]);
    }

    #[test]
    fn bucket_index_iteration() {
        let got: Vec<i64> = bucket_indexes(&sp(&[(-2, 2), (0, 0), (3, 1), (1, 2)])).collect();
        assert_eq!(got, vec![-2, -1, 3, 5, 6]);
    }

    #[test]
    fn expand_forward_and_backward() {
        // The example from Prometheus' histogram.go comments.
        let a = sp(&[(0, 2), (2, 1), (3, 2), (3, 1), (1, 1)]);
        let b = sp(&[(0, 3), (1, 1), (1, 4), (3, 3)]);
        let a_abs = [6i64, 3, 3, 2, 4, 5, 1];
        let b_abs = [6i64, 3, 0, 3, 0, 0, 2, 4, 5, 0, 1];
        let (fwd, bwd) = expand_spans_and_buckets(&a, &b, &a_abs, &b_abs).unwrap();
        assert_eq!(fwd, vec![Insert { pos: 2, num: 1 }, Insert { pos: 3, num: 2 }, Insert { pos: 6, num: 1 }]);
        assert!(bwd.is_empty());
        let deltas = [6i64, -3, 0, -1, 2, 1, -4];
        let expanded = insert_buckets(&deltas, &fwd, true);
        assert_eq!(expanded, vec![6, -3, -3, 3, -3, 0, 2, 2, 1, -5, 1]);
        // A shrinking bucket is a reset; a vanished empty bucket is a backward insert.
        assert!(expand_spans_and_buckets(&a, &b, &a_abs, &[6, 2, 0, 3, 0, 0, 2, 4, 5, 0, 1]).is_none());
        let (fwd, bwd) = expand_spans_and_buckets(&sp(&[(0, 3)]), &sp(&[(0, 1), (1, 1)]), &[1, 0, 2], &[1, 2]).unwrap();
        assert!(fwd.is_empty());
        assert_eq!(bwd, vec![Insert { pos: 1, num: 1 }]);
        assert!(expand_spans_and_buckets(&sp(&[(0, 3)]), &sp(&[(0, 2)]), &[1, 0, 2], &[1, 2]).is_none());
    }

    #[test]
    fn expand_both_ways_merges_layouts() {
        let (fwd, bwd, merged) = expand_spans_both_ways(&sp(&[(0, 2)]), &sp(&[(1, 2)]));
        assert_eq!(fwd, vec![Insert { pos: 2, num: 1 }]);
        assert_eq!(bwd, vec![Insert { pos: 0, num: 1 }]);
        assert_eq!(merged, sp(&[(0, 3)]));
        let ins = insert_buckets(&[1.0f64, 2.0], &fwd, false);
        assert_eq!(ins, vec![1.0, 2.0, 0.0]);
    }
}
