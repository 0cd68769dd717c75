//! `/api/v1/query_exemplars`: the expression's selectors (as Prometheus extracts them)
//! and time range sent to every endpoint whose Info offers the Exemplars service and
//! whose external labels the selectors can match; answers merged per series after
//! removing the replica labels, as Thanos's querier deduplicates exemplars.

// Helpers return the finished error response (as in api.rs).
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use norn_model::{Labels, Matcher};
use norn_storeapi::thanos::exemplars_client::ExemplarsClient;
use norn_storeapi::thanos::{self, ExemplarsRequest, PartialResponseStrategy, exemplars_response};

use crate::api::{ApiState, Params, bad_data, ok, respond};
use crate::dedup::strip_labels;
use crate::endpoints::{EndpointState, ProbeStatus};
use crate::fanout::Fanout;
use crate::json;
use crate::timeparse::{MAX_TIME, MIN_TIME, parse_time};

/// One series' exemplars in the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesExemplars {
    pub series: Labels,
    /// `(labels, value, timestamp ms)`, in time order.
    pub exemplars: Vec<(Labels, f64, i64)>,
}

/// Whether the endpoint offers exemplars that the selector sets may match.
fn offers(st: &ProbeStatus, sets: &[Vec<Matcher>]) -> bool {
    let Some(info) = &st.info else { return false };
    if !info.has_exemplars {
        return false;
    }
    info.label_sets.is_empty()
        || info
            .label_sets
            .iter()
            .any(|ls| sets.iter().any(|ms| ms.iter().all(|m| ls.get(&m.name).is_none_or(|v| m.matches(v)))))
}

/// The endpoints to ask, and the errors of those that are down.
fn endpoints(fanout: &Fanout, sets: &[Vec<Matcher>]) -> (Vec<Arc<EndpointState>>, Vec<String>) {
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for ep in fanout.endpoints.all() {
        let s = ep.status.read();
        if !offers(&s, sets) {
            continue;
        }
        match &s.last_error {
            None => up.push(ep.clone()),
            Some(e) => down.push(e.clone()),
        }
    }
    (up, down)
}

async fn fetch(
    ep: Arc<EndpointState>,
    req: ExemplarsRequest,
    tenant: String,
) -> Result<(Vec<thanos::ExemplarData>, Vec<String>), String> {
    let mut c = ExemplarsClient::new(ep.channel.clone()).max_decoding_message_size(256 << 20);
    let mut r = tonic::Request::new(req);
    if let Ok(v) = tenant.parse() {
        r.metadata_mut().insert("thanos-tenant", v);
    }
    let err = |s: tonic::Status| {
        format!("receive exemplars from {}: rpc error: code = {:?} desc = {}", ep.addr, s.code(), s.message())
    };
    let mut stream = c.exemplars(r).await.map_err(err)?.into_inner();
    let (mut data, mut warnings) = (Vec::new(), Vec::new());
    while let Some(m) = stream.message().await.map_err(err)? {
        match m.result {
            Some(exemplars_response::Result::Data(d)) => data.push(d),
            Some(exemplars_response::Result::Warning(w)) => warnings.push(w),
            None => {}
        }
    }
    Ok((data, warnings))
}

/// Why a fan-out failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanError {
    /// The deadline passed.
    Timeout,
    /// Endpoints failed and partial response is off.
    Failed(String),
}

/// Asks every endpoint offering exemplars that `sets` may match, in parallel; failures
/// become warnings when `partial` is set. Returns the raw answers and the warnings.
pub async fn fan_out(
    fanout: &Fanout,
    sets: &[Vec<Matcher>],
    req: ExemplarsRequest,
    tenant: String,
    partial: bool,
    deadline: Instant,
) -> Result<(Vec<thanos::ExemplarData>, Vec<String>), FanError> {
    let (eps, mut errs) = endpoints(fanout, sets);
    let mut set = tokio::task::JoinSet::new();
    for ep in eps {
        set.spawn(fetch(ep, req.clone(), tenant.clone()));
    }
    let (mut data, mut warnings) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::from_std(deadline.max(Instant::now()));
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Err(_) => return Err(FanError::Timeout),
            Ok(None) => break,
            Ok(Some(Ok(Ok((d, w))))) => {
                data.extend(d);
                warnings.extend(w);
            }
            Ok(Some(Ok(Err(e)))) => errs.push(e),
            Ok(Some(Err(e))) => errs.push(format!("exemplars fan-out task failed: {e}")),
        }
    }
    if !errs.is_empty() {
        if !partial {
            return Err(FanError::Failed(errs.join("; ")));
        }
        warnings.extend(errs);
    }
    Ok((data, warnings))
}

