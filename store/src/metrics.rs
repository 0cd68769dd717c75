//! The store gateway's Prometheus metrics (under `norn_bucket_store_`, after Thanos's
//! `thanos_bucket_store_` names).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters and gauges registered at start-up.
#[derive(Debug)]
pub struct Metrics {
    pub blocks_loaded: Gauge,
    pub block_loads: Counter,
    pub block_load_failures: Counter,
    pub block_drops: Counter,
    pub syncs: Counter,
    pub sync_failures: Counter,
    pub chunk_fetches: Counter,
    pub chunk_fetched_bytes: Counter,
    pub series_requests: Counter,
    pub index_fetches: Counter,
    pub index_fetched_bytes: Counter,
    pub index_header_builds: Counter,
    pub index_cache_requests: Counter,
    pub index_cache_hits: Counter,
    pub index_cache_bytes: Gauge,
    pub index_cache_items: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them in `reg`.
    pub fn new(reg: &mut Registry) -> Metrics {
        let m = Metrics {
            blocks_loaded: Gauge::default(),
            block_loads: Counter::default(),
            block_load_failures: Counter::default(),
            block_drops: Counter::default(),
            syncs: Counter::default(),
            sync_failures: Counter::default(),
            chunk_fetches: Counter::default(),
            chunk_fetched_bytes: Counter::default(),
            series_requests: Counter::default(),
            index_fetches: Counter::default(),
            index_fetched_bytes: Counter::default(),
            index_header_builds: Counter::default(),
            index_cache_requests: Counter::default(),
            index_cache_hits: Counter::default(),
            index_cache_bytes: Gauge::default(),
            index_cache_items: Gauge::default(),
        };
        let r = reg.sub_registry_with_prefix("norn_bucket_store");
        r.register("blocks_loaded", "Blocks served", m.blocks_loaded.clone());
        r.register("block_loads", "Attempts to load a block", m.block_loads.clone());
        r.register("block_load_failures", "Blocks that failed to load (skipped)", m.block_load_failures.clone());
        r.register("block_drops", "Blocks no longer served", m.block_drops.clone());
        r.register("syncs", "Bucket sync passes", m.syncs.clone());
        r.register("sync_failures", "Bucket sync passes that could not list the bucket", m.sync_failures.clone());
        r.register("chunk_fetches", "Ranged GETs of chunk segment files", m.chunk_fetches.clone());
        r.register("chunk_fetched_bytes", "Bytes read by ranged GETs of chunk segments", m.chunk_fetched_bytes.clone());
        r.register("series_requests", "Store/Series calls", m.series_requests.clone());
        r.register(
            "index_fetches",
            "Ranged GETs of block indexes (index-header sections, postings lists, series)",
            m.index_fetches.clone(),
        );
        r.register("index_fetched_bytes", "Bytes read by ranged GETs of block indexes", m.index_fetched_bytes.clone());
        r.register("index_header_builds", "Index-headers built from the bucket", m.index_header_builds.clone());
        r.register("index_cache_requests", "Index cache lookups (postings and series)", m.index_cache_requests.clone());
        r.register("index_cache_hits", "Index cache lookups that hit", m.index_cache_hits.clone());
        r.register("index_cache_bytes", "Bytes held by the index cache (estimated)", m.index_cache_bytes.clone());
        r.register("index_cache_items", "Items held by the index cache", m.index_cache_items.clone());
        m
    }
}
