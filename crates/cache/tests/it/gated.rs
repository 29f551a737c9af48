//! A real store wrapped so that a test can count L3 reads and hold one `get` after it has read
//! (the slow fill of a race), releasing it when the test says.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use postcache_api::EventType;
use postcache_cache::{
    Committed, Edit, FeedQuery, NewPost, OutboxEvent, PostId, ReadAt, Store, StoreError, StoredPost,
};
use time::OffsetDateTime;
use tokio::sync::Notify;

pub struct Gated {
    inner: Arc<dyn Store>,
    pub gets: AtomicUsize,
    hold_next: AtomicBool,
    pub held: Notify,
    pub release: Notify,
}

impl Gated {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Gated> {
        Arc::new(Gated {
            inner,
            gets: AtomicUsize::new(0),
            hold_next: AtomicBool::new(false),
            held: Notify::new(),
            release: Notify::new(),
        })
    }

    /// The next `get` reads, then waits for `release` before returning what it read.
    pub fn hold_next_get(&self) {
        self.hold_next.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl Store for Gated {
    async fn create(&self, post: NewPost, now: OffsetDateTime) -> Result<Committed, StoreError> {
        self.inner.create(post, now).await
    }
    async fn change(
        &self,
        id: PostId,
        kind: EventType,
        edit: Edit,
    ) -> Result<Committed, StoreError> {
        self.inner.change(id, kind, edit).await
    }
    async fn get(&self, id: PostId, at: ReadAt) -> Result<Option<StoredPost>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let read = self.inner.get(id, at).await;
        if self.hold_next.swap(false, Ordering::SeqCst) {
            let released = self.release.notified();
            self.held.notify_one();
            released.await;
        }
        read
    }
    async fn get_many(&self, ids: &[PostId], at: ReadAt) -> Result<Vec<StoredPost>, StoreError> {
        self.inner.get_many(ids, at).await
    }
    async fn feed(&self, query: &FeedQuery, at: ReadAt) -> Result<Vec<PostId>, StoreError> {
        self.inner.feed(query, at).await
    }
    async fn add_views(&self, batch: &[(PostId, i64)]) -> Result<Vec<(PostId, i64)>, StoreError> {
        self.inner.add_views(batch).await
    }
    async fn add_views_once(
        &self,
        batch_id: &str,
        batch: &[(PostId, i64)],
    ) -> Result<Option<Vec<(PostId, i64)>>, StoreError> {
        self.inner.add_views_once(batch_id, batch).await
    }
    async fn unpublished(&self, limit: i64) -> Result<Vec<OutboxEvent>, StoreError> {
        self.inner.unpublished(limit).await
    }
    async fn mark_published(
        &self,
        published: &[i64],
        keep: i64,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.inner.mark_published(published, keep, now).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn token_key(&self) -> Result<String, StoreError> {
        self.inner.token_key().await
    }
    fn pool_usage(&self) -> postcache_cache::PoolUsage {
        self.inner.pool_usage()
    }
}
