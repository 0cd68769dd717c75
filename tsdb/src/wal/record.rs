//! WAL record bodies (spec §7.3): series, samples, tombstones, exemplars and
//! native-histogram sample records, byte-compatible with Prometheus's `tsdb/record`.
//!
//! Refs are head series refs. Other record types (metadata, mmap markers …) are
//! recognised and returned as [`Record::Unknown`] so replay can skip them.

use norn_model::{CounterResetHint, FloatHistogram, Histogram, Labels, Span, histogram::CUSTOM_BUCKETS_SCHEMA};

use crate::encoding::{Decbuf, DecodeError, put_be64, put_uvarint, put_uvarint_bytes, put_varint};

/// Record type bytes.
pub const SERIES: u8 = 1;
pub const SAMPLES: u8 = 2;
pub const TOMBSTONES: u8 = 3;
pub const EXEMPLARS: u8 = 4;
pub const HISTOGRAM_SAMPLES: u8 = 7;
pub const FLOAT_HISTOGRAM_SAMPLES: u8 = 8;
pub const CUSTOM_BUCKETS_HISTOGRAM_SAMPLES: u8 = 9;
pub const CUSTOM_BUCKETS_FLOAT_HISTOGRAM_SAMPLES: u8 = 10;

/// A series definition: its head ref and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct RefSeries {
    /// Head series ref.
    pub series_ref: u64,
    /// The series' labels.
    pub labels: Labels,
}

/// One float sample of a head series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefSample {
    /// Head series ref.
    pub series_ref: u64,
    /// Timestamp (ms).
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// One deleted interval (closed) of a head series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefTombstone {
    /// Head series ref.
    pub series_ref: u64,
    /// First deleted timestamp.
    pub mint: i64,
    /// Last deleted timestamp.
    pub maxt: i64,
}

/// One exemplar of a head series.
#[derive(Debug, Clone, PartialEq)]
pub struct RefExemplar {
    /// Head series ref.
    pub series_ref: u64,
    /// Timestamp (ms).
    pub t: i64,
    /// Value.
    pub v: f64,
    /// The exemplar's own labels (e.g. `trace_id`).
    pub labels: Labels,
}

/// One integer histogram sample.
#[derive(Debug, Clone, PartialEq)]
pub struct RefHistogramSample {
    /// Head series ref.
    pub series_ref: u64,
    /// Timestamp (ms).
    pub t: i64,
    /// The histogram.
    pub h: Histogram,
}

/// One float histogram sample.
#[derive(Debug, Clone, PartialEq)]
pub struct RefFloatHistogramSample {
    /// Head series ref.
    pub series_ref: u64,
    /// Timestamp (ms).
    pub t: i64,
    /// The float histogram.
    pub fh: FloatHistogram,
}

/// A decoded WAL record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Type 1.
    Series(Vec<RefSeries>),
    /// Type 2.
    Samples(Vec<RefSample>),
    /// Type 3.
    Tombstones(Vec<RefTombstone>),
    /// Type 4.
    Exemplars(Vec<RefExemplar>),
    /// Types 7 and 9 (exponential and custom-bucket integer histograms).
    Histograms(Vec<RefHistogramSample>),
    /// Types 8 and 10.
    FloatHistograms(Vec<RefFloatHistogramSample>),
    /// A type this engine does not replay; carries the type byte.
    Unknown(u8),
}

