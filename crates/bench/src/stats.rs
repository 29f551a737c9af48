//! Latency histograms (HdrHistogram, microseconds) for a whole run and per timeline bucket.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency a histogram holds (larger values are clamped to it): one minute.
const MAX_MICROS: u64 = 60_000_000;
/// Timelines have at most this many buckets; long runs get wider ones.
const MAX_BUCKETS: usize = 120;

/// Width of a timeline bucket for a run of `seconds`.
pub(crate) fn bucket_seconds(seconds: f64) -> f64 {
    (seconds / MAX_BUCKETS as f64).ceil().max(1.0)
}

fn histogram(significant_digits: u8) -> Histogram<u64> {
    #[allow(clippy::expect_used)] // constant bounds that HdrHistogram accepts
    Histogram::new_with_bounds(1, MAX_MICROS, significant_digits).expect("valid histogram bounds")
}

/// One operation's latencies and errors, in total and over time.
pub(crate) struct OpStats {
    total: Histogram<u64>,
    errors: u64,
    bucket: f64,
    timeline: Vec<Option<Histogram<u64>>>,
    timeline_errors: Vec<u64>,
}

impl OpStats {
    pub(crate) fn new(seconds: f64) -> OpStats {
        OpStats {
            total: histogram(3),
            errors: 0,
            bucket: bucket_seconds(seconds),
            timeline: Vec::new(),
            timeline_errors: Vec::new(),
        }
    }

    fn slot(&mut self, at_seconds: f64) -> usize {
        let i = ((at_seconds.max(0.0) / self.bucket) as usize).min(MAX_BUCKETS * 2);
        if self.timeline.len() <= i {
            self.timeline.resize_with(i + 1, || None);
            self.timeline_errors.resize(i + 1, 0);
        }
        i
    }

    /// A 2xx answer after `micros`, sent (or due) `at_seconds` into the run.
    pub(crate) fn record(&mut self, at_seconds: f64, micros: u64) {
        let micros = micros.clamp(1, MAX_MICROS);
        self.total.saturating_record(micros);
        let i = self.slot(at_seconds);
        self.timeline[i]
            .get_or_insert_with(|| histogram(2))
            .saturating_record(micros);
    }

    /// A failure (transport error or non-2xx) `at_seconds` into the run.
    pub(crate) fn error(&mut self, at_seconds: f64) {
        self.errors += 1;
        let i = self.slot(at_seconds);
        self.timeline_errors[i] += 1;
    }

    /// Adds `other` (another shard of the same operation).
    pub(crate) fn merge(&mut self, other: &OpStats) {
        let _ = self.total.add(&other.total);
        self.errors += other.errors;
        for (i, h) in other.timeline.iter().enumerate() {
            let slot = self.slot(i as f64 * self.bucket);
            if let Some(h) = h {
                let _ = self.timeline[slot]
                    .get_or_insert_with(|| histogram(2))
                    .add(h);
            }
            self.timeline_errors[slot] += other.timeline_errors[i];
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.total.len()
    }

    pub(crate) fn summary(&self, seconds: f64) -> Latency {
        Latency::of(&self.total, self.errors, seconds)
    }

    /// One point per bucket that saw anything.
    pub(crate) fn timeline(&self) -> Vec<Point> {
        self.timeline
            .iter()
            .zip(&self.timeline_errors)
            .enumerate()
            .filter(|(_, (h, e))| h.is_some() || **e > 0)
            .map(|(i, (h, errors))| {
                let (ok, p50, p99, p999) = h.as_ref().map_or((0, 0, 0, 0), |h| {
                    (
                        h.len(),
                        h.value_at_quantile(0.5),
                        h.value_at_quantile(0.99),
                        h.value_at_quantile(0.999),
                    )
                });
                Point {
                    t_s: i as f64 * self.bucket,
                    ok_per_second: ok as f64 / self.bucket,
                    errors: *errors,
                    p50_us: p50,
                    p99_us: p99,
                    p999_us: p999,
                }
            })
            .collect()
    }
}

/// Counts and latency percentiles of one operation (microseconds).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Completed with a 2xx answer.
    pub count: u64,
    /// Failed: transport errors and non-2xx answers (e.g. 429 from a rate limit).
    pub errors: u64,
    /// 2xx answers per second of the run.
    pub per_second: f64,
    /// Mean latency.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Worst.
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>, errors: u64, seconds: f64) -> Latency {
        if h.is_empty() {
            return Latency {
                errors,
                ..Latency::default()
            };
        }
        Latency {
            count: h.len(),
            errors,
            per_second: h.len() as f64 / seconds.max(f64::EPSILON),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// One timeline bucket.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Start of the bucket, seconds into the run.
    pub t_s: f64,
    /// 2xx answers (fan-out: deliveries) per second in the bucket.
    pub ok_per_second: f64,
    /// Failures in the bucket.
    pub errors: u64,
    /// Median latency in the bucket.
    pub p50_us: u64,
    /// 99th percentile in the bucket.
    pub p99_us: u64,
    /// 99.9th percentile in the bucket.
    pub p999_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rate_come_from_the_samples() {
        let mut stats = OpStats::new(2.0);
        for micros in 1..=1000 {
            stats.record(0.5, micros);
        }
        stats.error(1.5);
        let summary = stats.summary(2.0);
        assert_eq!((summary.count, summary.errors), (1000, 1));
        assert!((summary.per_second - 500.0).abs() < 1e-9);
        assert!((499..=501).contains(&summary.p50_us), "{summary:?}");
        assert!((989..=991).contains(&summary.p99_us), "{summary:?}");
        assert_eq!(summary.max_us, 1000);
        let timeline = stats.timeline();
        assert_eq!(timeline.len(), 2, "{timeline:?}");
        assert_eq!((timeline[0].ok_per_second, timeline[0].errors), (1000.0, 0));
        assert_eq!((timeline[1].ok_per_second, timeline[1].errors), (0.0, 1));
    }

    #[test]
    fn shards_merge_into_one() {
        let (mut a, mut b) = (OpStats::new(1.0), OpStats::new(1.0));
        a.record(0.1, 100);
        b.record(0.2, 300);
        b.error(0.3);
        a.merge(&b);
        let summary = a.summary(1.0);
        assert_eq!((summary.count, summary.errors, summary.max_us), (2, 1, 300));
        assert_eq!(a.timeline().len(), 1);
    }

    #[test]
    fn long_runs_get_wider_buckets() {
        assert_eq!(bucket_seconds(10.0), 1.0);
        assert_eq!(bucket_seconds(300.0), 3.0);
    }
}
