//! The tiers' background work, owned by one guard ([`Background`]): started with the tiers,
//! stopped when the guard is stopped or dropped (as mini-redis's `DbDropGuard` owns its purge
//! task). Each loop ends when the stop signal turns true.
//!
//! ```text
//! relay            one process:  commit or 1 s ─▶ outbox ─▶ in-process event log
//!                  shared log:   commit or heartbeat tick ─▶ mark own rows; lease holder:
//!                                outbox ─▶ shared log, heartbeat, Redis view counters ─▶ L3
//! follower         shared log ─▶ L1, local log (realtime), freshness proofs
//! maintenance      views buffer ─▶ L3, pool gauges, primary flag, L1 trust, write-back backlog
//! lone-process     PostgreSQL without Redis: the advisory lock that lets one process trust L1
//! replica watcher  replay LSN and lag of each replica, every 200 ms
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::freshness::L1_DISTRUSTED;
use crate::posts::{Posts, Shared};
use crate::relay::RELAY_BATCH;
use crate::stats::set_degraded;
use crate::store::PoolUsage;
use crate::views::WRITEBACK_PENDING;

/// Metric name: connections of each database pool, by role and state.
pub const DB_POOL_CONNECTIONS: &str = "postcache_db_pool_connections";
/// Metric name: the size limit of each database pool, by role.
pub const DB_POOL_MAX: &str = "postcache_db_pool_max";

/// How long the relay lease lasts without renewal (a dead leader's successor waits this long).
const RELAY_LEASE: Duration = Duration::from_secs(2);

/// How long the lone-process check may take.
const ALONE_CHECK: Duration = Duration::from_secs(1);

/// Longest one relay round may take: a black-holed primary (no reset, no reply) must not hold
/// the loop for ever. A round cut short leaves its rows in the outbox for the next one.
const ROUND_DEADLINE: Duration = Duration::from_secs(10);

/// How often replica positions are polled.
const REPLICA_POLL: Duration = Duration::from_millis(200);

/// How the background work runs.
#[derive(Debug, Clone, Copy)]
pub struct BackgroundConfig {
    /// How often the relay leader writes a heartbeat (a quarter of the staleness bound), and the
    /// lone-process lock is checked.
    pub heartbeat: Duration,
    /// How often buffered views are flushed and the gauges refreshed.
    pub maintenance: Duration,
}

/// The running background tasks of one process's tiers.
#[derive(Debug)]
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Background {
    /// Starts every loop `posts` needs: the relay (to the shared log when there is one), the
    /// follower, maintenance, the lone-process check (decided once before this returns) and the
    /// replica watcher.
    pub async fn start(posts: &Arc<Posts>, config: BackgroundConfig) -> Background {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        match posts.shared().cloned() {
            Some(shared) => {
                tasks.push((
                    "relay",
                    tokio::spawn(relay_to_shared_log(
                        Arc::clone(posts),
                        shared.clone(),
                        config.heartbeat,
                        stopped.clone(),
                    )),
                ));
                let (follower, mut stop) = (Arc::clone(posts), stopped.clone());
                tasks.push((
                    "follower",
                    tokio::spawn(async move {
                        follower
                            .follow(&shared.log, async move {
                                let _ = stop.wait_for(|stop| *stop).await;
                            })
                            .await;
                    }),
                ));
            }
            None => tasks.push((
                "relay",
                tokio::spawn(relay_outbox(Arc::clone(posts), stopped.clone())),
            )),
        }
        if posts.freshness().needs_lone_lock() {
            check_alone(posts).await;
            tasks.push((
                "lone-process check",
                tokio::spawn(stay_alone(
                    Arc::clone(posts),
                    config.heartbeat,
                    stopped.clone(),
                )),
            ));
        }
        tasks.push((
            "maintenance",
            tokio::spawn(maintain(
                Arc::clone(posts),
                config.maintenance,
                stopped.clone(),
            )),
        ));
        if posts.store().replica_pool_usage().is_some() {
            tasks.push((
                "replica watcher",
                tokio::spawn(watch_replicas(Arc::clone(posts), stopped)),
            ));
        }
        Background { stop, tasks }
    }

    /// The name of the first task that ended before [`Background::stop`] (they end only when
    /// stopped, or on a panic); pending while all run. A caller that sees one should exit, so
    /// that the process is restarted rather than go on half-working.
    pub async fn died(&mut self) -> &'static str {
        let stop = self.stop.subscribe();
        let watched = self
            .tasks
            .iter_mut()
            .map(|(name, task)| {
                let (name, stop) = (*name, stop.clone());
                Box::pin(async move {
                    let _ = task.await;
                    if *stop.borrow() {
                        std::future::pending::<()>().await;
                    }
                    name
                })
            })
            .collect::<Vec<_>>();
        if watched.is_empty() {
            return std::future::pending().await;
        }
        futures_util::future::select_all(watched).await.0
    }

    /// Signals every task to stop and waits until each has.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for (_, task) in std::mem::take(&mut self.tasks) {
            // One that ended was awaited by `died` already.
            if !task.is_finished() {
                let _ = task.await;
            }
        }
    }
}

