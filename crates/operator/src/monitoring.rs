//! Monitoring objects: a ServiceMonitor and a PrometheusRule (`monitoring.coreos.com/v1`, created
//! only when API discovery lists them) and the Grafana dashboard as a ConfigMap for Grafana's
//! sidecar. The rules are [`crate::alerts`] rendered with the spec's thresholds and scoped
//! to this PostCache (its namespace, and the ServiceMonitor's job: the Service's name), the same
//! source as `deploy/monitoring/`; the dashboard is the shared one (namespace and job variables)
//! with a uid and title of its own, starting on this PostCache. Pure.

use std::collections::BTreeMap;

use crate::alerts::{AlertThresholds, Scope, rule_groups};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::core::GroupVersionKind;
use serde_json::json;

use crate::child::Child;
use crate::crd::{AlertsSpec, PostCache};
use crate::labels::{Component, GRAFANA_DASHBOARD_LABEL, child_name, meta, selector_labels};
use crate::service;

/// The API group of ServiceMonitor and PrometheusRule.
pub const GROUP: &str = "monitoring.coreos.com";
/// Its version.
pub const VERSION: &str = "v1";
/// The dashboard's JSON (the file `deploy/monitoring/grafana/postcache-dashboard.json`).
pub const DASHBOARD_JSON: &str =
    include_str!("../../../deploy/monitoring/grafana/postcache-dashboard.json");
/// The dashboard's key in its ConfigMap.
pub const DASHBOARD_KEY: &str = "postcache-dashboard.json";

/// Which monitoring kinds the apiserver serves (from discovery).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonitoringApis {
    /// `servicemonitors.monitoring.coreos.com` is served.
    pub service_monitor: bool,
    /// `prometheusrules.monitoring.coreos.com` is served.
    pub prometheus_rule: bool,
}

/// `<name>-cache` (ServiceMonitor), `<name>-alerts` (PrometheusRule), `<name>-dashboard`.
pub fn children(pc: &PostCache, apis: MonitoringApis) -> Vec<Child> {
    let spec = &pc.spec.monitoring;
    let mut out = Vec::new();
    if spec.service_monitor && apis.service_monitor {
        out.push(service_monitor(pc));
    }
    if spec.prometheus_rule && apis.prometheus_rule {
        out.push(rule(pc));
    }
    if spec.grafana_dashboard {
        out.push(Child::new(&dashboard(pc)));
    }
    out
}

/// The spec's thresholds in the alert generator's terms.
pub fn thresholds(alerts: &AlertsSpec) -> AlertThresholds {
    AlertThresholds {
        min_hit_ratio: alerts.min_hit_ratio,
        max_p99_latency_seconds: alerts.max_p99_latency_seconds,
        max_db_pool_usage: alerts.max_db_pool_usage,
        max_replica_lag_seconds: alerts.max_replica_lag_seconds,
    }
}

fn gvk(kind: &str) -> GroupVersionKind {
    GroupVersionKind::gvk(GROUP, VERSION, kind)
}

/// What this PostCache's metrics carry once a ServiceMonitor scrapes them.
pub fn scope(pc: &PostCache) -> Scope {
    Scope::of(&pc.namespace().unwrap_or_default(), &service::name(pc))
}

/// [`meta`] plus `spec.monitoring.labels`, for the objects a Prometheus selects by label.
fn selectable_meta(pc: &PostCache, name: String) -> kube::api::ObjectMeta {
    let mut metadata = meta(pc, name, Component::Monitoring);
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    for (key, value) in &pc.spec.monitoring.labels {
        labels.entry(key.clone()).or_insert_with(|| value.clone());
    }
    metadata
}

fn service_monitor(pc: &PostCache) -> Child {
    let mut object = DynamicObject::new(
        &service::name(pc),
        &kube::api::ApiResource::from_gvk(&gvk("ServiceMonitor")),
    );
    object.metadata = selectable_meta(pc, service::name(pc));
    object.data = json!({"spec": {
        "selector": {"matchLabels": selector_labels(pc, Component::Service)},
        "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
    }});
    Child::dynamic(&gvk("ServiceMonitor"), "servicemonitors", object)
}

