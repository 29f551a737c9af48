//! PostCache's tiers and the freshness protocol around them.
//!
//! ```text
//!   read:  L1 (moka, this pod) ──miss──▶ L3 (Store: PostgreSQL | SQLite) ──fill──▶ L1
//!   write: L3 transaction (row, version + 1, outbox event) ──commit──▶ L1 (version-guarded)
//! ```
//! [`Posts`] composes the tiers; [`Store`] is L3 behind one trait; [`L1`] holds serialized posts,
//! feed pages keyed by tag generations, and the per-post version floor that keeps a slow fill from
//! installing an older version; [`ViewBuffer`] is the write-back of view counts. No HTTP here.

mod eventlog;
mod l1;
mod model;
mod posts;
mod redislog;
mod stats;
mod store;
mod tags;
mod token;
mod views;

pub use eventlog::{Backlog, EventLog, LoggedEvent, Position};
pub use l1::{CachedPost, L1, L1Config};
pub use model::{
    Cursor, FeedQuery, NewPost, PostId, PostPatch, StoredPost, format_timestamp, parse_post_id,
};
pub use posts::{FeedPage, Posts, PostsError, Read, RelayError, Tier, Written};
pub use redislog::{RELAY_LEASE_KEY, RedisLog, RedisLogError, STREAM_KEY};
pub use stats::{CACHE_REQUESTS, DB_QUERY_DURATION, DEGRADED, TierCounts, TierStats, set_degraded};
pub use store::{
    Committed, Edit, OutboxEvent, PostgresStore, SqliteStore, Store, StoreError, connect,
    postgres_sql,
};
pub use tags::TagKey;
pub use token::ConsistencyToken;
pub use views::{ViewBuffer, WRITEBACK_PENDING};
