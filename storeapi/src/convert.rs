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
    Histogram(String),
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

/// Span lengths against bucket slices, both sides.
fn buckets_match(plen: usize, pbuckets: usize, nlen: usize, nbuckets: usize) -> Result<(), ConvertError> {
    for (side, need, have) in [("positive", plen, pbuckets), ("negative", nlen, nbuckets)] {
        if need != have {
            return Err(ConvertError::Histogram(format!(
                "{side} side: spans need {need} buckets, have {have} buckets"
            )));
        }
    }
    Ok(())
}

/// A wire histogram as a model histogram: integer when `count_int` is set, float when
/// `count_float` is. Span lengths must match the bucket counts.
pub fn histogram_from_proto(h: &prometheus_copy::Histogram) -> Result<HistogramSample, ConvertError> {
    use prometheus_copy::histogram::{Count, ZeroCount};
    let hint = CounterResetHint::from_u8(h.reset_hint.clamp(0, 3) as u8);
    let (ps, ns) = (spans(&h.positive_spans), spans(&h.negative_spans));
    let plen = norn_model::histogram::spans_len(&ps).ok_or(ConvertError::Histogram("span lengths overflow".into()))?;
    let nlen = norn_model::histogram::spans_len(&ns).ok_or(ConvertError::Histogram("span lengths overflow".into()))?;
    match h.count {
        Some(Count::CountFloat(count)) => {
            buckets_match(plen, h.positive_counts.len(), nlen, h.negative_counts.len())?;
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
            buckets_match(plen, h.positive_deltas.len(), nlen, h.negative_deltas.len())?;
            let zero_count = match h.zero_count {
                Some(ZeroCount::ZeroCountInt(z)) => z,
                Some(ZeroCount::ZeroCountFloat(_)) => {
                    return Err(ConvertError::Histogram("float zero count in an integer histogram".into()));
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

/// Why a native histogram sample is invalid, checked as Prometheus's
/// `Histogram.Validate` / `FloatHistogram.Validate` check it, plus the schema range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid native histogram at timestamp {t}: {msg}")]
pub struct InvalidHistogram {
    /// Timestamp of the sample.
    pub t: i64,
    /// What is wrong.
    pub msg: String,
}

/// Lowest and highest exponential schema Prometheus accepts.
pub const MIN_SCHEMA: i32 = -4;
/// Highest exponential schema.
pub const MAX_SCHEMA: i32 = 8;

/// Span offsets after the first may not go backwards, and the spans must describe
/// exactly as many buckets as there are.
fn check_spans(side: &str, spans: &[Span], buckets: usize) -> Result<(), String> {
    if let Some((i, s)) = spans.iter().enumerate().skip(1).find(|(_, s)| s.offset < 0) {
        return Err(format!("{side} side: span number {} has negative offset {}", i + 1, s.offset));
    }
    match norn_model::histogram::spans_len(spans) {
        Some(n) if n == buckets => Ok(()),
        Some(n) => Err(format!("{side} side: spans need {n} buckets, have {buckets} buckets")),
        None => Err(format!("{side} side: span lengths overflow")),
    }
}

/// Custom (schema -53) histograms: strictly increasing finite bounds, no bucket past
/// the implicit +Inf one, no zero bucket and no negative side.
fn check_custom(
    custom: &[f64],
    spans: &[Span],
    buckets: usize,
    zero: (f64, f64),
    negative: (usize, usize),
) -> Result<(), String> {
    let mut prev = f64::NEG_INFINITY;
    for (i, v) in custom.iter().enumerate() {
        if v.is_nan() || *v <= prev {
            return Err(format!("custom buckets: bound number {} ({v}) is not above the previous one", i + 1));
        }
        prev = *v;
    }
    if prev == f64::INFINITY {
        return Err("custom buckets: last bound must not be +Inf (the +Inf bucket is implicit)".into());
    }
    if let Some(s) = spans.first()
        && s.offset < 0
    {
        return Err(format!("custom buckets: first span has negative offset {}", s.offset));
    }
    check_spans("positive", spans, buckets)?;
    let last_index: i64 = spans.iter().map(|s| i64::from(s.offset) + i64::from(s.length)).sum::<i64>() - 1;
    if !spans.is_empty() && last_index > custom.len() as i64 {
        return Err(format!("custom buckets: bucket index {last_index} beyond the {} bounds", custom.len()));
    }
    if zero.0 != 0.0 || zero.1 != 0.0 {
        return Err("custom buckets: must have zero threshold and zero count of 0".into());
    }
    if negative != (0, 0) {
        return Err("custom buckets: must not have negative spans or buckets".into());
    }
    Ok(())
}

fn check_schema(schema: i32, custom: &[f64]) -> Result<bool, String> {
    if schema == norn_model::histogram::CUSTOM_BUCKETS_SCHEMA {
        return Ok(true);
    }
    if !(MIN_SCHEMA..=MAX_SCHEMA).contains(&schema) {
        return Err(format!(
            "schema {schema} out of range [{MIN_SCHEMA}, {MAX_SCHEMA}] (or {} for custom buckets)",
            norn_model::histogram::CUSTOM_BUCKETS_SCHEMA
        ));
    }
    if !custom.is_empty() {
        return Err("histogram with exponential schema must not have custom bounds".into());
    }
    Ok(false)
}

fn check_zero_threshold(z: f64) -> Result<(), String> {
    if z.is_nan() || z < 0.0 {
        return Err(format!("zero threshold {z} must be a non-negative number"));
    }
    Ok(())
}

/// Sums delta-encoded integer buckets, refusing negative absolute counts.
fn sum_int_buckets(side: &str, deltas: &[i64]) -> Result<u64, String> {
    let (mut cur, mut total) = (0i64, 0u64);
    for (i, d) in deltas.iter().enumerate() {
        cur = cur.checked_add(*d).ok_or_else(|| format!("{side} side: bucket number {} overflows", i + 1))?;
        if cur < 0 {
            return Err(format!("{side} side: bucket number {} has observation count of {cur}", i + 1));
        }
        total = total.saturating_add(cur as u64);
    }
    Ok(total)
}

fn check_float_buckets(side: &str, counts: &[f64]) -> Result<(), String> {
    match counts.iter().position(|c| *c < 0.0) {
        Some(i) => Err(format!("{side} side: bucket number {} has observation count of {}", i + 1, counts[i])),
        None => Ok(()),
    }
}

fn validate_int(h: &Histogram) -> Result<(), String> {
    let mut n = 0;
    if check_schema(h.schema, &h.custom_values)? {
        check_custom(
            &h.custom_values,
            &h.positive_spans,
            h.positive_buckets.len(),
            (h.zero_threshold, h.zero_count as f64),
            (h.negative_spans.len(), h.negative_buckets.len()),
        )?;
    } else {
        check_zero_threshold(h.zero_threshold)?;
        check_spans("positive", &h.positive_spans, h.positive_buckets.len())?;
        check_spans("negative", &h.negative_spans, h.negative_buckets.len())?;
        n = sum_int_buckets("negative", &h.negative_buckets)?;
    }
    let p = sum_int_buckets("positive", &h.positive_buckets)?;
    let in_buckets = n.saturating_add(p).saturating_add(h.zero_count);
    // A NaN sum (stale marker, or observed NaN) may leave NaN observations out of
    // every bucket, so the count can only be checked as a lower bound then.
    if h.sum.is_nan() {
        if in_buckets > h.count {
            return Err(format!("{in_buckets} observations found in buckets, but the count field is {}", h.count));
        }
    } else if in_buckets != h.count {
        return Err(format!("{in_buckets} observations found in buckets, but the count field is {}", h.count));
    }
    Ok(())
}

fn validate_float(h: &FloatHistogram) -> Result<(), String> {
    if check_schema(h.schema, &h.custom_values)? {
        check_custom(
            &h.custom_values,
            &h.positive_spans,
            h.positive_buckets.len(),
            (h.zero_threshold, h.zero_count),
            (h.negative_spans.len(), h.negative_buckets.len()),
        )?;
    } else {
        check_zero_threshold(h.zero_threshold)?;
        check_spans("positive", &h.positive_spans, h.positive_buckets.len())?;
        check_spans("negative", &h.negative_spans, h.negative_buckets.len())?;
        check_float_buckets("negative", &h.negative_buckets)?;
    }
    check_float_buckets("positive", &h.positive_buckets)?;
    // Like Prometheus, the count is not compared with the bucket sum: float rounding
    // would make that check fail on valid data.
    if h.zero_count < 0.0 || h.count < 0.0 {
        return Err(format!("negative count ({}) or zero count ({})", h.count, h.zero_count));
    }
    Ok(())
}

/// Checks a decoded histogram sample for everything the TSDB relies on; the write path
/// calls this before appending so a bad sample is refused with a reason.
pub fn validate_histogram_sample(s: &HistogramSample) -> Result<(), InvalidHistogram> {
    let (t, r) = match s {
        HistogramSample::Int(t, h) => (*t, validate_int(h)),
        HistogramSample::Float(t, h) => (*t, validate_float(h)),
    };
    r.map_err(|msg| InvalidHistogram { t, msg })
}

/// Decodes and validates one wire histogram (the write side's entry point).
pub fn histogram_from_proto_checked(h: &prometheus_copy::Histogram) -> Result<HistogramSample, InvalidHistogram> {
    let s = histogram_from_proto(h).map_err(|e| InvalidHistogram { t: h.timestamp, msg: e.to_string() })?;
    validate_histogram_sample(&s)?;
    Ok(s)
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

    fn span(offset: i32, length: u32) -> prometheus_copy::BucketSpan {
        prometheus_copy::BucketSpan { offset, length }
    }

    /// A valid integer histogram: 2 zero-bucket observations, buckets 1,2 (deltas 1,1)
    /// at indexes -1,0 and 3 (delta 1) at index 5, one negative observation.
    fn good_int() -> prometheus_copy::Histogram {
        use prometheus_copy::histogram::{Count, ZeroCount};
        prometheus_copy::Histogram {
            count: Some(Count::CountInt(2 + 1 + 2 + 3 + 1)),
            sum: 12.5,
            schema: 3,
            zero_threshold: 1e-128,
            zero_count: Some(ZeroCount::ZeroCountInt(2)),
            positive_spans: vec![span(-1, 2), span(4, 1)],
            positive_deltas: vec![1, 1, 1],
            negative_spans: vec![span(0, 1)],
            negative_deltas: vec![1],
            reset_hint: 1,
            timestamp: 1000,
            ..Default::default()
        }
    }

    fn good_float() -> prometheus_copy::Histogram {
        use prometheus_copy::histogram::{Count, ZeroCount};
        prometheus_copy::Histogram {
            count: Some(Count::CountFloat(6.5)),
            sum: 3.0,
            schema: 0,
            zero_count: Some(ZeroCount::ZeroCountFloat(0.5)),
            positive_spans: vec![span(0, 3)],
            positive_counts: vec![1.0, 2.0, 3.0],
            reset_hint: 3,
            timestamp: 2000,
            ..Default::default()
        }
    }

    fn good_custom() -> prometheus_copy::Histogram {
        use prometheus_copy::histogram::Count;
        prometheus_copy::Histogram {
            count: Some(Count::CountInt(6)),
            sum: 10.0,
            schema: norn_model::histogram::CUSTOM_BUCKETS_SCHEMA,
            positive_spans: vec![span(0, 2), span(1, 1)],
            positive_deltas: vec![1, 1, 1],
            custom_values: vec![0.5, 1.0, 5.0],
            timestamp: 3000,
            ..Default::default()
        }
    }

    #[test]
    fn histogram_validation_table() {
        use prometheus_copy::histogram::{Count, ZeroCount};
        type Edit = fn(&mut prometheus_copy::Histogram);
        let cases: &[(&str, fn() -> prometheus_copy::Histogram, Edit, Option<&str>)] = &[
            ("int ok", good_int, |_| {}, None),
            ("float ok", good_float, |_| {}, None),
            ("custom ok", good_custom, |_| {}, None),
            ("empty int ok", || prometheus_copy::Histogram::default(), |_| {}, None),
            ("stale marker count may exceed", good_int, |h| h.sum = f64::from_bits(0x7ff0000000000002), None),
            ("schema -4 ok", good_int, |h| h.schema = -4, None),
            ("schema 8 ok", good_int, |h| h.schema = 8, None),
            ("schema 9", good_int, |h| h.schema = 9, Some("schema 9 out of range")),
            ("schema -5", good_float, |h| h.schema = -5, Some("schema -5 out of range")),
            (
                "too few buckets",
                good_int,
                |h| h.positive_deltas.pop().map(drop).unwrap_or(()),
                Some("spans need 3 buckets, have 2"),
            ),
            (
                "too many float buckets",
                good_float,
                |h| h.positive_counts.push(1.0),
                Some("spans need 3 buckets, have 4"),
            ),
            (
                "negative later offset",
                good_int,
                |h| h.positive_spans[1].offset = -1,
                Some("span number 2 has negative offset"),
            ),
            (
                "negative absolute count",
                good_int,
                |h| h.positive_deltas[1] = -2,
                Some("bucket number 2 has observation count of -1"),
            ),
            ("negative float count", good_float, |h| h.positive_counts[0] = -1.0, Some("bucket number 1")),
            (
                "count mismatch",
                good_int,
                |h| h.count = Some(Count::CountInt(8)),
                Some("9 observations found in buckets, but the count field is 8"),
            ),
            ("count too high", good_int, |h| h.count = Some(Count::CountInt(10)), Some("count field is 10")),
            (
                "NaN sum, count too low",
                good_int,
                |h| {
                    h.sum = f64::NAN;
                    h.count = Some(Count::CountInt(1))
                },
                Some("count field is 1"),
            ),
            (
                "float zero count in int",
                good_int,
                |h| h.zero_count = Some(ZeroCount::ZeroCountFloat(2.0)),
                Some("float zero count"),
            ),
            ("negative zero threshold", good_int, |h| h.zero_threshold = -1.0, Some("zero threshold")),
            ("NaN zero threshold", good_float, |h| h.zero_threshold = f64::NAN, Some("zero threshold")),
            ("exponential with bounds", good_int, |h| h.custom_values = vec![1.0], Some("must not have custom bounds")),
            ("custom unsorted", good_custom, |h| h.custom_values = vec![1.0, 0.5, 5.0], Some("bound number 2")),
            ("custom +Inf bound", good_custom, |h| h.custom_values = vec![0.5, 1.0, f64::INFINITY], Some("+Inf")),
            (
                "custom bucket past +Inf",
                good_custom,
                |h| h.positive_spans[1].offset = 2,
                Some("bucket index 4 beyond the 3 bounds"),
            ),
            ("custom with zero bucket", good_custom, |h| h.zero_threshold = 0.1, Some("zero threshold")),
            (
                "custom with negatives",
                good_custom,
                |h| {
                    h.negative_spans = vec![span(0, 1)];
                    h.negative_deltas = vec![0]
                },
                Some("negative spans"),
            ),
            (
                "custom first offset negative",
                good_custom,
                |h| h.positive_spans[0].offset = -1,
                Some("first span has negative offset"),
            ),
        ];
        for (name, base, edit, want) in cases {
            let mut h = base();
            edit(&mut h);
            let got = histogram_from_proto_checked(&h);
            match (want, got) {
                (None, Ok(_)) => {}
                (Some(w), Err(e)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(w), "{name}: {msg:?} lacks {w:?}");
                    assert!(msg.contains(&format!("timestamp {}", h.timestamp)), "{name}: {msg}");
                }
                (w, g) => panic!("{name}: want {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn histogram_fields_survive_decoding() {
        let HistogramSample::Int(t, h) = histogram_from_proto_checked(&good_int()).unwrap() else { panic!("int") };
        assert_eq!(t, 1000);
        assert_eq!((h.schema, h.zero_count, h.count, h.sum), (3, 2, 9, 12.5));
        assert_eq!(h.counter_reset_hint, CounterResetHint::CounterReset);
        assert_eq!(h.positive_spans, vec![Span { offset: -1, length: 2 }, Span { offset: 4, length: 1 }]);
        assert_eq!(h.negative_buckets, vec![1]);
        let HistogramSample::Float(_, f) = histogram_from_proto_checked(&good_float()).unwrap() else {
            panic!("float")
        };
        assert_eq!((f.count, f.zero_count, f.counter_reset_hint), (6.5, 0.5, CounterResetHint::Gauge));
        let HistogramSample::Int(_, c) = histogram_from_proto_checked(&good_custom()).unwrap() else {
            panic!("custom")
        };
        assert_eq!(c.custom_values, vec![0.5, 1.0, 5.0]);
    }
}
