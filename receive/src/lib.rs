//! `norn receive`: multi-tenant Prometheus remote-write ingestion with a Thanos
//! hashring, replication with write quorum, per-tenant TSDBs (WAL-acknowledged writes),
//! a Thanos StoreAPI server, and block upload to a bucket.

pub mod exemplars;
pub mod grpc;
pub mod grpc_snappy;
pub mod hashring;
pub mod http;
pub mod metadata;
pub mod metrics;
pub mod router;
pub mod series_frames;
pub mod ship;
pub mod tenants;
pub mod write;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use norn_service::{Health, Shutdown};
use norn_storeapi::thanos::exemplars_server::ExemplarsServer;
use norn_storeapi::thanos::info::info_server::InfoServer;
use norn_storeapi::thanos::metadata_server::MetadataServer;
use norn_storeapi::thanos::writeable_store_server::WriteableStoreServer;
use norn_tsdb::head::HeadOptions;
use norn_tsdb::wal::{Compression, SyncPolicy, WalOptions};
use parking_lot::RwLock;

use crate::hashring::{Algorithm, MultiRing, parse_config};
use crate::metrics::Metrics;
use crate::router::{Peers, Router};
use crate::tenants::{MultiTsdb, TsdbSettings, validate_tenant};
use norn_storeapi::remote_write::{LabelCache, Limits};

/// Label sets the remote-write handler keeps validated (shared with the heads' series,
/// so a hit costs no extra label memory while the series lives).
const LABEL_CACHE_SERIES: usize = 1 << 18;

/// When a write is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WalFsync {
    /// fsync the WAL before acknowledging each write (survives power loss).
    Commit,
    /// fsync only when a WAL segment is finished (survives a process crash).
    Segment,
}

