//! The L1 races of DESIGN.md §4, forced rather than hoped for.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use postcache_cache::{EventLog, L1, L1Config, PostPatch, Posts, Tier};

use crate::gated::Gated;
use crate::{new_post, sqlite};

fn log() -> Arc<EventLog> {
    Arc::new(EventLog::new(100, 16))
}

fn l1() -> L1 {
    L1::new(L1Config {
        max_entries: 1000,
        max_bytes: 1 << 30,
        ttl: Duration::from_secs(60),
    })
}

/// A post at version 1 that is in L3 but not in L1, behind a store whose reads the test can hold.
async fn cold_post_behind_a_gate() -> (Arc<Gated>, Arc<Posts>, i64, tempfile::TempDir) {
    let (store, dir) = sqlite().await;
    let gated = Gated::new(store);
    let posts = Arc::new(Posts::new(gated.clone(), l1(), log()));
    let id = posts.create(new_post("ann", &[])).await.unwrap().entry.id;
    posts.invalidate_ids(&[id]).await;
    (gated, posts, id, dir)
}

/// A reader misses L1 and reads v1 from L3; before its fill lands, a writer commits v2 and puts it
/// in L1. moka's fill then installs v1 over v2 unless the version floor catches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fill_never_installs_a_version_older_than_a_concurrent_write() {
    let (gated, posts, id, _dir) = cold_post_behind_a_gate().await;

    gated.hold_next_get();
    let held = gated.held.notified();
    let reader = tokio::spawn({
        let posts = Arc::clone(&posts);
        async move { posts.get(id, None).await.unwrap() }
    });
    held.await; // the reader has read version 1 from L3 and is stalled before filling L1

    let patch = PostPatch {
        title: Some("v2".into()),
        ..PostPatch::default()
    };
    let update = tokio::time::timeout(Duration::from_secs(10), posts.update(id, patch, None))
        .await
        .expect("the write completes while the fill is held (moka does not serialize them)")
        .unwrap();
    assert_eq!(update.entry.version, 2);

    gated.release.notify_one();
    let read = reader.await.unwrap();
    assert_eq!(
        read.entry.version, 2,
        "the racing reader gets the newer version, not its stale fill"
    );
    let again = posts.get(id, None).await.unwrap();
    assert_eq!(
        (again.entry.version, again.tier),
        (2, Tier::L1),
        "L1 holds version 2"
    );
    assert_eq!(again.entry.post.as_ref().unwrap().title, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_key_make_one_l3_read() {
    let (gated, posts, id, _dir) = cold_post_behind_a_gate().await;

    // Hold the first load so that every other reader arrives while it is in flight.
    gated.hold_next_get();
    let held = gated.held.notified();
    let readers: Vec<_> = (0..64)
        .map(|_| {
            let posts = Arc::clone(&posts);
            tokio::spawn(async move { posts.get(id, None).await.unwrap().entry.version })
        })
        .collect();
    held.await;
    gated.release.notify_one();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), 1);
    }
    assert_eq!(
        gated.gets.load(Ordering::SeqCst),
        1,
        "64 concurrent misses, one L3 read"
    );
}

#[tokio::test]
async fn a_delete_is_served_as_gone_from_l1_and_feeds_drop_it_at_once() {
    let (store, _dir) = sqlite().await;
    let posts = Posts::new(store, l1(), log());
    let keep = posts
        .create(new_post("ann", &["t"]))
        .await
        .unwrap()
        .entry
        .id;
    let gone = posts
        .create(new_post("ann", &["t"]))
        .await
        .unwrap()
        .entry
        .id;
    let query = postcache_cache::FeedQuery {
        author_id: None,
        tag: Some("t".into()),
        limit: 10,
        cursor: None,
    };
    let ids = |page: postcache_cache::FeedPage| page.posts.iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(
        ids(posts.feed(query.clone(), None).await.unwrap()),
        vec![gone, keep]
    );
    let cached = posts.feed(query.clone(), None).await.unwrap();
    assert_eq!(
        cached.tier,
        Tier::L1,
        "the second read of a feed page is an L1 hit"
    );

    posts.delete(gone, None).await.unwrap();
    let read = posts.get(gone, None).await.unwrap();
    assert!(read.entry.post.is_none() && read.tier == Tier::L1);
    assert_eq!(
        ids(posts.feed(query, None).await.unwrap()),
        vec![keep],
        "the tag generation moved on"
    );
}