/// Decodes one record. Errors carry the offset within the record.
pub fn decode(rec: &[u8]) -> Result<Record, DecodeError> {
    let mut d = Decbuf::new(rec);
    let typ = d.u8()?;
    let r =
        match typ {
            SERIES => {
                let mut out = Vec::new();
                while d.remaining() > 0 {
                    let series_ref = d.be64()?;
                    let labels = decode_labels(&mut d)?;
                    out.push(RefSeries { series_ref, labels });
                }
                Record::Series(out)
            }
            SAMPLES => Record::Samples(decode_delta_samples(
                &mut d,
                |d| d.be_f64(),
                |series_ref, t, v| RefSample { series_ref, t, v },
            )?),
            TOMBSTONES => {
                let mut out = Vec::new();
                while d.remaining() > 0 {
                    out.push(RefTombstone { series_ref: d.be64()?, mint: d.varint()?, maxt: d.varint()? });
                }
                Record::Tombstones(out)
            }
            EXEMPLARS => Record::Exemplars(decode_delta_samples(
                &mut d,
                |d| Ok((d.be_f64()?, decode_labels(d)?)),
                |series_ref, t, (v, labels)| RefExemplar { series_ref, t, v, labels },
            )?),
            HISTOGRAM_SAMPLES | CUSTOM_BUCKETS_HISTOGRAM_SAMPLES => {
                Record::Histograms(decode_delta_samples(&mut d, decode_histogram, |series_ref, t, h| {
                    RefHistogramSample { series_ref, t, h }
                })?)
            }
            FLOAT_HISTOGRAM_SAMPLES | CUSTOM_BUCKETS_FLOAT_HISTOGRAM_SAMPLES => {
                Record::FloatHistograms(decode_delta_samples(&mut d, decode_float_histogram, |series_ref, t, fh| {
                    RefFloatHistogramSample { series_ref, t, fh }
                })?)
            }
            other => Record::Unknown(other),
        };
    Ok(r)
}

/// Appends a series record.
pub fn encode_series(series: &[RefSeries], out: &mut Vec<u8>) {
    out.push(SERIES);
    for s in series {
        put_be64(out, s.series_ref);
        encode_labels(&s.labels, out);
    }
}

fn encode_labels(labels: &Labels, out: &mut Vec<u8>) {
    put_uvarint(out, labels.len() as u64);
    for (n, v) in labels.iter() {
        put_uvarint_bytes(out, n.as_bytes());
        put_uvarint_bytes(out, v.as_bytes());
    }
}

/// A label count then that many name/value pairs, sorted by name (as Prometheus writes
/// them).
fn decode_labels(d: &mut Decbuf<'_>) -> Result<Labels, DecodeError> {
    let n = d.uvarint_len()?;
    let at = d.offset();
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        pairs.push((d.uvarint_str()?, d.uvarint_str()?));
    }
    Labels::from_sorted(pairs).map_err(|_| DecodeError { what: "labels unsorted, duplicate or empty name", offset: at })
}

/// Appends an exemplars record: like a samples record (BE64 base ref and time, signed
/// varint deltas, BE64 value), each entry followed by the exemplar's labels. An empty
/// list gives the bare type byte, as Prometheus's encoder does.
pub fn encode_exemplars(exemplars: &[RefExemplar], out: &mut Vec<u8>) {
    out.push(EXEMPLARS);
    let Some(first) = exemplars.first() else { return };
    put_be64(out, first.series_ref);
    put_be64(out, first.t as u64);
    for e in exemplars {
        put_varint(out, e.series_ref.wrapping_sub(first.series_ref) as i64);
        put_varint(out, e.t.wrapping_sub(first.t));
        put_be64(out, e.v.to_bits());
        encode_labels(&e.labels, out);
    }
}

/// Appends a samples record (deltas against the first sample, as signed varints).
pub fn encode_samples(samples: &[RefSample], out: &mut Vec<u8>) {
    out.push(SAMPLES);
    let Some(first) = samples.first() else { return };
    put_be64(out, first.series_ref);
    put_be64(out, first.t as u64);
    for s in samples {
        put_varint(out, s.series_ref.wrapping_sub(first.series_ref) as i64);
        put_varint(out, s.t.wrapping_sub(first.t));
        put_be64(out, s.v.to_bits());
    }
}

