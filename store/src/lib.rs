//! `norn store`: the store gateway. Serves the blocks in a bucket over the Thanos
//! StoreAPI, so data stays queryable after the receivers' and Prometheus's local
//! retention dropped it.
//!
//! The bucket is listed every `--sync-block-duration`; for each new block an
//! index-header (symbols and postings offsets, see [`indexheader`]) is built from ranged
//! reads of its `index` into `--data-dir` (see [`sync`]); postings lists and series are
//! read from the index in the bucket on demand and cached in memory (see
//! [`bucketindex`], [`cache`]); chunk bytes are read with ranged GETs per query (see
//! [`fetch`]); [`service`] answers Series, LabelNames, LabelValues and Info.

pub mod bucketindex;
pub mod cache;
pub mod fetch;
pub mod indexheader;
pub mod metrics;
pub mod service;
pub mod sync;

pub use ulid::Ulid;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use norn_service::{Health, Shutdown, now_ms, parse_time_or_duration};
use norn_storeapi::thanos::info::info_server::InfoServer;
use norn_storeapi::thanos::store_server::StoreServer;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::fetch::ChunkFetcher;
use crate::metrics::Metrics;
use crate::service::BucketStore;
use crate::sync::{BlockSet, Syncer};

/// Flags of `norn store` (Thanos's names and defaults). Every flag also reads a
/// `NORN_STORE_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Local cache: each served block's index-header under `<data-dir>/<ulid>/index-header`.
    #[arg(long = "data-dir", env = "NORN_STORE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Object storage configuration file (Thanos objstore YAML).
    #[arg(long = "objstore.config-file", env = "NORN_STORE_OBJSTORE_CONFIG_FILE")]
    pub objstore_config_file: Option<PathBuf>,
    /// Object storage configuration inline (YAML).
    #[arg(long = "objstore.config", env = "NORN_STORE_OBJSTORE_CONFIG", conflicts_with = "objstore_config_file")]
    pub objstore_config: Option<String>,
    /// Address for /metrics, /-/healthy and /-/ready.
    #[arg(long = "http-address", env = "NORN_STORE_HTTP_ADDRESS", default_value = "0.0.0.0:10902")]
    pub http_address: String,
    /// Address for the gRPC server (StoreAPI, Info).
    #[arg(long = "grpc-address", env = "NORN_STORE_GRPC_ADDRESS", default_value = "0.0.0.0:10901")]
    pub grpc_address: String,
    /// How often the bucket is listed for new and deleted blocks.
    #[arg(long = "sync-block-duration", env = "NORN_STORE_SYNC_BLOCK_DURATION", default_value = "15m")]
    pub sync_block_duration: String,
    /// Blocks loaded (meta fetched, index-header built, index checked) at once during a sync.
    #[arg(long = "block-sync-concurrency", env = "NORN_STORE_BLOCK_SYNC_CONCURRENCY", default_value_t = 20)]
    pub block_sync_concurrency: usize,
    /// Serve only blocks overlapping this time and later: an RFC 3339 time, or a duration
    /// relative to now (`-2w`, `-1h30m`).
    #[arg(
        long = "min-time",
        env = "NORN_STORE_MIN_TIME",
        default_value = "0000-01-01T00:00:00Z",
        allow_hyphen_values = true
    )]
    pub min_time: String,
    /// Serve only blocks overlapping this time and earlier: as `--min-time`.
    #[arg(
        long = "max-time",
        env = "NORN_STORE_MAX_TIME",
        default_value = "9999-12-31T23:59:59Z",
        allow_hyphen_values = true
    )]
    pub max_time: String,
    /// Bytes of postings lists and series entries kept in memory (least recently used
    /// dropped first); 0 turns the cache off. Units B, KB, MB, GB (powers of 1024).
    #[arg(long = "index-cache-size", env = "NORN_STORE_INDEX_CACHE_SIZE", default_value = "250MB")]
    pub index_cache_size: String,
    /// Keep every Nth postings offset of the index-header in memory (1: all); larger
    /// values use less memory and scan more of the mapped header per lookup.
    #[arg(
        long = "store.index-header-posting-offsets-in-mem-sampling",
        env = "NORN_STORE_INDEX_HEADER_POSTING_OFFSETS_IN_MEM_SAMPLING",
        default_value_t = indexheader::DEFAULT_POSTINGS_SAMPLING,
        hide = true
    )]
    pub posting_offsets_sampling: usize,
    /// Read every postings list and series entry of a new block once (ranged GETs, not
    /// kept) before serving it, so a corrupt index is skipped at load instead of failing
    /// the queries that read the damaged part. Off by default, as Thanos: a block is
    /// served after three ranged GETs for its index-header, which is what keeps start-up
    /// and sync cheap on large buckets.
    #[arg(
        long = "store.verify-index-on-load",
        env = "NORN_STORE_VERIFY_INDEX_ON_LOAD",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub verify_index_on_load: bool,
    /// Series calls answered at once; more wait for a slot (Thanos's flag and default).
    #[arg(
        long = "store.grpc.series-max-concurrency",
        env = "NORN_STORE_GRPC_SERIES_MAX_CONCURRENCY",
        default_value_t = 20
    )]
    pub series_max_concurrency: usize,
}