fn rule(pc: &PostCache) -> Child {
    let name = child_name(pc, "alerts");
    let groups = rule_groups(&thresholds(&pc.spec.monitoring.alerts), &scope(pc));
    let mut object = DynamicObject::new(
        &name,
        &kube::api::ApiResource::from_gvk(&gvk("PrometheusRule")),
    );
    object.metadata = selectable_meta(pc, name);
    // Plain data (strings, numbers): it always serializes.
    object.data = json!({"spec": serde_json::to_value(groups).unwrap_or_default()});
    Child::dynamic(&gvk("PrometheusRule"), "prometheusrules", object)
}

/// The shared dashboard as this PostCache's own: a uid from its Kubernetes uid (Grafana keeps one
/// dashboard per uid, so copies with the same uid would replace each other), its name in the
/// title, and the namespace and job variables starting on it.
pub fn dashboard_json(pc: &PostCache) -> String {
    let mut dashboard: serde_json::Value = serde_json::from_str(DASHBOARD_JSON).unwrap_or_default();
    let namespace = pc.namespace().unwrap_or_default();
    let id = pc
        .uid()
        .unwrap_or_else(|| format!("{namespace}-{}", pc.name_any()));
    // Grafana's uids are at most 40 characters; a Kubernetes uid is 36.
    dashboard["uid"] = json!(format!("pc-{}", id.chars().take(37).collect::<String>()));
    dashboard["title"] = json!(format!("PostCache {namespace}/{}", pc.name_any()));
    let start = [("namespace", namespace), ("job", service::name(pc))];
    if let Some(variables) = dashboard["templating"]["list"].as_array_mut() {
        for variable in variables {
            if let Some((_, value)) = start.iter().find(|(n, _)| variable["name"] == *n) {
                variable["current"] = json!({"selected": true, "text": [value], "value": [value]});
            }
        }
    }
    serde_json::to_string_pretty(&dashboard).unwrap_or_else(|_| DASHBOARD_JSON.to_owned())
}

fn dashboard(pc: &PostCache) -> ConfigMap {
    let mut metadata = meta(pc, child_name(pc, "dashboard"), Component::Monitoring);
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(GRAFANA_DASHBOARD_LABEL.to_owned(), "1".to_owned());
    }
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(
            DASHBOARD_KEY.to_owned(),
            dashboard_json(pc),
        )])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PostCacheSpec;

    fn postcache(namespace: &str, name: &str, uid: &str) -> PostCache {
        let mut pc = PostCache::new(name, PostCacheSpec::default());
        pc.metadata.namespace = Some(namespace.into());
        pc.metadata.uid = Some(uid.into());
        pc
    }

    #[test]
    fn two_postcaches_get_two_dashboards_each_starting_on_its_own() {
        let a = postcache("shop", "feed", "0b5c7a51-0000-4000-8000-000000000001");
        let b = postcache("blog", "feed", "0b5c7a51-0000-4000-8000-000000000002");
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&dashboard_json(&a)).unwrap(),
            serde_json::from_str(&dashboard_json(&b)).unwrap(),
        );
        assert_ne!(a["uid"], b["uid"]);
        assert!(a["uid"].as_str().unwrap().len() <= 40);
        assert_eq!(a["title"], "PostCache shop/feed");
        let current = |d: &serde_json::Value, name: &str| {
            d["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .map(|v| v["current"]["value"][0].clone())
                .unwrap()
        };
        assert_eq!(current(&a, "namespace"), "shop");
        assert_eq!(current(&b, "namespace"), "blog");
        assert_eq!(current(&a, "job"), "feed-cache");
    }

    #[test]
    fn rules_watch_only_their_postcache_and_carry_the_selector_labels() {
        let mut pc = postcache("shop", "feed", "u");
        pc.spec
            .monitoring
            .labels
            .insert("release".into(), "kube-prometheus-stack".into());
        let apis = MonitoringApis {
            service_monitor: true,
            prometheus_rule: true,
        };
        let children = children(&pc, apis);
        for kind in ["ServiceMonitor", "PrometheusRule"] {
            let child = children.iter().find(|c| c.resource.kind == kind).unwrap();
            let labels = child.object.labels();
            assert_eq!(
                labels.get("release").map(String::as_str),
                Some("kube-prometheus-stack"),
                "{kind}"
            );
        }
        let rule = children
            .iter()
            .find(|c| c.resource.kind == "PrometheusRule")
            .unwrap();
        let spec = serde_json::to_string(&rule.object).unwrap();
        assert!(
            spec.contains(r#"namespace=\"shop\",job=\"feed-cache\""#),
            "{spec}"
        );
    }
}
