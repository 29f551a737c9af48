//! L3 on PostgreSQL: writes on the primary; reads on a read replica that has replayed what the
//! caller needs (see [`Replicas`]), else on the primary.

use std::sync::Arc;

use async_trait::async_trait;
use postcache_api::EventType;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use time::OffsetDateTime;

use super::write::{self, Dialect, Tx};
use super::{
    Committed, Edit, OutboxEvent, PoolConfig, PoolUsage, PostRow, ReadAt, Replicas, Store,
    StoreError, event_payload, kind_name, tags_json,
};
use crate::model::{FeedQuery, NewPost, PostId, StoredPost};
use crate::stats::timed;

/// The statements the API issues, public so that a test can `EXPLAIN` each of them.
pub mod sql {
    /// Global feed page.
    pub const FEED: &str =
        "SELECT id FROM posts WHERE NOT deleted AND id < $1 ORDER BY id DESC LIMIT $2";
    /// Feed page of one author.
    pub const FEED_BY_AUTHOR: &str = "SELECT id FROM posts WHERE NOT deleted AND author_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3";
    /// Feed page of one tag.
    pub const FEED_BY_TAG: &str = "SELECT post_id FROM post_tags WHERE tag = $1 AND post_id < $2 ORDER BY post_id DESC LIMIT $3";
    /// Feed page of one tag and author.
    pub const FEED_BY_TAG_AND_AUTHOR: &str = "SELECT t.post_id FROM post_tags t JOIN posts p ON p.id = t.post_id \
         WHERE t.tag = $1 AND p.author_id = $2 AND NOT p.deleted AND t.post_id < $3 \
         ORDER BY t.post_id DESC LIMIT $4";
    /// One post.
    pub const GET: &str = "SELECT id, author_id, title, body, tags, version, views, deleted, created_at, updated_at \
         FROM posts WHERE id = $1";
    /// One post, locked for a change.
    pub const GET_FOR_UPDATE: &str = "SELECT id, author_id, title, body, tags, version, views, deleted, created_at, updated_at \
         FROM posts WHERE id = $1 FOR UPDATE";
    /// Many posts.
    pub const GET_MANY: &str = "SELECT id, author_id, title, body, tags, version, views, deleted, created_at, updated_at \
         FROM posts WHERE id = ANY($1)";
    /// Add views to one post.
    pub const ADD_VIEWS: &str =
        "UPDATE posts SET views = views + $2 WHERE id = $1 AND NOT deleted RETURNING views";
}

/// The pool settings of `config` (shared by the primary and the replicas).
pub(crate) fn pool_options(config: &PoolConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
}

/// Session settings: the application name and, when set, the statement timeout (sent at connect
/// time, so it holds from the first statement on).
pub(crate) fn session_options(
    options: PgConnectOptions,
    application: &str,
    config: &PoolConfig,
) -> PgConnectOptions {
    let options = options.application_name(application);
    match config.statement_timeout {
        Some(timeout) => options.options([(
            "statement_timeout",
            format!("{}ms", timeout.as_millis().max(1)),
        )]),
        None => options,
    }
}

/// [`Store`] on a PostgreSQL primary.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    replicas: Option<Arc<Replicas>>,
    /// The session holding this process's share of the process lock (see `hold_alone`).
    alone: Arc<tokio::sync::Mutex<Option<PgConnection>>>,
}

/// Advisory lock that every process serving this database without a shared event log holds
/// shared: the number of holders is the number of such processes.
const ALONE_LOCK: (i32, i32) = (0x706f_7374, 0x6361_6368); // "postcach"

