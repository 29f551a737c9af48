//! The happy paths of every route, on every backend and transport.

use axum::http::{Method, StatusCode};

use crate::{ALL, Backend, TestApp, Transport};

async fn crud_with_http_caching(backend: Backend, transport: Transport) {
    let app = TestApp::start(backend, transport).await;
    let created = app
        .post(
            "/v1/posts",
            r#"{"author_id":"ann","title":"Hello","body":"World","tags":["rust"]}"#,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let post = created.json();
    let id = post["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.header("location"),
        Some(format!("/v1/posts/{id}").as_str())
    );
    assert_eq!(created.header("etag"), Some("\"1\""));
    let token = created.header("x-postcache-token").unwrap().to_owned();
    assert!(
        created
            .header("set-cookie")
            .unwrap()
            .starts_with(&format!("pc_token={token};"))
    );
    assert_eq!(
        (post["version"].as_i64(), post["views"].as_i64()),
        (Some(1), Some(0))
    );
    assert_eq!(post["tags"], serde_json::json!(["rust"]));
    for field in ["created_at", "updated_at"] {
        let ts = post[field].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(),
            "{ts}"
        );
    }

    let read = app.get(&format!("/v1/posts/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(
        read.json(),
        post,
        "the read returns exactly what the write returned"
    );
    assert_eq!(
        read.header("x-postcache-tier"),
        Some("l1"),
        "a write fills L1"
    );
    assert_eq!(read.header("cache-control"), Some("no-cache"));

    let revalidated = app
        .send(
            Method::GET,
            &format!("/v1/posts/{id}"),
            &[("if-none-match", "\"1\"")],
            None,
        )
        .await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert!(revalidated.body.is_empty());
    assert_eq!(revalidated.header("etag"), Some("\"1\""));

    let patch = r#"{"title":"Hello again"}"#;
    let path = format!("/v1/posts/{id}");
    let updated = app
        .send(Method::PATCH, &path, &[("if-match", "\"1\"")], Some(patch))
        .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.json()["version"], 2);
    assert_eq!(updated.header("etag"), Some("\"2\""));
    assert_ne!(updated.header("x-postcache-token"), Some(token.as_str()));
    let lost_update = app
        .send(Method::PATCH, &path, &[("if-match", "\"1\"")], Some(patch))
        .await;
    assert_eq!(lost_update.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(lost_update.error().0, "precondition_failed");
    let stale_etag = app
        .send(Method::GET, &path, &[("if-none-match", "\"1\"")], None)
        .await;
    assert_eq!(
        stale_etag.status,
        StatusCode::OK,
        "an old ETag no longer matches"
    );
    assert_eq!(stale_etag.json()["title"], "Hello again");

    let deleted = app.send(Method::DELETE, &path, &[], None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(deleted.header("x-postcache-token").is_some());
    assert_eq!(app.get(&path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.send(Method::DELETE, &path, &[], None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/posts").await.json()["items"],
        serde_json::json!([])
    );
}

async fn feeds_page_and_filter(backend: Backend, transport: Transport) {
    let app = TestApp::start(backend, transport).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let author = if i % 2 == 0 { "ann" } else { "bob" };
        let tags: &[&str] = if i < 3 { &["early"] } else { &[] };
        ids.push(app.create(author, &format!("post {i}"), tags).await);
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();

    let mut seen = Vec::new();
    let mut next = "/v1/posts?limit=3".to_owned();
    loop {
        let page = app.get(&next).await;
        assert_eq!(page.status, StatusCode::OK);
        let body = page.json();
        seen.extend(
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(cursor) => next = format!("/v1/posts?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);

    let ids_of = |reply: crate::Reply| -> Vec<String> {
        reply.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let bob = ids_of(app.get("/v1/posts?author_id=bob").await);
    assert_eq!(
        bob,
        vec![
            ids[7].clone(),
            ids[5].clone(),
            ids[3].clone(),
            ids[1].clone()
        ]
    );
    let early = ids_of(app.get("/v1/posts?tag=early").await);
    assert_eq!(early, vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]);
    let both = ids_of(app.get("/v1/posts?tag=early&author_id=ann").await);
    assert_eq!(both, vec![ids[2].clone(), ids[0].clone()]);

    // A cached feed page reflects a new post at once (its tag generation moved on).
    let first = app.get("/v1/posts?tag=early").await;
    assert_eq!(first.header("x-postcache-tier"), Some("l1"));
    let newer = app.create("ann", "late but tagged", &["early"]).await;
    assert_eq!(ids_of(app.get("/v1/posts?tag=early").await)[0], newer);
}

async fn views_are_written_back(backend: Backend, transport: Transport) {
    let app = TestApp::start(backend, transport).await;
    let id = app.create("ann", "viewed", &[]).await;
    let views = format!("/v1/posts/{id}/views");
    for _ in 0..3 {
        let reply = app.send(Method::POST, &views, &[], None).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
    }
    assert_eq!(
        app.fingerprint().await.3,
        0,
        "buffered, not yet in the database"
    );
    assert_eq!(app.posts.flush_views().await.unwrap(), 1);
    assert_eq!(app.fingerprint().await.3, 3, "one flush wrote all three");
    let read = app.get(&format!("/v1/posts/{id}")).await;
    assert_eq!(
        (
            read.json()["views"].as_i64(),
            read.json()["version"].as_i64()
        ),
        (Some(3), Some(1))
    );
    assert_eq!(
        app.send(Method::POST, "/v1/posts/999999/views", &[], None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

async fn admin_invalidation_and_stats(backend: Backend, transport: Transport) {
    let app = TestApp::start(backend, transport).await;
    let id = app.create("ann", "cached", &["x"]).await;
    let path = format!("/v1/posts/{id}");
    assert_eq!(app.get(&path).await.header("x-postcache-tier"), Some("l1"));
    let reply = app
        .post(
            "/v1/cache/invalidate",
            &format!(r#"{{"ids":["{id}"],"tags":["feed:tag:x","feed:global"]}}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.json(), serde_json::json!({"tags": 2, "ids": 1}));
    assert_eq!(
        app.get(&path).await.header("x-postcache-tier"),
        Some("l3"),
        "the next read goes to L3"
    );
    assert_eq!(
        app.get(&path).await.header("x-postcache-tier"),
        Some("l1"),
        "and fills L1 again"
    );

    let stats = app.get("/v1/cache/stats").await.json();
    assert!(stats["l1"]["hits"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["l1"]["misses"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["l1"]["entries"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["l3"]["hits"].as_u64().unwrap() >= 1, "{stats}");
}

async fn health_metrics_and_openapi(backend: Backend, transport: Transport) {
    let app = TestApp::start(backend, transport).await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(app.get("/readyz").await.json()["status"], "ready");
    let id = app.create("ann", "metered", &[]).await;
    app.get(&format!("/v1/posts/{id}")).await;
    let metrics = app.get("/metrics").await;
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.contains(r#"route="/v1/posts/{id}""#),
        "route templates label the metrics, not ids"
    );
    assert!(
        !text.contains(&format!("/v1/posts/{id}\"")),
        "no raw ids in labels"
    );
    // The read above was an L1 hit (the create filled L1), and every hit is counted.
    let l1_hits = text
        .lines()
        .filter(|l| l.starts_with("postcache_cache_requests_total{"))
        .filter(|l| l.contains(r#"tier="l1""#) && l.contains(r#"result="hit""#))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(
        l1_hits.is_some_and(|n| n >= 1.0),
        "L1 hits: {l1_hits:?}\n{text}"
    );
    assert!(text.contains("postcache_http_request_duration_seconds_bucket"));

    // The OpenAPI document lists exactly the routes served, and each of them answers.
    let doc = app.get("/openapi.json").await.json();
    let mut listed: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            listed.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    listed.sort();
    let mut expected = vec![
        "GET /healthz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /readyz",
        "GET /v1/cache/stats",
        "GET /v1/posts",
        "GET /v1/posts/{id}",
        "PATCH /v1/posts/{id}",
        "DELETE /v1/posts/{id}",
        "POST /v1/cache/invalidate",
        "POST /v1/posts",
        "POST /v1/posts/{id}/views",
        "GET /v1/events",
        "GET /v1/ws",
        "GET /",
        "GET /client.js",
        "GET /client.d.ts",
    ];
    expected.sort();
    assert_eq!(listed, expected);
    // DELETE last: it removes the post the other routes are called with.
    listed.sort_by_key(|route| route.starts_with("DELETE"));
    // (The realtime routes stream forever; their own tests cover them.)
    for route in listed
        .iter()
        .filter(|r| !r.ends_with("/v1/events") && !r.ends_with("/v1/ws"))
    {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path.replace("{id}", &id);
        let reply = app.send(method.parse().unwrap(), &path, &[], None).await;
        assert!(
            reply.status != StatusCode::NOT_FOUND && reply.status != StatusCode::METHOD_NOT_ALLOWED,
            "{route} is listed but answers {}",
            reply.status
        );
    }
}

#[tokio::test]
async fn crud_with_http_caching_everywhere() {
    for (backend, transport) in ALL {
        crud_with_http_caching(backend, transport).await;
    }
}

#[tokio::test]
async fn feeds_page_and_filter_everywhere() {
    for (backend, transport) in ALL {
        feeds_page_and_filter(backend, transport).await;
    }
}

#[tokio::test]
async fn views_are_written_back_everywhere() {
    for (backend, transport) in ALL {
        views_are_written_back(backend, transport).await;
    }
}

#[tokio::test]
async fn admin_invalidation_and_stats_everywhere() {
    for (backend, transport) in ALL {
        admin_invalidation_and_stats(backend, transport).await;
    }
}

#[tokio::test]
async fn health_metrics_and_openapi_everywhere() {
    for (backend, transport) in ALL {
        health_metrics_and_openapi(backend, transport).await;
    }
}
