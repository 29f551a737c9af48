//! [`Posts`]: the read and write paths across the tiers.
//!
//! ```text
//! get:    L1 hit ─▶ done
//!         L1 miss ─▶ one L3 load per key per burst (moka coalesces) ─▶ L1 ─▶ floor check
//! feed:   generations ─▶ cached id list or L3 keyset scan ─▶ posts via L1 (misses batched)
//! write:  L3 transaction + outbox ─▶ floor, L1 (version-guarded) ─▶ bump tag generations
//! views:  buffer ─(flush)─▶ L3 batch ─▶ L1 view counts
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use postcache_api::EventType;
use time::OffsetDateTime;

use crate::eventlog::{Change, EventLog};
use crate::l1::{CachedPost, L1};
use crate::model::{Cursor, FeedQuery, NewPost, PostId, PostPatch};
use crate::redislog::RedisLog;
use crate::stats::{TierStats, set_degraded, timed};
use crate::store::{Committed, OutboxEvent, Store, StoreError};
use crate::tags::TagKey;
use crate::token::ConsistencyToken;
use crate::views::ViewBuffer;

/// The `component` label of the shared event log's degraded flag.
const EVENTLOG: &str = "eventlog";

/// The `role` label of L3 calls to the primary.
const PRIMARY: &str = "primary";

/// Outbox rows the relay publishes per round.
const RELAY_BATCH: i64 = 500;

/// Published outbox rows beyond this many newest are pruned.
const OUTBOX_RETENTION: i64 = 10_000;

/// Which tier answered a read (`X-PostCache-Tier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// This pod's memory.
    L1,
    /// The database.
    L3,
}

