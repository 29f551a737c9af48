//! The operator under exactly the RBAC the Helm chart grants (the agreed rules, repeated here):
//! a client impersonating a ServiceAccount bound to them reconciles a PostCache to Ready and holds
//! the Lease. Anything the operator used beyond these rules would fail the reconcile.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use postcache_operator::PostCache;
use postcache_operator::leader::LeaseLock;
use serde_json::json;

use crate::plane_with_crd;
use crate::reconcile::{Operator, create, eventually, wait_ready};

/// The agreed ClusterRole rules.
fn cluster_rules() -> serde_json::Value {
    let owned = ["get", "list", "watch", "create", "patch", "delete"];
    let applied = ["get", "list", "create", "patch", "delete"];
    json!([
        {"apiGroups": ["postcache.io"], "resources": ["postcaches"], "verbs": ["list", "watch"]},
        {"apiGroups": ["postcache.io"], "resources": ["postcaches/status"], "verbs": ["patch"]},
        {"apiGroups": ["postcache.io"], "resources": ["postcaches/finalizers"], "verbs": ["update"]},
        {"apiGroups": [""], "resources": ["services", "configmaps", "serviceaccounts"], "verbs": applied},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
        {"apiGroups": ["apps"], "resources": ["statefulsets", "deployments"], "verbs": owned},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": owned},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": applied},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": applied},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": applied},
        {"apiGroups": ["monitoring.coreos.com"], "resources": ["servicemonitors", "prometheusrules"], "verbs": applied},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

async fn grant(client: &kube::Client, ns: &str) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let apply = PatchParams::apply("it").force();
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    sa.patch(
        "operator",
        &apply,
        &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator"}
        })),
    )
    .await
    .unwrap();
    let name = format!("postcache-operator-{ns}");
    let subject = json!([{"kind": "ServiceAccount", "name": "operator", "namespace": ns}]);
    let roles: Api<ClusterRole> = Api::all(client.clone());
    roles
        .patch(
            &name,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": name}, "rules": cluster_rules(),
            })),
        )
        .await
        .unwrap();
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    bindings.patch(&name, &apply, &Patch::Apply(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": subject,
    })))
    .await
    .unwrap();
    let role: Api<Role> = Api::namespaced(client.clone(), ns);
    role.patch(
        "postcache-operator-lease",
        &apply,
        &Patch::Apply(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "postcache-operator-lease"},
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                       "verbs": ["get", "create", "update"]}],
        })),
    )
    .await
    .unwrap();
    let binding: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    binding.patch("postcache-operator-lease", &apply, &Patch::Apply(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "postcache-operator-lease"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "postcache-operator-lease"},
        "subjects": subject,
    })))
    .await
    .unwrap();
}

async fn impersonating(plane: &postcache_testkit::ControlPlane, user: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(plane.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(user.to_owned());
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reconciles_to_ready_with_only_the_agreed_rbac() {
    let plane = plane_with_crd();
    let ns = plane.create_namespace();
    let admin = plane.client().await;
    grant(&admin, &ns).await;
    let client = impersonating(&plane, &format!("system:serviceaccount:{ns}:operator")).await;
    eventually(
        "the RBAC to take effect",
        Duration::from_secs(120),
        || async {
            let api: Api<PostCache> = Api::namespaced(client.clone(), &ns);
            api.list(&Default::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;

    let lock = LeaseLock::new(
        client.clone(),
        &ns,
        "postcache-operator",
        "rbac-test",
        Duration::from_secs(5),
    );
    assert!(lock.try_acquire_or_renew().await.unwrap(), "the lease");
    assert!(
        lock.try_acquire_or_renew().await.unwrap(),
        "renewing the lease"
    );
    lock.release().await.unwrap();

    let _operator = Operator::start(client, &ns);
    create(
        &admin,
        &ns,
        "feed",
        json!({"redis": {"shards": 3, "replicasPerShard": 0}, "postgres": {"instances": 2}}),
    )
    .await;
    wait_ready(&plane, &ns, "feed", "240s").await;
}
