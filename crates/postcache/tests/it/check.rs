//! `postcache check` against real deployments: a healthy one (two pods on one PostgreSQL and one
//! Redis) passes with no violation; a broken one (two pods, each on its own SQLite file, presented
//! as one deployment) is caught, and the binary exits non-zero.

use std::process::{Command, Output};
use std::time::Duration;

use postcache_check::{Guarantee, Plan, Report, check_until};
use postcache_testkit::{Postgres, Redis, free_port};

use crate::{Served, serve, wait_healthy};

/// A healthy `postcache serve` with `env` (rate limit off: the checker runs closed-loop).
fn pod(env: &[(&str, &str)]) -> (Served, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut all = vec![
        ("POSTCACHE_LISTEN", listen.as_str()),
        ("POSTCACHE_RATE_LIMIT_PER_SECOND", "0"),
    ];
    all.extend_from_slice(env);
    let mut child = serve(dir.path(), &all);
    let base = format!("http://{listen}");
    wait_healthy(&base, &mut child);
    (child, base, dir)
}

fn plan(urls: &[String], seed: u64, settle: Duration) -> Plan {
    let mut plan = Plan::new(urls.to_vec()).unwrap();
    plan.seed = seed;
    plan.clients = 4;
    plan.settle = settle;
    plan
}

/// `postcache check --json` for `seconds` against `urls`.
async fn check_binary(urls: &[String], seconds: &str, settle_ms: &str) -> (Output, Report) {
    let args = vec![
        "check".to_owned(),
        "--url".to_owned(),
        urls.join(","),
        "--duration".to_owned(),
        seconds.to_owned(),
        "--settle-ms".to_owned(),
        settle_ms.to_owned(),
        "--clients".to_owned(),
        "3".to_owned(),
        "--json".to_owned(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_postcache"))
            .args(&args)
            .env_remove("POSTCACHE_CHECK_URLS")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report_from(json))
}

/// The figures the tests assert on, read back from the JSON report.
fn report_from(json: serde_json::Value) -> Report {
    let mut report = Report::default();
    for (guarantee, key) in [
        (Guarantee::ReadYourWrites, "G1"),
        (Guarantee::MonotonicReads, "G2"),
        (Guarantee::BoundedStaleness, "G3"),
        (Guarantee::Realtime, "G5"),
    ] {
        if let Some(count) = json["violations"][key]["count"].as_u64() {
            report.violations.entry(guarantee).or_default().count = count as usize;
        }
    }
    report.lost_writes.count = json["lost_writes"]["count"].as_u64().unwrap() as usize;
    report.posts_created = json["posts_created"].as_u64().unwrap() as usize;
    report.seed = json["seed"].as_u64().unwrap();
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_deployment_passes_the_check() {
    let pg = Postgres::shared();
    let database = pg.primary_url(&pg.create_database());
    let redis = Redis::start();
    let redis_url = redis.url();
    let env = [
        ("POSTCACHE_DATABASE_URL", database.as_str()),
        ("POSTCACHE_REDIS_URL", redis_url.as_str()),
    ];
    let pods = [pod(&env), pod(&env)];
    let urls: Vec<String> = pods.iter().map(|p| p.1.clone()).collect();

    let plan = plan(&urls, 7, Duration::from_secs(5));
    let report = check_until(&plan, tokio::time::sleep(Duration::from_secs(4)))
        .await
        .unwrap();
    let summary = postcache_check::render(&report);
    assert!(
        report.passed(),
        "a healthy deployment must pass:\n{summary}"
    );
    assert_eq!(report.seed, 7);
    assert!(report.total_ops() > 200, "too little load:\n{summary}");
    assert!(report.posts_created > 10, "{summary}");
    assert!(
        report.convergence.probes > 0 && report.convergence.converged == report.convergence.probes,
        "{summary}"
    );
    assert!(
        report
            .subscribers
            .iter()
            .all(|s| s.connected_at_end && s.events > 0),
        "{summary}"
    );
    assert_eq!(report.cleanup.failed, 0, "{summary}");
    // Nothing of the run is left: its tag feed is empty on both pods.
    for base in &urls {
        let feed: serde_json::Value =
            reqwest::get(format!("{base}/v1/posts?tag={}&limit=100", report.run))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        assert_eq!(
            feed["items"].as_array().map(Vec::len),
            Some(0),
            "left behind on {base}"
        );
    }

    let (out, report) = check_binary(&urls, "2", "3000").await;
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!((report.violations(), report.lost_writes()), (0, 0));
    assert!(report.posts_created > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_on_separate_databases_are_caught() {
    let files = tempfile::tempdir().unwrap();
    let (a, b) = (
        format!("sqlite:{}", files.path().join("a.db").display()),
        format!("sqlite:{}", files.path().join("b.db").display()),
    );
    let pods = [
        pod(&[("POSTCACHE_DATABASE_URL", a.as_str())]),
        pod(&[("POSTCACHE_DATABASE_URL", b.as_str())]),
    ];
    let urls: Vec<String> = pods.iter().map(|p| p.1.clone()).collect();

    let mut plan = plan(&urls, 11, Duration::from_millis(1500));
    plan.staleness_bound = Duration::from_millis(300);
    let report = check_until(&plan, tokio::time::sleep(Duration::from_secs(3)))
        .await
        .unwrap();
    let summary = postcache_check::render(&report);
    let count = |g| report.violations.get(&g).map_or(0, |f| f.count);
    assert!(
        count(Guarantee::ReadYourWrites) > 0 && count(Guarantee::BoundedStaleness) > 0,
        "writes on one pod never show on the other: G1 and G3 must fail\n{summary}"
    );
    assert!(report.lost_writes() > 0, "{summary}");
    assert!(!report.passed());
    assert!(summary.contains("FAIL"), "{summary}");
    let first = &report.violations[&Guarantee::BoundedStaleness].first[0];
    assert!(
        urls.contains(&first.url) && !first.post.is_empty(),
        "{first:?}"
    );

    let (out, report) = check_binary(&urls, "2", "500").await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.violations() + report.lost_writes() > 0);
}