/// Flags of `norn receive` (Thanos's names and defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address for the remote-write HTTP endpoint (/api/v1/receive, /api/v1/push).
    #[arg(long = "remote-write.address", env = "NORN_RECEIVE_REMOTE_WRITE_ADDRESS", default_value = "0.0.0.0:19291")]
    pub remote_write_address: String,
    /// Address for the gRPC server (StoreAPI, Info, forwarding).
    #[arg(long = "grpc-address", env = "NORN_RECEIVE_GRPC_ADDRESS", default_value = "0.0.0.0:10901")]
    pub grpc_address: String,
    /// Address for /metrics, /-/healthy and /-/ready.
    #[arg(long = "http-address", env = "NORN_RECEIVE_HTTP_ADDRESS", default_value = "0.0.0.0:10902")]
    pub http_address: String,
    /// Data directory; one TSDB per tenant beneath it.
    #[arg(long = "tsdb.path", env = "NORN_RECEIVE_TSDB_PATH", default_value = "./data")]
    pub tsdb_path: PathBuf,
    /// How long local blocks are kept (0 keeps them forever).
    #[arg(long = "tsdb.retention", env = "NORN_RECEIVE_TSDB_RETENTION", default_value = "15d")]
    pub tsdb_retention: String,
    /// Accept samples up to this much older than a series' newest (0 disables).
    #[arg(long = "tsdb.out-of-order.time-window", env = "NORN_RECEIVE_TSDB_OOO_WINDOW", default_value = "0s")]
    pub tsdb_ooo_window: String,
    /// Head block range: blocks are cut with this length (Thanos's hidden flag).
    #[arg(
        long = "tsdb.min-block-duration",
        env = "NORN_RECEIVE_TSDB_MIN_BLOCK_DURATION",
        default_value = "2h",
        hide = true
    )]
    pub tsdb_block_duration: String,
    /// Compress WAL records with snappy.
    #[arg(long = "tsdb.wal-compression", env = "NORN_RECEIVE_TSDB_WAL_COMPRESSION", default_value_t = true, action = clap::ArgAction::Set)]
    pub tsdb_wal_compression: bool,
    /// When the WAL is fsynced: per acknowledged write, or per finished segment.
    #[arg(long = "tsdb.wal-fsync", env = "NORN_RECEIVE_TSDB_WAL_FSYNC", value_enum, default_value = "commit")]
    pub tsdb_wal_fsync: WalFsync,
    /// External label `name="value"` added to every tenant's TSDB (repeatable).
    #[arg(long = "label", env = "NORN_RECEIVE_LABELS")]
    pub labels: Vec<String>,
    /// Hashring configuration file (Thanos JSON); reloaded when it changes.
    #[arg(long = "receive.hashrings-file", env = "NORN_RECEIVE_HASHRINGS_FILE")]
    pub hashrings_file: Option<PathBuf>,
    /// Interval at which the hashrings file is re-read at the latest.
    #[arg(
        long = "receive.hashrings-file-refresh-interval",
        env = "NORN_RECEIVE_HASHRINGS_FILE_REFRESH_INTERVAL",
        default_value = "5m"
    )]
    pub hashrings_file_refresh_interval: String,
    /// Hashring configuration inline (alternative to the file).
    #[arg(long = "receive.hashrings", env = "NORN_RECEIVE_HASHRINGS", conflicts_with = "hashrings_file")]
    pub hashrings: Option<String>,
    /// Placement algorithm for rings that name none.
    #[arg(
        long = "receive.hashrings-algorithm",
        env = "NORN_RECEIVE_HASHRINGS_ALGORITHM",
        value_enum,
        default_value = "hashmod"
    )]
    pub hashrings_algorithm: Algorithm,
    /// How many receivers store each series.
    #[arg(long = "receive.replication-factor", env = "NORN_RECEIVE_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: usize,
    /// This receiver's address as it appears in the hashring.
    #[arg(long = "receive.local-endpoint", env = "NORN_RECEIVE_LOCAL_ENDPOINT")]
    pub local_endpoint: Option<String>,
    /// HTTP header carrying the tenant.
    #[arg(long = "receive.tenant-header", env = "NORN_RECEIVE_TENANT_HEADER", default_value = "THANOS-TENANT")]
    pub tenant_header: String,
    /// Tenant of requests without the tenant header.
    #[arg(
        long = "receive.default-tenant-id",
        env = "NORN_RECEIVE_DEFAULT_TENANT_ID",
        default_value = "default-tenant"
    )]
    pub default_tenant: String,
    /// External label carrying the tenant; empty adds none.
    #[arg(long = "receive.tenant-label-name", env = "NORN_RECEIVE_TENANT_LABEL_NAME", default_value = "tenant_id")]
    pub tenant_label: String,
    /// Timeout of one forwarding RPC.
    #[arg(long = "receive-forward-timeout", env = "NORN_RECEIVE_FORWARD_TIMEOUT", default_value = "5s", hide = true)]
    pub forward_timeout: String,
    /// Object storage configuration file (Thanos objstore YAML); enables block upload.
    #[arg(long = "objstore.config-file", env = "NORN_RECEIVE_OBJSTORE_CONFIG_FILE")]
    pub objstore_config_file: Option<PathBuf>,
    /// Object storage configuration inline (YAML).
    #[arg(long = "objstore.config", env = "NORN_RECEIVE_OBJSTORE_CONFIG", conflicts_with = "objstore_config_file")]
    pub objstore_config: Option<String>,
    /// Largest request body, compressed and decompressed, in bytes (0 = no limit).
    #[arg(long = "receive.limits.request-size-bytes", env = "NORN_RECEIVE_LIMITS_REQUEST_SIZE_BYTES", default_value_t = 32 << 20)]
    pub limit_request_bytes: usize,
    /// Most series per request (0 = no limit).
    #[arg(long = "receive.limits.request-series", env = "NORN_RECEIVE_LIMITS_REQUEST_SERIES", default_value_t = 0)]
    pub limit_series: usize,
    /// Most samples per request (0 = no limit).
    #[arg(long = "receive.limits.request-samples", env = "NORN_RECEIVE_LIMITS_REQUEST_SAMPLES", default_value_t = 0)]
    pub limit_samples: usize,
    /// Most labels per series (0 = no limit).
    #[arg(
        long = "receive.limits.labels-per-series",
        env = "NORN_RECEIVE_LIMITS_LABELS_PER_SERIES",
        default_value_t = 0
    )]
    pub limit_labels: usize,
    /// Longest label name in bytes (0 = no limit).
    #[arg(
        long = "receive.limits.label-name-length",
        env = "NORN_RECEIVE_LIMITS_LABEL_NAME_LENGTH",
        default_value_t = 0
    )]
    pub limit_name_len: usize,
    /// Longest label value in bytes (0 = no limit).
    #[arg(
        long = "receive.limits.label-value-length",
        env = "NORN_RECEIVE_LIMITS_LABEL_VALUE_LENGTH",
        default_value_t = 0
    )]
    pub limit_value_len: usize,
    /// Exemplars kept per tenant (a circular buffer: the oldest is evicted when full);
    /// 0 disables exemplar storage.
    #[arg(long = "tsdb.max-exemplars", env = "NORN_RECEIVE_TSDB_MAX_EXEMPLARS", default_value_t = 0)]
    pub tsdb_max_exemplars: usize,
    /// How often heads are checked for block cutting, upload and retention.
    #[arg(
        long = "tsdb.maintenance-interval",
        env = "NORN_RECEIVE_TSDB_MAINTENANCE_INTERVAL",
        default_value = "30s",
        hide = true
    )]
    pub maintenance_interval: String,
}

