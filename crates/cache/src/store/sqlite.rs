//! L3 on SQLite: the embedded default. One file in WAL mode; writes go through a one-connection
//! pool (SQLite has one writer at a time anyway), reads through a pool of their own.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use postcache_api::EventType;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};
use time::OffsetDateTime;

use super::write::{self, Dialect, Tx};
use super::{
    Committed, Edit, OutboxEvent, PoolUsage, PostRow, ReadAt, Store, StoreError, event_payload,
    kind_name, tags_json,
};
use crate::model::{FeedQuery, NewPost, PostId, StoredPost};

const GET: &str = "SELECT id, author_id, title, body, tags, version, views, deleted, created_at, updated_at \
                   FROM posts WHERE id = ?1";

/// [`Store`] on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the file of `url` in WAL mode and migrates it.
    ///
    /// # Errors
    /// Bad URL, unwritable file, failed migration.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::query("parse the database URL"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(acquire_timeout)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire_timeout)
            .connect_with(options.clone())
            .await
            .map_err(StoreError::query("open the SQLite file"))?;
        sqlx::migrate!("migrations/sqlite")
            .run(&writer)
            .await
            .map_err(StoreError::Migrate)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(acquire_timeout)
            .connect_with(options.read_only(true))
            .await
            .map_err(StoreError::query("open the SQLite file for reading"))?;
        Ok(SqliteStore { reader, writer })
    }
}

impl Dialect for SqliteStore {
    type Db = Sqlite;

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    async fn insert(
        tx: &mut Tx<'_, Self>,
        new: &NewPost,
        now: OffsetDateTime,
    ) -> Result<StoredPost, StoreError> {
        let row: PostRow = sqlx::query_as(
            "INSERT INTO posts (author_id, title, body, tags, version, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5) \
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

    /// SQLite has one writer at a time: the transaction holds the file, so the row needs no lock.
    async fn lock(tx: &mut Tx<'_, Self>, id: PostId) -> Result<Option<StoredPost>, StoreError> {
        let row: Option<PostRow> = sqlx::query_as(GET)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::query("read the post"))?;
        Ok(row.map(StoredPost::from))
    }

    async fn update(tx: &mut Tx<'_, Self>, post: &StoredPost) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE posts SET title = ?2, body = ?3, tags = ?4, version = ?5, deleted = ?6, updated_at = ?7 WHERE id = ?1",
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
        sqlx::query("DELETE FROM post_tags WHERE post_id = ?1")
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(StoreError::query("untag the post"))?;
        Ok(())
    }

    async fn tag(tx: &mut Tx<'_, Self>, id: PostId, tags: &[String]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO post_tags (tag, post_id) SELECT value, ?2 FROM json_each(?1)")
            .bind(tags_json(tags))
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING position",
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
            "INSERT INTO view_batches (id, applied_at) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
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
        sqlx::query_scalar(
            "UPDATE posts SET views = views + ?2 WHERE id = ?1 AND deleted = 0 RETURNING views",
        )
        .bind(id)
        .bind(n)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::query("add views"))
    }
}

#[async_trait]
impl Store for SqliteStore {
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

    /// One file, no replicas: every read is the primary's.
    async fn get(&self, id: PostId, _at: ReadAt) -> Result<Option<StoredPost>, StoreError> {
        let row: Option<PostRow> = sqlx::query_as(GET)
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(StoreError::query("read a post"))?;
        Ok(row.map(StoredPost::from))
    }

    async fn get_many(&self, ids: &[PostId], _at: ReadAt) -> Result<Vec<StoredPost>, StoreError> {
        let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        let rows: Vec<PostRow> = sqlx::query_as(
            "SELECT id, author_id, title, body, tags, version, views, deleted, created_at, updated_at \
             FROM posts WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(ids)
        .fetch_all(&self.reader)
        .await
        .map_err(StoreError::query("read posts"))?;
        Ok(rows.into_iter().map(StoredPost::from).collect())
    }

    async fn feed(&self, q: &FeedQuery, _at: ReadAt) -> Result<Vec<PostId>, StoreError> {
        let before = q.cursor.map_or(i64::MAX, |c| c.0);
        let limit = i64::from(q.limit);
        let query = match (&q.tag, &q.author_id) {
            (None, None) => sqlx::query_scalar(
                "SELECT id FROM posts WHERE deleted = 0 AND id < ?1 ORDER BY id DESC LIMIT ?2",
            )
            .bind(before),
            (None, Some(author)) => sqlx::query_scalar(
                "SELECT id FROM posts WHERE deleted = 0 AND author_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            )
            .bind(author)
            .bind(before),
            (Some(tag), None) => sqlx::query_scalar(
                "SELECT post_id FROM post_tags WHERE tag = ?1 AND post_id < ?2 ORDER BY post_id DESC LIMIT ?3",
            )
            .bind(tag)
            .bind(before),
            (Some(tag), Some(author)) => sqlx::query_scalar(
                "SELECT t.post_id FROM post_tags t JOIN posts p ON p.id = t.post_id \
                 WHERE t.tag = ?1 AND p.author_id = ?2 AND p.deleted = 0 AND t.post_id < ?3 \
                 ORDER BY t.post_id DESC LIMIT ?4",
            )
            .bind(tag)
            .bind(author)
            .bind(before),
        };
        query
            .bind(limit)
            .fetch_all(&self.reader)
            .await
            .map_err(StoreError::query("read a feed page"))
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
             WHERE published_at IS NULL ORDER BY position LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.writer)
        .await
        .map_err(StoreError::query("read unpublished events"))
    }

    async fn mark_published(
        &self,
        published: &[i64],
        keep: i64,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let positions = serde_json::to_string(published).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "UPDATE outbox SET published_at = ?2 \
             WHERE position IN (SELECT value FROM json_each(?1)) AND published_at IS NULL",
        )
        .bind(positions)
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(StoreError::query("mark events published"))?;
        sqlx::query(
            "DELETE FROM outbox WHERE published_at IS NOT NULL \
             AND position <= (SELECT max(position) FROM outbox) - ?1",
        )
        .bind(keep)
        .execute(&self.writer)
        .await
        .map_err(StoreError::query("prune the outbox"))?;
        Ok(())
    }

    async fn token_key(&self) -> Result<String, StoreError> {
        sqlx::query_scalar(super::TOKEN_KEY)
            .fetch_one(&self.reader)
            .await
            .map_err(StoreError::query("read the token key"))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(StoreError::query("ping"))?;
        Ok(())
    }

    fn pool_usage(&self) -> PoolUsage {
        PoolUsage::of(&self.reader)
    }
}
