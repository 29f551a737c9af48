//! Monitoring against the real thing: promtool on the rules and on a live `/metrics`, and a real
//! Prometheus scraping `postcache serve` while traffic moves the hit ratio across the alert's
//! threshold; every dashboard and Grafana-alert expression is run against that Prometheus.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use postcache_operator::alerts::{AlertThresholds, Scope, alert_rules, hit_ratio_expr};
use postcache_testkit::{Postgres, Prometheus, Redis, ScrapeTarget, free_port, tool};

use crate::{serve, wait_exit, wait_healthy};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let (ok, out) = promtool(
        &["check", "rules", "deploy/monitoring/postcache-rules.yml"],
        None,
    );
    assert!(ok && out.contains("6 rules found"), "{out}");
    let (ok, out) = promtool(
        &[
            "test",
            "rules",
            "deploy/monitoring/tests/postcache-rules.test.yml",
        ],
        None,
    );
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> Result<bool, String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        match check().await {
            Ok(true) => return,
            Ok(false) => last = "condition not met".into(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out waiting for {what}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_watches_the_hit_ratio_cross_the_alert_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = addr.to_string();
    // PostgreSQL with a replica and Redis: every panel has a metric to show, replica lag and
    // invalidation lag included.
    let pg = Postgres::shared();
    let db = pg.create_database();
    let (primary, replicas) = (pg.primary_url(&db), pg.replica_urls(&db).join(","));
    let redis = Redis::start();
    let redis_url = redis.url();
    let mut child = serve(
        dir.path(),
        &[
            ("POSTCACHE_LISTEN", listen.as_str()),
            ("POSTCACHE_VIEWS_FLUSH_MS", "200"),
            ("POSTCACHE_DATABASE_URL", primary.as_str()),
            ("POSTCACHE_REPLICA_URLS", replicas.as_str()),
            ("POSTCACHE_REDIS_URL", redis_url.as_str()),
        ],
    );
    let base = format!("http://{addr}");
    wait_healthy(&base, &mut child);
    let http = reqwest::Client::new();

    let job = ScrapeTarget {
        job: "postcache".into(),
        addr,
        path: "/metrics".into(),
        labels: vec![],
    };
    let rules = repo().join("deploy/monitoring/postcache-rules.yml");
    let prometheus = Prometheus::start(&[job], &[rules.as_path()]);
    // Rates need a sample before the traffic: wait for the first scrape.
    until("the first scrape", async || {
        Ok(prometheus.query("up{job=\"postcache\"}").await? == Some(1.0))
    })
    .await;

    // A live subscriber, so that the realtime panels have a connection and deliveries to show.
    let subscriber = http.get(format!("{base}/v1/events")).send().await.unwrap();
    let drain = tokio::spawn(async move {
        let mut events = subscriber.bytes_stream();
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut events).await {}
    });

    // Unique ids: every read misses L1.
    let mut ids = Vec::new();
    for i in 0..40 {
        let body = format!(r#"{{"author_id":"ann","title":"post {i}","body":"b","tags":["m"]}}"#);
        let reply = http
            .post(format!("{base}/v1/posts"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        ids.push(
            reply.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    let invalidate = serde_json::json!({"ids": all}).to_string();
    http.post(format!("{base}/v1/cache/invalidate"))
        .header("content-type", "application/json")
        .body(invalidate)
        .send()
        .await
        .unwrap();
    for id in &ids {
        assert_eq!(
            http.get(format!("{base}/v1/posts/{id}"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    http.post(format!("{base}/v1/posts/{}/views", ids[0]))
        .send()
        .await
        .unwrap();
    http.get(format!("{base}/v1/posts/999999"))
        .send()
        .await
        .unwrap(); // one 404 for the error panel

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (ok, out) = promtool(&["check", "metrics"], Some(&metrics));
    assert!(ok, "promtool check metrics:\n{out}");

    let thresholds = AlertThresholds::default();
    let ratio = hit_ratio_expr("5m", &Scope::all());
    let low_hit_alert = alert_rules(&thresholds, &Scope::all())
        .into_iter()
        .find(|r| r.name == "PostCacheLowHitRate")
        .unwrap();
    until("the hit ratio to fall below the threshold", async || {
        Ok(prometheus
            .query(&ratio)
            .await?
            .is_some_and(|r| r < thresholds.min_hit_ratio))
    })
    .await;
    assert!(
        prometheus
            .query(&low_hit_alert.expr())
            .await
            .unwrap()
            .is_some(),
        "the alert's condition holds"
    );

    // The same post over and over: L1 hits.
    for _ in 0..1500 {
        http.get(format!("{base}/v1/posts/{}", ids[0]))
            .send()
            .await
            .unwrap();
    }
    until("the hit ratio to rise above the threshold", async || {
        Ok(prometheus
            .query(&ratio)
            .await?
            .is_some_and(|r| r > thresholds.min_hit_ratio))
    })
    .await;
    assert_eq!(
        prometheus.query(&low_hit_alert.expr()).await.unwrap(),
        None,
        "the alert's condition is gone"
    );

    // Every expression of the dashboard and of the Grafana alerts answers with data.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/monitoring/grafana/postcache-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().unwrap().iter().map(|t| {
                t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m")
                    .replace("$namespace", ".*")
                    .replace("$job", ".*")
            })
        })
        .collect();
    let alerting: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(repo().join("deploy/monitoring/grafana/alerting.yaml")).unwrap(),
    )
    .unwrap();
    for rule in alerting["groups"][0]["rules"].as_array().unwrap() {
        exprs.push(
            rule["data"][0]["model"]["expr"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        alerting["groups"][0]["rules"].as_array().unwrap().len(),
        6,
        "all six alerts in Grafana"
    );
    assert!(exprs.len() >= 15, "{} expressions", exprs.len());
    for expr in &exprs {
        until(&format!("data for `{expr}`"), async || {
            Ok(prometheus.query(expr).await?.is_some())
        })
        .await;
    }

    drain.abort();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child).success());
}

/// The operator's PrometheusRule of one PostCache, as the rules file the Prometheus Operator
/// makes of it.
fn operator_rules(dir: &Path, namespace: &str, name: &str) -> PathBuf {
    let mut pc = postcache_operator::PostCache::new(name, Default::default());
    pc.metadata.namespace = Some(namespace.into());
    let apis = postcache_operator::monitoring::MonitoringApis {
        service_monitor: true,
        prometheus_rule: true,
    };
    let rule = postcache_operator::monitoring::children(&pc, apis)
        .into_iter()
        .find(|c| c.resource.kind == "PrometheusRule")
        .unwrap();
    let object = serde_json::to_value(&rule.object).unwrap();
    let file = dir.join(format!("{namespace}-{name}.yml"));
    std::fs::write(&file, serde_json::to_string(&object["spec"]).unwrap()).unwrap();
    file
}

/// Two PostCaches named alike in two namespaces, one Prometheus, each with the operator's rules:
/// the one whose reads miss has its low-hit-rate alert pending once, from its own rules; the
/// other's rules stay silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postcaches_in_one_prometheus_each_alert_fires_once_for_the_right_one() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let http = reqwest::Client::new();
    let mut pods = Vec::new();
    let mut targets = Vec::new();
    for (dir, namespace) in dirs.iter().zip(["shop", "blog"]) {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let listen = addr.to_string();
        let mut child = serve(dir.path(), &[("POSTCACHE_LISTEN", listen.as_str())]);
        let base = format!("http://{addr}");
        wait_healthy(&base, &mut child);
        pods.push((child, base));
        targets.push(ScrapeTarget {
            // A ServiceMonitor's job is the Service's name: alike in both namespaces.
            job: "feed-cache".into(),
            addr,
            path: "/metrics".into(),
            labels: vec![("namespace".into(), namespace.into())],
        });
    }
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = [
        operator_rules(rules_dir.path(), "shop", "feed"),
        operator_rules(rules_dir.path(), "blog", "feed"),
    ];
    let rule_refs: Vec<&Path> = rules.iter().map(PathBuf::as_path).collect();
    let prometheus = Prometheus::start(&targets, &rule_refs);
    until("the first scrapes", async || {
        Ok(prometheus
            .query("count(up{job=\"feed-cache\"} == 1)")
            .await?
            == Some(2.0))
    })
    .await;

    // Shop's reads all miss L1; blog's all hit.
    for (i, (_, base)) in pods.iter().enumerate() {
        let reply = http
            .post(format!("{base}/v1/posts"))
            .json(&serde_json::json!({"author_id": "ann", "title": "t", "body": "b"}))
            .send()
            .await
            .unwrap();
        let id = reply.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        for _ in 0..50 {
            if i == 0 {
                http.post(format!("{base}/v1/cache/invalidate"))
                    .json(&serde_json::json!({"ids": [id]}))
                    .send()
                    .await
                    .unwrap();
            }
            let read = http
                .get(format!("{base}/v1/posts/{id}"))
                .send()
                .await
                .unwrap();
            assert_eq!(read.status(), 200);
        }
    }
    until("shop's alert to be pending", async || {
        let alerts = prometheus.active_alerts().await?;
        Ok(alerts
            .iter()
            .any(|(_, name, _)| name == "PostCacheLowHitRate"))
    })
    .await;
    // A few more evaluations: nothing else turns up.
    let settled = prometheus.query("vector(time())").await.unwrap().unwrap();
    until("three more rule evaluations", async || {
        Ok(prometheus.query("vector(time())").await?.unwrap_or(0.0) > settled + 3.0)
    })
    .await;
    let alerts = prometheus.active_alerts().await.unwrap();
    let described: Vec<String> = alerts
        .iter()
        .map(|(file, name, labels)| format!("{file}: {name} {labels:?}"))
        .collect();
    assert_eq!(alerts.len(), 1, "{described:#?}");
    let (file, name, labels) = &alerts[0];
    assert_eq!(name, "PostCacheLowHitRate");
    assert_eq!(file, "rules-0.yml", "from shop's rules: {described:#?}");
    assert_eq!(labels["namespace"], "shop");
    assert_eq!(labels["job"], "feed-cache");

    for (mut child, _) in pods {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        assert!(wait_exit(&mut child).success());
    }
}
