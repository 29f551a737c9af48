//! Criterion benchmarks of the hot paths, in-process on the embedded default (SQLite):
//! an L1 hit through `Posts`, the same through the whole router, and a create (one transaction
//! with its outbox row, then L1).
//!
//! Run with `cargo bench -p postcache-server --bench tiers`.

#![allow(missing_docs, clippy::unwrap_used)] // a benchmark binary

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use postcache_cache::{EventLog, L1, L1Config, NewPost, PoolConfig, Posts};
use postcache_server::{Auth, Http, Realtime, TokenKeys, app};
use tower::ServiceExt;

fn new_post(i: u64) -> NewPost {
    NewPost {
        author_id: format!("author{}", i % 16),
        title: format!("benchmark post {i}"),
        body: "x".repeat(512),
        tags: vec!["bench".into()],
    }
}

fn tiers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("bench.db").display());
    let posts = rt.block_on(async {
        let store = postcache_cache::connect(&url, &PoolConfig::new(8, Duration::from_secs(5)))
            .await
            .unwrap();
        Arc::new(Posts::new(
            store,
            L1::new(L1Config {
                max_entries: 100_000,
                max_bytes: 1 << 30,
                ttl: Duration::from_secs(600),
            }),
            Arc::new(EventLog::new(10_000, 1024)),
        ))
    });
    let id = rt.block_on(posts.create(new_post(0))).unwrap().entry.id;
    let realtime = Realtime::new(Arc::clone(posts.log()), 100, Duration::from_secs(15));
    let router = app(
        Arc::clone(&posts),
        Auth::default(),
        Http::new(TokenKeys::new(&["a benchmark's token key"]).unwrap()),
        realtime,
    );

    c.bench_function("l1_hit/posts_get", |b| {
        b.to_async(&rt)
            .iter(|| async { posts.get(id, None).await.unwrap() });
    });
    let path = format!("/v1/posts/{id}");
    c.bench_function("l1_hit/http_get", |b| {
        b.to_async(&rt).iter(|| async {
            let request = Request::get(path.as_str()).body(Body::empty()).unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap()
        });
    });
    let mut i = 0;
    c.bench_function("create/sqlite", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let post = new_post(i);
            let posts = Arc::clone(&posts);
            async move { posts.create(post).await.unwrap() }
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(3));
    targets = tiers
}
criterion_main!(benches);
