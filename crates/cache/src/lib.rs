//! PostCache's tiers and the freshness protocol around them.
//!
//! ```text
//!   read:  L1 (moka, this pod; if provably fresh) ──▶ L2 (Redis, shared) ──▶ L3 (Store:
//!          PostgreSQL primary + replicas | SQLite) ──fill──▶ L2 (lease, CAS) ──▶ L1
//!   write: L3 transaction (row, version + 1, outbox event) ──commit──▶ L1 ──▶ L2 (CAS)
//!          ──▶ shared event log ──▶ every pod's L1 and realtime subscribers
//! ```
//! [`Posts`] composes the tiers; [`Store`] is L3 behind one trait; [`L1`] holds serialized posts,
//! feed pages keyed by tag generations, and the per-post version floor that keeps a slow fill from
//! installing an older version; [`ViewBuffer`] is the write-back of view counts; [`Background`]
//! owns the loops that keep them (relay, follower, maintenance, replica watcher) and stops them
//! when dropped. No HTTP here.

mod background;
mod eventlog;
mod freshness;
mod l1;
mod model;
mod posts;
mod redis;
mod relay;
mod stats;
mod store;
mod tags;
mod token;
mod views;

pub use background::{Background, BackgroundConfig, DB_POOL_CONNECTIONS, DB_POOL_MAX};
pub use eventlog::{Backlog, EventLog, LoggedEvent, Position, sse_message};
pub use freshness::{Freshness, L1_DISTRUSTED};
pub use l1::{CachedPost, L1, L1Config};
pub use model::{
    Cursor, FeedQuery, NewPost, PostId, PostPatch, StoredPost, format_timestamp, parse_post_id,
};
pub use posts::{
    FailureKind, FeedPage, Posts, PostsError, Read, RelayError, Shared, Tier, Written,
};
pub use redis::conn::{RedisCallError, RedisConfig, RedisConn};
pub use redis::l2::{Filled, L2, L2Config, Lease};
pub use redis::log::{Entry, Logged, RELAY_LEASE_KEY, RedisLog, STREAM_KEY};
pub use redis::views::{SharedViews, ViewBatch};
pub use relay::EVENTLOG_GAPS;
pub use stats::{
    CACHE_REQUESTS, DB_QUERY_DURATION, DEGRADED, INVALIDATION_LAG, TierCounts, TierStats,
    set_degraded,
};
pub use store::{
    Committed, Edit, OutboxEvent, PoolConfig, PoolUsage, PostgresStore, REPLICA_LAG, ReadAt,
    ReplicaState, Replicas, SqliteStore, Store, StoreError, connect, connect_with_replicas,
    eligible, postgres_sql,
};
pub use tags::TagKey;
pub use token::ConsistencyToken;
pub use views::{ViewBuffer, WRITEBACK_PENDING};
