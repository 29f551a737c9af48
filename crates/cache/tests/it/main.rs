//! The cache crate against real databases: the store contract on SQLite and PostgreSQL, the query
//! plans on PostgreSQL, and the L1 races forced with a gated store.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(missing_docs)] // a test binary, not an API

mod gated;
mod model;
mod plans;
mod races;
mod shared;
mod store;

use std::sync::Arc;
use std::time::Duration;

use postcache_cache::{NewPost, PoolConfig, PostgresStore, SqliteStore, Store};
use postcache_testkit::Postgres;

/// A fresh SQLite store in a temp dir (kept alive by the returned guard).
pub async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("t.db").display());
    let store = SqliteStore::connect(&url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    (Arc::new(store), dir)
}

/// A fresh database on the shared PostgreSQL.
pub async fn postgres() -> PostgresStore {
    let pg = Postgres::shared();
    let db = pg.create_database();
    PostgresStore::connect(
        &pg.primary_url(&db),
        &PoolConfig::new(8, Duration::from_secs(5)),
    )
    .await
    .unwrap()
}

/// A valid new post.
pub fn new_post(author: &str, tags: &[&str]) -> NewPost {
    NewPost {
        author_id: author.into(),
        title: format!("a post by {author}"),
        body: "body".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}
