//! L1: this pod's in-process cache (moka: TinyLFU admission, size-bounded, TTL as a safety net).
//!
//! It holds posts as the response bytes already serialized (a hit does no JSON encoding), feed
//! pages as id lists keyed by the generations of the tags they depend on, and per-post version
//! floors. moka's `invalidate` does not cancel a fill that is already running, so a slow fill could
//! install a version older than one a write just put there; every write first raises the post's
//! floor, and a fill older than the floor is removed again (see `Posts::get`). Nothing older than
//! the floor is ever installed, so a change relayed late (v2 after v3) cannot bring v2 back after
//! v3 was evicted or invalidated. Floors are kept in LRU order (always admitted: TinyLFU could
//! refuse a floor, and a floor refused is a floor forgotten).
//!
//! A tag's generation carries the commit LSN of the newest write that bumped it: a feed page for
//! that generation is loaded only from a source that has replayed it (DESIGN §4).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use moka::future::Cache;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use postcache_api::Post;

use crate::model::{FeedQuery, PostId, StoredPost};
use crate::tags::TagKey;

/// Bounds of the in-process cache.
#[derive(Debug, Clone, Copy)]
pub struct L1Config {
    /// Posts and feed pages each hold at most this many entries.
    pub max_entries: u64,
    /// Posts and feed pages each hold at most this many bytes (estimated).
    pub max_bytes: u64,
    /// Safety net: an entry older than this is dropped even if nothing invalidated it.
    pub ttl: Duration,
}

/// A post as L1 holds it: the wire form and its JSON, or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPost {
    /// The post's id.
    pub id: PostId,
    /// Its version (0 for an id that does not exist).
    pub version: i64,
    /// `None` when the post is deleted or never existed (reads answer 404).
    pub post: Option<Post>,
    /// `post` serialized, ready to be the response body.
    pub json: Bytes,
}

impl CachedPost {
    /// Estimated bytes held: the JSON, the post's strings beside it, and the structs.
    pub fn weight(&self) -> usize {
        2 * self.json.len() + 192
    }

    /// The cache form of what L3 returned (`None`: the id does not exist).
    pub fn from_store(id: PostId, stored: Option<&StoredPost>) -> CachedPost {
        match stored {
            Some(p) if !p.deleted => CachedPost::live(p.to_api()),
            Some(p) => CachedPost {
                id,
                version: p.version,
                post: None,
                json: Bytes::new(),
            },
            None => CachedPost {
                id,
                version: 0,
                post: None,
                json: Bytes::new(),
            },
        }
    }

    /// A live post, serialized once here.
    pub fn live(post: Post) -> CachedPost {
        // Serializing plain strings and integers cannot fail.
        let json = Bytes::from(serde_json::to_vec(&post).unwrap_or_default());
        CachedPost {
            id: post.id.parse().unwrap_or_default(),
            version: post.version,
            post: Some(post),
            json,
        }
    }
}

/// Key of a cached feed page: the query and the generations it was built under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FeedKey {
    query: FeedQuery,
    generations: [u64; 2],
}

impl FeedKey {
    /// Estimated bytes of the key.
    fn weight(&self) -> usize {
        let FeedQuery { author_id, tag, .. } = &self.query;
        128 + author_id.as_ref().map_or(0, String::len) + tag.as_ref().map_or(0, String::len)
    }
}

/// Generations are drawn from one counter, so a generation evicted and later re-created never
/// equals an old one and can never make a stale list reachable again.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// The in-process tier. Cheap to clone (moka caches are handles).
#[derive(Clone)]
pub struct L1 {
    pub(crate) posts: Cache<PostId, Arc<CachedPost>>,
    pub(crate) feeds: Cache<FeedKey, Arc<[PostId]>>,
    floors: Cache<PostId, i64>,
    /// Per tag: (generation, LSN of the newest write that bumped it).
    generations: Cache<TagKey, (u64, u64)>,
}

impl L1 {
    /// An empty L1 with the given bounds.
    pub fn new(config: L1Config) -> L1 {
        let L1Config {
            max_entries,
            max_bytes,
            ttl,
        } = config;
        // One capacity bounds both: the budget is in bytes, and no entry weighs less than its
        // share of the entry bound, so there are never more than `max_entries` either.
        let max_entries = max_entries.max(1);
        let max_bytes = max_bytes.max(max_entries);
        let least = u32::try_from(max_bytes.div_ceil(max_entries)).unwrap_or(u32::MAX);
        let weigh = move |bytes: usize| u32::try_from(bytes).unwrap_or(u32::MAX).max(least);
        L1 {
            posts: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(move |_, post: &Arc<CachedPost>| weigh(post.weight()))
                .time_to_live(ttl)
                .build(),
            feeds: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(move |key: &FeedKey, ids: &Arc<[PostId]>| {
                    weigh(key.weight() + 8 * ids.len())
                })
                .time_to_live(ttl)
                .build(),
            // A floor only matters while a fill is in flight; a generous TTL covers any fill.
            floors: Cache::builder()
                .max_capacity(max_entries.saturating_mul(2))
                .eviction_policy(EvictionPolicy::lru())
                .time_to_live(ttl + Duration::from_secs(60))
                .build(),
            generations: Cache::builder()
                .max_capacity(max_entries)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
        }
    }

