//! The service's background loops: the outbox relay (in-process or shared), the maintenance tick
//! (views, pool gauges, health flags) and the replica watcher. Each ends when the stop signal
//! turns true.
//!
//! ```text
//! relay_outbox         (one process)  commit/1 s ─▶ outbox ─▶ in-process event log
//! relay_to_shared_log  (several pods) commit/heartbeat tick ─▶ mark own rows; lease holder:
//!                                     outbox ─▶ shared log, heartbeat, Redis views ─▶ L3
//! maintain                            views buffer ─▶ L3, pool gauges, primary flag, L1 trust
//! watch_replicas                      replay LSN and lag of each replica, every 200 ms
//! ```

use std::sync::Arc;
use std::time::Duration;

use postcache_cache::{L1_DISTRUSTED, Posts, Shared};
use tokio::sync::watch;

use crate::limit::RateLimit;
use crate::metrics;

/// How long the relay lease lasts without renewal (a dead leader's successor waits this long).
const RELAY_LEASE: Duration = Duration::from_secs(2);

/// How long the lone-process check may take.
const ALONE_CHECK: Duration = Duration::from_secs(1);

/// Longest one relay round may take: a black-holed primary (no reset, no reply) must not hold
/// the loop for ever. A round cut short leaves its rows in the outbox for the next one.
const ROUND_DEADLINE: Duration = Duration::from_secs(10);

/// How often replica positions are polled.
const REPLICA_POLL: Duration = Duration::from_millis(200);

/// The outbox relay of a single process: after each commit (and every second, for rows another
/// process left), publish unpublished outbox rows to the in-process event log.
pub(crate) async fn relay_outbox(posts: Arc<Posts>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = posts.committed() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        loop {
            match tokio::time::timeout(ROUND_DEADLINE, posts.relay()).await {
                Ok(Ok(n)) if n > 0 => continue, // a full batch may have more behind it
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
pub(crate) async fn relay_to_shared_log(
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
            Ok(500..) => continue, // a full batch may have more behind it
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

/// Every `interval`: flush this pod's buffered views, publish pool gauges and health flags, trim
/// the rate limiter.
pub(crate) async fn maintain(
    posts: Arc<Posts>,
    limit: Option<RateLimit>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if let Err(e) = posts.flush_views().await {
            tracing::warn!(error = %e, "flushing views failed; they stay buffered for the next flush");
        }
        let healthy = matches!(
            tokio::time::timeout(interval, posts.store().ping()).await,
            Ok(Ok(()))
        );
        postcache_cache::set_degraded("primary", !healthy);
        metrics::record_pool("primary", posts.store().pool_usage());
        if let Some(usage) = posts.store().replica_pool_usage() {
            metrics::record_pool("replica", usage);
        }
        if let Some(shared) = posts.shared()
            && let Ok(Ok(waiting)) = tokio::time::timeout(interval, shared.views.pending()).await
        {
            // Counted in Redis, not in this pod's buffer: the gauge shows the shared backlog.
            ::metrics::gauge!(postcache_cache::WRITEBACK_PENDING)
                .set((waiting + posts.pending_views()) as f64);
        }
        let distrusted = if posts.freshness().trusts_l1() {
            0.0
        } else {
            1.0
        };
        ::metrics::gauge!(L1_DISTRUSTED).set(distrusted);
        if let Some(limit) = &limit {
            limit.shrink();
        }
        metrics::upkeep();
    }
}

/// Takes or checks the lone-process lock (PostgreSQL without Redis) and trusts L1 accordingly.
pub(crate) async fn check_alone(posts: &Posts) {
    // No answer in time is no proof of being alone.
    let alone = matches!(
        tokio::time::timeout(ALONE_CHECK, posts.store().hold_alone()).await,
        Ok(Ok(true))
    );
    posts.set_alone(alone);
    postcache_cache::set_degraded("eventlog", !alone);
}

/// Keeps checking the lone-process lock every `interval` (a lost session loses the lock, and
/// another process may take it).
pub(crate) async fn stay_alone(
    posts: Arc<Posts>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        check_alone(&posts).await;
    }
}

/// Polls the read replicas' replay positions and lag (a no-op loop without replicas).
pub(crate) async fn watch_replicas(posts: Arc<Posts>, mut stop: watch::Receiver<bool>) {
    if posts.store().replica_pool_usage().is_none() {
        return;
    }
    loop {
        posts.store().refresh_replicas().await;
        tokio::select! {
            () = tokio::time::sleep(REPLICA_POLL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
