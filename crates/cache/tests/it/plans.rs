//! Every query the API issues is an index scan on PostgreSQL, on a table big enough that the
//! planner would rather scan sequentially if it could.

use postcache_cache::postgres_sql as sql;

use crate::postgres;

#[tokio::test]
async fn every_api_query_uses_an_index() {
    let store = postgres().await;
    let pool = store.pool();
    sqlx::raw_sql(
        "INSERT INTO posts (author_id, title, body, tags, version, created_at, updated_at) \
         SELECT 'author' || (i % 200), 'title', repeat('x', 200), '[\"t' || (i % 50) || '\"]', 1, now(), now() \
         FROM generate_series(1, 20000) AS i; \
         INSERT INTO post_tags (tag, post_id) SELECT 't' || (id % 50), id FROM posts; \
         ANALYZE posts; ANALYZE post_tags;",
    )
    .execute(pool)
    .await
    .unwrap();

    let cases = [
        (
            "feed",
            format!("{} ", sql::FEED)
                .replace("$1", "15000")
                .replace("$2", "20"),
        ),
        (
            "feed by author",
            sql::FEED_BY_AUTHOR
                .replace("$1", "'author7'")
                .replace("$2", "15000")
                .replace("$3", "20"),
        ),
        (
            "feed by tag",
            sql::FEED_BY_TAG
                .replace("$1", "'t7'")
                .replace("$2", "15000")
                .replace("$3", "20"),
        ),
        (
            "feed by tag and author",
            sql::FEED_BY_TAG_AND_AUTHOR
                .replace("$1", "'t7'")
                .replace("$2", "'author7'")
                .replace("$3", "15000")
                .replace("$4", "20"),
        ),
        ("get", sql::GET.replace("$1", "42")),
        ("get for update", sql::GET_FOR_UPDATE.replace("$1", "42")),
        (
            "get many",
            sql::GET_MANY.replace("$1", "ARRAY[1, 2, 3]::bigint[]"),
        ),
        (
            "add views",
            sql::ADD_VIEWS.replace("$1", "42").replace("$2", "1"),
        ),
    ];
    for (name, query) in cases {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {query}")))
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("EXPLAIN {name}: {e}"));
        let plan = plan.join("\n");
        assert!(
            plan.contains("Index"),
            "{name} does not use an index:\n{plan}"
        );
        assert!(!plan.contains("Seq Scan"), "{name} scans a table:\n{plan}");
    }
}
