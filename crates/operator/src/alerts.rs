//! PostCache's alert rules as data: the one source of the plain Prometheus rules file, the
//! PrometheusRule manifest, Grafana's alert provisioning (all under `deploy/monitoring/`) and the
//! PrometheusRule the operator applies for each PostCache (its `spec.monitoring.alerts`
//! thresholds, scoped to its namespace and job).
//!
//! Rendering goes through serde (the rule groups as types, YAML by `serde_norway`), so every
//! string is quoted as YAML needs, whatever the thresholds or labels hold.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::json;

/// Where each alert's runbook lives (a section of the README, one anchor per alert).
pub const RUNBOOK_BASE: &str = "https://github.com/postcache/postcache/blob/main/README.md";

/// Thresholds of the alerts (`spec.monitoring.alerts` of a PostCache).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertThresholds {
    /// Cache hit ratio below this for 5 minutes alerts.
    pub min_hit_ratio: f64,
    /// p99 request latency above this (seconds) for 5 minutes alerts.
    pub max_p99_latency_seconds: f64,
    /// Database pool use above this fraction for 5 minutes alerts.
    pub max_db_pool_usage: f64,
    /// A read replica further behind than this (seconds) for 2 minutes alerts.
    pub max_replica_lag_seconds: f64,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        AlertThresholds {
            min_hit_ratio: 0.7,
            max_p99_latency_seconds: 1.0,
            max_db_pool_usage: 0.8,
            max_replica_lag_seconds: 30.0,
        }
    }
}

/// Which PostCache the expressions watch: label matchers added to every selector. A PostCache's
/// own rules (the operator's PrometheusRule) are scoped to its `namespace` and `job`; the plain
/// files under `deploy/monitoring/` watch every PostCache a Prometheus scrapes. Either way every
/// expression aggregates `by (namespace, job)`, so two PostCaches never mix (nor, scoped, fire
/// each other's alerts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    matchers: String,
}

impl Scope {
    /// Every PostCache.
    pub fn all() -> Scope {
        Scope::default()
    }

    /// The PostCache whose metrics carry `namespace` and `job` (a ServiceMonitor's job is the
    /// Service's name).
    pub fn of(namespace: &str, job: &str) -> Scope {
        Scope {
            matchers: format!("namespace={namespace:?},job={job:?}"),
        }
    }

    /// `metric{matchers}` with this scope's matchers added.
    pub fn select(&self, metric: &str, matchers: &str) -> String {
        let all: Vec<&str> = [matchers, self.matchers.as_str()]
            .into_iter()
            .filter(|m| !m.is_empty())
            .collect();
        if all.is_empty() {
            return metric.to_owned();
        }
        format!("{metric}{{{}}}", all.join(","))
    }
}

/// How an alert compares its query's value with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Fires below the threshold.
    Below,
    /// Fires above the threshold.
    Above,
}

impl Comparison {
    fn promql(self) -> &'static str {
        match self {
            Comparison::Below => "<",
            Comparison::Above => ">",
        }
    }

    /// Grafana's threshold evaluator type.
    fn grafana(self) -> &'static str {
        match self {
            Comparison::Below => "lt",
            Comparison::Above => "gt",
        }
    }
}

/// One alerting rule: `query` compared with `threshold`, where `guard` has series.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// The alert's name (CONTRACT.md).
    pub name: &'static str,
    /// PromQL whose value is compared, one series per PostCache (or pod, replica, component).
    pub query: String,
    /// How the value is compared.
    pub comparison: Comparison,
    /// The threshold.
    pub threshold: f64,
    /// Only where this has series too (e.g. there was traffic at all).
    pub guard: Option<String>,
    /// How long the condition must hold before the alert fires.
    pub for_duration: &'static str,
    /// `warning` or `critical`.
    pub severity: &'static str,
    /// One line for the notification's title.
    pub summary: String,
    /// What is wrong, with the measured value.
    pub description: String,
}

impl AlertRule {
    /// `{RUNBOOK_BASE}#<alert name in lowercase>`.
    pub fn runbook_url(&self) -> String {
        format!("{RUNBOOK_BASE}#{}", self.name.to_lowercase())
    }

    /// The query where the guard holds (what Grafana compares with the threshold).
    pub fn guarded_query(&self) -> String {
        match &self.guard {
            Some(guard) => format!("({}) and ({guard})", self.query),
            None => self.query.clone(),
        }
    }

