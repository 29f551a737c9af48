//! The HTTP API against SQLite and a real PostgreSQL, driven in-process (the router) and over a
//! real socket. Each scenario runs on every combination.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(missing_docs)] // a test binary, not an API

mod api;
mod errors;
mod limits;
mod realtime;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use postcache_cache::{EventLog, L1, L1Config, PoolConfig, Posts, Store};
use postcache_server::{Auth, Http, RateLimit, Realtime, TokenKeys, app};
use postcache_testkit::Postgres;
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy)]
pub enum Transport {
    InProcess,
    Socket,
}

/// Every combination the scenarios run on.
pub const ALL: [(Backend, Transport); 4] = [
    (Backend::Sqlite, Transport::InProcess),
    (Backend::Sqlite, Transport::Socket),
    (Backend::Postgres, Transport::InProcess),
    (Backend::Postgres, Transport::Socket),
];

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error body's `code` and `field`, checking the contract's shape on the way.
    pub fn error(&self) -> (String, Option<String>) {
        let body = self.json();
        let error = body["error"]
            .as_object()
            .unwrap_or_else(|| panic!("no error object: {body}"));
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        (
            error["code"].as_str().unwrap().to_owned(),
            error["field"].as_str().map(str::to_owned),
        )
    }
}

/// Knobs of a test app beyond the defaults.
pub struct Options {
    pub auth: Auth,
    pub limit: Option<RateLimit>,
    pub retention: usize,
    pub lag: usize,
    pub max_connections: usize,
    pub cors_origins: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auth: Auth::default(),
            limit: None,
            retention: 1000,
            lag: 64,
            max_connections: 100,
            cors_origins: Vec::new(),
        }
    }
}

pub struct TestApp {
    pub posts: Arc<Posts>,
    router: Router,
    addr: Option<SocketAddr>,
    http: reqwest::Client,
    db: Db,
    _dir: Option<tempfile::TempDir>,
}

enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl TestApp {
    pub async fn start(backend: Backend, transport: Transport) -> TestApp {
        TestApp::with(backend, transport, Auth::default(), None).await
    }

    pub async fn with(
        backend: Backend,
        transport: Transport,
        auth: Auth,
        limit: Option<RateLimit>,
    ) -> TestApp {
        TestApp::with_options(
            backend,
            transport,
            Options {
                auth,
                limit,
                ..Options::default()
            },
        )
        .await
    }

    pub async fn with_options(backend: Backend, transport: Transport, options: Options) -> TestApp {
        let Options {
            auth,
            limit,
            retention,
            lag,
            max_connections,
            cors_origins,
        } = options;
        let (url, dir) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                (
                    format!("sqlite:{}", dir.path().join("t.db").display()),
                    Some(dir),
                )
            }
            Backend::Postgres => {
                let pg = Postgres::shared();
                (pg.primary_url(&pg.create_database()), None)
            }
        };
        let store: Arc<dyn Store> =
            postcache_cache::connect(&url, &PoolConfig::new(8, Duration::from_secs(5)))
                .await
                .unwrap();
        let db = match backend {
            Backend::Sqlite => Db::Sqlite(sqlx::SqlitePool::connect(&url).await.unwrap()),
            Backend::Postgres => Db::Postgres(sqlx::PgPool::connect(&url).await.unwrap()),
        };
        let log = Arc::new(EventLog::new(retention, lag));
        let l1 = L1::new(L1Config {
            max_entries: 10_000,
            max_bytes: 1 << 30,
            ttl: Duration::from_secs(60),
        });
        let posts = Arc::new(Posts::new(store, l1, Arc::clone(&log)));
        let realtime = Realtime::new(log, max_connections, Duration::from_millis(200));
        let http = Http {
            limit,
            cors_origins,
            ..Http::new(TokenKeys::new(&["the integration tests' token key"]).unwrap())
        };
        let router = app(Arc::clone(&posts), auth, http, realtime);
        let addr = match transport {
            Transport::InProcess => None,
            Transport::Socket => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let service = router
                    .clone()
                    .into_make_service_with_connect_info::<SocketAddr>();
                tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
                Some(addr)
            }
        };
        TestApp {
            posts,
            router,
            addr,
            http: reqwest::Client::new(),
            db,
            _dir: dir,
        }
    }

    /// The socket address (socket transport only).
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("a socket transport")
    }

    /// Publishes committed changes to the event log, as the relay task of `serve` does.
    pub async fn relay(&self) {
        while self.posts.relay().await.unwrap() > 0 {}
    }

    /// Sends a request; `body` is sent as JSON unless a `content-type` header says otherwise.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        let has_type = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !has_type {
            request = request.header("content-type", "application/json");
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Body::from(body.unwrap_or_default().to_owned()))
            .unwrap();
        match self.addr {
            None => {
                let response = self.router.clone().oneshot(request).await.unwrap();
                let (parts, body) = response.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                Reply {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                }
            }
            Some(addr) => {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let response = self
                    .http
                    .request(parts.method, format!("http://{addr}{}", parts.uri))
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let headers = response.headers().clone();
                Reply {
                    status,
                    headers,
                    body: response.bytes().await.unwrap(),
                }
            }
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    /// Creates a post and returns its id.
    pub async fn create(&self, author: &str, title: &str, tags: &[&str]) -> String {
        let body =
            serde_json::json!({"author_id": author, "title": title, "body": "text", "tags": tags});
        let reply = self.post("/v1/posts", &body.to_string()).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.json()["id"].as_str().unwrap().to_owned()
    }

    /// What the database holds, summed up: (posts, sum of versions, outbox rows, sum of views).
    pub async fn fingerprint(&self) -> (i64, i64, i64, i64) {
        const SQL: &str = "SELECT CAST(count(*) AS BIGINT), CAST(coalesce(sum(version), 0) AS BIGINT), \
             (SELECT CAST(count(*) AS BIGINT) FROM outbox), CAST(coalesce(sum(views), 0) AS BIGINT) FROM posts";
        match &self.db {
            Db::Sqlite(pool) => sqlx::query_as(SQL).fetch_one(pool).await.unwrap(),
            Db::Postgres(pool) => sqlx::query_as(SQL).fetch_one(pool).await.unwrap(),
        }
    }
}
