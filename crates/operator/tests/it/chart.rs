//! The Helm chart `charts/postcache`: it lints, renders what the committed snapshots say, carries
//! the CRD of `crds/`, installs into the test kit's control plane (the operator Deployment becomes
//! Available under kwok, the CRD is established), and its RBAC grants the operator exactly the
//! agreed rights and nothing broader, checked for the operator's ServiceAccount with the
//! SubjectAccessReviews that `kubectl auth can-i --as` sends.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use postcache_testkit::{ControlPlane, tool, unique_name, wait_until};

use crate::repo;

/// The Kubernetes version `helm template` renders for (helm's built-in default is 1.20).
pub const KUBE_VERSION: &str = "1.36.0";

fn chart() -> PathBuf {
    repo().join("charts/postcache")
}

/// Runs helm with throw-away cache/config/data homes; `Ok(stdout)` or `Err(stdout + stderr)`.
pub fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Result<String, String> {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(tool("helm"));
    command
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env_remove("KUBECONFIG");
    if let Some(kubeconfig) = kubeconfig {
        command.arg("--kubeconfig").arg(kubeconfig);
    }
    let out = command.output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Compares `actual` with the committed file `path`; `POSTCACHE_BLESS=1` rewrites the file.
fn assert_matches_committed(path: &Path, actual: &str, how_to_regenerate: &str) {
    if std::env::var_os("POSTCACHE_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed != actual {
        let first = committed
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from what the test produced (first at line {}):\n  committed: {:?}\n  actual:    {:?}\n{how_to_regenerate}",
            path.display(),
            first + 1,
            committed.lines().nth(first),
            actual.lines().nth(first),
        );
    }
}

#[test]
fn the_chart_lints_in_both_rbac_modes() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    helm(&["lint", "--strict", chart], None).unwrap();
    helm(
        &[
            "lint",
            "--strict",
            chart,
            "--set",
            "operator.watchNamespace=team-a",
            "--set",
            "serviceMonitor.enabled=true",
        ],
        None,
    )
    .unwrap();
}

#[test]
fn the_chart_carries_the_generated_crd() {
    let generated = std::fs::read_to_string(repo().join("crds/postcache.yaml")).unwrap();
    assert_matches_committed(
        &chart().join("crds/postcache.yaml"),
        &generated,
        "copy crds/postcache.yaml to charts/postcache/crds/ (or run this test with POSTCACHE_BLESS=1)",
    );
}

/// `helm template` of the chart with `--set` pairs.
fn template(sets: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut args = vec![
        "template",
        "postcache",
        chart.to_str().unwrap(),
        "--namespace",
        "postcache-system",
        "--kube-version",
        KUBE_VERSION,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    helm(&args, None)
}

/// The dotted keys the schema describes; an object without `properties` is one key.
fn schema_keys(schema: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, sub) in schema["properties"].as_object().into_iter().flatten() {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if sub.get("properties").is_some() {
            schema_keys(sub, &path, out);
        } else {
            out.insert(path);
        }
    }
}

/// The dotted keys of `values`, as deep as the schema describes them.
fn value_keys(
    values: &serde_json::Value,
    schema: &serde_json::Value,
    prefix: &str,
    out: &mut BTreeSet<String>,
) {
    for (key, value) in values.as_object().into_iter().flatten() {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match schema["properties"].get(key) {
            Some(sub) if sub.get("properties").is_some() => value_keys(value, sub, &path, out),
            _ => {
                out.insert(path);
            }
        }
    }
}