impl Drop for Background {
    /// Dropped without [`Background::stop`] (a panic, an early return): the tasks are signalled
    /// and aborted, never left running without an owner.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for (_, task) in &self.tasks {
            task.abort();
        }
    }
}

/// The outbox relay of a single process: after each commit (and every second, for rows another
/// process left), publish unpublished outbox rows to the in-process event log.
async fn relay_outbox(posts: Arc<Posts>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = posts.committed() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        loop {
            match tokio::time::timeout(ROUND_DEADLINE, posts.relay()).await {
                Ok(Ok(n)) if n >= RELAY_BATCH as usize => continue, // more may be behind it
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the outbox relay failed; retrying");
                    break;
                }
                Err(_) => {
                    tracing::warn!("the outbox relay did not finish in time; retrying");
                    break;
                }
            }
        }
    }
}

/// The relay when several pods share Redis: each pod marks the rows it appended itself; the
/// lease holder appends what writers could not, writes the heartbeat every `heartbeat`, and
/// flushes the shared view counters.
async fn relay_to_shared_log(
    posts: Arc<Posts>,
    shared: Shared,
    heartbeat: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = posts.committed() => {}
            () = tokio::time::sleep(heartbeat) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match tokio::time::timeout(ROUND_DEADLINE, posts.mark_appended()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "marking appended events failed; retrying"),
            Err(_) => tracing::warn!("marking appended events did not finish in time; retrying"),
        }
        match shared.log.hold_lease(RELAY_LEASE).await {
            Ok(true) => {
                if tokio::time::timeout(ROUND_DEADLINE, lead_round(&posts, &shared))
                    .await
                    .is_err()
                {
                    tracing::warn!("the relay round did not finish in time; retrying");
                }
            }
            Ok(false) => {} // another pod relays
            Err(e) => {
                tracing::debug!(error = %e, "Redis unavailable; events wait in the outbox")
            }
        }
    }
}

async fn lead_round(posts: &Posts, shared: &Shared) {
    loop {
        match posts.relay_shared(shared).await {
            Ok(n) if n >= RELAY_BATCH as usize => continue, // more may be behind it
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "the outbox relay failed; retrying");
                break;
            }
        }
    }
    if let Err(e) = posts.flush_shared_views(shared).await {
        tracing::warn!(error = %e, "flushing shared view counters failed; they stay in Redis");
    }
}

/// Every `interval`: flush this pod's buffered views, publish pool gauges and health flags.
async fn maintain(posts: Arc<Posts>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        maintenance_round(&posts, interval).await;
    }
}

