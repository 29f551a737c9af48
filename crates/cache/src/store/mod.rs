//! L3: the durable truth behind one trait, with PostgreSQL and SQLite implementations.
//!
//! Every write is one transaction that changes the row (`version + 1`) and appends its event to
//! the outbox table; the commit returns the event's position and, on PostgreSQL, the primary's
//! WAL position after the commit (the LSN a replica must have replayed to reflect the write).
//! The steps of those transactions are written once, in `write`; each database gives the
//! statements of a step.

mod postgres;
mod replicas;
mod sqlite;
mod write;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use postcache_api::EventType;
use time::OffsetDateTime;

pub use postgres::{PostgresStore, sql as postgres_sql};
pub use replicas::{REPLICA_LAG, ReplicaState, Replicas, eligible};
pub use sqlite::SqliteStore;

use crate::eventlog::Change;
use crate::model::{FeedQuery, NewPost, PostId, PostPatch, StoredPost};

/// An edit of a post read under lock (`None`: the id never existed).
pub type Edit = Box<dyn FnOnce(Option<StoredPost>) -> Result<StoredPost, StoreError> + Send>;

/// A committed write: the post after it, and where its event sits in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The post after the change (for a delete: the tombstone, `deleted` set).
    pub post: StoredPost,
    /// What happened.
    pub kind: EventType,
    /// The outbox position of the event.
    pub position: i64,
    /// The primary's WAL position after the commit (0 on SQLite).
    pub lsn: u64,
    /// Tags before the change (differs from `post.tags` when an update retagged).
    pub previous_tags: Vec<String>,
}

/// One outbox row: a committed change waiting to be published to the event log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxEvent {
    /// Position in the outbox (commit order for one post: rows lock the post).
    pub position: i64,
    /// The post.
    pub post_id: PostId,
    /// The post's author (topic `author:{id}`, deletes included).
    pub author_id: String,
    /// `post.created`, `post.updated` or `post.deleted`.
    pub kind: String,
    /// The post's version after the change.
    pub version: i64,
    /// The post as the API shows it (JSON), or `None` for deletes.
    pub payload: Option<String>,
    /// Commit time.
    pub created_at: OffsetDateTime,
    /// The tags the post had before the change (JSON array), for invalidating the feeds it left.
    pub previous_tags: Option<String>,
}

impl OutboxEvent {
    /// The change as the event log takes it; `None` for a kind this version does not know.
    pub fn change(&self) -> Option<Change> {
        Some(Change {
            kind: self.event_type()?,
            post_id: self.post_id.to_string(),
            author_id: self.author_id.clone(),
            version: self.version,
            post: self
                .payload
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok()),
            committed_at: self.created_at,
            previous_tags: self
                .previous_tags
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or_default(),
        })
    }

    /// The event type of `kind` (`None` for a kind this version does not know).
    pub fn event_type(&self) -> Option<EventType> {
        [
            EventType::PostCreated,
            EventType::PostUpdated,
            EventType::PostDeleted,
            EventType::PostViews,
        ]
        .into_iter()
        .find(|t| kind_name(*t) == self.kind)
    }
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such post, or it was deleted.
    #[error("post {0} does not exist")]
    NotFound(PostId),
    /// `If-Match` named another version.
    #[error("post {id} is at version {actual}, not {expected}")]
    VersionMismatch {
        /// The post.
        id: PostId,
        /// The version the caller expected.
        expected: i64,
        /// The version it has.
        actual: i64,
    },
    /// The database cannot be reached, or no connection was free within the acquire timeout.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A call did not finish within its deadline (a slow or black-holed server).
    #[error("{0} did not finish in time")]
    Timeout(&'static str),
    /// A statement failed.
    #[error("{step} failed")]
    Query {
        /// Which step.
        step: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Schema migration failed at start-up.
    #[error("migrating the schema failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The database URL is neither `sqlite:` nor `postgres:`.
    #[error("unsupported database URL scheme (expected sqlite: or postgres:)")]
    UnsupportedUrl,
}

impl StoreError {
    /// Wraps a driver error of `step`, telling outages apart from query failures.
    pub(crate) fn query(step: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| match source {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(source),
            sqlx::Error::Database(ref e) if e.code().is_some_and(|c| transient(&c)) => {
                StoreError::Unavailable(source)
            }
            source => StoreError::Query { step, source },
        }
    }

    /// True when retrying later may succeed (the caller answers 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_))
    }
}

/// Whether a PostgreSQL error (by SQLSTATE) may pass if retried later: a connection failure (class
/// 08), a read-only server (25006: a primary being demoted, mid-failover), an administrator or
/// crash shutdown or a server still starting (57P01–57P03), a serialization failure or deadlock
/// (40001, 40P01), too many connections (53300). The caller answers 503 with `Retry-After`.
pub fn transient(sqlstate: &str) -> bool {
    sqlstate.starts_with("08")
        || matches!(
            sqlstate,
            "25006" | "57014" | "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300"
        )
}

