//! `norn standalone`: receive and query in one process over one data directory.
//!
//! Components never import each other, so this is wiring only: the standalone flags become
//! a `norn_receive::Args`, a `norn_store::Args` and a `norn_query::Args`, all run on one
//! runtime with one shutdown token. The embedded store gateway serves the blocks the
//! receiver uploaded to the bucket, so history outlives `--tsdb.retention`. A block still
//! on the receiver's disk is left out by the gateway (checked per request), so no query
//! reads data twice and answers are those of the receiver alone until retention removes
//! its copy. The receiver's StoreAPI listens on an ephemeral loopback port that only
//! the in-process querier uses; the user-facing addresses are the remote-write endpoint,
//! the querier's HTTP API (which also serves the receiver's `/metrics` and a readiness that
//! covers both) and the querier's StoreAPI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use norn_query::endpoints::EndpointSet;
use norn_service::{Health, Shutdown};
use parking_lot::Mutex;
use tokio::net::TcpListener;

/// How often the querier re-probes the in-process receiver. Loopback Info calls are
/// cheap, and a short period keeps the querier's view of the receiver's time range fresh.
const LOCAL_REFRESH: &str = "1s";

/// External label on everything the receiver stores, and the querier's replica label.
/// Thanos's block shipper (and ours) refuses blocks without external labels, and a store
/// gateway or compactor groups blocks by them; as a replica label the querier strips it
/// from every answer, so results still equal a Prometheus's.
pub const REPLICA_LABEL: (&str, &str) = ("receive_replica", "standalone");

/// Flags of `norn standalone`. Every flag also reads a `NORN_STANDALONE_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Data directory: tenants' TSDBs under `<data-dir>/tsdb`, the block bucket (FILESYSTEM)
    /// under `<data-dir>/bucket`.
    #[arg(long = "data-dir", env = "NORN_STANDALONE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Prometheus HTTP API, UI, /metrics, /-/healthy, /-/ready: the URL for Grafana.
    #[arg(long = "http-address", env = "NORN_STANDALONE_HTTP_ADDRESS", default_value = "0.0.0.0:10902")]
    pub http_address: String,
    /// StoreAPI (gRPC), so another `norn query` or Thanos querier can stack on this one.
    #[arg(long = "grpc-address", env = "NORN_STANDALONE_GRPC_ADDRESS", default_value = "0.0.0.0:10901")]
    pub grpc_address: String,
    /// Remote-write endpoint (/api/v1/receive, /api/v1/write, /api/v1/push).
    #[arg(
        long = "remote-write.address",
        env = "NORN_STANDALONE_REMOTE_WRITE_ADDRESS",
        default_value = "0.0.0.0:19291"
    )]
    pub remote_write_address: String,
    /// External label `name="value"` added to every series (repeatable).
    #[arg(long = "label", env = "NORN_STANDALONE_LABELS")]
    pub labels: Vec<String>,
    /// How long local blocks are kept (0 keeps them forever).
    #[arg(long = "tsdb.retention", env = "NORN_STANDALONE_TSDB_RETENTION", default_value = "15d")]
    pub tsdb_retention: String,
    /// Accept samples up to this much older than a series' newest (0 disables).
    #[arg(long = "tsdb.out-of-order.time-window", env = "NORN_STANDALONE_TSDB_OOO_WINDOW", default_value = "0s")]
    pub tsdb_ooo_window: String,
    /// When the WAL is fsynced: `commit` (per acknowledged write) or `segment`.
    #[arg(long = "tsdb.wal-fsync", env = "NORN_STANDALONE_TSDB_WAL_FSYNC", default_value = "commit")]
    pub tsdb_wal_fsync: String,
    /// Head block range (blocks are cut and uploaded with this length).
    #[arg(
        long = "tsdb.min-block-duration",
        env = "NORN_STANDALONE_TSDB_MIN_BLOCK_DURATION",
        default_value = "2h",
        hide = true
    )]
    pub tsdb_block_duration: String,
    /// How often heads are checked for block cutting, upload and retention.
    #[arg(
        long = "tsdb.maintenance-interval",
        env = "NORN_STANDALONE_TSDB_MAINTENANCE_INTERVAL",
        default_value = "30s",
        hide = true
    )]
    pub maintenance_interval: String,
    /// HTTP header carrying the tenant of a remote write (and of a query).
    #[arg(long = "receive.tenant-header", env = "NORN_STANDALONE_TENANT_HEADER", default_value = "THANOS-TENANT")]
    pub tenant_header: String,
    /// Tenant of requests without the tenant header.
    #[arg(
        long = "receive.default-tenant-id",
        env = "NORN_STANDALONE_DEFAULT_TENANT_ID",
        default_value = "default-tenant"
    )]
    pub default_tenant: String,
    /// External label carrying the tenant. Empty (the default) adds none, so single-tenant
    /// answers equal those of a Prometheus fed the same data.
    #[arg(long = "receive.tenant-label-name", env = "NORN_STANDALONE_TENANT_LABEL_NAME", default_value = "")]
    pub tenant_label: String,
    /// Largest remote-write body, compressed and decompressed, in bytes (0 = no limit).
    #[arg(long = "receive.limits.request-size-bytes", env = "NORN_STANDALONE_LIMITS_REQUEST_SIZE_BYTES", default_value_t = 32 << 20)]
    pub limit_request_bytes: usize,
    /// Further StoreAPI endpoints to query next to the local data (sidecars, other
    /// receivers), as `norn query --endpoint` takes them. Repeatable.
    #[arg(long = "endpoint", env = "NORN_STANDALONE_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Replica labels to deduplicate on across those endpoints. Repeatable.
    #[arg(long = "query.replica-label", env = "NORN_STANDALONE_REPLICA_LABELS", value_delimiter = ',')]
    pub replica_labels: Vec<String>,
    /// How far back an instant selector looks for a sample.
    #[arg(long = "query.lookback-delta", env = "NORN_STANDALONE_LOOKBACK_DELTA", default_value = "5m")]
    pub lookback_delta: String,
    /// Longest a query may run.
    #[arg(long = "query.timeout", env = "NORN_STANDALONE_QUERY_TIMEOUT", default_value = "2m")]
    pub query_timeout: String,
    /// Most queries evaluated at once; further ones wait.
    #[arg(long = "query.max-concurrent", env = "NORN_STANDALONE_QUERY_MAX_CONCURRENT", default_value_t = 20)]
    pub max_concurrent: usize,
    /// Most samples one query may hold in memory.
    #[arg(long = "query.max-samples", env = "NORN_STANDALONE_QUERY_MAX_SAMPLES", default_value_t = 50_000_000)]
    pub max_samples: usize,
    /// How often the embedded store gateway lists the bucket for blocks the receiver
    /// uploaded (it must see a block before retention removes the local copy).
    #[arg(
        long = "store.sync-block-duration",
        env = "NORN_STANDALONE_STORE_SYNC_BLOCK_DURATION",
        default_value = "1m",
        hide = true
    )]
    pub store_sync: String,
}

