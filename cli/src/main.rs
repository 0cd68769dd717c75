//! The `norn` binary: flag parsing and wiring only; the work lives in the library crates.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "norn", version, about = "A Thanos-style receive-and-query layer for Prometheus metrics")]
struct Cli {}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let _cli = Cli::parse();
    Ok(())
}
