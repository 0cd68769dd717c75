//! Chunks on the read path: the chunk encodings of the StoreAPI (`thanos.Chunk`) and of
//! Prometheus remote read (`prometheus.Chunk`), decoding wire chunks into samples and
//! encoding samples into wire chunks, and native histograms as remote-read samples.
//!
//! The three numberings differ by one: TSDB segment files use XOR=1, HISTOGRAM=2,
//! FLOAT_HISTOGRAM=3 (as does remote read, with UNKNOWN=0), the StoreAPI XOR=0,
//! HISTOGRAM=1, FLOAT_HISTOGRAM=2. Every crate converts through here so the mapping lives
//! in one place.

use norn_model::{CounterResetHint, FloatHistogram, Histogram, Span};
use norn_tsdb::chunkenc::{Chunk, ChunkError, Encoding, Sample};
use norn_tsdb::chunks::ChunkMeta;

use crate::{prometheus, thanos};

/// Samples per chunk when a querier re-encodes merged series, as Prometheus and Thanos do.
pub const SAMPLES_PER_CHUNK: usize = 120;

/// Why a wire chunk could not be read or samples could not be encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChunkConvertError {
    /// The chunk's type is not one this build knows.
    #[error("unknown {wire} chunk encoding {value}")]
    UnknownEncoding {
        /// `storepb` or `remote read`.
        wire: &'static str,
        /// The number on the wire.
        value: i32,
    },
    /// The chunk's bytes do not decode.
    #[error("chunk [{min_time}, {max_time}]: {source}")]
    Corrupt {
        /// The chunk's announced first timestamp.
        min_time: i64,
        /// The chunk's announced last timestamp.
        max_time: i64,
        /// What the decoder found.
        source: ChunkError,
    },
    /// Samples could not be encoded (out of order, invalid histogram).
    #[error("encoding samples: {0}")]
    Encode(String),
}

/// The StoreAPI number of a chunk encoding.
pub fn storepb_encoding(e: Encoding) -> thanos::chunk::Encoding {
    use thanos::chunk::Encoding as T;
    match e {
        Encoding::Xor => T::Xor,
        Encoding::Histogram => T::Histogram,
        Encoding::FloatHistogram => T::FloatHistogram,
    }
}

/// The chunk encoding of a StoreAPI chunk type.
pub fn encoding_from_storepb(t: i32) -> Result<Encoding, ChunkConvertError> {
    use thanos::chunk::Encoding as T;
    match T::try_from(t) {
        Ok(T::Xor) => Ok(Encoding::Xor),
        Ok(T::Histogram) => Ok(Encoding::Histogram),
        Ok(T::FloatHistogram) => Ok(Encoding::FloatHistogram),
        Err(_) => Err(ChunkConvertError::UnknownEncoding { wire: "storepb", value: t }),
    }
}

/// The remote-read number of a chunk encoding.
pub fn remote_read_encoding(e: Encoding) -> prometheus::chunk::Encoding {
    use prometheus::chunk::Encoding as P;
    match e {
        Encoding::Xor => P::Xor,
        Encoding::Histogram => P::Histogram,
        Encoding::FloatHistogram => P::FloatHistogram,
    }
}

/// The chunk encoding of a remote-read chunk type (`UNKNOWN` is an error).
pub fn encoding_from_remote_read(t: i32) -> Result<Encoding, ChunkConvertError> {
    use prometheus::chunk::Encoding as P;
    match P::try_from(t) {
        Ok(P::Xor) => Ok(Encoding::Xor),
        Ok(P::Histogram) => Ok(Encoding::Histogram),
        Ok(P::FloatHistogram) => Ok(Encoding::FloatHistogram),
        Ok(P::Unknown) | Err(_) => Err(ChunkConvertError::UnknownEncoding { wire: "remote read", value: t }),
    }
}