#[test]
fn the_chart_readme_values_yaml_and_the_schema_name_the_same_keys() {
    let read = |name: &str| std::fs::read_to_string(chart().join(name)).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&read("values.schema.json")).unwrap();
    let values: serde_json::Value = serde_norway::from_str(&read("values.yaml")).unwrap();
    let mut described = BTreeSet::new();
    schema_keys(&schema, "", &mut described);
    let mut defaulted = BTreeSet::new();
    value_keys(&values, &schema, "", &mut defaulted);
    let documented: BTreeSet<String> = read("README.md")
        .lines()
        .filter_map(|line| {
            line.strip_prefix("| `")?
                .split('`')
                .next()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(defaulted, described, "values.yaml vs values.schema.json");
    assert_eq!(
        documented, described,
        "README.md's table vs values.schema.json"
    );
}

#[test]
fn helm_refuses_values_the_chart_does_not_know_or_cannot_use() {
    let cases = [
        ("replicaCount=0", "replicaCount"),
        ("operator.logFormat=xml", "logFormat"),
        ("operator.leaderElecton=false", "leaderElecton"),
        ("operator.metricsAddr=9090", "metricsAddr"),
        ("operator.watchNamespace=Team_A", "watchNamespace"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("serviceMonitor.interval=often", "interval"),
        ("resourses.limits.memory=1Gi", "resourses"),
    ];
    for (set, field) in cases {
        let refused = template(&[set]).expect_err(set);
        assert!(
            refused.contains("values don't meet the specifications of the schema")
                && refused.contains(field),
            "{set}: {refused}"
        );
    }
}

#[test]
fn names_follow_the_overrides_and_a_pdb_guards_the_operator_replicas() {
    let kinds_named = |rendered: &str, name: &str| {
        rendered
            .lines()
            .filter(|l| l.trim() == format!("name: {name}"))
            .count()
    };
    let renamed = template(&["fullnameOverride=pc"]).unwrap();
    assert!(kinds_named(&renamed, "pc-operator") >= 3, "{renamed}");
    assert_eq!(kinds_named(&renamed, "postcache-operator"), 0);
    let short = template(&["nameOverride=ops"]).unwrap();
    assert!(
        kinds_named(&short, "postcache-ops-operator") >= 3,
        "{short}"
    );

    let default = template(&[]).unwrap();
    assert!(default.contains("kind: PodDisruptionBudget"), "{default}");
    assert!(default.contains("maxUnavailable: 1"));
    let single = template(&["replicaCount=1"]).unwrap();
    assert!(
        !single.contains("kind: PodDisruptionBudget"),
        "a budget over one replica would block every drain"
    );
}

#[test]
fn helm_template_matches_the_snapshots() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let cases: [(&str, &[&str]); 2] = [
        ("default", &[]),
        (
            "watch-namespace",
            &[
                "--set",
                "operator.watchNamespace=team-a",
                "--set",
                "serviceMonitor.enabled=true",
                "--set",
                "operator.logFormat=text",
            ],
        ),
    ];
    for (name, extra) in cases {
        let mut args = vec![
            "template",
            "postcache",
            chart,
            "--namespace",
            "postcache-system",
            "--kube-version",
            KUBE_VERSION,
        ];
        args.extend_from_slice(extra);
        let rendered = helm(&args, None).unwrap();
        assert_matches_committed(
            &repo().join(format!(
                "crates/operator/tests/it/snapshots/chart-{name}.yaml"
            )),
            &rendered,
            "if the change is intended, rerun with POSTCACHE_BLESS=1 and review the diff",
        );
    }
    // The env the operator reads: one variable per agreed flag, the image the chart's own.
    let default = helm(
        &[
            "template",
            "postcache",
            chart,
            "-n",
            "postcache-system",
            "--kube-version",
            KUBE_VERSION,
        ],
        None,
    )
    .unwrap();
    for env in [
        "POSTCACHE_OPERATOR_METRICS_ADDR",
        "POSTCACHE_OPERATOR_LEADER_ELECTION",
        "POSTCACHE_OPERATOR_LEASE_NAME",
        "POSTCACHE_OPERATOR_NAMESPACE",
        "POSTCACHE_OPERATOR_SERVICE_IMAGE",
        "POSTCACHE_OPERATOR_REDIS_IMAGE",
        "POSTCACHE_OPERATOR_POSTGRES_IMAGE",
        "POSTCACHE_LOG_FORMAT",
    ] {
        assert!(default.contains(&format!("- name: {env}\n")), "no {env}");
    }
    // Each variable the chart sets is an option of `postcache operator` (or the shared log
    // format): a renamed flag cannot leave the chart setting something nobody reads.
    use clap::Args as _;
    let operator = postcache_operator::OperatorArgs::augment_args(clap::Command::new("operator"));
    let operator = postcache_server::GlobalArgs::augment_args(operator);
    let known: Vec<String> = operator
        .get_arguments()
        .filter_map(|a| Some(a.get_env()?.to_string_lossy().into_owned()))
        .collect();
    let watching = template(&["operator.watchNamespace=shop"]).unwrap();
    for line in default.lines().chain(watching.lines()) {
        if let Some(name) = line.trim().strip_prefix("- name: POSTCACHE_") {
            let name = format!("POSTCACHE_{name}");
            assert!(
                known.contains(&name),
                "the chart sets {name}, which `postcache operator` does not read"
            );
        }
    }
    assert!(default.contains(&format!("image: {}\n", crate::image::REFERENCE)));
}

/// Access checks for one ServiceAccount (`namespace/name`), asked together in one kubectl call.
///
/// Each check is written as for `kubectl auth can-i`: verb, `plural[.group]`, then `-n <namespace>`
/// and `--subresource=<name>` (no namespace: cluster-wide). They are asked as kubectl asks, with
/// SubjectAccessReviews, but posted directly: kubectl resolves resources through discovery and
/// guesses wrong for kinds whose CRDs this control plane lacks (ServiceMonitor, PrometheusRule).
struct AccessChecks<'a> {
    sa: &'a str,
    checks: Vec<(String, serde_json::Value, bool)>,
}

