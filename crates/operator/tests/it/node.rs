//! Pods that actually run: on the test kit's real worker node, the PostCache image (the static
//! binary on an empty base, pulled from a local registry) runs as a Deployment in a namespace
//! enforcing Pod Security `restricted`, passes its readiness probe, and answers a POST then a GET
//! through its ClusterIP Service (kube-proxy's rules, from the host). After the node is dropped
//! the machine is as before: no bridge, no mounts, no `KUBE-*` chains, no `kubepods` cgroups.

use std::process::Command;
use std::time::{Duration, Instant};

use postcache_operator::pod::{restricted_pod_security_context, restricted_security_context};
use postcache_testkit::{ControlPlane, Node, unique_name, wait_until};
use serde_json::{Value, json};

use crate::image;
use crate::pod_security::restricted_namespace;

const APP: &str = "postcache";

/// The Deployment: `postcache serve` on SQLite in an emptyDir, restricted security contexts (the
/// operator's own), probed on `/readyz`, placed on the real node.
fn deployment(image: &str) -> Value {
    let env = [
        ("POSTCACHE_LISTEN", "0.0.0.0:8080"),
        ("POSTCACHE_INSECURE_NO_AUTH", "true"),
        ("POSTCACHE_DATABASE_URL", "sqlite:/tmp/postcache.db"),
    ]
    .map(|(name, value)| json!({"name": name, "value": value}));
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": APP},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": Node::NAME},
                    "tolerations": [{"key": Node::TAINT, "operator": "Exists", "effect": "NoSchedule"}],
                    "securityContext": restricted_pod_security_context(65532),
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": APP,
                        "image": image,
                        "args": ["serve"],
                        "env": env,
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {
                            "httpGet": {"path": "/readyz", "port": "http"},
                            "periodSeconds": 1,
                        },
                        "securityContext": restricted_security_context(),
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                }
            }
        }
    })
}

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": APP},
        "spec": {"selector": {"app": APP}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    })
}

fn apply(plane: &ControlPlane, ns: &str, object: &Value, dir: &std::path::Path) {
    let file = dir.join("object.json");
    std::fs::write(&file, object.to_string()).unwrap();
    plane
        .kubectl(&["apply", "-n", ns, "-f", file.to_str().unwrap()])
        .unwrap();
}

/// curl from the host, never through a proxy; returns (status, body).
pub(crate) fn curl(args: &[&str]) -> Result<(u16, String), String> {
    let out = Command::new("curl")
        .args([
            "-s",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    match status.parse() {
        Ok(status) if out.status.success() => Ok((status, body.to_owned())),
        _ => Err(format!(
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

#[test]
fn a_postcache_pod_runs_on_a_real_node_and_answers_through_its_service() {
    let binary = image::build_static_binary();
    let plane = ControlPlane::shared();
    let started = Instant::now();
    let node = Node::start(plane.clone());
    eprintln!("node up in {:?}", started.elapsed());

    let dir = tempfile::tempdir().unwrap();
    let reference = format!(
        "{}/postcache/postcache:{}",
        node.registry(),
        unique_name("t")
    );
    image::push(&binary, dir.path(), &reference);
    let ns = restricted_namespace(&plane);
    apply(&plane, &ns, &deployment(&reference), dir.path());
    apply(&plane, &ns, &service(), dir.path());

    let ready = Instant::now();
    let pod: Value = wait_until(
        "the pod to be Ready and running",
        Duration::from_secs(90),
        || {
            let pods = plane.kubectl(&[
                "get",
                "pods",
                "-n",
                &ns,
                "-l",
                "app=postcache",
                "-o",
                "json",
            ])?;
            let pods: Value = serde_json::from_str(&pods).map_err(|e| e.to_string())?;
            let pod = pods["items"]
                .get(0)
                .cloned()
                .ok_or_else(|| "no pod yet".to_owned())?;
            let status = &pod["status"]["containerStatuses"][0];
            if status["ready"] == true && status["state"]["running"].is_object() {
                Ok(pod)
            } else {
                Err(format!(
                    "{}\n{}\n--- kubelet ---\n{}",
                    pod["status"],
                    plane.nodes_and_warnings(&ns),
                    node.log_tail("kubelet", 15)
                ))
            }
        },
    );
    eprintln!("pod ready in {:?}", ready.elapsed());
    assert_eq!(pod["spec"]["nodeName"], Node::NAME);
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);

    let ip = plane
        .kubectl(&[
            "get",
            "service",
            APP,
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap();
    // Until kube-proxy has written the Service's rule, the address is routed like any other
    // (off the machine, by the default route): send nothing to it before.
    wait_until(
        "kube-proxy's rule for the ClusterIP",
        Duration::from_secs(30),
        || {
            let out = Command::new("iptables")
                .args(["-w", "-t", "nat", "-S", "KUBE-SERVICES"])
                .output()
                .map_err(|e| e.to_string())?;
            let rules = String::from_utf8_lossy(&out.stdout);
            rules
                .lines()
                .any(|r| r.contains(&format!("-d {ip}/32")) && r.contains("-j KUBE-SVC-"))
                .then_some(())
                .ok_or_else(|| format!("no rule for {ip} yet"))
        },
    );
    let posts = format!("http://{ip}/v1/posts");
    let (status, body) = wait_until("the ClusterIP to answer", Duration::from_secs(30), || {
        curl(&[
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"author_id":"ann","title":"Hello","body":"From a real pod","tags":["node"]}"#,
            &posts,
        ])
    });
    assert_eq!(status, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let (status, body) = curl(&[&format!("{posts}/{}", created["id"].as_str().unwrap())]).unwrap();
    assert_eq!(status, 200, "{body}");
    let read: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(read["body"], "From a real pod");

    let teardown = Instant::now();
    drop(node);
    eprintln!("node torn down in {:?}", teardown.elapsed());
    Node::leftovers().unwrap_or_else(|found| panic!("the node left behind:\n{found}"));
}
