use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use postcache_testkit::{ControlPlane, NODE_NAME};

use crate::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_accepts_a_crd_and_an_object_of_it() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let ns = plane.create_namespace();
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.smoke.postcache.io"},
        "spec": {
            "group": "smoke.postcache.io",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}}
                }}}
            }]
        }
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    eventually(
        "the CRD to be established",
        Duration::from_secs(30),
        || async {
            let crd = crds
                .get("widgets.smoke.postcache.io")
                .await
                .map_err(|e| e.to_string())?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(established.then_some(()))
        },
    )
    .await;

    let resource =
        ApiResource::from_gvk(&GroupVersionKind::gvk("smoke.postcache.io", "v1", "Widget"));
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, &ns, &resource);
    let widget: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "smoke.postcache.io/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 3}
    }))
    .unwrap();
    widgets
        .create(&PostParams::default(), &widget)
        .await
        .unwrap();
    let stored = widgets.get("w1").await.unwrap();
    assert_eq!(stored.data["spec"]["size"], 3);

    // The schema is enforced by the real apiserver.
    let mut invalid = widget.clone();
    invalid.metadata.name = Some("w2".into());
    invalid.data["spec"]["size"] = serde_json::json!(0);
    let err = widgets
        .create(&PostParams::default(), &invalid)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.size"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_gets_pods_that_kwok_makes_running_and_ready() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let ns = plane.create_namespace();
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]}
            }
        }
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let ready = eventually(
        "3 pods Running and Ready",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .map_err(|e| e.to_string())?;
            let ready: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|pod| {
                    let status = pod.status.clone().unwrap_or_default();
                    status.phase.as_deref() == Some("Running")
                        && status
                            .conditions
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
                .collect();
            Ok((ready.len() == 3).then_some(ready))
        },
    )
    .await;
    for pod in &ready {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.node_name.as_deref(),
            Some(NODE_NAME),
            "bound by the scheduler"
        );
    }
    eventually(
        "the Deployment to report 3 available",
        Duration::from_secs(60),
        || async {
            let d = deployments.get("web").await.map_err(|e| e.to_string())?;
            Ok((d.status.and_then(|s| s.available_replicas) == Some(3)).then_some(()))
        },
    )
    .await;
}