impl PostgresStore {
    /// Connects and migrates (sqlx takes an advisory lock: one migrating process at a time).
    ///
    /// # Errors
    /// Unreachable database, bad URL, failed migration.
    pub async fn connect(url: &str, config: &PoolConfig) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(StoreError::query("parse the database URL"))?;
        let pool = pool_options(config)
            .connect_with(session_options(options, "postcache", config))
            .await
            .map_err(StoreError::query("connect to PostgreSQL"))?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        Ok(PostgresStore {
            pool,
            replicas: None,
            alone: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// Reads may also go to `replicas`.
    pub fn with_replicas(mut self, replicas: Replicas) -> Self {
        self.replicas = (!replicas.is_empty()).then(|| Arc::new(replicas));
        self
    }

    /// A connection for a read at `at`, and its `role` label: a replica that has replayed what
    /// the read needs (checked on that connection, see [`Replicas::connect`]), else the primary.
    async fn reader(
        &self,
        at: ReadAt,
    ) -> (Result<PoolConnection<Postgres>, StoreError>, &'static str) {
        if let (Some(replicas), ReadAt::Replica(lsn)) = (&self.replicas, at)
            && let Some(conn) = replicas.connect(lsn).await
        {
            return (Ok(conn), "replica");
        }
        (self.acquire().await, "primary")
    }

    /// Where a read goes when the server it used (`failed`) is unreachable: a replica's reads go
    /// to the primary; a [`ReadAt::Latest`] read goes to a replica while the primary is down
    /// (nothing new can be acknowledged then).
    async fn fallback(
        &self,
        at: ReadAt,
        failed: &str,
    ) -> Option<(Result<PoolConnection<Postgres>, StoreError>, &'static str)> {
        if failed == "replica" {
            return Some((self.acquire().await, "primary"));
        }
        match (&self.replicas, at) {
            (Some(replicas), ReadAt::Latest) => {
                replicas.connect(0).await.map(|c| (Ok(c), "replica"))
            }
            _ => None,
        }
    }

    /// Runs `read` where `at` allows, timed under the server's role; if that server is
    /// unreachable, once more where [`PostgresStore::fallback`] says.
    async fn read_at<T, F, Fut>(&self, at: ReadAt, read: F) -> Result<T, StoreError>
    where
        F: Fn(PoolConnection<Postgres>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let run = async |conn: Result<PoolConnection<Postgres>, StoreError>, role| match conn {
            Ok(conn) => timed(role, read(conn)).await,
            Err(e) => Err(e),
        };
        let (conn, role) = self.reader(at).await;
        match run(conn, role).await {
            Err(e) if e.is_unavailable() => match self.fallback(at, role).await {
                Some((conn, role)) => run(conn, role).await,
                None => Err(e),
            },
            done => done,
        }
    }

    async fn read_post(
        mut conn: PoolConnection<Postgres>,
        id: PostId,
    ) -> Result<Option<StoredPost>, StoreError> {
        let row: Option<PostRow> = sqlx::query_as(sql::GET)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(StoreError::query("read a post"))?;
        Ok(row.map(StoredPost::from))
    }

    async fn read_posts(
        mut conn: PoolConnection<Postgres>,
        ids: &[PostId],
    ) -> Result<Vec<StoredPost>, StoreError> {
        let rows: Vec<PostRow> = sqlx::query_as(sql::GET_MANY)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::query("read posts"))?;
        Ok(rows.into_iter().map(StoredPost::from).collect())
    }

    async fn read_feed(
        mut conn: PoolConnection<Postgres>,
        q: &FeedQuery,
    ) -> Result<Vec<PostId>, StoreError> {
        let before = q.cursor.map_or(i64::MAX, |c| c.0);
        let limit = i64::from(q.limit);
        let query = match (&q.tag, &q.author_id) {
            (None, None) => sqlx::query_scalar(sql::FEED).bind(before),
            (None, Some(author)) => sqlx::query_scalar(sql::FEED_BY_AUTHOR)
                .bind(author)
                .bind(before),
            (Some(tag), None) => sqlx::query_scalar(sql::FEED_BY_TAG).bind(tag).bind(before),
            (Some(tag), Some(author)) => sqlx::query_scalar(sql::FEED_BY_TAG_AND_AUTHOR)
                .bind(tag)
                .bind(author)
                .bind(before),
        };
        query
            .bind(limit)
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::query("read a feed page"))
    }

