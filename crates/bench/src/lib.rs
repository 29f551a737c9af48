//! `postcache bench`: a closed-loop load generator for a running PostCache.
//!
//! ```text
//! seed N posts ─▶ C workers for D seconds: read (a skewed pick of the seeded ids) or write
//!             ─▶ report: ops/s, p50/p90/p99/max per operation, errors, tiers that served reads
//! ```
//! Reads pick ids with a power-law skew (a few hot posts, a long tail), as a feed's traffic does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Options of `postcache bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the PostCache to load.
    #[arg(
        long,
        env = "POSTCACHE_BENCH_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Bearer token for writes (when the target requires one).
    #[arg(long, env = "POSTCACHE_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Posts created before the measured run.
    #[arg(long, default_value_t = 500)]
    pub posts: usize,
    /// Concurrent workers (each one request at a time).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Length of the measured run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Fraction of operations that are reads (the rest are updates).
    #[arg(long, default_value_t = 0.95)]
    pub read_ratio: f64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Seeding failed: the target is down or refuses writes.
    #[error("seeding posts failed: {0}")]
    Seed(String),
}

/// Latency figures of one operation, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// Completed operations.
    pub count: usize,
    /// Failed operations (transport errors and non-2xx answers, e.g. 429 from the rate limit).
    pub errors: usize,
    /// Operations per second.
    pub per_second: f64,
    /// Median latency.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Worst.
    pub max_us: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Measured seconds.
    pub seconds: f64,
    /// Workers.
    pub concurrency: usize,
    /// Reads (`GET /v1/posts/{id}`).
    pub read: OpReport,
    /// Writes (`PATCH /v1/posts/{id}`).
    pub write: OpReport,
    /// Reads by the tier that served them (`X-PostCache-Tier`).
    pub read_tiers: BTreeMap<String, usize>,
}

#[derive(Default)]
struct Samples {
    read: Vec<u32>,
    write: Vec<u32>,
    read_errors: usize,
    write_errors: usize,
    tiers: BTreeMap<String, usize>,
}

/// Seeds, runs and reports.
///
/// # Errors
/// When seeding fails.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| BenchError::Seed(e.to_string()))?;
    let ids = Arc::new(seed(&client, args).await?);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (client, ids, args) = (client.clone(), Arc::clone(&ids), args.clone());
            tokio::spawn(async move { work(&client, &ids, &args, deadline, w as u64 + 1).await })
        })
        .collect();
    let mut all = Samples::default();
    for worker in workers {
        if let Ok(s) = worker.await {
            all.read.extend(s.read);
            all.write.extend(s.write);
            all.read_errors += s.read_errors;
            all.write_errors += s.write_errors;
            for (tier, n) in s.tiers {
                *all.tiers.entry(tier).or_insert(0) += n;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        seconds,
        concurrency: args.concurrency,
        read: summarize(all.read, all.read_errors, seconds),
        write: summarize(all.write, all.write_errors, seconds),
        read_tiers: all.tiers,
    })
}

async fn seed(client: &reqwest::Client, args: &BenchArgs) -> Result<Vec<String>, BenchError> {
    let mut ids = Vec::with_capacity(args.posts);
    for i in 0..args.posts {
        let body = serde_json::json!({
            "author_id": format!("bench{}", i % 50),
            "title": format!("benchmark post {i}"),
            "body": "x".repeat(400),
            "tags": [format!("t{}", i % 20)],
        });
        let mut request = client.post(format!("{}/v1/posts", args.url)).json(&body);
        if let Some(token) = &args.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| BenchError::Seed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(BenchError::Seed(format!(
                "POST /v1/posts answered {}",
                response.status()
            )));
        }
        let post: serde_json::Value = response
            .json()
            .await
            .map_err(|e| BenchError::Seed(e.to_string()))?;
        ids.push(post["id"].as_str().unwrap_or_default().to_owned());
    }
    Ok(ids)
}

async fn work(
    client: &reqwest::Client,
    ids: &[String],
    args: &BenchArgs,
    deadline: Instant,
    seed: u64,
) -> Samples {
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut samples = Samples::default();
    while Instant::now() < deadline && !ids.is_empty() {
        // Power-law pick: squaring a uniform draw favours low indexes (the hot posts).
        let id = &ids[((rng.unit() * rng.unit()) * ids.len() as f64) as usize % ids.len()];
        let started = Instant::now();
        if rng.unit() < args.read_ratio {
            match client
                .get(format!("{}/v1/posts/{id}", args.url))
                .send()
                .await
            {
                Ok(response) if response.status().is_success() => {
                    let tier = response
                        .headers()
                        .get("x-postcache-tier")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("?");
                    *samples.tiers.entry(tier.to_owned()).or_insert(0) += 1;
                    let _ = response.bytes().await;
                    samples.read.push(micros(started));
                }
                _ => samples.read_errors += 1,
            }
        } else {
            let body = serde_json::json!({"body": format!("edited at {:?}", started.elapsed())});
            let mut request = client
                .patch(format!("{}/v1/posts/{id}", args.url))
                .json(&body);
            if let Some(token) = &args.token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let _ = response.bytes().await;
                    samples.write.push(micros(started));
                }
                _ => samples.write_errors += 1,
            }
        }
    }
    samples
}

fn micros(started: Instant) -> u32 {
    u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX)
}

fn summarize(mut latencies: Vec<u32>, errors: usize, seconds: f64) -> OpReport {
    latencies.sort_unstable();
    let at = |q: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        u64::from(latencies[index])
    };
    OpReport {
        count: latencies.len(),
        errors,
        per_second: latencies.len() as f64 / seconds.max(f64::EPSILON),
        p50_us: at(0.5),
        p90_us: at(0.9),
        p99_us: at(0.99),
        max_us: at(1.0),
    }
}

/// The report as a short table.
pub fn render(report: &Report) -> String {
    let mut out = format!("{:.1} s, {} workers\n", report.seconds, report.concurrency);
    out.push_str("op     count    ops/s     p50 µs   p90 µs   p99 µs   max µs  errors\n");
    for (name, op) in [("read", &report.read), ("write", &report.write)] {
        out.push_str(&format!(
            "{name:<6}{:>6}{:>9.0}{:>11}{:>9}{:>9}{:>9}{:>8}\n",
            op.count, op.per_second, op.p50_us, op.p90_us, op.p99_us, op.max_us, op.errors
        ));
    }
    let tiers: Vec<String> = report
        .read_tiers
        .iter()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect();
    out.push_str(&format!("reads served by tier: {}\n", tiers.join(", ")));
    out
}

/// A small, fast PRNG: the load's randomness needs no cryptographic quality.
struct XorShift(u64);

impl XorShift {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let report = summarize((1..=100).rev().collect(), 2, 2.0);
        assert_eq!((report.count, report.errors), (100, 2));
        assert_eq!(
            (report.p50_us, report.p90_us, report.p99_us, report.max_us),
            (51, 90, 99, 100)
        );
        assert!((report.per_second - 50.0).abs() < 1e-9);
    }

    #[test]
    fn the_skewed_pick_stays_in_range_and_favours_hot_ids() {
        let mut rng = XorShift(7);
        let mut hits = [0usize; 10];
        for _ in 0..10_000 {
            let i = ((rng.unit() * rng.unit()) * 10.0) as usize % 10;
            hits[i] += 1;
        }
        assert!(hits[0] > hits[9] * 3, "{hits:?}");
    }
}
