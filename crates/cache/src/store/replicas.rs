//! [`Replicas`]: PostgreSQL read replicas, their replay position and lag, and which one a read uses.
//!
//! ```text
//! every 200 ms: each replica ─▶ replay LSN, lag (0 when caught up with the primary) ─▶ gauges
//! a read needing LSN n ─▶ a connection to a healthy replica within the lag limit whose replay
//!                         LSN, checked on that connection just before the read, is ≥ n
//!                         (caught-up ones by the last poll first) ─▶ else the primary
//! ```
//! Pools connect lazily, so a replica that is down at start-up only makes reads go elsewhere.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, Postgres};

use crate::stats::set_degraded;
use crate::store::postgres::{pool_options, session_options};
use crate::store::{PoolConfig, PoolUsage, StoreError};

/// Metric name: how far each replica's replay is behind the primary.
pub const REPLICA_LAG: &str = "postcache_db_replica_lag_seconds";

/// What the last poll learnt of one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaState {
    /// It answered the last poll.
    pub healthy: bool,
    /// WAL replayed so far.
    pub replay_lsn: u64,
    /// How far behind the primary, in milliseconds (0 when caught up).
    pub lag_ms: u64,
}

/// Which replicas may serve a read that needs `lsn` replayed: healthy, within `max_lag_ms`, and
/// (by what is known) caught up to `lsn`; and which ones could be, after a fresh look at their LSN.
/// Pure, so the rule is tested without databases.
pub fn eligible(states: &[ReplicaState], lsn: u64, max_lag_ms: u64) -> (Vec<usize>, Vec<usize>) {
    let usable = |s: &ReplicaState| s.healthy && s.lag_ms <= max_lag_ms;
    let caught_up = states
        .iter()
        .enumerate()
        .filter(|(_, s)| usable(s) && s.replay_lsn >= lsn)
        .map(|(i, _)| i)
        .collect();
    let behind = states
        .iter()
        .enumerate()
        .filter(|(_, s)| usable(s) && s.replay_lsn < lsn)
        .map(|(i, _)| i)
        .collect();
    (caught_up, behind)
}

/// A replica's lag in milliseconds from one poll: 0 when it has replayed all the primary has
/// written, else the age of the last transaction it replayed. Behind with no transaction replayed
/// since it started (restarted, catching up from its last restart point), how far is unknown: it
/// counts as past `max_lag` until it replays one. With the primary unreachable nothing new can be
/// replayed, so the lag stays what it was (`previous`).
pub fn lag_ms(
    primary_lsn: Option<i64>,
    replay: i64,
    since_last_replay_ms: Option<i64>,
    previous: u64,
    max_lag: Duration,
) -> u64 {
    match (primary_lsn, since_last_replay_ms) {
        (Some(p), _) if replay >= p => 0,
        (Some(_), Some(ms)) => ms.max(0) as u64,
        (Some(_), None) => max_lag.as_millis() as u64 + 1,
        (None, _) => previous,
    }
}

#[derive(Debug)]
struct Member {
    /// `host:port/db`, without credentials (a metric label).
    name: String,
    pool: PgPool,
    healthy: AtomicBool,
    replay_lsn: AtomicU64,
    lag_ms: AtomicU64,
}

impl Member {
    fn state(&self) -> ReplicaState {
        ReplicaState {
            healthy: self.healthy.load(Ordering::Relaxed),
            replay_lsn: self.replay_lsn.load(Ordering::Relaxed),
            lag_ms: self.lag_ms.load(Ordering::Relaxed),
        }
    }
}

/// The read replicas of one primary.
#[derive(Debug)]
pub struct Replicas {
    members: Vec<Member>,
    max_lag: Duration,
    next: AtomicUsize,
}

/// How long one poll of a server may take.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// The replay position (0 on a server not in recovery) and the age of the last transaction
/// replayed (`NULL` when none has been since the server started).
const REPLAY: &str = "SELECT COALESCE((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0), \
     (EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())) * 1000)::bigint";

/// The replay position alone, checked before a read.
const REPLAYED: &str = "SELECT COALESCE((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0)";

