//! Metric metadata from remote write (1.0's `metadata` field, 2.0's per-series metadata),
//! kept per tenant in memory, and the Thanos `Metadata` gRPC service over it.
//!
//! Senders resend metadata periodically (Prometheus every minute by default), so nothing
//! is persisted; metadata is stored by the receiver the request arrived at (forwarded
//! writes carry none), and queriers merge it across receivers.

use std::collections::{BTreeMap, HashMap};

use norn_storeapi::metadata::type_name;
use norn_storeapi::prometheus::MetricMetadata;
use norn_storeapi::thanos::{self, Meta, MetricMetadataEntry, MetricMetadataRequest, MetricMetadataResponse};
use parking_lot::RwLock;
use tonic::{Request, Response, Status};

/// Distinct metadata kept per metric family; the least recently seen is dropped beyond.
pub const MAX_PER_METRIC: usize = 10;
/// Metric families kept per tenant; metadata of new families is dropped beyond.
pub const MAX_METRICS_PER_TENANT: usize = 100_000;

/// One metadata entry as Prometheus's API shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// `counter`, `gauge`, …
    pub kind: &'static str,
    pub help: String,
    pub unit: String,
}

/// Every tenant's metadata: tenant → metric family → entries, least recently seen first.
#[derive(Debug, Default)]
pub struct MetadataStore {
    tenants: RwLock<HashMap<String, HashMap<String, Vec<Entry>>>>,
}

impl MetadataStore {
    /// An empty store.
    pub fn new() -> MetadataStore {
        MetadataStore::default()
    }

    /// Records a request's metadata for `tenant`.
    pub fn record(&self, tenant: &str, md: &[MetricMetadata]) {
        if md.is_empty() {
            return;
        }
        let mut w = self.tenants.write();
        let t = w.entry(tenant.to_string()).or_default();
        let mut dropped = 0usize;
        for m in md {
            if m.metric_family_name.is_empty() {
                continue;
            }
            let e = Entry { kind: type_name(m.r#type), help: m.help.clone(), unit: m.unit.clone() };
            if !t.contains_key(&m.metric_family_name) && t.len() >= MAX_METRICS_PER_TENANT {
                dropped += 1;
                continue;
            }
            let list = t.entry(m.metric_family_name.clone()).or_default();
            if let Some(p) = list.iter().position(|x| *x == e) {
                // Seen again: now the most recently seen.
                let e = list.remove(p);
                list.push(e);
            } else {
                if list.len() >= MAX_PER_METRIC {
                    list.remove(0);
                }
                list.push(e);
            }
        }
        if dropped > 0 {
            tracing::warn!(tenant, dropped, limit = MAX_METRICS_PER_TENANT, "metadata of new metric families dropped");
        }
    }

    /// Metadata of all tenants merged (entries deduplicated, sorted), only of `metric`
    /// when it is not empty, at most `limit` metric families when `limit` is not negative.
    pub fn query(&self, metric: &str, limit: i32) -> BTreeMap<String, Vec<Entry>> {
        let mut out: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for t in self.tenants.read().values() {
            for (name, list) in t {
                if !metric.is_empty() && name != metric {
                    continue;
                }
                out.entry(name.clone()).or_default().extend(list.iter().cloned());
            }
        }
        for v in out.values_mut() {
            v.sort();
            v.dedup();
        }
        if limit >= 0 {
            out = out.into_iter().take(limit as usize).collect();
        }
        out
    }
}

/// `thanos.Metadata` over the store.
#[derive(Debug, Clone)]
pub struct MetadataService {
    pub store: std::sync::Arc<MetadataStore>,
}

/// The wire form of a metadata map.
pub fn to_proto(m: BTreeMap<String, Vec<Entry>>) -> thanos::MetricMetadata {
    thanos::MetricMetadata {
        metadata: m
            .into_iter()
            .map(|(k, v)| {
                let metas =
                    v.into_iter().map(|e| Meta { r#type: e.kind.to_string(), help: e.help, unit: e.unit }).collect();
                (k, MetricMetadataEntry { metas })
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl thanos::metadata_server::Metadata for MetadataService {
    type MetricMetadataStream = futures::stream::Iter<std::vec::IntoIter<Result<MetricMetadataResponse, Status>>>;

    async fn metric_metadata(
        &self,
        req: Request<MetricMetadataRequest>,
    ) -> Result<Response<Self::MetricMetadataStream>, Status> {
        let r = req.get_ref();
        let md = to_proto(self.store.query(&r.metric, r.limit));
        let resp = MetricMetadataResponse { result: Some(thanos::metric_metadata_response::Result::Metadata(md)) };
        Ok(Response::new(futures::stream::iter(vec![Ok(resp)])))
    }
}

#[cfg(test)]
mod tests {
    use norn_storeapi::prometheus::metric_metadata::MetricType;

    use super::*;

    fn md(name: &str, t: MetricType, help: &str) -> MetricMetadata {
        MetricMetadata { r#type: t as i32, metric_family_name: name.into(), help: help.into(), unit: String::new() }
    }

    #[test]
    fn record_and_query() {
        let s = MetadataStore::new();
        s.record("a", &[md("up", MetricType::Gauge, "Up."), md("http", MetricType::Counter, "Requests.")]);
        s.record(
            "b",
            &[
                md("up", MetricType::Gauge, "Up."),
                md("up", MetricType::Gauge, "Other help."),
                md("", MetricType::Gauge, "x"),
            ],
        );
        let all = s.query("", -1);
        assert_eq!(all.keys().collect::<Vec<_>>(), ["http", "up"]);
        assert_eq!(all["up"].iter().map(|e| e.help.as_str()).collect::<Vec<_>>(), ["Other help.", "Up."]);
        assert_eq!(all["http"][0].kind, "counter");
        let cases = [("", 0, 0), ("", 1, 1), ("up", -1, 1), ("nope", -1, 0), ("", 5, 2)];
        for (metric, limit, n) in cases {
            assert_eq!(s.query(metric, limit).len(), n, "{metric} {limit}");
        }
    }

    #[test]
    fn bounded_per_metric() {
        let s = MetadataStore::new();
        for i in 0..MAX_PER_METRIC + 3 {
            s.record("a", &[md("m", MetricType::Gauge, &format!("h{i}"))]);
        }
        // Seeing an old entry again keeps it.
        s.record("a", &[md("m", MetricType::Gauge, "h3")]);
        s.record("a", &[md("m", MetricType::Gauge, "new")]);
        let got = s.query("m", -1);
        assert_eq!(got["m"].len(), MAX_PER_METRIC);
        assert!(got["m"].iter().any(|e| e.help == "h3"));
        assert!(!got["m"].iter().any(|e| e.help == "h4"));
    }
}
