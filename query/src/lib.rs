//! `norn query`: a stateless querier over StoreAPI endpoints.
//!
//! Endpoints come from static addresses, `dns+`/`dnssrv+`/`dnssrvnoa+` names (resolved
//! with hickory-resolver) and SD files; every refresh they are probed with the Info
//! service and their external labels and time ranges prune the endpoints asked for a
//! selection. Selections fan out in parallel, are k-way merged in label order and
//! deduplicated on the replica labels ([`dedup`]). The PromQL engine runs over that
//! ([`fanout::StoreQueryable`]) behind the Prometheus HTTP API ([`api`]); the querier
//! serves StoreAPI/Info itself too ([`grpc`]).

pub mod api;
pub mod args;
pub mod dedup;
pub mod downsampled;
pub mod endpoints;
pub mod exemplars;
pub mod fanout;
pub mod federate_proto;
pub mod grpc;
pub mod json;
pub mod metadata;
pub mod remote_read;
pub mod seriesview;
pub mod timeparse;
mod ui;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use args::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::endpoints::{EndpointSet, EndpointSetConfig, EndpointSpec};
use crate::fanout::Fanout;

/// Why the querier could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value is invalid.
    #[error("invalid flag: {0}")]
    Flag(String),
    /// A listener could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// A server failed.
    #[error("{0}")]
    Serve(String),
}

/// Runs the querier until `shutdown` is cancelled, binding the flag addresses.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), Error> {
    let http =
        TcpListener::bind(args.http_address).await.map_err(|source| Error::Bind { addr: args.http_address, source })?;
    let grpc =
        TcpListener::bind(args.grpc_address).await.map_err(|source| Error::Bind { addr: args.grpc_address, source })?;
    run_with_listeners(args, http, grpc, shutdown).await
}

/// Runs the querier on already bound listeners (for tests and `norn standalone`, which
/// bind port 0 or share a process).
pub async fn run_with_listeners(
    args: Args,
    http: TcpListener,
    grpc: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    run_embedded(args, http, grpc, shutdown, |e| e.router).await
}

/// What [`run_embedded`] hands to its caller's wrapper.
#[derive(Debug)]
pub struct Embedded {
    /// The HTTP API, UI and probes.
    pub router: axum::Router,
    /// True once the first endpoint refresh finished (what `/-/ready` reports).
    pub ready: Arc<AtomicBool>,
    /// The discovered endpoints, with their latest probe results.
    pub endpoints: Arc<EndpointSet>,
}

/// [`run_with_listeners`], serving the router `wrap` returns instead of the querier's own,
/// so a process embedding the querier (`norn standalone`) can add routes and its own
/// readiness on the same address.
pub async fn run_embedded(
    args: Args,
    http: TcpListener,
    grpc: TcpListener,
    shutdown: CancellationToken,
    wrap: impl FnOnce(Embedded) -> axum::Router,
) -> Result<(), Error> {
    let args = args.resolve_negations();
    let specs =
        args.endpoints.iter().map(|s| EndpointSpec::parse(s)).collect::<Result<Vec<_>, _>>().map_err(Error::Flag)?;
    for f in &args.endpoint_sd_files {
        crate::endpoints::check_sd_file_name(f).map_err(Error::Flag)?;
    }
    let set = Arc::new(EndpointSet::new(EndpointSetConfig {
        specs,
        sd_files: args.endpoint_sd_files.clone(),
        dns_server: args.dns_server,
        info_timeout: args.endpoint_info_timeout,
    }));
    let fanout = Arc::new(Fanout { endpoints: set.clone() });
    let ready = Arc::new(AtomicBool::new(false));

    let refresher = {
        let set = set.clone();
        let ready = ready.clone();
        let interval = args.endpoint_refresh_interval;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                set.refresh().await;
                ready.store(true, Ordering::Release);
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        })
    };

    tracing::info!(http = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        grpc = %grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(), "norn query listening");

    let store = grpc::QuerierStore { fanout: fanout.clone(), timeout: args.timeout };
    let grpc_server = {
        let shutdown = shutdown.clone();
        tonic::transport::Server::builder()
            .add_service(
                norn_storeapi::thanos::store_server::StoreServer::new(store.clone())
                    .max_encoding_message_size(256 << 20),
            )
            .add_service(norn_storeapi::thanos::info::info_server::InfoServer::new(store))
            .add_service(norn_storeapi::thanos::exemplars_server::ExemplarsServer::new(exemplars::ExemplarsProxy {
                fanout: fanout.clone(),
                timeout: args.timeout,
            }))
            .add_service(norn_storeapi::thanos::metadata_server::MetadataServer::new(metadata::MetadataProxy {
                fanout: fanout.clone(),
                timeout: args.timeout,
            }))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
                async move { shutdown.cancelled().await },
            )
    };
    let state = Arc::new(api::ApiState::new(args, fanout, ready.clone()));
    let app = wrap(Embedded { router: api::router(state), ready, endpoints: set });
    let http_server = {
        let shutdown = shutdown.clone();
        // TCP_NODELAY: without it a response's last small write waits for the client's
        // delayed ACK (~40 ms on Linux), which dominated short queries.
        let http = axum::serve::ListenerExt::tap_io(http, |s: &mut tokio::net::TcpStream| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY on an HTTP connection: {e}");
            }
        });
        axum::serve(http, app).with_graceful_shutdown(async move { shutdown.cancelled().await })
    };
    let (h, g) = tokio::join!(http_server, grpc_server);
    shutdown.cancel();
    let _ = refresher.await;
    h.map_err(|e| Error::Serve(format!("http: {e}")))?;
    g.map_err(|e| Error::Serve(format!("grpc: {e}")))?;
    Ok(())
}
