//! The `norn` binary: flag parsing and wiring only; the work lives in the library crates.

mod standalone;
mod tools;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options (read before `main`; `_RJEM_MALLOC_CONF` in the environment
/// still overrides them). With its defaults (4 arenas per CPU, 10 s decay) a query that
/// allocates on the gRPC threads and frees on the engine's thread left freed pages spread
/// over many arenas: peak RSS of `norn standalone` over the peer harness's query set was
/// 520–750 MiB while the live heap stayed near 160 MiB. One arena per CPU and purging
/// freed pages after 0.5 s on a background thread brought it to ~265 MiB, with the same
/// ingest CPU (measured in docs/benchmarks.md).
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 79] = b"percpu_arena:percpu,background_thread:true,dirty_decay_ms:500,muzzy_decay_ms:0\0";

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "norn", version, about = "A Thanos-style receive-and-query layer for Prometheus metrics")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive Prometheus remote write into per-tenant TSDBs (hashring, replication, StoreAPI, upload).
    Receive(Box<norn_receive::Args>),
    /// Query StoreAPI endpoints: PromQL, the Prometheus HTTP API, replica dedup, UI.
    Query(Box<norn_query::Args>),
    /// Receive and query in one process over one data directory: remote write in, PromQL out.
    Standalone(Box<standalone::Args>),
    /// Serve a Prometheus over StoreAPI and ship its blocks to object storage.
    Sidecar(Box<norn_sidecar::Args>),
    /// Store gateway: serve the blocks in object storage over StoreAPI.
    Store(Box<norn_store::Args>),
    /// Compactor: merge the bucket's blocks into larger ones, apply retention, delete marked blocks.
    Compact(Box<norn_compact::Args>),
    /// Offline utilities (promtool-compatible).
    #[command(subcommand)]
    Tools(ToolsCommand),
}

#[derive(Debug, Subcommand)]
enum ToolsCommand {
    /// TSDB tools: create blocks from OpenMetrics, dump, list and analyze blocks.
    #[command(subcommand)]
    Tsdb(tools::tsdb::TsdbCommand),
    /// Run promqltest scripts against Norn's PromQL engine.
    #[command(name = "promql-test")]
    PromqlTest(tools::promql::PromqlTestArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = run(cli);
    // A reader that stops early (`norn tools tsdb dump DIR | head`) is not an error.
    if let Err(e) = &result
        && e.chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
    {
        return Ok(());
    }
    result
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Tools(ToolsCommand::Tsdb(cmd))) => tools::tsdb::run(cmd),
        Some(Command::Receive(args)) => serve(|shutdown| norn_receive::run(*args, shutdown)),
        Some(Command::Tools(ToolsCommand::PromqlTest(args))) => {
            if !tools::promql::run(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Command::Query(args)) => serve(|shutdown| norn_query::run(*args, shutdown)),
        Some(Command::Sidecar(args)) => serve(|shutdown| norn_sidecar::run(*args, shutdown)),
        Some(Command::Store(args)) => serve(|shutdown| norn_store::run(*args, shutdown)),
        Some(Command::Compact(args)) => serve(|shutdown| norn_compact::run(*args, shutdown)),
        Some(Command::Standalone(args)) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async { standalone::run(*args, norn_service::shutdown_on_signals()).await })
        }
        None => Ok(()),
    }
}

/// Runs a component on a multi-threaded runtime until SIGINT/SIGTERM.
fn serve<F, E>(component: impl FnOnce(norn_service::Shutdown) -> F) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let shutdown = norn_service::shutdown_on_signals();
        component(shutdown).await.map_err(anyhow::Error::from)
    })
}
