//! The receiver's Prometheus metrics.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::write::AppendStats;

type Labels = Vec<(String, String)>;

/// Counters, gauges and histograms registered at start-up.
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<Labels, Counter>,
    pub samples: Family<Labels, Counter>,
    pub forwards: Family<Labels, Counter>,
    pub forward_duration: Histogram,
    pub quorum_failures: Counter,
    /// Replica writes that failed or were still running at the forward timeout in
    /// writes that reached quorum (and were answered as successful), by reason.
    pub replica_failures: Family<Labels, Counter>,
    pub head_series: Gauge,
    pub tenants: Gauge,
    pub ring_reloads: Family<Labels, Counter>,
    pub blocks_cut: Counter,
    pub blocks_uploaded: Counter,
    pub upload_failures: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them under `norn_receive_`.
    pub fn new(reg: &mut Registry) -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            samples: Family::default(),
            forwards: Family::default(),
            forward_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            quorum_failures: Counter::default(),
            replica_failures: Family::default(),
            head_series: Gauge::default(),
            tenants: Gauge::default(),
            ring_reloads: Family::default(),
            blocks_cut: Counter::default(),
            blocks_uploaded: Counter::default(),
            upload_failures: Counter::default(),
        };
        let r = reg.sub_registry_with_prefix("norn_receive");
        r.register("http_requests", "Remote-write HTTP requests by handler and status code", m.requests.clone());
        r.register("samples", "Samples received, by outcome: appended, conflict (refused, the client is told), or dropped at commit after a concurrent write to the series (out_of_order, duplicate_timestamp, out_of_bounds, too_old)", m.samples.clone());
        r.register("forward_requests", "Forwarding RPCs to peers, by result", m.forwards.clone());
        r.register("forward_duration_seconds", "Latency of forwarding RPCs to peers", m.forward_duration.clone());
        r.register("quorum_failures", "Writes that did not reach the write quorum", m.quorum_failures.clone());
        r.register(
            "replica_failures",
            "Replica writes (local or forwarded) that failed (reason=error) or were still running at the forward \
             timeout (reason=timeout) in writes answered as successful: that replica may miss the samples",
            m.replica_failures.clone(),
        );
        r.register("head_series", "Series in the heads of all tenants", m.head_series.clone());
        r.register("tenants", "Tenant TSDBs open", m.tenants.clone());
        r.register("hashring_reloads", "Hashring file (re)loads, by result", m.ring_reloads.clone());
        r.register("blocks_cut", "Blocks cut from heads", m.blocks_cut.clone());
        r.register("blocks_uploaded", "Blocks uploaded to the bucket", m.blocks_uploaded.clone());
        r.register("block_upload_failures", "Failed block uploads", m.upload_failures.clone());
        m
    }

    pub fn record_append(&self, st: &AppendStats) {
        let c = |o: &str| self.samples.get_or_create(&vec![("outcome".to_string(), o.to_string())]).clone();
        c("appended").inc_by(st.appended);
        c("conflict").inc_by(st.conflicts);
        // Commit-time drops are rare: create their series only once one happens.
        for (o, n) in [
            ("out_of_order", st.out_of_order),
            ("duplicate_timestamp", st.duplicate_timestamp),
            ("out_of_bounds", st.out_of_bounds),
            ("too_old", st.too_old),
        ] {
            if n > 0 {
                c(o).inc_by(n);
            }
        }
    }

    pub fn record_forward(&self, d: Duration, ok: bool) {
        self.forward_duration.observe(d.as_secs_f64());
        let r = if ok { "success" } else { "error" };
        self.forwards.get_or_create(&vec![("result".to_string(), r.to_string())]).inc();
    }

    pub fn record_replica_failure(&self, reason: &str, n: u64) {
        self.replica_failures.get_or_create(&vec![("reason".to_string(), reason.to_string())]).inc_by(n);
    }

    pub fn record_request(&self, handler: &str, code: u16) {
        self.requests
            .get_or_create(&vec![("handler".to_string(), handler.to_string()), ("code".to_string(), code.to_string())])
            .inc();
    }

    pub fn record_reload(&self, ok: bool) {
        let r = if ok { "success" } else { "failure" };
        self.ring_reloads.get_or_create(&vec![("result".to_string(), r.to_string())]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commit-time drops get their own outcomes, created only once one happens.
    #[test]
    fn append_outcomes() {
        let mut reg = Registry::default();
        let m = Metrics::new(&mut reg);
        m.record_append(&AppendStats { appended: 5, conflicts: 1, out_of_order: 2, ..Default::default() });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for (line, want) in [
            (r#"norn_receive_samples_total{outcome="appended"} 5"#, true),
            (r#"norn_receive_samples_total{outcome="conflict"} 1"#, true),
            (r#"norn_receive_samples_total{outcome="out_of_order"} 2"#, true),
            (r#"outcome="too_old""#, false),
        ] {
            assert_eq!(text.contains(line), want, "{line} in\n{text}");
        }
    }
}
