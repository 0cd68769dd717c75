//! Metric metadata carried by remote-write requests: 1.0 sends it in the request's own
//! `metadata` field (one entry per metric family), 2.0 per series, which is turned into
//! the 1.0 shape here keyed by the series' metric name.

use std::collections::HashSet;

use crate::io::prometheus::write::v2;
use crate::prometheus::MetricMetadata;
use crate::prometheus::metric_metadata::MetricType;

/// The metadata of a remote-write 2.0 request, one entry per distinct (metric name, type,
/// help, unit); series without metadata or with unresolvable references are skipped.
pub fn v2_metadata(req: &v2::Request) -> Vec<MetricMetadata> {
    let sym = |r: u32| req.symbols.get(r as usize).map(String::as_str);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for ts in &req.timeseries {
        let Some(md) = &ts.metadata else { continue };
        let (Some(help), Some(unit)) = (sym(md.help_ref), sym(md.unit_ref)) else { continue };
        if md.r#type == 0 && help.is_empty() && unit.is_empty() {
            continue;
        }
        let name = ts.labels_refs.chunks_exact(2).find(|p| sym(p[0]) == Some("__name__")).and_then(|p| sym(p[1]));
        let Some(name) = name.filter(|n| !n.is_empty()) else { continue };
        // The 2.0 and 1.0 type enums share their numbering.
        let kind = MetricType::try_from(md.r#type).unwrap_or(MetricType::Unknown);
        if seen.insert((name, kind as i32, help, unit)) {
            out.push(MetricMetadata {
                r#type: kind as i32,
                metric_family_name: name.to_string(),
                help: help.to_string(),
                unit: unit.to_string(),
            });
        }
    }
    out
}

/// Prometheus's API name of a metadata type (`counter`, `gauge`, …, `unknown`).
pub fn type_name(t: i32) -> &'static str {
    match MetricType::try_from(t).unwrap_or(MetricType::Unknown) {
        MetricType::Unknown => "unknown",
        MetricType::Counter => "counter",
        MetricType::Gauge => "gauge",
        MetricType::Histogram => "histogram",
        MetricType::Gaugehistogram => "gaugehistogram",
        MetricType::Summary => "summary",
        MetricType::Info => "info",
        MetricType::Stateset => "stateset",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_metadata_by_metric_name() {
        let md = |t, h, u| Some(v2::Metadata { r#type: t, help_ref: h, unit_ref: u });
        let series = |refs: Vec<u32>, m| v2::TimeSeries { labels_refs: refs, metadata: m, ..Default::default() };
        let req = v2::Request {
            symbols: ["", "__name__", "up", "job", "a", "b", "Whether up.", "seconds", "x_total"]
                .map(String::from)
                .to_vec(),
            timeseries: vec![
                series(vec![1, 2, 3, 4], md(2, 6, 0)),
                // Same metadata again from another series of the family: kept once.
                series(vec![1, 2, 3, 5], md(2, 6, 0)),
                series(vec![1, 8], md(1, 0, 7)),
                // No metadata at all, an empty one, a bad reference, no name.
                series(vec![1, 8], None),
                series(vec![1, 8], md(0, 0, 0)),
                series(vec![1, 8], md(1, 99, 0)),
                series(vec![3, 4], md(1, 6, 0)),
            ],
        };
        let got: Vec<_> = v2_metadata(&req)
            .into_iter()
            .map(|m| (m.metric_family_name, type_name(m.r#type), m.help, m.unit))
            .collect();
        assert_eq!(
            got,
            vec![
                ("up".into(), "gauge", "Whether up.".into(), "".into()),
                ("x_total".into(), "counter", "".into(), "seconds".into()),
            ]
        );
    }
}
