//! `norn sidecar`: runs beside an existing Prometheus. Serves its data over the Thanos
//! StoreAPI (Series through remote read with streamed XOR chunks, labels through the HTTP
//! API), ships each block Prometheus persists to object storage with a Thanos meta.json,
//! and reports Prometheus's health at `/-/ready`.

pub mod exemplars;
pub mod metadata;
pub mod metrics;
pub mod prom;
pub mod shipper;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use norn_model::Labels;
use norn_service::{Health, Shutdown, now_ms, parse_time_or_duration};
use norn_storeapi::thanos::exemplars_server::ExemplarsServer;
use norn_storeapi::thanos::info::info_server::InfoServer;
use norn_storeapi::thanos::metadata_server::MetadataServer;
use norn_storeapi::thanos::store_server::StoreServer;
use tokio_stream::wrappers::TcpListenerStream;

use crate::metrics::Metrics;
use crate::prom::{PromClient, PromError};
use crate::shipper::Shipper;
use crate::store::{PromMeta, SidecarStore};

/// Flags of `norn sidecar` (Thanos's names and defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// URL of the Prometheus to serve and ship.
    #[arg(long = "prometheus.url", env = "NORN_SIDECAR_PROMETHEUS_URL", default_value = "http://localhost:9090")]
    pub prometheus_url: String,
    /// How long to wait at start-up for Prometheus to answer before giving up.
    #[arg(long = "prometheus.ready_timeout", env = "NORN_SIDECAR_PROMETHEUS_READY_TIMEOUT", default_value = "10m")]
    pub prometheus_ready_timeout: String,
    /// How often Prometheus's configuration (external labels) is fetched; doubles as the
    /// heartbeat behind `/-/ready`.
    #[arg(
        long = "prometheus.get_config_interval",
        env = "NORN_SIDECAR_PROMETHEUS_GET_CONFIG_INTERVAL",
        default_value = "30s"
    )]
    pub get_config_interval: String,
    /// Timeout of each heartbeat request.
    #[arg(
        long = "prometheus.get_config_timeout",
        env = "NORN_SIDECAR_PROMETHEUS_GET_CONFIG_TIMEOUT",
        default_value = "5s"
    )]
    pub get_config_timeout: String,
    /// Timeout of StoreAPI calls forwarded to Prometheus (remote read, label APIs).
    #[arg(
        long = "prometheus.request_timeout",
        env = "NORN_SIDECAR_PROMETHEUS_REQUEST_TIMEOUT",
        default_value = "2m",
        hide = true
    )]
    pub request_timeout: String,
    /// Prometheus's data directory (its `--storage.tsdb.path`); blocks are shipped from
    /// here and the shipper state is kept here.
    #[arg(long = "tsdb.path", env = "NORN_SIDECAR_TSDB_PATH", default_value = "./data")]
    pub tsdb_path: PathBuf,
    /// Address for the gRPC server (StoreAPI, Info).
    #[arg(long = "grpc-address", env = "NORN_SIDECAR_GRPC_ADDRESS", default_value = "0.0.0.0:10901")]
    pub grpc_address: String,
    /// Address for /metrics, /-/healthy and /-/ready.
    #[arg(long = "http-address", env = "NORN_SIDECAR_HTTP_ADDRESS", default_value = "0.0.0.0:10902")]
    pub http_address: String,
    /// Object storage configuration file (Thanos objstore YAML); enables block upload.
    #[arg(long = "objstore.config-file", env = "NORN_SIDECAR_OBJSTORE_CONFIG_FILE")]
    pub objstore_config_file: Option<PathBuf>,
    /// Object storage configuration inline (YAML).
    #[arg(long = "objstore.config", env = "NORN_SIDECAR_OBJSTORE_CONFIG", conflicts_with = "objstore_config_file")]
    pub objstore_config: Option<String>,
    /// Also upload blocks Prometheus compacted (level > 1) unless their sources were
    /// shipped already.
    #[arg(long = "shipper.upload-compacted", env = "NORN_SIDECAR_SHIPPER_UPLOAD_COMPACTED")]
    pub upload_compacted: bool,
    /// How often the data directory is checked for new blocks.
    #[arg(
        long = "shipper.sync-interval",
        env = "NORN_SIDECAR_SHIPPER_SYNC_INTERVAL",
        default_value = "30s",
        hide = true
    )]
    pub sync_interval: String,
    /// Serve nothing older than this: an RFC 3339 time, or a duration relative to now
    /// (`-2d`, `-1h30m`).
    #[arg(
        long = "min-time",
        env = "NORN_SIDECAR_MIN_TIME",
        default_value = "0000-01-01T00:00:00Z",
        allow_hyphen_values = true
    )]
    pub min_time: String,
}

