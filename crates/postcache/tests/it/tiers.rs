//! The freshness guarantees across three `postcache serve` pods sharing PostgreSQL (primary and a
//! streaming replica) and Redis (standalone or Cluster): G1/G2 with tokens, G3 measured and
//! bounded under a cut log, G4 through a Redis crash, the stampede bound, and the degraded modes.

use std::time::{Duration, Instant};

use postcache_testkit::{Postgres, Redis, RedisCluster, free_port, poll};
use serde_json::Value;

use crate::{Served, serve, wait_healthy};

/// Three pods (or `n`) on one database and one Redis.
pub(crate) struct Pods {
    pods: Vec<(Served, String, tempfile::TempDir)>,
    pub(crate) http: reqwest::Client,
}

impl Pods {
    pub(crate) fn start(n: usize, env: &[(&str, &str)]) -> Pods {
        let pods = (0..n)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let listen = format!("127.0.0.1:{}", free_port());
                let mut all = vec![("POSTCACHE_LISTEN", listen.as_str())];
                all.extend_from_slice(env);
                let mut child = serve(dir.path(), &all);
                let base = format!("http://{listen}");
                wait_healthy(&base, &mut child);
                (child, base, dir)
            })
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Pods { pods, http }
    }

    pub(crate) fn base(&self, i: usize) -> &str {
        &self.pods[i % self.pods.len()].1
    }

    /// Pod `i`'s process.
    pub(crate) fn child(&mut self, i: usize) -> &mut std::process::Child {
        &mut self.pods[i].0
    }

    /// Pod `i`'s process id (for SIGSTOP/SIGCONT).
    pub(crate) fn pid(&self, i: usize) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.pods[i].0.id() as i32)
    }

    pub(crate) fn log(&self, i: usize) -> String {
        crate::stderr_of(self.pods[i].2.path())
    }

    /// Creates a post through pod `i`: (id, token).
    pub(crate) async fn create(&self, i: usize, author: &str, title: &str) -> (String, String) {
        let reply = self
            .http
            .post(format!("{}/v1/posts", self.base(i)))
            .json(&serde_json::json!({"author_id": author, "title": title, "body": "b"}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 201);
        let token = header(&reply, "x-postcache-token");
        let post: Value = reply.json().await.unwrap();
        (post["id"].as_str().unwrap().to_owned(), token)
    }

    /// Retitles `id` through pod `i`: (new version, token).
    pub(crate) async fn update(&self, i: usize, id: &str, title: &str) -> (i64, String) {
        let reply = self
            .http
            .patch(format!("{}/v1/posts/{id}", self.base(i)))
            .json(&serde_json::json!({"title": title}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "update through pod {i}");
        let token = header(&reply, "x-postcache-token");
        let post: Value = reply.json().await.unwrap();
        (post["version"].as_i64().unwrap(), token)
    }

    /// Reads `id` through pod `i` (with `token` if given): (version, tier).
    pub(crate) async fn read(&self, i: usize, id: &str, token: Option<&str>) -> (i64, String) {
        let mut request = self.http.get(format!("{}/v1/posts/{id}", self.base(i)));
        if let Some(token) = token {
            request = request.header("x-postcache-token", token);
        }
        let reply = request.send().await.unwrap();
        assert_eq!(reply.status(), 200, "read through pod {i}");
        let tier = header(&reply, "x-postcache-tier");
        let post: Value = reply.json().await.unwrap();
        (post["version"].as_i64().unwrap(), tier)
    }

    /// `GET path` on pod `i`, as JSON.
    pub(crate) async fn json(&self, i: usize, path: &str) -> Value {
        let reply = self
            .http
            .get(format!("{}{path}", self.base(i)))
            .send()
            .await
            .unwrap();
        reply.json().await.unwrap()
    }

    /// The value of `name{labels}` in pod `i`'s /metrics.
    pub(crate) async fn metric(&self, i: usize, series: &str) -> Option<f64> {
        scrape(&self.http, self.base(i), series).await
    }

    /// Waits until `series` is `value` on pod `i`.
    pub(crate) async fn wait_metric(&self, i: usize, series: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.metric(i, series).await == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} never became {value} on pod {i}: {:?}\n{}",
                self.metric(i, series).await,
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of `name{labels}` in the /metrics of the server at `base`.
pub(crate) async fn scrape(http: &reqwest::Client, base: &str, series: &str) -> Option<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// `n` pods on a fresh database of the shared PostgreSQL and a Redis of their own, with `env`.
pub(crate) struct Stack {
    pub(crate) pods: Pods,
    pub(crate) pg: std::sync::Arc<Postgres>,
    pub(crate) db: String,
    pub(crate) redis: Redis,
}

impl Stack {
    pub(crate) fn start(n: usize, env: &[(&str, &str)]) -> Stack {
        let pg = Postgres::shared();
        let db = pg.create_database();
        let redis = Redis::start();
        let (database, url) = (pg.primary_url(&db), redis.url());
        let mut all = vec![
            ("POSTCACHE_DATABASE_URL", database.as_str()),
            ("POSTCACHE_REDIS_URL", url.as_str()),
        ];
        all.extend_from_slice(env);
        let pods = Pods::start(n, &all);
        Stack {
            pods,
            pg,
            db,
            redis,
        }
    }
}

/// `n` pods on a PostgreSQL of their own with a streaming replica (its replay can be paused) and
/// a Redis of their own, with `env` besides.
pub(crate) struct ReplicatedStack {
    pub(crate) pods: Pods,
    pub(crate) pg: Postgres,
    pub(crate) db: String,
    pub(crate) redis: Redis,
}

impl ReplicatedStack {
    pub(crate) fn start(n: usize, env: &[(&str, &str)]) -> ReplicatedStack {
        let pg = Postgres::start(1);
        let db = pg.create_database();
        let (primary, replica) = (pg.primary_url(&db), pg.replica_urls(&db).join(","));
        let redis = Redis::start();
        let url = redis.url();
        let mut all = vec![
            ("POSTCACHE_DATABASE_URL", primary.as_str()),
            ("POSTCACHE_REPLICA_URLS", replica.as_str()),
            ("POSTCACHE_REDIS_URL", url.as_str()),
        ];
        all.extend_from_slice(env);
        let pods = Pods::start(n, &all);
        ReplicatedStack {
            pods,
            pg,
            db,
            redis,
        }
    }
}

fn header(reply: &reqwest::Response, name: &str) -> String {
    reply.headers()[name].to_str().unwrap().to_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// G1 and G2: thousands of write-then-read rounds, the write on one pod and the read with its
/// token on another, over Redis Cluster, with the replica's replay paused for a third of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_with_a_token_see_the_write_on_every_pod_even_with_replay_paused() {
    let pg = Postgres::start(1);
    let db = pg.create_database();
    let (primary, replica) = (pg.primary_url(&db), pg.replica_urls(&db).join(","));
    let cluster = RedisCluster::start();
    let nodes = cluster.urls().join(",");
    let pods = Pods::start(
        3,
        &[
            ("POSTCACHE_DATABASE_URL", primary.as_str()),
            ("POSTCACHE_REPLICA_URLS", replica.as_str()),
            ("POSTCACHE_REDIS_URL", nodes.as_str()),
            ("POSTCACHE_REDIS_CLUSTER", "true"),
        ],
    );
    let pods = std::sync::Arc::new(pods);
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 500;
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let pods = std::sync::Arc::clone(&pods);
        clients.push(tokio::spawn(async move {
            let author = format!("client{client}");
            let (mut id, _) = pods.create(client, &author, "v1").await;
            let (mut last_seen, mut stale, mut tiers) =
                (0_i64, 0_usize, std::collections::BTreeMap::new());
            for round in 0..ROUNDS {
                let writer = client + round;
                if round % 10 == 0 {
                    // A new post must show in the author's feed read on another pod.
                    let (new_id, new_token) =
                        pods.create(writer, &author, &format!("r{round}")).await;
                    let feed: Value = pods
                        .http
                        .get(format!(
                            "{}/v1/posts?author_id={author}",
                            pods.base(writer + 1)
                        ))
                        .header("x-postcache-token", &new_token)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    if feed["items"][0]["id"] != new_id.as_str() {
                        stale += 1;
                    }
                    (id, last_seen) = (new_id, 0);
                    continue;
                }
                let (written, token) = pods.update(writer, &id, &format!("r{round}")).await;
                let (seen, tier) = pods.read(writer + 1, &id, Some(&token)).await;
                *tiers.entry(tier).or_insert(0_usize) += 1;
                if seen < written || seen < last_seen {
                    stale += 1;
                }
                last_seen = seen;
            }
            (stale, tiers)
        }));
    }
    // Pause the replica's replay for a third of the run, while the clients write and read.
    let replica_sql = |sql: &str| pg.psql_replica(0, &db, sql).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    replica_sql("SELECT pg_wal_replay_pause()");
    let paused_at = Instant::now();
    while paused_at.elapsed() < Duration::from_secs(4) && !clients.iter().all(|c| c.is_finished()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replica_sql("SELECT pg_wal_replay_resume()");
    let mut total_stale = 0;
    let mut all_tiers = std::collections::BTreeMap::new();
    for client in clients {
        let (stale, tiers) = client.await.unwrap();
        total_stale += stale;
        for (tier, n) in tiers {
            *all_tiers.entry(tier).or_insert(0) += n;
        }
    }
    eprintln!(
        "G1/G2: {} rounds over 3 pods and Redis Cluster; token reads served by {all_tiers:?}",
        CLIENTS * ROUNDS
    );
    assert_eq!(
        total_stale, 0,
        "reads with a token older than the client's write"
    );
}

/// G3: without tokens, how long until every pod serves a write (p50/p99/max), and with the log
/// cut (Redis paused), no pod serves an older version for longer than the staleness bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staleness_without_tokens_is_measured_and_bounded_when_the_log_is_cut() {
    let bound = Duration::from_millis(500);
    let bound_ms = bound.as_millis().to_string();
    let Stack { pods, redis, .. } =
        Stack::start(3, &[("POSTCACHE_STALENESS_BOUND_MS", bound_ms.as_str())]);
    let (id, _) = pods.create(0, "ann", "v1").await;
    for i in 0..3 {
        pods.read(i, &id, None).await;
    }
    let mut delays = Vec::new();
    for round in 0..100 {
        let (version, _) = pods.update(round % 3, &id, &format!("r{round}")).await;
        let acked = Instant::now();
        for i in 0..3 {
            while pods.read(i, &id, None).await.0 < version {}
        }
        delays.push(acked.elapsed());
    }
    delays.sort();
    eprintln!(
        "G3 staleness (write ack → all 3 pods serve it), 100 writes: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );

    // Cut the log: Redis stops answering. Writes still commit; once the bound has passed, no pod
    // may answer from a cache it cannot prove fresh.
    redis.process().pause();
    let (version, _) = pods.update(0, &id, "during the cut").await;
    let acked = Instant::now();
    let deadline = acked + bound + Duration::from_secs(2);
    let mut last = vec![(0, String::new()); 3];
    while Instant::now() < deadline {
        for (i, last) in last.iter_mut().enumerate() {
            let started = acked.elapsed();
            *last = pods.read(i, &id, None).await;
            assert!(
                last.0 >= version || started <= bound,
                "pod {i} served version {} (tier {}) in a read that started {started:?} after the \
                 write, while the log was cut",
                last.0,
                last.1
            );
        }
    }
    for (i, last) in last.iter().enumerate() {
        assert!(
            last.0 >= version,
            "pod {i} never served the write: {last:?}"
        );
    }
    for i in 0..3 {
        pods.wait_metric(i, "postcache_degraded{component=\"redis\"}", 1.0)
            .await;
        let stats = pods.json(i, "/v1/cache/stats").await;
        assert_eq!(stats["l1_trusted"], false, "pod {i} while cut off: {stats}");
    }
    redis.process().resume();
    let (version, _) = pods.update(1, &id, "after the cut").await;
    for i in 0..3 {
        pods.wait_metric(i, "postcache_degraded{component=\"redis\"}", 0.0)
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while pods.read(i, &id, None).await.0 < version {
            assert!(Instant::now() < deadline, "pod {i} never caught up");
        }
    }
}

/// G4: Redis is killed and restarted during a stream of writes through three pods: every
/// acknowledged write is in PostgreSQL and served by every pod afterwards; the outbox drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_write_is_lost_when_redis_dies_during_writes() {
    let Stack {
        pods,
        pg,
        db,
        redis,
    } = Stack::start(3, &[]);
    let (id, _) = pods.create(0, "ann", "v0").await;
    let mut acked = Vec::new();
    for round in 0..150 {
        if round == 50 {
            redis.process().kill();
        }
        if round == 100 {
            redis.process().restart();
        }
        let (version, _) = pods.update(round % 3, &id, &format!("r{round}")).await;
        acked.push(version);
    }
    let last = *acked.last().unwrap();
    assert!(
        acked.windows(2).all(|w| w[1] > w[0]),
        "every write acknowledged a new version"
    );
    let stored = pg
        .psql_primary(&db, &format!("SELECT version FROM posts WHERE id = {id}"))
        .unwrap();
    assert_eq!(
        stored.trim(),
        last.to_string(),
        "PostgreSQL has the last write"
    );
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pods.read(i, &id, None).await.0 < last {
            assert!(
                Instant::now() < deadline,
                "pod {i} never served the last write\n{}",
                pods.log(i)
            );
        }
    }
    poll(Duration::from_secs(20), || {
        let left = pg
            .psql_primary(
                &db,
                "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            )
            .map_err(|e| e.to_string())?;
        (left.trim() == "0")
            .then_some(())
            .ok_or(format!("{left} outbox rows unpublished"))
    })
    .unwrap();
}

/// Stampede: 300 concurrent readers over 3 pods of a hot post; PostgreSQL sees no load after a
/// write-through and exactly one when the post was evicted from every tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_key_loads_from_postgres_at_most_once_per_lease_window() {
    // Generous Redis timeout and lease window: with every test of the suite sharing two cores, a
    // 250 ms reply deadline can pass, and the pods would (rightly) fall back to PostgreSQL.
    let Stack {
        pods,
        pg,
        db,
        redis: _redis,
        ..
    } = Stack::start(
        3,
        &[
            ("POSTCACHE_REDIS_TIMEOUT_MS", "2000"),
            ("POSTCACHE_FILL_LEASE_MS", "2000"),
        ],
    );
    let pods = std::sync::Arc::new(pods);
    let (id, _) = pods.create(0, "ann", "hot").await;
    pg.psql_primary(&db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .unwrap();
    let loads = || -> i64 {
        let sql = format!(
            "SELECT COALESCE(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
             WHERE d.datname = '{db}' AND s.query = '{}'",
            postcache_cache::postgres_sql::GET.replace('\'', "''")
        );
        pg.psql_primary(&db, &sql).unwrap().trim().parse().unwrap()
    };
    let burst = |pods: std::sync::Arc<Pods>, id: String| async move {
        let readers: Vec<_> = (0..300)
            .map(|r| {
                let (pods, id) = (std::sync::Arc::clone(&pods), id.clone());
                tokio::spawn(async move { pods.read(r % 3, &id, None).await.0 })
            })
            .collect();
        let mut versions = Vec::new();
        for reader in readers {
            versions.push(reader.await.unwrap());
        }
        versions
    };

    pods.update(1, &id, "just updated").await;
    let before = loads();
    let versions = burst(std::sync::Arc::clone(&pods), id.clone()).await;
    assert!(versions.iter().all(|&v| v == 2), "{versions:?}");
    let after_update = loads() - before;

    for i in 0..3 {
        let reply = pods
            .http
            .post(format!("{}/v1/cache/invalidate", pods.base(i)))
            .json(&serde_json::json!({"ids": [id]}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 202);
    }
    let before = loads();
    let versions = burst(std::sync::Arc::clone(&pods), id.clone()).await;
    assert!(versions.iter().all(|&v| v == 2), "{versions:?}");
    let after_eviction = loads() - before;
    eprintln!(
        "stampede: 300 readers on 3 pods → {after_update} PostgreSQL loads after a write-through, \
         {after_eviction} after eviction from every tier"
    );
    assert_eq!(after_update, 0, "the write-through serves the hot post");
    assert_eq!(after_eviction, 1, "one load per lease window");
}

/// Feeds cached on other pods follow a retag (the event carries the tags the post left), and an
/// admin invalidation on one pod reaches every pod's L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retags_and_admin_invalidations_reach_every_pod() {
    let Stack {
        pods,
        redis: _redis,
        ..
    } = Stack::start(2, &[]);
    let feed = |i: usize, tag: &'static str| {
        let pods = &pods;
        async move {
            let page = pods.json(i, &format!("/v1/posts?tag={tag}")).await;
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let reply = pods
        .http
        .post(format!("{}/v1/posts", pods.base(0)))
        .json(&serde_json::json!({"author_id": "ann", "title": "t", "body": "b", "tags": ["old"]}))
        .send()
        .await
        .unwrap();
    let id = reply.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while feed(1, "old").await != [id.clone()] {
        assert!(Instant::now() < deadline, "pod 1 never listed the post");
    }
    let retagged = pods
        .http
        .patch(format!("{}/v1/posts/{id}", pods.base(0)))
        .json(&serde_json::json!({"tags": ["new"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(retagged.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !feed(1, "old").await.is_empty() || feed(1, "new").await != [id.clone()] {
        assert!(
            Instant::now() < deadline,
            "pod 1 still lists the post under the tag it left"
        );
    }

    // Pod 1 holds the post in L1; an invalidation on pod 0 drops it there too.
    pods.read(1, &id, None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pods.read(1, &id, None).await.1 != "l1" {
        assert!(Instant::now() < deadline, "pod 1 never cached the post");
    }
    let reply = pods
        .http
        .post(format!("{}/v1/cache/invalidate", pods.base(0)))
        .json(&serde_json::json!({"ids": [id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pods.read(1, &id, None).await.1 == "l1" {
        assert!(
            Instant::now() < deadline,
            "pod 1 kept serving its L1 copy after the invalidation"
        );
    }
}
