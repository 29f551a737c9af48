//! `postcache operator` as processes against the test kit's control plane: two replicas elect one
//! leader by Lease and only it reconciles; killing it hands over to the other; SIGTERM releases
//! the Lease; metrics are served; monitoring objects appear when their CRDs exist.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use postcache_testkit::{ControlPlane, free_port, http_get, wait_until};

use crate::{Served, wait_exit};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn plane_with_crd() -> Arc<ControlPlane> {
    let plane = ControlPlane::shared();
    let crd = repo().join("crds/postcache.yaml");
    plane
        .kubectl(&["apply", "--server-side", "-f", crd.to_str().unwrap()])
        .unwrap();
    plane
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/postcaches.postcache.io",
            "--timeout=30s",
        ])
        .unwrap();
    plane
}

/// One `postcache operator` process, its metrics address and its log.
struct Operator {
    child: Served,
    metrics: SocketAddr,
    identity: String,
    log: PathBuf,
}

fn start_operator(
    plane: &ControlPlane,
    ns: &str,
    identity: &str,
    extra: &[&str],
    dir: &Path,
) -> Operator {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = dir.join(format!("{identity}.log"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_postcache"));
    command
        .arg("operator")
        .args(["--metrics-addr", &metrics.to_string()])
        .args(["--lease-namespace", ns, "--watch-namespace", ns])
        .args(["--identity", identity, "--lease-duration-seconds", "3"])
        .args(extra)
        .env("KUBECONFIG", plane.kubeconfig())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("POSTCACHE_")) {
        command.env_remove(key);
    }
    let child = Served(command.spawn().unwrap());
    wait_until(
        "the operator's /healthz",
        Duration::from_secs(120),
        || match http_get(metrics, "/healthz")? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        },
    );
    Operator {
        child,
        metrics,
        identity: identity.to_owned(),
        log,
    }
}

impl Operator {
    fn metrics(&self) -> String {
        match http_get(self.metrics, "/metrics") {
            Ok((200, body)) => body,
            other => panic!("{}: /metrics: {other:?}", self.identity),
        }
    }

