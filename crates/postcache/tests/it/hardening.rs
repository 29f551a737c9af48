//! Production hardening, as a user meets it: a slow primary answers 503 in bounded time and
//! changes nothing; start-up waits for the database (alive, not ready) instead of crash-looping;
//! SIGTERM drains (readiness fails first, the API keeps answering); clients are told apart
//! behind trusted proxies only; realtime connections are capped per client, end at a maximum
//! age, and one that stops reading is cut at the write deadline; forged tokens buy no database
//! load; bad configuration is refused at start with the flag named.

use std::io::Write;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use postcache_testkit::{Postgres, free_port};
use sqlx::Connection;

use crate::tiers::Pods;
use crate::{serve, stderr_of, wait_exit};

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_of(http: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let reply = http.get(url).send().await.ok()?;
    let status = reply.status().as_u16();
    Some((status, reply.text().await.unwrap_or_default()))
}

/// Waits until `GET url` answers `status`; the body of that answer.
async fn wait_status(http: &reqwest::Client, url: &str, status: u16) -> String {
    eventually(
        &format!("{url} to answer {status}"),
        Duration::from_secs(30),
        || async {
            status_of(http, url)
                .await
                .filter(|(answered, _)| *answered == status)
                .map(|(_, body)| body)
        },
    )
    .await
}

/// The value of `series` on the server at `base` equals `value` (polled).
async fn wait_series(http: &reqwest::Client, base: &str, series: &str, value: f64) {
    eventually(
        &format!("{series} = {value}"),
        Duration::from_secs(30),
        || async { (crate::tiers::scrape(http, base, series).await == Some(value)).then_some(()) },
    )
    .await
}

/// One `postcache serve` on a fresh SQLite file (the embedded default) with `env`.
fn sqlite_pod(env: &[(&str, &str)]) -> (Pods, String) {
    let pods = Pods::start(1, env);
    let base = pods.base(0).to_owned();
    (pods, base)
}

/// A row lock held by another session makes the primary slow for writes of that post (not dead:
/// everything else answers). The statement timeout answers 503 with `Retry-After`; without it,
/// the request timeout does. Reads and readiness go on, and the timed-out writes change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_primary_answers_503_in_bounded_time_and_changes_nothing() {
    let pg = Postgres::shared();
    let db = pg.create_database();
    let url = pg.primary_url(&db);
    let statement = Pods::start(
        1,
        &[
            ("POSTCACHE_DATABASE_URL", url.as_str()),
            ("POSTCACHE_DB_STATEMENT_TIMEOUT_MS", "500"),
        ],
    );
    let request = Pods::start(
        1,
        &[
            ("POSTCACHE_DATABASE_URL", url.as_str()),
            ("POSTCACHE_DB_STATEMENT_TIMEOUT_MS", "0"),
            ("POSTCACHE_DB_ACQUIRE_TIMEOUT_MS", "1000"),
            ("POSTCACHE_REQUEST_TIMEOUT_MS", "1500"),
        ],
    );
    let (id, _) = statement.create(0, "ann", "v1").await;

    let mut locker = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("SELECT id FROM posts WHERE id = $1 FOR UPDATE")
        .bind(id.parse::<i64>().unwrap())
        .execute(&mut locker)
        .await
        .unwrap();

    for (pods, why) in [
        (&statement, "statement timeout"),
        (&request, "request timeout"),
    ] {
        let started = Instant::now();
        let reply = pods
            .http
            .patch(format!("{}/v1/posts/{id}", pods.base(0)))
            .json(&serde_json::json!({"title": "blocked"}))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(reply.status(), 503, "{why}: {}", pods.log(0));
        assert!(reply.headers().contains_key("retry-after"), "{why}");
        assert!(
            took < Duration::from_secs(5),
            "{why}: answered after {took:?}"
        );
        let body: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{why}: {body}");
        let (version, _) = pods.read(0, &id, None).await;
        assert_eq!(version, 1, "{why}: reads go on");
        let (status, _) = status_of(&pods.http, &format!("{}/readyz", pods.base(0)))
            .await
            .unwrap();
        assert_eq!(
            status, 200,
            "{why}: a slow write path is no reason to leave the Service"
        );
    }
    let timeouts = request
        .metric(0, "postcache_http_request_timeouts_total")
        .await;
    assert_eq!(timeouts, Some(1.0));

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    let (version, _) = statement.update(0, &id, "v2").await;
    assert_eq!(version, 2, "the timed-out writes were rolled back");
    let (version, _) = request.update(0, &id, "v3").await;
    assert_eq!(version, 3);
}

