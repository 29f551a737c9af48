//! The one `postcache` binary: parses the command line and hands over to the crates that do the
//! work. Each subcommand arrives with the crate behind it.

use clap::{Parser, Subcommand};

/// PostCache: a posts service with a three-tier cache and realtime fan-out, and its operator.
#[derive(Debug, Parser)]
#[command(name = "postcache", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the posts service (with no configuration: SQLite file ./postcache.db on 127.0.0.1:8080).
    Serve(Box<postcache_server::ServeArgs>),
    /// Print the PostCache CustomResourceDefinition (YAML), e.g. `postcache crd | kubectl apply -f -`.
    Crd,
    /// Load a running PostCache with a read/write mix and report throughput and latency.
    Bench(postcache_bench::BenchArgs),
}

#[allow(clippy::print_stdout)] // printing the CRD is the `crd` command's job
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => {
            let _telemetry =
                postcache_server::init_logging(args.log_format, args.otlp_endpoint.as_deref())?;
            postcache_server::serve(*args).await?;
        }
        Command::Crd => print!("{}", postcache_operator::crd_yaml()),
        Command::Bench(args) => {
            let report = postcache_bench::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", postcache_bench::render(&report));
            }
        }
    }
    Ok(())
}