/// Why `norn sidecar` could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid flag {flag}: {msg}")]
    Flag { flag: &'static str, msg: String },
    #[error(
        "Prometheus at {url} has no external labels (global.external_labels in its configuration). The sidecar \
         refuses to start without them: they are what tells a querier which Prometheus (and which replica) a \
         series comes from, and they identify the blocks it uploads in the bucket. Configure unique external \
         labels, e.g. `external_labels: {{cluster: eu1, replica: \"0\"}}`, and reload Prometheus"
    )]
    NoExternalLabels { url: String },
    #[error("Prometheus at {url} not ready within --prometheus.ready_timeout={timeout}: {last}")]
    NotReady { url: String, timeout: String, last: String },
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

fn dur(flag: &'static str, v: &str) -> Result<Duration, RunError> {
    let ms = norn_service::parse_duration_ms(v).map_err(|msg| RunError::Flag { flag, msg })?;
    Ok(Duration::from_millis(ms.max(0) as u64))
}

/// The oldest sample time Prometheus holds: its oldest local block or, without blocks,
/// its head.
async fn data_min_time(prom: &PromClient, dir: &std::path::Path) -> Option<i64> {
    let dir = dir.to_path_buf();
    let blocks = tokio::task::spawn_blocking(move || shipper::local_blocks(&dir).ok())
        .await
        .ok()
        .flatten()
        .and_then(|b| b.iter().map(|(_, m)| m.min_time).min());
    let head = prom.head_min_time().await.ok().flatten();
    match (blocks, head) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Waits until Prometheus answers `/-/ready` and its configuration, for at most
/// `timeout`; returns its external labels.
async fn wait_for_prometheus(
    prom: &PromClient,
    timeout: Duration,
    timeout_flag: &str,
    shutdown: &Shutdown,
) -> Result<Option<Labels>, RunError> {
    let deadline = Instant::now() + timeout;
    let mut last: PromError;
    loop {
        match prom.ready().await {
            Ok(()) => match prom.external_labels().await {
                Ok(l) => return Ok(Some(l)),
                Err(e) => last = e,
            },
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(RunError::NotReady {
                url: prom.url().into(),
                timeout: timeout_flag.into(),
                last: last.to_string(),
            });
        }
        tracing::warn!(url = prom.url(), error = %last, "Prometheus not ready yet; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now()))) => {}
        }
    }
}

/// Whether Prometheus's flags say it compacts blocks (min block duration differs from
/// max block duration).
pub fn compaction_enabled(flags: &std::collections::BTreeMap<String, String>) -> bool {
    flags.get("storage.tsdb.min-block-duration") != flags.get("storage.tsdb.max-block-duration")
}

/// Warns when Prometheus compacts its blocks: a level-1 block compacted away before it
/// was shipped leaves a gap in the bucket (Thanos requires min = max block duration).
async fn check_compaction(prom: &PromClient, upload_compacted: bool) {
    match prom.flags().await {
        Ok(f) => {
            let min = f.get("storage.tsdb.min-block-duration");
            let max = f.get("storage.tsdb.max-block-duration");
            if compaction_enabled(&f) {
                tracing::warn!(
                    min_block_duration = ?min,
                    max_block_duration = ?max,
                    upload_compacted,
                    "Prometheus compaction is on (storage.tsdb.min-block-duration != storage.tsdb.max-block-duration): \
                     blocks compacted before they are shipped are missing from the bucket unless \
                     --shipper.upload-compacted is set; set both durations equal (e.g. 2h) to disable compaction"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read Prometheus flags to check whether compaction is on"),
    }
}

/// Fetches the configuration every `every`: readiness and the `prometheus_up` gauge
/// follow whether Prometheus answers; external labels and the served time range are
/// refreshed.
async fn heartbeat(
    hb: PromClient,
    store: SidecarStore,
    dir: PathBuf,
    health: Arc<Health>,
    every: Duration,
    shutdown: Shutdown,
) {
    let SidecarStore { prom, meta, metrics } = store;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let r = match hb.ready().await {
            Ok(()) => hb.external_labels().await,
            Err(e) => Err(e),
        };
        match r {
            Ok(l) => {
                if l.is_empty() {
                    tracing::warn!("Prometheus reports no external labels now; keeping the previous ones");
                } else if l != meta.labels() {
                    tracing::info!(labels = %l, "external labels changed");
                    meta.set_labels(l);
                }
                meta.set_data_min_time(data_min_time(&prom, &dir).await);
                if !health.is_ready() {
                    tracing::info!("Prometheus answers; ready");
                }
                health.set_ready(true);
                metrics.prometheus_up.set(1);
                metrics.last_heartbeat_success.set(now_ms() / 1000);
            }
            Err(e) => {
                if health.is_ready() {
                    tracing::warn!(error = %e, "heartbeat to Prometheus failed; not ready");
                }
                health.set_ready(false);
                metrics.prometheus_up.set(0);
            }
        }
    }
}

/// Ships new blocks every `every` until shutdown.
async fn ship_loop(shipper: Shipper, meta: Arc<PromMeta>, every: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        shipper.metrics.syncs.inc();
        match shipper.sync(&meta.labels()).await {
            Ok(r) if !r.failed.is_empty() => {
                shipper.metrics.sync_failures.inc();
            }
            Ok(_) => {}
            Err(e) => {
                shipper.metrics.sync_failures.inc();
                tracing::error!(dir = %shipper.dir.display(), error = %e, "shipper pass failed");
            }
        }
    }
}

/// Runs the sidecar until `shutdown` is cancelled. Fails at start-up when Prometheus
/// does not answer within `--prometheus.ready_timeout` or has no external labels.
pub async fn run(args: Args, shutdown: Shutdown) -> Result<(), RunError> {
    let ready_timeout = dur("--prometheus.ready_timeout", &args.prometheus_ready_timeout)?;
    let cfg_every = dur("--prometheus.get_config_interval", &args.get_config_interval)?.max(Duration::from_millis(100));
    let cfg_timeout = dur("--prometheus.get_config_timeout", &args.get_config_timeout)?;
    let req_timeout = dur("--prometheus.request_timeout", &args.request_timeout)?;
    let sync_every = dur("--shipper.sync-interval", &args.sync_interval)?.max(Duration::from_millis(100));
    let min_time =
        parse_time_or_duration(&args.min_time, now_ms()).map_err(|msg| RunError::Flag { flag: "--min-time", msg })?;
    let flag = |msg: String| RunError::Flag { flag: "--prometheus.url", msg };
    let prom = PromClient::new(&args.prometheus_url, req_timeout).map_err(flag)?;
    let hb = PromClient::new(&args.prometheus_url, cfg_timeout.max(Duration::from_millis(100))).map_err(flag)?;
    let bucket =
        norn_service::bucket_from_flags(args.objstore_config_file.as_deref(), args.objstore_config.as_deref())?;

    let health = Health::new();
    let metrics = Arc::new(Metrics::new(&mut health.registry.lock()));
    let http_l = norn_service::bind(&args.http_address).await?;
    let grpc_l = norn_service::bind(&args.grpc_address).await?;
    tracing::info!(
        http = ?http_l.local_addr()?,
        grpc = ?grpc_l.local_addr()?,
        prometheus = prom.url(),
        upload = bucket.is_some(),
        "norn sidecar starting"
    );
    // /-/healthy answers while Prometheus is awaited; /-/ready says 503 until it answers.
    let http =
        tokio::spawn(norn_service::serve_http(http_l, norn_service::ops_router(health.clone()), shutdown.clone()));

    let Some(labels) =
        wait_for_prometheus(&hb, ready_timeout, &args.prometheus_ready_timeout, &shutdown).await.inspect_err(|_| {
            shutdown.cancel();
        })?
    else {
        http.await??;
        return Ok(());
    };
    if labels.is_empty() {
        shutdown.cancel();
        let _ = http.await;
        return Err(RunError::NoExternalLabels { url: prom.url().into() });
    }
    tracing::info!(external_labels = %labels, "Prometheus answers");
    let meta = Arc::new(PromMeta::new(labels, min_time));
    meta.set_data_min_time(data_min_time(&prom, &args.tsdb_path).await);
    health.set_ready(true);
    metrics.prometheus_up.set(1);
    metrics.last_heartbeat_success.set(now_ms() / 1000);

    let store = SidecarStore { prom: prom.clone(), meta: meta.clone(), metrics: metrics.clone() };
    let grpc_shutdown = shutdown.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StoreServer::new(store.clone()).max_encoding_message_size(usize::MAX))
            .add_service(InfoServer::new(store.clone()))
            .add_service(ExemplarsServer::new(exemplars::ExemplarsProxy { prom: prom.clone(), meta: meta.clone() }))
            .add_service(MetadataServer::new(metadata::MetadataProxy { prom: prom.clone() }))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(grpc_l),
                async move { grpc_shutdown.cancelled().await },
            ),
    );
    tokio::spawn(heartbeat(hb, store.clone(), args.tsdb_path.clone(), health.clone(), cfg_every, shutdown.clone()));
    let ship = match bucket {
        Some(bucket) => {
            check_compaction(&prom, args.upload_compacted).await;
            let s = Shipper {
                bucket,
                dir: args.tsdb_path.clone(),
                upload_compacted: args.upload_compacted,
                metrics: metrics.clone(),
            };
            Some(tokio::spawn(ship_loop(s, meta.clone(), sync_every, shutdown.clone())))
        }
        None => {
            tracing::info!("no --objstore.config(-file): blocks are not uploaded");
            None
        }
    };

    tracing::info!("norn sidecar ready");
    shutdown.cancelled().await;
    health.set_ready(false);
    if let Some(s) = ship {
        s.await?;
    }
    grpc.await??;
    http.await??;
    tracing::info!("norn sidecar stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