/// Why `norn receive` could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid flag {flag}: {msg}")]
    Flag { flag: &'static str, msg: String },
    #[error("hashring: {0}")]
    Hashring(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("storage: {0}")]
    Tsdb(#[from] norn_tsdb::TsdbError),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("object storage: {0}")]
    Objstore(#[from] norn_objstore::Error),
    #[error(transparent)]
    Bucket(#[from] norn_service::BucketFlagError),
    #[error("task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

fn dur(flag: &'static str, v: &str) -> Result<i64, RunError> {
    norn_service::parse_duration_ms(v).map_err(|msg| RunError::Flag { flag, msg })
}

/// Parses `name="value"` (quotes optional).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (n, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not name=\"value\""))?;
    let v = v.trim();
    let v = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(v);
    if !norn_model::labels::is_valid_legacy_label_name(n.trim()) {
        return Err(format!("invalid label name in {s:?}"));
    }
    Ok((n.trim().to_string(), v.to_string()))
}

fn load_ring(text: &str, args: &Args) -> Result<MultiRing, String> {
    let cfg = parse_config(text).map_err(|e| e.to_string())?;
    MultiRing::new(&cfg, args.hashrings_algorithm, args.replication_factor).map_err(|e| e.to_string())
}

/// Listeners bound by the caller of [`run_with_listeners`].
#[derive(Debug)]
pub struct Listeners {
    /// `/metrics`, `/-/healthy`, `/-/ready`; `None` when the caller serves `health` itself.
    pub http: Option<tokio::net::TcpListener>,
    /// The remote-write endpoint.
    pub remote_write: tokio::net::TcpListener,
    /// StoreAPI, Info and forwarding.
    pub grpc: tokio::net::TcpListener,
}

/// Runs the receiver until `shutdown` is cancelled, binding the flag addresses.
pub async fn run(args: Args, shutdown: Shutdown) -> Result<(), RunError> {
    // Listeners first, so the ports are taken before the (possibly long) WAL replay;
    // /-/ready says 503 until replay is done.
    let listeners = Listeners {
        http: Some(norn_service::bind(&args.http_address).await?),
        remote_write: norn_service::bind(&args.remote_write_address).await?,
        grpc: norn_service::bind(&args.grpc_address).await?,
    };
    run_with_listeners(args, listeners, Health::new(), shutdown).await
}

/// Runs the receiver on already bound listeners until `shutdown` is cancelled (for
/// `norn standalone`, which shares one process and one HTTP address with the querier).
/// `health` gets the receiver's metrics and turns ready once every WAL is replayed.
pub async fn run_with_listeners(
    args: Args,
    listeners: Listeners,
    health: Arc<Health>,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new(&mut health.registry.lock()));
    let retention = dur("--tsdb.retention", &args.tsdb_retention)?;
    let ooo = dur("--tsdb.out-of-order.time-window", &args.tsdb_ooo_window)?;
    let block = dur("--tsdb.min-block-duration", &args.tsdb_block_duration)?;
    let refresh = dur("--receive.hashrings-file-refresh-interval", &args.hashrings_file_refresh_interval)?;
    let fwd_timeout = dur("--receive-forward-timeout", &args.forward_timeout)?;
    let maint = dur("--tsdb.maintenance-interval", &args.maintenance_interval)?.max(100);
    if args.replication_factor == 0 {
        return Err(RunError::Flag { flag: "--receive.replication-factor", msg: "must be at least 1".into() });
    }
    validate_tenant(&args.default_tenant)
        .map_err(|e| RunError::Flag { flag: "--receive.default-tenant-id", msg: e.to_string() })?;
    let labels = args
        .labels
        .iter()
        .map(|l| parse_label(l))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|msg| RunError::Flag { flag: "--label", msg })?;
    let bucket =
        norn_service::bucket_from_flags(args.objstore_config_file.as_deref(), args.objstore_config.as_deref())?;

    // The ring: a file (watched), inline JSON, or just this node.
    let local = args.local_endpoint.clone().unwrap_or_else(|| args.grpc_address.clone());
    let (ring, ring_text) = match (&args.hashrings_file, &args.hashrings) {
        (Some(p), _) => {
            let text = std::fs::read_to_string(p)?;
            (load_ring(&text, &args).map_err(RunError::Hashring)?, Some(text))
        }
        (None, Some(t)) => (load_ring(t, &args).map_err(RunError::Hashring)?, None),
        (None, None) => (MultiRing::single(&local), None),
    };
    metrics.record_reload(true);
    let single = args.hashrings_file.is_none() && args.hashrings.is_none();
    if single && args.replication_factor > 1 {
        return Err(RunError::Flag {
            flag: "--receive.replication-factor",
            msg: "replication needs a hashring with enough endpoints".into(),
        });
    }

    let head = HeadOptions {
        chunk_range: block,
        out_of_order_time_window: ooo,
        max_exemplars: args.tsdb_max_exemplars,
        wal: WalOptions {
            compression: if args.tsdb_wal_compression { Compression::Snappy } else { Compression::None },
            sync: match args.tsdb_wal_fsync {
                WalFsync::Commit => SyncPolicy::PerCommit,
                WalFsync::Segment => SyncPolicy::OnSegmentSwitch,
            },
            ..WalOptions::default()
        },
        ..HeadOptions::default()
    };
    let tsdb = Arc::new(MultiTsdb::new(TsdbSettings {
        root: args.tsdb_path.clone(),
        head,
        labels,
        tenant_label: args.tenant_label.clone(),
    }));

    let limits = Limits {
        size_bytes: args.limit_request_bytes,
        series: args.limit_series,
        samples: args.limit_samples,
        labels_per_series: args.limit_labels,
        label_name_length: args.limit_name_len,
        label_value_length: args.limit_value_len,
    };
    let max_msg = if limits.size_bytes > 0 { limits.size_bytes.saturating_mul(2) } else { usize::MAX };
    let router = Arc::new(Router {
        rf: args.replication_factor,
        local_endpoint: local.clone(),
        ring: RwLock::new(Arc::new(ring)),
        tsdb: tsdb.clone(),
        peers: Peers::new(Duration::from_millis(fwd_timeout as u64), max_msg),
        metrics: metrics.clone(),
        exemplars: Arc::new(exemplars::TenantExemplars::new(args.tsdb_max_exemplars)),
    });
    router.exemplars.register(&mut health.registry.lock());
    let metadata = Arc::new(metadata::MetadataStore::new());

    let Listeners { http: http_l, remote_write: rw_l, grpc: grpc_l } = listeners;
    tracing::info!(
        http = ?http_l.as_ref().map(|l| l.local_addr()).transpose()?,
        remote_write = ?rw_l.local_addr()?,
        grpc = ?grpc_l.local_addr()?,
        local_endpoint = local,
        replication_factor = args.replication_factor,
        "norn receive starting"
    );
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(http_l) = http_l {
        tasks.spawn(norn_service::serve_http(http_l, norn_service::ops_router(health.clone()), shutdown.clone()));
    }
    let api = Arc::new(http::WriteApi {
        router: router.clone(),
        health: health.clone(),
        limits,
        tenant_header: args.tenant_header.clone(),
        default_tenant: args.default_tenant.clone(),
        label_cache: LabelCache::new(LABEL_CACHE_SERIES),
        metadata: metadata.clone(),
    });
    tasks.spawn(norn_service::serve_http(rw_l, http::routes(api), shutdown.clone()));

    let store = grpc::StoreService::new(tsdb.clone());
    let writer = grpc::WriteService {
        router: router.clone(),
        health: health.clone(),
        limits,
        default_tenant: args.default_tenant.clone(),
    };
    let grpc_shutdown = shutdown.clone();
    let grpc = tonic::transport::Server::builder()
        .layer(grpc_snappy::SnappyLayer { limit: max_msg })
        .add_service(
            WriteableStoreServer::new(writer).max_decoding_message_size(max_msg).max_encoding_message_size(max_msg),
        )
        .add_service(grpc::StoreGrpc::new(store.clone()))
        .add_service(InfoServer::new(store))
        .add_service(ExemplarsServer::new(exemplars::ExemplarsService {
            tsdb: tsdb.clone(),
            exemplars: router.exemplars.clone(),
        }))
        .add_service(MetadataServer::new(metadata::MetadataService { store: metadata }))
        // TCP_NODELAY: Series streams end in small frames (trailers) that Nagle would hold
        // back for the peer's delayed ACK, adding ~40 ms to a query.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_l).with_nodelay(Some(true)),
            async move { grpc_shutdown.cancelled().await },
        );
    let grpc = tokio::spawn(grpc);

    // WAL replay of every tenant found on disk.
    let t = tsdb.clone();
    tokio::task::spawn_blocking(move || t.open_existing()).await??;
    metrics.tenants.set(tsdb.all().len() as i64);

    if let (Some(path), Some(text)) = (args.hashrings_file.clone(), ring_text) {
        let period = Duration::from_millis(refresh.clamp(100, 1000) as u64);
        tokio::spawn(watch_ring(path, text, period, args.clone(), router.clone(), shutdown.clone()));
    }
    let shipper = bucket.map(|b| Arc::new(ship::Shipper::new(b, metrics.clone())));
    tokio::spawn(ship::maintenance(
        tsdb.clone(),
        shipper,
        metrics.clone(),
        retention,
        Duration::from_millis(maint as u64),
        shutdown.clone(),
    ));

    health.set_ready(true);
    tracing::info!("norn receive ready");
    shutdown.cancelled().await;
    health.set_ready(false);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    grpc.await??;
    tracing::info!("norn receive stopped");
    Ok(())
}

/// Re-reads the hashrings file every `period`; a changed, valid file replaces the ring,
/// an invalid one is logged and the last good ring kept.
async fn watch_ring(
    path: PathBuf,
    mut last: String,
    period: Duration,
    args: Args,
    router: Arc<Router>,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read hashrings file; keeping the last good ring");
                continue;
            }
        };
        if text == last {
            continue;
        }
        last = text.clone();
        match load_ring(&text, &args) {
            Ok(r) => {
                *router.ring.write() = Arc::new(r);
                router.metrics.record_reload(true);
                tracing::info!(file = %path.display(), "hashring reloaded");
            }
            Err(e) => {
                router.metrics.record_reload(false);
                tracing::error!(file = %path.display(), error = %e, "invalid hashrings file; keeping the last good ring");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_flag() {
        assert_eq!(parse_label(r#"replica="r0""#), Ok(("replica".into(), "r0".into())));
        assert_eq!(parse_label("a=b"), Ok(("a".into(), "b".into())));
        assert!(parse_label("nolabel").is_err());
        assert!(parse_label(r#"9x="a""#).is_err());
    }
}
