//! `/federate` in the protobuf exposition format (delimited `io.prometheus.client.MetricFamily`
//! messages), the only federation format that carries native histograms. Prometheus 2.42
//! answers it when the client's `Accept` asks for it: one family per metric name, floats as
//! `UNTYPED` metrics, histograms as `HISTOGRAM` metrics with float counts (count, zero
//! bucket, spans and absolute bucket counts), each with its timestamp.

use std::sync::Arc;

use norn_model::{FloatHistogram, Labels, Span};
use norn_storeapi::io::prometheus::client as dto;
use prost::Message;

/// The content type of the answer.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Whether an `Accept` header asks for delimited protobuf, as Prometheus's content
/// negotiation reads it (any listed type will do; the text format otherwise).
pub fn wants_protobuf(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or("");
        if !media.eq_ignore_ascii_case("application/vnd.google.protobuf") {
            return false;
        }
        let (mut proto, mut enc) = (false, false);
        for p in params {
            match p.split_once('=') {
                Some(("proto", v)) => proto = v.trim_matches('"') == "io.prometheus.client.MetricFamily",
                Some(("encoding", v)) => enc = v.trim_matches('"') == "delimited",
                _ => {}
            }
        }
        proto && enc
    })
}

/// The latest value of one federated series.
#[derive(Debug, Clone)]
pub enum Latest {
    /// A float sample.
    Float(i64, f64),
    /// A native histogram sample.
    Histogram(i64, Arc<FloatHistogram>),
}

fn spans(s: &[Span]) -> Vec<dto::BucketSpan> {
    s.iter().map(|s| dto::BucketSpan { offset: Some(s.offset), length: Some(s.length) }).collect()
}

fn metric(l: &Labels, v: &Latest) -> dto::Metric {
    let label = l
        .iter()
        .filter(|(n, _)| *n != norn_model::METRIC_NAME)
        .map(|(n, v)| dto::LabelPair { name: Some(n.to_string()), value: Some(v.to_string()) })
        .collect();
    match v {
        Latest::Float(t, f) => dto::Metric {
            label,
            untyped: Some(dto::Untyped { value: Some(*f) }),
            timestamp_ms: Some(*t),
            ..Default::default()
        },
        Latest::Histogram(t, h) => dto::Metric {
            label,
            histogram: Some(dto::Histogram {
                sample_count_float: Some(h.count),
                sample_sum: Some(h.sum),
                schema: Some(h.schema),
                zero_threshold: Some(h.zero_threshold),
                zero_count_float: Some(h.zero_count),
                negative_span: spans(&h.negative_spans),
                negative_count: h.negative_buckets.clone(),
                positive_span: spans(&h.positive_spans),
                positive_count: h.positive_buckets.clone(),
                ..Default::default()
            }),
            timestamp_ms: Some(*t),
            ..Default::default()
        },
    }
}

/// Renders series (sorted by labels) as delimited metric families, one per name in name
/// order; a family holding a histogram is typed `HISTOGRAM`, otherwise `UNTYPED`.
pub fn render(latest: &[(Labels, Latest)]) -> Vec<u8> {
    let mut by_name: Vec<&(Labels, Latest)> = latest.iter().collect();
    by_name.sort_by(|a, b| a.0.metric_name().cmp(&b.0.metric_name()).then_with(|| a.0.cmp(&b.0)));
    let mut out = Vec::new();
    let mut i = 0;
    while i < by_name.len() {
        let name = by_name[i].0.metric_name().unwrap_or("");
        let mut fam = dto::MetricFamily { name: Some(name.to_string()), ..Default::default() };
        let mut any_histogram = false;
        while i < by_name.len() && by_name[i].0.metric_name().unwrap_or("") == name {
            any_histogram |= matches!(by_name[i].1, Latest::Histogram(..));
            fam.metric.push(metric(&by_name[i].0, &by_name[i].1));
            i += 1;
        }
        fam.r#type = Some(if any_histogram { dto::MetricType::Histogram } else { dto::MetricType::Untyped } as i32);
        // Infallible into a Vec.
        let _ = fam.encode_length_delimited(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let cases = [
            ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited", true),
            (
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3",
                true,
            ),
            ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text", false),
            ("text/plain;version=0.0.4", false),
            ("", false),
            ("*/*", false),
        ];
        for (accept, want) in cases {
            assert_eq!(wants_protobuf(accept), want, "{accept}");
        }
    }

    #[test]
    fn families_by_name_with_histograms() {
        let h = FloatHistogram {
            schema: 1,
            zero_threshold: 0.001,
            zero_count: 2.0,
            count: 7.0,
            sum: 3.5,
            positive_spans: vec![Span { offset: -1, length: 2 }],
            positive_buckets: vec![2.0, 3.0],
            ..Default::default()
        };
        let latest = vec![
            (Labels::from_pairs([("__name__", "b"), ("k", "2")]), Latest::Float(5, 1.5)),
            (Labels::from_pairs([("__name__", "a"), ("k", "1")]), Latest::Histogram(6, Arc::new(h))),
            (Labels::from_pairs([("__name__", "b"), ("k", "1")]), Latest::Float(4, 2.5)),
        ];
        let bytes = render(&latest);
        let mut buf = bytes.as_slice();
        let mut fams = Vec::new();
        while !buf.is_empty() {
            fams.push(dto::MetricFamily::decode_length_delimited(&mut buf).unwrap());
        }
        assert_eq!(fams.len(), 2);
        assert_eq!((fams[0].name.as_deref(), fams[0].r#type), (Some("a"), Some(dto::MetricType::Histogram as i32)));
        let hm = fams[0].metric[0].histogram.as_ref().unwrap();
        assert_eq!((hm.sample_count_float, hm.zero_count_float, hm.schema), (Some(7.0), Some(2.0), Some(1)));
        assert_eq!(hm.positive_count, vec![2.0, 3.0]);
        assert_eq!(hm.positive_span[0].offset, Some(-1));
        assert_eq!(fams[0].metric[0].timestamp_ms, Some(6));
        assert_eq!((fams[1].name.as_deref(), fams[1].r#type), (Some("b"), Some(dto::MetricType::Untyped as i32)));
        let vals: Vec<Option<f64>> = fams[1].metric.iter().map(|m| m.untyped.as_ref().and_then(|u| u.value)).collect();
        assert_eq!(vals, vec![Some(2.5), Some(1.5)]);
        assert_eq!(fams[1].metric[0].label[0].value.as_deref(), Some("1"));
    }
}
