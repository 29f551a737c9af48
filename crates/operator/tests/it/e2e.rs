//! End to end on running Pods: the operator, installed by `helm install` of the chart and running
//! in the cluster, reconciles `deploy/examples/postcache.yaml` on the test kit's real node, in a
//! namespace that
//! enforces Pod Security `restricted`, with Redis and PostgreSQL images built from Debian's
//! packages (no entrypoint scripts) and the PostCache image. Then, as a user would check it:
//!
//! 0. `helm test` of the release passes (its Pod probes the operator through its Service);
//! 1. the PostCache is Ready with every container running (the bootstrap Job succeeded);
//! 2. the Redis Cluster covers 16384 slots in Pods, both PostgreSQL replicas stream;
//! 3. a post written on one service Pod is read with its token on the other, arrives over SSE
//!    there, and is read through the Service's ClusterIP;
//! 4. a Redis master Pod is deleted under a steady stream of writes: the cluster recovers and every
//!    acknowledged write is read back;
//! 5. a PostgreSQL replica Pod is deleted: it comes back and streams again; deleted with its
//!    volume, it is seeded anew from the primary;
//! 6. the Redis Cluster grows from 3 to 4 shards and back, every key readable after each step;
//! 7. a new service image rolls out under steady reads through the Service, none failing; under
//!    load the HorizontalPodAutoscaler scales the service out; with autoscaling off it takes
//!    the replicas of the spec;
//! 8. the PostCache is deleted and recreated: the retained volumes and credentials match, and a
//!    post written at the start is read back;
//! 9. the apiserver's audit log shows the operator used every permission the chart grants it
//!    (but those of APIs not installed here) and none it was not granted.
//!
//! The node is torn down at the end and the machine checked for leftovers.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use postcache_operator::{PostCache, postgres, redis, service};
use postcache_testkit::{ControlPlane, Node, tool, unique_name, wait_until};
use serde_json::{Value, json};

use crate::chart::{helm, install_into};
use crate::image;
use crate::node::curl;
use crate::pod_security::restricted_namespace;
use crate::{plane_with_crd, repo};

const NAME: &str = "feed";

/// `deploy/examples/postcache.yaml` as is, plus what this cluster needs: the node's volume
/// class, and every tier placed on the real node (its nodeSelector and toleration).
fn example() -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/examples/postcache.yaml")).unwrap();
    let mut pc: Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(pc["metadata"]["name"], NAME);
    let placement = json!({
        "nodeSelector": {"kubernetes.io/hostname": Node::NAME},
        "tolerations": [{"key": Node::TAINT, "operator": "Exists", "effect": "NoSchedule"}],
    });
    for tier in ["redis", "postgres", "service"] {
        let spec = pc["spec"][tier].as_object_mut().unwrap();
        for (key, value) in placement.as_object().unwrap() {
            spec.insert(key.clone(), value.clone());
        }
        if let Some(storage) = spec.get_mut("storage") {
            storage["storageClassName"] = Node::STORAGE_CLASS.into();
        }
    }
    // The load of the autoscaling step comes from one address: no per-client rate limit (the
    // pod options' `env` comes after the operator's variables, so it wins).
    pc["spec"]["service"]["env"] =
        json!([{"name": "POSTCACHE_RATE_LIMIT_PER_SECOND", "value": "0"}]);
    // The node has 2 CPUs: with the default 100m per Redis node, the 8 nodes of 4 shards and
    // the rest of the example would not fit.
    pc["spec"]["redis"]["resources"] = json!({
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"memory": "256Mi"},
    });
    pc
}

/// Runs `script` with `sh -c` in the first Redis Pod, where the cluster's hostnames resolve
/// (`redis-cli -c` follows redirects to them), authenticated by its own environment.
fn in_redis_pod(plane: &ControlPlane, ns: &str, script: &str) -> Result<String, String> {
    let script = format!("export REDISCLI_AUTH=\"$REDIS_PASSWORD\"\n{script}");
    plane.kubectl(&[
        "exec",
        "-n",
        ns,
        &format!("{NAME}-redis-0"),
        "--",
        "sh",
        "-c",
        &script,
    ])
}

