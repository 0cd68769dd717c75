//! Conversions between wire messages and `norn-model` types, and the remote-write 2.0 →
//! 1.0 translation.

use norn_model::{
    CounterResetHint, FloatHistogram, Histogram, LabelError, Labels, MatchType, Matcher, MatcherError, Span,
};

use crate::io::prometheus::write::v2;
use crate::{prometheus_copy, thanos};

/// A remote-write 1.0 request decoded straight into Thanos's series type.
///
/// `prometheus.WriteRequest` field 1 and `prometheus_copy.TimeSeries` share their wire
/// form, so the body of a remote write decodes into this without a second conversion;
/// metric metadata (field 3) is kept for the receiver's metadata store.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoteWriteV1 {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<prometheus_copy::TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<crate::prometheus::MetricMetadata>,
}

/// Why a wire message could not be turned into model types.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    #[error("{0}")]
    Labels(#[from] LabelError),
    #[error("empty value for label {0:?}")]
    EmptyLabelValue(String),
    #[error("{0}")]
    Matcher(#[from] MatcherError),
    #[error("unknown matcher type {0}")]
    MatcherType(i32),
    #[error("remote write 2.0: symbols table must start with the empty string")]
    SymbolsStart,
    #[error("remote write 2.0: odd number of label references ({0})")]
    OddLabelRefs(usize),
    #[error("remote write 2.0: symbol reference {0} out of range (table has {1} symbols)")]
    SymbolRef(u32, usize),
    #[error("histogram: {0}")]
    Histogram(&'static str),
}

/// Checks a wire label list the way Thanos does before accepting a series (sorted by
/// name, unique, no empty name or value) and builds the label set.
pub fn labels_from_proto(ls: &[thanos::Label]) -> Result<Labels, ConvertError> {
    if let Some(l) = ls.iter().find(|l| l.value.is_empty()) {
        return Err(ConvertError::EmptyLabelValue(l.name.clone()));
    }
    Ok(Labels::from_sorted(ls.iter().map(|l| (l.name.as_str(), l.value.as_str())))?)
}

/// The wire form of a label set.
pub fn labels_to_proto(ls: &Labels) -> Vec<thanos::Label> {
    ls.iter().map(|(n, v)| thanos::Label { name: n.to_string(), value: v.to_string() }).collect()
}

/// A StoreAPI matcher as a model matcher (regexes anchored, as Prometheus does).
pub fn matcher_from_proto(m: &thanos::LabelMatcher) -> Result<Matcher, ConvertError> {
    use thanos::label_matcher::Type;
    let kind = match Type::try_from(m.r#type).map_err(|_| ConvertError::MatcherType(m.r#type))? {
        Type::Eq => MatchType::Equal,
        Type::Neq => MatchType::NotEqual,
        Type::Re => MatchType::Regex,
        Type::Nre => MatchType::NotRegex,
    };
    Ok(Matcher::new(kind, m.name.clone(), m.value.clone())?)
}

/// All matchers of a request.
pub fn matchers_from_proto(ms: &[thanos::LabelMatcher]) -> Result<Vec<Matcher>, ConvertError> {
    ms.iter().map(matcher_from_proto).collect()
}

/// A model matcher on the wire.
pub fn matcher_to_proto(m: &Matcher) -> thanos::LabelMatcher {
    use thanos::label_matcher::Type;
    let t = match m.kind {
        MatchType::Equal => Type::Eq,
        MatchType::NotEqual => Type::Neq,
        MatchType::Regex => Type::Re,
        MatchType::NotRegex => Type::Nre,
    };
    thanos::LabelMatcher { r#type: t as i32, name: m.name.clone(), value: m.value.clone() }
}

/// A decoded native histogram sample.
#[derive(Debug, Clone, PartialEq)]
pub enum HistogramSample {
    /// Integer counts (delta-encoded buckets).
    Int(i64, Histogram),
    /// Float counts.
    Float(i64, FloatHistogram),
}

fn spans(s: &[prometheus_copy::BucketSpan]) -> Vec<Span> {
    s.iter().map(|s| Span { offset: s.offset, length: s.length }).collect()
}

/// A wire histogram as a model histogram: integer when `count_int` is set, float when
/// `count_float` is. Span lengths must match the bucket counts.
pub fn histogram_from_proto(h: &prometheus_copy::Histogram) -> Result<HistogramSample, ConvertError> {
    use prometheus_copy::histogram::{Count, ZeroCount};
    let hint = CounterResetHint::from_u8(h.reset_hint.clamp(0, 3) as u8);
    let (ps, ns) = (spans(&h.positive_spans), spans(&h.negative_spans));
    let plen = norn_model::histogram::spans_len(&ps).ok_or(ConvertError::Histogram("span lengths overflow"))?;
    let nlen = norn_model::histogram::spans_len(&ns).ok_or(ConvertError::Histogram("span lengths overflow"))?;
    match h.count {
        Some(Count::CountFloat(count)) => {
            if plen != h.positive_counts.len() || nlen != h.negative_counts.len() {
                return Err(ConvertError::Histogram("span lengths do not match bucket counts"));
            }
            let zero_count = match h.zero_count {
                Some(ZeroCount::ZeroCountFloat(z)) => z,
                Some(ZeroCount::ZeroCountInt(z)) => z as f64,
                None => 0.0,
            };
            Ok(HistogramSample::Float(
                h.timestamp,
                FloatHistogram {
                    counter_reset_hint: hint,
                    schema: h.schema,
                    zero_threshold: h.zero_threshold,
                    zero_count,
                    count,
                    sum: h.sum,
                    positive_spans: ps,
                    negative_spans: ns,
                    positive_buckets: h.positive_counts.clone(),
                    negative_buckets: h.negative_counts.clone(),
                    custom_values: h.custom_values.clone(),
                },
            ))
        }
        c @ (Some(Count::CountInt(_)) | None) => {
            let count = match c {
                Some(Count::CountInt(n)) => n,
                _ => 0,
            };
            if plen != h.positive_deltas.len() || nlen != h.negative_deltas.len() {
                return Err(ConvertError::Histogram("span lengths do not match bucket counts"));
            }
            let zero_count = match h.zero_count {
                Some(ZeroCount::ZeroCountInt(z)) => z,
                Some(ZeroCount::ZeroCountFloat(_)) => {
                    return Err(ConvertError::Histogram("float zero count in an integer histogram"));
                }
                None => 0,
            };
            Ok(HistogramSample::Int(
                h.timestamp,
                Histogram {
                    counter_reset_hint: hint,
                    schema: h.schema,
                    zero_threshold: h.zero_threshold,
                    zero_count,
                    count,
                    sum: h.sum,
                    positive_spans: ps,
                    negative_spans: ns,
                    positive_buckets: h.positive_deltas.clone(),
                    negative_buckets: h.negative_deltas.clone(),
                    custom_values: h.custom_values.clone(),
                },
            ))
        }
    }
}

fn symbol(symbols: &[String], r: u32) -> Result<&str, ConvertError> {
    symbols.get(r as usize).map(String::as_str).ok_or(ConvertError::SymbolRef(r, symbols.len()))
}

fn v2_labels(symbols: &[String], refs: &[u32]) -> Result<Vec<thanos::Label>, ConvertError> {
    if refs.len() % 2 != 0 {
        return Err(ConvertError::OddLabelRefs(refs.len()));
    }
    refs.chunks_exact(2)
        .map(|p| {
            Ok(thanos::Label { name: symbol(symbols, p[0])?.to_string(), value: symbol(symbols, p[1])?.to_string() })
        })
        .collect()
}

fn v2_histogram(h: v2::Histogram) -> prometheus_copy::Histogram {
    use prometheus_copy::histogram::{Count, ZeroCount};
    let sp = |v: Vec<v2::BucketSpan>| {
        v.into_iter().map(|s| prometheus_copy::BucketSpan { offset: s.offset, length: s.length }).collect()
    };
    prometheus_copy::Histogram {
        count: h.count.map(|c| match c {
            v2::histogram::Count::CountInt(x) => Count::CountInt(x),
            v2::histogram::Count::CountFloat(x) => Count::CountFloat(x),
        }),
        sum: h.sum,
        schema: h.schema,
        zero_threshold: h.zero_threshold,
        zero_count: h.zero_count.map(|c| match c {
            v2::histogram::ZeroCount::ZeroCountInt(x) => ZeroCount::ZeroCountInt(x),
            v2::histogram::ZeroCount::ZeroCountFloat(x) => ZeroCount::ZeroCountFloat(x),
        }),
        negative_spans: sp(h.negative_spans),
        negative_deltas: h.negative_deltas,
        negative_counts: h.negative_counts,
        positive_spans: sp(h.positive_spans),
        positive_deltas: h.positive_deltas,
        positive_counts: h.positive_counts,
        reset_hint: h.reset_hint,
        timestamp: h.timestamp,
        custom_values: h.custom_values,
    }
}

/// What a remote-write 2.0 request carried, for the `X-Prometheus-Remote-Write-*-Written`
/// response headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V2Counts {
    pub samples: usize,
    pub histograms: usize,
    pub exemplars: usize,
}

/// Translates a remote-write 2.0 request into 1.0 series, as Thanos does: label
/// references resolved through the symbols table; metadata and start/created
/// timestamps dropped.
pub fn v2_to_v1(req: v2::Request) -> Result<(Vec<prometheus_copy::TimeSeries>, V2Counts), ConvertError> {
    if !req.symbols.is_empty() && !req.symbols[0].is_empty() {
        return Err(ConvertError::SymbolsStart);
    }
    let syms = &req.symbols;
    let mut counts = V2Counts::default();
    let mut out = Vec::with_capacity(req.timeseries.len());
    for ts in req.timeseries {
        counts.samples += ts.samples.len();
        counts.histograms += ts.histograms.len();
        counts.exemplars += ts.exemplars.len();
        let labels = v2_labels(syms, &ts.labels_refs)?;
        let exemplars = ts
            .exemplars
            .into_iter()
            .map(|e| {
                Ok(prometheus_copy::Exemplar {
                    labels: v2_labels(syms, &e.labels_refs)?,
                    value: e.value,
                    timestamp: e.timestamp,
                })
            })
            .collect::<Result<_, ConvertError>>()?;
        out.push(prometheus_copy::TimeSeries {
            labels,
            samples: ts
                .samples
                .into_iter()
                .map(|s| prometheus_copy::Sample { value: s.value, timestamp: s.timestamp })
                .collect(),
            exemplars,
            histograms: ts.histograms.into_iter().map(v2_histogram).collect(),
        });
    }
    Ok((out, counts))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::prometheus;

    fn l(n: &str, v: &str) -> thanos::Label {
        thanos::Label { name: n.into(), value: v.into() }
    }

    #[test]
    fn v1_body_decodes_as_thanos_series() {
        let req = prometheus::WriteRequest {
            timeseries: vec![prometheus::TimeSeries {
                labels: vec![prometheus::Label { name: "__name__".into(), value: "up".into() }],
                samples: vec![prometheus::Sample { value: 1.5, timestamp: 42 }],
                ..Default::default()
            }],
            metadata: vec![prometheus::MetricMetadata { metric_family_name: "up".into(), ..Default::default() }],
        };
        let got = RemoteWriteV1::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(got.timeseries.len(), 1);
        assert_eq!(got.timeseries[0].labels, vec![l("__name__", "up")]);
        assert_eq!(got.timeseries[0].samples[0].timestamp, 42);
    }

    #[test]
    fn label_validation_table() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("__name__", "up"), ("job", "a")], true),
            (&[("job", "a"), ("__name__", "up")], false),
            (&[("a", "1"), ("a", "2")], false),
            (&[("", "1")], false),
            (&[("a", "")], false),
            (&[], true),
        ];
        for (pairs, ok) in cases {
            let ls: Vec<_> = pairs.iter().map(|(n, v)| l(n, v)).collect();
            assert_eq!(labels_from_proto(&ls).is_ok(), *ok, "{pairs:?}");
        }
    }

    #[test]
    fn v2_translation() {
        let req = v2::Request {
            symbols: vec!["".into(), "__name__".into(), "up".into(), "job".into(), "x".into()],
            timeseries: vec![v2::TimeSeries {
                labels_refs: vec![1, 2, 3, 4],
                samples: vec![v2::Sample { value: 1.0, timestamp: 5, start_timestamp: 0 }],
                ..Default::default()
            }],
        };
        let (ts, c) = v2_to_v1(req).unwrap();
        assert_eq!(ts[0].labels, vec![l("__name__", "up"), l("job", "x")]);
        assert_eq!(c.samples, 1);

        let bad = |symbols: Vec<&str>, refs: Vec<u32>| v2::Request {
            symbols: symbols.into_iter().map(String::from).collect(),
            timeseries: vec![v2::TimeSeries { labels_refs: refs, ..Default::default() }],
        };
        assert_eq!(v2_to_v1(bad(vec!["", "a"], vec![1])).unwrap_err(), ConvertError::OddLabelRefs(1));
        assert_eq!(v2_to_v1(bad(vec!["", "a"], vec![1, 9])).unwrap_err(), ConvertError::SymbolRef(9, 2));
        assert_eq!(v2_to_v1(bad(vec!["x", "a"], vec![1, 1])).unwrap_err(), ConvertError::SymbolsStart);
    }

    #[test]
    fn matchers_round_trip() {
        for t in 0..4 {
            let m = thanos::LabelMatcher { r#type: t, name: "job".into(), value: "a.*".into() };
            assert_eq!(matcher_to_proto(&matcher_from_proto(&m).unwrap()), m);
        }
        assert!(matcher_from_proto(&thanos::LabelMatcher { r#type: 9, ..Default::default() }).is_err());
    }

    #[test]
    fn histograms() {
        use prometheus_copy::histogram::Count;
        let h = prometheus_copy::Histogram {
            count: Some(Count::CountInt(3)),
            positive_spans: vec![prometheus_copy::BucketSpan { offset: 0, length: 2 }],
            positive_deltas: vec![1, 1],
            timestamp: 7,
            ..Default::default()
        };
        assert!(matches!(histogram_from_proto(&h).unwrap(), HistogramSample::Int(7, _)));
        let bad = prometheus_copy::Histogram { positive_deltas: vec![1], ..h };
        assert!(histogram_from_proto(&bad).is_err());
    }
}
