//! The PostCache CRD on a real apiserver (the test kit's control plane): it is accepted, the
//! examples apply, defaults fill in, and every invalid spec of a table is rejected naming its field.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(missing_docs)] // a test binary, not an API

mod chart;
mod data_plane;
mod e2e;
mod image;
mod leader;
mod least_privilege;
mod node;
mod pod_security;
mod reconcile;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use postcache_operator::PostCache;
use postcache_testkit::{ControlPlane, wait_until};
use serde_json::json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shared control plane with the CRD applied from `crds/postcache.yaml` (as users do).
pub(crate) fn plane_with_crd() -> std::sync::Arc<ControlPlane> {
    let plane = ControlPlane::shared();
    let crd = repo().join("crds/postcache.yaml");
    plane
        .kubectl(&["apply", "--server-side", "-f", crd.to_str().unwrap()])
        .unwrap();
    wait_established(&plane);
    plane
}

/// Waits until the apiserver serves the PostCache CRD.
pub fn wait_established(plane: &ControlPlane) {
    wait_until(
        "the CRD to be established",
        Duration::from_secs(120),
        || {
            plane.kubectl(&[
                "wait",
                "--for=condition=Established",
                "crd/postcaches.postcache.io",
                "--timeout=5s",
            ])
        },
    );
}

#[test]
fn the_committed_crd_is_what_postcache_crd_prints() {
    let committed = std::fs::read_to_string(repo().join("crds/postcache.yaml")).unwrap();
    assert!(
        committed == postcache_operator::crd_yaml(),
        "crds/postcache.yaml is stale: run `cargo run -p postcache -- crd > crds/postcache.yaml`"
    );
}