    fn metric(&self, prefix: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Merge-patches the operator's Lease in `ns` (a test playing another contender).
fn patch_lease(plane: &ControlPlane, ns: &str, patch: &str) {
    let args = [
        "patch",
        "lease",
        "postcache-operator",
        "-n",
        ns,
        "--type=merge",
        "-p",
        patch,
    ];
    plane.kubectl(&args).unwrap();
}

fn holder(plane: &ControlPlane, ns: &str) -> Result<String, String> {
    plane.kubectl(&[
        "get",
        "lease",
        "postcache-operator",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

fn apply_postcache(plane: &ControlPlane, ns: &str, dir: &Path, yaml: &str) {
    let file = dir.join("pc.yaml");
    std::fs::write(&file, yaml).unwrap();
    plane
        .kubectl(&["apply", "-n", ns, "-f", file.to_str().unwrap()])
        .unwrap();
}

fn jsonpath(plane: &ControlPlane, ns: &str, what: &str, path: &str) -> Result<String, String> {
    plane.kubectl(&["get", what, "-n", ns, "-o", &format!("jsonpath={path}")])
}

const SMALL: &str = concat!(
    "apiVersion: postcache.io/v1alpha1\nkind: PostCache\nmetadata: {name: feed}\nspec:\n",
    "  redis: {mode: Standalone, replicasPerShard: 0}\n",
    "  postgres: {instances: 1}\n",
    "  service: {replicas: REPLICAS, autoscaling: {enabled: false}}\n",
);

#[test]
fn two_operators_elect_one_leader_which_alone_reconciles_and_a_standby_takes_over() {
    let plane = plane_with_crd();
    let ns = plane.create_namespace();
    let dir = tempfile::tempdir().unwrap();
    let mut a = start_operator(&plane, &ns, "op-a", &[], dir.path());
    let mut b = start_operator(&plane, &ns, "op-b", &[], dir.path());

    let leader = wait_until("a lease holder", Duration::from_secs(120), || {
        let h = holder(&plane, &ns)?;
        if h == "op-a" || h == "op-b" {
            Ok(h)
        } else {
            Err(format!("holder {h:?}"))
        }
    });
    let (first, second) = if leader == "op-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    apply_postcache(&plane, &ns, dir.path(), &SMALL.replace("REPLICAS", "1"));
    wait_until("the leader to reconcile", Duration::from_secs(60), || {
        let g = jsonpath(&plane, &ns, "pcache/feed", "{.status.observedGeneration}")?;
        if g == "1" {
            Ok(())
        } else {
            Err(format!("observedGeneration {g:?}"))
        }
    });
    wait_until("the leader's metrics", Duration::from_secs(60), || {
        match (
            first.metric("postcache_operator_leader "),
            first.metric("postcache_operator_reconciliations_total{result=\"ok\"}"),
        ) {
            (Some(l), Some(n)) if l == 1.0 && n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(
        first
            .metrics()
            .contains("postcache_operator_reconcile_duration_seconds")
    );
    assert_eq!(
        second.metric("postcache_operator_leader "),
        Some(0.0),
        "{}",
        second.metrics()
    );
    assert_eq!(
        second.metric("postcache_operator_reconciliations_total"),
        None,
        "the standby reconciled:\n{}",
        second.log()
    );

    // The leader dies without releasing; the standby takes over once the lease expires.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    wait_until(
        "the standby to take the lease",
        Duration::from_secs(120),
        || {
            let h = holder(&plane, &ns)?;
            if h == second.identity {
                Ok(())
            } else {
                Err(format!("holder {h:?}"))
            }
        },
    );
    apply_postcache(&plane, &ns, dir.path(), &SMALL.replace("REPLICAS", "2"));
    wait_until(
        "the new leader to reconcile the change",
        Duration::from_secs(60),
        || {
            let r = jsonpath(&plane, &ns, "deployment/feed-cache", "{.spec.replicas}")?;
            if r == "2" {
                Ok(())
            } else {
                Err(format!("replicas {r:?}\n{}", second.log()))
            }
        },
    );
    assert_eq!(second.metric("postcache_operator_leader "), Some(1.0));

    // SIGTERM: a graceful exit that releases the lease at once.
    let pid = Pid::from_raw(i32::try_from(second.child.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut second.child);
    assert!(status.success(), "exit {status}:\n{}", second.log());
    assert_eq!(
        holder(&plane, &ns).unwrap(),
        "",
        "the lease was not released"
    );
}

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: PLURAL.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: KIND, plural: PLURAL, singular: SINGULAR, listKind: KINDList}
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;

#[test]
fn monitoring_objects_are_created_when_their_crds_exist() {
    let plane = plane_with_crd();
    let dir = tempfile::tempdir().unwrap();
    for (kind, plural) in [
        ("ServiceMonitor", "servicemonitors"),
        ("PrometheusRule", "prometheusrules"),
    ] {
        let yaml = CRD
            .replace("KIND", kind)
            .replace("PLURAL", plural)
            .replace("SINGULAR", &kind.to_lowercase());
        let file = dir.path().join(format!("{plural}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        plane
            .kubectl(&["apply", "-f", file.to_str().unwrap()])
            .unwrap();
        plane
            .kubectl(&[
                "wait",
                "--for=condition=Established",
                &format!("crd/{plural}.monitoring.coreos.com"),
                "--timeout=30s",
            ])
            .unwrap();
    }
    let ns = plane.create_namespace();
    let _operator = start_operator(
        &plane,
        &ns,
        "op-m",
        &["--leader-election=false"],
        dir.path(),
    );
    let yaml = SMALL.replace("REPLICAS", "1") + "  monitoring: {alerts: {minHitRatio: 0.85}}\n";
    apply_postcache(&plane, &ns, dir.path(), &yaml);
    let rules = wait_until("the PrometheusRule", Duration::from_secs(60), || {
        jsonpath(
            &plane,
            &ns,
            "prometheusrule/feed-alerts",
            "{.spec.groups[*].rules[*].expr}",
        )
    });
    assert!(
        rules.contains("< 0.85"),
        "the spec's threshold is not in the rules: {rules}"
    );
    let endpoints = wait_until("the ServiceMonitor", Duration::from_secs(120), || {
        jsonpath(
            &plane,
            &ns,
            "servicemonitor/feed-cache",
            "{.spec.endpoints[0].path}",
        )
    });
    assert_eq!(endpoints, "/metrics");
    let label = jsonpath(
        &plane,
        &ns,
        "configmap/feed-dashboard",
        "{.metadata.labels.grafana_dashboard}",
    )
    .unwrap();
    assert_eq!(label, "1");
    wait_until("the Monitoring condition", Duration::from_secs(120), || {
        let reason = jsonpath(
            &plane,
            &ns,
            "pcache/feed",
            "{.status.conditions[?(@.type==\"Monitoring\")].reason}",
        )?;
        if reason == "Applied" {
            Ok(())
        } else {
            Err(reason)
        }
    });
}

#[test]
fn a_leader_whose_lease_is_taken_stops_reconciling_until_it_wins_it_back() {
    let plane = plane_with_crd();
    let ns = plane.create_namespace();
    let dir = tempfile::tempdir().unwrap();
    let op = start_operator(&plane, &ns, "op-l", &[], dir.path());
    wait_until("the lease", Duration::from_secs(120), || {
        let h = holder(&plane, &ns)?;
        if h == "op-l" {
            Ok(())
        } else {
            Err(format!("holder {h:?}"))
        }
    });
    apply_postcache(&plane, &ns, dir.path(), &SMALL.replace("REPLICAS", "1"));
    wait_until("a reconcile", Duration::from_secs(60), || {
        let g = jsonpath(&plane, &ns, "pcache/feed", "{.status.observedGeneration}")?;
        if g == "1" {
            Ok(())
        } else {
            Err(format!("observedGeneration {g:?}"))
        }
    });

    // Another holder appears with a long lease (as after a partition): the operator steps down.
    let now = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.000000Z"])
        .output()
        .unwrap();
    let now = String::from_utf8(now.stdout).unwrap();
    let take = format!(
        r#"{{"spec":{{"holderIdentity":"intruder","renewTime":"{}","leaseDurationSeconds":3600}}}}"#,
        now.trim()
    );
    patch_lease(&plane, &ns, &take);
    wait_until(
        "the operator to step down",
        Duration::from_secs(120),
        || match op.metric("postcache_operator_leader ") {
            Some(0.0) => Ok(()),
            other => Err(format!("leader gauge {other:?}")),
        },
    );
    assert!(op.log().contains("lost the lease"), "{}", op.log());
    assert_eq!(holder(&plane, &ns).unwrap(), "intruder");

    // A change made meanwhile is reconciled once the lease is free again and won back.
    apply_postcache(&plane, &ns, dir.path(), &SMALL.replace("REPLICAS", "2"));
    let free = r#"{"spec":{"holderIdentity":null,"renewTime":null}}"#;
    patch_lease(&plane, &ns, free);
    wait_until(
        "the change to be reconciled",
        Duration::from_secs(60),
        || {
            let r = jsonpath(&plane, &ns, "deployment/feed-cache", "{.spec.replicas}")?;
            if r == "2" {
                Ok(())
            } else {
                Err(format!("replicas {r:?}"))
            }
        },
    );
    assert_eq!(holder(&plane, &ns).unwrap(), "op-l");
    assert_eq!(op.metric("postcache_operator_leader "), Some(1.0));
}

/// Every `POSTCACHE_*` variable the operator gives the service pods is an option of
/// `postcache serve`, and every literal value it writes parses as that option: renaming a flag
/// (or changing what it takes) cannot leave the pods silently ignoring a setting.
#[test]
fn every_variable_the_operator_writes_is_an_option_of_serve_and_parses() {
    use clap::{ArgAction, Args, Command};
    use postcache_operator::{
        PostCache, PostCacheSpec, RateLimitSpec, RedisMode, service::service_env,
    };

    let serve = postcache_server::ServeArgs::augment_args(Command::new("serve"));
    let serve = postcache_server::GlobalArgs::augment_args(serve);
    let options: std::collections::BTreeMap<String, &clap::Arg> = serve
        .get_arguments()
        .filter_map(|a| Some((a.get_env()?.to_string_lossy().into_owned(), a)))
        .collect();
    // Every option that becomes a variable, set; in each Redis mode.
    let mut specs = Vec::new();
    for mode in [RedisMode::Cluster, RedisMode::Standalone] {
        let mut spec = PostCacheSpec::default();
        spec.redis.mode = mode;
        let service = &mut spec.service;
        service.trusted_proxies = vec!["10.0.0.0/8".into()];
        service.rate_limit = Some(RateLimitSpec {
            per_second: 50,
            burst: None,
        });
        service.cors_origins = vec!["https://app.example.com".into()];
        service.otlp_endpoint = Some("http://otel-collector.monitoring:4317".into());
        service.request_timeout_ms = Some(5000);
        service.staleness_bound_ms = Some(2000);
        specs.push(spec);
    }
    for spec in specs {
        let mut pc = PostCache::new("feed", spec);
        pc.metadata.namespace = Some("shop".into());
        let mut argv = vec!["serve".to_owned()];
        for var in service_env(&pc) {
            if !var.name.starts_with("POSTCACHE_") {
                continue; // POSTGRES_USER and the like: parts of a URL, expanded by Kubernetes
            }
            let arg = options.get(&var.name).unwrap_or_else(|| {
                panic!(
                    "the operator writes {}, which `postcache serve` does not read",
                    var.name
                )
            });
            let Some(value) = var.value else {
                continue; // from a Secret
            };
            let long = arg.get_long().unwrap();
            match arg.get_action() {
                ArgAction::SetTrue if value == "true" => argv.push(format!("--{long}")),
                ArgAction::SetTrue => assert_eq!(value, "false", "{}", var.name),
                _ => argv.push(format!("--{long}={value}")),
            }
        }
        let parsed = serve.clone().try_get_matches_from(&argv);
        assert!(parsed.is_ok(), "{argv:?}: {}", parsed.unwrap_err());
    }
}
