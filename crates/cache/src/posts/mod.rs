//! [`Posts`]: the read and write paths across the tiers.
//!
//! ```text
//! get:    L1 (if this pod can prove it fresh for the caller) ─▶ one coalesced load:
//!         L2 ─miss─▶ fill lease ─won─▶ L3 (replica covering the caller's LSN) ─▶ L2 fill
//!                              └lost─▶ wait for the winner's fill (one lease window)
//!         then L1, and the floor check (a fill older than a known version reads the primary)
//! feed:   generations ─▶ cached id list (L1, L2) or an L3 keyset scan ─▶ posts as above
//! write:  L3 transaction + outbox ─▶ L1 ─▶ L2 write-through, generations ─▶ append to the shared
//!         log ─▶ token (log position + commit LSN)
//! views:  Redis counters (or this pod's buffer) ─(leader flush)─▶ L3 batch, exactly once
//! ```
//! The read path is in `read.rs`, the write path in `write.rs`, the background side (relay,
//! heartbeats, following the shared log) in `crate::relay`.

mod read;
mod write;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::future::Cache;

use crate::eventlog::{EventLog, Position};
use crate::freshness::Freshness;
use crate::l1::{CachedPost, L1};
use crate::model::{Cursor, PostId};
use crate::redis::l2::L2;
use crate::redis::log::RedisLog;
use crate::redis::views::SharedViews;
use crate::stats::TierStats;
use crate::store::{Store, StoreError};
use crate::token::ConsistencyToken;
use crate::views::ViewBuffer;

/// Loads that concurrent readers share on an L1 miss: the post, what the readers' tokens require
/// (a reader never joins a load made for a weaker token), and whether this pod could prove itself
/// fresh when the load began (one that could not reads only the newest source).
pub(crate) type FlightKey = (PostId, Option<(Position, u64)>, bool);

/// Posts whose newest delivered version is remembered (far more than the log retains).
const DELIVERED_CAPACITY: u64 = 200_000;

/// How long a finished load's result may still be joined (one whose first caller was cancelled
/// before it could remove the entry must not pin an old result).
const FLIGHT_TTL: Duration = Duration::from_millis(100);

/// The `role` label of L3 writes.
pub(crate) const PRIMARY: &str = "primary";

/// How often a pod that lost a fill lease looks for the winner's fill.
const LEASE_POLL: Duration = Duration::from_millis(5);

/// Which tier answered a read (`X-PostCache-Tier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// This pod's memory.
    L1,
    /// Redis.
    L2,
    /// The database.
    L3,
}

impl Tier {
    /// `l1` or `l3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
            Tier::L3 => "l3",
        }
    }
}

/// A post read: the cached entry (maybe a tombstone) and the tier that served it.
#[derive(Debug, Clone)]
pub struct Read {
    /// The entry; `post` is `None` for a deleted or unknown id.
    pub entry: Arc<CachedPost>,
    /// Who served it.
    pub tier: Tier,
}

/// A write's outcome: the new entry and the client's consistency token.
#[derive(Debug, Clone)]
pub struct Written {
    /// The post after the write (a tombstone after a delete).
    pub entry: Arc<CachedPost>,
    /// What the client sends back for read-your-writes.
    pub token: ConsistencyToken,
}

/// One feed page: live posts, newest first, and where the next page starts.
#[derive(Debug, Clone)]
pub struct FeedPage {
    /// The posts (deleted ones skipped).
    pub posts: Vec<Arc<CachedPost>>,
    /// Cursor of the next page, if the page was full.
    pub next: Option<Cursor>,
    /// Who served the id list.
    pub tier: Tier,
}

