//! `/api/v1/metadata`: metric metadata from every endpoint whose Info offers the Metadata
//! service, merged per metric family (entries deduplicated), with Prometheus's `metric`,
//! `limit` and `limit_per_metric` parameters and its JSON.

// Helpers return the finished error response (as in api.rs).
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use norn_storeapi::thanos::metadata_client::MetadataClient;
use norn_storeapi::thanos::{self, MetricMetadataRequest, PartialResponseStrategy, metric_metadata_response};

use crate::api::{ApiState, Params, bad_data, ok, respond};
use crate::endpoints::EndpointState;
use crate::exemplars::FanError;
use crate::fanout::Fanout;
use crate::json;

/// One metadata entry: type, help, unit.
pub type Meta = (String, String, String);

async fn fetch(
    ep: Arc<EndpointState>,
    req: MetricMetadataRequest,
    tenant: String,
) -> Result<(BTreeMap<String, BTreeSet<Meta>>, Vec<String>), String> {
    let mut c = MetadataClient::new(ep.channel.clone()).max_decoding_message_size(256 << 20);
    let mut r = tonic::Request::new(req);
    if let Ok(v) = tenant.parse() {
        r.metadata_mut().insert("thanos-tenant", v);
    }
    let err = |s: tonic::Status| {
        format!("receive metadata from {}: rpc error: code = {:?} desc = {}", ep.addr, s.code(), s.message())
    };
    let mut stream = c.metric_metadata(r).await.map_err(err)?.into_inner();
    let (mut out, mut warnings) = (BTreeMap::<String, BTreeSet<Meta>>::new(), Vec::new());
    while let Some(m) = stream.message().await.map_err(err)? {
        match m.result {
            Some(metric_metadata_response::Result::Metadata(md)) => {
                for (name, entry) in md.metadata {
                    let set = out.entry(name).or_default();
                    set.extend(entry.metas.into_iter().map(|m| (m.r#type, m.help, m.unit)));
                }
            }
            Some(metric_metadata_response::Result::Warning(w)) => warnings.push(w),
            None => {}
        }
    }
    Ok((out, warnings))
}

/// Applies `limit` (metric families) and `limit_per_metric` (entries per family); a
/// negative limit means none. Families and entries are taken in sorted order.
pub fn limit(mut m: BTreeMap<String, BTreeSet<Meta>>, limit: i64, per_metric: i64) -> BTreeMap<String, BTreeSet<Meta>> {
    if per_metric > 0 {
        for set in m.values_mut() {
            *set = std::mem::take(set).into_iter().take(per_metric as usize).collect();
        }
    }
    if limit >= 0 {
        m = m.into_iter().take(limit as usize).collect();
    }
    m
}

/// The `data` object as Prometheus writes it.
pub fn write_json(out: &mut String, m: &BTreeMap<String, BTreeSet<Meta>>) {
    out.push('{');
    for (i, (name, set)) in m.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json::write_str(out, name);
        out.push_str(":[");
        for (j, (t, h, u)) in set.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str("{\"type\":");
            json::write_str(out, t);
            out.push_str(",\"help\":");
            json::write_str(out, h);
            out.push_str(",\"unit\":");
            json::write_str(out, u);
            out.push('}');
        }
        out.push(']');
    }
    out.push('}');
}

/// `GET /api/v1/metadata`.
pub async fn handler(
    State(st): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::from(q, &headers, &method, &body);
    let num = |k: &str| -> Result<i64, Response> {
        match p.get(k) {
            None => Ok(-1),
            Some(v) => v.parse::<i64>().map_err(|_| bad_data(format!("{k} must be a number"))),
        }
    };
    let (lim, per) = match (num("limit"), num("limit_per_metric")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let opts = match st.query_options(&p, &headers) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let strategy = if opts.partial_response { PartialResponseStrategy::Warn } else { PartialResponseStrategy::Abort };
    let req = MetricMetadataRequest {
        metric: p.get("metric").unwrap_or("").to_string(),
        limit: lim.clamp(-1, i32::MAX as i64) as i32,
        partial_response_strategy: strategy as i32,
    };
    let tenant = opts.tenant.clone().unwrap_or_default();
    let (merged, warnings) = match fan_out(&st.fanout, req, tenant, opts.partial_response, opts.deadline).await {
        Ok(x) => x,
        Err(FanError::Timeout) => {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                json::error("timeout", "metadata query timed out", &[], &[]),
            );
        }
        Err(FanError::Failed(e)) => {
            let msg = format!("retrieving metadata: {e}");
            return respond(StatusCode::INTERNAL_SERVER_ERROR, json::error("internal", &msg, &[], &[]));
        }
    };
    let mut out = String::new();
    write_json(&mut out, &limit(merged, lim, per));
    ok(&out, &warnings, &[])
}

/// Asks every endpoint offering metadata, in parallel, and merges the answers; failures
/// become warnings when `partial` is set.
pub async fn fan_out(
    fanout: &Fanout,
    req: MetricMetadataRequest,
    tenant: String,
    partial: bool,
    deadline: Instant,
) -> Result<(BTreeMap<String, BTreeSet<Meta>>, Vec<String>), FanError> {
    let (mut eps, mut errs) = (Vec::new(), Vec::new());
    for ep in fanout.endpoints.all() {
        let s = ep.status.read();
        if !s.info.as_ref().is_some_and(|i| i.has_metadata) {
            continue;
        }
        match &s.last_error {
            None => eps.push(ep.clone()),
            Some(e) => errs.push(e.clone()),
        }
    }
    let mut set = tokio::task::JoinSet::new();
    for ep in eps {
        set.spawn(fetch(ep, req.clone(), tenant.clone()));
    }
    let (mut merged, mut warnings) = (BTreeMap::<String, BTreeSet<Meta>>::new(), Vec::new());
    let deadline = tokio::time::Instant::from_std(deadline.max(Instant::now()));
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Err(_) => return Err(FanError::Timeout),
            Ok(None) => break,
            Ok(Some(Ok(Ok((m, w))))) => {
                for (k, v) in m {
                    merged.entry(k).or_default().extend(v);
                }
                warnings.extend(w);
            }
            Ok(Some(Ok(Err(e)))) => errs.push(e),
            Ok(Some(Err(e))) => errs.push(format!("metadata fan-out task failed: {e}")),
        }
    }
    if !errs.is_empty() {
        if !partial {
            return Err(FanError::Failed(errs.join("; ")));
        }
        warnings.extend(errs);
    }
    Ok((merged, warnings))
}