impl<'a> AccessChecks<'a> {
    fn new(sa: &'a str) -> Self {
        AccessChecks {
            sa,
            checks: Vec::new(),
        }
    }

    fn allow(&mut self, args: &[&str]) {
        self.add(args, true);
    }

    fn deny(&mut self, args: &[&str]) {
        self.add(args, false);
    }

    fn add(&mut self, args: &[&str], expected: bool) {
        let (sa_ns, sa_name) = self.sa.split_once('/').unwrap();
        let (resource, group) = args[1].split_once('.').unwrap_or((args[1], ""));
        let (mut namespace, mut subresource) = ("", "");
        let mut rest = args[2..].iter();
        while let Some(arg) = rest.next() {
            match *arg {
                "-n" => namespace = rest.next().unwrap(),
                other => subresource = other.strip_prefix("--subresource=").unwrap(),
            }
        }
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": format!("system:serviceaccount:{sa_ns}:{sa_name}"),
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{sa_ns}"), "system:authenticated"],
                "resourceAttributes": {
                    "namespace": namespace, "verb": args[0], "group": group,
                    "resource": resource, "subresource": subresource,
                },
            },
        });
        self.checks.push((args.join(" "), review, expected));
    }

    /// Asks every check; panics listing each one whose answer differs from the expected one.
    fn verify(self, plane: &ControlPlane) {
        let items: Vec<_> = self.checks.iter().map(|(_, review, _)| review).collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), list.to_string()).unwrap();
        let path = file.path().to_str().unwrap();
        let out = plane
            .kubectl(&[
                "create",
                "-f",
                path,
                "-o",
                "jsonpath={.status.allowed}{\"\\n\"}",
            ])
            .unwrap();
        let answers: Vec<bool> = out.lines().map(|l| l.trim() == "true").collect();
        assert_eq!(
            answers.len(),
            self.checks.len(),
            "one answer per review: {out}"
        );
        let wrong: Vec<String> = self
            .checks
            .iter()
            .zip(answers)
            .filter(|((_, _, expected), answer)| expected != answer)
            .map(|((check, _, expected), _)| {
                let what = if *expected { "denied" } else { "allowed" };
                format!("{what}: {check}")
            })
            .collect();
        assert!(wrong.is_empty(), "{}:\n{}", self.sa, wrong.join("\n"));
    }
}

