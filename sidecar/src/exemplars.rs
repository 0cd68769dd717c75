//! The Thanos `Exemplars` service over Prometheus's `/api/v1/query_exemplars`: matchers
//! on the external labels are checked here and left out of the query Prometheus sees
//! (it does not know its external labels), and the external labels are added to the
//! series labels of the answer, as Thanos's sidecar does.

use std::collections::BTreeMap;
use std::sync::Arc;

use norn_model::Labels;
use norn_storeapi::labels_to_proto;
use norn_storeapi::thanos::{self, ExemplarData, ExemplarsRequest, ExemplarsResponse, exemplars_response};
use serde::Deserialize;
use tonic::{Request, Response, Status};

use crate::prom::{PromClient, api_time, selector};
use crate::store::PromMeta;
use norn_storeapi::external::{strip_external, with_external};

/// The query to send Prometheus for `query`: one selector per selector of the expression
/// with external-label matchers removed, joined with `or`. `Ok(None)` when the external
/// labels rule every selector out.
pub fn prom_query(query: &str, ext: &Labels) -> Result<Option<String>, Status> {
    let expr = norn_promql::parse(query).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let sets = norn_promql::selectors::extract_selectors(&expr)
        .map_err(|e| Status::invalid_argument(format!("matchers: {e}")))?;
    let mut matched = false;
    let mut parts = Vec::new();
    for s in &sets {
        if let Some(rest) = strip_external(ext, s) {
            matched = true;
            if !rest.is_empty() {
                parts.push(selector(&rest));
            }
        }
    }
    if !matched {
        return Ok(None);
    }
    if parts.is_empty() {
        return Err(Status::invalid_argument("no matchers specified (excluding external labels)"));
    }
    Ok(Some(parts.join(" or ")))
}

#[derive(Debug, Deserialize)]
struct ApiSeries {
    #[serde(rename = "seriesLabels")]
    series_labels: BTreeMap<String, String>,
    #[serde(default)]
    exemplars: Vec<ApiExemplar>,
}

#[derive(Debug, Deserialize)]
struct ApiExemplar {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    value: String,
    timestamp: f64,
}

/// Prometheus's float text (`1.5`, `NaN`, `+Inf`, `-Inf`).
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

fn convert(s: ApiSeries, ext: &Labels) -> Result<ExemplarData, String> {
    let series = with_external(&Labels::from_pairs(s.series_labels.iter()), ext);
    let mut exemplars = Vec::with_capacity(s.exemplars.len());
    for e in s.exemplars {
        let value = parse_value(&e.value).ok_or_else(|| format!("exemplar value {:?} is not a number", e.value))?;
        exemplars.push(thanos::Exemplar {
            labels: Some(thanos::LabelSet { labels: labels_to_proto(&Labels::from_pairs(e.labels.iter())) }),
            value,
            ts: (e.timestamp * 1000.0).round() as i64,
        });
    }
    Ok(ExemplarData { series_labels: Some(thanos::LabelSet { labels: labels_to_proto(&series) }), exemplars })
}

/// `thanos.Exemplars` proxying to Prometheus.
#[derive(Debug, Clone)]
pub struct ExemplarsProxy {
    pub prom: PromClient,
    pub meta: Arc<PromMeta>,
}

#[tonic::async_trait]
impl thanos::exemplars_server::Exemplars for ExemplarsProxy {
    type ExemplarsStream = futures::stream::Iter<std::vec::IntoIter<Result<ExemplarsResponse, Status>>>;

    async fn exemplars(&self, req: Request<ExemplarsRequest>) -> Result<Response<Self::ExemplarsStream>, Status> {
        let r = req.into_inner();
        let ext = self.meta.labels();
        let Some(q) = prom_query(&r.query, &ext)? else {
            return Ok(Response::new(futures::stream::iter(Vec::new())));
        };
        let mut params = vec![("query", q)];
        params.extend(api_time(r.start).map(|s| ("start", s)));
        params.extend(api_time(r.end).map(|s| ("end", s)));
        let data: Vec<ApiSeries> = self
            .prom
            .api("/api/v1/query_exemplars", &params)
            .await
            .map_err(|e| Status::unavailable(format!("query exemplars from Prometheus: {e}")))?;
        let mut items = Vec::with_capacity(data.len());
        for s in data {
            let d = convert(s, &ext).map_err(|e| Status::internal(format!("{}: {e}", self.prom.url())))?;
            items.push(Ok(ExemplarsResponse { result: Some(exemplars_response::Result::Data(d)) }));
        }
        Ok(Response::new(futures::stream::iter(items)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_for_prometheus() {
        let ext = Labels::from_pairs([("replica", "r0")]);
        let cases: &[(&str, Result<Option<&str>, ()>)] = &[
            ("up", Ok(Some(r#"{__name__="up"}"#))),
            (r#"rate(x{replica="r0",job=~"a|b"}[1m])"#, Ok(Some(r#"{__name__="x",job=~"a|b"}"#))),
            (r#"x{replica="r1"}"#, Ok(None)),
            (r#"x{replica="r1"} + y"#, Ok(Some(r#"{__name__="y"}"#))),
            (r#"{replica="r0"}"#, Err(())),
            ("rate(", Err(())),
        ];
        for (q, want) in cases {
            let got = prom_query(q, &ext).map_err(|_| ());
            assert_eq!(got, want.map(|o| o.map(str::to_string)), "{q}");
        }
    }

    #[test]
    fn answers_get_external_labels() {
        let s: ApiSeries = serde_json::from_str(
            r#"{"seriesLabels":{"__name__":"x","job":"j"},"exemplars":[{"labels":{"trace_id":"a"},"value":"+Inf","timestamp":1600096945.479}]}"#,
        )
        .unwrap();
        let d = convert(s, &Labels::from_pairs([("replica", "r0")])).unwrap();
        let names: Vec<_> = d.series_labels.unwrap().labels.into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["__name__", "job", "replica"]);
        assert_eq!(d.exemplars[0].ts, 1600096945479);
        assert_eq!(d.exemplars[0].value, f64::INFINITY);
        assert_eq!(parse_value("x"), None);
    }
}
