//! The shared tiers on real Redis (standalone and Cluster) and PostgreSQL: L2's compare-and-set,
//! tombstones, floors and fill leases, and the write-back view flush applied exactly once when
//! its flusher dies at either step.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use postcache_cache::{
    CachedPost, EventLog, Filled, L1, L1Config, L2, L2Config, Posts, ReadAt, RedisConfig,
    RedisConn, RedisLog, Shared, SharedViews, Store,
};
use postcache_testkit::{Redis, RedisCluster};

use crate::{new_post, postgres};

fn l2_config() -> L2Config {
    L2Config {
        post_ttl: Duration::from_secs(60),
        feed_ttl: Duration::from_secs(60),
        lease: Duration::from_millis(500),
        floor_ttl: Duration::from_secs(60),
    }
}

fn conn(nodes: Vec<String>, cluster: bool) -> (RedisConn, RedisConfig) {
    let config = RedisConfig {
        nodes,
        cluster,
        timeout: Duration::from_secs(2),
        ca_pem: None,
    };
    (RedisConn::open(&config).unwrap(), config)
}

/// A live post of `version` whose title names the version (so a read shows which body it got).
pub(crate) fn post(id: i64, version: i64) -> CachedPost {
    let mut live = CachedPost::live(postcache_api::Post {
        id: id.to_string(),
        author_id: "ann".into(),
        title: format!("v{version}"),
        body: "b".into(),
        tags: vec![],
        version,
        views: 0,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
    });
    live.id = id;
    live
}

/// Every rule of L2's scripts, on one Redis deployment.
async fn l2_refuses_stale_versions_and_voided_leases(l2: &L2) {
    let id = 4242;
    // Write-through: newer versions replace older ones, never the other way round.
    l2.write(&post(id, 2)).await.unwrap();
    l2.write(&post(id, 1)).await.unwrap();
    assert_eq!(l2.get(id).await.unwrap().unwrap().version, 2);

    // A reader wins the lease, a writer commits v3 meanwhile: the reader's v2 fill is refused.
    l2.invalidate(id).await.unwrap();
    let lease = l2
        .lease(id)
        .await
        .unwrap()
        .expect("the first reader wins the lease");
    assert!(
        l2.lease(id).await.unwrap().is_none(),
        "one loader per lease window"
    );
    l2.write(&post(id, 3)).await.unwrap();
    assert_eq!(
        l2.fill(&post(id, 2), &lease).await.unwrap(),
        Filled::LeaseLost
    );
    assert_eq!(l2.get(id).await.unwrap().unwrap().version, 3);

    // Evicted value, a slow reader with a fresh lease and an old version (a lagging replica):
    // the floor left by the write refuses it.
    l2.invalidate(id).await.unwrap();
    let lease = l2.lease(id).await.unwrap().unwrap();
    assert_eq!(
        l2.fill(&post(id, 2), &lease).await.unwrap(),
        Filled::Stale,
        "a fill below the floor is stale: the reader must read a newer source"
    );
    assert_eq!(l2.get(id).await.unwrap(), None);
    let lease = l2.lease(id).await.unwrap().unwrap();
    assert_eq!(l2.fill(&post(id, 3), &lease).await.unwrap(), Filled::Yes);
    assert_eq!(l2.get(id).await.unwrap().unwrap().version, 3);

    // A change relayed late (v2 after v3) never comes back, even after v3 was evicted.
    l2.invalidate(id).await.unwrap();
    l2.write(&post(id, 2)).await.unwrap();
    assert_eq!(
        l2.get(id).await.unwrap(),
        None,
        "v2 is below the floor v3 left"
    );

    // A delete leaves a versioned tombstone that older versions cannot overwrite.
    let tombstone = CachedPost {
        id,
        version: 4,
        post: None,
        json: Bytes::new(),
    };
    l2.write(&tombstone).await.unwrap();
    l2.write(&post(id, 3)).await.unwrap();
    assert_eq!(l2.get(id).await.unwrap(), Some(tombstone));
}

#[tokio::test]
async fn l2_on_standalone_redis_refuses_stale_fills() {
    let redis = Redis::start();
    let (conn, _) = conn(vec![redis.url()], false);
    l2_refuses_stale_versions_and_voided_leases(&L2::new(conn, l2_config())).await;
}

#[tokio::test]
async fn l2_on_redis_cluster_refuses_stale_fills() {
    let cluster = RedisCluster::start();
    let (conn, _) = conn(cluster.urls(), true);
    l2_refuses_stale_versions_and_voided_leases(&L2::new(conn, l2_config())).await;
}