#[test]
fn the_examples_apply_defaults_fill_in_and_kubectl_explains_fields() {
    let plane = plane_with_crd();
    let ns = plane.create_namespace();
    for example in ["postcache.yaml", "minimal.yaml", "external.yaml"] {
        let file = repo().join("deploy/examples").join(example);
        plane
            .kubectl(&["apply", "-n", &ns, "-f", file.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("{example}: {e}"));
    }
    let minimal = plane
        .kubectl(&["get", "postcaches", "minimal", "-n", &ns, "-o", "json"])
        .unwrap();
    let minimal: serde_json::Value = serde_json::from_str(&minimal).unwrap();
    let spec = &minimal["spec"];
    assert_eq!(spec["redis"]["mode"], "Cluster");
    assert_eq!(spec["redis"]["shards"], 3);
    assert_eq!(spec["redis"]["maxMemoryPolicy"], "noeviction");
    assert_eq!(spec["postgres"]["instances"], 2);
    assert_eq!(spec["service"]["autoscaling"]["maxReplicas"], 10);
    assert_eq!(spec["monitoring"]["alerts"]["minHitRatio"], 0.7);

    let table = plane.kubectl(&["get", "pcache", "-n", &ns]).unwrap();
    for column in [
        "READY",
        "PHASE",
        "REDIS-READY",
        "SHARDS",
        "PG-READY",
        "SERVICE-READY",
        "AGE",
    ] {
        assert!(
            table.contains(column),
            "`kubectl get pc` lacks {column}:\n{table}"
        );
    }
    // Shards are what the cluster holds (status), not what the spec asks: nothing before the
    // operator has bootstrapped a Cluster, never a number for Standalone or External Redis.
    let minimal_row = table
        .lines()
        .find(|l| l.starts_with("minimal "))
        .unwrap_or_else(|| panic!("no row for `minimal`:\n{table}"));
    assert!(
        !minimal_row.split_whitespace().any(|cell| cell == "3"),
        "the Shards column shows the spec's 3 before any shard exists: {minimal_row}"
    );
    // `pc` is also PriorityClass's short name, which kubectl prefers; `pcache` is ours alone.
    let ambiguous = plane
        .kubectl(&["get", "pc", "-n", &ns])
        .unwrap_or_else(|e| e);
    assert!(
        !ambiguous.contains("minimal"),
        "kubectl resolves `pc` to priorityclasses: {ambiguous}"
    );
    let explained = plane
        .kubectl(&["explain", "postcache.spec.redis.shards"])
        .unwrap();
    assert!(explained.contains("Masters of the cluster"), "{explained}");
    // From the root, `kubectl explain` says what the object is, not how it was generated.
    let root = plane.kubectl(&["explain", "postcache"]).unwrap();
    assert!(root.contains("A cache-fronted posts service"), "{root}");
    assert!(!root.contains("Auto-generated"), "{root}");
    // The `cache` category lists PostCaches beside any other cache a cluster runs.
    let category = plane.kubectl(&["get", "cache", "-n", &ns]).unwrap();
    assert!(
        category.lines().any(|l| l.contains("minimal")),
        "`kubectl get cache` lists no PostCache:\n{category}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_rejected_naming_their_field() {
    let plane = plane_with_crd();
    let ns = plane.create_namespace();
    let api: Api<DynamicObject> = Api::namespaced_with(
        plane.client().await,
        &ns,
        &ApiResource::erase::<PostCache>(&()),
    );
    let cases = [
        (
            "cluster with two shards",
            json!({"redis": {"mode": "Cluster", "shards": 2}}),
            "spec.redis.shards",
        ),
        (
            "external redis without its secret",
            json!({"redis": {"mode": "External"}}),
            "spec.redis.external",
        ),
        (
            "external postgres without its secret",
            json!({"postgres": {"mode": "External"}}),
            "spec.postgres.external",
        ),
        (
            "no postgres instance",
            json!({"postgres": {"instances": 0}}),
            "spec.postgres.instances",
        ),
        (
            "negative replicas per shard",
            json!({"redis": {"replicasPerShard": -1}}),
            "spec.redis.replicasPerShard",
        ),
        (
            "negative service replicas",
            json!({"service": {"replicas": -1}}),
            "spec.service.replicas",
        ),
        (
            "a trusted proxy that is no network",
            json!({"service": {"trustedProxies": ["10.0.0.0/8", "10.0.0.0/33"]}}),
            "spec.service.trustedProxies",
        ),
        (
            "min above max replicas",
            json!({"service": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}}),
            "spec.service.autoscaling.minReplicas",
        ),
        (
            "hit ratio above 1",
            json!({"monitoring": {"alerts": {"minHitRatio": 1.5}}}),
            "spec.monitoring.alerts.minHitRatio",
        ),
        (
            "negative pool usage",
            json!({"monitoring": {"alerts": {"maxDbPoolUsage": -0.1}}}),
            "spec.monitoring.alerts.maxDbPoolUsage",
        ),
        (
            "redis maxMemory below 1Mi",
            json!({"redis": {"maxMemory": "512Ki"}}),
            "spec.redis.maxMemory",
        ),
        (
            "redis maxMemory not a quantity",
            json!({"redis": {"maxMemory": "lots"}}),
            "spec.redis.maxMemory",
        ),
        (
            "an evicting maxmemory policy",
            json!({"redis": {"maxMemoryPolicy": "allkeys-lru"}}),
            "spec.redis.maxMemoryPolicy",
        ),
        (
            "unknown redis mode",
            json!({"redis": {"mode": "Sharded"}}),
            "spec.redis.mode",
        ),
    ];
    for (i, (name, spec, field)) in cases.iter().enumerate() {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "postcache.io/v1alpha1", "kind": "PostCache",
            "metadata": {"name": format!("bad-{i}")}, "spec": spec
        }))
        .unwrap();
        let err = api
            .create(&PostParams::default(), &object)
            .await
            .expect_err(name)
            .to_string();
        assert!(
            err.contains(field),
            "{name}: the rejection does not name {field}: {err}"
        );
    }

    // A transition rule: the storage class cannot change once set.
    let good: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "postcache.io/v1alpha1", "kind": "PostCache", "metadata": {"name": "sticky"},
        "spec": {"postgres": {"storage": {"size": "5Gi", "storageClassName": "fast"}},
                 "redis": {"maxMemory": "1Gi", "maxMemoryPolicy": "volatile-lru"}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &good).await.unwrap();
    let change = json!({"spec": {"postgres": {"storage": {"storageClassName": "slow"}}}});
    let err = api
        .patch("sticky", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.postgres.storage.storageClassName"),
        "{err}"
    );
    let grow = json!({"spec": {"postgres": {"storage": {"size": "20Gi"}}}});
    api.patch("sticky", &PatchParams::default(), &Patch::Merge(&grow))
        .await
        .unwrap();
}