/// A fresh install starts the service before its database: the process stays up, `/healthz`
/// answers, `/readyz` says "starting", and it serves as soon as the database exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_the_database_alive_and_not_ready() {
    let pg = Postgres::shared();
    let name = format!("late_{}", free_port());
    let url = pg.primary_url(&name);
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = serve(
        dir.path(),
        &[
            ("POSTCACHE_LISTEN", listen.as_str()),
            ("POSTCACHE_DATABASE_URL", url.as_str()),
        ],
    );
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    let body = wait_status(&http, &format!("{base}/readyz"), 503).await;
    assert!(body.contains("starting"), "{body}");
    let (health, _) = status_of(&http, &format!("{base}/healthz")).await.unwrap();
    assert_eq!(health, 200, "alive while it waits");
    let (api, _) = status_of(&http, &format!("{base}/v1/posts")).await.unwrap();
    assert_eq!(api, 503, "the API says it is not ready, not 404");
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited instead of waiting: {}",
        stderr_of(dir.path())
    );

    pg.psql_primary("postgres", &format!("CREATE DATABASE {name}"))
        .unwrap();
    eventually(
        "readiness once the database exists",
        Duration::from_secs(30),
        || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                status_of(&http, &format!("{base}/readyz"))
                    .await
                    .filter(|(status, _)| *status == 200)
            }
        },
    )
    .await;
    crate::create_post(&http, &base, "ann", "after the wait").await;
    let _ = &mut child;
}

/// SIGTERM: readiness fails at once while the API still answers for the drain delay (load
/// balancers stop sending first), then the process stops accepting and exits cleanly.
#[tokio::test]
async fn sigterm_fails_readiness_first_and_keeps_serving_through_the_drain_delay() {
    let (mut pods, base) = sqlite_pod(&[("POSTCACHE_DRAIN_DELAY_SECONDS", "3")]);
    let http = reqwest::Client::new();
    let (id, _) = pods.create(0, "ann", "drained").await;

    kill(pods.pid(0), Signal::SIGTERM).unwrap();
    let body = wait_status(&http, &format!("{base}/readyz"), 503).await;
    assert!(body.contains("draining"), "{body}");
    let (status, _) = status_of(&http, &format!("{base}/v1/posts/{id}"))
        .await
        .expect("still accepting during the drain delay");
    assert_eq!(status, 200);
    let log = pods.log(0);
    let status = wait_exit(pods.child(0));
    assert!(status.success(), "{status}\n{log}");
}