/// Installs the chart as `release` into a fresh namespace and waits until the operator
/// Deployment is Available. Returns the namespace and the ServiceAccount as `namespace/name`.
fn install(plane: &ControlPlane, release: &str, extra: &[&str]) -> (String, String) {
    let ns = plane.create_namespace();
    let sa = install_into(plane, &ns, release, extra);
    (ns, sa)
}

/// Installs the chart as `release` into the existing namespace `ns` and waits until the operator
/// Deployment is Available. Returns the ServiceAccount as `namespace/name`.
pub(crate) fn install_into(
    plane: &ControlPlane,
    ns: &str,
    release: &str,
    extra: &[&str],
) -> String {
    let chart = chart();
    let mut args = vec![
        "install",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        ns,
    ];
    args.extend_from_slice(extra);
    helm(&args, Some(plane.kubeconfig())).unwrap();
    let deployment = format!("deployment/{release}-postcache-operator");
    wait_until(
        "the operator Deployment to be Available",
        Duration::from_secs(120),
        || {
            plane.kubectl(&[
                "wait",
                "-n",
                ns,
                "--for=condition=Available",
                &deployment,
                "--timeout=5s",
            ])
        },
    );
    format!("{ns}/{release}-postcache-operator")
}

#[test]
fn helm_install_runs_the_operator_with_exactly_the_agreed_rights() {
    let plane = ControlPlane::shared();
    let release = unique_name("pc");
    let (ns, sa) = install(&plane, &release, &[]);
    crate::wait_established(&plane);
    let deployment = format!("{release}-postcache-operator");
    let ready = plane
        .kubectl(&[
            "get",
            "deployment",
            &deployment,
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.readyReplicas}/{.spec.replicas}",
        ])
        .unwrap();
    assert_eq!(ready, "2/2");

    let elsewhere = plane.create_namespace();
    let mut checks = AccessChecks::new(&sa);
    // Owned kinds the controller reacts to: watched too.
    let owned = ["statefulsets.apps", "deployments.apps", "jobs.batch"];
    let applied = [
        "services",
        "configmaps",
        "serviceaccounts",
        "poddisruptionbudgets.policy",
        "horizontalpodautoscalers.autoscaling",
        "networkpolicies.networking.k8s.io",
        "servicemonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
    ];
    // Everywhere, since the operator watches every namespace by default.
    for namespace in [ns.as_str(), elsewhere.as_str()] {
        for verb in ["list", "watch"] {
            checks.allow(&[verb, "postcaches.postcache.io", "-n", namespace]);
        }
        for verb in ["get", "list", "watch"] {
            // Nothing in the operator reads Pods: it goes by its workloads' status.
            checks.deny(&[verb, "pods", "-n", namespace]);
        }
        // Generated credentials are read by name and created once by server-side apply; never
        // listed or deleted.
        for verb in ["get", "create", "patch"] {
            checks.allow(&[verb, "secrets", "-n", namespace]);
        }
        for verb in ["list", "watch", "delete", "update", "deletecollection", "*"] {
            checks.deny(&[verb, "secrets", "-n", namespace]);
        }
        checks.allow(&[
            "patch",
            "postcaches.postcache.io",
            "-n",
            namespace,
            "--subresource=status",
        ]);
        checks.deny(&[
            "update",
            "postcaches.postcache.io",
            "-n",
            namespace,
            "--subresource=status",
        ]);
        checks.allow(&[
            "update",
            "postcaches.postcache.io",
            "-n",
            namespace,
            "--subresource=finalizers",
        ]);
        for verb in ["create", "patch"] {
            checks.deny(&[verb, "events", "-n", namespace]);
            checks.allow(&[verb, "events.events.k8s.io", "-n", namespace]);
        }
        for (resources, watched) in [(&owned[..], true), (&applied[..], false)] {
            for &resource in resources {
                // Server-side apply: `patch`, and `create` when the apply creates.
                for verb in ["get", "list", "create", "patch", "delete"] {
                    checks.allow(&[verb, resource, "-n", namespace]);
                }
                if watched {
                    checks.allow(&["watch", resource, "-n", namespace]);
                } else {
                    checks.deny(&["watch", resource, "-n", namespace]);
                }
                for verb in ["update", "deletecollection", "*"] {
                    checks.deny(&[verb, resource, "-n", namespace]);
                }
            }
        }
    }
    for verb in ["get", "create", "update"] {
        checks.allow(&[verb, "leases.coordination.k8s.io", "-n", &ns]);
        checks.deny(&[verb, "leases.coordination.k8s.io", "-n", &elsewhere]);
    }
    let denied: &[&[&str]] = &[
        &["*", "*", "-n", &ns],
        &["get", "secrets.example.com", "-n", &ns],
        &["create", "postcaches.postcache.io", "-n", &ns],
        &["update", "postcaches.postcache.io", "-n", &ns],
        &["patch", "postcaches.postcache.io", "-n", &ns],
        &["delete", "postcaches.postcache.io", "-n", &ns],
        &[
            "update",
            "postcaches.postcache.io",
            "-n",
            &ns,
            "--subresource=scale",
        ],
        &["create", "clusterroles.rbac.authorization.k8s.io"],
        &["escalate", "clusterroles.rbac.authorization.k8s.io"],
        &["bind", "clusterroles.rbac.authorization.k8s.io"],
        &["create", "roles.rbac.authorization.k8s.io", "-n", &ns],
        &[
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            "-n",
            &ns,
        ],
        &["impersonate", "serviceaccounts", "-n", &ns],
        &[
            "create",
            "serviceaccounts",
            "-n",
            &ns,
            "--subresource=token",
        ],
        &["get", "nodes"],
        &["list", "namespaces"],
        &["create", "namespaces"],
        &["create", "pods", "-n", &ns],
        &["delete", "pods", "-n", &ns],
        &["create", "pods", "-n", &ns, "--subresource=exec"],
        &["get", "pods", "-n", &ns, "--subresource=log"],
        &["get", "persistentvolumeclaims", "-n", &ns],
        &["get", "customresourcedefinitions.apiextensions.k8s.io"],
        &["delete", "customresourcedefinitions.apiextensions.k8s.io"],
        &["delete", "leases.coordination.k8s.io", "-n", &ns],
        &[
            "create",
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
        ],
    ];
    for args in denied {
        checks.deny(args);
    }
    checks.verify(&plane);

    helm(
        &["uninstall", &release, "--namespace", &ns, "--wait"],
        Some(plane.kubeconfig()),
    )
    .unwrap();
}