/// A TSDB chunk as a raw StoreAPI chunk; `hash` is the xxhash64 of the data or 0.
pub fn aggr_chunk(meta: &ChunkMeta, hash: u64) -> thanos::AggrChunk {
    thanos::AggrChunk {
        min_time: meta.min_time,
        max_time: meta.max_time,
        raw: Some(thanos::Chunk {
            r#type: storepb_encoding(meta.chunk.encoding) as i32,
            data: meta.chunk.data.to_vec(),
            hash,
        }),
        ..Default::default()
    }
}

/// A TSDB chunk as a remote-read chunk.
pub fn remote_read_chunk(meta: &ChunkMeta) -> prometheus::Chunk {
    prometheus::Chunk {
        min_time_ms: meta.min_time,
        max_time_ms: meta.max_time,
        r#type: remote_read_encoding(meta.chunk.encoding) as i32,
        data: meta.chunk.data.to_vec(),
    }
}

/// Encodes time-ordered samples of any type into chunks of at most
/// [`SAMPLES_PER_CHUNK`] samples; a new chunk starts where the value type changes or a
/// histogram chunk cannot take the next histogram (layout change, counter reset).
pub fn encode_samples(samples: impl IntoIterator<Item = Sample>) -> Result<Vec<ChunkMeta>, ChunkConvertError> {
    norn_tsdb::series::encode_samples(samples, SAMPLES_PER_CHUNK).map_err(|e| ChunkConvertError::Encode(e.to_string()))
}

/// Decodes the raw part of a StoreAPI chunk, appending the samples in `[mint, maxt]` to
/// `out`. Chunks without raw data (downsampled aggregates only) and chunks outside the
/// range add nothing.
pub fn decode_aggr_chunk(
    c: &thanos::AggrChunk,
    mint: i64,
    maxt: i64,
    out: &mut Vec<Sample>,
) -> Result<(), ChunkConvertError> {
    for_each_sample(c, mint, maxt, |s| out.push(s))
}