/// Behind trusted proxies each forwarded client has its own rate limit; from anyone else the
/// forwarding headers are ignored, so forging them buys nothing.
#[tokio::test]
async fn forwarded_clients_are_believed_only_from_trusted_proxies() {
    let limits = [
        ("POSTCACHE_RATE_LIMIT_PER_SECOND", "1"),
        ("POSTCACHE_RATE_LIMIT_BURST", "3"),
    ];
    let (_trusting, trusting) = sqlite_pod(
        &[
            limits.as_slice(),
            &[("POSTCACHE_TRUSTED_PROXIES", "127.0.0.0/8,::1/128")],
        ]
        .concat(),
    );
    let (_plain, plain) = sqlite_pod(&limits);
    let http = reqwest::Client::new();
    let get = |base: &str, client: &str| {
        let request = http
            .get(format!("{base}/v1/posts"))
            .header("x-forwarded-for", client.to_owned());
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for _ in 0..3 {
        assert_eq!(get(&trusting, "203.0.113.1").await, 200);
    }
    assert_eq!(
        get(&trusting, "203.0.113.1").await,
        429,
        "one client's burst is spent"
    );
    assert_eq!(
        get(&trusting, "203.0.113.2").await,
        200,
        "another client is not"
    );

    for i in 0..3 {
        assert_eq!(get(&plain, &format!("198.51.100.{i}")).await, 200);
    }
    assert_eq!(
        get(&plain, "198.51.100.99").await,
        429,
        "an untrusted peer's forwarding header is ignored: a fresh address per request buys nothing"
    );
}

/// Realtime connections per client address are capped (429 past it, counted), and a stream ends
/// at its maximum age (the client resumes where it was).
#[tokio::test]
async fn realtime_connections_are_capped_per_client_and_end_at_their_maximum_age() {
    let (_pod, base) = sqlite_pod(&[
        ("POSTCACHE_TRUSTED_PROXIES", "127.0.0.0/8"),
        ("POSTCACHE_REALTIME_MAX_PER_CLIENT", "2"),
        ("POSTCACHE_REALTIME_MAX_AGE_SECONDS", "2"),
    ]);
    let http = reqwest::Client::new();
    let open = |client: &str| {
        http.get(format!("{base}/v1/events"))
            .header("x-forwarded-for", client.to_owned())
            .send()
    };
    let first = open("203.0.113.5").await.unwrap();
    let _second = open("203.0.113.5").await.unwrap();
    assert_eq!(first.status(), 200);
    let third = open("203.0.113.5").await.unwrap();
    assert_eq!(third.status(), 429, "the third stream of one client");
    let other = open("203.0.113.6").await.unwrap();
    assert_eq!(other.status(), 200, "another client is not affected");
    let limited = crate::tiers::scrape(
        &http,
        &base,
        "postcache_client_limited_total{limit=\"realtime\"}",
    )
    .await;
    assert_eq!(limited, Some(1.0));

    // The first stream ends by itself at its maximum age.
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(15), first.text())
        .await
        .expect("the stream outlived its maximum age by far")
        .unwrap_or_default();
    assert!(started.elapsed() < Duration::from_secs(15), "{body}");
    let aged = crate::tiers::scrape(
        &http,
        &base,
        "postcache_realtime_disconnects_total{reason=\"age\"}",
    )
    .await;
    assert!(aged >= Some(1.0), "{aged:?}");
}

/// A subscriber that stops reading is cut once a write has waited for the send deadline: its
/// slot comes back (here the only one), instead of being held for ever.
#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_at_the_write_deadline() {
    let (_pod, base) = sqlite_pod(&[
        ("POSTCACHE_RATE_LIMIT_PER_SECOND", "0"),
        ("POSTCACHE_REALTIME_MAX_CONNECTIONS", "1"),
        ("POSTCACHE_REALTIME_SEND_TIMEOUT_MS", "500"),
    ]);
    let addr = base.trim_start_matches("http://").to_owned();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stalled,
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let http = reqwest::Client::new();
    let gauge = "postcache_realtime_connections{transport=\"sse\"}";
    wait_series(&http, &base, gauge, 1.0).await;
    let busy = http.get(format!("{base}/v1/events")).send().await.unwrap();
    assert_eq!(busy.status(), 503, "the only slot is taken");
    drop(busy);

    // Far more than the socket buffers hold: the server's writes to the stalled client wait.
    let big = "x".repeat(60_000);
    for i in 0..250 {
        let reply = http
            .post(format!("{base}/v1/posts"))
            .json(
                &serde_json::json!({"author_id": "ann", "title": format!("big {i}"), "body": big}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 201);
    }
    wait_series(&http, &base, gauge, 0.0).await;
    let next = http.get(format!("{base}/v1/events")).send().await.unwrap();
    assert_eq!(next.status(), 200, "the slot came back");
    drop(stalled);
}

