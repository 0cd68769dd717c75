//! Merged, deduplicated series back onto a wire: remote-read chunks and samples for
//! `/api/v1/read`. Floats and native histograms alike; the chunk numbering lives in
//! `norn_storeapi::chunks`. (The querier's own Store service needs none of this: it passes
//! the endpoints' chunks through unchanged, see `grpc`.)
//!
//! Histograms reach the querier as [`StoredValue::Histogram`] (float counts, as the
//! engine computes with them), so remote read returns them as float-histogram chunks and
//! samples: the values are the same, only an integer chunk's compact encoding is not
//! reproduced.

use std::sync::Arc;

use norn_promql::StoredValue;
use norn_storeapi::chunks::{self, ChunkConvertError};
use norn_storeapi::prometheus;
use norn_tsdb::chunkenc::Sample;

/// A querier sample as a TSDB sample, ready to encode.
fn to_sample(t: i64, v: &StoredValue) -> Sample {
    match v {
        StoredValue::Float(f) => Sample::Float(t, *f),
        StoredValue::Histogram(h) => Sample::FloatHistogram(t, Box::new((**h).clone())),
    }
}

/// A decoded TSDB sample as a querier sample (integer histograms become float ones).
pub fn from_sample(s: Sample) -> (i64, StoredValue) {
    match s {
        Sample::Float(t, v) => (t, StoredValue::Float(v)),
        Sample::Histogram(t, h) => (t, StoredValue::Histogram(Arc::new(h.to_float()))),
        Sample::FloatHistogram(t, h) => (t, StoredValue::Histogram(Arc::new(*h))),
    }
}

/// Samples (ascending by time) as remote-read chunks of at most 120 samples each.
pub fn remote_read_chunks(samples: &[(i64, StoredValue)]) -> Result<Vec<prometheus::Chunk>, ChunkConvertError> {
    let metas = chunks::encode_samples(samples.iter().map(|(t, v)| to_sample(*t, v)))?;
    Ok(metas.iter().map(chunks::remote_read_chunk).collect())
}

/// Samples as a sampled remote-read series: floats in `samples`, histograms in
/// `histograms`, each ascending by time.
pub fn remote_read_series(labels: Vec<prometheus::Label>, samples: &[(i64, StoredValue)]) -> prometheus::TimeSeries {
    let mut ts = prometheus::TimeSeries { labels, ..Default::default() };
    for (t, v) in samples {
        match v {
            StoredValue::Float(f) => ts.samples.push(prometheus::Sample { value: *f, timestamp: *t }),
            StoredValue::Histogram(h) => ts.histograms.push(chunks::float_histogram_to_proto(*t, h)),
        }
    }
    ts
}

#[cfg(test)]
mod tests {
    use norn_model::{CounterResetHint, FloatHistogram, Span};

    use super::*;
    use norn_storeapi::thanos;

    fn fh(i: u32) -> FloatHistogram {
        FloatHistogram {
            schema: (i % 3) as i32,
            zero_threshold: 0.001,
            zero_count: 1.0,
            count: 3.0 + f64::from(i),
            sum: f64::from(i) * 0.5,
            positive_spans: vec![Span { offset: -1, length: 2 }],
            positive_buckets: vec![1.0, 1.0 + f64::from(i)],
            negative_spans: vec![],
            negative_buckets: vec![],
            ..Default::default()
        }
    }

    /// A float series, then histograms changing schema every sample: every value type and
    /// layout change must come back out of the chunks unchanged.
    fn series() -> Vec<(i64, StoredValue)> {
        let mut out: Vec<(i64, StoredValue)> = (0..3).map(|i| (i, StoredValue::Float(i as f64))).collect();
        out.extend((3..250).map(|i| (i, StoredValue::Histogram(Arc::new(fh(i as u32))))));
        out.push((250, StoredValue::Float(norn_promql::value::stale_nan())));
        out
    }

    fn same(a: &[(i64, StoredValue)], b: &[(i64, StoredValue)]) {
        assert_eq!(a.len(), b.len());
        for ((ta, va), (tb, vb)) in a.iter().zip(b) {
            assert_eq!(ta, tb);
            match (va, vb) {
                (StoredValue::Float(x), StoredValue::Float(y)) => assert_eq!(x.to_bits(), y.to_bits(), "at {ta}"),
                (StoredValue::Histogram(x), StoredValue::Histogram(y)) => {
                    // Hints are re-derived by the decoder; the values are what matters.
                    let strip = |h: &FloatHistogram| FloatHistogram {
                        counter_reset_hint: CounterResetHint::Unknown,
                        ..h.clone()
                    };
                    assert_eq!(strip(x), strip(y), "at {ta}");
                }
                _ => panic!("value type changed at {ta}"),
            }
        }
    }