/// Wrapper to parse a component's flags from the argument list standalone builds, so the
/// component's own defaults (and `NORN_RECEIVE_*` / `NORN_QUERY_*` variables for flags
/// standalone does not set) apply.
#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct Flags<T: clap::Args> {
    #[command(flatten)]
    args: T,
}

fn parse_component<T: clap::Args + std::fmt::Debug>(component: &str, argv: &[String]) -> anyhow::Result<T> {
    Flags::<T>::try_parse_from(argv)
        .map(|f| f.args)
        .map_err(|e| anyhow::anyhow!("invalid setting for the embedded {component}: {}", e.to_string().trim_end()))
}

/// The FILESYSTEM bucket YAML for `dir`, with the path as a YAML double-quoted scalar.
fn filesystem_bucket_yaml(dir: &Path) -> anyhow::Result<String> {
    let s = dir.to_str().with_context(|| format!("bucket directory {} is not valid UTF-8", dir.display()))?;
    let mut q = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    Ok(format!("type: FILESYSTEM\nconfig:\n  directory: \"{q}\"\n"))
}

/// The receiver's flags: the standalone ones passed through, its listeners' actual
/// addresses, the data layout and the bucket.
fn receive_argv(a: &Args, tsdb: &Path, bucket_yaml: &str, rw: SocketAddr, grpc: SocketAddr) -> Vec<String> {
    let mut v = vec![
        format!("--remote-write.address={rw}"),
        format!("--grpc-address={grpc}"),
        format!("--receive.local-endpoint={grpc}"),
        format!("--tsdb.path={}", tsdb.display()),
        format!("--objstore.config={bucket_yaml}"),
        format!("--tsdb.retention={}", a.tsdb_retention),
        format!("--tsdb.out-of-order.time-window={}", a.tsdb_ooo_window),
        format!("--tsdb.wal-fsync={}", a.tsdb_wal_fsync),
        format!("--tsdb.min-block-duration={}", a.tsdb_block_duration),
        format!("--tsdb.maintenance-interval={}", a.maintenance_interval),
        format!("--receive.tenant-header={}", a.tenant_header),
        format!("--receive.default-tenant-id={}", a.default_tenant),
        format!("--receive.tenant-label-name={}", a.tenant_label),
        format!("--receive.limits.request-size-bytes={}", a.limit_request_bytes),
        format!("--label={}=\"{}\"", REPLICA_LABEL.0, REPLICA_LABEL.1),
    ];
    v.extend(a.labels.iter().map(|l| format!("--label={l}")));
    v
}