    /// The Prometheus rule's expression: a series per firing instance.
    pub fn expr(&self) -> String {
        let compared = format!(
            "({}) {} {}",
            self.query,
            self.comparison.promql(),
            self.threshold
        );
        match &self.guard {
            Some(guard) => format!("{compared} and ({guard})"),
            None => compared,
        }
    }
}

/// `namespace/job` of the alert's series, or `job` outside Kubernetes (no namespace label).
const WHO: &str = "{{ with $labels.namespace }}{{ . }}/{{ end }}{{ $labels.job }}";

/// Fraction of reads served from a cache tier: hits in L1 or L2 over every lookup in L1 (every
/// read asks L1 first), per PostCache.
pub fn hit_ratio_expr(window: &str, scope: &Scope) -> String {
    let hits = scope.select(
        "postcache_cache_requests_total",
        "tier=~\"l1|l2\",result=\"hit\"",
    );
    let lookups = scope.select("postcache_cache_requests_total", "tier=\"l1\"");
    format!(
        "sum by (namespace, job) (rate({hits}[{window}])) / sum by (namespace, job) (rate({lookups}[{window}]))"
    )
}

/// p99 latency of API requests (health and metrics routes excluded), per PostCache.
pub fn p99_latency_expr(window: &str, scope: &Scope) -> String {
    let buckets = scope.select(
        "postcache_http_request_duration_seconds_bucket",
        "route!~\"/metrics|/healthz|/readyz\"",
    );
    format!("histogram_quantile(0.99, sum by (namespace, job, le) (rate({buckets}[{window}])))")
}

/// Used fraction of each database pool, per pod and role.
pub fn db_pool_usage_expr(scope: &Scope) -> String {
    format!(
        "sum without (state) ({}) / {}",
        scope.select("postcache_db_pool_connections", "state=\"used\""),
        scope.select("postcache_db_pool_max", "")
    )
}

/// Every alert of CONTRACT.md with the given thresholds, watching `scope`.
pub fn alert_rules(t: &AlertThresholds, scope: &Scope) -> Vec<AlertRule> {
    let degraded = |component: &str| scope.select("postcache_degraded", component);
    vec![
        AlertRule {
            name: "PostCacheLowHitRate",
            query: hit_ratio_expr("5m", scope),
            comparison: Comparison::Below,
            threshold: t.min_hit_ratio,
            guard: Some(format!(
                "sum by (namespace, job) (rate({}[5m])) > 0",
                scope.select("postcache_cache_requests_total", "tier=\"l1\"")
            )),
            for_duration: "5m",
            severity: "warning",
            summary: "PostCache cache hit ratio is low".into(),
            description: format!(
                "Only {{{{ $value | humanizePercentage }}}} of reads in {WHO} were served from a cache tier over 5m (threshold {}).",
                t.min_hit_ratio
            ),
        },
        AlertRule {
            name: "PostCacheHighLatency",
            query: p99_latency_expr("5m", scope),
            comparison: Comparison::Above,
            threshold: t.max_p99_latency_seconds,
            guard: None,
            for_duration: "5m",
            severity: "warning",
            summary: "PostCache p99 latency is high".into(),
            description: format!(
                "p99 request latency of {WHO} is {{{{ $value | humanizeDuration }}}} (threshold {}s).",
                t.max_p99_latency_seconds
            ),
        },
        AlertRule {
            name: "PostCacheRealtimeDisconnected",
            query: format!(
                "max by (namespace, job, instance) ({})",
                degraded("component=\"eventlog\"")
            ),
            comparison: Comparison::Above,
            threshold: 0.0,
            guard: None,
            for_duration: "1m",
            severity: "critical",
            summary: "A PostCache pod is not consuming the event log".into(),
            description: format!(
                "{{{{ $labels.instance }}}} of {WHO} has had no event-log consumer for 1m: its realtime subscribers get no events and it no longer trusts its L1."
            ),
        },
        AlertRule {
            name: "PostCacheDbPoolSaturated",
            query: db_pool_usage_expr(scope),
            comparison: Comparison::Above,
            threshold: t.max_db_pool_usage,
            guard: None,
            for_duration: "5m",
            severity: "warning",
            summary: "PostCache database pool is nearly exhausted".into(),
            description: format!(
                "The {{{{ $labels.role }}}} pool of {{{{ $labels.instance }}}} ({WHO}) is {{{{ $value | humanizePercentage }}}} used (threshold {}).",
                t.max_db_pool_usage
            ),
        },
        AlertRule {
            name: "PostCacheReplicaLag",
            query: format!(
                "max by (namespace, job, instance, replica) ({})",
                scope.select("postcache_db_replica_lag_seconds", "")
            ),
            comparison: Comparison::Above,
            threshold: t.max_replica_lag_seconds,
            guard: None,
            for_duration: "2m",
            severity: "warning",
            summary: "A PostCache read replica lags".into(),
            description: format!(
                "Replica {{{{ $labels.replica }}}} of {WHO} is {{{{ $value | humanizeDuration }}}} behind the primary (threshold {}s); reads that need fresher data go elsewhere.",
                t.max_replica_lag_seconds
            ),
        },
        AlertRule {
            name: "PostCacheDegraded",
            query: format!(
                "max by (namespace, job, instance, component) ({})",
                degraded("")
            ),
            comparison: Comparison::Above,
            threshold: 0.0,
            guard: None,
            for_duration: "2m",
            severity: "warning",
            summary: "PostCache runs in a degraded mode".into(),
            description: format!(
                "{{{{ $labels.instance }}}} of {WHO} has run without {{{{ $labels.component }}}} for 2m (DESIGN.md §7 degraded mode)."
            ),
        },
    ]
}

