//! [`CheckArgs`], the command line of `postcache check`, and [`Plan`], the same options parsed into
//! real types: what a run needs, whether it comes from the command line or from a test harness.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::CheckError;

/// Options of `postcache check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Base URL of the deployment (a load balancer) or of each pod; repeat the flag or give a comma
    /// list. Every operation goes to one of them, chosen at random.
    #[arg(
        long = "url",
        env = "POSTCACHE_CHECK_URLS",
        value_delimiter = ',',
        required = true
    )]
    pub urls: Vec<String>,
    /// Bearer token for writes, when the deployment requires one. Never printed.
    #[arg(long, env = "POSTCACHE_CHECK_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Length of the workload, in seconds (the settle period comes on top).
    #[arg(long, env = "POSTCACHE_CHECK_DURATION", default_value_t = 30.0)]
    pub duration: f64,
    /// Concurrent clients; each is one session holding its last consistency token.
    #[arg(long, env = "POSTCACHE_CHECK_CLIENTS", default_value_t = 6)]
    pub clients: usize,
    /// Cap on operations per second over all clients; 0 runs each client closed-loop.
    #[arg(long, env = "POSTCACHE_CHECK_RATE", default_value_t = 0.0)]
    pub rate: f64,
    /// Δ of G3: a read invoked more than this after a write was acknowledged must reflect it.
    #[arg(
        long,
        env = "POSTCACHE_CHECK_STALENESS_BOUND_MS",
        default_value_t = 1000
    )]
    pub staleness_bound_ms: u64,
    /// Seed of the workload's randomness (printed in the report, so a run can be repeated);
    /// drawn from the clock when absent.
    #[arg(long, env = "POSTCACHE_CHECK_SEED")]
    pub seed: Option<u64>,
    /// Print the report as JSON instead of a summary.
    #[arg(long, env = "POSTCACHE_CHECK_JSON")]
    pub json: bool,
    /// How long to wait after the workload for every pod and subscriber to converge.
    #[arg(long, env = "POSTCACHE_CHECK_SETTLE_MS", default_value_t = 5000)]
    pub settle_ms: u64,
    /// Deadline of one HTTP request; a write past it counts as indeterminate.
    #[arg(
        long,
        env = "POSTCACHE_CHECK_REQUEST_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub request_timeout_ms: u64,
    /// Probe the convergence of every N-th acknowledged write on every URL (0: no probes).
    #[arg(long, env = "POSTCACHE_CHECK_PROBE_EVERY", default_value_t = 5)]
    pub probe_every: u64,
}

/// A run's options in real types. Build one with [`Plan::new`] (a harness) or
/// [`Plan::from_args`] (the command line), then adjust the public fields.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Base URLs, without a trailing slash.
    pub urls: Vec<String>,
    /// Bearer token for writes.
    pub api_token: Option<String>,
    /// Concurrent sessions.
    pub clients: usize,
    /// Cap on operations per second over all clients (`None`: closed loop).
    pub rate: Option<f64>,
    /// Δ of G3.
    pub staleness_bound: Duration,
    /// Seed of the workload's randomness.
    pub seed: u64,
    /// Longest wait for convergence after the workload.
    pub settle: Duration,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// Probe every N-th acknowledged write (0: never).
    pub probe_every: u64,
}

impl Plan {
    /// The defaults of the command line, against `urls`, with a seed from the clock.
    ///
    /// # Errors
    /// [`CheckError::Config`] when there is no URL or one is not `http(s)://`.
    pub fn new(urls: Vec<String>) -> Result<Plan, CheckError> {
        Ok(Plan {
            urls: normalize_urls(urls)?,
            api_token: None,
            clients: 6,
            rate: None,
            staleness_bound: Duration::from_millis(1000),
            seed: seed_from_clock(),
            settle: Duration::from_millis(5000),
            request_timeout: Duration::from_millis(2000),
            probe_every: 5,
        })
    }

    /// Parses the command line's options.
    ///
    /// # Errors
    /// [`CheckError::Config`] for bad URLs, zero clients or a non-positive duration.
    pub fn from_args(args: &CheckArgs) -> Result<Plan, CheckError> {
        if args.clients == 0 {
            return Err(CheckError::Config("--clients must be at least 1".into()));
        }
        if !(args.rate.is_finite() && args.rate >= 0.0) {
            return Err(CheckError::Config("--rate must be 0 or positive".into()));
        }
        Ok(Plan {
            urls: normalize_urls(args.urls.clone())?,
            api_token: args.api_token.clone().filter(|t| !t.is_empty()),
            clients: args.clients,
            rate: (args.rate > 0.0).then_some(args.rate),
            staleness_bound: Duration::from_millis(args.staleness_bound_ms),
            seed: args.seed.unwrap_or_else(seed_from_clock),
            settle: Duration::from_millis(args.settle_ms),
            request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
            probe_every: args.probe_every,
        })
    }
}

/// The workload's length from `--duration`.
///
/// # Errors
/// [`CheckError::Config`] unless it is a positive number of seconds.
pub fn duration_of(args: &CheckArgs) -> Result<Duration, CheckError> {
    Duration::try_from_secs_f64(args.duration)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| CheckError::Config("--duration must be a positive number of seconds".into()))
}

fn normalize_urls(urls: Vec<String>) -> Result<Vec<String>, CheckError> {
    let urls: Vec<String> = urls
        .into_iter()
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(CheckError::Config("give at least one --url".into()));
    }
    if let Some(bad) = urls
        .iter()
        .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
    {
        return Err(CheckError::Config(format!(
            "{bad} is not a base URL (http://host:port)"
        )));
    }
    Ok(urls)
}

fn seed_from_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_trimmed_and_must_be_http() {
        let plan = Plan::new(vec![" http://a:1/ ".into(), "https://b".into()]).unwrap();
        assert_eq!(plan.urls, ["http://a:1", "https://b"]);
        assert!(Plan::new(vec!["a:1".into()]).is_err());
        assert!(Plan::new(vec![]).is_err());
    }
}
