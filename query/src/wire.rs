//! Conversions between TSDB samples and the querier's samples. Histograms reach the
//! engine as [`StoredValue::Histogram`] (float counts, as it computes with them); remote
//! read and the querier's own Store service pass the endpoints' chunks through instead
//! (see `remote_read` and `grpc`), so integer histograms leave as they came.

use std::sync::Arc;

use norn_promql::StoredValue;
use norn_tsdb::chunkenc::Sample;

/// A decoded TSDB sample as a querier sample (integer histograms become float ones).
pub fn from_sample(s: Sample) -> (i64, StoredValue) {
    match s {
        Sample::Float(t, v) => (t, StoredValue::Float(v)),
        Sample::Histogram(t, h) => (t, StoredValue::Histogram(Arc::new(h.to_float()))),
        Sample::FloatHistogram(t, h) => (t, StoredValue::Histogram(Arc::new(*h))),
    }
}

#[cfg(test)]
mod tests {
    use norn_model::{FloatHistogram, Span};

    use super::*;
    use norn_storeapi::{chunks, thanos};

    /// A querier sample as a TSDB sample, ready to encode.
    fn to_sample(t: i64, v: &StoredValue) -> Sample {
        match v {
            StoredValue::Float(f) => Sample::Float(t, *f),
            StoredValue::Histogram(h) => Sample::FloatHistogram(t, Box::new((**h).clone())),
        }
    }

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

    /// Samples as StoreAPI chunks, as an endpoint would send them.
    fn storepb_chunks(samples: &[(i64, StoredValue)]) -> Vec<thanos::AggrChunk> {
        let metas = chunks::encode_samples(samples.iter().map(|(t, v)| to_sample(*t, v))).unwrap();
        metas.iter().map(|m| chunks::aggr_chunk(m, 0)).collect()
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
