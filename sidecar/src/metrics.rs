//! The sidecar's Prometheus metrics (under `norn_sidecar_`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Counters and gauges registered at start-up.
#[derive(Debug)]
pub struct Metrics {
    pub prometheus_up: Gauge,
    pub last_heartbeat_success: Gauge,
    pub remote_reads: Family<Labels, Counter>,
    pub uploads: Counter,
    pub upload_failures: Counter,
    pub syncs: Counter,
    pub sync_failures: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `reg`.
    pub fn new(reg: &mut Registry) -> Metrics {
        let m = Metrics {
            prometheus_up: Gauge::default(),
            last_heartbeat_success: Gauge::default(),
            remote_reads: Family::default(),
            uploads: Counter::default(),
            upload_failures: Counter::default(),
            syncs: Counter::default(),
            sync_failures: Counter::default(),
        };
        let r = reg.sub_registry_with_prefix("norn_sidecar");
        r.register("prometheus_up", "1 when the last heartbeat to Prometheus succeeded", m.prometheus_up.clone());
        r.register(
            "last_heartbeat_success_time_seconds",
            "Unix time of the last successful heartbeat to Prometheus",
            m.last_heartbeat_success.clone(),
        );
        r.register("remote_reads", "Remote-read calls to Prometheus, by response mode", m.remote_reads.clone());
        r.register("shipper_uploads", "Blocks uploaded to the bucket", m.uploads.clone());
        r.register("shipper_upload_failures", "Failed block uploads", m.upload_failures.clone());
        r.register("shipper_dir_syncs", "Passes over the data directory", m.syncs.clone());
        r.register("shipper_dir_sync_failures", "Passes over the data directory that failed", m.sync_failures.clone());
        m
    }
}