/// A rules file (and a PrometheusRule's `spec`): `groups`.
#[derive(Debug, Clone, Serialize)]
pub struct RuleGroups {
    /// One group, `postcache`.
    pub groups: Vec<RuleGroup>,
}

/// One group of rules.
#[derive(Debug, Clone, Serialize)]
pub struct RuleGroup {
    /// The group's name.
    pub name: &'static str,
    /// Its rules.
    pub rules: Vec<PrometheusAlert>,
}

/// One alerting rule as Prometheus reads it.
#[derive(Debug, Clone, Serialize)]
pub struct PrometheusAlert {
    /// The alert's name.
    pub alert: &'static str,
    /// Its expression.
    pub expr: String,
    /// How long it must hold.
    #[serde(rename = "for")]
    pub for_duration: &'static str,
    /// `severity`.
    pub labels: BTreeMap<&'static str, &'static str>,
    /// `summary`, `description`, `runbook_url`.
    pub annotations: BTreeMap<&'static str, String>,
}

/// The rule groups of [`alert_rules`].
pub fn rule_groups(t: &AlertThresholds, scope: &Scope) -> RuleGroups {
    let rules = alert_rules(t, scope)
        .into_iter()
        .map(|rule| PrometheusAlert {
            alert: rule.name,
            expr: rule.expr(),
            for_duration: rule.for_duration,
            labels: BTreeMap::from([("severity", rule.severity)]),
            annotations: BTreeMap::from([
                ("summary", rule.summary.clone()),
                ("description", rule.description.clone()),
                ("runbook_url", rule.runbook_url()),
            ]),
        })
        .collect();
    RuleGroups {
        groups: vec![RuleGroup {
            name: "postcache",
            rules,
        }],
    }
}

const GENERATED: &str =
    "# Generated from crates/operator/src/alerts.rs; do not edit (a test fails on drift).\n";

/// `value` as YAML after the generated-file header.
fn yaml(value: &impl Serialize) -> String {
    // Serializing plain data (strings, numbers, maps) cannot fail.
    format!(
        "{GENERATED}{}",
        serde_norway::to_string(value).unwrap_or_default()
    )
}

/// A plain Prometheus rules file watching `scope`.
pub fn rules_file(t: &AlertThresholds, scope: &Scope) -> String {
    yaml(&rule_groups(t, scope))
}

/// A `monitoring.coreos.com/v1` PrometheusRule manifest named `name`, watching `scope`.
pub fn prometheus_rule(t: &AlertThresholds, name: &str, scope: &Scope) -> String {
    yaml(&json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "postcache",
                "app.kubernetes.io/component": "monitoring",
            },
        },
        "spec": rule_groups(t, scope),
    }))
}