/// The embedded store gateway's flags: its index cache beside the TSDB, the bucket.
fn store_argv(a: &Args, cache: &Path, bucket_yaml: &str) -> Vec<String> {
    vec![
        format!("--data-dir={}", cache.display()),
        format!("--objstore.config={bucket_yaml}"),
        format!("--sync-block-duration={}", a.store_sync),
    ]
}

/// The querier's flags: the local receiver and store gateway first, then any further
/// endpoints.
fn query_argv(a: &Args, local: SocketAddr, store: SocketAddr, http: SocketAddr, grpc: SocketAddr) -> Vec<String> {
    let mut v = vec![
        format!("--http-address={http}"),
        format!("--grpc-address={grpc}"),
        format!("--endpoint={local}"),
        format!("--endpoint={store}"),
        format!("--endpoint.refresh-interval={LOCAL_REFRESH}"),
        format!("--query.lookback-delta={}", a.lookback_delta),
        format!("--query.timeout={}", a.query_timeout),
        format!("--query.max-concurrent={}", a.max_concurrent),
        format!("--query.max-samples={}", a.max_samples),
        format!("--query.tenant-header={}", a.tenant_header),
        format!("--query.default-tenant-id={}", a.default_tenant),
        format!("--query.tenant-label-name={}", a.tenant_label),
        format!("--query.replica-label={}", REPLICA_LABEL.0),
    ];
    v.extend(a.endpoints.iter().map(|e| format!("--endpoint={e}")));
    v.extend(a.replica_labels.iter().map(|l| format!("--query.replica-label={l}")));
    v
}

/// A URL for an address a listener is bound to: wildcard addresses become `localhost`.
fn url_host(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() { format!("localhost:{}", addr.port()) } else { addr.to_string() }
}

/// What the standalone HTTP probes look at.
struct Probe {
    health: Arc<Health>,
    query_ready: Arc<std::sync::atomic::AtomicBool>,
    endpoints: Arc<EndpointSet>,
    /// The receiver's StoreAPI address as the querier lists it.
    local: String,
    /// When the receiver finished replaying its WAL.
    receive_ready_at: Mutex<Option<SystemTime>>,
    /// Whether the embedded store gateway has listed the bucket once.
    store_synced: Arc<std::sync::atomic::AtomicBool>,
}

impl Probe {
    /// Ready once the receiver has replayed its WAL and the querier has probed it
    /// successfully since then (so its view of the receiver's data is the replayed one).
    fn ready(&self) -> bool {
        if !self.health.is_ready()
            || !self.query_ready.load(Ordering::Acquire)
            || !self.store_synced.load(Ordering::Acquire)
        {
            return false;
        }
        let Some(since) = *self.receive_ready_at.lock() else { return false };
        self.endpoints.all().iter().any(|ep| {
            if ep.addr != self.local {
                return false;
            }
            let st = ep.status.read();
            st.last_error.is_none() && st.info.is_some() && st.last_check.is_some_and(|t| t >= since)
        })
    }

    /// Whether the querier's last probe saw no data in the receiver: then a write since
    /// may be outside the time range it would ask for, so the caller refreshes first.
    fn local_looks_empty(&self) -> bool {
        self.endpoints
            .all()
            .iter()
            .any(|ep| ep.addr == self.local && ep.status.read().info.as_ref().is_none_or(|i| i.min_time == i64::MAX))
    }
}

async fn metrics(State(p): State<Arc<Probe>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], p.health.render_metrics()).into_response()
}