    /// The newest version this pod knows of `id` (0 if none).
    pub(crate) async fn floor(&self, id: PostId) -> i64 {
        self.floors.get(&id).await.unwrap_or(0)
    }

    /// Records that version `version` of `id` exists.
    pub(crate) async fn raise_floor(&self, id: PostId, version: i64) {
        self.floors
            .entry(id)
            .and_upsert_with(
                |cur| async move { cur.map_or(version, |c| c.into_value().max(version)) },
            )
            .await;
    }

    /// Installs `entry` unless L1 already holds the same or a newer version, or a newer one is
    /// known (the floor); `false` when it was older than the floor. Raises the floor first, so
    /// that a concurrent older fill is caught by the check after it (see the module docs).
    pub(crate) async fn install(&self, entry: Arc<CachedPost>) -> bool {
        if entry.version < self.floor(entry.id).await {
            return false;
        }
        self.raise_floor(entry.id, entry.version).await;
        self.posts
            .entry(entry.id)
            .and_compute_with(|cur| async move {
                match cur {
                    Some(cur) if cur.value().version >= entry.version => Op::Nop,
                    _ => Op::Put(entry),
                }
            })
            .await;
        true
    }

    /// Replaces the view count of a cached live post (views do not change the version).
    pub(crate) async fn set_views(&self, id: PostId, views: i64) {
        self.posts
            .entry(id)
            .and_compute_with(|cur| async move {
                match cur.and_then(|c| c.into_value().post.clone()) {
                    Some(mut post) if post.views != views => {
                        post.views = views;
                        Op::Put(Arc::new(CachedPost::live(post)))
                    }
                    _ => Op::Nop,
                }
            })
            .await;
    }

    /// Drops `id` from L1 (admin invalidation).
    pub(crate) async fn invalidate(&self, id: PostId) {
        self.posts.invalidate(&id).await;
    }

    /// The current generation of `tag` and its LSN; one forgotten (evicted) comes back as a new
    /// generation at `unknown_lsn` (what a write to the tag could at most have had).
    async fn generation(&self, tag: TagKey, unknown_lsn: u64) -> (u64, u64) {
        self.generations
            .get_with(tag, async move {
                (NEXT_GENERATION.fetch_add(1, Ordering::Relaxed), unknown_lsn)
            })
            .await
    }

    /// Makes every feed list built on `tag` unreachable; the next ones need a source that has
    /// replayed `lsn` (the bumping write's commit).
    pub(crate) async fn bump(&self, tag: TagKey, lsn: u64) {
        let next = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        self.generations
            .entry(tag)
            .and_upsert_with(
                |cur| async move { (next, cur.map_or(lsn, |c| c.into_value().1.max(lsn))) },
            )
            .await;
    }

    /// The key a feed page is cached under right now, and the LSN its source must have replayed.
    /// Read *before* querying L3: a list built from a snapshot older than a concurrent write then
    /// lands under the generation that write bumps.
    pub(crate) async fn feed_key(&self, query: &FeedQuery, unknown_lsn: u64) -> (FeedKey, u64) {
        let mut generations = [0; 2];
        let mut lsn = 0;
        for (slot, tag) in generations.iter_mut().zip(query.tags()) {
            let (generation, tag_lsn) = self.generation(tag, unknown_lsn).await;
            *slot = generation;
            lsn = lsn.max(tag_lsn);
        }
        let key = FeedKey {
            query: query.clone(),
            generations,
        };
        (key, lsn)
    }

    /// Entries held now (posts, feed pages), after pending maintenance.
    pub async fn entry_counts(&self) -> (u64, u64) {
        self.posts.run_pending_tasks().await;
        self.feeds.run_pending_tasks().await;
        (self.posts.entry_count(), self.feeds.entry_count())
    }
}