/// Tokens are signed: forged ones (a far log position, the unsigned form) are read as no token,
/// counted, and a cached post keeps being served from memory; a genuine token still works.
#[tokio::test]
async fn forged_tokens_buy_no_database_load() {
    let (_pod, base) = sqlite_pod(&[("POSTCACHE_RATE_LIMIT_PER_SECOND", "0")]);
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{base}/v1/posts"))
        .json(&serde_json::json!({"author_id": "ann", "title": "t", "body": "b"}))
        .send()
        .await
        .unwrap();
    let genuine = created
        .headers()
        .get("x-postcache-token")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = |token: String| {
        let request = http
            .get(format!("{base}/v1/posts/{id}"))
            .header("x-postcache-token", token);
        async move {
            let reply = request.send().await.unwrap();
            assert_eq!(reply.status(), 200);
            reply.headers()["x-postcache-tier"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(read(genuine.clone()).await, "l1", "{genuine}");
    let far = 4_000_000_000_000u64;
    let mut tiers = std::collections::BTreeMap::new();
    for i in 0..150u64 {
        let forged = if i % 2 == 0 {
            format!(
                "{far}-{i}.ffffffff.{:032x}",
                u128::from(i) * 0x9e37_79b9_7f4a_7c15
            )
        } else {
            format!("{far}-{i}.ffffffff")
        };
        *tiers.entry(read(forged).await).or_insert(0) += 1;
    }
    assert_eq!(tiers.keys().collect::<Vec<_>>(), ["l1"], "{tiers:?}");
    let rejected = crate::tiers::scrape(&http, &base, "postcache_tokens_rejected_total").await;
    assert_eq!(rejected, Some(150.0));
}

/// Values that cannot work are refused at start, naming the flag, instead of failing later.
#[test]
fn bad_configuration_is_refused_at_start_naming_the_flag() {
    for (env, named) in [
        (
            ("POSTCACHE_STALENESS_BOUND_MS", "0"),
            "--staleness-bound-ms",
        ),
        (("POSTCACHE_REDIS_TIMEOUT_MS", "0"), "--redis-timeout-ms"),
        (("POSTCACHE_L1_MAX_ENTRIES", "0"), "--l1-max-entries"),
        (
            ("POSTCACHE_EVENTLOG_RETENTION", "0"),
            "--eventlog-retention",
        ),
        (("POSTCACHE_REALTIME_QUEUE", "0"), "--realtime-queue"),
        (
            ("POSTCACHE_DB_MAX_CONNECTIONS", "0"),
            "--db-max-connections",
        ),
        (
            ("POSTCACHE_TRUSTED_PROXIES", "10.0.0.0/33"),
            "--trusted-proxies",
        ),
        (
            ("POSTCACHE_L2_FEED_TTL_SECONDS", "601"),
            "--l2-feed-ttl-seconds",
        ),
        (
            ("POSTCACHE_REQUEST_TIMEOUT_MS", "100"),
            "--request-timeout-ms",
        ),
        (("POSTCACHE_TOKEN_KEYS", "short"), "token key 1"),
        (("POSTCACHE_REDIS_CLUSTER", "true"), "--redis-cluster"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let mut child = serve(dir.path(), &[("POSTCACHE_LISTEN", listen.as_str()), env]);
        let status = wait_exit(&mut child);
        let log = stderr_of(dir.path());
        assert!(!status.success(), "{env:?} was accepted");
        assert!(
            log.contains(named),
            "{env:?}: the message does not name {named}:\n{log}"
        );
        assert!(
            !dir.path().join("postcache.db").exists(),
            "{env:?}: refused before touching the database"
        );
    }
}
