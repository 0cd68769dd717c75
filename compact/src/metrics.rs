//! The compactor's Prometheus metrics (under `norn_compact_`, after Thanos's
//! `thanos_compact_` names).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Counters registered at start-up.
#[derive(Debug, Default)]
pub struct Metrics {
    pub iterations: Counter,
    pub pass_failures: Counter,
    pub group_compactions: Counter,
    pub group_compaction_failures: Counter,
    pub blocks_marked: Counter,
    pub blocks_cleaned: Counter,
    pub broken_blocks: Counter,
    /// Downsampling attempts by target resolution (ms), as `thanos_compact_downsample_total`.
    pub downsamples: Family<Vec<(String, String)>, Counter>,
    /// Failed downsampling attempts by target resolution (ms).
    pub downsample_failures: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    /// Label set of a downsampling counter.
    pub fn resolution(res: i64) -> Vec<(String, String)> {
        vec![("resolution".to_string(), res.to_string())]
    }
}

impl Metrics {
    /// Creates the metrics and registers them in `reg`.
    pub fn new(reg: &mut Registry) -> Metrics {
        let m = Metrics::default();
        let r = reg.sub_registry_with_prefix("norn_compact");
        r.register("iterations", "Compaction passes finished", m.iterations.clone());
        r.register("pass_failures", "Compaction passes that failed", m.pass_failures.clone());
        r.register(
            "group_compactions",
            "Blocks merged into one (one count per output block)",
            m.group_compactions.clone(),
        );
        r.register("group_compaction_failures", "Group merges that failed", m.group_compaction_failures.clone());
        r.register("blocks_marked", "Deletion marks written", m.blocks_marked.clone());
        r.register("blocks_cleaned", "Deletion-marked blocks deleted after --delete-delay", m.blocks_cleaned.clone());
        r.register("broken_blocks", "Blocks skipped because their meta.json is unreadable", m.broken_blocks.clone());
        r.register("downsample", "Total number of downsampling attempts", m.downsamples.clone());
        r.register(
            "downsample_failures",
            "Total number of failed downsampling attempts",
            m.downsample_failures.clone(),
        );
        m
    }
}
