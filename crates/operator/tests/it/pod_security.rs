//! Pod Security Standard `restricted`: in a namespace that enforces it (and warns and audits on
//! it), every pod template the operator renders is admitted (a server-side dry-run create of each
//! as a Pod, shard Jobs of every action included), and the example PostCache becomes Ready with
//! the controller manager creating every workload's Pods: no `FailedCreate` Event, the Pods exist.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use postcache_operator::desired::{Generated, Images, Inputs, desired};
use postcache_operator::monitoring::MonitoringApis;
use postcache_operator::postgres::Passwords;
use postcache_operator::shards::{ShardAction, ShardJob};
use postcache_operator::{PostCache, PostCacheSpec, SCRIPTS};
use postcache_testkit::ControlPlane;
use serde_json::{Value, json};

use crate::reconcile::{Operator, kubectl};
use crate::{plane_with_crd, repo};

/// A fresh namespace labelled to enforce, warn and audit on Pod Security `restricted`.
pub(crate) fn restricted_namespace(plane: &ControlPlane) -> String {
    let ns = plane.create_namespace();
    let mut args = vec!["label".to_owned(), "namespace".to_owned(), ns.clone()];
    for mode in ["enforce", "warn", "audit"] {
        args.push(format!("pod-security.kubernetes.io/{mode}=restricted"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    plane.kubectl(&args).unwrap();
    ns
}

/// The pod a workload's template becomes, as the workload's controller would create it: the
/// StatefulSet's claim templates turn into claim volumes.
fn pod_of(workload: &Value) -> Value {
    let template = &workload["spec"]["template"];
    let mut spec = template["spec"].clone();
    let claims = workload["spec"]["volumeClaimTemplates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !claims.is_empty() {
        let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
        let claimed = claims.iter().map(|c| {
            let name = c["metadata"]["name"].as_str().unwrap();
            json!({"name": name, "persistentVolumeClaim": {"claimName": format!("{name}-dry-run-0")}})
        });
        spec["volumes"] = Value::Array(volumes.into_iter().chain(claimed).collect());
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "dry-run-", "labels": template["metadata"]["labels"]},
        "spec": spec,
    })
}

/// Every workload `desired` renders for `pc` (`Kind/name` → object), with the shard Job of each
/// action.
fn rendered_workloads(pc: &PostCache) -> BTreeMap<String, Value> {
    let images = Images {
        service: "ghcr.io/postcache/postcache:0.1.0".into(),
        redis: "redis:7.2".into(),
        postgres: "postgres:16".into(),
    };
    let generated = Generated {
        redis_password: "x".into(),
        postgres: Passwords {
            user: "x".into(),
            replication: "x".into(),
        },
        api_token: "x".into(),
    };
    let mut out = BTreeMap::new();
    for action in [
        ShardAction::Bootstrap,
        ShardAction::AddShards,
        ShardAction::DrainShards,
    ] {
        let inputs = Inputs {
            images: &images,
            redis_node_shards: 3,
            redis_job: Some(ShardJob {
                action,
                target: 3,
                node_shards: 3,
            }),
            monitoring: MonitoringApis::default(),
            generated: &generated,
            scripts: SCRIPTS,
        };
        for child in desired(pc, &inputs) {
            if matches!(
                child.resource.kind.as_str(),
                "StatefulSet" | "Deployment" | "Job"
            ) {
                let object = serde_json::to_value(&child.object).unwrap();
                out.insert(child.id(), object);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pod_template_the_operator_renders_is_admitted_under_restricted() {
    let plane = plane_with_crd();
    let ns = restricted_namespace(&plane);
    let client = plane.client().await;
    let mut pc = PostCache::new("feed", PostCacheSpec::default());
    pc.metadata.namespace = Some(ns.clone());
    pc.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
    let workloads = rendered_workloads(&pc);
    for kind in [
        "StatefulSet/feed-redis",
        "StatefulSet/feed-postgres",
        "StatefulSet/feed-postgres-replica",
        "Deployment/feed-cache",
        "Job/feed-redis-bootstrap",
        "Job/feed-redis-add-shards-3",
        "Job/feed-redis-drain-shards-3",
    ] {
        assert!(workloads.contains_key(kind), "{kind} was not rendered");
    }
    // The ServiceAccount admission plugin refuses pods whose account does not exist.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "feed-cache"}})).unwrap();
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let dry_run = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let mut refused = Vec::new();
    for (id, workload) in &workloads {
        let pod: Pod = serde_json::from_value(pod_of(workload)).unwrap();
        if let Err(e) = pods.create(&dry_run, &pod).await {
            refused.push(format!("{id}: {e}"));
        }
    }
    assert!(
        refused.is_empty(),
        "pods refused under restricted:\n{}",
        refused.join("\n")
    );
}

/// `FailedCreate` Events in `ns` (a controller could not create a Pod), as `Kind/name: message`.
async fn failed_creates(client: &kube::Client, ns: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .map(|e| {
            let o = &e.involved_object;
            let (kind, name) = (o.kind.clone(), o.name.clone());
            let message = e.message.unwrap_or_default();
            format!(
                "{}/{}: {message}",
                kind.unwrap_or_default(),
                name.unwrap_or_default()
            )
        })
        .collect()
}

/// `Kind/name` of every object that `SuccessfulCreate` Events say created a Pod.
async fn pod_creators(client: &kube::Client, ns: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
        .map(|e| {
            let o = e.involved_object;
            format!(
                "{}/{}",
                o.kind.unwrap_or_default(),
                o.name.unwrap_or_default()
            )
        })
        .collect()
}

async fn phase(client: &kube::Client, ns: &str, name: &str) -> Value {
    let api: Api<PostCache> = Api::namespaced(client.clone(), ns);
    let status = serde_json::to_value(api.get(name).await.unwrap().status).unwrap();
    status["phase"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_runs_in_a_namespace_that_enforces_restricted() {
    let plane = plane_with_crd();
    let ns = restricted_namespace(&plane);
    let client = plane.client().await;
    let _operator = Operator::start(client.clone(), &ns);
    let example = repo().join("deploy/examples/postcache.yaml");
    kubectl(
        &plane,
        &["apply", "-n", &ns, "-f", example.to_str().unwrap()],
    )
    .await
    .unwrap();

    // Ready, or the first refusal: a refused pod never comes, so waiting longer shows nothing more.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let refused = failed_creates(&client, &ns).await;
        assert!(
            refused.is_empty(),
            "pods were refused:\n{}",
            refused.join("\n")
        );
        if phase(&client, &ns, "feed").await == "Ready" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "feed is not Ready after 300s; pods created by {:?}",
            pod_creators(&client, &ns).await
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Every StatefulSet and Deployment of the operator's has its Pods (so admission passed).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let owned = "app.kubernetes.io/instance=feed,app.kubernetes.io/managed-by=postcache-operator";
    for kind in [
        ApiResource::erase::<k8s_openapi::api::apps::v1::StatefulSet>(&()),
        ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&()),
    ] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &kind);
        for workload in api
            .list(&ListParams::default().labels(owned))
            .await
            .unwrap()
        {
            let labels = &workload.data["spec"]["template"]["metadata"]["labels"];
            let selector = labels
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect::<Vec<_>>()
                .join(",");
            let want = workload.data["spec"]["replicas"].as_i64().unwrap_or(1);
            let found = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .unwrap()
                .items
                .len();
            assert!(
                found as i64 >= want.max(1),
                "{}/{}: {found} pods of {want}",
                kind.kind,
                workload.name_any()
            );
        }
    }
    // The bootstrap Job ran (and may be gone already): its controller created its Pod.
    let creators = pod_creators(&client, &ns).await;
    assert!(
        creators.iter().any(|c| c == "Job/feed-redis-bootstrap"),
        "no Pod of the bootstrap Job: {creators:?}"
    );
    let refused = failed_creates(&client, &ns).await;
    assert!(
        refused.is_empty(),
        "pods were refused:\n{}",
        refused.join("\n")
    );
}
