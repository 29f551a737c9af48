//! The one `postcache` binary: parses the command line and hands over to the crates that do the
//! work. Each subcommand arrives with the crate behind it.

use clap::Parser;

/// PostCache: a posts service with a three-tier cache and realtime fan-out, and its operator.
#[derive(Debug, Parser)]
#[command(name = "postcache", version, about, long_about = None)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