/// Why `norn store` could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid flag {flag}: {msg}")]
    Flag { flag: &'static str, msg: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("object storage: {0}")]
    Objstore(#[from] norn_objstore::Error),
    #[error(transparent)]
    Bucket(#[from] norn_service::BucketFlagError),
    #[error("task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A configured gateway: the block set, its syncer and the gRPC services. `run` wires it
/// with an HTTP server; `norn standalone` embeds it without one.
#[derive(Debug)]
pub struct Gateway {
    pub syncer: Arc<Syncer>,
    pub store: BucketStore,
    sync_every: Duration,
}

impl Gateway {
    /// Checks the flags, opens the bucket and creates the data directory; registers
    /// metrics in `registry`.
    pub fn new(args: &Args, registry: &mut Registry) -> Result<Gateway, RunError> {
        let flag = |flag, msg| RunError::Flag { flag, msg };
        let every =
            norn_service::parse_duration_ms(&args.sync_block_duration).map_err(|m| flag("--sync-block-duration", m))?;
        if every <= 0 {
            return Err(flag("--sync-block-duration", "must be positive".into()));
        }
        let now = now_ms();
        let min_time = parse_time_or_duration(&args.min_time, now).map_err(|m| flag("--min-time", m))?;
        let max_time = parse_time_or_duration(&args.max_time, now).map_err(|m| flag("--max-time", m))?;
        if min_time > max_time {
            return Err(flag("--min-time", format!("{} is after --max-time {}", args.min_time, args.max_time)));
        }
        let bucket =
            norn_service::required_bucket(args.objstore_config_file.as_deref(), args.objstore_config.as_deref())?;
        std::fs::create_dir_all(&args.data_dir)
            .map_err(|e| flag("--data-dir", format!("creating {}: {e}", args.data_dir.display())))?;
        let cache_size = cache::parse_size(&args.index_cache_size).map_err(|m| flag("--index-cache-size", m))?;
        if args.posting_offsets_sampling == 0 {
            return Err(flag("--store.index-header-posting-offsets-in-mem-sampling", "must be at least 1".into()));
        }
        let metrics = Arc::new(Metrics::new(registry));
        let set = Arc::new(BlockSet::default());
        let mut syncer = Syncer::new(
            bucket.clone(),
            args.data_dir.clone(),
            (min_time, max_time),
            args.block_sync_concurrency,
            set.clone(),
            metrics.clone(),
        );
        syncer.cache = Arc::new(cache::IndexCache::new(cache_size, metrics.clone()));
        syncer.postings_sampling = args.posting_offsets_sampling;
        syncer.verify = args.verify_index_on_load;
        let syncer = Arc::new(syncer);
        if args.series_max_concurrency == 0 {
            return Err(flag("--store.grpc.series-max-concurrency", "must be at least 1".into()));
        }
        let store = BucketStore {
            set,
            fetcher: ChunkFetcher { bucket, metrics },
            min_time,
            max_time,
            served_elsewhere: None,
            series_gate: Arc::new(tokio::sync::Semaphore::new(args.series_max_concurrency)),
        };
        Ok(Gateway { syncer, store, sync_every: Duration::from_millis(every as u64) })
    }

    /// Leaves out, at each request, the blocks `f` names (blocks another component in the
    /// same process serves from its disk).
    pub fn set_served_elsewhere(&mut self, f: impl Fn() -> std::collections::HashSet<Ulid> + Send + Sync + 'static) {
        self.store.served_elsewhere = Some(service::ServedElsewhere(Arc::new(f)));
    }

    /// One sync pass, logged and counted. Returns false when the bucket could not be
    /// listed.
    pub async fn sync_once(&self) -> bool {
        let m = &self.syncer.metrics;
        m.syncs.inc();
        let started = std::time::Instant::now();
        match self.syncer.sync().await {
            Ok(r) => {
                tracing::info!(
                    loaded = r.loaded,
                    kept = r.kept,
                    dropped = r.dropped,
                    failed = r.failed.len(),
                    deletion_marked = r.deletion_marked,
                    out_of_range = r.out_of_range,
                    elapsed = ?started.elapsed(),
                    "bucket synced"
                );
                true
            }
            Err(e) => {
                m.sync_failures.inc();
                tracing::error!(error = %e, "bucket sync failed; serving the blocks loaded before");
                false
            }
        }
    }

    /// Syncs every `--sync-block-duration` until shutdown (the first pass is the caller's).
    pub async fn sync_loop(self: Arc<Self>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.sync_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.sync_once().await;
        }
    }

    /// Serves StoreAPI and Info on `listener` until shutdown.
    pub async fn serve_grpc(&self, listener: TcpListener, shutdown: Shutdown) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(StoreServer::new(self.store.clone()).max_encoding_message_size(usize::MAX))
            .add_service(InfoServer::new(self.store.clone()))
            // TCP_NODELAY: a Series stream ends in small frames that Nagle's algorithm
            // would hold back for the peer's delayed ACK.
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move { shutdown.cancelled().await },
            )
            .await
    }
}

