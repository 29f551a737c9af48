//! The Kubernetes strings the operator writes on every child, declared once: the field manager of
//! server-side apply, the `app.kubernetes.io/*` labels, and the owner reference that lets the
//! garbage collector remove a PostCache's children with it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::PostCache;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "postcache-operator";
/// `app.kubernetes.io/name`: always [`APP_NAME`].
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the PostCache's name.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/component`: one of [`Component`].
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/managed-by`: always [`FIELD_MANAGER`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`NAME_LABEL`].
pub const APP_NAME: &str = "postcache";
/// Hash of what the operator last applied to a child; equal hash and a live object that still
/// holds every desired field means there is nothing to write.
pub const APPLIED_HASH_ANNOTATION: &str = "postcache.io/applied-hash";
/// Label that makes Grafana's sidecar load a ConfigMap as a dashboard.
pub const GRAFANA_DASHBOARD_LABEL: &str = "grafana_dashboard";

/// The part of a PostCache a child belongs to (the `app.kubernetes.io/component` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// Redis nodes and their Services.
    Redis,
    /// The data-plane Jobs that bootstrap and reshard the Redis Cluster.
    RedisAdmin,
    /// PostgreSQL primary and replicas.
    Postgres,
    /// The PostCache pods.
    Service,
    /// ServiceMonitor, PrometheusRule, dashboard.
    Monitoring,
    /// The data-plane scripts ConfigMap (used by Redis Jobs and PostgreSQL pods alike).
    Scripts,
}

impl Component {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Redis => "redis",
            Component::RedisAdmin => "redis-admin",
            Component::Postgres => "postgres",
            Component::Service => "service",
            Component::Monitoring => "monitoring",
            Component::Scripts => "scripts",
        }
    }
}

/// The four standard labels of a child of `pc`.
pub fn labels(pc: &PostCache, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), APP_NAME.to_owned()),
        (INSTANCE_LABEL.to_owned(), pc.name_any()),
        (COMPONENT_LABEL.to_owned(), component.as_str().to_owned()),
        (MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned()),
    ])
}

/// The labels that select a component's pods (stable: never includes anything that changes).
pub fn selector_labels(pc: &PostCache, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), APP_NAME.to_owned()),
        (INSTANCE_LABEL.to_owned(), pc.name_any()),
        (COMPONENT_LABEL.to_owned(), component.as_str().to_owned()),
    ])
}

/// [`selector_labels`] as a `LabelSelector`.
pub fn selector(pc: &PostCache, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(pc, component)),
        ..LabelSelector::default()
    }
}

/// `instance=…,component=…`: the selector string of the scale subresource (CONTRACT.md).
pub fn selector_string(pc: &PostCache, component: Component) -> String {
    format!(
        "{INSTANCE_LABEL}={},{COMPONENT_LABEL}={}",
        pc.name_any(),
        component.as_str()
    )
}

/// The label selector that lists every child the operator made for `pc`.
pub fn children_selector(pc: &PostCache) -> String {
    format!(
        "{INSTANCE_LABEL}={},{MANAGED_BY_LABEL}={FIELD_MANAGER}",
        pc.name_any()
    )
}

/// `controller: true, blockOwnerDeletion: true` pointing at `pc`.
pub fn owner_reference(pc: &PostCache) -> OwnerReference {
    OwnerReference {
        api_version: PostCache::api_version(&()).into_owned(),
        kind: PostCache::kind(&()).into_owned(),
        name: pc.name_any(),
        uid: pc.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of a child named `name`: namespace, standard labels, owner reference.
pub fn meta(pc: &PostCache, name: impl Into<String>, component: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: pc.namespace(),
        labels: Some(labels(pc, component)),
        owner_references: Some(vec![owner_reference(pc)]),
        ..ObjectMeta::default()
    }
}

/// Metadata of a generated credentials Secret: as [`meta`], but owned by nobody. It stays when
/// the PostCache is deleted, like the data volumes it opens (StatefulSets retain their claims): a
/// PostCache recreated under the same name finds its old data *and* the passwords that open it.
/// Deleting both is how one starts afresh (the README's "Deleting a PostCache").
pub fn retained_meta(pc: &PostCache, name: impl Into<String>, component: Component) -> ObjectMeta {
    ObjectMeta {
        owner_references: None,
        ..meta(pc, name, component)
    }
}

/// `<postcache>-<suffix>`: every child's name.
pub fn child_name(pc: &PostCache, suffix: &str) -> String {
    format!("{}-{suffix}", pc.name_any())
}