#[test]
fn with_a_watch_namespace_the_operator_gets_a_role_there_and_nothing_cluster_wide() {
    let plane = ControlPlane::shared();
    let watched = plane.create_namespace();
    let other = plane.create_namespace();
    let release = unique_name("pcw");
    let set = format!("operator.watchNamespace={watched}");
    let (ns, sa) = install(&plane, &release, &["--set", &set]);
    let mut checks = AccessChecks::new(&sa);
    for verb in ["list", "watch"] {
        checks.allow(&[verb, "postcaches.postcache.io", "-n", &watched]);
        checks.deny(&[verb, "postcaches.postcache.io", "-n", &other]);
        checks.deny(&[verb, "postcaches.postcache.io"]);
    }
    checks.allow(&["create", "statefulsets.apps", "-n", &watched]);
    checks.deny(&["create", "statefulsets.apps", "-n", &other]);
    checks.deny(&["list", "secrets"]);
    checks.allow(&["update", "leases.coordination.k8s.io", "-n", &ns]);
    checks.verify(&plane);

    let env = plane
        .kubectl(&[
            "get",
            "deployment",
            &format!("{release}-postcache-operator"),
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"POSTCACHE_OPERATOR_WATCH_NAMESPACE\")].value}",
        ])
        .unwrap();
    assert_eq!(env, watched);
    helm(
        &["uninstall", &release, "--namespace", &ns, "--wait"],
        Some(plane.kubeconfig()),
    )
    .unwrap();
}