/// Grafana alert-rule provisioning (`/etc/grafana/provisioning/alerting/`): every alert of
/// [`alert_rules`], its guarded query compared with its threshold. `datasource_uid` is the
/// Prometheus data source's uid.
pub fn grafana_alerting(t: &AlertThresholds, datasource_uid: &str, scope: &Scope) -> String {
    let rules: Vec<serde_json::Value> = alert_rules(t, scope)
        .into_iter()
        .map(|rule| {
            json!({
                "uid": rule.name.to_lowercase(),
                "title": rule.name,
                "condition": "C",
                "data": [
                    {
                        "refId": "A",
                        "relativeTimeRange": {"from": 600, "to": 0},
                        "datasourceUid": datasource_uid,
                        "model": {"refId": "A", "instant": true, "expr": rule.guarded_query()},
                    },
                    {
                        "refId": "C",
                        "datasourceUid": "__expr__",
                        "model": {
                            "refId": "C",
                            "type": "threshold",
                            "expression": "A",
                            "conditions": [{"evaluator": {
                                "type": rule.comparison.grafana(),
                                "params": [rule.threshold],
                            }}],
                        },
                    },
                ],
                "noDataState": "OK",
                "execErrState": "Error",
                "for": rule.for_duration,
                "labels": {"severity": rule.severity},
                "annotations": {"summary": rule.summary, "runbook_url": rule.runbook_url()},
            })
        })
        .collect();
    yaml(&json!({
        "apiVersion": 1,
        "groups": [{
            "orgId": 1,
            "name": "postcache",
            "folder": "PostCache",
            "interval": "1m",
            "rules": rules,
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_alert_is_there_with_a_runbook() {
        let names: Vec<_> = alert_rules(&AlertThresholds::default(), &Scope::all())
            .iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(
            names,
            [
                "PostCacheLowHitRate",
                "PostCacheHighLatency",
                "PostCacheRealtimeDisconnected",
                "PostCacheDbPoolSaturated",
                "PostCacheReplicaLag",
                "PostCacheDegraded"
            ]
        );
        let readme = include_str!("../../../README.md").to_lowercase();
        for rule in alert_rules(&AlertThresholds::default(), &Scope::all()) {
            let anchor = format!("### {}", rule.name.to_lowercase());
            assert!(
                readme.contains(&anchor),
                "the README's runbook lacks a section for {}",
                rule.name
            );
        }
    }

    #[test]
    fn thresholds_reach_the_expressions() {
        let t = AlertThresholds {
            min_hit_ratio: 0.9,
            max_db_pool_usage: 0.5,
            ..AlertThresholds::default()
        };
        let rules = alert_rules(&t, &Scope::all());
        assert!(rules[0].expr().contains("< 0.9"));
        assert!(rules[3].expr().contains("> 0.5"));
    }

    #[test]
    fn a_scoped_rule_selects_only_its_postcache_in_every_selector() {
        let scope = Scope::of("shop", "feed-cache");
        for rule in alert_rules(&AlertThresholds::default(), &scope) {
            let expr = rule.expr();
            let selectors = expr.matches("postcache_").count();
            let scoped = expr
                .matches("namespace=\"shop\",job=\"feed-cache\"}")
                .count();
            assert_eq!(selectors, scoped, "{}: {expr}", rule.name);
            // Aggregations keep the PostCache apart: by it, or without only other labels.
            assert!(
                expr.contains("by (namespace, job") || expr.contains("without (state)"),
                "{}: {expr}",
                rule.name
            );
        }
    }

    /// The committed files are this module's output. Set `POSTCACHE_BLESS=1` to rewrite them.
    #[test]
    fn committed_rule_files_match_the_source() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring");
        let t = AlertThresholds::default();
        let files = [
            ("postcache-rules.yml", rules_file(&t, &Scope::all())),
            (
                "prometheusrule.yaml",
                prometheus_rule(&t, "postcache", &Scope::all()),
            ),
            (
                "grafana/alerting.yaml",
                grafana_alerting(&t, "prometheus", &Scope::all()),
            ),
        ];
        for (file, text) in files {
            let path = dir.join(file);
            if std::env::var_os("POSTCACHE_BLESS").is_some() {
                std::fs::write(&path, &text).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "{} is stale: run POSTCACHE_BLESS=1 cargo test -p postcache-operator --lib alerts",
                path.display()
            );
        }
    }
}