/// What each Redis Pod says of itself and its cluster, and the first one's log: for failures.
fn redis_report(plane: &ControlPlane, ns: &str, node: &Node) -> String {
    let mut report = String::new();
    for (pod, _) in pods(plane, ns, "redis") {
        let out = plane
            .kubectl(&[
                "exec",
                "-n",
                ns,
                &pod,
                "--",
                "sh",
                "-c",
                "export REDISCLI_AUTH=\"$REDIS_PASSWORD\"; redis-cli role | head -1; \
                 redis-cli dbsize; redis-cli cluster nodes",
            ])
            .unwrap_or_else(|e| e);
        report.push_str(&format!("--- {pod} ---\n{out}\n"));
    }
    let logs = std::fs::read_dir(node.pod_logs()).map_or_else(
        |_| Vec::new(),
        |dir| {
            dir.filter_map(Result::ok)
                .filter(|d| {
                    d.file_name()
                        .to_string_lossy()
                        .contains(&format!("_{NAME}-redis-0_"))
                })
                .collect()
        },
    );
    for dir in logs {
        let log = dir.path().join("redis");
        let newest = std::fs::read_dir(&log)
            .ok()
            .and_then(|files| files.filter_map(Result::ok).map(|f| f.path()).max());
        if let Some(file) = newest {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            report.push_str(&format!("--- {} ---\n", file.display()));
            for line in tail.into_iter().rev() {
                report.push_str(line);
                report.push('\n');
            }
        }
    }
    report
}

/// Writes `KEYS` keys through the cluster (from inside it).
fn write_keys(plane: &ControlPlane, ns: &str) {
    in_redis_pod(
        plane,
        ns,
        &format!("i=0; while [ $i -lt {KEYS} ]; do redis-cli -c set e2e:$i v$i >/dev/null || exit 1; i=$((i+1)); done"),
    )
    .unwrap();
}

/// How many of the `KEYS` keys read back with their value.
fn readable_keys(plane: &ControlPlane, ns: &str) -> Result<usize, String> {
    let out = in_redis_pod(
        plane,
        ns,
        &format!(
            "i=0; while [ $i -lt {KEYS} ]; do [ \"$(redis-cli -c get e2e:$i)\" = v$i ] && echo ok; i=$((i+1)); done"
        ),
    )?;
    Ok(out.lines().filter(|l| *l == "ok").count())
}

const KEYS: usize = 200;

/// The PostCache's phase, status shard count and whether a shard change is recorded.
fn redis_status(plane: &ControlPlane, ns: &str) -> Result<(String, i64, bool), String> {
    let pc = kubectl_json(plane, &["get", "pcache", NAME, "-n", ns])?;
    let status = &pc["status"];
    Ok((
        status["phase"].as_str().unwrap_or_default().to_owned(),
        status["redis"]["shards"].as_i64().unwrap_or(0),
        status["redis"]["shardChange"].is_object(),
    ))
}

fn patch(plane: &ControlPlane, ns: &str, patch: &Value) {
    plane
        .kubectl(&[
            "patch",
            "pcache",
            NAME,
            "-n",
            ns,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])
        .unwrap();
}

/// `pc` as it lives in `ns` (the example names no namespace; Service names include it).
fn pc_in(pc: &PostCache, ns: &str) -> PostCache {
    let mut pc = pc.clone();
    pc.metadata.namespace = Some(ns.to_owned());
    pc
}

fn kubectl_json(plane: &ControlPlane, args: &[&str]) -> Result<Value, String> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let text = plane.kubectl(&all)?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// A Secret's value, decoded by kubectl's template.
fn secret(plane: &ControlPlane, ns: &str, name: &str, key: &str) -> String {
    plane
        .kubectl(&[
            "get",
            "secret",
            name,
            "-n",
            ns,
            "-o",
            &format!("go-template={{{{index .data \"{key}\" | base64decode}}}}"),
        ])
        .unwrap()
}