async fn ready(State(p): State<Arc<Probe>>) -> Response {
    if p.ready() {
        (StatusCode::OK, "Norn standalone is Ready.\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Norn standalone is not ready.\n").into_response()
    }
}

/// Before a query on a receiver that looked empty at the last probe, probe it again: the
/// first samples written would otherwise stay invisible until the next periodic refresh.
async fn fresh_view(State(p): State<Arc<Probe>>, req: Request, next: Next) -> Response {
    if p.local_looks_empty() && p.health.is_ready() {
        p.endpoints.refresh().await;
    }
    next.run(req).await
}

/// Runs receive and query until `shutdown` is cancelled.
pub async fn run(a: Args, shutdown: Shutdown) -> anyhow::Result<()> {
    let data_dir = std::path::absolute(&a.data_dir)
        .with_context(|| format!("--data-dir {}: cannot make it absolute", a.data_dir.display()))?;
    let tsdb_dir = data_dir.join("tsdb");
    let bucket_dir = data_dir.join("bucket");
    let store_dir = data_dir.join("store");
    for d in [&tsdb_dir, &bucket_dir, &store_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let bucket_yaml = filesystem_bucket_yaml(&bucket_dir)?;

    // Every listener first, so a taken port fails the start before any WAL replay.
    let bind = |flag: &'static str, addr: String| async move {
        TcpListener::bind(&addr).await.with_context(|| format!("{flag}: listen on {addr}"))
    };
    let http = bind("--http-address", a.http_address.clone()).await?;
    let grpc = bind("--grpc-address", a.grpc_address.clone()).await?;
    let rw = bind("--remote-write.address", a.remote_write_address.clone()).await?;
    let local_grpc = bind("receiver StoreAPI", "127.0.0.1:0".into()).await?;
    let store_grpc = bind("store gateway StoreAPI", "127.0.0.1:0".into()).await?;
    let (http_addr, grpc_addr, rw_addr, local_addr, store_addr) =
        (http.local_addr()?, grpc.local_addr()?, rw.local_addr()?, local_grpc.local_addr()?, store_grpc.local_addr()?);

    let rargs: norn_receive::Args =
        parse_component("receive", &receive_argv(&a, &tsdb_dir, &bucket_yaml, rw_addr, local_addr))?;
    let sargs: norn_store::Args = parse_component("store", &store_argv(&a, &store_dir, &bucket_yaml))?;
    let qargs: norn_query::Args =
        parse_component("query", &query_argv(&a, local_addr, store_addr, http_addr, grpc_addr))?;

    tracing::info!(
        data_dir = %data_dir.display(),
        tsdb = %tsdb_dir.display(),
        bucket = %bucket_dir.display(),
        "norn standalone starting"
    );
    tracing::info!(
        "Prometheus: add to prometheus.yml  remote_write: [{{url: http://{}/api/v1/receive}}]",
        url_host(rw_addr)
    );
    tracing::info!("Grafana: add a Prometheus data source with URL http://{}", url_host(http_addr));
    tracing::info!("Queriers: StoreAPI (gRPC) on {}", url_host(grpc_addr));

    let health = Health::new();
    // The store gateway's metrics go to the one /metrics; its readiness is its own flag.
    let mut gateway =
        norn_store::Gateway::new(&sargs, &mut health.registry.lock()).context("embedded store gateway")?;
    let local_tsdb = tsdb_dir.clone();
    gateway.set_served_elsewhere(move || local_block_ids(&local_tsdb));
    let gateway = Arc::new(gateway);
    let store_synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut store = tokio::spawn(run_store(gateway, store_grpc, store_synced.clone(), shutdown.clone()));
    let listeners = norn_receive::Listeners { http: None, remote_write: rw, grpc: local_grpc };
    let mut receive =
        tokio::spawn(norn_receive::run_with_listeners(rargs, listeners, health.clone(), shutdown.clone()));

    let probe_slot: Arc<Mutex<Option<Arc<Probe>>>> = Arc::new(Mutex::new(None));
    let slot = probe_slot.clone();
    let local = local_addr.to_string();
    let probe_health = health.clone();
    let mut query = tokio::spawn(norn_query::run_embedded(qargs, http, grpc, shutdown.clone(), move |e| {
        let probe = Arc::new(Probe {
            health: probe_health,
            query_ready: e.ready,
            endpoints: e.endpoints,
            local,
            receive_ready_at: Mutex::new(None),
            store_synced,
        });
        *slot.lock() = Some(probe.clone());
        let api = e.router.layer(axum::middleware::from_fn_with_state(probe.clone(), fresh_view));
        axum::Router::new()
            .route("/metrics", get(metrics))
            .route("/-/ready", get(ready))
            .route("/-/healthy", get(|| async { "Norn standalone is Healthy.\n" }))
            .with_state(probe)
            .fallback_service(api)
    }));

    // Note when the receiver is ready, so readiness waits for a querier probe after that.
    let mut ready_tick = tokio::time::interval(std::time::Duration::from_millis(50));
    let mut noted = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = &mut query => {
                // The querier stopped on its own: an error. Stop the receiver too.
                shutdown.cancel();
                let q = joined("query", r);
                return q.and(stop("receive", receive).await).and(stop("store", store).await);
            }
            r = &mut receive => {
                shutdown.cancel();
                let r = joined("receive", r);
                return r.and(stop("query", query).await).and(stop("store", store).await);
            }
            r = &mut store => {
                shutdown.cancel();
                let s = joined("store", r);
                return s.and(stop("query", query).await).and(stop("receive", receive).await);
            }
            _ = ready_tick.tick(), if !noted => {
                let probe = probe_slot.lock().clone();
                if health.is_ready() && let Some(p) = probe {
                    *p.receive_ready_at.lock() = Some(SystemTime::now());
                    noted = true;
                    tracing::info!("norn standalone: receiver ready; ready once the querier has probed it");
                    // Probe now rather than at the next periodic refresh.
                    tokio::spawn(async move { p.endpoints.refresh().await });
                }
            }
        }
    }
    // The querier first: it holds the only connection to the receiver's StoreAPI, whose
    // graceful stop waits for it.
    let q = stop("query", query).await;
    let r = stop("receive", receive).await;
    let s = stop("store", store).await;
    tracing::info!("norn standalone stopped");
    q.and(r).and(s)
}

