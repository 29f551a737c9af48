//! [`Report`]: what a run found, as JSON (`Serialize`) and as a short summary ([`render`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// Details kept per group; the count covers all of them.
pub const DETAILS_KEPT: usize = 20;

/// The guarantees of DESIGN.md §5 that the checker can observe from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Guarantee {
    /// G1 read-your-writes.
    #[serde(rename = "G1")]
    ReadYourWrites,
    /// G2 monotonic reads.
    #[serde(rename = "G2")]
    MonotonicReads,
    /// G3 bounded staleness.
    #[serde(rename = "G3")]
    BoundedStaleness,
    /// G5 realtime completeness and order.
    #[serde(rename = "G5")]
    Realtime,
}

impl Guarantee {
    /// `G1`, `G2`, … with the guarantee's name.
    pub fn label(self) -> &'static str {
        match self {
            Guarantee::ReadYourWrites => "G1 read-your-writes",
            Guarantee::MonotonicReads => "G2 monotonic reads",
            Guarantee::BoundedStaleness => "G3 bounded staleness",
            Guarantee::Realtime => "G5 realtime",
        }
    }
}

/// One observation the guarantees forbid, with what a person needs to find it in logs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// Which guarantee.
    pub guarantee: Guarantee,
    /// The session that saw it (`None` for subscribers).
    pub client: Option<usize>,
    /// The base URL asked.
    pub url: String,
    /// The post concerned.
    pub post: String,
    /// The request or event (`get_token`, `feed_tag`, `event`, …).
    pub op: String,
    /// What the guarantee required.
    pub expected: String,
    /// What was served.
    pub seen: String,
    /// When the request was sent (or the event received), ms since the run started.
    pub invoked_ms: f64,
    /// When it completed, ms since the run started.
    pub completed_ms: f64,
}

/// A count and the first few details.
#[derive(Debug, Clone, Serialize)]
pub struct Findings<T> {
    /// How many.
    pub count: usize,
    /// The first `DETAILS_KEPT`.
    pub first: Vec<T>,
}

impl<T> Default for Findings<T> {
    fn default() -> Self {
        Findings {
            count: 0,
            first: Vec::new(),
        }
    }
}

impl<T> Findings<T> {
    /// Counts `item`, keeping it if there is room.
    pub fn push(&mut self, item: T) {
        self.count += 1;
        if self.first.len() < DETAILS_KEPT {
            self.first.push(item);
        }
    }
}

/// A created post that some URL did not serve in its last written state by the end of settling.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LostWrite {
    /// The post.
    pub post: String,
    /// The URL that served it wrong.
    pub url: String,
    /// What the acknowledged writes require.
    pub expected: String,
    /// What the last read served.
    pub seen: String,
    /// When the last acknowledged write to it completed, ms since the run started.
    pub last_ack_ms: f64,
}

/// Outcomes of one kind of request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpCounts {
    /// Acknowledged writes and answered reads (404 included).
    pub ok: usize,
    /// Writes refused with a 4xx (no effect).
    pub rejected: usize,
    /// 5xx, transport errors and timeouts.
    pub indeterminate: usize,
}

/// How fast acknowledged writes became visible without a token on every URL.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Convergence {
    /// Writes probed.
    pub probes: usize,
    /// Probes that saw the write on every URL before giving up.
    pub converged: usize,
    /// Fraction of probes converged everywhere within 10 ms of the acknowledgement.
    pub within_10ms: f64,
    /// … within 100 ms.
    pub within_100ms: f64,
    /// … within 1 s.
    pub within_1s: f64,
    /// Median time to converge everywhere (upper bound: the answer's arrival), ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Worst, ms.
    pub max_ms: f64,
}

impl Convergence {
    /// Summarizes per-probe latencies (`None`: never converged).
    pub fn from_samples(samples: &[Option<f64>]) -> Convergence {
        let mut done: Vec<f64> = samples.iter().flatten().copied().collect();
        done.sort_by(f64::total_cmp);
        let n = samples.len().max(1) as f64;
        let within = |ms: f64| done.iter().filter(|&&d| d <= ms).count() as f64 / n;
        let at = |q: f64| {
            if done.is_empty() {
                return 0.0;
            }
            done[((done.len() as f64 - 1.0) * q).round() as usize]
        };
        Convergence {
            probes: samples.len(),
            converged: done.len(),
            within_10ms: within(10.0),
            within_100ms: within(100.0),
            within_1s: within(1000.0),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// One realtime subscriber's life.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SubscriberSummary {
    /// Its URL.
    pub url: String,
    /// Events of the run's posts received.
    pub events: usize,
    /// `resync` events received.
    pub resyncs: usize,
    /// Times the stream ended or failed and was reopened with `Last-Event-ID`.
    pub reconnects: usize,
    /// Whether it was connected when the run ended (only then is its completeness checked).
    pub connected_at_end: bool,
}

/// The end-of-run deletion of the run's posts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cleanup {
    /// Posts deleted (or already gone).
    pub deleted: usize,
    /// Posts that could not be deleted (left behind).
    pub failed: usize,
}

/// What a run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Seed of the workload's randomness (repeat a run with `--seed`).
    pub seed: u64,
    /// The run's tag and author-id prefix.
    pub run: String,
    /// The base URLs driven.
    pub urls: Vec<String>,
    /// Sessions.
    pub clients: usize,
    /// Δ of G3, ms.
    pub staleness_bound_ms: u64,
    /// Seconds of workload.
    pub workload_s: f64,
    /// Seconds spent settling (converging) after it.
    pub settle_s: f64,
    /// Requests by kind and outcome. Faults in the deployment are not known to the checker.
    pub ops: BTreeMap<String, OpCounts>,
    /// Posts whose create was acknowledged.
    pub posts_created: usize,
    /// Violations per guarantee.
    pub violations: BTreeMap<Guarantee, Findings<Violation>>,
    /// G4: acknowledged writes some URL did not serve after settling.
    pub lost_writes: Findings<LostWrite>,
    /// Time for probed writes to show on every URL.
    pub convergence: Convergence,
    /// Realtime subscribers, one per URL.
    pub subscribers: Vec<SubscriberSummary>,
    /// Deleting what the run created.
    pub cleanup: Cleanup,
}

