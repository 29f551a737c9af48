//! What a run reports, as JSON (`--json`) or as a table ([`render`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

pub use crate::server::ServerUsage;
use crate::stats::OpStats;
pub use crate::stats::{Latency, Point};

/// Latency figures of one operation, in microseconds.
pub type OpReport = Latency;

/// The report of either mode.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Report {
    /// `--mode http`.
    Http(Box<HttpReport>),
    /// `--mode ws|sse|socketio`.
    Fanout(Box<FanoutReport>),
}

/// Each operation of the HTTP mix, in total and over time.
#[derive(Debug, Clone, Serialize)]
pub struct Ops {
    /// `GET /v1/posts/{id}`.
    pub read: Latency,
    /// `PATCH /v1/posts/{id}`.
    pub write: Latency,
    /// `GET /v1/posts?limit=20`.
    pub feed: Latency,
    /// Per operation, one point per timeline bucket.
    pub timeline: BTreeMap<&'static str, Vec<Point>>,
}

impl Ops {
    pub(crate) fn of(read: &OpStats, write: &OpStats, feed: &OpStats, seconds: f64) -> Ops {
        let timeline = [("read", read), ("write", write), ("feed", feed)]
            .into_iter()
            .filter(|(_, s)| s.count() > 0)
            .map(|(name, s)| (name, s.timeline()))
            .collect();
        Ops {
            read: read.summary(seconds),
            write: write.summary(seconds),
            feed: feed.summary(seconds),
            timeline,
        }
    }
}

/// `--mode http`.
#[derive(Debug, Clone, Serialize)]
pub struct HttpReport {
    /// Always `http`.
    pub mode: crate::args::Mode,
    /// The loaded server.
    pub url: String,
    /// Measured seconds.
    pub seconds: f64,
    /// Connections.
    pub concurrency: usize,
    /// Requests per second asked for in open loop (`None`: closed loop).
    pub open_loop_rate: Option<f64>,
    /// How posts were picked.
    pub keys: String,
    /// Posts seeded.
    pub posts: usize,
    /// The operations.
    #[serde(flatten)]
    pub ops: Ops,
    /// Reads by the tier that served them (`X-PostCache-Tier`).
    pub read_tiers: BTreeMap<String, u64>,
    /// The server's CPU and memory (with `--pid`).
    pub server: Option<ServerUsage>,
    /// The same load against `--compare-url`.
    pub compare: Option<CompareReport>,
}

/// The identical load against another server.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// The other server.
    pub url: String,
    /// Its operations.
    #[serde(flatten)]
    pub ops: Ops,
    /// Its CPU and memory (with `--compare-pid`).
    pub server: Option<ServerUsage>,
    /// The loaded server's figures over the other's.
    pub ratio: Ratio,
}

/// Ours over theirs: above 1 means more requests per second, or a longer tail.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// 2xx reads per second.
    pub read_per_second: f64,
    /// 99th percentile of reads.
    pub read_p99: f64,
}

impl Ratio {
    pub(crate) fn of(ours: &Ops, theirs: &Ops) -> Ratio {
        let over = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        Ratio {
            read_per_second: over(ours.read.per_second, theirs.read.per_second),
            read_p99: over(ours.read.p99_us as f64, theirs.read.p99_us as f64),
        }
    }
}

/// `--mode ws|sse|socketio`.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// The transport.
    pub mode: crate::args::Mode,
    /// The server.
    pub url: String,
    /// Publishing seconds.
    pub seconds: f64,
    /// Subscribers asked for.
    pub subscribers: usize,
    /// Subscribers that connected.
    pub connected: usize,
    /// Subscribers that could not connect.
    pub connect_errors: usize,
    /// Posts per second asked for.
    pub events_per_second: f64,
    /// Posts published (2xx).
    pub published: u64,
    /// Publishes that failed.
    pub publish_errors: u64,
    /// Events received by all subscribers.
    pub deliveries: u64,
    /// `published × connected`: what a lossless fan-out delivers.
    pub expected_deliveries: u64,
    /// Deliveries per second of publishing.
    pub deliveries_per_second: f64,
    /// Publish (the time the publisher put in the post) → received, per delivery.
    pub latency: Latency,
    /// Deliveries and latency over time.
    pub timeline: Vec<Point>,
    /// The server's CPU and memory (with `--pid`).
    pub server: Option<FanoutServer>,
}

/// The server's cost of the fan-out.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutServer {
    /// CPU and memory while publishing and delivering.
    #[serde(flatten)]
    pub usage: ServerUsage,
    /// Deliveries per CPU second of the server.
    pub deliveries_per_cpu_second: f64,
    /// RSS before the subscribers connected.
    pub rss_idle_bytes: u64,
    /// (RSS with every subscriber connected − idle RSS) / connected.
    pub rss_per_connection_bytes: f64,
    /// What one more connection costs: RSS growth while the second half of the subscribers
    /// connected / their number (the first half's handshakes have warmed the allocator).
    pub rss_marginal_per_connection_bytes: f64,
}

