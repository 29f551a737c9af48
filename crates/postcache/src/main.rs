//! The one `postcache` binary: parses the command line and hands over to the crates that do the
//! work. Each subcommand arrives with the crate behind it.

use clap::{Parser, Subcommand};

/// mimalloc, not the C library's allocator: the request path allocates small, short-lived
/// buffers on every request, where glibc's malloc took 16 % of a core and musl's (the image's
/// static binary) is slower still. Measured in the README's Performance section.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// PostCache: a posts service with a three-tier cache and realtime fan-out, and its operator.
#[derive(Debug, Parser)]
#[command(name = "postcache", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: postcache_server::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the posts service (with no configuration: SQLite file ./postcache.db on 127.0.0.1:8080).
    Serve(Box<postcache_server::ServeArgs>),
    /// Run the Kubernetes operator (in-cluster config, or KUBECONFIG): reconciles PostCache objects.
    Operator(postcache_operator::OperatorArgs),
    /// Print the PostCache CustomResourceDefinition (YAML), e.g. `postcache crd | kubectl apply -f -`.
    Crd,
    /// Print the API's OpenAPI 3.1 document (JSON), as a running service serves `/openapi.json`.
    Openapi,
    /// Load a running PostCache (HTTP mix, or realtime fan-out) and report throughput and latency.
    Bench(postcache_bench::BenchArgs),
    /// Check a running deployment's freshness guarantees (G1–G5) from outside: drive a workload,
    /// report violations, lost writes and convergence; exit status 1 on any violation.
    Check(postcache_check::CheckArgs),
    /// GET a URL and exit 0 on a 2xx answer, 1 otherwise: a health check for images without a
    /// shell or curl (`helm test`, a container engine's HEALTHCHECK).
    Probe(ProbeArgs),
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// What to GET, e.g. `http://127.0.0.1:8080/readyz`.
    url: String,
    /// Give up on one attempt after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Keep trying, once a second, for up to this many milliseconds (a Service's endpoints may
    /// take a moment to reach every node).
    #[arg(long, default_value_t = 0)]
    retry_for_ms: u64,
}

/// [`Command::Probe`]: `Ok(())` on a 2xx answer within the deadline.
async fn probe(args: &ProbeArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(args.timeout_ms))
        .build()?;
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(args.retry_for_ms);
    loop {
        let failure = match client.get(&args.url).send().await {
            Ok(reply) if reply.status().is_success() => return Ok(()),
            Ok(reply) => anyhow::anyhow!("{} answered {}", args.url, reply.status()),
            Err(e) => anyhow::Error::new(e),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(failure);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[allow(clippy::print_stdout)] // printing the CRD is the `crd` command's job
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log_format = cli.global.log_format;
    match cli.command {
        Command::Serve(args) => {
            let _telemetry = postcache_server::init_logging(
                log_format,
                args.telemetry.otlp_endpoint.as_deref(),
                args.telemetry.otlp_ca_file.as_deref(),
            )?;
            postcache_server::serve(*args).await?;
        }
        Command::Operator(args) => {
            let _telemetry = postcache_server::init_logging(log_format, None, None)?;
            postcache_operator::run(
                args,
                postcache_operator::SCRIPTS,
                postcache_server::shutdown_signal(),
            )
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        }
        Command::Crd => print!("{}", postcache_operator::crd_yaml()),
        Command::Openapi => println!(
            "{}",
            serde_json::to_string_pretty(&postcache_server::openapi_document())?
        ),
        Command::Bench(args) => {
            let report = postcache_bench::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", postcache_bench::render(&report));
            }
        }
        Command::Probe(args) => probe(&args).await?,
        Command::Check(args) => {
            let report = postcache_check::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", postcache_check::render(&report));
            }
            if !report.passed() {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// clap's own consistency checks of every command and option (conflicting names, bad
    /// defaults, env twins): a mistake fails here, not at a user's first run.
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