/// A connection pool's connections at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Handed out to a statement or transaction.
    pub in_use: u32,
    /// Open and waiting in the pool.
    pub idle: u32,
    /// The most the pool opens.
    pub max: u32,
}

impl PoolUsage {
    /// What `pool` holds now.
    pub(crate) fn of<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> PoolUsage {
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
        PoolUsage {
            in_use: pool.size().saturating_sub(idle),
            idle,
            max: pool.options().get_max_connections(),
        }
    }
}

/// Several pools' connections together.
impl std::iter::Sum for PoolUsage {
    fn sum<I: Iterator<Item = PoolUsage>>(pools: I) -> PoolUsage {
        pools.fold(PoolUsage::default(), |sum, pool| PoolUsage {
            in_use: sum.in_use + pool.in_use,
            idle: sum.idle + pool.idle,
            max: sum.max + pool.max,
        })
    }
}

/// Where an L3 read may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAt {
    /// Any replica within the lag limit that has replayed at least this LSN (0: any), else the
    /// primary.
    Replica(u64),
    /// Only the primary (a replica answered with a version older than one already known).
    Primary,
    /// The newest data there is: the primary, or, while the primary is unreachable (so nothing
    /// new can be acknowledged), a replica. For a pod that cannot prove what its caller may
    /// already have seen acknowledged (it lost the event log).
    Latest,
}

/// L3. Implementations are cheap to share (`Arc<dyn Store>`); every method is one round of
/// statements on one connection.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a post at version 1, with its `post.created` event.
    async fn create(&self, post: NewPost, now: OffsetDateTime) -> Result<Committed, StoreError>;

    /// Applies `patch` (version + 1) with its `post.updated` event. `expected` is `If-Match`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::VersionMismatch`], or a database error.
    async fn update(
        &self,
        id: PostId,
        patch: PostPatch,
        expected: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<Committed, StoreError> {
        let edit: Edit = Box::new(move |current| apply_patch(current, id, patch, expected, now));
        self.change(id, EventType::PostUpdated, edit).await
    }

    /// Soft-deletes (version + 1) with its `post.deleted` event.
    ///
    /// # Errors
    /// As [`Store::update`].
    async fn delete(
        &self,
        id: PostId,
        expected: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<Committed, StoreError> {
        let edit: Edit = Box::new(move |current| {
            let mut post = apply_patch(current, id, PostPatch::default(), expected, now)?;
            post.deleted = true;
            Ok(post)
        });
        self.change(id, EventType::PostDeleted, edit).await
    }

    /// The shape of every change: lock the post, `edit` it, save it with its outbox event, commit.
    /// `update` and `delete` are built on it.
    async fn change(
        &self,
        id: PostId,
        kind: EventType,
        edit: Edit,
    ) -> Result<Committed, StoreError>;

    /// One post, deleted ones included (as tombstones), read where `at` allows (a read replica,
    /// on PostgreSQL); `None` if the id never existed.
    async fn get(&self, id: PostId, at: ReadAt) -> Result<Option<StoredPost>, StoreError>;

    /// Many posts at once, where `at` allows (order unspecified, absent ids skipped).
    async fn get_many(&self, ids: &[PostId], at: ReadAt) -> Result<Vec<StoredPost>, StoreError>;

    /// Ids of one feed page, newest first (keyset: ids below the cursor), where `at` allows.
    async fn feed(&self, query: &FeedQuery, at: ReadAt) -> Result<Vec<PostId>, StoreError>;

    /// Adds buffered view counts in one transaction; returns each live post's new total.
    async fn add_views(&self, batch: &[(PostId, i64)]) -> Result<Vec<(PostId, i64)>, StoreError>;

    /// Adds the view batch `batch_id` unless a batch of that id was already added (a flusher that
    /// died after its commit leaves its batch behind; the next one must not count it twice).
    /// Returns the new totals, or `None` when the batch had been applied before.
    async fn add_views_once(
        &self,
        batch_id: &str,
        batch: &[(PostId, i64)],
    ) -> Result<Option<Vec<(PostId, i64)>>, StoreError>;

    /// Polls the read replicas' replay positions (no-op without replicas).
    async fn refresh_replicas(&self) {}

    /// Read replicas that answered their last poll (0 without replicas).
    fn answering_replicas(&self) -> usize {
        0
    }

    /// Connections (in use, idle, max) of the replica pools, if there are replicas.
    fn replica_pool_usage(&self) -> Option<PoolUsage> {
        None
    }

    /// Outbox rows not yet published, oldest position first (at most `limit`).
    async fn unpublished(&self, limit: i64) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Marks outbox rows as published and drops published rows beyond `keep` newest.
    async fn mark_published(
        &self,
        published: &[i64],
        keep: i64,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether this process is the only one serving this database without a shared event log
    /// (then its L1 sees every write): every such process holds a shared lock on a session of its
    /// own, and this counts the holders. Always `true` where only one process can write (SQLite).
    async fn hold_alone(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// The primary's WAL position now (0 where there is none, SQLite): every change committed
    /// before the call is at or before it.
    async fn current_lsn(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// The key kept in the database (`settings.token_key`, made by the migrations) that signs
    /// consistency tokens when none is configured: every process on the database shares it.
    async fn token_key(&self) -> Result<String, StoreError>;

    /// Connections (in use, idle, max) of the pool, for metrics.
    fn pool_usage(&self) -> PoolUsage;
}

/// The shared signing key.
pub(crate) const TOKEN_KEY: &str = "SELECT value FROM settings WHERE name = 'token_key'";

/// How a process uses its database connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Most connections per pool (the primary, and each replica).
    pub max_connections: u32,
    /// How long a call waits for a free connection (or a new one) before it fails as unavailable.
    pub acquire_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on every session: a statement a slow server has not
    /// finished by then is cancelled and the call fails as unavailable (SQLSTATE 57014). `None`:
    /// the server's own setting.
    pub statement_timeout: Option<Duration>,
}

impl PoolConfig {
    /// `max_connections` connections, waiting at most `acquire_timeout` for one, with the
    /// server's own statement timeout.
    pub fn new(max_connections: u32, acquire_timeout: Duration) -> PoolConfig {
        PoolConfig {
            max_connections,
            acquire_timeout,
            statement_timeout: None,
        }
    }
}

/// Connects to `url` (`sqlite:` or `postgres:`), runs the migrations (one process at a time), and
/// returns the store.
///
/// # Errors
/// An unsupported URL, an unreachable database, or a failed migration.
pub async fn connect(url: &str, pool: &PoolConfig) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            SqliteStore::connect(url, pool.max_connections, pool.acquire_timeout).await?,
        ))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PostgresStore::connect(url, pool).await?))
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}