/// A pod of its own on `store` and `redis` (only its flush is used here).
fn pod(store: Arc<dyn Store>, redis: &Redis) -> (Posts, Shared) {
    let (conn, config) = conn(vec![redis.url()], false);
    let shared = Shared {
        l2: L2::new(conn.clone(), l2_config()),
        log: RedisLog::new(conn.clone(), &config, 100).unwrap(),
        views: SharedViews::new(conn),
    };
    let posts = Posts::new(
        store,
        L1::new(L1Config {
            max_entries: 100,
            max_bytes: 1 << 30,
            ttl: Duration::from_secs(60),
        }),
        Arc::new(EventLog::new(100, 16)),
    )
    .with_shared(shared.clone(), Duration::from_secs(1));
    (posts, shared)
}

#[tokio::test]
async fn each_view_batch_is_applied_once_even_when_its_flusher_dies() {
    let redis = Redis::start();
    let store: Arc<dyn Store> = Arc::new(postgres().await);
    let id = store
        .create(new_post("ann", &[]), time::OffsetDateTime::now_utc())
        .await
        .unwrap()
        .post
        .id;
    let views = |store: Arc<dyn Store>| async move {
        store.get(id, ReadAt::Primary).await.unwrap().unwrap().views
    };
    let (posts, shared) = pod(Arc::clone(&store), &redis);

    // Flusher 1 takes a batch of 5 and dies before writing it: the next flush applies it.
    for _ in 0..5 {
        shared.views.count(id).await.unwrap();
    }
    let taken = shared.views.begin().await.unwrap().unwrap();
    assert_eq!(taken.counts, vec![(id, 5)]);
    for _ in 0..2 {
        shared.views.count(id).await.unwrap(); // counted meanwhile: the next batch
    }
    assert_eq!(posts.flush_shared_views(&shared).await.unwrap(), 1);
    assert_eq!(views(Arc::clone(&store)).await, 5);

    // Flusher 2 takes the next batch, commits it, and dies before clearing it: the next flush
    // finds it applied and only clears it.
    let taken = shared.views.begin().await.unwrap().unwrap();
    assert_eq!(taken.counts, vec![(id, 2)]);
    let applied = store
        .add_views_once(&taken.id, &taken.counts)
        .await
        .unwrap();
    assert_eq!(applied, Some(vec![(id, 7)]));
    assert_eq!(posts.flush_shared_views(&shared).await.unwrap(), 0);
    assert_eq!(views(Arc::clone(&store)).await, 7, "not counted twice");
    assert_eq!(posts.flush_shared_views(&shared).await.unwrap(), 0);
    assert_eq!(shared.views.pending().await.unwrap(), 0);
}

/// A pod that serves (and fills L1) before its follower has read the log, as a restarted pod
/// does: writes appended meanwhile are in (or, after many, before) the tail the follower starts
/// from, never "new" to it. Once a heartbeat proves it fresh, it must not answer from what it
/// filled before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_pod_filled_before_its_follower_started_is_not_served_once_trusted() {
    let redis = Redis::start();
    let store: Arc<dyn Store> = Arc::new(postgres().await);
    let (writer, writer_shared) = pod(Arc::clone(&store), &redis);
    let (reader, reader_shared) = pod(Arc::clone(&store), &redis);
    let author = postcache_testkit::unique_name("tail");
    let id = writer
        .create(new_post(&author, &[]))
        .await
        .unwrap()
        .entry
        .id;
    let feed = || postcache_cache::FeedQuery {
        author_id: Some(author.clone()),
        tag: None,
        limit: 20,
        cursor: None,
    };

    // Starting: it answers (from L3, filling L1) before its follower runs.
    assert_eq!(reader.get(id, None).await.unwrap().entry.version, 1);
    assert_eq!(reader.feed(feed(), None).await.unwrap().posts.len(), 1);
    // Another pod writes meanwhile: both entries land before the follower's first read.
    let patch = postcache_cache::PostPatch {
        title: Some("v2".into()),
        body: None,
        tags: None,
    };
    writer.update(id, patch, None).await.unwrap();
    writer.create(new_post(&author, &[])).await.unwrap();
    // And more than the tail holds after them (a follower that could not reach Redis for a while).
    let other = postcache_testkit::unique_name("other");
    for _ in 0..120 {
        writer.create(new_post(&other, &[])).await.unwrap();
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = Arc::new(reader);
    let following = tokio::spawn({
        let reader = Arc::clone(&reader);
        async move {
            reader
                .follow(&reader_shared.log, async {
                    let _ = stop_rx.await;
                })
                .await
        }
    });
    // The relay's heartbeat proves the follower fresh.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reader.freshness().trusts_l1() {
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat proved the reader fresh"
        );
        writer.relay_shared(&writer_shared).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read = reader.get(id, None).await.unwrap();
    assert_eq!(read.entry.version, 2, "served from {:?}", read.tier);
    let page = reader.feed(feed(), None).await.unwrap();
    assert_eq!(page.posts.len(), 2, "feed page from {:?}", page.tier);
    let _ = stop_tx.send(());
    following.await.unwrap();
}
