//! The read path of [`Posts`]: L1 when this pod can prove it fresh for the caller, else one
//! coalesced load from L2 (under a fill lease) or L3 (a replica that covers the caller's LSN).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::{FeedPage, Fill, FlightKey, LEASE_POLL, Posts, PostsError, Read, Tier};
use crate::eventlog::Position;
use crate::l1::CachedPost;
use crate::model::{Cursor, FeedQuery, PostId};
use crate::redis::l2::{Filled, L2};
use crate::store::{ReadAt, StoreError};
use crate::token::ConsistencyToken;

impl Posts {
    /// Whether L1 may answer a caller holding `token` (or none).
    fn l1_usable(&self, token: Option<&ConsistencyToken>) -> bool {
        match token {
            Some(token) => self.freshness.covers(token),
            None => self.freshness.trusts_l1(),
        }
    }

    /// L2, unless there is none, it failed recently, this pod cannot prove it fresh (G3: without
    /// the log's heartbeats nothing shows that a write did not fail to reach it), or the caller's
    /// write was not written through (a token without a log position).
    fn l2_usable(&self, token: Option<&ConsistencyToken>) -> Option<&L2> {
        let shared = self.shared.as_ref()?;
        let written_through =
            token.is_none_or(|t| t.position != Position::ZERO || self.freshness.in_log(t.lsn));
        (written_through && self.freshness.trusts_l1() && !shared.l2.is_down())
            .then_some(&shared.l2)
    }

    /// Where an L3 read for a caller holding `token` may run: a replica that has replayed the
    /// caller's write, everything the log's last heartbeat vouched for, and `at_least`; or, on a
    /// pod that cannot prove itself fresh, the newest data there is.
    pub(crate) fn l3_at(&self, token: Option<&ConsistencyToken>, at_least: u64) -> ReadAt {
        if !self.freshness.trusts_l1() {
            return ReadAt::Latest;
        }
        let lsn = token.map_or(0, |t| t.lsn);
        ReadAt::Replica(lsn.max(self.freshness.proven_lsn()).max(at_least))
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
        if self.l1_usable(token)
            && let Some(entry) = self.l1.posts.get(&id).await
        {
            self.stats.l1.hit();
            return Ok(Read {
                entry,
                tier: Tier::L1,
            });
        }
        self.stats.l1.miss();
        // Boxed: the load's state (the coalescing, L2, L3) is 4.6 KiB, and inline it would make
        // every read's future that large, hits included (each one allocated and copied).
        Box::pin(self.get_missed(id, token)).await
    }

    /// [`Posts::get`] after an L1 miss.
    async fn get_missed(
        &self,
        id: PostId,
        token: Option<&ConsistencyToken>,
    ) -> Result<Read, PostsError> {
        // Concurrent readers share one load; the entry goes as soon as the load is done, so later
        // readers load again (they may need a newer version).
        let key: FlightKey = (
            id,
            token.map(|t| (t.position, t.lsn)),
            self.freshness.trusts_l1(),
        );
        let shared = self
            .inflight
            .entry(key)
            .or_try_insert_with(async {
                // A load that ended between this reader's miss and here has filled L1.
                if self.l1_usable(token)
                    && let Some(entry) = self.l1.posts.get(&id).await
                {
                    return Ok((entry, Tier::L1));
                }
                self.load(id, token).await
            })
            .await?;
        let loaded_here = shared.is_fresh();
        let (entry, tier) = shared.into_value();
        // A write may have landed while the load ran: an entry older than the floor is refused.
        let installed = self.l1.install(Arc::clone(&entry)).await;
        // Only now: a reader arriving between the end of the flight and the fill of L1 would
        // load again.
        if loaded_here {
            self.inflight.invalidate(&key).await;
        }
        if !installed {
            let fresh = self.load_l3(id, ReadAt::Latest).await?;
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
        let at = self.l3_at(token, 0);
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
                // The previous holder may have filled between this reader's miss and its lease.
                if let Ok(Some(entry)) = l2.get(id).await {
                    return Ok((Arc::new(entry), Tier::L2));
                }
                let entry = self.load_l3(id, at).await?;
                match l2.fill(&entry, &lease).await {
                    Ok(Filled::Yes) => {
                        self.fills.record(Fill::Post(id));
                        Ok((entry, Tier::L3))
                    }
                    Err(_) => Ok((entry, Tier::L3)),
                    Ok(lost) => {
                        // A write voided the lease or a newer version is known: prefer that one.
                        if let Ok(Some(newer)) = l2.get(id).await
                            && newer.version > entry.version
                        {
                            return Ok((Arc::new(newer), Tier::L2));
                        }
                        if lost == Filled::Stale {
                            // Newer than what the source had, and not in L2: the primary has it.
                            return Ok((self.load_l3(id, ReadAt::Latest).await?, Tier::L3));
                        }
                        Ok((entry, Tier::L3))
                    }
                }
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
        let mut stored = self.store.get(id, at).await?;
        if at != ReadAt::Primary
            && stored.as_ref().map_or(0, |p| p.version) < self.l1.floor(id).await
        {
            stored = self.store.get(id, ReadAt::Primary).await?;
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
            let (key, lsn) = self.l1.feed_key(&query, self.freshness.known_lsn()).await;
            let mut tier = Tier::L1;
            let list = self
                .l1
                .feeds
                .entry(key)
                .or_try_insert_with(async {
                    let (ids, from) = self.load_feed(&query, token, lsn).await?;
                    tier = from;
                    Ok::<_, StoreError>(ids)
                })
                .await?;
            (list.into_value(), tier)
        } else {
            self.load_feed(&query, token, 0).await?
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

    /// A feed page's ids from L2 (keyed by its generations there) or L3, from a source that has
    /// replayed every write that bumped those generations (and `lsn`, L1's view of them): a page
    /// is shared, so it must hold what any reader of it could already have had acknowledged.
    async fn load_feed(
        &self,
        query: &FeedQuery,
        token: Option<&ConsistencyToken>,
        lsn: u64,
    ) -> Result<(Arc<[PostId]>, Tier), StoreError> {
        let l2 = self.l2_usable(token);
        let key = match l2 {
            Some(l2) => l2.feed_key(query).await.ok(),
            None => None,
        };
        if let (Some(l2), Some((key, _))) = (l2, &key) {
            if let Ok(Some(ids)) = l2.feed(key).await {
                self.stats.l2.hit();
                return Ok((ids.into(), Tier::L2));
            }
            self.stats.l2.miss();
        }
        let at = self.l3_at(token, lsn.max(key.as_ref().map_or(0, |k| k.1)));
        let ids = self.store.feed(query, at).await?;
        if let (Some(l2), Some((key, _))) = (l2, &key)
            && l2.set_feed(key, &ids).await.is_ok()
        {
            self.fills.record(Fill::Feed(key.clone()));
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
            let at = self.l3_at(token, 0);
            for stored in self.store.get_many(&missing, at).await? {
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
}