impl Replicas {
    /// Pools for `urls` (connected on first use); reads skip replicas more than `max_lag` behind.
    ///
    /// # Errors
    /// A malformed URL.
    pub fn new(
        urls: &[String],
        config: &PoolConfig,
        max_lag: Duration,
    ) -> Result<Replicas, StoreError> {
        let members = urls
            .iter()
            .map(|url| {
                let options: PgConnectOptions = url
                    .parse()
                    .map_err(StoreError::query("parse a replica URL"))?;
                let name = format!(
                    "{}:{}/{}",
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or_default()
                );
                let pool = pool_options(config).connect_lazy_with(session_options(
                    options,
                    "postcache-replica",
                    config,
                ));
                Ok(Member {
                    name,
                    pool,
                    healthy: AtomicBool::new(false),
                    replay_lsn: AtomicU64::new(0),
                    lag_ms: AtomicU64::new(0),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Replicas {
            members,
            max_lag,
            next: AtomicUsize::new(0),
        })
    }

    /// Whether there are any.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Polls every replica (and the primary's WAL position) once; sets the lag gauges and the
    /// `replica` degraded flag (any replica down or past the lag limit).
    pub async fn refresh(&self, primary: &PgPool) {
        // A black-holed server (not a reset one) would hold the poll for ever.
        let primary_lsn: Option<i64> = tokio::time::timeout(
            POLL_TIMEOUT,
            sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
                .fetch_one(primary),
        )
        .await
        .ok()
        .and_then(Result::ok);
        let mut degraded = false;
        for member in &self.members {
            let polled: Result<(i64, Option<i64>), String> = match tokio::time::timeout(
                POLL_TIMEOUT,
                sqlx::query_as(REPLAY).fetch_one(&member.pool),
            )
            .await
            {
                Ok(polled) => polled.map_err(|e| e.to_string()),
                Err(_) => Err("no answer in time".to_owned()),
            };
            match polled {
                Ok((replay, since_last_replay_ms)) => {
                    let lag = lag_ms(
                        primary_lsn,
                        replay,
                        since_last_replay_ms,
                        member.lag_ms.load(Ordering::Relaxed),
                        self.max_lag,
                    );
                    // Stored, not maxed: a replica that crashed and restarted replays again from
                    // its last restart point, so its position can go back.
                    member.replay_lsn.store(replay as u64, Ordering::Relaxed);
                    member.lag_ms.store(lag, Ordering::Relaxed);
                    member.healthy.store(true, Ordering::Relaxed);
                    metrics::gauge!(REPLICA_LAG, "replica" => member.name.clone())
                        .set(lag as f64 / 1000.0);
                    degraded |= Duration::from_millis(lag) > self.max_lag;
                }
                Err(e) => {
                    if member.healthy.swap(false, Ordering::Relaxed) {
                        tracing::warn!(replica = %member.name, error = %e, "a read replica stopped answering; reads go elsewhere");
                    }
                    degraded = true;
                }
            }
        }
        set_degraded("replica", degraded);
    }

    /// A connection to a replica that has replayed `lsn`, or `None` (use the primary). The
    /// position is checked on that very connection, in a statement that ends before the read's
    /// own begins: a replica restarted since the last poll replays again from its last restart
    /// point, so a cached position says nothing about the server a new connection reaches.
    /// Replicas the last poll found caught up are tried first, in turn, then the others.
    pub async fn connect(&self, lsn: u64) -> Option<PoolConnection<Postgres>> {
        let states: Vec<ReplicaState> = self.members.iter().map(Member::state).collect();
        let (caught_up, behind) = eligible(&states, lsn, self.max_lag.as_millis() as u64);
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let first = caught_up.len();
        let order = (0..first)
            .map(|k| caught_up[(turn + k) % first])
            .chain(behind);
        for i in order {
            let member = &self.members[i];
            // A black-holed replica must not hold the read: the primary answers instead.
            let checked = tokio::time::timeout(POLL_TIMEOUT, async {
                let mut conn = member.pool.acquire().await?;
                let replay: i64 = sqlx::query_scalar(REPLAYED).fetch_one(&mut *conn).await?;
                Ok::<_, sqlx::Error>((conn, replay as u64))
            })
            .await;
            if let Ok(Ok((conn, replay))) = checked {
                member.replay_lsn.store(replay, Ordering::Relaxed);
                if replay >= lsn {
                    return Some(conn);
                }
            }
        }
        None
    }

    /// Replicas that answered the last poll (they can serve reads while the primary cannot).
    pub fn answering(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.healthy.load(Ordering::Relaxed))
            .count()
    }

    /// Connections (in use, idle, max) over all replica pools.
    pub fn pool_usage(&self) -> PoolUsage {
        self.members.iter().map(|m| PoolUsage::of(&m.pool)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(healthy: bool, replay_lsn: u64, lag_ms: u64) -> ReplicaState {
        ReplicaState {
            healthy,
            replay_lsn,
            lag_ms,
        }
    }

    #[test]
    fn a_read_goes_only_to_replicas_that_cover_its_lsn_and_lag_limit() {
        let states = [
            state(true, 100, 0),      // caught up
            state(true, 50, 0),       // behind this token
            state(false, 200, 0),     // down
            state(true, 300, 20_000), // too far behind the primary
        ];
        assert_eq!(eligible(&states, 80, 10_000), (vec![0], vec![1]));
        assert_eq!(eligible(&states, 0, 10_000), (vec![0, 1], vec![]));
        assert_eq!(eligible(&states, 500, 10_000), (vec![], vec![0, 1]));
        assert_eq!(eligible(&[], 0, 10_000), (vec![], vec![]));
    }

    #[test]
    fn a_replica_behind_that_replayed_nothing_since_it_started_counts_as_past_the_limit() {
        let limit = Duration::from_secs(10);
        assert_eq!(lag_ms(Some(100), 100, None, 7, limit), 0, "caught up");
        assert_eq!(lag_ms(Some(100), 90, Some(250), 0, limit), 250);
        assert_eq!(lag_ms(Some(100), 90, None, 0, limit), 10_001, "restarted");
        assert_eq!(
            lag_ms(None, 90, Some(250), 7, limit),
            7,
            "primary unreachable"
        );
        let restarted = ReplicaState {
            healthy: true,
            replay_lsn: 90,
            lag_ms: lag_ms(Some(100), 90, None, 0, limit),
        };
        assert_eq!(eligible(&[restarted], 0, 10_000), (vec![], vec![]));
    }
}