/// One round of [`maintain`]; each call to the database or Redis gets at most `interval`.
async fn maintenance_round(posts: &Posts, interval: Duration) {
    if let Err(e) = posts.flush_views().await {
        tracing::warn!(error = %e, "flushing views failed; they stay buffered for the next flush");
    }
    let healthy = matches!(
        tokio::time::timeout(interval, posts.store().ping()).await,
        Ok(Ok(()))
    );
    set_degraded("primary", !healthy);
    record_pool("primary", posts.store().pool_usage());
    if let Some(usage) = posts.store().replica_pool_usage() {
        record_pool("replica", usage);
    }
    if let Some(shared) = posts.shared()
        && let Ok(Ok(waiting)) = tokio::time::timeout(interval, shared.views.pending()).await
    {
        // Counted in Redis, not in this pod's buffer: the gauge shows the shared backlog.
        metrics::gauge!(WRITEBACK_PENDING).set((waiting + posts.pending_views()) as f64);
    }
    let distrusted = if posts.freshness().trusts_l1() {
        0.0
    } else {
        1.0
    };
    metrics::gauge!(L1_DISTRUSTED).set(distrusted);
}

/// One pool's connections (used, idle) and limit, as gauges.
fn record_pool(role: &'static str, usage: PoolUsage) {
    let PoolUsage { in_use, idle, max } = usage;
    metrics::gauge!(DB_POOL_CONNECTIONS, "role" => role, "state" => "used").set(f64::from(in_use));
    metrics::gauge!(DB_POOL_CONNECTIONS, "role" => role, "state" => "idle").set(f64::from(idle));
    metrics::gauge!(DB_POOL_MAX, "role" => role).set(f64::from(max));
}

/// Takes or checks the lone-process lock (PostgreSQL without Redis) and trusts L1 accordingly.
async fn check_alone(posts: &Posts) {
    // No answer in time is no proof of being alone.
    let alone = matches!(
        tokio::time::timeout(ALONE_CHECK, posts.store().hold_alone()).await,
        Ok(Ok(true))
    );
    posts.set_alone(alone);
    set_degraded("eventlog", !alone);
}

/// Keeps checking the lone-process lock every `interval` (a lost session loses the lock, and
/// another process may take it).
async fn stay_alone(posts: Arc<Posts>, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        check_alone(&posts).await;
    }
}

/// Polls the read replicas' replay positions and lag.
async fn watch_replicas(posts: Arc<Posts>, mut stop: watch::Receiver<bool>) {
    loop {
        posts.store().refresh_replicas().await;
        tokio::select! {
            () = tokio::time::sleep(REPLICA_POLL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until_stopped(mut stop: watch::Receiver<bool>) {
        let _ = stop.wait_for(|stop| *stop).await;
    }

    #[tokio::test]
    async fn a_task_that_dies_is_named_and_tasks_ending_at_stop_are_not() {
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            ("relay", tokio::spawn(until_stopped(stopped.clone()))),
            (
                "follower",
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    panic!("a bug in the follower");
                }),
            ),
        ];
        let mut background = Background { stop, tasks };
        let died = tokio::time::timeout(Duration::from_secs(5), background.died())
            .await
            .expect("a dead task went unnoticed");
        assert_eq!(died, "follower");

        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            ("relay", tokio::spawn(until_stopped(stopped.clone()))),
            ("maintenance", tokio::spawn(until_stopped(stopped.clone()))),
        ];
        let mut background = Background { stop, tasks };
        let _ = background.stop.send(true);
        let quiet = tokio::time::timeout(Duration::from_millis(300), background.died()).await;
        assert!(
            quiet.is_err(),
            "tasks that ended because of the stop were reported as dead"
        );
        background.stop().await;
    }

    #[tokio::test]
    async fn dropping_the_guard_ends_every_task() {
        let (stop, stopped) = watch::channel(false);
        // One task that heeds the signal, one that never would.
        let heeding = tokio::spawn(until_stopped(stopped));
        let deaf = tokio::spawn(std::future::pending::<()>());
        let (heeding_abort, deaf_abort) = (heeding.abort_handle(), deaf.abort_handle());
        drop(Background {
            stop,
            tasks: vec![("relay", heeding), ("maintenance", deaf)],
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !(heeding_abort.is_finished() && deaf_abort.is_finished()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a task outlived its guard"
            );
            tokio::task::yield_now().await;
        }
    }
}