/// Merges endpoint answers: replica labels removed from the series labels, equal series
/// joined, their exemplars deduplicated and in time order; series in label order.
pub fn merge(data: Vec<thanos::ExemplarData>, replica_labels: &[String]) -> Result<Vec<SeriesExemplars>, String> {
    let lbl = |ls: &Option<thanos::LabelSet>| -> Result<Labels, String> {
        let mut v = ls.as_ref().map(|l| l.labels.clone()).unwrap_or_default();
        // Sorted here: Thanos only asks its senders to sort.
        v.sort_by(|a, b| a.name.cmp(&b.name));
        norn_storeapi::labels_from_proto(&v).map_err(|e| format!("exemplar labels from an endpoint: {e}"))
    };
    let mut out: Vec<SeriesExemplars> = Vec::new();
    for d in data {
        let series = strip_labels(&lbl(&d.series_labels)?, replica_labels);
        let mut ex = Vec::with_capacity(d.exemplars.len());
        for e in d.exemplars {
            ex.push((lbl(&e.labels)?, e.value, e.ts));
        }
        out.push(SeriesExemplars { series, exemplars: ex });
    }
    out.sort_by(|a, b| a.series.cmp(&b.series));
    let mut merged: Vec<SeriesExemplars> = Vec::with_capacity(out.len());
    for s in out {
        match merged.last_mut() {
            Some(last) if last.series == s.series => last.exemplars.extend(s.exemplars),
            _ => merged.push(s),
        }
    }
    for s in &mut merged {
        s.exemplars.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)).then_with(|| a.1.total_cmp(&b.1)));
        s.exemplars.dedup_by(|a, b| a.2 == b.2 && a.0 == b.0 && a.1.to_bits() == b.1.to_bits());
    }
    Ok(merged)
}

/// The `data` array as Prometheus writes it.
pub fn write_json(out: &mut String, res: &[SeriesExemplars]) {
    out.push('[');
    for (i, s) in res.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"seriesLabels\":");
        json::write_labels(out, &s.series);
        out.push_str(",\"exemplars\":[");
        for (j, (l, v, t)) in s.exemplars.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str("{\"labels\":");
            json::write_labels(out, l);
            out.push_str(",\"value\":");
            json::write_float(out, *v);
            out.push_str(",\"timestamp\":");
            json::write_ts(out, *t);
            out.push('}');
        }
        out.push_str("]}");
    }
    out.push(']');
}

/// `GET|POST /api/v1/query_exemplars`.
pub async fn handler(
    State(st): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::from(q, &headers, &method, &body);
    let time = |k: &str, default: i64| match p.get(k) {
        None => Ok(default),
        Some(v) => parse_time(v).map_err(|e| bad_data(format!("invalid parameter \"{k}\": {e}"))),
    };
    let (start, end) = match (time("start", MIN_TIME), time("end", MAX_TIME)) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if end < start {
        return bad_data("end timestamp must not be before start timestamp");
    }
    let query = p.get("query").unwrap_or("").to_string();
    let expr = match norn_promql::parse(&query) {
        Ok(e) => e,
        Err(e) => return bad_data(e.to_string()),
    };
    let sets = match norn_promql::selectors::extract_selectors(&expr) {
        Ok(s) => s,
        Err(e) => return bad_data(e.to_string()),
    };
    if sets.is_empty() {
        // Prometheus answers a query without selectors with no content at all.
        return StatusCode::NO_CONTENT.into_response();
    }
    let opts = match st.query_options(&p, &headers) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let strategy = if opts.partial_response { PartialResponseStrategy::Warn } else { PartialResponseStrategy::Abort };
    let req = ExemplarsRequest { query, start, end, partial_response_strategy: strategy as i32 };
    let tenant = opts.tenant.clone().unwrap_or_default();
    let (data, warnings) = match fan_out(&st.fanout, &sets, req, tenant, opts.partial_response, opts.deadline).await {
        Ok(x) => x,
        Err(FanError::Timeout) => {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                json::error("timeout", "exemplars query timed out", &[], &[]),
            );
        }
        Err(FanError::Failed(e)) => {
            let msg = format!("retrieving exemplars: {e}");
            return respond(StatusCode::INTERNAL_SERVER_ERROR, json::error("internal", &msg, &[], &[]));
        }
    };
    let replica_labels: &[String] = if opts.dedup { &opts.replica_labels } else { &[] };
    let merged = match merge(data, replica_labels) {
        // With tenancy enforced, only the tenant's series are shown.
        Ok(mut m) => {
            m.retain(|s| opts.extra_matchers.iter().all(|x| x.matches(s.series.get(&x.name).unwrap_or(""))));
            m
        }
        Err(e) => return respond(StatusCode::INTERNAL_SERVER_ERROR, json::error("internal", &e, &warnings, &[])),
    };
    let mut out = String::new();
    write_json(&mut out, &merged);
    ok(&out, &warnings, &[])
}

