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
//! The background side (relay, heartbeats, following the shared log) is in `relay.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use postcache_api::EventType;
use time::OffsetDateTime;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::eventlog::{EventLog, Position};
use crate::freshness::Freshness;
use crate::l1::{CachedPost, L1};
use crate::l2::L2;
use crate::model::{Cursor, FeedQuery, NewPost, PostId, PostPatch};
use crate::redislog::RedisLog;
use crate::sharedviews::SharedViews;
use crate::stats::{TierStats, timed};
use crate::store::{Committed, OutboxEvent, ReadAt, Store, StoreError, event_payload, kind_name};
use crate::tags::TagKey;
use crate::token::ConsistencyToken;
use crate::views::ViewBuffer;

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
    Redis(#[source] crate::redisconn::RedisCallError),
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
        }
    }

    /// One of several pods sharing `shared`: L1 is trusted only while the shared log proves it
    /// fresh within `staleness` (see [`Freshness`]).
    pub fn with_shared(mut self, shared: Shared, staleness: Duration) -> Posts {
        self.shared = Some(shared);
        self.freshness = Freshness::shared(staleness);
        self
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

    /// Whether L1 may answer a caller holding `token` (or none).
    fn l1_usable(&self, token: Option<&ConsistencyToken>) -> bool {
        match token {
            Some(token) => self.freshness.covers(token),
            None => self.freshness.trusts_l1(),
        }
    }

    /// L2, unless there is none, it failed recently, or the caller's write was not written
    /// through (a token without a log position).
    fn l2_usable(&self, token: Option<&ConsistencyToken>) -> Option<&L2> {
        let shared = self.shared.as_ref()?;
        let written_through = token.is_none_or(|t| t.position != Position::ZERO);
        (written_through && !shared.l2.is_down()).then_some(&shared.l2)
    }

    /// Reads one post for a caller holding `token` (G1, G2) or none (G3): L1 if this pod can
    /// prove it fresh enough, else one coalesced load from L2 or L3.
    ///
    /// # Errors
    /// When L3 is needed and fails.
    pub async fn get(
        &self,
        id: PostId,
        token: Option<&ConsistencyToken>,
    ) -> Result<Read, PostsError> {
        if !self.l1_usable(token) {
            self.stats.l1.miss();
            let (entry, tier) = self.load(id, token).await?;
            self.l1.install(Arc::clone(&entry)).await;
            return Ok(Read { entry, tier });
        }
        if let Some(entry) = self.l1.posts.get(&id).await {
            self.stats.l1.hit();
            return Ok(Read {
                entry,
                tier: Tier::L1,
            });
        }
        self.stats.l1.miss();
        let mut tier = Tier::L1; // stays so when this read joined another's load
        let loaded = self
            .l1
            .posts
            .entry(id)
            .or_try_insert_with(async {
                let (entry, from) = self.load(id, token).await?;
                tier = from;
                Ok::<_, StoreError>(entry)
            })
            .await?;
        let entry = loaded.into_value();
        // A write may have landed while this fill ran; if so, its version is the floor.
        let floor = self.l1.floor(id).await;
        if entry.version < floor {
            self.l1.evict_older_than(id, floor).await;
            let fresh = self.load_l3(id, ReadAt::Primary).await?;
            self.l1.install(Arc::clone(&fresh)).await;
            return Ok(Read {
                entry: fresh,
                tier: Tier::L3,
            });
        }
        Ok(Read { entry, tier })
    }

    /// L2, else L3 under a fill lease (or after waiting for the lease holder's fill).
    async fn load(
        &self,
        id: PostId,
        token: Option<&ConsistencyToken>,
    ) -> Result<(Arc<CachedPost>, Tier), StoreError> {
        let at = ReadAt::Replica(token.map_or(0, |t| t.lsn));
        let Some(l2) = self.l2_usable(token) else {
            return Ok((self.load_l3(id, at).await?, Tier::L3));
        };
        match l2.get(id).await {
            Ok(Some(entry)) => {
                self.stats.l2.hit();
                return Ok((Arc::new(entry), Tier::L2));
            }
            Ok(None) => self.stats.l2.miss(),
            Err(e) => {
                tracing::debug!(error = %e, "L2 unavailable; reading L3");
                return Ok((self.load_l3(id, at).await?, Tier::L3));
            }
        }
        match l2.lease(id).await {
            Ok(Some(lease)) => {
                let entry = self.load_l3(id, at).await?;
                if let Ok(false) = l2.fill(&entry, &lease).await {
                    // A write voided the lease or a newer version is known: prefer that one.
                    if let Ok(Some(newer)) = l2.get(id).await
                        && newer.version > entry.version
                    {
                        return Ok((Arc::new(newer), Tier::L2));
                    }
                }
                Ok((entry, Tier::L3))
            }
            Ok(None) => {
                let deadline = Instant::now() + l2.lease_window();
                while Instant::now() < deadline {
                    tokio::time::sleep(LEASE_POLL).await;
                    match l2.get(id).await {
                        Ok(Some(entry)) => return Ok((Arc::new(entry), Tier::L2)),
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
                Ok((self.load_l3(id, at).await?, Tier::L3))
            }
            Err(_) => Ok((self.load_l3(id, at).await?, Tier::L3)),
        }
    }

    /// One post from L3; a replica's answer older than a version this pod knows is replaced by
    /// the primary's.
    async fn load_l3(&self, id: PostId, at: ReadAt) -> Result<Arc<CachedPost>, StoreError> {
        let mut stored = self.store.get_at(id, at).await?;
        if at != ReadAt::Primary
            && stored.as_ref().map_or(0, |p| p.version) < self.l1.floor(id).await
        {
            stored = self.store.get_at(id, ReadAt::Primary).await?;
        }
        if stored.is_some() {
            self.stats.l3.hit()
        } else {
            self.stats.l3.miss()
        }
        Ok(Arc::new(CachedPost::from_store(id, stored.as_ref())))
    }

    /// Reads one feed page, newest first, for a caller holding `token` or none.
    ///
    /// # Errors
    /// When L3 is needed and fails.
    pub async fn feed(
        &self,
        query: FeedQuery,
        token: Option<&ConsistencyToken>,
    ) -> Result<FeedPage, PostsError> {
        let l1_usable = self.l1_usable(token);
        let (ids, tier) = if l1_usable {
            let key = self.l1.feed_key(&query).await;
            let mut tier = Tier::L1;
            let list = self
                .l1
                .feeds
                .entry(key)
                .or_try_insert_with(async {
                    let (ids, from) = self.load_feed(&query, token).await?;
                    tier = from;
                    Ok::<_, StoreError>(ids)
                })
                .await?;
            (list.into_value(), tier)
        } else {
            self.load_feed(&query, token).await?
        };
        let next = (ids.len() == usize::from(query.limit))
            .then(|| ids.last().map(|&id| Cursor(id)))
            .flatten();
        let posts = self.get_many(&ids, token, l1_usable).await?;
        Ok(FeedPage {
            posts: posts.into_iter().filter(|p| p.post.is_some()).collect(),
            next,
            tier,
        })
    }

    /// A feed page's ids from L2 (keyed by its generations there) or L3.
    async fn load_feed(
        &self,
        query: &FeedQuery,
        token: Option<&ConsistencyToken>,
    ) -> Result<(Arc<[PostId]>, Tier), StoreError> {
        let at = ReadAt::Replica(token.map_or(0, |t| t.lsn));
        let l2 = self.l2_usable(token);
        let key = match l2 {
            Some(l2) => l2.feed_key(query).await.ok(),
            None => None,
        };
        if let (Some(l2), Some(key)) = (l2, &key) {
            if let Ok(Some(ids)) = l2.feed(key).await {
                self.stats.l2.hit();
                return Ok((ids.into(), Tier::L2));
            }
            self.stats.l2.miss();
        }
        let ids = self.store.feed_at(query, at).await?;
        if let (Some(l2), Some(key)) = (l2, &key) {
            let _ = l2.set_feed(key, &ids).await;
        }
        Ok((ids.into(), Tier::L3))
    }

    /// Posts by id in the given order: L1 hits (when usable), then L2, the rest in one L3 query.
    async fn get_many(
        &self,
        ids: &[PostId],
        token: Option<&ConsistencyToken>,
        l1_usable: bool,
    ) -> Result<Vec<Arc<CachedPost>>, PostsError> {
        let mut found: HashMap<PostId, Arc<CachedPost>> = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for &id in ids {
            match self.l1.posts.get(&id).await.filter(|_| l1_usable) {
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
        if let Some(l2) = self.l2_usable(token) {
            let mut still = Vec::new();
            for id in missing {
                match l2.get(id).await {
                    Ok(Some(entry)) => {
                        self.stats.l2.hit();
                        let entry = Arc::new(entry);
                        self.l1.install(Arc::clone(&entry)).await;
                        found.insert(id, entry);
                    }
                    _ => {
                        self.stats.l2.miss();
                        still.push(id);
                    }
                }
            }
            missing = still;
        }
        if !missing.is_empty() {
            let at = ReadAt::Replica(token.map_or(0, |t| t.lsn));
            for stored in self.store.get_many_at(&missing, at).await? {
                self.stats.l3.hit();
                let entry = Arc::new(CachedPost::from_store(stored.id, Some(&stored)));
                // Older than a version this pod knows? Then read that post on its own.
                if entry.version < self.l1.floor(stored.id).await {
                    let fresh = Box::pin(self.get(stored.id, token)).await?;
                    found.insert(stored.id, fresh.entry);
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

    /// After commit: L1 (guarded by version) and its generations; with several pods, L2
    /// write-through and generations, then the event appended to the shared log. The token
    /// carries the log position only when both succeeded (else the caller's reads go to L3).
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
        for tag in &tags {
            self.l1.bump(tag.clone()).await;
        }
        // Alone, this process applied the write already; the outbox position tells writes apart.
        let mut appended = Position {
            epoch: 0,
            seq: u64::try_from(position).unwrap_or_default(),
        };
        if let Some(shared) = &self.shared {
            appended = Position::ZERO;
            let written =
                shared.l2.write(&entry).await.is_ok() && shared.l2.bump(&tags).await.is_ok();
            let row = OutboxEvent {
                position,
                post_id: post.id,
                author_id: post.author_id.clone(),
                kind: kind_name(kind).to_owned(),
                version: post.version,
                payload: event_payload(&post),
                created_at: post.updated_at,
                previous_tags: Some(serde_json::to_string(&previous_tags).unwrap_or_default()),
            };
            match shared.log.publish(&row).await {
                Ok((at, _)) => {
                    self.to_mark
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(position);
                    if written {
                        appended = at;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "appending an event failed; the outbox relay will")
                }
            }
        }
        self.relay.notify_one();
        Written {
            entry,
            token: ConsistencyToken {
                position: appended,
                lsn,
            },
        }
    }

    /// Counts a view of a live post (buffered; see [`Posts::flush_views`]).
    ///
    /// # Errors
    /// `NotFound` for a deleted or unknown post; L3 failure when it must be looked up.
    pub async fn count_view(&self, id: PostId) -> Result<(), PostsError> {
        if self.get(id, None).await?.entry.post.is_none() {
            return Err(StoreError::NotFound(id).into());
        }
        if let Some(shared) = &self.shared
            && shared.views.count(id).await.is_ok()
        {
            return Ok(());
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

    /// Admin invalidation by tag: every feed list built on these tags becomes unreachable.
    pub async fn invalidate_tags(&self, tags: Vec<TagKey>) {
        if let Some(shared) = &self.shared {
            let names: Vec<String> = tags.iter().map(TagKey::name).collect();
            let done = match shared.l2.bump(&tags).await {
                Ok(()) => shared.log.invalidate(&[], &names).await,
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "invalidating feeds in L2 and on other pods failed");
            }
        }
        for tag in tags {
            self.l1.bump(tag).await;
        }
    }

    /// Admin invalidation by id: L1 here, L2, and (through the shared log) every other pod's L1;
    /// the next read loads again.
    pub async fn invalidate_ids(&self, ids: &[PostId]) {
        if let Some(shared) = &self.shared
            && !ids.is_empty()
        {
            let mut done = Ok(());
            for &id in ids {
                done = done.and(shared.l2.invalidate(id).await);
            }
            if let Err(e) = done.and(shared.log.invalidate(ids, &[]).await) {
                tracing::warn!(error = %e, "invalidating posts in L2 and on other pods failed");
            }
        }
        for &id in ids {
            self.l1.invalidate(id).await;
        }
    }
}
