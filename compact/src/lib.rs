//! `norn compact`: the bucket compactor, after `thanos compact`. Each pass lists the
//! bucket, deletes blocks whose deletion mark is older than `--delete-delay`, marks raw
//! blocks past `--retention.resolution-raw` for deletion, and within each group (same
//! `thanos.labels` and resolution) merges blocks into the next level (2h → 8h → 2d → 14d,
//! see [`plan`]): the sources are downloaded to `--data-dir`, merged with the tsdb crate's
//! compactor, the result uploaded (chunks, index, meta.json last) and the sources marked
//! for deletion. Then raw blocks spanning ≥ 40h get a 5m copy and 5m blocks spanning
//! ≥ 10 days a 1h copy (see [`downsample`]), and blocks past their resolution's retention
//! are marked for deletion.

pub mod bucket;
pub mod downsample;
pub mod metrics;
pub mod plan;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use norn_service::{Health, Shutdown};

use crate::bucket::Compactor;
use crate::metrics::Metrics;

/// Flags of `norn compact` (Thanos's names and defaults). Every flag also reads a
/// `NORN_COMPACT_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Scratch space: blocks being merged are downloaded under it (emptied at each pass).
    #[arg(long = "data-dir", env = "NORN_COMPACT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Object storage configuration file (Thanos objstore YAML).
    #[arg(long = "objstore.config-file", env = "NORN_COMPACT_OBJSTORE_CONFIG_FILE")]
    pub objstore_config_file: Option<PathBuf>,
    /// Object storage configuration inline (YAML).
    #[arg(long = "objstore.config", env = "NORN_COMPACT_OBJSTORE_CONFIG", conflicts_with = "objstore_config_file")]
    pub objstore_config: Option<String>,
    /// Address for /metrics, /-/healthy and /-/ready.
    #[arg(long = "http-address", env = "NORN_COMPACT_HTTP_ADDRESS", default_value = "0.0.0.0:10902")]
    pub http_address: String,
    /// Keep running: plan and compact again every `--wait-interval`. Without it, one
    /// pass and exit.
    #[arg(short = 'w', long = "wait", env = "NORN_COMPACT_WAIT")]
    pub wait: bool,
    /// Time between passes with `--wait`.
    #[arg(long = "wait-interval", env = "NORN_COMPACT_WAIT_INTERVAL", default_value = "5m")]
    pub wait_interval: String,
    /// How long raw blocks are kept (by their end time); 0 keeps them forever.
    #[arg(long = "retention.resolution-raw", env = "NORN_COMPACT_RETENTION_RESOLUTION_RAW", default_value = "0d")]
    pub retention_raw: String,
    /// How long a block marked for deletion stays in the bucket before it is deleted, so
    /// readers that still serve it have time to notice its replacement.
    #[arg(long = "delete-delay", env = "NORN_COMPACT_DELETE_DELAY", default_value = "48h")]
    pub delete_delay: String,
    /// Groups compacted at once.
    #[arg(long = "compact.concurrency", env = "NORN_COMPACT_CONCURRENCY", default_value_t = 1)]
    pub concurrency: usize,
    /// How long 5m-downsampled blocks are kept (by their end time); 0 keeps them forever.
    #[arg(long = "retention.resolution-5m", env = "NORN_COMPACT_RETENTION_RESOLUTION_5M", default_value = "0d")]
    pub retention_5m: String,
    /// How long 1h-downsampled blocks are kept (by their end time); 0 keeps them forever.
    #[arg(long = "retention.resolution-1h", env = "NORN_COMPACT_RETENTION_RESOLUTION_1H", default_value = "0d")]
    pub retention_1h: String,
    /// Make no downsampled blocks (existing ones are still compacted and kept by their
    /// retention).
    #[arg(long = "downsampling.disable", env = "NORN_COMPACT_DOWNSAMPLING_DISABLE")]
    pub downsampling_disable: bool,
}