#[cfg(test)]
mod proptests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// One step on a post's L1 state.
    #[derive(Debug, Clone)]
    enum Op {
        /// A fill or a write installs this version.
        Install(PostId, i64),
        /// An applied event records that this version exists (without a body to install).
        RaiseFloor(PostId, i64),
        /// Admin invalidation.
        Invalidate(PostId),
        /// moka dropping the entry on its own (capacity, TTL): the floor stays.
        Evict(PostId),
    }

    /// Steps over three ids and versions 0..8, so that installs often fall below the floor.
    fn op() -> impl Strategy<Value = Op> {
        let id = || 1..4i64;
        let version = || 0..8i64;
        prop_oneof![
            4 => (id(), version()).prop_map(|(id, v)| Op::Install(id, v)),
            1 => (id(), version()).prop_map(|(id, v)| Op::RaiseFloor(id, v)),
            1 => id().prop_map(Op::Invalidate),
            1 => id().prop_map(Op::Evict),
        ]
    }

    /// What L1 should hold for one id.
    #[derive(Debug, Default)]
    struct Expected {
        floor: i64,
        cached: Option<i64>,
        /// The newest accepted install since the entry was last dropped.
        accepted: Option<i64>,
    }

    fn entry(id: PostId, version: i64) -> Arc<CachedPost> {
        Arc::new(CachedPost {
            id,
            version,
            post: None,
            json: Bytes::from(format!("v{version}")),
        })
    }

    fn sized(id: PostId, bytes: usize) -> Arc<CachedPost> {
        Arc::new(CachedPost {
            id,
            version: 1,
            post: None,
            json: Bytes::from(vec![b'x'; bytes]),
        })
    }

    #[tokio::test]
    async fn memory_is_bounded_in_bytes_and_in_entries() {
        let l1 = L1::new(L1Config {
            max_entries: 10_000,
            max_bytes: 1 << 20,
            ttl: Duration::from_secs(600),
        });
        for id in 1..=200 {
            l1.install(sized(id, 64 * 1024)).await;
        }
        l1.posts.run_pending_tasks().await;
        let held: usize = l1.posts.iter().map(|(_, p)| p.json.len()).sum();
        assert!(
            held <= 1 << 20,
            "{held} bytes of 64 KiB posts held under a 1 MiB bound"
        );
        assert!(l1.posts.entry_count() > 0, "it still caches what fits");

        let small = L1::new(L1Config {
            max_entries: 10,
            max_bytes: 1 << 30,
            ttl: Duration::from_secs(600),
        });
        for id in 1..=200 {
            small.install(sized(id, 100)).await;
        }
        small.posts.run_pending_tasks().await;
        assert!(
            small.posts.entry_count() <= 10,
            "{}",
            small.posts.entry_count()
        );
    }

    /// Runs `ops` on a fresh L1 and checks it against [`Expected`] after every step.
    async fn follows_the_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let l1 = L1::new(L1Config {
            max_entries: 1000,
            max_bytes: 1 << 30,
            ttl: Duration::from_secs(600),
        });
        let mut model: HashMap<PostId, Expected> = HashMap::new();
        for op in ops {
            let id = match op {
                Op::Install(id, _) | Op::RaiseFloor(id, _) | Op::Invalidate(id) | Op::Evict(id) => {
                    id
                }
            };
            let m = model.entry(id).or_default();
            let before = m.cached;
            let mut installed = None;
            match op {
                Op::Install(_, v) => {
                    let accepted = l1.install(entry(id, v)).await;
                    installed = Some((v, accepted));
                    prop_assert_eq!(accepted, v >= m.floor, "{:?} with floor {}", op, m.floor);
                    if accepted {
                        m.floor = v;
                        m.cached = Some(m.cached.map_or(v, |c| c.max(v)));
                        m.accepted = Some(m.accepted.map_or(v, |a| a.max(v)));
                    }
                }
                Op::RaiseFloor(_, v) => {
                    l1.raise_floor(id, v).await;
                    m.floor = m.floor.max(v);
                }
                Op::Invalidate(_) => {
                    l1.invalidate(id).await;
                    (m.cached, m.accepted) = (None, None);
                }
                Op::Evict(_) => {
                    l1.posts.invalidate(&id).await;
                    (m.cached, m.accepted) = (None, None);
                }
            }
            let cached = l1.posts.get(&id).await;
            let version = cached.as_ref().map(|c| c.version);
            prop_assert_eq!(version, m.cached, "after {:?}", op);
            if let Some(c) = &cached {
                prop_assert_eq!(
                    &c.json,
                    &entry(id, c.version).json,
                    "the body of that version"
                );
            }
            prop_assert_eq!(l1.floor(id).await, m.floor, "after {:?}", op);
            // The invariants the model encodes, spelled out.
            match installed {
                Some((v, true)) => prop_assert!(version >= Some(v), "an accepted install shows"),
                Some((_, false)) => {
                    prop_assert_eq!(version, before, "a refused install never shows")
                }
                None => {}
            }
            prop_assert!(version >= m.accepted, "never below an accepted install");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn l1_installs_follow_the_floor_model(ops in proptest::collection::vec(op(), 1..60)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
            rt.block_on(follows_the_model(ops))?;
        }
    }
}
