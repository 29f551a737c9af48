//! DESIGN §7's degraded modes against real faults, each with its `postcache_degraded` flag: a
//! lagging and a dead read replica, a dead primary, an exhausted pool, and Redis down (reads with
//! a token still see their write, through L3).

use std::time::{Duration, Instant};

use postcache_testkit::{Postgres, Redis, Switch};

use crate::tiers::{Pods, ReplicatedStack, Stack};

/// The key the pods of these tests sign tokens with (so that a test can make one).
const TOKEN_KEY: &str = "the degraded-mode tests' token key";

/// `token` with its log position dropped, signed again: the form a write gets when Redis failed,
/// which only L3 (a replica that replayed the LSN, else the primary) may answer.
fn without_position(token: &str) -> String {
    let (payload, _signature) = token.rsplit_once('.').unwrap();
    let token = postcache_cache::ConsistencyToken::parse(payload).unwrap();
    let keys = postcache_server::TokenKeys::new(&[TOKEN_KEY]).unwrap();
    keys.sign(postcache_cache::ConsistencyToken {
        position: postcache_cache::Position::ZERO,
        ..token
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_faults_move_reads_and_a_dead_primary_fails_writes_fast() {
    let ReplicatedStack {
        pods,
        pg,
        db,
        redis: _redis,
    } = ReplicatedStack::start(
        1,
        &[
            ("POSTCACHE_MAX_REPLICA_LAG_SECONDS", "1"),
            ("POSTCACHE_DB_ACQUIRE_TIMEOUT_MS", "1000"),
            ("POSTCACHE_VIEWS_FLUSH_MS", "200"),
            ("POSTCACHE_TOKEN_KEYS", TOKEN_KEY),
        ],
    );
    let replica_flag = "postcache_degraded{component=\"replica\"}";
    pods.wait_metric(0, replica_flag, 0.0).await;
    let (id, _) = pods.create(0, "ann", "v1").await;

    // Lagging: replay paused while writes go on; past the lag limit the flag rises, and a read
    // that needs the newest LSN is answered by the primary.
    pg.psql_replica(0, &db, "SELECT pg_wal_replay_pause()")
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        pods.update(0, &id, "while replay is paused").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pods.wait_metric(0, replica_flag, 1.0).await;
    let (written, token) = pods.update(0, &id, "newest").await;
    let (seen, tier) = pods.read(0, &id, Some(&without_position(&token))).await;
    // The lagging replica must not answer: the primary does (`l3`), or this pod's memory once a
    // heartbeat has vouched for the token's LSN (`l1`, which a heartbeat landing between the
    // write and the read makes legitimate).
    assert_eq!(seen, written, "answered from {tier}");
    assert!(matches!(tier.as_str(), "l3" | "l1"), "{tier}");
    pg.psql_replica(0, &db, "SELECT pg_wal_replay_resume()")
        .unwrap();
    pods.wait_metric(0, replica_flag, 0.0).await;

    // Dead replica: flagged, reads go to the primary.
    pg.replica(0).kill();
    pods.wait_metric(0, replica_flag, 1.0).await;
    let (seen, _) = pods.read(0, &id, Some(&without_position(&token))).await;
    assert_eq!(seen, written);
    pg.replica(0).restart();
    pods.wait_metric(0, replica_flag, 0.0).await;

    // Dead primary: writes answer 503 with Retry-After (never hang), cached reads go on, and a
    // post the pod has not seen is read from the replica.
    let unseen = pg
        .psql_primary(
            &db,
            "INSERT INTO posts (author_id, title, body, tags, version, views, deleted, created_at, updated_at) \
             VALUES ('bob', 'direct', 'b', '[]', 1, 0, false, now(), now()) RETURNING id",
        )
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    pg.wait_for_replica(0, &db);
    pg.primary().kill();
    let reply = pods
        .http
        .post(format!("{}/v1/posts", pods.base(0)))
        .json(&serde_json::json!({"author_id": "ann", "title": "t", "body": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 503);
    assert!(reply.headers().contains_key("retry-after"));
    pods.wait_metric(0, "postcache_degraded{component=\"primary\"}", 1.0)
        .await;
    assert_eq!(
        pods.read(0, &id, None).await.0,
        written,
        "cached reads go on"
    );
    assert_eq!(
        pods.read(0, &unseen, None).await,
        (1, "l3".to_owned()),
        "uncached reads come from the replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_answers_503_after_the_acquire_timeout() {
    let pg = Postgres::shared();
    let db = pg.create_database();
    let database = pg.primary_url(&db);
    let pods = Pods::start(
        1,
        &[
            ("POSTCACHE_DATABASE_URL", database.as_str()),
            ("POSTCACHE_DB_MAX_CONNECTIONS", "1"),
            ("POSTCACHE_DB_ACQUIRE_TIMEOUT_MS", "500"),
        ],
    );
    let (id, _) = pods.create(0, "ann", "v1").await;
    // Another client holds the posts table: the pod's one connection waits on the lock.
    let locker = {
        let (pg, db) = (pg.clone(), db.clone());
        std::thread::spawn(move || {
            pg.psql_primary(
                &db,
                "BEGIN; LOCK TABLE posts IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(4); COMMIT;",
            )
        })
    };
    postcache_testkit::poll(Duration::from_secs(10), || {
        let held = pg.psql_primary(
            &db,
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'posts' AND l.mode = 'AccessExclusiveLock' AND l.granted",
        )?;
        (held.trim() == "1").then_some(()).ok_or(held)
    })
    .unwrap();
    // Four writes at once, one connection, the table locked for seconds: the one that gets the
    // connection waits for the lock; the others get 503 after the acquire timeout, not a hang.
    let writes: Vec<_> = (0..4)
        .map(|n| {
            let (http, base, id) = (pods.http.clone(), pods.base(0).to_owned(), id.clone());
            tokio::spawn(async move {
                let reply = http
                    .patch(format!("{base}/v1/posts/{id}"))
                    .json(&serde_json::json!({"title": format!("write {n}")}))
                    .send()
                    .await
                    .unwrap();
                (reply.status(), reply.headers().contains_key("retry-after"))
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for write in writes {
        outcomes.push(write.await.unwrap());
    }
    let refused = outcomes.iter().filter(|(s, _)| *s == 503).count();
    assert!(
        refused >= 1
            && outcomes
                .iter()
                .all(|(s, retry)| *s == 200 || (*s == 503 && *retry)),
        "503 with Retry-After for writes that found no connection: {outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|(s, _)| *s == 200),
        "the write holding the connection completes: {outcomes:?}"
    );
    locker.join().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_writes_commit_and_tokens_are_honoured_from_l3() {
    let Stack { pods, redis, .. } = Stack::start(2, &[]);
    let (id, _) = pods.create(0, "ann", "v1").await;
    for i in 0..2 {
        pods.read(i, &id, None).await;
    }
    redis.process().kill();
    for round in 0..20 {
        let (written, token) = pods.update(round % 2, &id, &format!("r{round}")).await;
        assert!(
            token.starts_with("0-0."),
            "no log position without Redis: {token}"
        );
        let (seen, tier) = pods.read(round + 1, &id, Some(&token)).await;
        assert_eq!((seen, tier.as_str()), (written, "l3"));
    }
    for i in 0..2 {
        pods.wait_metric(i, "postcache_degraded{component=\"redis\"}", 1.0)
            .await;
        let ready = pods
            .http
            .get(format!("{}/readyz", pods.base(i)))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "readiness stays up without Redis");
    }
}

/// PostgreSQL refusing a write for a reason that passes (a serialization failure, a server that
/// turned read-only mid-failover): 503 with `Retry-After`, never a 500; once it passes, writes
/// work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_database_refusals_answer_503_with_retry_after() {
    let pg = Postgres::shared();
    let db = pg.create_database();
    let database = pg.primary_url(&db);
    let pods = Pods::start(1, &[("POSTCACHE_DATABASE_URL", database.as_str())]);
    let (id, _) = pods.create(0, "ann", "v1").await;
    let refuse = |code: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = '{code}'; END $$; \
             DROP TRIGGER IF EXISTS refuse ON posts; \
             CREATE TRIGGER refuse BEFORE UPDATE ON posts FOR EACH ROW EXECUTE FUNCTION refuse();"
        )
    };
    for code in ["40001", "25006"] {
        pg.psql_primary(&db, &refuse(code)).unwrap();
        let reply = pods
            .http
            .patch(format!("{}/v1/posts/{id}", pods.base(0)))
            .json(&serde_json::json!({"title": "refused"}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 503, "SQLSTATE {code}");
        assert!(
            reply.headers().contains_key("retry-after"),
            "SQLSTATE {code}: no Retry-After"
        );
        let body: serde_json::Value = reply.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    pg.psql_primary(&db, "DROP TRIGGER refuse ON posts")
        .unwrap();
    let (version, _) = pods.update(0, &id, "v2").await;
    assert_eq!(version, 2, "the refused writes changed nothing");
}

/// The primary black-holed (SIGSTOP: no reset, no answer): readiness stays up while a replica
/// answers (`degraded`), so a Service keeps the pods and reads go on; it fails only when no tier
/// can answer reads; the primary's degraded flag rises although its ping never returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_primary_leaves_readiness_up_while_a_replica_answers() {
    let ReplicatedStack {
        pods,
        pg,
        redis: _redis,
        ..
    } = ReplicatedStack::start(1, &[]);
    let (id, _) = pods.create(0, "ann", "v1").await;
    pods.read(0, &id, None).await;
    let ready = |expect: u16| {
        let (http, base) = (pods.http.clone(), pods.base(0).to_owned());
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let reply = http.get(format!("{base}/readyz")).send().await.unwrap();
                let status = reply.status().as_u16();
                let body = reply.text().await.unwrap();
                if status == expect {
                    return body;
                }
                assert!(
                    Instant::now() < deadline,
                    "/readyz stayed {status} ({body}), expected {expect}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(ready(200).await.contains("\"ready\""));

    // Every process of the primary: the postmaster and its backends.
    let stop_primary = |signal: &str| {
        let pid = pg.primary().pid().unwrap().to_string();
        let _ = std::process::Command::new("pkill")
            .args([signal, "-P", &pid])
            .status();
        let _ = std::process::Command::new("kill")
            .args([signal, &pid])
            .status();
    };
    stop_primary("-STOP");
    let body = ready(200).await;
    pods.wait_metric(0, "postcache_degraded{component=\"primary\"}", 1.0)
        .await;
    let started = Instant::now();
    let (version, _) = pods.read(0, &id, None).await;
    assert_eq!(version, 1, "reads go on");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a read waited {:?} on a black-holed primary",
        started.elapsed()
    );
    let body = if body.contains("degraded") {
        body
    } else {
        ready(200).await
    };
    assert!(body.contains("degraded"), "{body}");

    pg.replica(0).kill();
    ready(503).await;
    pg.replica(0).restart();
    stop_primary("-CONT");
    ready(200).await;
}

/// The replica URL is a Service, and the replica behind it is replaced by one far behind (a
/// replica Pod restarted from an old restart point, or another Pod of the Service): the position
/// the last poll saw says nothing about the server a new connection reaches. Reads right after
/// each switch (feed pages without a token, G3; posts with one, G1) still see every write, and the
/// replica that keeps up serves reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_replaced_behind_its_url_serves_no_stale_read() {
    let pg = Postgres::start(2);
    let db = pg.create_database();
    let service = Switch::start(pg.replica_ports().to_vec());
    let (primary, replica) = (pg.primary_url(&db), pg.url_on_port(service.port(), &db));
    let redis = Redis::start();
    let redis_url = redis.url();
    let pods = Pods::start(
        1,
        &[
            ("POSTCACHE_DATABASE_URL", primary.as_str()),
            ("POSTCACHE_REPLICA_URLS", replica.as_str()),
            ("POSTCACHE_REDIS_URL", redis_url.as_str()),
            ("POSTCACHE_STALENESS_BOUND_MS", "1000"),
        ],
    );
    let mut stale = Vec::new();
    // Replica 1 stops after the schema and before any post: a read it answers lists none.
    pg.wait_for_replica(1, &db);
    pg.psql_replica(1, &db, "SELECT pg_wal_replay_pause()")
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(pods.create(0, "kim", &format!("post {i}")).await.0);
    }
    // Every post is older than the staleness bound before the first read.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Each page size is asked once, so that each read misses L1 and L2 and comes from L3.
    let feed = |limit: usize| format!("{}/v1/posts?author_id=kim&limit={limit}", pods.base(0));
    let posts = ids.len();
    let check_page = |round: usize, page: serde_json::Value| {
        let listed = page["items"].as_array().map_or(0, Vec::len);
        (listed != posts)
            .then(|| format!("round {round}: a feed page listed {listed} of {posts} posts"))
    };
    for round in 0..10 {
        // A write, then a page the replica that keeps up answers once it has replayed the
        // write: the pod has seen that replica's position cover everything the next reads need.
        let id = &ids[round % ids.len()];
        let (written, token) = pods.update(0, id, &format!("round {round}")).await;
        pg.wait_for_replica(0, &db);
        let reply = pods.http.get(feed(90 + round)).send().await.unwrap();
        stale.extend(check_page(round, reply.json().await.unwrap()));
        // Then the replica behind the URL is replaced by one far behind.
        service.route_to(1);
        let pages = futures_util::future::join_all((0..4).map(|k| {
            let url = feed(10 + 4 * round + k);
            let http = &pods.http;
            async move {
                let reply = http.get(url).send().await.unwrap();
                let status = reply.status();
                let body = reply.text().await.unwrap();
                match status.as_u16() {
                    200 => Ok(serde_json::from_str::<serde_json::Value>(&body).unwrap()),
                    _ => Err(format!("round {round}: {status} {body}")),
                }
            }
        }))
        .await;
        for page in pages {
            match page {
                Ok(page) => stale.extend(check_page(round, page)),
                Err(failed) => stale.push(failed),
            }
        }
        let (seen, tier) = pods.read(0, id, Some(&token)).await;
        if seen < written {
            stale.push(format!(
                "round {round}: read v{seen} from {tier} after writing v{written}"
            ));
        }
        service.route_to(0);
    }
    assert!(
        stale.is_empty(),
        "{} stale or failed reads: {stale:#?}",
        stale.len()
    );
    let replica_reads = pods
        .metric(
            0,
            "postcache_db_query_duration_seconds_count{role=\"replica\"}",
        )
        .await
        .unwrap_or(0.0);
    assert!(
        replica_reads > 0.0,
        "the replica that keeps up served no read"
    );
}
