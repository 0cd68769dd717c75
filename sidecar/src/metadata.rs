//! The Thanos `Metadata` service over Prometheus's `/api/v1/metadata`, as Thanos's
//! sidecar serves it: the metric filter and the limit passed through (a negative limit
//! means none), the answer sent in one message.

use std::collections::BTreeMap;

use norn_storeapi::thanos::{
    self, Meta, MetricMetadataEntry, MetricMetadataRequest, MetricMetadataResponse, metric_metadata_response,
};
use serde::Deserialize;
use tonic::{Request, Response, Status};

use crate::prom::PromClient;

#[derive(Debug, Deserialize)]
struct ApiMeta {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    help: String,
    #[serde(default)]
    unit: String,
}

/// `thanos.Metadata` proxying to Prometheus.
#[derive(Debug, Clone)]
pub struct MetadataProxy {
    pub prom: PromClient,
}

fn to_proto(m: BTreeMap<String, Vec<ApiMeta>>) -> thanos::MetricMetadata {
    thanos::MetricMetadata {
        metadata: m
            .into_iter()
            .map(|(name, v)| {
                let metas = v.into_iter().map(|e| Meta { r#type: e.kind, help: e.help, unit: e.unit }).collect();
                (name, MetricMetadataEntry { metas })
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl thanos::metadata_server::Metadata for MetadataProxy {
    type MetricMetadataStream = futures::stream::Iter<std::vec::IntoIter<Result<MetricMetadataResponse, Status>>>;

    async fn metric_metadata(
        &self,
        req: Request<MetricMetadataRequest>,
    ) -> Result<Response<Self::MetricMetadataStream>, Status> {
        let r = req.into_inner();
        let mut params = Vec::new();
        if !r.metric.is_empty() {
            params.push(("metric", r.metric.clone()));
        }
        if r.limit >= 0 {
            params.push(("limit", r.limit.to_string()));
        }
        let m: BTreeMap<String, Vec<ApiMeta>> = self
            .prom
            .api("/api/v1/metadata", &params)
            .await
            .map_err(|e| Status::unavailable(format!("metadata from Prometheus: {e}")))?;
        let resp = MetricMetadataResponse { result: Some(metric_metadata_response::Result::Metadata(to_proto(m))) };
        Ok(Response::new(futures::stream::iter(vec![Ok(resp)])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answer_to_wire() {
        let m: BTreeMap<String, Vec<ApiMeta>> = serde_json::from_str(
            r#"{"up":[{"type":"gauge","help":"Up.","unit":""}],"x":[{"type":"counter","help":"A","unit":"s"},{"type":"counter","help":"B","unit":""}]}"#,
        )
        .unwrap();
        let p = to_proto(m);
        assert_eq!(p.metadata.len(), 2);
        assert_eq!(p.metadata["x"].metas.len(), 2);
        assert_eq!(p.metadata["x"].metas[0].unit, "s");
        assert_eq!(p.metadata["up"].metas[0].r#type, "gauge");
    }
}
