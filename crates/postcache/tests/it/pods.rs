//! Several `postcache serve` processes sharing PostgreSQL and a Redis event log: events and cache
//! invalidations cross pods, and event ids mean the same on every pod.

use std::time::Duration;

use futures_util::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use postcache_testkit::{Postgres, Redis, free_port};

use crate::{Served, create_post, serve, wait_exit, wait_healthy};

type Body =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

struct Events {
    body: Body,
    buffer: String,
}

impl Events {
    async fn open(base: &str, last_event_id: Option<&str>) -> Events {
        let mut request = reqwest::Client::new().get(format!("{base}/v1/events"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        Events {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event's JSON (heartbeats skipped).
    async fn next(&mut self) -> serde_json::Value {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) {
                    return serde_json::from_str(data.trim()).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event in time");
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
        }
    }
}

/// A healthy `postcache serve` on `database` and the shared log at `redis_url`: (child, base URL,
/// its working directory).
fn pod(database: &str, redis_url: &str) -> (Served, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let env = [
        ("POSTCACHE_LISTEN", listen.as_str()),
        ("POSTCACHE_DATABASE_URL", database),
        ("POSTCACHE_REDIS_URL", redis_url),
    ];
    let mut child = serve(dir.path(), &env);
    let base = format!("http://{listen}");
    wait_healthy(&base, &mut child);
    (child, base, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_pod_reach_subscribers_and_caches_of_another() {
    let pg = Postgres::shared();
    let database = pg.primary_url(&pg.create_database());
    let redis = Redis::start();
    let redis_url = redis.url();
    let pods = vec![pod(&database, &redis_url), pod(&database, &redis_url)];
    let (a, b) = (pods[0].1.clone(), pods[1].1.clone());
    let http = reqwest::Client::new();
    let mut on_a = Events::open(&a, None).await;
    let mut on_b = Events::open(&b, None).await;

    let created = create_post(&http, &a, "ann", "from pod a").await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (seen_by_a, seen_by_b) = (on_a.next().await, on_b.next().await);
    assert_eq!(
        seen_by_b["post_id"],
        id.as_str(),
        "pod b's subscriber gets pod a's write"
    );
    assert_eq!(
        seen_by_a["id"], seen_by_b["id"],
        "an event has the same id on every pod"
    );

    // Pod b caches the post, then pod a changes it: b's next reads move to the new version.
    let read = |base: String| {
        let (http, id) = (http.clone(), id.clone());
        async move {
            let reply = http
                .get(format!("{base}/v1/posts/{id}"))
                .send()
                .await
                .unwrap();
            let tier = reply.headers()["x-postcache-tier"]
                .to_str()
                .unwrap()
                .to_owned();
            (
                reply.json::<serde_json::Value>().await.unwrap()["version"]
                    .as_i64()
                    .unwrap(),
                tier,
            )
        }
    };
    // L1 is trusted once the log has proven this pod fresh (a heartbeat from the relay leader).
    postcache_testkit::poll(Duration::from_secs(10), || {
        let out = std::process::Command::new("curl")
            .args(["-sf", &format!("{b}/metrics")])
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == "postcache_l1_distrusted 0")
            .then_some(())
            .ok_or_else(|| "pod b does not trust its L1 yet".to_owned())
    })
    .unwrap();
    read(b.clone()).await;
    assert_eq!(
        read(b.clone()).await,
        (1, "l1".to_owned()),
        "pod b serves from its L1"
    );
    let patched = http
        .patch(format!("{a}/v1/posts/{id}"))
        .header("content-type", "application/json")
        .body(r#"{"title":"changed on pod a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(on_b.next().await["version"], 2);
    assert_eq!(
        read(b.clone()).await.0,
        2,
        "once the event reached pod b, its L1 has the new version"
    );

    // A subscriber resumes on the other pod with the id it last saw.
    let last = on_b.next_id_after_create(&http, &b).await;
    let mut resumed = Events::open(&a, Some(&last)).await;
    let later = create_post(&http, &b, "bob", "from pod b").await;
    assert_eq!(
        resumed.next().await["post_id"],
        later["id"],
        "resumed on pod a without a gap or a resync"
    );

    for (mut child, _, _dir) in pods {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        assert!(wait_exit(&mut child).success());
    }
}

impl Events {
    /// Creates a post through `base` and returns the id of its event as this stream sees it.
    async fn next_id_after_create(&mut self, http: &reqwest::Client, base: &str) -> String {
        create_post(http, base, "ann", "marker").await;
        self.next().await["id"].as_str().unwrap().to_owned()
    }
}

/// Polls `/metrics` of `base` until it has `line`.
async fn metrics_show(base: &str, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/metrics never showed `{line}`"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_raises_the_degraded_flags_and_events_flow_again_when_it_is_back() {
    let pg = Postgres::shared();
    let database = pg.primary_url(&pg.create_database());
    let redis = Redis::start();
    let redis_url = redis.url();
    let (mut child, base, _dir) = pod(&database, &redis_url);
    metrics_show(&base, r#"postcache_degraded{component="eventlog"} 0"#).await;

    redis.process().kill();
    metrics_show(&base, r#"postcache_degraded{component="eventlog"} 1"#).await;
    metrics_show(&base, r#"postcache_degraded{component="redis"} 1"#).await;
    let http = reqwest::Client::new();
    let during = create_post(&http, &base, "ann", "written while redis is down").await;
    assert_eq!(during["version"], 1, "writes do not need Redis");

    redis.process().restart();
    metrics_show(&base, r#"postcache_degraded{component="eventlog"} 0"#).await;
    let mut events = Events::open(&base, None).await;
    let after = create_post(&http, &base, "ann", "after redis came back").await;
    // Events flow again (the one written during the outage may come first: it waited in the outbox).
    while events.next().await["post_id"] != after["id"] {}

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child).success());
}