/// IDs of the blocks in the receiver's tenant TSDBs (`<tsdb>/<tenant>/<ulid>/meta.json`):
/// the same IDs they carry in the bucket once uploaded.
fn local_block_ids(tsdb: &Path) -> std::collections::HashSet<norn_store::Ulid> {
    let mut out = std::collections::HashSet::new();
    for tenant in std::fs::read_dir(tsdb).into_iter().flatten().flatten() {
        for b in std::fs::read_dir(tenant.path()).into_iter().flatten().flatten() {
            if let Some(id) = b.file_name().to_str().and_then(|n| norn_store::Ulid::from_string(n).ok())
                && b.path().join("meta.json").is_file()
            {
                out.insert(id);
            }
        }
    }
    out
}

/// The embedded store gateway: StoreAPI on `listener`, a first sync (retried until the
/// bucket lists) that sets `synced`, then periodic syncs.
async fn run_store(
    gw: Arc<norn_store::Gateway>,
    listener: TcpListener,
    synced: Arc<std::sync::atomic::AtomicBool>,
    shutdown: Shutdown,
) -> Result<(), norn_store::RunError> {
    let g = gw.clone();
    let s = shutdown.clone();
    let grpc = tokio::spawn(async move { g.serve_grpc(listener, s).await });
    loop {
        if gw.sync_once().await {
            synced.store(true, Ordering::Release);
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
    gw.clone().sync_loop(shutdown).await;
    Ok(grpc.await??)
}

/// How long a component gets to finish in-flight requests after the shutdown signal.
/// Clients holding connections open (a stacked querier's gRPC channel) would otherwise
/// keep the process alive; acknowledged writes are already in the WAL.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

fn joined<E>(component: &str, r: Result<Result<(), E>, tokio::task::JoinError>) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match r {
        Ok(r) => r.with_context(|| component.to_string()),
        Err(e) => Err(anyhow::Error::from(e).context(format!("{component} task"))),
    }
}

/// Waits for a component to stop, at most [`SHUTDOWN_GRACE`]; then aborts it.
async fn stop<E>(component: &str, mut task: tokio::task::JoinHandle<Result<(), E>>) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
        Ok(r) => joined(component, r),
        Err(_) => {
            tracing::warn!(component, grace = ?SHUTDOWN_GRACE, "still serving open connections; stopping it");
            task.abort();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Args {
        #[derive(Debug, Parser)]
        #[command(no_binary_name = true)]
        struct W {
            #[command(flatten)]
            a: Args,
        }
        W::try_parse_from(Vec::<String>::new()).expect("defaults parse").a
    }

    #[test]
    fn component_flags_parse_and_carry_the_settings() {
        let mut a = defaults();
        a.labels = vec!["site=\"lab\"".into()];
        a.lookback_delta = "7m".into();
        a.endpoints = vec!["127.0.0.1:9999".into()];
        let rw: SocketAddr = "127.0.0.1:19291".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let yaml = filesystem_bucket_yaml(Path::new("/tmp/d \"x\"/bucket")).unwrap();
        let r: norn_receive::Args =
            parse_component("receive", &receive_argv(&a, Path::new("/tmp/d/tsdb"), &yaml, rw, local)).unwrap();
        assert_eq!(r.tenant_label, "", "no tenant label by default");
        assert_eq!(r.grpc_address, "127.0.0.1:40000");
        assert_eq!(r.local_endpoint.as_deref(), Some("127.0.0.1:40000"));
        assert_eq!(r.tsdb_path, PathBuf::from("/tmp/d/tsdb"));
        assert_eq!(r.labels, vec!["receive_replica=\"standalone\"".to_string(), "site=\"lab\"".to_string()]);
        assert_eq!(r.objstore_config.as_deref(), Some(yaml.as_str()));

        let store: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let q: norn_query::Args = parse_component("query", &query_argv(&a, local, store, rw, local)).unwrap();
        assert_eq!(
            q.endpoints,
            vec!["127.0.0.1:40000".to_string(), "127.0.0.1:40001".to_string(), "127.0.0.1:9999".to_string()]
        );
        let s: norn_store::Args = parse_component("store", &store_argv(&a, Path::new("/tmp/d/store"), &yaml)).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/tmp/d/store"));
        assert_eq!(s.objstore_config.as_deref(), Some(yaml.as_str()));
        assert_eq!(s.sync_block_duration, "1m");
        assert_eq!(q.lookback_delta, std::time::Duration::from_secs(420));
        assert_eq!(q.endpoint_refresh_interval, std::time::Duration::from_secs(1));
        assert_eq!(q.replica_labels, vec!["receive_replica".to_string()]);
    }

    #[test]
    fn bad_pass_through_values_name_the_component() {
        let mut a = defaults();
        a.tsdb_wal_fsync = "sometimes".into();
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = parse_component::<norn_receive::Args>("receive", &receive_argv(&a, Path::new("/d"), "", local, local))
            .unwrap_err();
        assert!(e.to_string().contains("embedded receive") && e.to_string().contains("sometimes"), "{e}");
        let mut a = defaults();
        a.query_timeout = "soon".into();
        let e = parse_component::<norn_query::Args>("query", &query_argv(&a, local, local, local, local)).unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
    }

    #[test]
    fn bucket_yaml_quotes_the_path() {
        for (dir, want) in [
            ("/data/bucket", "  directory: \"/data/bucket\"\n"),
            ("/d \"q\"/b\\c", "  directory: \"/d \\\"q\\\"/b\\\\c\"\n"),
        ] {
            let y = filesystem_bucket_yaml(Path::new(dir)).unwrap();
            assert!(y.starts_with("type: FILESYSTEM\nconfig:\n"), "{y}");
            assert!(y.ends_with(want), "{dir}: {y}");
        }
    }

    #[test]
    fn bucket_yaml_opens_the_directory_it_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("odd \"name\" \\ dir").join("bucket");
        std::fs::create_dir_all(&dir).unwrap();
        let bucket = norn_objstore::Bucket::from_yaml(&filesystem_bucket_yaml(&dir).unwrap()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(bucket.put("a/b", bytes::Bytes::from_static(b"x"))).unwrap();
        assert_eq!(std::fs::read(dir.join("a").join("b")).unwrap(), b"x");
    }

    #[test]
    fn urls_name_localhost_for_wildcards() {
        for (addr, want) in
            [("0.0.0.0:10902", "localhost:10902"), ("127.0.0.1:5", "127.0.0.1:5"), ("[::]:7", "localhost:7")]
        {
            assert_eq!(url_host(addr.parse().unwrap()), want);
        }
    }
}