/// The report as a short table.
pub fn render(report: &Report) -> String {
    match report {
        Report::Http(r) => render_http(r),
        Report::Fanout(r) => render_fanout(r),
    }
}

fn ops_table(out: &mut String, ops: &Ops) {
    out.push_str(
        "op        count      ok/s   mean µs   p50 µs   p90 µs   p99 µs p99.9 µs   max µs  errors\n",
    );
    for (name, op) in [
        ("read", &ops.read),
        ("write", &ops.write),
        ("feed", &ops.feed),
    ] {
        if op.count + op.errors == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "{name:<6}{:>9}{:>10.0}{:>10.1}{:>9}{:>9}{:>9}{:>9}{:>9}{:>8}",
            op.count,
            op.per_second,
            op.mean_us,
            op.p50_us,
            op.p90_us,
            op.p99_us,
            op.p999_us,
            op.max_us,
            op.errors
        );
    }
}

/// The server's CPU and memory; CPU per answer only when there were 2xx answers to divide by.
fn server_line(out: &mut String, server: Option<&ServerUsage>, done: u64) {
    let Some(s) = server else {
        return;
    };
    let per_answer = if done == 0 {
        "no 2xx answer to divide by".to_owned()
    } else {
        format!(
            "{:.1} µs CPU per 2xx answer",
            s.cpu_seconds * 1e6 / done as f64
        )
    };
    let _ = writeln!(
        out,
        "server pid {}: {:.2} CPU s ({:.2} cores), {per_answer}, RSS {:.1} MiB",
        s.pid,
        s.cpu_seconds,
        s.cores,
        s.rss_bytes as f64 / 1048576.0
    );
}

fn render_http(r: &HttpReport) -> String {
    let mut out = String::new();
    let mode = match r.open_loop_rate {
        Some(rate) => format!("open loop at {rate:.0} req/s"),
        None => "closed loop".into(),
    };
    let _ = writeln!(
        out,
        "{} · {:.1} s · {} connections · {mode} · keys {} over {} posts",
        r.url, r.seconds, r.concurrency, r.keys, r.posts
    );
    ops_table(&mut out, &r.ops);
    let done = r.ops.read.count + r.ops.write.count + r.ops.feed.count;
    server_line(&mut out, r.server.as_ref(), done);
    let tiers: Vec<String> = r
        .read_tiers
        .iter()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect();
    let _ = writeln!(out, "reads served by tier: {}", tiers.join(", "));
    if let Some(c) = &r.compare {
        let _ = writeln!(out, "\nthe same load against {}:", c.url);
        ops_table(&mut out, &c.ops);
        let done = c.ops.read.count + c.ops.write.count + c.ops.feed.count;
        server_line(&mut out, c.server.as_ref(), done);
        let _ = writeln!(
            out,
            "\nratio (this / that): reads per second {:.2}×, read p99 {:.2}×",
            c.ratio.read_per_second, c.ratio.read_p99
        );
    }
    out
}

fn render_fanout(r: &FanoutReport) -> String {
    let mut out = String::new();
    let mode = serde_json::to_value(r.mode).unwrap_or_default();
    let _ = writeln!(
        out,
        "{} · {} · {} of {} subscribers connected · {:.0} events/s for {:.1} s",
        r.url,
        mode.as_str().unwrap_or("?"),
        r.connected,
        r.subscribers,
        r.events_per_second,
        r.seconds
    );
    let _ = writeln!(
        out,
        "published {} ({} failed) · delivered {} of {} · {:.0} deliveries/s",
        r.published, r.publish_errors, r.deliveries, r.expected_deliveries, r.deliveries_per_second
    );
    let l = &r.latency;
    let _ = writeln!(
        out,
        "delivery latency µs: mean {:.0} · p50 {} · p90 {} · p99 {} · p99.9 {} · max {}",
        l.mean_us, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
    );
    if let Some(s) = &r.server {
        let _ = writeln!(
            out,
            "server pid {}: {:.2} CPU s ({:.2} cores) · {:.0} deliveries per CPU second · RSS {:.1} MiB, {:.1} KiB per connection ({:.1} KiB each of the second half)",
            s.usage.pid,
            s.usage.cpu_seconds,
            s.usage.cores,
            s.deliveries_per_cpu_second,
            s.usage.rss_bytes as f64 / 1048576.0,
            s.rss_per_connection_bytes / 1024.0,
            s.rss_marginal_per_connection_bytes / 1024.0
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_answer_is_not_made_up_when_nothing_answered_2xx() {
        let usage = ServerUsage {
            pid: 7,
            cpu_seconds: 2.0,
            cores: 0.5,
            rss_bytes: 1 << 20,
        };
        let mut out = String::new();
        server_line(&mut out, Some(&usage), 0);
        assert!(out.contains("no 2xx answer to divide by"), "{out}");
        assert!(!out.contains("µs CPU per"), "{out}");
        let mut out = String::new();
        server_line(&mut out, Some(&usage), 200_000);
        assert!(out.contains("10.0 µs CPU per 2xx answer"), "{out}");
    }
}