/// `thanos.Exemplars` on the querier's own gRPC server, so queriers stack: the request
/// fanned out as is, answers passed on without deduplication (the querier above
/// deduplicates), endpoint failures as warnings unless the request says abort.
#[derive(Debug, Clone)]
pub struct ExemplarsProxy {
    pub fanout: Arc<Fanout>,
    pub timeout: std::time::Duration,
}

#[tonic::async_trait]
impl thanos::exemplars_server::Exemplars for ExemplarsProxy {
    type ExemplarsStream = futures::stream::Iter<std::vec::IntoIter<Result<thanos::ExemplarsResponse, tonic::Status>>>;

    async fn exemplars(
        &self,
        req: tonic::Request<ExemplarsRequest>,
    ) -> Result<tonic::Response<Self::ExemplarsStream>, tonic::Status> {
        let tenant = req.metadata().get("thanos-tenant").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let r = req.into_inner();
        let expr = norn_promql::parse(&r.query).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let sets = norn_promql::selectors::extract_selectors(&expr)
            .map_err(|e| tonic::Status::invalid_argument(format!("matchers: {e}")))?;
        let partial = r.partial_response_strategy != PartialResponseStrategy::Abort as i32;
        let (data, warnings) = fan_out(&self.fanout, &sets, r, tenant, partial, Instant::now() + self.timeout)
            .await
            .map_err(|e| match e {
                FanError::Timeout => tonic::Status::deadline_exceeded("exemplars query timed out"),
                FanError::Failed(m) => tonic::Status::unavailable(m),
            })?;
        let items: Vec<_> = warnings
            .into_iter()
            .map(exemplars_response::Result::Warning)
            .chain(data.into_iter().map(exemplars_response::Result::Data))
            .map(|r| Ok(thanos::ExemplarsResponse { result: Some(r) }))
            .collect();
        Ok(tonic::Response::new(futures::stream::iter(items)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::EndpointInfo;

    fn ls(pairs: &[(&str, &str)]) -> Option<thanos::LabelSet> {
        Some(thanos::LabelSet {
            labels: pairs.iter().map(|(n, v)| thanos::Label { name: n.to_string(), value: v.to_string() }).collect(),
        })
    }

    fn data(replica: &str, ex: &[(&str, f64, i64)]) -> thanos::ExemplarData {
        thanos::ExemplarData {
            series_labels: ls(&[("__name__", "x"), ("replica", replica), ("job", "j")]),
            exemplars: ex
                .iter()
                .map(|(t, v, ts)| thanos::Exemplar { labels: ls(&[("trace_id", t)]), value: *v, ts: *ts })
                .collect(),
        }
    }

    #[test]
    fn replicas_merge_into_one_series() {
        let got = merge(
            vec![data("r1", &[("a", 1.0, 1000), ("b", 2.5, 2500)]), data("r0", &[("a", 1.0, 1000)])],
            &["replica".to_string()],
        )
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].series.to_string(), r#"{__name__="x", job="j"}"#);
        assert_eq!(got[0].exemplars.iter().map(|e| e.2).collect::<Vec<_>>(), vec![1000, 2500]);
        let mut s = String::new();
        write_json(&mut s, &got);
        assert_eq!(
            s,
            r#"[{"seriesLabels":{"__name__":"x","job":"j"},"exemplars":[{"labels":{"trace_id":"a"},"value":"1","timestamp":1},{"labels":{"trace_id":"b"},"value":"2.5","timestamp":2.500}]}]"#
        );
        // Without replica labels to remove, replicas stay apart.
        assert_eq!(merge(vec![data("r1", &[]), data("r0", &[])], &[]).unwrap().len(), 2);
    }

    #[test]
    fn endpoints_offering_exemplars() {
        let st = |has: bool, sets: &[&[(&str, &str)]]| ProbeStatus {
            last_check: None,
            info: Some(EndpointInfo {
                has_exemplars: has,
                label_sets: sets.iter().map(|s| Labels::from_pairs(s.iter().copied())).collect(),
                ..Default::default()
            }),
            last_error: None,
        };
        let sel = |v: &str| vec![vec![Matcher::equal("__name__", "x"), Matcher::equal("tenant_id", v)]];
        assert!(offers(&st(true, &[]), &sel("a")));
        assert!(!offers(&st(false, &[]), &sel("a")));
        assert!(offers(&st(true, &[&[("tenant_id", "a")]]), &sel("a")));
        assert!(!offers(&st(true, &[&[("tenant_id", "b")]]), &sel("a")));
        assert!(offers(&st(true, &[&[("tenant_id", "b")], &[("tenant_id", "a")]]), &sel("a")));
    }
}