/// Why a round of the shared-log relay failed (the rows stay unpublished for the next round).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or marking the outbox failed.
    #[error("the outbox could not be read or marked")]
    Store(#[source] StoreError),
    /// Appending to the shared stream failed.
    #[error("the shared event log could not be appended to")]
    Redis(#[source] crate::redis::conn::RedisCallError),
}

/// Why a call on [`Posts`] failed: the store's error, shared by every caller of a coalesced load.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PostsError(Arc<StoreError>);

impl PostsError {
    /// The underlying store error.
    pub fn store(&self) -> &StoreError {
        &self.0
    }

    /// What the failure means to the caller, whichever tier failed: the kinds a protocol (HTTP
    /// here) maps to its answers, without knowing the store's variants.
    pub fn kind(&self) -> FailureKind {
        match self.store() {
            StoreError::NotFound(id) => FailureKind::NotFound(*id),
            StoreError::VersionMismatch {
                expected, actual, ..
            } => FailureKind::VersionMismatch {
                expected: *expected,
                actual: *actual,
            },
            e if e.is_unavailable() => FailureKind::Unavailable,
            _ => FailureKind::Internal,
        }
    }
}

/// What a failed call on [`Posts`] means to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No such post, or it was deleted.
    NotFound(PostId),
    /// The post is at `actual`, not the `expected` version the caller named (`If-Match`).
    VersionMismatch {
        /// The version the caller expected.
        expected: i64,
        /// The version the post has.
        actual: i64,
    },
    /// A tier cannot answer now (down, black-holed, out of connections): retrying later may
    /// succeed, and nothing was written.
    Unavailable,
    /// Anything else (a failed statement, a broken schema): a bug or a broken database.
    Internal,
}

impl From<StoreError> for PostsError {
    fn from(e: StoreError) -> Self {
        PostsError(Arc::new(e))
    }
}

impl From<Arc<StoreError>> for PostsError {
    fn from(e: Arc<StoreError>) -> Self {
        PostsError(e)
    }
}

/// What several pods share: L2, the event log and the view counters, all on one Redis.
#[derive(Clone)]
pub struct Shared {
    /// Posts, feed pages, generations.
    pub l2: L2,
    /// The shared event log.
    pub log: RedisLog,
    /// Write-back view counters.
    pub views: SharedViews,
}

/// One fill of L2 by this pod (see [`RecentFills`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fill {
    /// A post's value.
    Post(PostId),
    /// A feed page, by its L2 key.
    Feed(String),
}

/// How long a fill is remembered: past the staleness bound and a heartbeat's delivery, a gap in
/// the log has been noticed or this pod has stopped trusting (and filling) L2.
const FILL_MEMORY: Duration = Duration::from_secs(5);

/// At most this many fills are remembered (beyond, the oldest are forgotten).
const FILL_MEMORY_ENTRIES: usize = 50_000;

/// The L2 fills this pod made lately: the ones a gap in the log makes suspect.
#[derive(Debug, Default)]
pub(crate) struct RecentFills(Mutex<std::collections::VecDeque<(std::time::Instant, Fill)>>);

impl RecentFills {
    /// Remembers a fill made now.
    pub(crate) fn record(&self, fill: Fill) {
        let now = std::time::Instant::now();
        let mut fills = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while fills
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > FILL_MEMORY)
            || fills.len() >= FILL_MEMORY_ENTRIES
        {
            fills.pop_front();
        }
        fills.push_back((now, fill));
    }

    /// The fills remembered, forgotten here.
    pub(crate) fn take(&self) -> Vec<Fill> {
        let mut fills = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        fills.drain(..).map(|(_, fill)| fill).collect()
    }
}

/// The posts service without HTTP: L1 in front of L2 and L3, views written back.
pub struct Posts {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) l1: L1,
    pub(crate) stats: TierStats,
    pub(crate) views: ViewBuffer,
    pub(crate) log: Arc<EventLog>,
    /// Wakes the outbox relay after a commit.
    pub(crate) relay: tokio::sync::Notify,
    pub(crate) shared: Option<Shared>,
    pub(crate) freshness: Freshness,
    /// Outbox positions this pod appended itself, to be marked published in one batch.
    pub(crate) to_mark: Mutex<Vec<i64>>,
    /// L2 fills made lately (dropped again when the log shows Redis lost data).
    pub(crate) fills: RecentFills,
    /// Per post, the newest version delivered to this pod's subscribers (from the shared log):
    /// an event overtaken in the log by a newer version of its post is superseded.
    pub(crate) delivered: Cache<PostId, i64>,
    /// Single flight for L1 misses (an entry lives only while its load runs).
    pub(crate) inflight: Cache<FlightKey, (Arc<CachedPost>, Tier)>,
}