    /// The pool, for tests and diagnostics.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn acquire(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        write::acquire(self).await
    }
}

impl Dialect for PostgresStore {
    type Db = Postgres;

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    async fn insert(
        tx: &mut Tx<'_, Self>,
        new: &NewPost,
        now: OffsetDateTime,
    ) -> Result<StoredPost, StoreError> {
        let row: PostRow = sqlx::query_as(
            "INSERT INTO posts (author_id, title, body, tags, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $5) \
             RETURNING id, author_id, title, body, tags, version, views, deleted, created_at, updated_at",
        )
        .bind(&new.author_id)
        .bind(&new.title)
        .bind(&new.body)
        .bind(tags_json(&new.tags))
        .bind(now)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::query("insert the post"))?;
        Ok(StoredPost::from(row))
    }

    async fn lock(tx: &mut Tx<'_, Self>, id: PostId) -> Result<Option<StoredPost>, StoreError> {
        let row: Option<PostRow> = sqlx::query_as(sql::GET_FOR_UPDATE)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::query("lock the post"))?;
        Ok(row.map(StoredPost::from))
    }

    async fn update(tx: &mut Tx<'_, Self>, post: &StoredPost) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE posts SET title = $2, body = $3, tags = $4, version = $5, deleted = $6, updated_at = $7 WHERE id = $1",
        )
        .bind(post.id)
        .bind(&post.title)
        .bind(&post.body)
        .bind(tags_json(&post.tags))
        .bind(post.version)
        .bind(post.deleted)
        .bind(post.updated_at)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("update the post"))?;
        Ok(())
    }

    async fn untag(tx: &mut Tx<'_, Self>, id: PostId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM post_tags WHERE post_id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(StoreError::query("untag the post"))?;
        Ok(())
    }

    async fn tag(tx: &mut Tx<'_, Self>, id: PostId, tags: &[String]) -> Result<(), StoreError> {
        if tags.is_empty() {
            return Ok(());
        }
        sqlx::query("INSERT INTO post_tags (tag, post_id) SELECT unnest($1::text[]), $2")
            .bind(tags)
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(StoreError::query("tag the post"))?;
        Ok(())
    }

    async fn append(
        tx: &mut Tx<'_, Self>,
        post: &StoredPost,
        kind: EventType,
        previous_tags: &[String],
    ) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO outbox (post_id, kind, version, payload, created_at, author_id, previous_tags) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING position",
        )
        .bind(post.id)
        .bind(kind_name(kind))
        .bind(post.version)
        .bind(event_payload(post))
        .bind(post.updated_at)
        .bind(&post.author_id)
        .bind(tags_json(previous_tags))
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::query("append to the outbox"))
    }

    async fn claim_views(
        tx: &mut Tx<'_, Self>,
        batch_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let claimed = sqlx::query(
            "INSERT INTO view_batches (id, applied_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(batch_id)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("claim a view batch"))?;
        Ok(claimed.rows_affected() > 0)
    }

    async fn count_views(
        tx: &mut Tx<'_, Self>,
        id: PostId,
        n: i64,
    ) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(sql::ADD_VIEWS)
            .bind(id)
            .bind(n)
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::query("add views"))
    }

    /// The primary's WAL position on the connection that just committed: at or after the commit
    /// record, so a replica that has replayed this far reflects the write.
    async fn commit_lsn(conn: &mut PgConnection) -> Result<u64, StoreError> {
        let lsn: i64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
            .fetch_one(conn)
            .await
            .map_err(StoreError::query("read the commit LSN"))?;
        Ok(lsn as u64)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create(&self, new: NewPost, now: OffsetDateTime) -> Result<Committed, StoreError> {
        write::create(self, new, now).await
    }

    async fn change(
        &self,
        id: PostId,
        kind: EventType,
        edit: Edit,
    ) -> Result<Committed, StoreError> {
        write::change(self, id, kind, edit).await
    }

    async fn get(&self, id: PostId, at: ReadAt) -> Result<Option<StoredPost>, StoreError> {
        self.read_at(at, |conn| Self::read_post(conn, id)).await
    }

    async fn get_many(&self, ids: &[PostId], at: ReadAt) -> Result<Vec<StoredPost>, StoreError> {
        self.read_at(at, |conn| Self::read_posts(conn, ids)).await
    }

    async fn refresh_replicas(&self) {
        if let Some(replicas) = &self.replicas {
            replicas.refresh(&self.pool).await;
        }
    }

    fn answering_replicas(&self) -> usize {
        self.replicas.as_ref().map_or(0, |r| r.answering())
    }

    fn replica_pool_usage(&self) -> Option<PoolUsage> {
        self.replicas.as_ref().map(|r| r.pool_usage())
    }

    async fn feed(&self, q: &FeedQuery, at: ReadAt) -> Result<Vec<PostId>, StoreError> {
        self.read_at(at, |conn| Self::read_feed(conn, q)).await
    }

    async fn hold_alone(&self) -> Result<bool, StoreError> {
        let mut held = self.alone.lock().await;
        if held.is_none() {
            let mut conn = self.acquire().await?.detach();
            sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
                .bind(ALONE_LOCK.0)
                .bind(ALONE_LOCK.1)
                .execute(&mut conn)
                .await
                .map_err(StoreError::query("take the process lock"))?;
            *held = Some(conn);
        }
        let Some(conn) = held.as_mut() else {
            return Ok(false);
        };
        let holders: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 \
             AND objid = $2 AND objsubid = 2 AND granted",
        )
        .bind(ALONE_LOCK.0)
        .bind(ALONE_LOCK.1)
        .fetch_one(&mut *conn)
        .await;
        match holders {
            Ok(holders) => Ok(holders == 1),
            Err(e) => {
                // The session (and the lock with it) is gone: take it again next time.
                *held = None;
                Err(StoreError::query("count the processes")(e))
            }
        }
    }

    async fn current_lsn(&self) -> Result<u64, StoreError> {
        let mut conn = self.acquire().await?;
        Self::commit_lsn(&mut conn).await
    }

    async fn add_views(&self, batch: &[(PostId, i64)]) -> Result<Vec<(PostId, i64)>, StoreError> {
        Ok(write::add_views(self, None, batch)
            .await?
            .unwrap_or_default())
    }

    async fn add_views_once(
        &self,
        batch_id: &str,
        batch: &[(PostId, i64)],
    ) -> Result<Option<Vec<(PostId, i64)>>, StoreError> {
        write::add_views(self, Some(batch_id), batch).await
    }

    async fn unpublished(&self, limit: i64) -> Result<Vec<OutboxEvent>, StoreError> {
        sqlx::query_as(
            "SELECT position, post_id, author_id, kind, version, payload, created_at, previous_tags FROM outbox \
             WHERE published_at IS NULL ORDER BY position LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::query("read unpublished events"))
    }

    async fn mark_published(
        &self,
        published: &[i64],
        keep: i64,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        if !published.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = $2 WHERE position = ANY($1) AND published_at IS NULL")
                .bind(published)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(StoreError::query("mark events published"))?;
        }
        sqlx::query(
            "DELETE FROM outbox WHERE published_at IS NOT NULL \
             AND position <= (SELECT max(position) FROM outbox) - $1",
        )
        .bind(keep)
        .execute(&self.pool)
        .await
        .map_err(StoreError::query("prune the outbox"))?;
        Ok(())
    }

    async fn token_key(&self) -> Result<String, StoreError> {
        sqlx::query_scalar(super::TOKEN_KEY)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::query("read the token key"))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(StoreError::query("ping"))?;
        Ok(())
    }

    fn pool_usage(&self) -> PoolUsage {
        PoolUsage::of(&self.pool)
    }
}
