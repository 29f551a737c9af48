//! After the workload: [`Stopped::check`] waits up to the settle period for every URL to serve the
//! last acknowledged state of every post (else a lost write, G4) and for every subscriber to get
//! every event (else G5), then checks the history, deletes the run's posts and builds the
//! [`Report`].
//!
//! ```text
//! stop sessions ─▶ settle: final reads on every URL ∥ wait for missing events ∥ probes finish
//!               ─▶ stop subscribers ─▶ verify (G1 G2 G3 G5) ─▶ delete the run's posts ─▶ Report
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::api::Api;
use crate::events::StreamLog;
use crate::history::{Expected, Feed, History, OpKind, Outcome};
use crate::probe::Probed;
use crate::report::{
    Cleanup, Convergence, Findings, LostWrite, OpCounts, Report, SubscriberSummary,
};
use crate::verify;
use crate::workload::Workload;

/// Requests in flight per URL while settling and cleaning up.
const PARALLEL: usize = 8;
/// Pause between two passes over what has not converged yet.
const PASS_PAUSE: Duration = Duration::from_millis(50);

/// A workload whose sessions have stopped; its subscribers and probes still run until
/// [`Stopped::check`] has settled.
pub struct Stopped {
    workload: Workload,
    history: History,
    workload_s: f64,
}

impl Workload {
    /// Stops the sessions (each finishes its request in flight). A harness heals its faults after
    /// this, then calls [`Stopped::check`].
    pub async fn stop(mut self) -> Stopped {
        let history = self.stop_sessions().await;
        let workload_s = self.started.elapsed().as_secs_f64();
        Stopped {
            workload: self,
            history,
            workload_s,
        }
    }
}

/// A created post's last state, as its writes allow it.
#[derive(Debug, Clone)]
struct Final {
    post: String,
    acked: Expected,
    /// Updates that may have happened unacknowledged (each may raise the version by one).
    unknown_updates: i64,
    /// A delete may have happened unacknowledged.
    maybe_deleted: bool,
    last_ack_ms: f64,
}

impl Final {
    fn allows(&self, outcome: &Outcome) -> bool {
        match (self.acked, outcome) {
            (Expected::Gone, Outcome::Absent) => true,
            (Expected::AtLeast(v), Outcome::Found { version }) => {
                (v..=v + self.unknown_updates).contains(version)
            }
            (Expected::AtLeast(_), Outcome::Absent) => self.maybe_deleted,
            _ => false,
        }
    }

    fn describe(&self) -> String {
        let base = match self.acked {
            Expected::AtLeast(v) if self.unknown_updates > 0 => {
                format!("version {v}..={}", v + self.unknown_updates)
            }
            Expected::AtLeast(v) => format!("version {v}"),
            other => other.to_string(),
        };
        if self.maybe_deleted && self.acked != Expected::Gone {
            format!("{base} or 404")
        } else {
            base
        }
    }
}

fn finals(history: &History) -> Vec<Final> {
    history
        .created()
        .into_iter()
        .map(|post| {
            let writes: Vec<_> = history.writes_to(post).collect();
            let unknown: Vec<&OpKind> = writes
                .iter()
                .filter(|w| matches!(w.outcome, Outcome::Indeterminate { .. }))
                .map(|w| &w.kind)
                .collect();
            Final {
                post: post.to_owned(),
                acked: Expected::from_writes(writes.iter().copied().filter(|w| w.acked())),
                unknown_updates: unknown
                    .iter()
                    .filter(|k| matches!(k, OpKind::Update { .. }))
                    .count() as i64,
                maybe_deleted: unknown.iter().any(|k| matches!(k, OpKind::Delete { .. })),
                last_ack_ms: writes
                    .iter()
                    .filter(|w| w.acked())
                    .map(|w| w.completed as f64 / 1000.0)
                    .fold(0.0, f64::max),
            }
        })
        .collect()
}

/// Reads every post on every URL until each serves its final state or `deadline` passes.
async fn final_reads(
    api: &Api,
    urls: &Arc<[String]>,
    history: &History,
    deadline: Instant,
) -> Findings<LostWrite> {
    let finals = finals(history);
    let mut tasks = JoinSet::new();
    for (url, base) in urls.iter().enumerate() {
        for chunk in finals.chunks(finals.len().div_ceil(PARALLEL).max(1)) {
            let (api, base, mut pending) = (api.clone(), base.clone(), chunk.to_vec());
            tasks.spawn(async move {
                loop {
                    let mut wrong = Vec::new();
                    for f in pending {
                        let seen = api.get(&base, &f.post, None).await;
                        if !f.allows(&seen) {
                            wrong.push((url, f, seen));
                        }
                    }
                    if wrong.is_empty() || Instant::now() >= deadline {
                        return wrong;
                    }
                    pending = wrong.into_iter().map(|(_, f, _)| f).collect();
                    tokio::time::sleep(PASS_PAUSE).await;
                }
            });
        }
    }
    let mut lost = Findings::default();
    while let Some(done) = tasks.join_next().await {
        for (url, f, seen) in done.unwrap_or_default() {
            lost.push(LostWrite {
                url: urls[url].clone(),
                expected: f.describe(),
                seen: seen.to_string(),
                post: f.post,
                last_ack_ms: f.last_ack_ms,
            });
        }
    }
    lost
}

