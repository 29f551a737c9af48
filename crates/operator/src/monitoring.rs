//! Monitoring objects: a ServiceMonitor and a PrometheusRule (`monitoring.coreos.com/v1`, created
//! only when API discovery lists them) and the Grafana dashboard as a ConfigMap for Grafana's
//! sidecar. The rules are `postcache_api::alerts` rendered with the spec's thresholds, the same
//! source as `deploy/monitoring/`. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::DynamicObject;
use kube::core::GroupVersionKind;
use postcache_api::alerts::{AlertThresholds, prometheus_rule};
use serde_json::json;

use crate::child::Child;
use crate::labels::{Component, GRAFANA_DASHBOARD_LABEL, child_name, meta, selector_labels};
use crate::{AlertsSpec, PostCache, service};

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

fn service_monitor(pc: &PostCache) -> Child {
    let mut object = DynamicObject::new(
        &service::name(pc),
        &kube::api::ApiResource::from_gvk(&gvk("ServiceMonitor")),
    );
    object.metadata = meta(pc, service::name(pc), Component::Monitoring);
    object.data = json!({"spec": {
        "selector": {"matchLabels": selector_labels(pc, Component::Service)},
        "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
    }});
    Child::dynamic(&gvk("ServiceMonitor"), "servicemonitors", object)
}

fn rule(pc: &PostCache) -> Child {
    let name = child_name(pc, "alerts");
    let rendered = prometheus_rule(&thresholds(&pc.spec.monitoring.alerts), &name);
    // The generator's output is a fixed, tested shape; a parse failure would leave no rules.
    let value: serde_json::Value = serde_norway::from_str(&rendered).unwrap_or_default();
    let mut object = DynamicObject::new(
        &name,
        &kube::api::ApiResource::from_gvk(&gvk("PrometheusRule")),
    );
    object.metadata = meta(pc, name, Component::Monitoring);
    object.data = json!({"spec": value.get("spec").cloned().unwrap_or_default()});
    Child::dynamic(&gvk("PrometheusRule"), "prometheusrules", object)
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
            DASHBOARD_JSON.to_owned(),
        )])),
        ..ConfigMap::default()
    }
}