/// [`connect`], with reads also going to the PostgreSQL read replicas at `replica_urls` (connected
/// lazily: a replica that is down only takes no reads).
///
/// # Errors
/// As [`connect`]; replicas of a SQLite file are [`StoreError::UnsupportedUrl`].
pub async fn connect_with_replicas(
    url: &str,
    replica_urls: &[String],
    pool: &PoolConfig,
    max_lag: Duration,
) -> Result<Arc<dyn Store>, StoreError> {
    if replica_urls.is_empty() {
        return connect(url, pool).await;
    }
    if url.starts_with("sqlite:") {
        return Err(StoreError::UnsupportedUrl);
    }
    let replicas = Replicas::new(replica_urls, pool, max_lag)?;
    let store = PostgresStore::connect(url, pool).await?;
    Ok(Arc::new(store.with_replicas(replicas)))
}

/// A `posts` row as both databases return it (every post query selects these columns by name);
/// `tags` is a JSON array.
#[derive(sqlx::FromRow)]
pub(crate) struct PostRow {
    id: i64,
    author_id: String,
    title: String,
    body: String,
    tags: String,
    version: i64,
    views: i64,
    deleted: bool,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl From<PostRow> for StoredPost {
    fn from(row: PostRow) -> StoredPost {
        StoredPost {
            id: row.id,
            author_id: row.author_id,
            title: row.title,
            body: row.body,
            // Written by `tags_json` only; a malformed value would be a bug, shown as no tags.
            tags: serde_json::from_str(&row.tags).unwrap_or_default(),
            version: row.version,
            views: row.views,
            deleted: row.deleted,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

pub(crate) fn tags_json(tags: &[String]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
}

/// The event payload stored in the outbox: the post as the API shows it, or null for deletes.
pub(crate) fn event_payload(post: &StoredPost) -> Option<String> {
    (!post.deleted).then(|| serde_json::to_string(&post.to_api()).unwrap_or_default())
}

pub(crate) fn kind_name(kind: EventType) -> &'static str {
    match kind {
        EventType::PostCreated => "post.created",
        EventType::PostUpdated => "post.updated",
        EventType::PostDeleted => "post.deleted",
        EventType::PostViews => "post.views",
        EventType::Resync => "resync",
    }
}

/// Applies a patch to a post read under lock; checks existence and `If-Match` first.
pub(crate) fn apply_patch(
    current: Option<StoredPost>,
    id: PostId,
    patch: PostPatch,
    expected: Option<i64>,
    now: OffsetDateTime,
) -> Result<StoredPost, StoreError> {
    let mut post = current
        .filter(|p| !p.deleted)
        .ok_or(StoreError::NotFound(id))?;
    if let Some(expected) = expected.filter(|e| *e != post.version) {
        return Err(StoreError::VersionMismatch {
            id,
            expected,
            actual: post.version,
        });
    }
    if let Some(title) = patch.title {
        post.title = title;
    }
    if let Some(body) = patch.body {
        post.body = body;
    }
    if let Some(tags) = patch.tags {
        post.tags = tags;
    }
    post.version += 1;
    post.updated_at = now;
    Ok(post)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_shutdown_and_conflict_states_are_worth_a_retry() {
        for code in [
            "08006", "08001", "25006", "57P01", "57P03", "40001", "40P01", "53300",
        ] {
            assert!(transient(code), "{code}");
        }
        for code in ["23505", "22P02", "42P01", "25P02"] {
            assert!(!transient(code), "{code}");
        }
    }
}
