//! The store contract, run on both implementations.

use std::collections::HashSet;
use std::sync::Arc;

use postcache_api::EventType;
use postcache_cache::{Cursor, FeedQuery, PostPatch, ReadAt, Store, StoreError};
use time::OffsetDateTime;

use crate::{new_post, postgres, sqlite};

async fn writes_bump_versions_and_guard_if_match(store: &dyn Store) {
    let now = OffsetDateTime::now_utc();
    let created = store.create(new_post("ann", &["rust"]), now).await.unwrap();
    assert_eq!(
        (created.post.version, created.kind),
        (1, EventType::PostCreated)
    );
    let id = created.post.id;

    let patch = PostPatch {
        title: Some("new title".into()),
        ..PostPatch::default()
    };
    let updated = store.update(id, patch.clone(), Some(1), now).await.unwrap();
    assert_eq!(updated.post.version, 2);
    assert_eq!(updated.post.title, "new title");
    assert!(updated.position > created.position, "outbox positions grow");

    let stale = store.update(id, patch, Some(1), now).await.unwrap_err();
    assert!(
        matches!(
            stale,
            StoreError::VersionMismatch {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{stale:?}"
    );

    let deleted = store.delete(id, None, now).await.unwrap();
    assert_eq!((deleted.post.version, deleted.post.deleted), (3, true));
    let tombstone = store.get(id, ReadAt::Primary).await.unwrap().unwrap();
    assert!(
        tombstone.deleted && tombstone.version == 3,
        "a delete keeps a versioned tombstone"
    );
    assert!(matches!(
        store.delete(id, None, now).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store
            .get(id + 1000, ReadAt::Primary)
            .await
            .unwrap()
            .is_none()
    );
}

async fn feeds_filter_and_page_newest_first(store: &dyn Store) {
    let now = OffsetDateTime::now_utc();
    let mut ids = Vec::new();
    for i in 0..7 {
        let tags: &[&str] = if i % 2 == 0 { &["even"] } else { &["odd"] };
        let author = if i < 4 { "ann" } else { "bob" };
        ids.push(
            store
                .create(new_post(author, tags), now)
                .await
                .unwrap()
                .post
                .id,
        );
    }
    let page = |author: Option<&str>, tag: Option<&str>, cursor: Option<Cursor>| FeedQuery {
        author_id: author.map(str::to_owned),
        tag: tag.map(str::to_owned),
        limit: 3,
        cursor,
    };
    let newest_first: Vec<i64> = ids.iter().rev().copied().collect();
    assert_eq!(
        store
            .feed(&page(None, None, None), ReadAt::Primary)
            .await
            .unwrap(),
        newest_first[..3]
    );
    let second = store
        .feed(
            &page(None, None, Some(Cursor(newest_first[2]))),
            ReadAt::Primary,
        )
        .await
        .unwrap();
    assert_eq!(second, newest_first[3..6]);
    assert_eq!(
        store
            .feed(&page(Some("ann"), None, None), ReadAt::Primary)
            .await
            .unwrap(),
        vec![ids[3], ids[2], ids[1]]
    );
    assert_eq!(
        store
            .feed(&page(None, Some("even"), None), ReadAt::Primary)
            .await
            .unwrap(),
        vec![ids[6], ids[4], ids[2]]
    );
    assert_eq!(
        store
            .feed(&page(Some("bob"), Some("odd"), None), ReadAt::Primary)
            .await
            .unwrap(),
        vec![ids[5]]
    );

    // Retagging and deleting move posts out of tag feeds.
    store
        .update(
            ids[6],
            PostPatch {
                tags: Some(vec!["odd".into()]),
                ..PostPatch::default()
            },
            None,
            now,
        )
        .await
        .unwrap();
    store.delete(ids[4], None, now).await.unwrap();
    assert_eq!(
        store
            .feed(&page(None, Some("even"), None), ReadAt::Primary)
            .await
            .unwrap(),
        vec![ids[2], ids[0]]
    );
    assert!(
        !store
            .feed(&page(None, None, None), ReadAt::Primary)
            .await
            .unwrap()
            .contains(&ids[4])
    );
}

async fn views_add_up_in_batches(store: &dyn Store) {
    let now = OffsetDateTime::now_utc();
    let a = store
        .create(new_post("ann", &[]), now)
        .await
        .unwrap()
        .post
        .id;
    let b = store
        .create(new_post("ann", &[]), now)
        .await
        .unwrap()
        .post
        .id;
    store.delete(b, None, now).await.unwrap();
    let totals = store.add_views(&[(a, 3), (b, 5)]).await.unwrap();
    assert_eq!(totals, vec![(a, 3)], "deleted posts take no views");
    assert_eq!(store.add_views(&[(a, 2)]).await.unwrap(), vec![(a, 5)]);
    let post = store.get(a, ReadAt::Primary).await.unwrap().unwrap();
    assert_eq!(
        (post.views, post.version),
        (5, 1),
        "views do not change the version"
    );
}

async fn keyset_pages_neither_skip_nor_repeat_under_concurrent_inserts(store: Arc<dyn Store>) {
    let now = OffsetDateTime::now_utc();
    let mut before = HashSet::new();
    for _ in 0..40 {
        before.insert(
            store
                .create(new_post("pager", &["page"]), now)
                .await
                .unwrap()
                .post
                .id,
        );
    }
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for _ in 0..40 {
                store
                    .create(new_post("pager", &["page"]), OffsetDateTime::now_utc())
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let q = FeedQuery {
            author_id: None,
            tag: Some("page".into()),
            limit: 7,
            cursor,
        };
        let ids = store.feed(&q, ReadAt::Primary).await.unwrap();
        seen.extend(&ids);
        if ids.len() < 7 {
            break;
        }
        cursor = ids.last().map(|&id| Cursor(id));
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no post repeated across pages");
    assert!(
        before.is_subset(&unique),
        "every post that existed when paging began was seen"
    );
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first across pages"
    );
}

async fn every_write_appends_exactly_one_event(
    store: &dyn Store,
    outbox_rows: impl AsyncFn() -> i64,
) {
    let now = OffsetDateTime::now_utc();
    let start = outbox_rows().await;
    let id = store
        .create(new_post("ann", &[]), now)
        .await
        .unwrap()
        .post
        .id;
    store
        .update(
            id,
            PostPatch {
                body: Some("b2".into()),
                ..PostPatch::default()
            },
            None,
            now,
        )
        .await
        .unwrap();
    let _ = store
        .update(id, PostPatch::default(), Some(99), now)
        .await
        .unwrap_err();
    store.delete(id, None, now).await.unwrap();
    assert_eq!(
        outbox_rows().await - start,
        3,
        "three writes, three events; the rejected one none"
    );
}

#[tokio::test]
async fn sqlite_store_keeps_the_contract() {
    let (store, dir) = sqlite().await;
    writes_bump_versions_and_guard_if_match(store.as_ref()).await;
    feeds_filter_and_page_newest_first(store.as_ref()).await;
    views_add_up_in_batches(store.as_ref()).await;
    keyset_pages_neither_skip_nor_repeat_under_concurrent_inserts(Arc::clone(&store)).await;
    let file = format!("sqlite:{}", dir.path().join("t.db").display());
    let pool = sqlx::SqlitePool::connect(&file).await.unwrap();
    every_write_appends_exactly_one_event(store.as_ref(), async || {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .unwrap()
    })
    .await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn postgres_store_keeps_the_contract() {
    let store = postgres().await;
    writes_bump_versions_and_guard_if_match(&store).await;
    feeds_filter_and_page_newest_first(&store).await;
    views_add_up_in_batches(&store).await;
    let pool = store.pool().clone();
    keyset_pages_neither_skip_nor_repeat_under_concurrent_inserts(Arc::new(store.clone())).await;
    every_write_appends_exactly_one_event(&store, async || {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .unwrap()
    })
    .await;
}

#[tokio::test]
async fn a_commit_reports_a_wal_position_the_primary_has_reached() {
    let store = postgres().await;
    let committed = store
        .create(new_post("ann", &[]), OffsetDateTime::now_utc())
        .await
        .unwrap();
    let now: i64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(committed.lsn > 0 && committed.lsn as i64 <= now);
}