/// `thanos.Metadata` on the querier's own gRPC server, so queriers stack.
#[derive(Debug, Clone)]
pub struct MetadataProxy {
    pub fanout: Arc<Fanout>,
    pub timeout: std::time::Duration,
}

#[tonic::async_trait]
impl thanos::metadata_server::Metadata for MetadataProxy {
    type MetricMetadataStream =
        futures::stream::Iter<std::vec::IntoIter<Result<thanos::MetricMetadataResponse, tonic::Status>>>;

    async fn metric_metadata(
        &self,
        req: tonic::Request<MetricMetadataRequest>,
    ) -> Result<tonic::Response<Self::MetricMetadataStream>, tonic::Status> {
        let tenant = req.metadata().get("thanos-tenant").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let r = req.into_inner();
        let (lim, partial) = (r.limit, r.partial_response_strategy != PartialResponseStrategy::Abort as i32);
        let (m, warnings) =
            fan_out(&self.fanout, r, tenant, partial, Instant::now() + self.timeout).await.map_err(|e| match e {
                FanError::Timeout => tonic::Status::deadline_exceeded("metadata query timed out"),
                FanError::Failed(m) => tonic::Status::unavailable(m),
            })?;
        let md = thanos::MetricMetadata {
            metadata: limit(m, lim as i64, -1)
                .into_iter()
                .map(|(name, set)| {
                    let metas = set.into_iter().map(|(t, h, u)| thanos::Meta { r#type: t, help: h, unit: u }).collect();
                    (name, thanos::MetricMetadataEntry { metas })
                })
                .collect(),
        };
        let items: Vec<_> = warnings
            .into_iter()
            .map(metric_metadata_response::Result::Warning)
            .chain(std::iter::once(metric_metadata_response::Result::Metadata(md)))
            .map(|r| Ok(thanos::MetricMetadataResponse { result: Some(r) }))
            .collect();
        Ok(tonic::Response::new(futures::stream::iter(items)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(entries: &[(&str, &str, &str)]) -> BTreeMap<String, BTreeSet<Meta>> {
        let mut m = BTreeMap::<String, BTreeSet<Meta>>::new();
        for (name, t, h) in entries {
            m.entry(name.to_string()).or_default().insert((t.to_string(), h.to_string(), String::new()));
        }
        m
    }

    #[test]
    fn limits_and_json() {
        let m = md(&[("b", "gauge", "B"), ("a", "counter", "A1"), ("a", "counter", "A2"), ("c", "summary", "C")]);
        let cases = [
            (
                -1,
                -1,
                r#"{"a":[{"type":"counter","help":"A1","unit":""},{"type":"counter","help":"A2","unit":""}],"b":[{"type":"gauge","help":"B","unit":""}],"c":[{"type":"summary","help":"C","unit":""}]}"#,
            ),
            (0, -1, "{}"),
            (1, 1, r#"{"a":[{"type":"counter","help":"A1","unit":""}]}"#),
            (
                -1,
                0,
                r#"{"a":[{"type":"counter","help":"A1","unit":""},{"type":"counter","help":"A2","unit":""}],"b":[{"type":"gauge","help":"B","unit":""}],"c":[{"type":"summary","help":"C","unit":""}]}"#,
            ),
        ];
        for (l, per, want) in cases {
            let mut s = String::new();
            write_json(&mut s, &limit(m.clone(), l, per));
            assert_eq!(s, want, "limit {l} per metric {per}");
        }
    }
}