impl Stopped {
    /// What the sessions did.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Settles, verifies, cleans up and reports.
    pub async fn check(self) -> Report {
        let Stopped {
            workload,
            history,
            workload_s,
        } = self;
        let shared = Arc::clone(&workload.shared);
        let plan = &shared.plan;
        let settle_started = Instant::now();
        let deadline = settle_started + plan.settle;
        let subscribers = &workload.subscribers;
        let events_arrived = async {
            while Instant::now() < deadline {
                let logs: Vec<StreamLog> = subscribers.iter().map(|s| s.snapshot()).collect();
                if verify::missing(&history, &logs, &plan.urls).is_empty() {
                    break;
                }
                tokio::time::sleep(PASS_PAUSE).await;
            }
        };
        let (lost, ()) = tokio::join!(
            final_reads(&shared.api, &shared.urls, &history, deadline),
            events_arrived
        );
        let settle_s = settle_started.elapsed().as_secs_f64();
        let _ = shared.settled.send(true);
        let mut samples = Vec::new();
        for probe in workload.take_probes() {
            match probe.await {
                Ok(Probed::Converged(ms)) => samples.push(Some(ms)),
                Ok(Probed::Not) => samples.push(None),
                Ok(Probed::Superseded) | Err(_) => {}
            }
        }
        let Workload { subscribers, .. } = workload;
        let mut logs = Vec::new();
        for subscriber in subscribers {
            logs.push(subscriber.finish().await);
        }
        let mut report = Report {
            seed: plan.seed,
            run: shared.names.tag.clone(),
            urls: plan.urls.clone(),
            clients: plan.clients,
            staleness_bound_ms: plan.staleness_bound.as_millis() as u64,
            workload_s,
            settle_s,
            ops: count_ops(&history),
            posts_created: history.creator.len(),
            lost_writes: lost,
            convergence: Convergence::from_samples(&samples),
            subscribers: summarize(&logs, &plan.urls),
            ..Report::default()
        };
        for violation in verify::all(
            &history,
            &logs,
            &plan.urls,
            &shared.names.authors,
            plan.staleness_bound,
        ) {
            report.record(violation);
        }
        report.cleanup = clean_up(&shared.api, &shared.urls, &history, &shared.names.tag).await;
        report
    }
}

fn count_ops(history: &History) -> std::collections::BTreeMap<String, OpCounts> {
    let mut ops = std::collections::BTreeMap::<String, OpCounts>::new();
    for op in &history.ops {
        let counts = ops.entry(op.kind.name().to_owned()).or_default();
        match op.outcome {
            Outcome::Rejected { .. } => counts.rejected += 1,
            Outcome::Indeterminate { .. } => counts.indeterminate += 1,
            _ => counts.ok += 1,
        }
    }
    ops
}

fn summarize(logs: &[StreamLog], urls: &[String]) -> Vec<SubscriberSummary> {
    logs.iter()
        .map(|log| {
            let resyncs = log
                .delivered
                .iter()
                .filter(|d| matches!(d, crate::events::Delivered::Resync { .. }))
                .count();
            SubscriberSummary {
                url: urls.get(log.url).cloned().unwrap_or_default(),
                events: log.delivered.len() - resyncs,
                resyncs,
                reconnects: log.reconnects,
                connected_at_end: log.open,
            }
        })
        .collect()
}

/// Deletes every post the run created, including unacknowledged creates that its tag feed lists.
async fn clean_up(api: &Api, urls: &Arc<[String]>, history: &History, tag: &str) -> Cleanup {
    let mut posts: BTreeSet<String> = history
        .creator
        .keys()
        .filter(|p| !history.writes_to(p).any(|w| w.outcome == Outcome::Deleted))
        .cloned()
        .collect();
    for base in urls.iter() {
        if let Outcome::Page { items } = api.list(base, tag, &Feed::Tag, None).await {
            posts.extend(items.into_iter().map(|(post, _)| post));
            break;
        }
    }
    let posts: Vec<String> = posts.into_iter().collect();
    let mut tasks = JoinSet::new();
    for chunk in posts.chunks(posts.len().div_ceil(PARALLEL).max(1)) {
        let (api, urls, chunk) = (api.clone(), Arc::clone(urls), chunk.to_vec());
        tasks.spawn(async move {
            let mut cleanup = Cleanup::default();
            for post in chunk {
                let gone = delete_anywhere(&api, &urls, &post).await;
                if gone {
                    cleanup.deleted += 1;
                } else {
                    cleanup.failed += 1;
                }
            }
            cleanup
        });
    }
    let mut cleanup = Cleanup::default();
    while let Some(done) = tasks.join_next().await {
        let done = done.unwrap_or_default();
        cleanup.deleted += done.deleted;
        cleanup.failed += done.failed;
    }
    cleanup
}

/// Deletes `post` through the first URL that manages it (404 counts: already gone).
async fn delete_anywhere(api: &Api, urls: &[String], post: &str) -> bool {
    for base in urls {
        match api.delete(base, post, None).await.0 {
            Outcome::Deleted | Outcome::Rejected { status: 404 } => return true,
            _ => {}
        }
    }
    false
}