    /// Samples as StoreAPI chunks, as an endpoint would send them.
    fn storepb_chunks(samples: &[(i64, StoredValue)]) -> Vec<thanos::AggrChunk> {
        let metas = chunks::encode_samples(samples.iter().map(|(t, v)| to_sample(*t, v))).unwrap();
        metas.iter().map(|m| chunks::aggr_chunk(m, 0)).collect()
    }

    #[test]
    fn remote_read_chunks_round_trip() {
        let s = series();
        let mut got = Vec::new();
        for c in remote_read_chunks(&s).unwrap() {
            let enc = chunks::encoding_from_remote_read(c.r#type).unwrap();
            let chunk = norn_tsdb::chunkenc::Chunk::new(enc, c.data);
            got.extend(chunk.iter().unwrap().map(from_sample));
        }
        same(&got, &s);
    }

    #[test]
    fn sampled_series_split_floats_and_histograms() {
        let ts = remote_read_series(vec![], &series());
        assert_eq!(ts.samples.len(), 4);
        assert_eq!(ts.histograms.len(), 247);
        assert_eq!(ts.histograms[0].timestamp, 3);
        assert_eq!(ts.histograms[0].schema, 0);
    }

    #[test]
    fn inconsistent_histograms_are_errors_not_panics() {
        let bad = FloatHistogram { positive_spans: vec![Span { offset: 0, length: 5 }], ..fh(1) };
        let s = vec![(1, StoredValue::Histogram(Arc::new(bad)))];
        assert!(remote_read_chunks(&s).is_err());
    }

    /// Two replicas of a histogram series, the first with a gap: after decoding their
    /// histogram chunks, dedup follows the first replica, switches to the second across
    /// the gap with Thanos's penalty, and stays there.
    #[test]
    fn replicas_of_histograms_dedup_with_the_penalty() {
        use crate::dedup::{Source, merge_and_dedup};
        use crate::seriesview::SeriesView;
        let mark = |sum: f64| Arc::new(FloatHistogram { sum, ..fh(0) });
        let a: Vec<(i64, StoredValue)> =
            [0, 10, 20, 30, 100, 110].iter().map(|s| (s * 1000, StoredValue::Histogram(mark(1.0)))).collect();
        let b: Vec<(i64, StoredValue)> =
            (0..12).map(|i| (i * 10_000 + 1000, StoredValue::Histogram(mark(2.0)))).collect();
        let raw = |r: &str, s: &[(i64, StoredValue)]| {
            let labels = [("__name__", "h"), ("replica", r)]
                .iter()
                .map(|(n, v)| norn_storeapi::thanos::Label { name: n.to_string(), value: v.to_string() })
                .collect();
            SeriesView::from_proto(&norn_storeapi::thanos::Series { labels, chunks: storepb_chunks(s) })
        };
        let decode = |cs: &[&crate::seriesview::WireChunk]| -> Result<Vec<(i64, StoredValue)>, String> {
            let mut out = Vec::new();
            for c in cs {
                chunks::decode_aggr_chunk(&c.to_proto(), i64::MIN, i64::MAX, &mut out).map_err(|e| e.to_string())?;
            }
            Ok(out.into_iter().map(from_sample).collect())
        };
        let rl = vec!["replica".to_string()];
        // As counters too: histograms are never adjusted.
        for counter in [false, true] {
            let sources = vec![Source::new(vec![raw("a", &a)], false), Source::new(vec![raw("b", &b)], false)];
            let got = merge_and_dedup(sources, &rl, counter, &decode).unwrap();
            assert_eq!(got.len(), 1);
            let picked: Vec<(i64, f64)> = got[0]
                .1
                .iter()
                .map(|(t, v)| match v {
                    StoredValue::Histogram(h) => (*t / 1000, h.sum),
                    StoredValue::Float(_) => panic!("float at {t}"),
                })
                .collect();
            let want =
                [(0, 1.0), (10, 1.0), (20, 1.0), (30, 1.0), (51, 2.0), (61, 2.0), (71, 2.0), (81, 2.0), (91, 2.0)];
            let mut want = want.to_vec();
            want.extend([(101, 2.0), (111, 2.0)]);
            assert_eq!(picked, want, "counter={counter}");
        }
    }
}