/// Like [`decode_aggr_chunk`], handing each sample in `[mint, maxt]` to `f` (no
/// intermediate buffer on the querier's hot path).
pub fn for_each_sample(
    c: &thanos::AggrChunk,
    mint: i64,
    maxt: i64,
    mut f: impl FnMut(Sample),
) -> Result<(), ChunkConvertError> {
    let Some(raw) = &c.raw else { return Ok(()) };
    let enc = encoding_from_storepb(raw.r#type)?;
    if c.max_time < mint || c.min_time > maxt {
        return Ok(());
    }
    let corrupt =
        |source: ChunkError| ChunkConvertError::Corrupt { min_time: c.min_time, max_time: c.max_time, source };
    let chunk = Chunk::new(enc, raw.data.clone());
    let mut it = chunk.iter().map_err(corrupt)?;
    for s in it.by_ref() {
        let t = s.timestamp();
        if t < mint {
            continue;
        }
        if t > maxt {
            break;
        }
        f(s);
    }
    match it.err() {
        Some(e) => Err(corrupt(e.clone())),
        None => Ok(()),
    }
}

fn spans_to_proto(s: &[Span]) -> Vec<prometheus::BucketSpan> {
    s.iter().map(|s| prometheus::BucketSpan { offset: s.offset, length: s.length }).collect()
}

fn reset_hint_to_proto(h: CounterResetHint) -> i32 {
    use prometheus::histogram::ResetHint;
    (match h {
        CounterResetHint::Unknown => ResetHint::Unknown,
        CounterResetHint::CounterReset => ResetHint::Yes,
        CounterResetHint::NotCounterReset => ResetHint::No,
        CounterResetHint::Gauge => ResetHint::Gauge,
    }) as i32
}

/// An integer histogram as a remote-read (or remote-write) sample, as Prometheus's
/// `HistogramToHistogramProto` writes it.
pub fn histogram_to_proto(t: i64, h: &Histogram) -> prometheus::Histogram {
    use prometheus::histogram::{Count, ZeroCount};
    prometheus::Histogram {
        count: Some(Count::CountInt(h.count)),
        sum: h.sum,
        schema: h.schema,
        zero_threshold: h.zero_threshold,
        zero_count: Some(ZeroCount::ZeroCountInt(h.zero_count)),
        negative_spans: spans_to_proto(&h.negative_spans),
        negative_deltas: h.negative_buckets.clone(),
        positive_spans: spans_to_proto(&h.positive_spans),
        positive_deltas: h.positive_buckets.clone(),
        reset_hint: reset_hint_to_proto(h.counter_reset_hint),
        timestamp: t,
        custom_values: h.custom_values.clone(),
        ..Default::default()
    }
}

/// A float histogram as a remote-read sample, as Prometheus's
/// `FloatHistogramToHistogramProto` writes it.
pub fn float_histogram_to_proto(t: i64, h: &FloatHistogram) -> prometheus::Histogram {
    use prometheus::histogram::{Count, ZeroCount};
    prometheus::Histogram {
        count: Some(Count::CountFloat(h.count)),
        sum: h.sum,
        schema: h.schema,
        zero_threshold: h.zero_threshold,
        zero_count: Some(ZeroCount::ZeroCountFloat(h.zero_count)),
        negative_spans: spans_to_proto(&h.negative_spans),
        negative_counts: h.negative_buckets.clone(),
        positive_spans: spans_to_proto(&h.positive_spans),
        positive_counts: h.positive_buckets.clone(),
        reset_hint: reset_hint_to_proto(h.counter_reset_hint),
        timestamp: t,
        custom_values: h.custom_values.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(i: u64) -> Histogram {
        Histogram {
            schema: 1,
            zero_threshold: 0.001,
            zero_count: i,
            count: 4 * i + 2,
            sum: i as f64 * 2.5,
            positive_spans: vec![Span { offset: -2, length: 2 }, Span { offset: 3, length: 1 }],
            positive_buckets: vec![i as i64, 1, -1],
            negative_spans: vec![Span { offset: 0, length: 1 }],
            negative_buckets: vec![2 * i as i64],
            ..Default::default()
        }
    }

    /// Floats, then int histograms with a counter reset, then float histograms.
    fn mixed() -> Vec<Sample> {
        let mut v: Vec<Sample> = (0..5).map(|i| Sample::Float(i * 1000, i as f64)).collect();
        for i in 5..300u64 {
            let n = if i == 200 { 1 } else { i };
            v.push(Sample::Histogram(i as i64 * 1000, Box::new(hist(n))));
        }
        for i in 300..310u64 {
            v.push(Sample::FloatHistogram(i as i64 * 1000, Box::new(hist(i).to_float())));
        }
        v
    }

    #[test]
    fn encodings_round_trip_on_both_wires() {
        for e in [Encoding::Xor, Encoding::Histogram, Encoding::FloatHistogram] {
            assert_eq!(encoding_from_storepb(storepb_encoding(e) as i32).unwrap(), e);
            assert_eq!(encoding_from_remote_read(remote_read_encoding(e) as i32).unwrap(), e);
            // Remote read shares the segment-file numbering; the StoreAPI is one lower.
            assert_eq!(remote_read_encoding(e) as i32, e as i32);
            assert_eq!(storepb_encoding(e) as i32, e as i32 - 1);
        }
        let cases = [(3, true), (-1, true), (0, false)];
        for (v, storepb_err) in cases {
            assert_eq!(encoding_from_storepb(v).is_err(), storepb_err, "storepb {v}");
        }
        assert!(encoding_from_remote_read(0).is_err());
        assert!(encoding_from_remote_read(7).is_err());
    }

    #[test]
    fn samples_survive_storepb_chunks() {
        let samples = mixed();
        let metas = encode_samples(samples.clone()).unwrap();
        let encs: Vec<Encoding> = metas.iter().map(|m| m.chunk.encoding).collect();
        // One XOR chunk, int histograms cut at 120 samples and at the counter reset, one
        // float-histogram chunk.
        assert_eq!(encs.first(), Some(&Encoding::Xor));
        assert_eq!(encs.last(), Some(&Encoding::FloatHistogram));
        assert!(encs.iter().filter(|e| **e == Encoding::Histogram).count() >= 3, "{encs:?}");
        let wire: Vec<thanos::AggrChunk> = metas.iter().map(|m| aggr_chunk(m, 0)).collect();
        let mut got = Vec::new();
        for c in &wire {
            decode_aggr_chunk(c, i64::MIN, i64::MAX, &mut got).unwrap();
        }
        assert_eq!(got.len(), samples.len());
        for (g, w) in got.iter().zip(&samples) {
            // Decoding sets counter-reset hints the input did not carry; compare the rest.
            match (g, w) {
                (Sample::Histogram(t1, a), Sample::Histogram(t2, b)) => {
                    assert_eq!(t1, t2);
                    assert_eq!(
                        (a.count, &a.positive_buckets, &a.negative_buckets),
                        (b.count, &b.positive_buckets, &b.negative_buckets)
                    );
                }
                (Sample::FloatHistogram(t1, a), Sample::FloatHistogram(t2, b)) => {
                    assert_eq!(t1, t2);
                    assert_eq!((a.count, &a.positive_buckets), (b.count, &b.positive_buckets));
                }
                _ => assert_eq!(g, w),
            }
        }
        // The sample after the reset starts a chunk whose header says so.
        let reset = metas.iter().find(|m| m.min_time == 200_000).expect("a chunk cut at the reset");
        let header = norn_tsdb::chunkenc::HistogramChunk::from_bytes(&reset.chunk.data).unwrap().counter_reset_header();
        assert_eq!(header, norn_tsdb::chunkenc::CounterResetHeader::CounterReset);
    }

    #[test]
    fn decode_trims_to_range_and_reports_bad_chunks() {
        let metas = encode_samples(mixed()).unwrap();
        let wire: Vec<thanos::AggrChunk> = metas.iter().map(|m| aggr_chunk(m, 0)).collect();
        let mut got = Vec::new();
        for c in &wire {
            decode_aggr_chunk(c, 3000, 7000, &mut got).unwrap();
        }
        let ts: Vec<i64> = got.iter().map(Sample::timestamp).collect();
        assert_eq!(ts, vec![3000, 4000, 5000, 6000, 7000]);

        let mut bad = wire[1].clone();
        bad.raw.as_mut().unwrap().data.truncate(5);
        let err = decode_aggr_chunk(&bad, i64::MIN, i64::MAX, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ChunkConvertError::Corrupt { .. }), "{err}");
        bad.raw.as_mut().unwrap().r#type = 9;
        let err = decode_aggr_chunk(&bad, i64::MIN, i64::MAX, &mut Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "unknown storepb chunk encoding 9");
        // No raw chunk (aggregates only): nothing, no error.
        let agg = thanos::AggrChunk { raw: None, ..wire[0].clone() };
        decode_aggr_chunk(&agg, i64::MIN, i64::MAX, &mut got).unwrap();
    }

    #[test]
    fn remote_read_chunks_keep_the_encoding() {
        let metas = encode_samples(mixed()).unwrap();
        for m in &metas {
            let c = remote_read_chunk(m);
            assert_eq!(encoding_from_remote_read(c.r#type).unwrap(), m.chunk.encoding);
            assert_eq!((c.min_time_ms, c.max_time_ms), (m.min_time, m.max_time));
        }
    }

    #[test]
    fn histograms_to_proto_and_back() {
        use crate::prometheus_copy;
        use prost::Message;
        let h = Histogram { counter_reset_hint: CounterResetHint::CounterReset, ..hist(3) };
        let fh = FloatHistogram { counter_reset_hint: CounterResetHint::Gauge, ..hist(4).to_float() };
        // `prometheus.Histogram` and `prometheus_copy.Histogram` share the wire form.
        let back = |p: prometheus::Histogram| {
            crate::histogram_from_proto(&prometheus_copy::Histogram::decode(p.encode_to_vec().as_slice()).unwrap())
                .unwrap()
        };
        assert_eq!(back(histogram_to_proto(7, &h)), crate::HistogramSample::Int(7, h));
        assert_eq!(back(float_histogram_to_proto(8, &fh)), crate::HistogramSample::Float(8, fh));
    }
}