impl Tier {
    /// `l1` or `l3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
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
    Redis(#[source] crate::redislog::RedisLogError),
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

/// The posts service without HTTP: L1 in front of L3, views written back.
pub struct Posts {
    store: Arc<dyn Store>,
    l1: L1,
    stats: TierStats,
    views: ViewBuffer,
    log: Arc<EventLog>,
    /// Wakes the outbox relay after a commit.
    relay: tokio::sync::Notify,
}

impl Posts {
    /// Composes the tiers; committed changes reach `log` through [`Posts::relay`].
    pub fn new(store: Arc<dyn Store>, l1: L1, log: Arc<EventLog>) -> Posts {
        Posts {
            store,
            l1,
            stats: TierStats::default(),
            views: ViewBuffer::default(),
            log,
            relay: tokio::sync::Notify::new(),
        }
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

    /// Reads one post: L1, else one coalesced L3 load that fills L1.
    ///
    /// # Errors
    /// When L3 is needed and fails.
    pub async fn get(&self, id: PostId) -> Result<Read, PostsError> {
        if let Some(entry) = self.l1.posts.get(&id).await {
            self.stats.l1.hit();
            return Ok(Read {
                entry,
                tier: Tier::L1,
            });
        }
        self.stats.l1.miss();
        let loaded = self
            .l1
            .posts
            .entry(id)
            .or_try_insert_with(self.load(id))
            .await?;
        let tier = if loaded.is_fresh() {
            Tier::L3
        } else {
            Tier::L1
        };
        let entry = loaded.into_value();
        // A write may have landed while this fill ran; if so, its version is the floor.
        let floor = self.l1.floor(id).await;
        if entry.version < floor {
            self.l1.evict_older_than(id, floor).await;
            let fresh = self.load(id).await?;
            self.l1.install(Arc::clone(&fresh)).await;
            return Ok(Read {
                entry: fresh,
                tier: Tier::L3,
            });
        }
        Ok(Read { entry, tier })
    }

    async fn load(&self, id: PostId) -> Result<Arc<CachedPost>, StoreError> {
        let stored = timed(PRIMARY, self.store.get(id)).await?;
        if stored.is_some() {
            self.stats.l3.hit()
        } else {
            self.stats.l3.miss()
        }
        Ok(Arc::new(CachedPost::from_store(id, stored.as_ref())))
    }

    /// Reads one feed page, newest first.
    ///
    /// # Errors
    /// When L3 is needed and fails.
    pub async fn feed(&self, query: FeedQuery) -> Result<FeedPage, PostsError> {
        let key = self.l1.feed_key(&query).await;
        let store = Arc::clone(&self.store);
        let q = query.clone();
        let list = self
            .l1
            .feeds
            .entry(key)
            .or_try_insert_with(async move {
                timed(PRIMARY, store.feed(&q))
                    .await
                    .map(Arc::<[PostId]>::from)
            })
            .await?;
        let tier = if list.is_fresh() { Tier::L3 } else { Tier::L1 };
        let ids = list.into_value();
        let next = (ids.len() == usize::from(query.limit))
            .then(|| ids.last().map(|&id| Cursor(id)))
            .flatten();
        let posts = self.get_many(&ids).await?;
        Ok(FeedPage {
            posts: posts.into_iter().filter(|p| p.post.is_some()).collect(),
            next,
            tier,
        })
    }

    /// Posts by id in the given order: L1 hits, the misses in one L3 query.
    async fn get_many(&self, ids: &[PostId]) -> Result<Vec<Arc<CachedPost>>, PostsError> {
        let mut found: HashMap<PostId, Arc<CachedPost>> = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for &id in ids {
            match self.l1.posts.get(&id).await {
                Some(entry) => {
                    self.stats.l1.hit();
                    found.insert(id, entry);
                }
                None => {
                    self.stats.l1.miss();
                    missing.push(id);
                }
            }
        }
        if !missing.is_empty() {
            for stored in timed(PRIMARY, self.store.get_many(&missing)).await? {
                self.stats.l3.hit();
                let entry = Arc::new(CachedPost::from_store(stored.id, Some(&stored)));
                // Older than what a concurrent write installed? Then take the newer one from L1.
                if entry.version < self.l1.floor(stored.id).await {
                    found.insert(stored.id, self.get(stored.id).await?.entry);
                } else {
                    self.l1.install(Arc::clone(&entry)).await;
                    found.insert(stored.id, entry);
                }
            }
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// Creates a post.
    ///
    /// # Errors
    /// When L3 fails.
    pub async fn create(&self, post: NewPost) -> Result<Written, PostsError> {
        let committed = timed(PRIMARY, self.store.create(post, OffsetDateTime::now_utc())).await?;
        Ok(self.apply(committed).await)
    }

    /// Updates a post; `expected` is `If-Match`.
    ///
    /// # Errors
    /// Not found, version mismatch, or L3 failure.
    pub async fn update(
        &self,
        id: PostId,
        patch: PostPatch,
        expected: Option<i64>,
    ) -> Result<Written, PostsError> {
        let committed = timed(
            PRIMARY,
            self.store
                .update(id, patch, expected, OffsetDateTime::now_utc()),
        )
        .await?;
        Ok(self.apply(committed).await)
    }

    /// Deletes a post; `expected` is `If-Match`.
    ///
    /// # Errors
    /// Not found, version mismatch, or L3 failure.
    pub async fn delete(&self, id: PostId, expected: Option<i64>) -> Result<Written, PostsError> {
        let committed = timed(
            PRIMARY,
            self.store.delete(id, expected, OffsetDateTime::now_utc()),
        )
        .await?;
        Ok(self.apply(committed).await)
    }

    /// After commit: L1 (guarded by version), then the tag generations the change affects.
    async fn apply(&self, committed: Committed) -> Written {
        let Committed {
            post,
            kind,
            position,
            lsn,
            previous_tags,
        } = committed;
        let entry = Arc::new(CachedPost::from_store(post.id, Some(&post)));
        self.l1.install(Arc::clone(&entry)).await;
        let tags = match kind {
            EventType::PostUpdated => TagKey::for_retag(&previous_tags, &post.tags),
            EventType::PostDeleted => TagKey::for_membership(&post.author_id, &previous_tags),
            _ => TagKey::for_membership(&post.author_id, &post.tags),
        };
        for tag in tags {
            self.l1.bump(tag).await;
        }
        self.relay.notify_one();
        Written {
            entry,
            token: ConsistencyToken { position, lsn },
        }
    }

    /// Counts a view of a live post (buffered; see [`Posts::flush_views`]).
    ///
    /// # Errors
    /// `NotFound` for a deleted or unknown post; L3 failure when it must be looked up.
    pub async fn count_view(&self, id: PostId) -> Result<(), PostsError> {
        if self.get(id).await?.entry.post.is_none() {
            return Err(StoreError::NotFound(id).into());
        }
        self.views.count(id);
        Ok(())
    }

    /// Writes buffered views to L3 in one transaction and refreshes L1's counts. On failure the
    /// batch goes back into the buffer for the next flush.
    ///
    /// # Errors
    /// When L3 fails.
    pub async fn flush_views(&self) -> Result<usize, PostsError> {
        let batch = self.views.take();
        if batch.is_empty() {
            return Ok(0);
        }
        let totals = match timed(PRIMARY, self.store.add_views(&batch)).await {
            Ok(totals) => totals,
            Err(e) => {
                self.views.restore(batch);
                return Err(e.into());
            }
        };
        for &(id, views) in &totals {
            self.l1.set_views(id, views).await;
        }
        Ok(batch.len())
    }

    /// Views buffered and not yet flushed (posts).
    pub fn pending_views(&self) -> usize {
        self.views.pending()
    }

    /// Waits until a write was committed since the last call (or returns at once if one was).
    pub async fn committed(&self) {
        self.relay.notified().await;
    }

    /// The outbox relay, one round: publishes unpublished outbox rows to the event log in outbox
    /// order, then marks them published and prunes old ones. Rows left by a process that died
    /// between commit and publish are published by the next round of any process. Returns how
    /// many rows it published.
    ///
    /// # Errors
    /// When L3 fails; the rows stay unpublished for the next round. If only the marking fails, the
    /// next round publishes them again (at least once).
    pub async fn relay(&self) -> Result<usize, PostsError> {
        let rows = timed(PRIMARY, self.store.unpublished(RELAY_BATCH)).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        for row in &rows {
            self.publish(row);
        }
        let positions: Vec<i64> = rows.iter().map(|r| r.position).collect();
        let now = OffsetDateTime::now_utc();
        timed(
            PRIMARY,
            self.store.mark_published(&positions, OUTBOX_RETENTION, now),
        )
        .await?;
        Ok(rows.len())
    }

    fn publish(&self, row: &OutboxEvent) {
        match row.change() {
            Some(change) => {
                self.log.append(change);
            }
            None => {
                tracing::warn!(position = row.position, kind = %row.kind, "skipping an outbox row of unknown kind")
            }
        }
    }

    /// The outbox relay for several pods, one round: publishes unpublished outbox rows to the
    /// shared stream, then marks them published. Call it only while holding the relay lease
    /// ([`RedisLog::hold_lease`]); every pod, this one included, sees the events by
    /// [`Posts::follow`].
    ///
    /// # Errors
    /// When L3 or Redis fails; unpublished rows stay for the next round (at least once).
    pub async fn relay_shared(&self, shared: &RedisLog) -> Result<usize, RelayError> {
        let rows = timed(PRIMARY, self.store.unpublished(RELAY_BATCH))
            .await
            .map_err(RelayError::Store)?;
        for row in &rows {
            shared.publish(row).await.map_err(RelayError::Redis)?;
        }
        if !rows.is_empty() {
            let positions: Vec<i64> = rows.iter().map(|r| r.position).collect();
            let now = OffsetDateTime::now_utc();
            timed(
                PRIMARY,
                self.store.mark_published(&positions, OUTBOX_RETENTION, now),
            )
            .await
            .map_err(RelayError::Store)?;
        }
        Ok(rows.len())
    }

    /// Follows the shared stream until `stop` resolves: loads its tail, then appends each new entry
    /// to this pod's event log (at the entry's id) and applies it to L1. A failed read is retried
    /// after a pause; the position it resumes from is the last applied one.
    pub async fn follow(&self, shared: &RedisLog, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut last = loop {
            match shared.tail().await {
                Ok((floor, entries)) => {
                    self.log.start_at(floor);
                    let mut last = floor;
                    for (position, change) in entries {
                        last = position;
                        self.log.append_at(position, change);
                    }
                    break last;
                }
                Err(e) => {
                    set_degraded(EVENTLOG, true);
                    tracing::warn!(error = %e, "reading the shared event log failed; retrying");
                    tokio::select! { () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}, () = &mut stop => return }
                }
            }
        };
        loop {
            let read = tokio::select! {
                read = shared.read_after(last) => read,
                () = &mut stop => return,
            };
            match read {
                Ok(entries) => {
                    set_degraded(EVENTLOG, false);
                    for (position, change) in entries {
                        last = position;
                        self.apply_remote(&change).await;
                        self.log.append_at(position, change);
                    }
                }
                Err(e) => {
                    set_degraded(EVENTLOG, true);
                    tracing::warn!(error = %e, "following the shared event log failed; retrying");
                    tokio::select! { () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}, () = &mut stop => return }
                }
            }
        }
    }

    /// A change committed by any pod, applied to this pod's L1: the new version (or tombstone)
    /// goes in unless a newer one is there, and the feeds it joins or leaves are invalidated.
    async fn apply_remote(&self, change: &Change) {
        let Ok(id) = change.post_id.parse::<PostId>() else {
            return;
        };
        let entry = match &change.post {
            Some(post) => CachedPost::live(post.clone()),
            None => CachedPost {
                id,
                version: change.version,
                post: None,
                json: bytes::Bytes::new(),
            },
        };
        self.l1.install(Arc::new(entry)).await;
        let tags: Vec<String> = change
            .post
            .as_ref()
            .map(|p| p.tags.clone())
            .unwrap_or_default();
        let affected = match change.kind {
            // Tags it left are not in the event: those lists age out with the L1 TTL, and list
            // reads skip posts that are gone.
            EventType::PostUpdated => tags.into_iter().map(TagKey::Tag).collect(),
            _ => TagKey::for_membership(&change.author_id, &tags),
        };
        for tag in affected {
            self.l1.bump(tag).await;
        }
    }

    /// Admin invalidation by tag: every feed list built on these tags becomes unreachable.
    pub async fn invalidate_tags(&self, tags: Vec<TagKey>) {
        for tag in tags {
            self.l1.bump(tag).await;
        }
    }

    /// Admin invalidation by id: the next read goes to L3.
    pub async fn invalidate_ids(&self, ids: &[PostId]) {
        for &id in ids {
            self.l1.invalidate(id).await;
        }
    }
}