/// Runs the store gateway until `shutdown` is cancelled. Ready once the first sync
/// listed the bucket; until then (and while it keeps failing) `/-/ready` says 503.
pub async fn run(args: Args, shutdown: Shutdown) -> Result<(), RunError> {
    let health = Health::new();
    let gw = Arc::new(Gateway::new(&args, &mut health.registry.lock())?);
    let http_l = norn_service::bind(&args.http_address).await?;
    let grpc_l = norn_service::bind(&args.grpc_address).await?;
    tracing::info!(
        http = ?http_l.local_addr()?,
        grpc = ?grpc_l.local_addr()?,
        bucket = gw.syncer.bucket.kind(),
        data_dir = %args.data_dir.display(),
        "norn store starting"
    );
    let http =
        tokio::spawn(norn_service::serve_http(http_l, norn_service::ops_router(health.clone()), shutdown.clone()));
    let g = gw.clone();
    let s = shutdown.clone();
    let grpc = tokio::spawn(async move { g.serve_grpc(grpc_l, s).await });

    // The first sync decides readiness; a failing bucket is retried (backing off) until
    // it answers, so a querier never sees an empty store that is merely not synced yet.
    let mut wait = Duration::from_secs(1);
    loop {
        if gw.sync_once().await {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(gw.sync_every);
    }
    if !shutdown.is_cancelled() {
        health.set_ready(true);
        tracing::info!(blocks = gw.store.set.snapshot().len(), "norn store ready");
    }
    let sync = tokio::spawn(gw.clone().sync_loop(shutdown.clone()));
    shutdown.cancelled().await;
    health.set_ready(false);
    sync.await?;
    grpc.await??;
    http.await??;
    tracing::info!("norn store stopped");
    Ok(())
}

/// Runs CPU work (decoding thousands of series entries, sorting a selection) so that on
/// a multi-threaded runtime the worker hands its other tasks to another thread
/// meanwhile; elsewhere (current-thread runtimes in tests, no runtime) it simply runs.
pub(crate) fn cpu_work<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests;