/// A JSONPath over the service Pods.
fn service_pods(plane: &ControlPlane, ns: &str, jsonpath: &str) -> Result<String, String> {
    plane.kubectl(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        "app.kubernetes.io/component=service",
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
}

/// (name, IP) of the Running pods of a component, by name.
fn pods(plane: &ControlPlane, ns: &str, component: &str) -> Vec<(String, String)> {
    let list = kubectl_json(
        plane,
        &[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            &format!("app.kubernetes.io/component={component}"),
        ],
    )
    .unwrap();
    let mut out: Vec<(String, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_owned(),
                p["status"]["podIP"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Every Pod of the namespace: Job pods Succeeded, the others Running with every container
/// ready; returns the problems otherwise.
fn all_running(plane: &ControlPlane, ns: &str) -> Result<usize, String> {
    let list = kubectl_json(plane, &["get", "pods", "-n", ns])?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    for pod in &items {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let phase = pod["status"]["phase"].as_str().unwrap_or_default();
        let job = pod["metadata"]["labels"]["job-name"].is_string();
        let statuses = pod["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let running = phase == "Running"
            && !statuses.is_empty()
            && statuses
                .iter()
                .all(|s| s["ready"] == true && s["state"]["running"].is_object());
        if !(running || (job && phase == "Succeeded")) {
            problems.push(format!(
                "{name}: {phase} {}",
                pod["status"]["containerStatuses"]
            ));
        }
    }
    if items.is_empty() {
        problems.push("no pods yet".into());
    }
    if problems.is_empty() {
        Ok(items.len())
    } else {
        Err(problems.join("\n"))
    }
}

fn redis_cli(ip: &str, password: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool("redis-cli"))
        .args(["-h", ip, "-p", "6379", "--no-auth-warning", "-a", password])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && !text.starts_with("ERR") {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Whether every Redis Pod sees a healthy cluster of all `nodes` with every slot assigned.
fn cluster_ok(plane: &ControlPlane, ns: &str, password: &str, nodes: usize) -> Result<(), String> {
    let pods = pods(plane, ns, "redis");
    if pods.len() != nodes {
        return Err(format!("{} of {nodes} Redis pods running", pods.len()));
    }
    for (name, ip) in pods {
        let info = redis_cli(&ip, password, &["cluster", "info"])?;
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
                .unwrap_or_default()
                .to_owned()
        };
        if field("cluster_state") != "ok"
            || field("cluster_slots_ok") != "16384"
            || field("cluster_known_nodes") != nodes.to_string()
        {
            return Err(format!("{name}: {info}"));
        }
    }
    Ok(())
}

fn psql(ip: &str, password: &str, sql: &str) -> Result<String, String> {
    let (user, db) = (postgres::USER, postgres::DATABASE);
    postcache_testkit::psql_at(ip, postgres::PORT as u16, user, Some(password), db, sql)
}

fn streaming_replicas(plane: &ControlPlane, ns: &str, password: &str) -> Result<String, String> {
    let primary = pods(plane, ns, "postgres")
        .into_iter()
        .find(|(name, _)| name == &format!("{NAME}-postgres-0"))
        .ok_or("the primary is not running")?;
    psql(
        &primary.1,
        password,
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
    )
}

/// `curl` with the API token; returns (status, headers + body).
fn api(token: &str, args: &[&str]) -> Result<(u16, String), String> {
    let auth = format!("authorization: Bearer {token}");
    let mut all = vec!["-i", "-H", &auth];
    all.extend_from_slice(args);
    curl(&all)
}

fn header(response: &str, name: &str) -> Option<String> {
    response.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

fn body(response: &str) -> Value {
    let text = response
        .split_once("\r\n\r\n")
        .map_or(response, |(_, body)| body);
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn create(token: &str, ip: &str, title: &str) -> Result<(u16, String), String> {
    let post = json!({"author_id": "e2e", "title": title, "body": format!("body of {title}")});
    api(
        token,
        &[
            "-H",
            "content-type: application/json",
            "-d",
            &post.to_string(),
            &format!("http://{ip}:8080/v1/posts"),
        ],
    )
}

/// An SSE reader on `url`: lines arrive on the channel until the stream ends or the child is
/// killed.
fn sse(url: &str) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new("curl")
        .args(["-sN", "--noproxy", "*", "--max-time", "120", url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// A post created on `writer` is read back with its token on `reader` and arrives as
/// `post.created` on `listener`'s SSE stream (opened before the write); returns its id.
fn fresh_across_pods(token: &str, [writer, reader, listener]: [&str; 3], title: &str) -> String {
    let (mut stream, events) = sse(&format!("http://{listener}:8080/v1/events?topics=posts"));
    // The stream is open once its first bytes (a comment or a resync) or a heartbeat arrive.
    let _ = events.recv_timeout(Duration::from_secs(10));
    let (status, response) = create(token, writer, title).unwrap();
    assert_eq!(status, 201, "{response}");
    let id = body(&response)["id"].as_str().unwrap().to_owned();
    let read_token = header(&response, "x-postcache-token").expect("a read token");
    let (status, response) = api(
        token,
        &[
            "-H",
            &format!("x-postcache-token: {read_token}"),
            &format!("http://{reader}:8080/v1/posts/{id}"),
        ],
    )
    .unwrap();
    assert_eq!(status, 200, "read-your-writes on {reader}: {response}");
    assert_eq!(body(&response)["title"], title);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        if let Ok(line) = events.recv_timeout(Duration::from_millis(500)) {
            seen = line.starts_with("data:") && line.contains(&id) && line.contains("post.created");
        }
    }
    let _ = stream.kill();
    let _ = stream.wait();
    assert!(
        seen,
        "the SSE stream of {listener} delivers post.created for {id}"
    );
    id
}

/// The chart's release and what it names after it.
const RELEASE: &str = "e2e";
const OPERATOR: &str = "e2e-postcache-operator";

/// `helm install` of the chart in its own namespace (enforcing Pod Security `restricted` too):
/// the operator runs in the cluster, two replicas and a Lease, on the real node, defaulting to
/// the images given.
fn install_operator(plane: &ControlPlane, images: [&str; 3]) -> String {
    let [service, redis, postgres] = images;
    let (repository, tag) = service.rsplit_once(':').unwrap();
    let ns = restricted_namespace(plane);
    let node_selector = json!({"kubernetes.io/hostname": Node::NAME}).to_string();
    let tolerations =
        json!([{"key": Node::TAINT, "operator": "Exists", "effect": "NoSchedule"}]).to_string();
    install_into(
        plane,
        &ns,
        RELEASE,
        &[
            "--set",
            &format!("image.repository={repository}"),
            "--set",
            &format!("image.tag={tag}"),
            "--set",
            &format!("operator.redisImage={redis}"),
            "--set",
            &format!("operator.postgresImage={postgres}"),
            "--set-json",
            &format!("nodeSelector={node_selector}"),
            "--set-json",
            &format!("tolerations={tolerations}"),
        ],
    );
    ns
}

/// The operator's requests in the audit log: `group/resource[/subresource] verb`, each once.
fn used_permissions(plane: &ControlPlane, operator_ns: &str) -> BTreeSet<String> {
    let user = format!("system:serviceaccount:{operator_ns}:{OPERATOR}");
    let log = std::fs::read_to_string(plane.audit_log()).unwrap();
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["user"]["username"] == user.as_str())
        .filter_map(|event| {
            let object = &event["objectRef"];
            let resource = object["resource"].as_str()?;
            let mut key = format!("{}/{resource}", object["apiGroup"].as_str().unwrap_or(""));
            if let Some(sub) = object["subresource"].as_str() {
                key.push_str(&format!("/{sub}"));
            }
            let verb = event["verb"].as_str()?;
            // A server-side apply that creates is authorized as `create` too.
            let created = verb == "patch" && event["responseStatus"]["code"] == 201;
            Some(
                std::iter::once(format!("{key} {verb}"))
                    .chain(created.then(|| format!("{key} create")))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect()
}

/// What the chart's Role and ClusterRole grant, in the same form.
fn granted_permissions(plane: &ControlPlane, operator_ns: &str) -> BTreeSet<String> {
    let mut rules = Vec::new();
    for (kind, name) in [
        ("clusterrole", format!("{OPERATOR}-{operator_ns}")),
        ("role", format!("{OPERATOR}-leader-election")),
    ] {
        let mut args = vec!["get", kind, &name];
        if kind == "role" {
            args.extend(["-n", operator_ns]);
        }
        let role = kubectl_json(plane, &args).unwrap();
        rules.extend(role["rules"].as_array().cloned().unwrap_or_default());
    }
    let mut granted = BTreeSet::new();
    for rule in rules {
        for group in rule["apiGroups"].as_array().into_iter().flatten() {
            for resource in rule["resources"].as_array().into_iter().flatten() {
                for verb in rule["verbs"].as_array().into_iter().flatten() {
                    granted.insert(format!(
                        "{}/{} {}",
                        group.as_str().unwrap(),
                        resource.as_str().unwrap(),
                        verb.as_str().unwrap()
                    ));
                }
            }
        }
    }
    granted
}

/// Granted, and needed, but not exercised by this run; each with the reason.
const NOT_EXERCISED: &[(&str, &str)] = &[
    (
        "monitoring.coreos.com/",
        "the Prometheus Operator's CRDs are not installed here",
    ),
    (
        "postcache.io/postcaches/finalizers update",
        "needed to set blockOwnerDeletion only where OwnerReferencesPermissionEnforcement is on",
    ),
    (
        "/configmaps delete",
        "pruning on a tier turned External (reconcile.rs covers it on kwok)",
    ),
    ("/services delete", "pruning on a tier turned External"),
    (
        "/serviceaccounts delete",
        "pruning, should the service's account be renamed",
    ),
    (
        "apps/statefulsets delete",
        "pruning on a tier turned External",
    ),
    (
        "apps/deployments delete",
        "pruning, should the Deployment be renamed",
    ),
    (
        "policy/poddisruptionbudgets delete",
        "pruning on a tier turned External",
    ),
    (
        "networking.k8s.io/networkpolicies delete",
        "pruning on a tier turned External",
    ),
];

#[test]
fn the_example_runs_on_a_real_node_serves_fresh_reads_and_heals_from_pod_loss() {
    let binary = image::build_static_binary();
    let plane = plane_with_crd();
    let started = Instant::now();
    let node = Node::start(plane.clone());
    let dir = tempfile::tempdir().unwrap();
    let service_image = format!(
        "{}/postcache/postcache:{}",
        node.registry(),
        unique_name("e2e")
    );
    image::push(&binary, dir.path(), &service_image);
    let redis_image = node.push_redis_image();
    let postgres_image = node.push_postgres_image();
    // 8 Redis nodes (at 4 shards) and 3 PostgreSQL instances, and room to spare.
    node.provide_volumes(14, "10Gi");
    eprintln!("node and images ready in {:?}", started.elapsed());

    let ns = restricted_namespace(&plane);
    let installed = Instant::now();
    let operator_ns = install_operator(&plane, [&service_image, &redis_image, &postgres_image]);
    eprintln!("helm install: operator ready in {:?}", installed.elapsed());
    // `helm test`: the chart's test Pod asks the operator's metrics Service for readiness, from
    // a Pod on the node (cluster DNS, the Service's ClusterIP, restricted Pod Security).
    let tested = helm(
        &[
            "test",
            RELEASE,
            "--namespace",
            &operator_ns,
            "--timeout",
            "120s",
        ],
        Some(plane.kubeconfig()),
    );
    // A test Pod that succeeded is deleted (the hook's policy); one that failed stays, with logs.
    assert!(
        tested.is_ok(),
        "helm test: {tested:?}\n{}",
        plane
            .kubectl(&[
                "logs",
                "-n",
                &operator_ns,
                &format!("{RELEASE}-postcache-operator-test")
            ])
            .unwrap_or_else(|e| e)
    );
    eprintln!("helm test passed");
    let manifest = example();
    let pc: PostCache = serde_json::from_value(manifest.clone()).unwrap();
    let file = dir.path().join("postcache.json");
    std::fs::write(&file, manifest.to_string()).unwrap();
    plane
        .kubectl(&["apply", "-n", &ns, "-f", file.to_str().unwrap()])
        .unwrap();

    // 1. Ready, every container running.
    let applied = Instant::now();
    let diagnose = || {
        format!(
            "{}\n{}\n--- operator ---\n{}\n--- kubelet ---\n{}",
            plane
                .kubectl(&["get", "pods,pvc,jobs,pcache", "-n", &ns, "-o", "wide"])
                .unwrap_or_else(|e| e),
            plane.nodes_and_warnings(&ns),
            plane
                .kubectl(&[
                    "logs",
                    "-n",
                    &operator_ns,
                    "-l",
                    "app.kubernetes.io/component=operator",
                    "--tail=20"
                ])
                .unwrap_or_else(|e| e),
            node.log_tail("kubelet", 20)
        )
    };
    wait_until(
        "the PostCache to be Ready",
        Duration::from_secs(300),
        || {
            let phase = plane.kubectl(&[
                "get",
                "pcache",
                NAME,
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.phase}",
            ])?;
            if phase == "Ready" {
                Ok(())
            } else {
                Err(format!("phase {phase:?}\n{}", diagnose()))
            }
        },
    );
    plane
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("pcache/{NAME}"),
            "-n",
            &ns,
            "--timeout=10s",
        ])
        .unwrap();
    let count = wait_until("every container running", Duration::from_secs(60), || {
        all_running(&plane, &ns).map_err(|e| format!("{e}\n{}", diagnose()))
    });
    eprintln!(
        "Ready with {count} pods running {:?} after apply",
        applied.elapsed()
    );
    let services = pods(&plane, &ns, "service");
    assert_eq!(services.len(), 2, "{services:?}");
    let restarts = service_pods(
        &plane,
        &ns,
        "{.items[*].status.containerStatuses[*].restartCount}",
    )
    .unwrap();
    assert!(
        restarts.split_whitespace().all(|r| r == "0"),
        "service pods wait for their backends instead of crash-looping: restarts {restarts}"
    );

    // kubectl reaches the node's kubelet: logs of a service Pod, a command in a Redis Pod.
    let logs = plane.kubectl(&["logs", "-n", &ns, &services[0].0]).unwrap();
    assert!(logs.contains("postcache serving on"), "{logs}");
    let pong = plane
        .kubectl(&[
            "exec",
            "-n",
            &ns,
            &format!("{NAME}-redis-0"),
            "--",
            "sh",
            "-c",
            "REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli ping",
        ])
        .unwrap();
    assert_eq!(pong.trim(), "PONG");

    // 2. The data tier in Pods.
    let redis_password = secret(
        &plane,
        &ns,
        &redis::auth_secret_name(&pc),
        redis::PASSWORD_KEY,
    );
    assert!(!redis_password.is_empty());
    cluster_ok(&plane, &ns, &redis_password, 6).unwrap();
    let pg_password = secret(
        &plane,
        &ns,
        &postgres::credentials_secret_name(&pc),
        postgres::PASSWORD_KEY,
    );
    wait_until(
        "both replicas to stream",
        Duration::from_secs(60),
        || match streaming_replicas(&plane, &ns, &pg_password)?.as_str() {
            "2" => Ok(()),
            other => Err(format!("{other} streaming")),
        },
    );

    // 3. Fresh reads across Pods, live events, the Service.
    let tokens = secret(
        &plane,
        &ns,
        &service::tokens_secret_name(&pc),
        service::TOKENS_KEY,
    );
    let token = tokens.split(',').next().unwrap().trim().to_owned();
    let id = fresh_across_pods(
        &token,
        [&services[0].1, &services[1].1, &services[1].1],
        "first",
    );
    let cluster_ip = plane
        .kubectl(&[
            "get",
            "service",
            &service::name(&pc),
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap();
    let (status, response) = wait_until("the Service's ClusterIP", Duration::from_secs(30), || {
        curl(&[&format!("http://{cluster_ip}:8080/v1/posts/{id}")])
    });
    assert_eq!(status, 200, "{response}");
    // From a Pod, by the Service's DNS name (busybox's wget in the Redis image).
    let from_pod = plane
        .kubectl(&[
            "exec",
            "-n",
            &ns,
            &format!("{NAME}-redis-0"),
            "--",
            "wget",
            "-qO-",
            &format!("{}/v1/posts/{id}", service::endpoint(&pc_in(&pc, &ns))),
        ])
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&from_pod).unwrap()["id"],
        id.as_str()
    );

    // 4. A Redis master Pod dies under writes; nothing acknowledged is lost.
    let doomed = format!("{NAME}-redis-0");
    let role = redis_cli(&pods(&plane, &ns, "redis")[0].1, &redis_password, &["role"]).unwrap();
    eprintln!(
        "deleting {doomed} ({})",
        role.lines().next().unwrap_or_default()
    );
    plane
        .kubectl(&["delete", "pod", &doomed, "-n", &ns, "--wait=false"])
        .unwrap();
    let fault = Instant::now();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let mut healed = false;
    let mut saw_fault = false;
    let mut writes = 0;
    while !healed || writes < 20 {
        assert!(
            fault.elapsed() < Duration::from_secs(240),
            "the cluster did not heal: {:?}\n{}",
            cluster_ok(&plane, &ns, &redis_password, 6),
            diagnose()
        );
        let title = format!("during-fault-{writes}");
        match create(&token, &services[writes % 2].1, &title) {
            Ok((201, response)) => {
                acknowledged.push((body(&response)["id"].as_str().unwrap().to_owned(), title));
            }
            Ok((status, _)) => {
                assert!(
                    status == 503 || status == 429,
                    "a write under the fault answered {status}"
                );
                refused += 1;
            }
            Err(_) => refused += 1,
        }
        writes += 1;
        match cluster_ok(&plane, &ns, &redis_password, 6) {
            Ok(()) => healed = healed || saw_fault,
            Err(_) => saw_fault = true,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "Redis healed {:?} after the delete; {} writes acknowledged, {refused} refused",
        fault.elapsed(),
        acknowledged.len()
    );
    assert!(saw_fault && healed);
    assert!(!acknowledged.is_empty(), "the service keeps taking writes");
    for (id, title) in &acknowledged {
        let (status, response) = api(
            &token,
            &[&format!("http://{}:8080/v1/posts/{id}", services[1].1)],
        )
        .unwrap();
        assert_eq!(status, 200, "acknowledged write {id} lost: {response}");
        assert_eq!(&body(&response)["title"], title.as_str());
    }

    // 5. A PostgreSQL replica Pod dies: it comes back and streams. Then one dies with its
    //    volume: the new Pod's init container seeds it again from the primary.
    let replica = format!("{NAME}-postgres-replica-0");
    for with_volume in [false, true] {
        if with_volume {
            plane
                .kubectl(&[
                    "delete",
                    "pvc",
                    &format!("data-{replica}"),
                    "-n",
                    &ns,
                    "--wait=false",
                ])
                .unwrap();
        }
        plane
            .kubectl(&["delete", "pod", &replica, "-n", &ns])
            .unwrap();
        wait_until(
            "the replica to stream again",
            Duration::from_secs(120),
            || match streaming_replicas(&plane, &ns, &pg_password)?.as_str() {
                "2" => all_running(&plane, &ns).map(|_| ()),
                other => Err(format!("{other} streaming\n{}", diagnose())),
            },
        );
        let seed = plane
            .kubectl(&["logs", "-n", &ns, &replica, "-c", "seed"])
            .unwrap();
        let seeded = seed.contains("base backup from");
        assert_eq!(
            seeded, with_volume,
            "seeded again only on a new volume:\n{seed}"
        );
    }

    // 6. Shards 3 → 4 → 3, every key still readable.
    write_keys(&plane, &ns);
    for (shards, nodes) in [(4, 8), (3, 6)] {
        let change = Instant::now();
        patch(&plane, &ns, &json!({"spec": {"redis": {"shards": shards}}}));
        wait_until(
            &format!("{shards} shards"),
            Duration::from_secs(300),
            || {
                let (phase, now, changing) = redis_status(&plane, &ns)?;
                if phase != "Ready" || now != shards || changing {
                    return Err(format!("{phase} {now} {changing}\n{}", diagnose()));
                }
                cluster_ok(&plane, &ns, &redis_password, nodes)?;
                all_running(&plane, &ns).map(|_| ())
            },
        );
        let masters = in_redis_pod(&plane, &ns, "redis-cli cluster nodes").unwrap();
        let with_slots = masters
            .lines()
            .filter(|l| l.contains("master") && l.split_whitespace().count() > 8)
            .count();
        assert_eq!(with_slots, shards as usize, "{masters}");
        assert_eq!(
            readable_keys(&plane, &ns),
            Ok(KEYS),
            "after the change to {shards} shards"
        );
        eprintln!("{shards} shards in {:?}", change.elapsed());
    }

    // 7. A new image rolls out under steady reads through the Service: none fails.
    let rolled_image = format!(
        "{}/postcache/postcache:{}",
        node.registry(),
        unique_name("e2e-next")
    );
    let next = dir.path().join("next");
    std::fs::create_dir(&next).unwrap();
    image::push(&binary, &next, &rolled_image);
    patch(
        &plane,
        &ns,
        &json!({"spec": {"service": {"image": rolled_image}}}),
    );
    let roll = Instant::now();
    let (mut ok, mut failed) = (0, Vec::new());
    let mut done_at: Option<Instant> = None;
    while done_at.is_none_or(|t| t.elapsed() < Duration::from_secs(3)) {
        assert!(
            roll.elapsed() < Duration::from_secs(180),
            "the rollout did not finish\n{}",
            diagnose()
        );
        match curl(&[&format!("http://{cluster_ip}:8080/v1/posts/{id}")]) {
            Ok((200, _)) => ok += 1,
            other => failed.push(format!("{other:?}")),
        }
        if done_at.is_none() {
            let images = service_pods(
                &plane,
                &ns,
                "{range .items[*]}{.spec.containers[0].image} {.status.containerStatuses[0].ready}{\"\\n\"}{end}",
            )
            .unwrap_or_default();
            let lines: Vec<&str> = images.lines().collect();
            if lines.len() == 2 && lines.iter().all(|l| *l == format!("{rolled_image} true")) {
                done_at = Some(Instant::now());
            }
        }
    }
    eprintln!(
        "rolled out in {:?}: {ok} reads answered, {} failed",
        roll.elapsed(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "reads failed during the rollout: {failed:?}"
    );

    // The HPA scales the service out under load (CPU from the kubelet, by metrics-server).
    let mut load = Command::new(&binary)
        .args([
            "bench",
            "--url",
            &format!("http://{cluster_ip}:8080"),
            "--token",
            &token,
        ])
        .args([
            "--posts",
            "20",
            "--concurrency",
            "32",
            "--seconds",
            "300",
            "--read-ratio",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let loaded = Instant::now();
    let deployment = service::name(&pc);
    let scaled = wait_until(
        "the HPA to scale the service out",
        Duration::from_secs(240),
        || {
            let replicas = plane.kubectl(&[
                "get",
                "deployment",
                &deployment,
                "-n",
                &ns,
                "-o",
                "jsonpath={.spec.replicas}",
            ])?;
            match replicas.parse::<u32>() {
                Ok(n) if n > 2 => Ok(n),
                _ => Err(format!(
                    "{replicas} replicas\n{}",
                    plane
                        .kubectl(&["get", "hpa", "-n", &ns])
                        .unwrap_or_else(|e| e)
                )),
            }
        },
    );
    let _ = load.kill();
    let _ = load.wait();
    eprintln!(
        "the HPA scaled the service to {scaled} replicas {:?} into the load",
        loaded.elapsed()
    );

    // The service scales: autoscaling off, 3 replicas (the HPA is pruned).
    patch(
        &plane,
        &ns,
        &json!({"spec": {"service": {"replicas": 3, "autoscaling": {"enabled": false}}}}),
    );
    let scaling = Instant::now();
    wait_until(
        "3 service pods and no HPA",
        Duration::from_secs(120),
        || {
            let running = pods(&plane, &ns, "service").len();
            if running != 3 {
                return Err(format!("{running} service pods\n{}", diagnose()));
            }
            let hpas = plane.kubectl(&["get", "hpa", "-n", &ns, "-o", "name"])?;
            if !hpas.trim().is_empty() {
                return Err(format!("the HPA is still there: {hpas}"));
            }
            all_running(&plane, &ns).map(|_| ())
        },
    );
    eprintln!("scaled to 3 service pods in {:?}", scaling.elapsed());
    let three = pods(&plane, &ns, "service");
    fresh_across_pods(
        &token,
        [&three[0].1, &three[1].1, &three[2].1],
        "three pods",
    );

    // 8. Deleted and recreated: the retained volumes and credentials still match, the data is there.
    plane
        .kubectl(&[
            "delete",
            "pcache",
            NAME,
            "-n",
            &ns,
            "--wait=true",
            "--timeout=60s",
        ])
        .unwrap();
    wait_until(
        "the PostCache's pods to go",
        Duration::from_secs(120),
        || {
            let left = plane.kubectl(&["get", "pods", "-n", &ns, "-o", "name"])?;
            left.trim().is_empty().then_some(()).ok_or(left)
        },
    );
    let recreated = Instant::now();
    plane
        .kubectl(&["apply", "-n", &ns, "-f", file.to_str().unwrap()])
        .unwrap();
    wait_until(
        "the recreated PostCache to be Ready",
        Duration::from_secs(300),
        || {
            let (phase, _, _) = redis_status(&plane, &ns)?;
            if phase != "Ready" {
                return Err(format!("phase {phase}\n{}", diagnose()));
            }
            // Every Pod has a new address; the cluster must find itself again.
            cluster_ok(&plane, &ns, &redis_password, 6)
                .map_err(|e| format!("{e}\n{}", redis_report(&plane, &ns, &node)))?;
            all_running(&plane, &ns).map(|_| ())
        },
    );
    let services = pods(&plane, &ns, "service");
    let (status, response) = api(
        &token,
        &[&format!("http://{}:8080/v1/posts/{id}", services[0].1)],
    )
    .unwrap();
    assert_eq!(
        status, 200,
        "the post written before the delete: {response}"
    );
    assert_eq!(body(&response)["title"], "first");
    // The cluster may still settle (a failover among nodes that found each other late).
    wait_until(
        "Redis to serve the keys kept on its volumes",
        Duration::from_secs(60),
        || match readable_keys(&plane, &ns) {
            Ok(KEYS) => Ok(()),
            other => Err(format!(
                "{other:?} of {KEYS}\n{}",
                redis_report(&plane, &ns, &node)
            )),
        },
    );
    eprintln!("recreated and Ready in {:?}", recreated.elapsed());

    // 9. The operator used what it was granted, and was granted nothing it did not use.
    let used = used_permissions(&plane, &operator_ns);
    let granted = granted_permissions(&plane, &operator_ns);
    let unneeded: Vec<&String> = granted
        .difference(&used)
        .filter(|p| {
            !NOT_EXERCISED
                .iter()
                .any(|(prefix, _)| p.starts_with(prefix))
        })
        .collect();
    let refused: Vec<&String> = used.difference(&granted).collect();
    eprintln!("the operator used {} permissions", used.len());
    assert!(
        refused.is_empty(),
        "used without a grant (refused): {refused:?}"
    );
    assert!(
        unneeded.is_empty(),
        "granted but never used: {unneeded:?}\nused: {used:?}"
    );

    let _ = helm(
        &["uninstall", RELEASE, "-n", &operator_ns, "--wait"],
        Some(plane.kubeconfig()),
    );
    let _ = plane.kubectl(&["delete", "namespace", &ns, &operator_ns, "--wait=false"]);
    let teardown = Instant::now();
    drop(node);
    eprintln!("node torn down in {:?}", teardown.elapsed());
    Node::leftovers().unwrap_or_else(|found| panic!("the node left behind:\n{found}"));
}