/// Appends a tombstones record.
pub fn encode_tombstones(stones: &[RefTombstone], out: &mut Vec<u8>) {
    out.push(TOMBSTONES);
    for s in stones {
        put_be64(out, s.series_ref);
        put_varint(out, s.mint);
        put_varint(out, s.maxt);
    }
}

/// Appends histogram sample records the way Prometheus's v1 encoder does: exponential
/// histograms in a type-7 record, custom-bucket ones in a separate type-9 record (each
/// only if non-empty).
pub fn encode_histograms(samples: &[RefHistogramSample], out: &mut Vec<Vec<u8>>) {
    let (custom, exp): (Vec<_>, Vec<_>) = samples.iter().partition(|s| s.h.schema == CUSTOM_BUCKETS_SCHEMA);
    for (typ, group) in [(HISTOGRAM_SAMPLES, exp), (CUSTOM_BUCKETS_HISTOGRAM_SAMPLES, custom)] {
        let Some(first) = group.first() else { continue };
        let mut b = vec![typ];
        put_be64(&mut b, first.series_ref);
        put_be64(&mut b, first.t as u64);
        for s in &group {
            put_varint(&mut b, s.series_ref.wrapping_sub(first.series_ref) as i64);
            put_varint(&mut b, s.t.wrapping_sub(first.t));
            encode_histogram(&s.h, &mut b);
        }
        out.push(b);
    }
}

/// Float-histogram counterpart of [`encode_histograms`] (types 8 and 10).
pub fn encode_float_histograms(samples: &[RefFloatHistogramSample], out: &mut Vec<Vec<u8>>) {
    let (custom, exp): (Vec<_>, Vec<_>) = samples.iter().partition(|s| s.fh.schema == CUSTOM_BUCKETS_SCHEMA);
    for (typ, group) in [(FLOAT_HISTOGRAM_SAMPLES, exp), (CUSTOM_BUCKETS_FLOAT_HISTOGRAM_SAMPLES, custom)] {
        let Some(first) = group.first() else { continue };
        let mut b = vec![typ];
        put_be64(&mut b, first.series_ref);
        put_be64(&mut b, first.t as u64);
        for s in &group {
            put_varint(&mut b, s.series_ref.wrapping_sub(first.series_ref) as i64);
            put_varint(&mut b, s.t.wrapping_sub(first.t));
            encode_float_histogram(&s.fh, &mut b);
        }
        out.push(b);
    }
}

fn encode_spans(spans: &[Span], out: &mut Vec<u8>) {
    put_uvarint(out, spans.len() as u64);
    for s in spans {
        put_varint(out, i64::from(s.offset));
        put_uvarint(out, u64::from(s.length));
    }
}

/// The framing every sample record shares: a BE64 base ref and base time, then per entry
/// signed varint deltas to both and the value.
fn decode_delta_samples<'a, V, S>(
    d: &mut Decbuf<'a>,
    mut value: impl FnMut(&mut Decbuf<'a>) -> Result<V, DecodeError>,
    make: impl Fn(u64, i64, V) -> S,
) -> Result<Vec<S>, DecodeError> {
    let mut out = Vec::new();
    if d.remaining() > 0 {
        let base_ref = d.be64()?;
        let base_t = d.be64()? as i64;
        while d.remaining() > 0 {
            let dref = d.varint()?;
            let dt = d.varint()?;
            let v = value(d)?;
            out.push(make(base_ref.wrapping_add(dref as u64), base_t.wrapping_add(dt), v));
        }
    }
    Ok(out)
}

fn decode_spans(d: &mut Decbuf<'_>) -> Result<Vec<Span>, DecodeError> {
    let n = d.uvarint_len()?;
    let mut spans = Vec::with_capacity(n);
    for _ in 0..n {
        let at = d.offset();
        let offset =
            i32::try_from(d.varint()?).map_err(|_| DecodeError { what: "span offset overflows", offset: at })?;
        spans.push(Span { offset, length: d.uvarint32()? });
    }
    Ok(spans)
}

