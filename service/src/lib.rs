//! What every Norn component shares: the operational HTTP server (`/metrics`,
//! `/-/healthy`, `/-/ready`), tracing setup, graceful shutdown on SIGINT/SIGTERM, and the
//! parsing of flag values every component takes (durations, times, the bucket).
//!
//! Every component's `run(args, shutdown)` receives a [`Shutdown`] token; cancelling it
//! asks every server and background loop to finish in-flight work and return.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use norn_objstore::Bucket;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use prometheus_client;
pub use tokio_util::sync::CancellationToken as Shutdown;

/// Installs a `tracing` subscriber writing to stderr, filtered by `RUST_LOG` (default
/// `info`). Calling it twice is harmless.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// A token cancelled on the first SIGINT or SIGTERM. Must be called inside a Tokio
/// runtime.
pub fn shutdown_on_signals() -> Shutdown {
    let token = Shutdown::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    t.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        t.cancel();
    });
    token
}

/// Readiness and the metrics registry, shared by a component and its HTTP server.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// Registry rendered at `/metrics`; components register at start-up.
    pub registry: Mutex<Registry>,
}

impl Health {
    /// A not-ready health with an empty registry.
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// Marks the component ready (or not) for `/-/ready`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/-/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The registry in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], h.render_metrics())
}

async fn healthy() -> impl IntoResponse {
    (StatusCode::OK, "OK\n")
}

