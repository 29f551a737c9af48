//! The write transactions, once for both databases. The order of the steps lives here; each
//! database's [`Dialect`] gives the statements of one step.
//!
//! - create: insert the row (version 1), tag it, append `post.created` to the outbox, commit.
//! - change: lock the row, edit it, save it, retag it if its live tags moved, append the event,
//!   commit.
//! - views: claim the batch (once-only flushes), add each post's views, commit.
//!
//! The commit's LSN is read on the connection that committed, after the commit: at or after its
//! commit record, so a replica that has replayed this far reflects the write.

use postcache_api::EventType;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Database, Pool, Transaction};
use time::OffsetDateTime;

use super::{Committed, Edit, StoreError};
use crate::model::{NewPost, PostId, StoredPost};

/// A write transaction on the database `D`.
pub(crate) type Tx<'c, D> = Transaction<'c, <D as Dialect>::Db>;

/// One database's statements for the steps of a write. Implementations hold no state of the
/// transaction: every step runs on the transaction it is given.
pub(crate) trait Dialect: Send + Sync {
    /// The sqlx database.
    type Db: Database;

    /// The pool writes go to (the primary; SQLite's one-connection writer).
    fn writer(&self) -> &Pool<Self::Db>;

    /// Inserts a new post at version 1; returns it as stored.
    async fn insert(
        tx: &mut Tx<'_, Self>,
        new: &NewPost,
        now: OffsetDateTime,
    ) -> Result<StoredPost, StoreError>;

    /// The post `id` (tombstones included), locked until the commit where the database can.
    async fn lock(tx: &mut Tx<'_, Self>, id: PostId) -> Result<Option<StoredPost>, StoreError>;

    /// Saves an edited post's columns.
    async fn update(tx: &mut Tx<'_, Self>, post: &StoredPost) -> Result<(), StoreError>;

    /// Drops every tag of the post `id`.
    async fn untag(tx: &mut Tx<'_, Self>, id: PostId) -> Result<(), StoreError>;

    /// Tags the post `id` with `tags`.
    async fn tag(tx: &mut Tx<'_, Self>, id: PostId, tags: &[String]) -> Result<(), StoreError>;

    /// Appends the change's event to the outbox; returns its position.
    async fn append(
        tx: &mut Tx<'_, Self>,
        post: &StoredPost,
        kind: EventType,
        previous_tags: &[String],
    ) -> Result<i64, StoreError>;

    /// Records the view batch `batch_id` as applied; `false` if it already was.
    async fn claim_views(
        tx: &mut Tx<'_, Self>,
        batch_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Adds `n` views to the post `id`; its new total, or `None` if it is gone or deleted.
    async fn count_views(
        tx: &mut Tx<'_, Self>,
        id: PostId,
        n: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// The WAL position after a commit, read on the connection that made it (0 where there is
    /// no WAL to replay: SQLite).
    async fn commit_lsn(_conn: &mut <Self::Db as Database>::Connection) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// A connection from the writer's pool.
pub(super) async fn acquire<D: Dialect>(db: &D) -> Result<PoolConnection<D::Db>, StoreError> {
    db.writer()
        .acquire()
        .await
        .map_err(StoreError::query("acquire a connection"))
}

/// Commits `tx`.
async fn commit<D: Dialect>(tx: Tx<'_, D>, step: &'static str) -> Result<(), StoreError> {
    tx.commit().await.map_err(StoreError::query(step))
}

/// Inserts `new` at version 1 with its `post.created` event.
pub(crate) async fn create<D: Dialect>(
    db: &D,
    new: NewPost,
    now: OffsetDateTime,
) -> Result<Committed, StoreError> {
    let mut conn = acquire(db).await?;
    let mut tx = conn.begin().await.map_err(StoreError::query("begin"))?;
    let post = D::insert(&mut tx, &new, now).await?;
    D::tag(&mut tx, post.id, &post.tags).await?;
    let position = D::append(&mut tx, &post, EventType::PostCreated, &[]).await?;
    commit::<D>(tx, "commit").await?;
    let lsn = D::commit_lsn(&mut conn).await?;
    Ok(Committed {
        post,
        kind: EventType::PostCreated,
        position,
        lsn,
        previous_tags: Vec::new(),
    })
}

/// Locks the post `id`, applies `edit` (which refuses a missing post or a stale `If-Match`), and
/// saves the result with its `kind` event. A deleted post keeps no tags.
pub(crate) async fn change<D: Dialect>(
    db: &D,
    id: PostId,
    kind: EventType,
    edit: Edit,
) -> Result<Committed, StoreError> {
    let mut conn = acquire(db).await?;
    let mut tx = conn.begin().await.map_err(StoreError::query("begin"))?;
    let current = D::lock(&mut tx, id).await?;
    let previous_tags = current.as_ref().map(|p| p.tags.clone()).unwrap_or_default();
    let post = edit(current)?;
    D::update(&mut tx, &post).await?;
    let live_tags: &[String] = if post.deleted { &[] } else { &post.tags };
    if live_tags != previous_tags.as_slice() {
        D::untag(&mut tx, post.id).await?;
        D::tag(&mut tx, post.id, live_tags).await?;
    }
    let position = D::append(&mut tx, &post, kind, &previous_tags).await?;
    commit::<D>(tx, "commit").await?;
    let lsn = D::commit_lsn(&mut conn).await?;
    Ok(Committed {
        post,
        kind,
        position,
        lsn,
        previous_tags,
    })
}

/// Adds a batch of views in one transaction; returns each live post's new total. With a
/// `batch_id`, a batch already applied under that id adds nothing and returns `None`.
pub(crate) async fn add_views<D: Dialect>(
    db: &D,
    batch_id: Option<&str>,
    batch: &[(PostId, i64)],
) -> Result<Option<Vec<(PostId, i64)>>, StoreError> {
    let mut conn = acquire(db).await?;
    let mut tx = conn.begin().await.map_err(StoreError::query("begin"))?;
    if let Some(batch_id) = batch_id
        && !D::claim_views(&mut tx, batch_id, OffsetDateTime::now_utc()).await?
    {
        return Ok(None);
    }
    let mut totals = Vec::with_capacity(batch.len());
    for &(id, n) in batch {
        totals.extend(
            D::count_views(&mut tx, id, n)
                .await?
                .map(|total| (id, total)),
        );
    }
    commit::<D>(tx, "commit views").await?;
    Ok(Some(totals))
}
