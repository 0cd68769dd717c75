//! The `norn` binary: flag parsing and wiring only; the work lives in the library crates.

mod tools;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "norn", version, about = "A Thanos-style receive-and-query layer for Prometheus metrics")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    match cli.command {
        Some(Command::Tools(ToolsCommand::Tsdb(cmd))) => tools::tsdb::run(cmd),
        Some(Command::Tools(ToolsCommand::PromqlTest(args))) => {
            if !tools::promql::run(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        None => Ok(()),
    }
}