pub(crate) fn encode_histogram(h: &Histogram, out: &mut Vec<u8>) {
    out.push(h.counter_reset_hint as u8);
    put_varint(out, i64::from(h.schema));
    put_be64(out, h.zero_threshold.to_bits());
    put_uvarint(out, h.zero_count);
    put_uvarint(out, h.count);
    put_be64(out, h.sum.to_bits());
    encode_spans(&h.positive_spans, out);
    encode_spans(&h.negative_spans, out);
    for buckets in [&h.positive_buckets, &h.negative_buckets] {
        put_uvarint(out, buckets.len() as u64);
        for b in buckets {
            put_varint(out, *b);
        }
    }
    if h.schema == CUSTOM_BUCKETS_SCHEMA {
        put_uvarint(out, h.custom_values.len() as u64);
        for v in &h.custom_values {
            put_be64(out, v.to_bits());
        }
    }
}

fn decode_schema(d: &mut Decbuf<'_>) -> Result<i32, DecodeError> {
    let at = d.offset();
    i32::try_from(d.varint()?).map_err(|_| DecodeError { what: "histogram schema overflows", offset: at })
}

fn decode_f64s(d: &mut Decbuf<'_>) -> Result<Vec<f64>, DecodeError> {
    let n = d.uvarint_len()?;
    (0..n).map(|_| d.be_f64()).collect()
}

fn decode_histogram(d: &mut Decbuf<'_>) -> Result<Histogram, DecodeError> {
    let counter_reset_hint = CounterResetHint::from_u8(d.u8()?);
    let schema = decode_schema(d)?;
    let zero_threshold = d.be_f64()?;
    let zero_count = d.uvarint()?;
    let count = d.uvarint()?;
    let sum = d.be_f64()?;
    let positive_spans = decode_spans(d)?;
    let negative_spans = decode_spans(d)?;
    let mut ints = || -> Result<Vec<i64>, DecodeError> {
        let n = d.uvarint_len()?;
        (0..n).map(|_| d.varint()).collect()
    };
    let positive_buckets = ints()?;
    let negative_buckets = ints()?;
    let custom_values = if schema == CUSTOM_BUCKETS_SCHEMA { decode_f64s(d)? } else { Vec::new() };
    Ok(Histogram {
        counter_reset_hint,
        schema,
        zero_threshold,
        zero_count,
        count,
        sum,
        positive_spans,
        negative_spans,
        positive_buckets,
        negative_buckets,
        custom_values,
    })
}

pub(crate) fn encode_float_histogram(h: &FloatHistogram, out: &mut Vec<u8>) {
    out.push(h.counter_reset_hint as u8);
    put_varint(out, i64::from(h.schema));
    for f in [h.zero_threshold, h.zero_count, h.count, h.sum] {
        put_be64(out, f.to_bits());
    }
    encode_spans(&h.positive_spans, out);
    encode_spans(&h.negative_spans, out);
    for buckets in [&h.positive_buckets, &h.negative_buckets] {
        put_uvarint(out, buckets.len() as u64);
        for b in buckets {
            put_be64(out, b.to_bits());
        }
    }
    if h.schema == CUSTOM_BUCKETS_SCHEMA {
        put_uvarint(out, h.custom_values.len() as u64);
        for v in &h.custom_values {
            put_be64(out, v.to_bits());
        }
    }
}