impl Report {
    /// Violations of all guarantees (lost writes not included).
    pub fn violations(&self) -> usize {
        self.violations.values().map(|f| f.count).sum()
    }

    /// Lost writes.
    pub fn lost_writes(&self) -> usize {
        self.lost_writes.count
    }

    /// True when nothing was violated or lost.
    pub fn passed(&self) -> bool {
        self.violations() == 0 && self.lost_writes() == 0
    }

    /// Total requests of the workload.
    pub fn total_ops(&self) -> usize {
        self.ops
            .values()
            .map(|c| c.ok + c.rejected + c.indeterminate)
            .sum()
    }

    /// Files `violation` under its guarantee.
    pub fn record(&mut self, violation: Violation) {
        self.violations
            .entry(violation.guarantee)
            .or_default()
            .push(violation);
    }
}

/// The report as a short summary for a person.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "postcache check: run {} (seed {}), {} clients, {:.1} s workload + {:.1} s settle, Δ = {} ms",
        report.run,
        report.seed,
        report.clients,
        report.workload_s,
        report.settle_s,
        report.staleness_bound_ms
    );
    let _ = writeln!(out, "urls: {}", report.urls.join(", "));
    let _ = writeln!(
        out,
        "{} requests, {} posts created (faults in the deployment, if any, are unknown to the checker)",
        report.total_ops(),
        report.posts_created
    );
    let _ = writeln!(
        out,
        "  {:<18}{:>8}{:>10}{:>15}",
        "op", "ok", "rejected", "indeterminate"
    );
    for (name, c) in &report.ops {
        let _ = writeln!(
            out,
            "  {name:<18}{:>8}{:>10}{:>15}",
            c.ok, c.rejected, c.indeterminate
        );
    }
    for guarantee in [
        Guarantee::ReadYourWrites,
        Guarantee::MonotonicReads,
        Guarantee::BoundedStaleness,
        Guarantee::Realtime,
    ] {
        let found = report.violations.get(&guarantee);
        let count = found.map_or(0, |f| f.count);
        let _ = writeln!(out, "{:<22} {count} violations", guarantee.label());
        for v in found
            .map(|f| f.first.as_slice())
            .unwrap_or_default()
            .iter()
            .take(5)
        {
            let _ = writeln!(
                out,
                "    {} c{} {} post {} at {:.1}–{:.1} ms: expected {}, saw {}",
                v.op,
                v.client.map_or("-".to_owned(), |c| c.to_string()),
                v.url,
                v.post,
                v.invoked_ms,
                v.completed_ms,
                v.expected,
                v.seen
            );
        }
    }
    let _ = writeln!(out, "{:<22} {}", "G4 lost writes", report.lost_writes.count);
    for l in report.lost_writes.first.iter().take(5) {
        let _ = writeln!(
            out,
            "    post {} on {}: expected {}, saw {} (last ack at {:.1} ms)",
            l.post, l.url, l.expected, l.seen, l.last_ack_ms
        );
    }
    let c = &report.convergence;
    let _ = writeln!(
        out,
        "convergence on every url: {}/{} probes; within 10 ms {:.1} %, 100 ms {:.1} %, 1 s {:.1} %; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        c.converged,
        c.probes,
        c.within_10ms * 100.0,
        c.within_100ms * 100.0,
        c.within_1s * 100.0,
        c.p50_ms,
        c.p99_ms,
        c.max_ms
    );
    for s in &report.subscribers {
        let _ = writeln!(
            out,
            "subscriber {}: {} events, {} resyncs, {} reconnects{}",
            s.url,
            s.events,
            s.resyncs,
            s.reconnects,
            if s.connected_at_end {
                ""
            } else {
                ", disconnected at the end"
            }
        );
    }
    let _ = writeln!(
        out,
        "cleanup: {} posts deleted, {} left behind",
        report.cleanup.deleted, report.cleanup.failed
    );
    let verdict = if report.passed() { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "{verdict}: {} violations, {} lost writes",
        report.violations(),
        report.lost_writes()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convergence_counts_unconverged_probes_as_slow() {
        let c = Convergence::from_samples(&[Some(5.0), Some(50.0), Some(500.0), None]);
        assert_eq!((c.probes, c.converged), (4, 3));
        assert_eq!(
            (c.within_10ms, c.within_100ms, c.within_1s),
            (0.25, 0.5, 0.75)
        );
        assert_eq!((c.p50_ms, c.max_ms), (50.0, 500.0));
    }

    #[test]
    fn findings_keep_the_first_details_and_count_all() {
        let mut f = Findings::default();
        for i in 0..(DETAILS_KEPT + 5) {
            f.push(i);
        }
        assert_eq!((f.count, f.first.len()), (DETAILS_KEPT + 5, DETAILS_KEPT));
    }
}