/// Why `norn compact` could not run or a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid flag {flag}: {msg}")]
    Flag { flag: &'static str, msg: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("object storage: {0}")]
    Objstore(#[from] norn_objstore::Error),
    #[error(transparent)]
    Bucket(#[from] norn_service::BucketFlagError),
    #[error("task: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{failed} of {groups} group(s) failed to compact (see the log)")]
    Groups { failed: usize, groups: usize },
    #[error("{failed} block(s) failed to downsample (see the log)")]
    Downsample { failed: usize },
}

/// Settings of a compactor derived from the flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Raw retention in ms; 0 = forever.
    pub retention_raw_ms: i64,
    /// 5m retention in ms; 0 = forever.
    pub retention_5m_ms: i64,
    /// 1h retention in ms; 0 = forever.
    pub retention_1h_ms: i64,
    /// Whether downsampled blocks are made.
    pub downsampling: bool,
    pub delete_delay_ms: i64,
    pub concurrency: usize,
    /// Level ranges in ms (`plan::DEFAULT_RANGES`).
    pub ranges: Vec<i64>,
}

/// Checks the flags.
pub fn config(args: &Args) -> Result<(Config, Duration), RunError> {
    let flag = |flag, msg| RunError::Flag { flag, msg };
    let dur = |name: &'static str, v: &str| {
        let ms = norn_service::parse_duration_ms(v).map_err(|m| flag(name, m))?;
        if ms < 0 { Err(flag(name, "must not be negative".into())) } else { Ok(ms) }
    };
    let wait = dur("--wait-interval", &args.wait_interval)?;
    if args.wait && wait == 0 {
        return Err(flag("--wait-interval", "must be positive".into()));
    }
    if args.concurrency == 0 {
        return Err(flag("--compact.concurrency", "must be at least 1".into()));
    }
    let cfg = Config {
        data_dir: args.data_dir.clone(),
        retention_raw_ms: dur("--retention.resolution-raw", &args.retention_raw)?,
        retention_5m_ms: dur("--retention.resolution-5m", &args.retention_5m)?,
        retention_1h_ms: dur("--retention.resolution-1h", &args.retention_1h)?,
        downsampling: !args.downsampling_disable,
        delete_delay_ms: dur("--delete-delay", &args.delete_delay)?,
        concurrency: args.concurrency,
        ranges: plan::DEFAULT_RANGES.to_vec(),
    };
    Ok((cfg, Duration::from_millis(wait as u64)))
}

/// Runs the compactor: one pass (exit status says whether it succeeded), or with
/// `--wait` a pass every `--wait-interval` until `shutdown`.
pub async fn run(args: Args, shutdown: Shutdown) -> Result<(), RunError> {
    let (cfg, every) = config(&args)?;
    let bucket = norn_service::required_bucket(args.objstore_config_file.as_deref(), args.objstore_config.as_deref())?;
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| RunError::Flag { flag: "--data-dir", msg: format!("creating {}: {e}", cfg.data_dir.display()) })?;
    let health = Health::new();
    let metrics = Arc::new(Metrics::new(&mut health.registry.lock()));
    let http_l = norn_service::bind(&args.http_address).await?;
    tracing::info!(
        http = ?http_l.local_addr()?,
        bucket = bucket.kind(),
        data_dir = %cfg.data_dir.display(),
        wait = args.wait,
        "norn compact starting"
    );
    let http =
        tokio::spawn(norn_service::serve_http(http_l, norn_service::ops_router(health.clone()), shutdown.clone()));
    health.set_ready(true);
    let c = Compactor::new(bucket, cfg, metrics);
    let result = if args.wait {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            // A failed pass is retried at the next interval; its cause is in the log. A
            // signal stops a pass between objects: uploads write meta.json last and marks
            // come after, so the bucket is left consistent.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = c.pass_logged() => {}
            }
        }
        Ok(())
    } else {
        tokio::select! {
            _ = shutdown.cancelled() => {
                tracing::info!("interrupted; the pass did not finish");
                Ok(())
            }
            r = c.pass_logged() => r.map(|_| ()),
        }
    };
    health.set_ready(false);
    shutdown.cancel();
    http.await??;
    tracing::info!("norn compact stopped");
    result
}