impl Posts {
    /// One process on its own: committed changes reach `log` through [`Posts::relay`].
    pub fn new(store: Arc<dyn Store>, l1: L1, log: Arc<EventLog>) -> Posts {
        Posts {
            store,
            l1,
            stats: TierStats::default(),
            views: ViewBuffer::default(),
            log,
            relay: tokio::sync::Notify::new(),
            shared: None,
            freshness: Freshness::local(),
            to_mark: Mutex::new(Vec::new()),
            fills: RecentFills::default(),
            delivered: Cache::builder()
                .max_capacity(DELIVERED_CAPACITY)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            inflight: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FLIGHT_TTL)
                .build(),
        }
    }

    /// One of several pods sharing `shared`: L1 is trusted only while the shared log proves it
    /// fresh within `staleness` (see [`Freshness`]).
    pub fn with_shared(mut self, shared: Shared, staleness: Duration) -> Posts {
        self.shared = Some(shared);
        self.freshness = Freshness::shared(staleness);
        self
    }

    /// A process on a database that others could write to without a shared log: L1 is trusted
    /// only while [`Posts::set_alone`] says this process is the only one.
    pub fn guarded_by_lone_lock(mut self) -> Posts {
        self.freshness = Freshness::exclusive();
        self
    }

    /// Records whether this process holds the lone-process lock. On taking it, L1 is emptied
    /// first: entries cached while another process wrote may be stale.
    pub fn set_alone(&self, alone: bool) {
        if alone && !self.freshness.trusts_l1() {
            self.l1.posts.invalidate_all();
            self.l1.feeds.invalidate_all();
        }
        let was = self.freshness.set_alone(alone);
        if was != alone {
            if alone {
                tracing::info!("no other process serves this database: L1 is trusted");
            } else {
                tracing::warn!(
                    "another process serves this database without a shared event log: L1 is not trusted (set POSTCACHE_REDIS_URL on every pod)"
                );
            }
        }
    }

    /// The token to answer a write with, given the token the client sent with it: later than both,
    /// except that a write of this client whose event is still waiting in the outbox (position
    /// `0-0`, not yet vouched for by a heartbeat) keeps the position unknown, since a position
    /// appended later need not be past it (G1 across a Redis outage).
    pub fn merge_token(
        &self,
        sent: Option<ConsistencyToken>,
        written: ConsistencyToken,
    ) -> ConsistencyToken {
        let Some(sent) = sent else {
            return written;
        };
        let pending = |t: &ConsistencyToken| {
            self.shared.is_some() && t.position == Position::ZERO && !self.freshness.in_log(t.lsn)
        };
        let merged = sent.max(written);
        if pending(&sent) || pending(&written) {
            ConsistencyToken {
                position: Position::ZERO,
                lsn: merged.lsn,
            }
        } else {
            merged
        }
    }

    /// What this pod can prove about its L1.
    pub fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    /// The shared tiers, when there are several pods.
    pub fn shared(&self) -> Option<&Shared> {
        self.shared.as_ref()
    }

    /// The event log realtime subscribers read.
    pub fn log(&self) -> &Arc<EventLog> {
        &self.log
    }

    /// The store (readiness, pool metrics).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Hit and miss counters.
    pub fn stats(&self) -> &TierStats {
        &self.stats
    }

    /// L1 itself (entry counts).
    pub fn l1(&self) -> &L1 {
        &self.l1
    }
}
