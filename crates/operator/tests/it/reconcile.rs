//! The controller, run in-process against the test kit's control plane (real apiserver,
//! controller manager with its garbage collector, scheduler, kwok making pods ready): a PostCache
//! gets every child with owner references, becomes Ready (`kubectl wait` works), re-reconciling
//! writes nothing, spec changes reach the children (the shard change through its recorded steps),
//! and deleting the PostCache garbage-collects the children.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use postcache_operator::controller::{Context, run_controller};
use postcache_operator::desired::Images;
use postcache_operator::{PostCache, SCRIPTS};
use postcache_testkit::ControlPlane;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::plane_with_crd;

/// The controller of one test's namespace; aborted when dropped.
pub(crate) struct Operator {
    ctx: Arc<Context>,
    task: JoinHandle<()>,
}

impl Operator {
    pub(crate) fn start(client: kube::Client, ns: &str) -> Operator {
        let images = Images {
            service: "ghcr.io/postcache/postcache:0.1.0".into(),
            redis: "redis:7.2".into(),
            postgres: "postgres:16".into(),
        };
        let ctx = Context::new(client, images, SCRIPTS, "it");
        let ns = ns.to_owned();
        let task = tokio::spawn({
            let ctx = ctx.clone();
            async move { run_controller(ctx, Some(&ns)).await }
        });
        Operator { ctx, task }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` until it returns `Ok`, or panics after `timeout` with the last error.
pub(crate) async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn kinds() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<Secret>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<ServiceAccount>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<Job>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
        ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
    ]
}

/// Every child labelled as `name`'s: `Kind/name` → the object.
async fn children(client: &kube::Client, ns: &str, name: &str) -> BTreeMap<String, DynamicObject> {
    let selector = format!(
        "app.kubernetes.io/instance={name},app.kubernetes.io/managed-by=postcache-operator"
    );
    let mut out = BTreeMap::new();
    for kind in kinds() {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &kind);
        for object in api
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap()
        {
            out.insert(format!("{}/{}", kind.kind, object.name_any()), object);
        }
    }
    out
}

pub(crate) async fn create(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> PostCache {
    let api: Api<PostCache> = Api::namespaced(client.clone(), ns);
    let pc: PostCache = serde_json::from_value(json!({
        "apiVersion": "postcache.io/v1alpha1", "kind": "PostCache",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &pc).await.unwrap()
}

/// What each reconcile test starts from: the control plane with the CRD, a fresh namespace, a
/// client, and an operator process watching that namespace.
async fn operator_in_a_fresh_namespace() -> (Arc<ControlPlane>, String, kube::Client, Operator) {
    let plane = plane_with_crd();
    let ns = plane.create_namespace();
    let client = plane.client().await;
    let operator = Operator::start(client.clone(), &ns);
    (plane, ns, client, operator)
}

pub(crate) async fn kubectl(plane: &Arc<ControlPlane>, args: &[&str]) -> Result<String, String> {
    let plane = plane.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        plane.kubectl(&args)
    })
    .await
    .unwrap()
}

/// `kubectl wait --for=condition=Ready` on PostCache `name` (what a user runs), up to `timeout`.
pub(crate) async fn wait_ready(plane: &Arc<ControlPlane>, ns: &str, name: &str, timeout: &str) {
    let (object, timeout) = (format!("pcache/{name}"), format!("--timeout={timeout}"));
    let args = ["wait", "--for=condition=Ready", &object, "-n", ns, &timeout];
    if let Err(e) = kubectl(plane, &args).await {
        panic!("kubectl wait for {object}: {e}");
    }
}

async fn status(client: &kube::Client, ns: &str, name: &str) -> serde_json::Value {
    let api: Api<PostCache> = Api::namespaced(client.clone(), ns);
    serde_json::to_value(api.get(name).await.unwrap().status).unwrap()
}

fn replicas(object: &DynamicObject) -> i64 {
    object.data["spec"]["replicas"].as_i64().unwrap_or(-1)
}

const EXPECTED: &[&str] = &[
    "ConfigMap/feed-scripts",
    "ConfigMap/feed-redis-config",
    "ConfigMap/feed-dashboard",
    "Secret/feed-redis-auth",
    "Secret/feed-postgres-credentials",
    "Secret/feed-postgres-replication",
    "Secret/feed-api-tokens",
    "Service/feed-redis",
    "Service/feed-redis-headless",
    "Service/feed-postgres-headless",
    "Service/feed-postgres-rw",
    "Service/feed-postgres-ro",
    "Service/feed-cache",
    "ServiceAccount/feed-cache",
    "StatefulSet/feed-redis",
    "StatefulSet/feed-postgres",
    "StatefulSet/feed-postgres-replica",
    "Deployment/feed-cache",
    "PodDisruptionBudget/feed-redis",
    "PodDisruptionBudget/feed-postgres",
    "PodDisruptionBudget/feed-cache",
    "HorizontalPodAutoscaler/feed-cache",
    "NetworkPolicy/feed-service",
    "NetworkPolicy/feed-redis",
    "NetworkPolicy/feed-postgres",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postcache_gets_owned_children_becomes_ready_is_stable_is_garbage_collected_and_its_credentials_outlive_it()
 {
    let (plane, ns, client, operator) = operator_in_a_fresh_namespace().await;
    let pc = create(
        &client,
        &ns,
        "feed",
        json!({"redis": {"shards": 3, "replicasPerShard": 1}, "postgres": {"instances": 3}}),
    )
    .await;
    let uid = pc.uid().unwrap();

    let all = eventually("every child", Duration::from_secs(60), || async {
        let all = children(&client, &ns, "feed").await;
        let missing: Vec<_> = EXPECTED.iter().filter(|k| !all.contains_key(**k)).collect();
        if missing.is_empty() {
            Ok(all)
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await;
    for (id, object) in &all {
        if id.starts_with("Secret/") {
            assert!(
                object.owner_references().is_empty(),
                "{id}: credentials are retained with the volumes, not garbage-collected"
            );
            continue;
        }
        let owner = object
            .owner_references()
            .iter()
            .find(|o| o.uid == uid)
            .unwrap_or_else(|| panic!("{id} is not owned by the PostCache"));
        assert_eq!(owner.controller, Some(true), "{id}");
        assert_eq!(owner.block_owner_deletion, Some(true), "{id}");
    }
    let credentials =
        |all: &BTreeMap<String, DynamicObject>| -> BTreeMap<String, serde_json::Value> {
            all.iter()
                .filter(|(id, _)| id.starts_with("Secret/"))
                .map(|(id, o)| (id.clone(), o.data["data"].clone()))
                .collect()
        };
    let first_credentials = credentials(&all);
    assert_eq!(replicas(&all["StatefulSet/feed-redis"]), 6);
    assert_eq!(replicas(&all["StatefulSet/feed-postgres"]), 1);
    assert_eq!(replicas(&all["StatefulSet/feed-postgres-replica"]), 2);

    wait_ready(&plane, &ns, "feed", "240s").await;
    let st = status(&client, &ns, "feed").await;
    assert_eq!(st["phase"], "Ready", "{st}");
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(st["redis"]["shards"], 3, "{st}");
    assert_eq!(st["redis"]["readyNodes"], 6);
    assert_eq!(st["postgres"]["readyInstances"], 3);
    assert_eq!(st["service"]["readyReplicas"], 2);
    assert_eq!(
        st["service"]["selector"],
        "app.kubernetes.io/instance=feed,app.kubernetes.io/component=service"
    );
    assert_eq!(
        st["endpoints"]["http"],
        format!("http://feed-cache.{ns}.svc:8080")
    );
    let monitoring = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Monitoring")
        .unwrap();
    assert_eq!(monitoring["reason"], "CrdMissing", "{monitoring}");
    for condition in ["Ready", "RedisReady", "PostgresReady", "ServiceReady"] {
        let c = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == condition)
            .unwrap();
        assert_eq!(c["status"], "True", "{c}");
    }
    // The bootstrap Job ran, was recorded, and is gone.
    eventually(
        "the bootstrap Job to be removed",
        Duration::from_secs(120),
        || async {
            let all = children(&client, &ns, "feed").await;
            if all.contains_key("Job/feed-redis-bootstrap") {
                Err("still there".to_owned())
            } else {
                Ok(())
            }
        },
    )
    .await;
    // The scale subresource reads the status.
    let scale = kubectl(
        &plane,
        &[
            "get",
            "--raw",
            &format!("/apis/postcache.io/v1alpha1/namespaces/{ns}/postcaches/feed/scale"),
        ],
    )
    .await
    .unwrap();
    assert!(scale.contains("\"replicas\":2"), "{scale}");

    // Re-reconciling (an operator restart, then a metadata-only change) writes nothing.
    let before: BTreeMap<String, String> = children(&client, &ns, "feed")
        .await
        .into_iter()
        .map(|(id, o)| (id, o.resource_version().unwrap()))
        .collect();
    let status_before = status(&client, &ns, "feed").await;
    drop(operator);
    let operator = Operator::start(client.clone(), &ns);
    eventually(
        "a reconcile after the restart",
        Duration::from_secs(120),
        || async {
            if operator.ctx.reconciles() >= 1 {
                Ok(())
            } else {
                Err("none yet".to_owned())
            }
        },
    )
    .await;
    let api: Api<PostCache> = Api::namespaced(client.clone(), &ns);
    let poke = json!({"metadata": {"annotations": {"example.com/poke": "1"}}});
    api.patch("feed", &PatchParams::default(), &Patch::Merge(&poke))
        .await
        .unwrap();
    let seen = operator.ctx.reconciles();
    eventually(
        "a reconcile after the poke",
        Duration::from_secs(120),
        || async {
            if operator.ctx.reconciles() > seen {
                Ok(())
            } else {
                Err("none yet".to_owned())
            }
        },
    )
    .await;
    let after: BTreeMap<String, String> = children(&client, &ns, "feed")
        .await
        .into_iter()
        .map(|(id, o)| (id, o.resource_version().unwrap()))
        .collect();
    assert_eq!(before, after, "re-reconciling wrote to children");
    assert_eq!(
        status_before,
        status(&client, &ns, "feed").await,
        "the status was rewritten"
    );

    // Deleting the PostCache: the garbage collector removes every child but the credentials,
    // which stay with the data volumes (StatefulSets retain their claims).
    api.delete("feed", &DeleteParams::default()).await.unwrap();
    eventually(
        "the children to be garbage-collected",
        Duration::from_secs(90),
        || async {
            let left = children(&client, &ns, "feed").await;
            let owned: Vec<_> = left.keys().filter(|k| !k.starts_with("Secret/")).collect();
            if owned.is_empty() {
                Ok(())
            } else {
                Err(format!("left: {owned:?}"))
            }
        },
    )
    .await;
    let kept = children(&client, &ns, "feed").await;
    assert_eq!(
        credentials(&kept),
        first_credentials,
        "the credentials were kept"
    );

    // Recreated under the same name, it uses them: old volumes and passwords still match.
    create(
        &client,
        &ns,
        "feed",
        json!({"redis": {"shards": 3, "replicasPerShard": 1}, "postgres": {"instances": 3}}),
    )
    .await;
    wait_ready(&plane, &ns, "feed", "240s").await;
    let again = children(&client, &ns, "feed").await;
    assert_eq!(
        credentials(&again),
        first_credentials,
        "a recreated PostCache found its credentials, not new ones"
    );
}

fn step_notes(events: &[k8s_openapi::api::events::v1::Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("ShardStep"))
        .filter_map(|e| e.note.clone())
        .collect()
}

async fn events(client: &kube::Client, ns: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let mut list = api.list(&ListParams::default()).await.unwrap().items;
    list.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_changes_reach_the_children_and_the_shard_change_goes_through_its_steps() {
    let (plane, ns, client, _operator) = operator_in_a_fresh_namespace().await;
    create(
        &client,
        &ns,
        "feed",
        json!({"redis": {"shards": 3, "replicasPerShard": 0}, "postgres": {"instances": 3}}),
    )
    .await;
    wait_ready(&plane, &ns, "feed", "240s").await;

    let api: Api<PostCache> = Api::namespaced(client.clone(), &ns);
    let change = json!({"spec": {
        "redis": {"shards": 4},
        "postgres": {"instances": 2},
        "service": {"replicas": 3, "autoscaling": {"enabled": false}},
    }});
    api.patch("feed", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    eventually(
        "the children to follow the spec",
        Duration::from_secs(120),
        || async {
            let all = children(&client, &ns, "feed").await;
            let got = (
                replicas(&all["StatefulSet/feed-redis"]),
                replicas(&all["StatefulSet/feed-postgres-replica"]),
                replicas(&all["Deployment/feed-cache"]),
                all.contains_key("HorizontalPodAutoscaler/feed-cache"),
            );
            if got == (4, 1, 3, false) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
    eventually(
        "4 shards recorded and Ready",
        Duration::from_secs(180),
        || async {
            let st = status(&client, &ns, "feed").await;
            if st["redis"]["shards"] == 4 && st["phase"] == "Ready" && st["observedGeneration"] == 2
            {
                Ok(())
            } else {
                Err(st.to_string())
            }
        },
    )
    .await;
    let notes = step_notes(&events(&client, &ns).await);
    let grown = [
        "0 → 3: ScaleNodes",
        "0 → 3: Bootstrap",
        "3 → 4: ScaleNodes",
        "3 → 4: MoveSlots",
        "settled at 4",
    ];
    for step in grown {
        assert!(
            notes.iter().any(|n| n.contains(step)),
            "no step {step:?} in {notes:?}"
        );
    }

    // Shrinking drains slots before nodes go.
    let shrink = json!({"spec": {"redis": {"shards": 3}}});
    api.patch("feed", &PatchParams::default(), &Patch::Merge(&shrink))
        .await
        .unwrap();
    eventually(
        "3 shards recorded and Ready",
        Duration::from_secs(180),
        || async {
            let st = status(&client, &ns, "feed").await;
            if st["redis"]["shards"] == 3 && st["phase"] == "Ready" && st["redis"]["nodes"] == 3 {
                Ok(())
            } else {
                Err(st.to_string())
            }
        },
    )
    .await;
    let notes = step_notes(&events(&client, &ns).await);
    for step in ["4 → 3: MoveSlots", "4 → 3: ShrinkNodes", "settled at 3"] {
        assert!(
            notes.iter().any(|n| n.contains(step)),
            "no step {step:?} in {notes:?}"
        );
    }
    let all = children(&client, &ns, "feed").await;
    assert_eq!(replicas(&all["StatefulSet/feed-redis"]), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_tiers_get_no_children_and_the_service_reads_their_secrets() {
    let (plane, ns, client, _operator) = operator_in_a_fresh_namespace().await;
    create(
        &client,
        &ns,
        "ext",
        json!({
            "redis": {"mode": "External", "external": {"urlSecretRef": {"name": "r", "key": "url"}}},
            "postgres": {"mode": "External", "external": {
                "primaryUrlSecretRef": {"name": "p", "key": "url"},
                "replicaUrlsSecretRef": {"name": "p", "key": "replicas"}}},
            "service": {"replicas": 1, "autoscaling": {"enabled": false}},
        }),
    )
    .await;
    wait_ready(&plane, &ns, "ext", "120s").await;
    let all = children(&client, &ns, "ext").await;
    let stray: Vec<_> = all
        .keys()
        .filter(|k| k.contains("redis") || k.contains("postgres") || k.contains("scripts"))
        .collect();
    assert!(stray.is_empty(), "External tiers got children: {stray:?}");
    let env = &all["Deployment/ext-cache"].data["spec"]["template"]["spec"]["containers"][0]["env"];
    let by_name = |name: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {env}"))
            .clone()
    };
    assert_eq!(
        by_name("POSTCACHE_REDIS_URL")["valueFrom"]["secretKeyRef"],
        json!({"name": "r", "key": "url"})
    );
    assert_eq!(
        by_name("POSTCACHE_DATABASE_URL")["valueFrom"]["secretKeyRef"],
        json!({"name": "p", "key": "url"})
    );
    assert_eq!(
        by_name("POSTCACHE_REPLICA_URLS")["valueFrom"]["secretKeyRef"],
        json!({"name": "p", "key": "replicas"})
    );
    let st = status(&client, &ns, "ext").await;
    let redis = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "RedisReady")
        .unwrap();
    assert_eq!(redis["reason"], "External");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_the_apiserver_refuses_make_the_phase_failed_with_a_categorised_event() {
    let (_plane, ns, client, _operator) = operator_in_a_fresh_namespace().await;
    // Valid for a PostCache, too long for its Services' names (63 characters at most).
    let name = "a".repeat(52);
    create(
        &client,
        &ns,
        &name,
        json!({"redis": {"mode": "Standalone"}}),
    )
    .await;
    eventually("phase Failed", Duration::from_secs(90), || async {
        let st = status(&client, &ns, &name).await;
        if st["phase"] == "Failed" {
            Ok(())
        } else {
            Err(st.to_string())
        }
    })
    .await;
    let warnings: Vec<_> = events(&client, &ns)
        .await
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(warnings.iter().any(|r| r == "ApplyFailed"), "{warnings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_storage_size_is_reported_not_forced_and_other_changes_still_apply() {
    let (plane, ns, client, _operator) = operator_in_a_fresh_namespace().await;
    create(
        &client,
        &ns,
        "feed",
        json!({"redis": {"mode": "Standalone", "replicasPerShard": 0}, "postgres": {"instances": 1},
               "service": {"replicas": 1, "autoscaling": {"enabled": false}}}),
    )
    .await;
    wait_ready(&plane, &ns, "feed", "120s").await;

    // A StatefulSet's volume claim templates are immutable; the rest of the change goes through.
    let api: Api<PostCache> = Api::namespaced(client.clone(), &ns);
    let change =
        json!({"spec": {"redis": {"storage": {"size": "2Gi"}}, "service": {"replicas": 2}}});
    api.patch("feed", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    eventually(
        "the other change, and Ready",
        Duration::from_secs(90),
        || async {
            let st = status(&client, &ns, "feed").await;
            let all = children(&client, &ns, "feed").await;
            let replicas = replicas(&all["Deployment/feed-cache"]);
            if replicas == 2 && st["phase"] == "Ready" && st["observedGeneration"] == 2 {
                Ok(())
            } else {
                Err(format!("replicas {replicas}, {st}"))
            }
        },
    )
    .await;
    let warnings: Vec<_> = events(&client, &ns)
        .await
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        warnings.iter().any(|r| r == "StorageNotResized"),
        "{warnings:?}"
    );
    let all = children(&client, &ns, "feed").await;
    let size = &all["StatefulSet/feed-redis"].data["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]
        ["requests"]["storage"];
    assert_eq!(size, "1Gi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_resumes_a_shard_change_at_its_recorded_step() {
    let (plane, ns, client, operator) = operator_in_a_fresh_namespace().await;
    create(
        &client,
        &ns,
        "feed",
        json!({"redis": {"shards": 3, "replicasPerShard": 0}, "postgres": {"instances": 1},
               "service": {"replicas": 1, "autoscaling": {"enabled": false}}}),
    )
    .await;
    wait_ready(&plane, &ns, "feed", "120s").await;
    drop(operator);

    // While no operator runs: the spec asks for 4 shards, and the status says a previous operator
    // had grown the nodes and was moving slots when it stopped.
    let api: Api<PostCache> = Api::namespaced(client.clone(), &ns);
    let grow = json!({"spec": {"redis": {"shards": 4}}});
    api.patch("feed", &PatchParams::default(), &Patch::Merge(&grow))
        .await
        .unwrap();
    let recorded =
        json!({"status": {"redis": {"shardChange": {"from": 3, "to": 4, "step": "MoveSlots"}}}});
    api.patch_status("feed", &PatchParams::default(), &Patch::Merge(&recorded))
        .await
        .unwrap();

    let _operator = Operator::start(client.clone(), &ns);
    eventually(
        "4 shards recorded, the change finished",
        Duration::from_secs(120),
        || async {
            let st = status(&client, &ns, "feed").await;
            let done = st["redis"]["shards"] == 4 && st["redis"].get("shardChange").is_none();
            if done && st["phase"] == "Ready" {
                Ok(())
            } else {
                Err(st.to_string())
            }
        },
    )
    .await;
    let all = events(&client, &ns).await;
    let notes = step_notes(&all);
    assert!(
        notes.iter().any(|n| n.contains("settled at 4")),
        "{notes:?}"
    );
    assert!(
        !notes.iter().any(|n| n.contains("3 → 4: ScaleNodes")),
        "the restarted operator started over: {notes:?}"
    );
    let applied: Vec<String> = all
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Applied"))
        .filter_map(|e| e.note.clone())
        .collect();
    assert!(
        applied
            .iter()
            .any(|n| n.contains("created Job/feed-redis-add-shards-4")),
        "the add-shards Job of the recorded step was not run: {applied:?}"
    );
}