fn decode_float_histogram(d: &mut Decbuf<'_>) -> Result<FloatHistogram, DecodeError> {
    let counter_reset_hint = CounterResetHint::from_u8(d.u8()?);
    let schema = decode_schema(d)?;
    let zero_threshold = d.be_f64()?;
    let zero_count = d.be_f64()?;
    let count = d.be_f64()?;
    let sum = d.be_f64()?;
    let positive_spans = decode_spans(d)?;
    let negative_spans = decode_spans(d)?;
    let positive_buckets = decode_f64s(d)?;
    let negative_buckets = decode_f64s(d)?;
    let custom_values = if schema == CUSTOM_BUCKETS_SCHEMA { decode_f64s(d)? } else { Vec::new() };
    Ok(FloatHistogram {
        counter_reset_hint,
        schema,
        zero_threshold,
        zero_count,
        count,
        sum,
        positive_spans,
        negative_spans,
        positive_buckets,
        negative_buckets,
        custom_values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_golden_bytes_use_signed_deltas() {
        let s = [RefSample { series_ref: 5, t: 1000, v: 1.0 }, RefSample { series_ref: 4, t: 999, v: 2.0 }];
        let mut b = Vec::new();
        encode_samples(&s, &mut b);
        let mut want = vec![2];
        want.extend_from_slice(&5u64.to_be_bytes());
        want.extend_from_slice(&1000u64.to_be_bytes());
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        want.extend_from_slice(&[1, 1]); // zig-zag -1, -1
        want.extend_from_slice(&2.0f64.to_bits().to_be_bytes());
        assert_eq!(b, want);
        assert_eq!(decode(&b).unwrap(), Record::Samples(s.to_vec()));
        assert_eq!(decode(&[2]).unwrap(), Record::Samples(vec![]));
    }

    #[test]
    fn round_trips() {
        let series = vec![
            RefSeries { series_ref: 1, labels: Labels::from_pairs([("__name__", "up"), ("job", "a")]) },
            RefSeries { series_ref: 2, labels: Labels::empty() },
        ];
        let mut b = Vec::new();
        encode_series(&series, &mut b);
        assert_eq!(decode(&b).unwrap(), Record::Series(series));

        let stones = vec![RefTombstone { series_ref: 3, mint: -5, maxt: 10 }];
        let mut b = Vec::new();
        encode_tombstones(&stones, &mut b);
        assert_eq!(decode(&b).unwrap(), Record::Tombstones(stones));

        let h = Histogram {
            counter_reset_hint: CounterResetHint::NotCounterReset,
            schema: 1,
            zero_threshold: 0.001,
            zero_count: 2,
            count: 10,
            sum: 12.5,
            positive_spans: vec![Span { offset: -2, length: 2 }],
            negative_spans: vec![],
            positive_buckets: vec![3, -1],
            negative_buckets: vec![],
            custom_values: vec![],
        };
        let custom = Histogram { schema: CUSTOM_BUCKETS_SCHEMA, custom_values: vec![1.0, 5.0], ..h.clone() };
        let hs = vec![
            RefHistogramSample { series_ref: 7, t: 100, h: h.clone() },
            RefHistogramSample { series_ref: 8, t: 90, h: custom.clone() },
        ];
        let mut recs = Vec::new();
        encode_histograms(&hs, &mut recs);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0][0], HISTOGRAM_SAMPLES);
        assert_eq!(recs[1][0], CUSTOM_BUCKETS_HISTOGRAM_SAMPLES);
        assert_eq!(decode(&recs[0]).unwrap(), Record::Histograms(vec![hs[0].clone()]));
        assert_eq!(decode(&recs[1]).unwrap(), Record::Histograms(vec![hs[1].clone()]));

        let fhs = vec![RefFloatHistogramSample { series_ref: 7, t: 100, fh: h.to_float() }];
        let mut recs = Vec::new();
        encode_float_histograms(&fhs, &mut recs);
        assert_eq!(recs.len(), 1);
        assert_eq!(decode(&recs[0]).unwrap(), Record::FloatHistograms(fhs));
        assert_eq!(decode(&[6, 1, 2, 3]).unwrap(), Record::Unknown(6));
    }

    #[test]
    fn exemplars_golden_bytes() {
        let e = [
            RefExemplar { series_ref: 3, t: 100, v: 1.5, labels: Labels::from_pairs([("trace_id", "ab")]) },
            RefExemplar { series_ref: 2, t: 101, v: -1.0, labels: Labels::empty() },
        ];
        let mut b = Vec::new();
        encode_exemplars(&e, &mut b);
        let mut want = vec![EXEMPLARS];
        want.extend_from_slice(&3u64.to_be_bytes());
        want.extend_from_slice(&100u64.to_be_bytes());
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
        want.extend_from_slice(&[1, 8]);
        want.extend_from_slice(b"trace_id");
        want.extend_from_slice(&[2]);
        want.extend_from_slice(b"ab");
        want.extend_from_slice(&[1, 2]); // zig-zag -1, +1
        want.extend_from_slice(&(-1.0f64).to_bits().to_be_bytes());
        want.push(0);
        assert_eq!(b, want);
        assert_eq!(decode(&b).unwrap(), Record::Exemplars(e.to_vec()));
    }

    #[test]
    fn exemplar_round_trips() {
        let l = |p: &[(&str, &str)]| Labels::from_pairs(p.iter().copied());
        let cases: Vec<Vec<RefExemplar>> = vec![
            vec![],
            vec![RefExemplar { series_ref: 0, t: i64::MIN, v: f64::NAN, labels: l(&[]) }],
            vec![
                RefExemplar { series_ref: u64::MAX, t: i64::MAX, v: 0.0, labels: l(&[("a", "1"), ("b", "é")]) },
                RefExemplar { series_ref: 1, t: i64::MIN, v: f64::INFINITY, labels: l(&[("trace_id", "x")]) },
            ],
        ];
        for want in cases {
            let mut b = Vec::new();
            encode_exemplars(&want, &mut b);
            let Record::Exemplars(got) = decode(&b).unwrap() else { panic!("not an exemplars record") };
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(
                    (g.series_ref, g.t, g.v.to_bits(), &g.labels),
                    (w.series_ref, w.t, w.v.to_bits(), &w.labels)
                );
            }
            for n in 0..b.len() {
                let _ = decode(&b[..n]);
            }
        }
        // Unsorted labels are refused with the offset of the label set.
        let mut b = vec![EXEMPLARS];
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&[2, 1, b'b', 0, 1, b'a', 0]);
        assert_eq!(decode(&b).unwrap_err().offset, 28);
    }

    proptest::proptest! {
        #[test]
        fn exemplars_round_trip_any(
            es in proptest::collection::vec(
                (proptest::prelude::any::<u64>(), proptest::prelude::any::<i64>(), proptest::prelude::any::<f64>(),
                 proptest::collection::btree_map("[a-z_]{1,5}", ".{0,6}", 0..3)),
                0..20,
            )
        ) {
            let want: Vec<RefExemplar> = es
                .into_iter()
                .map(|(series_ref, t, v, m)| RefExemplar {
                    series_ref, t, v, labels: Labels::from_pairs(m.iter().map(|(a, b)| (a.as_str(), b.as_str()))),
                })
                .collect();
            let mut b = Vec::new();
            encode_exemplars(&want, &mut b);
            let Record::Exemplars(got) = decode(&b).unwrap() else { panic!("not an exemplars record") };
            proptest::prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                proptest::prop_assert_eq!(
                    (g.series_ref, g.t, g.v.to_bits(), &g.labels),
                    (w.series_ref, w.t, w.v.to_bits(), &w.labels)
                );
            }
        }
    }

    #[test]
    fn truncations_never_panic() {
        let mut b = Vec::new();
        encode_series(&[RefSeries { series_ref: 1, labels: Labels::from_pairs([("a", "b")]) }], &mut b);
        let mut s = Vec::new();
        encode_samples(&[RefSample { series_ref: 1, t: 1, v: 1.0 }; 3], &mut s);
        for rec in [b, s] {
            for n in 0..rec.len() {
                let _ = decode(&rec[..n]);
            }
        }
        assert!(decode(&[]).is_err());
    }
}
