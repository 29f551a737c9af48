//! Per-tier hit and miss counters: `/v1/cache/stats` reads them, and every count also goes to the
//! `metrics` recorder as [`CACHE_REQUESTS`] (described with the other metrics by the server).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;

/// Metric name: cache lookups by `tier` (`l1`, `l2`, `l3`) and `result` (`hit`, `miss`).
pub const CACHE_REQUESTS: &str = "postcache_cache_requests_total";

/// Metric name: 1 while a component (`redis`, `replica`, `primary`, `eventlog`) is degraded.
pub const DEGRADED: &str = "postcache_degraded";

/// Sets the degraded flag of `component`.
pub fn set_degraded(component: &'static str, degraded: bool) {
    metrics::gauge!(DEGRADED, "component" => component).set(if degraded { 1.0 } else { 0.0 });
}

/// Metric name: commit → applied in this pod, for changes other pods made.
pub const INVALIDATION_LAG: &str = "postcache_invalidation_lag_seconds";

/// Metric name: time of each L3 call by `role` (`primary`, `replica`).
pub const DB_QUERY_DURATION: &str = "postcache_db_query_duration_seconds";

/// Runs one L3 call and records its duration under `role`.
pub(crate) async fn timed<T>(role: &'static str, call: impl std::future::Future<Output = T>) -> T {
    let start = std::time::Instant::now();
    let out = call.await;
    metrics::histogram!(DB_QUERY_DURATION, "role" => role).record(start.elapsed().as_secs_f64());
    out
}

/// Hits and misses of one tier.
#[derive(Debug)]
pub struct TierCounts {
    tier: &'static str,
    hits: AtomicU64,
    misses: AtomicU64,
    /// The recorder's counters, looked up at the first hit and miss (every L1 hit counts: a
    /// lookup by name and labels each time cost more than the rest of the count).
    hit_counter: OnceLock<Counter>,
    miss_counter: OnceLock<Counter>,
}

impl TierCounts {
    const fn new(tier: &'static str) -> TierCounts {
        TierCounts {
            tier,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            hit_counter: OnceLock::new(),
            miss_counter: OnceLock::new(),
        }
    }

    /// Counts one hit.
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.counter(&self.hit_counter, "hit").increment(1);
    }

    /// Counts one miss.
    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.counter(&self.miss_counter, "miss").increment(1);
    }

    /// The recorder's counter of `result`. Counting starts with requests, after the server
    /// installed its recorder.
    fn counter<'a>(&self, cell: &'a OnceLock<Counter>, result: &'static str) -> &'a Counter {
        cell.get_or_init(
            || metrics::counter!(CACHE_REQUESTS, "tier" => self.tier, "result" => result),
        )
    }

    /// (hits, misses) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

/// The counters of every tier this pod has.
#[derive(Debug)]
pub struct TierStats {
    /// In-process cache.
    pub l1: TierCounts,
    /// Redis (stays at zero without it).
    pub l2: TierCounts,
    /// The store (a miss here is a lookup of an id that does not exist).
    pub l3: TierCounts,
}

impl Default for TierStats {
    /// Also creates every `tier`/`result` series at zero, so that ratios over them exist before the
    /// first hit (a cache that never hits must show 0 %, not "no data").
    fn default() -> Self {
        let stats = TierStats {
            l1: TierCounts::new("l1"),
            l2: TierCounts::new("l2"),
            l3: TierCounts::new("l3"),
        };
        for counts in [&stats.l1, &stats.l2, &stats.l3] {
            for result in ["hit", "miss"] {
                metrics::counter!(CACHE_REQUESTS, "tier" => counts.tier, "result" => result)
                    .increment(0);
            }
        }
        stats
    }
}