async fn ready(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if h.is_ready() { (StatusCode::OK, "OK\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

/// The operational routes: `/metrics`, `/-/healthy`, `/-/ready`. Components may merge
/// their own routes into it.
pub fn ops_router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .with_state(health)
}

/// Binds a TCP listener, with the address in the error.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("listen on {addr}: {e}")))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish.
pub async fn serve_http(listener: TcpListener, router: Router, shutdown: Shutdown) -> std::io::Result<()> {
    let addr = listener.local_addr().ok();
    tracing::info!(address = ?addr, "HTTP server listening");
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[tokio::test]
    async fn ops_endpoints() {
        let health = Health::new();
        let c: Counter = Counter::default();
        health.registry.lock().register("norn_test_things", "Things.", c.clone());
        c.inc();
        let l = bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Shutdown::new();
        let srv = tokio::spawn(serve_http(l, ops_router(health.clone()), stop.clone()));
        let base = format!("http://{addr}");
        let get = |p: &str| reqwest::get(format!("{base}{p}"));
        assert_eq!(get("/-/healthy").await.unwrap().status(), 200);
        assert_eq!(get("/-/ready").await.unwrap().status(), 503);
        health.set_ready(true);
        assert_eq!(get("/-/ready").await.unwrap().status(), 200);
        let body = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(body.contains("norn_test_things_total 1"), "{body}");
        stop.cancel();
        srv.await.unwrap().unwrap();
    }
}

/// Parses a Prometheus duration (`1h30m`, `15d`, `500ms`, `0s`; units ms, s, m, h, d,
/// w, y) into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    if s == "0" {
        return Ok(0);
    }
    let mut total: i64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration {s:?}"));
        }
        let n: i64 = rest[..digits].parse().map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let mult: i64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(format!("invalid duration {s:?}: unknown unit")),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(mult)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| format!("duration {s:?} overflows"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration_ms;

    #[test]
    fn durations() {
        for (s, ms) in
            [("0s", 0), ("0", 0), ("500ms", 500), ("1h30m", 5_400_000), ("15d", 15 * 86_400_000), ("2h", 7_200_000)]
        {
            assert_eq!(parse_duration_ms(s), Ok(ms), "{s}");
        }
        for bad in ["", "h", "1x", "1.5h", "-1s"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}

/// Milliseconds since the Unix epoch now (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Parses Thanos's time-or-duration flag values (`--min-time`, `--max-time`): RFC 3339,
/// or a (possibly negative) Prometheus duration added to `now_ms`.
pub fn parse_time_or_duration(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        return i64::try_from(ms).map_err(|_| format!("{s:?} is out of range"));
    }
    let (neg, d) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let ms = parse_duration_ms(d).map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a duration"))?;
    Ok(if neg { now_ms.saturating_sub(ms) } else { now_ms.saturating_add(ms) })
}

#[cfg(test)]
mod time_or_duration_tests {
    use super::parse_time_or_duration;

    #[test]
    fn times_and_relative_durations() {
        let now = 1_700_000_000_000;
        for (s, want) in [
            ("2023-11-14T22:13:20Z", now),
            ("2023-11-14T22:13:20.5+01:00", now + 500 - 3_600_000),
            ("1970-01-01T00:00:01Z", 1000),
            ("-2d", now - 2 * 86_400_000),
            ("-1h", now - 3_600_000),
            ("1h30m", now + 5_400_000),
            ("+2d", now + 2 * 86_400_000),
        ] {
            assert_eq!(parse_time_or_duration(s, now), Ok(want), "{s}");
        }
        assert!(parse_time_or_duration("0000-01-01T00:00:00Z", now).unwrap() < -62_000_000_000_000);
        assert!(parse_time_or_duration("9999-12-31T23:59:59Z", now).unwrap() > now);
        for bad in ["yesterday", "", "-", "1.5h"] {
            assert!(parse_time_or_duration(bad, now).is_err(), "{bad}");
        }
    }
}

/// Why the bucket named by `--objstore.config-file` or `--objstore.config` could not be
/// opened. The messages read as the components' own flag errors.
#[derive(Debug, thiserror::Error)]
pub enum BucketFlagError {
    /// `--objstore.config-file` could not be read.
    #[error("invalid flag --objstore.config-file: {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// Neither flag was given to a component that needs a bucket.
    #[error("invalid flag --objstore.config-file: a bucket is required (or --objstore.config)")]
    Missing,
    /// The YAML does not describe a bucket Norn can open.
    #[error("object storage: {0}")]
    Objstore(#[from] norn_objstore::Error),
}

/// The bucket of Thanos's `--objstore.config-file` (read from disk) or, without it,
/// `--objstore.config` (inline YAML); `None` when neither is given.
pub fn bucket_from_flags(file: Option<&Path>, inline: Option<&str>) -> Result<Option<Bucket>, BucketFlagError> {
    let yaml = match (file, inline) {
        (Some(p), _) => {
            std::fs::read_to_string(p).map_err(|source| BucketFlagError::Read { path: p.into(), source })?
        }
        (None, Some(y)) => y.to_string(),
        (None, None) => return Ok(None),
    };
    Ok(Some(Bucket::from_yaml(&yaml)?))
}

/// As [`bucket_from_flags`], for components that cannot run without a bucket.
pub fn required_bucket(file: Option<&Path>, inline: Option<&str>) -> Result<Bucket, BucketFlagError> {
    bucket_from_flags(file, inline)?.ok_or(BucketFlagError::Missing)
}

#[cfg(test)]
mod bucket_flag_tests {
    use super::*;

    #[test]
    fn file_wins_over_inline_and_errors_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!("type: FILESYSTEM\nconfig:\n  directory: {}\n", dir.path().display());
        let file = dir.path().join("bucket.yaml");
        std::fs::write(&file, &yaml).unwrap();

        assert!(bucket_from_flags(None, None).unwrap().is_none());
        let e = required_bucket(None, None).unwrap_err().to_string();
        assert_eq!(e, "invalid flag --objstore.config-file: a bucket is required (or --objstore.config)");
        assert_eq!(required_bucket(None, Some(&yaml)).unwrap().kind(), "FILESYSTEM");
        assert_eq!(bucket_from_flags(None, Some(&yaml)).unwrap().unwrap().kind(), "FILESYSTEM");
        // The file is used even when inline YAML (here unusable) is given too.
        assert_eq!(bucket_from_flags(Some(&file), Some("type: NOPE")).unwrap().unwrap().kind(), "FILESYSTEM");

        let missing = dir.path().join("missing.yaml");
        let e = bucket_from_flags(Some(&missing), None).unwrap_err().to_string();
        assert!(e.starts_with("invalid flag --objstore.config-file: ") && e.contains("missing.yaml"), "{e}");
        let e = bucket_from_flags(None, Some("type: NOPE")).unwrap_err().to_string();
        assert!(e.starts_with("object storage: "), "{e}");
    }
}
