//! Freshness under faults, black-box: the scenarios that once broke G1/G3 (a feed page built from
//! a lagging replica, an old token on a pod cut off from the log, a Redis that answers but refuses
//! writes, a log that lost entries), each against real `postcache serve` pods, PostgreSQL with a
//! streaming replica and Redis. Every read that starts more than Δ after a write was acknowledged
//! must reflect it, whichever pod, token or tier answers.

use std::time::{Duration, Instant};

use postcache_testkit::{Postgres, Redis};
use serde_json::Value;

use crate::tiers::{Pods, ReplicatedStack, Stack};

/// Δ of G3 for these pods.
const BOUND: Duration = Duration::from_millis(1000);

/// How long each scenario keeps checking reads after Δ has passed.
const WATCH: Duration = Duration::from_millis(2500);

/// `redis-cli -p port args…`, its output.
fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let port = redis.port().to_string();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits until every pod proves its caches fresh (a heartbeat of the shared log arrived).
async fn wait_trusted(pods: &Pods, n: usize) {
    for i in 0..n {
        pods.wait_metric(i, "postcache_l1_distrusted", 0.0).await;
    }
}

/// The ids of a feed page read through pod `i`, with `token` if given.
async fn feed_ids(pods: &Pods, i: usize, query: &str, token: Option<&str>) -> Vec<String> {
    let mut request = pods.http.get(format!("{}/v1/posts?{query}", pods.base(i)));
    if let Some(token) = token {
        request = request.header("x-postcache-token", token);
    }
    let reply = request.send().await.unwrap();
    assert_eq!(reply.status(), 200, "feed through pod {i}");
    let page: Value = reply.json().await.unwrap();
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads `id` on every pod, with and without `token`, until `WATCH` after Δ has passed since
/// `acked`: every read that started later than `acked + Δ` must serve `version` or newer.
async fn assert_reads_fresh(
    pods: &Pods,
    n: usize,
    id: &str,
    tokens: &[Option<&str>],
    version: i64,
    acked: Instant,
) {
    let until = acked + BOUND + WATCH;
    while Instant::now() < until {
        for i in 0..n {
            for token in tokens {
                let started = acked.elapsed();
                let (seen, tier) = pods.read(i, id, *token).await;
                assert!(
                    seen >= version || started <= BOUND,
                    "pod {i} served v{seen} from {tier} (token: {}) in a read that started \
                     {started:?} after v{version} was acknowledged\n{}",
                    token.is_some(),
                    pods.log(i)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reader without a token on pod B builds a tag's feed page while the replica has not replayed
/// a new post: the page must not be cached for readers who hold the writer's token, nor outlive Δ
/// for anyone (it once stayed until the page's TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_page_is_never_built_from_a_replica_behind_its_generation() {
    let ReplicatedStack {
        pods,
        pg,
        db,
        redis: _redis,
    } = ReplicatedStack::start(2, &[]);
    wait_trusted(&pods, 2).await;
    let (seed, _) = pods.create(0, "ann", "seed").await;
    let _ = pods
        .http
        .patch(format!("{}/v1/posts/{seed}", pods.base(0)))
        .json(&serde_json::json!({"tags": ["t"]}))
        .send()
        .await
        .unwrap();
    // Both pods have read the feed (cached) once the replica caught up.
    postcache_testkit::poll(Duration::from_secs(10), || {
        let out = pg
            .psql_replica(
                0,
                &db,
                "SELECT count(*) FROM posts WHERE tags::text LIKE '%\"t\"%'",
            )
            .map_err(|e| e.to_string())?;
        (out.trim() == "1").then_some(()).ok_or(out)
    })
    .unwrap();
    for i in 0..2 {
        assert_eq!(feed_ids(&pods, i, "tag=t", None).await, vec![seed.clone()]);
    }

    pg.psql_replica(0, &db, "SELECT pg_wal_replay_pause()")
        .unwrap();
    let reply = pods
        .http
        .post(format!("{}/v1/posts", pods.base(0)))
        .json(&serde_json::json!({"author_id": "bob", "title": "new", "body": "b", "tags": ["t"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    let acked = Instant::now();
    let token = reply.headers()["x-postcache-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let new_id = reply.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The tokenless reader gets there first, on the other pod.
    let _ = feed_ids(&pods, 1, "tag=t", None).await;
    for i in [0, 1] {
        let ids = feed_ids(&pods, i, "tag=t", Some(&token)).await;
        assert!(
            ids.contains(&new_id),
            "pod {i}: the writer's token read a feed page without its post: {ids:?}"
        );
    }
    // Still paused: once Δ has passed, every reader sees the post, token or not.
    let until = acked + BOUND + WATCH;
    while Instant::now() < until {
        for i in 0..2 {
            let started = acked.elapsed();
            let ids = feed_ids(&pods, i, "tag=t", None).await;
            assert!(
                ids.contains(&new_id) || started <= BOUND,
                "pod {i}: a tokenless feed read {started:?} after the post was acknowledged \
                 lacks it: {ids:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.psql_replica(0, &db, "SELECT pg_wal_replay_resume()")
        .unwrap();
}

/// Pod B holds X in L1; Redis stops (SIGSTOP); X changes through pod A. A reader on B holding
/// the token of X's creation (browsers always carry one) must not be answered from B's L1 once
/// Δ has passed: an old token proves nothing about later writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_token_is_not_served_from_a_cache_cut_off_from_the_log() {
    let Stack { pods, redis, .. } = Stack::start(2, &[]);
    wait_trusted(&pods, 2).await;
    let (id, created) = pods.create(0, "ann", "v1").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pods.read(1, &id, Some(&created)).await.1 != "l1" {
        assert!(Instant::now() < deadline, "pod b never cached the post");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    redis.process().pause();
    let (version, _) = pods.update(0, &id, "v2").await;
    let acked = Instant::now();
    // Only the old token: a tokenless read would refill L1 and hide what the token is served.
    assert_reads_fresh(&pods, 2, &id, &[Some(&created)], version, acked).await;
    redis.process().resume();
}

/// Redis answers reads but refuses every write (out of memory with `noeviction`): a write still
/// commits, and once Δ has passed no pod serves the old version from L1 or L2, with or without a
/// token; Redis is reported degraded. When Redis accepts writes again, every pod converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_writes_is_a_fault_not_a_source_of_stale_reads() {
    let Stack { pods, redis, .. } = Stack::start(2, &[]);
    wait_trusted(&pods, 2).await;
    let (id, created) = pods.create(0, "ann", "v1").await;
    for i in 0..2 {
        pods.read(i, &id, None).await;
    }

    redis_cli(&redis, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis_cli(&redis, &["CONFIG", "SET", "maxmemory", "1"]);
    let (version, token) = pods.update(0, &id, "v2").await;
    let acked = Instant::now();
    assert_reads_fresh(
        &pods,
        2,
        &id,
        &[None, Some(&created), Some(&token)],
        version,
        acked,
    )
    .await;
    for i in 0..2 {
        pods.wait_metric(i, "postcache_degraded{component=\"redis\"}", 1.0)
            .await;
    }

    redis_cli(&redis, &["CONFIG", "SET", "maxmemory", "0"]);
    let (version, _) = pods.update(1, &id, "v3").await;
    wait_trusted(&pods, 2).await;
    for i in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pods.read(i, &id, None).await.0 < version {
            assert!(Instant::now() < deadline, "pod {i} never caught up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The stream loses entries a pod has not applied (here: deleted and recreated while the pod
/// followed it, as a Redis restart without persistence or a FLUSHALL would): the pod must notice
/// the gap, count it, stop answering from its L1, and send its subscribers `resync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_lost_entries_is_noticed_never_skipped() {
    let Stack { pods, redis, .. } = Stack::start(2, &[]);
    wait_trusted(&pods, 2).await;
    let (id, _) = pods.create(0, "ann", "v1").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pods.read(1, &id, None).await.1 != "l1" {
        assert!(Instant::now() < deadline, "pod b never cached the post");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Pod b stops; the log is wiped with the change to X in it; pod b resumes.
    let (version, _) = {
        let b = pods.pid(1);
        nix::sys::signal::kill(b, nix::sys::signal::Signal::SIGSTOP).unwrap();
        redis_cli(&redis, &["CONFIG", "SET", "appendonly", "no"]);
        let written = pods.update(0, &id, "v2").await;
        redis_cli(&redis, &["DEL", "{postcache}:events"]);
        nix::sys::signal::kill(b, nix::sys::signal::Signal::SIGCONT).unwrap();
        written
    };
    let acked = Instant::now();
    // The write-through of v2 went to L2, but pod b's L1 holds v1 and never saw the event.
    assert_reads_fresh(&pods, 2, &id, &[None], version, acked).await;
    let gaps = pods.metric(1, "postcache_eventlog_gaps_total").await;
    assert!(
        gaps.is_some_and(|g| g >= 1.0),
        "pod b did not count the gap: {gaps:?}"
    );
}

/// Two processes on one PostgreSQL database and no Redis (a misconfiguration, or a rolling
/// update): neither can see the other's writes, so neither trusts its L1 while the other runs;
/// both read the database and say so (`postcache_degraded{component="eventlog"} 1`). When one
/// dies, the survivor caches again (with an emptied L1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_without_a_shared_log_never_serve_each_others_old_versions() {
    let pg = Postgres::shared();
    let database = pg.primary_url(&pg.create_database());
    let pods = Pods::start(2, &[("POSTCACHE_DATABASE_URL", database.as_str())]);
    let (id, _) = pods.create(0, "ann", "v1").await;
    pods.read(1, &id, None).await;
    for i in 0..2 {
        pods.wait_metric(i, "postcache_degraded{component=\"eventlog\"}", 1.0)
            .await;
    }
    for round in 0..20 {
        let writer = round % 2;
        let (version, _) = pods.update(writer, &id, &format!("r{round}")).await;
        for i in 0..2 {
            let (seen, tier) = pods.read(i, &id, None).await;
            assert_eq!(
                seen, version,
                "pod {i} served v{seen} from {tier} after v{version}"
            );
        }
    }
    for i in 0..2 {
        assert_eq!(
            pods.read(i, &id, None).await.1,
            "l3",
            "pod {i} caches nothing"
        );
    }

    nix::sys::signal::kill(pods.pid(0), nix::sys::signal::Signal::SIGKILL).unwrap();
    pods.wait_metric(1, "postcache_degraded{component=\"eventlog\"}", 0.0)
        .await;
    pods.read(1, &id, None).await;
    assert_eq!(
        pods.read(1, &id, None).await.1,
        "l1",
        "the survivor caches now"
    );
}

/// Views counted while Redis holds every client (`CLIENT PAUSE`): an increment that timed out
/// may still run when the pause ends, so it must not be counted again in the pod's own buffer
/// (it once was: 50 views were stored as 100). At most once, never twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_whose_increment_timed_out_is_never_counted_twice() {
    let Stack {
        pods,
        redis,
        pg,
        db,
        ..
    } = Stack::start(1, &[("POSTCACHE_VIEWS_FLUSH_MS", "200")]);
    wait_trusted(&pods, 1).await;
    let (id, _) = pods.create(0, "ann", "viewed").await;
    redis_cli(&redis, &["CLIENT", "PAUSE", "1500", "ALL"]);
    for _ in 0..50 {
        let reply = pods
            .http
            .post(format!("{}/v1/posts/{id}/views", pods.base(0)))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 202);
    }
    // Everything counted reaches PostgreSQL: the pause ends, the Redis counters and the pod's
    // buffer are flushed; then nothing changes any more.
    let stored = || {
        pg.psql_primary(&db, &format!("SELECT views FROM posts WHERE id = {id}"))
            .unwrap()
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    let mut last = (stored(), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(20);
    while last.1.elapsed() < Duration::from_secs(3) {
        assert!(Instant::now() < deadline, "views never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = stored();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let views = last.0;
    assert!(
        (1..=50).contains(&views),
        "50 views sent while Redis was paused were stored as {views}"
    );
}

/// The first SSE frame's JSON (heartbeat comments skipped) of `GET /v1/events` on `base`,
/// resuming after `last_event_id`.
async fn first_event(http: &reqwest::Client, base: &str, last_event_id: &str) -> Value {
    let mut reply = http
        .get(format!("{base}/v1/events"))
        .header("last-event-id", last_event_id)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let mut buffer = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(data) = buffer.lines().find_map(|l| l.strip_prefix("data:")) {
            return serde_json::from_str(data.trim()).unwrap();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, reply.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// The stream is deleted (a Redis restart without persistence would do the same) and a pod
/// starts afterwards: a subscriber resuming with an event id of the old stream must get `resync`,
/// not a silent gap, even from a pod that never saw the old stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_a_lost_stream_is_answered_with_resync() {
    let pg = Postgres::shared();
    let database = pg.primary_url(&pg.create_database());
    let redis = Redis::start();
    let url = redis.url();
    let env = [
        ("POSTCACHE_DATABASE_URL", database.as_str()),
        ("POSTCACHE_REDIS_URL", url.as_str()),
    ];
    let first = Pods::start(1, &env);
    wait_trusted(&first, 1).await;
    let (id, _) = first.create(0, "ann", "before").await;
    // The event id a subscriber of the old stream last saw.
    let old_id = redis_cli(
        &redis,
        &["XREVRANGE", "{postcache}:events", "+", "-", "COUNT", "1"],
    );
    let old_id = old_id.lines().next().unwrap().to_owned();
    assert!(old_id.contains('-'), "a stream entry id: {old_id:?}");
    redis_cli(&redis, &["DEL", "{postcache}:events"]);
    first.update(0, &id, "after").await;

    let second = Pods::start(1, &env);
    wait_trusted(&second, 1).await;
    for pods in [&first, &second] {
        let event = first_event(&pods.http, pods.base(0), &old_id).await;
        assert_eq!(
            event["type"],
            "resync",
            "resuming after {old_id} of a lost stream on {}: {event}",
            pods.base(0)
        );
    }
}
