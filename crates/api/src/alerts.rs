//! PostCache's alert rules as data: the one source of the plain Prometheus rules file, the
//! PrometheusRule manifest (both under `deploy/monitoring/`) and, later, what the operator applies
//! for a PostCache's `spec.monitoring.alerts` thresholds.
//!
//! Rendering is plain text on purpose: the output is a small, fixed shape of YAML whose strings are
//! written as double-quoted scalars (JSON string escaping is valid YAML).

use std::fmt::Write as _;

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

/// One alerting rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// The alert's name (CONTRACT.md).
    pub name: &'static str,
    /// PromQL that yields a series per firing instance.
    pub expr: String,
    /// How long `expr` must hold before the alert fires.
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
}

/// Fraction of reads served from a cache tier: hits in L1 or L2 over every lookup in L1 (every
/// read asks L1 first), per job.
pub fn hit_ratio_expr(window: &str) -> String {
    format!(
        "sum by (job) (rate(postcache_cache_requests_total{{tier=~\"l1|l2\",result=\"hit\"}}[{window}])) \
         / sum by (job) (rate(postcache_cache_requests_total{{tier=\"l1\"}}[{window}]))"
    )
}

/// p99 latency of API requests (health and metrics routes excluded), per job.
pub fn p99_latency_expr(window: &str) -> String {
    format!(
        "histogram_quantile(0.99, sum by (job, le) (rate(postcache_http_request_duration_seconds_bucket\
         {{route!~\"/metrics|/healthz|/readyz\"}}[{window}])))"
    )
}

/// Used fraction of each database pool, per pod and role.
pub fn db_pool_usage_expr() -> String {
    "sum without (state) (postcache_db_pool_connections{state=\"used\"}) / postcache_db_pool_max"
        .to_owned()
}

/// Every alert of CONTRACT.md with the given thresholds.
pub fn alert_rules(t: &AlertThresholds) -> Vec<AlertRule> {
    vec![
        AlertRule {
            name: "PostCacheLowHitRate",
            expr: format!("({}) < {} and sum by (job) (rate(postcache_cache_requests_total{{tier=\"l1\"}}[5m])) > 0", hit_ratio_expr("5m"), t.min_hit_ratio),
            for_duration: "5m",
            severity: "warning",
            summary: "PostCache cache hit ratio is low".into(),
            description: format!(
                "Only {{{{ $value | humanizePercentage }}}} of reads in {{{{ $labels.job }}}} were served from a cache tier over 5m (threshold {}).",
                t.min_hit_ratio
            ),
        },
        AlertRule {
            name: "PostCacheHighLatency",
            expr: format!("{} > {}", p99_latency_expr("5m"), t.max_p99_latency_seconds),
            for_duration: "5m",
            severity: "warning",
            summary: "PostCache p99 latency is high".into(),
            description: format!(
                "p99 request latency of {{{{ $labels.job }}}} is {{{{ $value | humanizeDuration }}}} (threshold {}s).",
                t.max_p99_latency_seconds
            ),
        },
        AlertRule {
            name: "PostCacheRealtimeDisconnected",
            expr: "max by (job, instance) (postcache_degraded{component=\"eventlog\"}) == 1".into(),
            for_duration: "1m",
            severity: "critical",
            summary: "A PostCache pod is not consuming the event log".into(),
            description: "{{ $labels.instance }} has had no event-log consumer for 1m: its realtime subscribers get no events and it no longer trusts its L1.".into(),
        },
        AlertRule {
            name: "PostCacheDbPoolSaturated",
            expr: format!("{} > {}", db_pool_usage_expr(), t.max_db_pool_usage),
            for_duration: "5m",
            severity: "warning",
            summary: "PostCache database pool is nearly exhausted".into(),
            description: format!(
                "The {{{{ $labels.role }}}} pool of {{{{ $labels.instance }}}} is {{{{ $value | humanizePercentage }}}} used (threshold {}).",
                t.max_db_pool_usage
            ),
        },
        AlertRule {
            name: "PostCacheReplicaLag",
            expr: format!("max by (job, instance, replica) (postcache_db_replica_lag_seconds) > {}", t.max_replica_lag_seconds),
            for_duration: "2m",
            severity: "warning",
            summary: "A PostCache read replica lags".into(),
            description: format!(
                "Replica {{{{ $labels.replica }}}} is {{{{ $value | humanizeDuration }}}} behind the primary (threshold {}s); reads that need fresher data go elsewhere.",
                t.max_replica_lag_seconds
            ),
        },
        AlertRule {
            name: "PostCacheDegraded",
            expr: "max by (job, instance, component) (postcache_degraded) == 1".into(),
            for_duration: "2m",
            severity: "warning",
            summary: "PostCache runs in a degraded mode".into(),
            description: "{{ $labels.instance }} has run without {{ $labels.component }} for 2m (DESIGN.md §7 degraded mode).".into(),
        },
    ]
}

/// The rule groups (`groups:` …), indented by `indent` spaces, as both file kinds embed them.
fn render_groups(rules: &[AlertRule], indent: usize) -> String {
    let pad = " ".repeat(indent);
    let q = |s: &str| format!("{s:?}");
    let mut out = format!("{pad}groups:\n{pad}  - name: postcache\n{pad}    rules:\n");
    for rule in rules {
        let p = format!("{pad}      ");
        let _ = writeln!(out, "{p}- alert: {}", rule.name);
        let _ = writeln!(out, "{p}  expr: {}", q(&rule.expr));
        let _ = writeln!(out, "{p}  for: {}", rule.for_duration);
        let _ = writeln!(out, "{p}  labels:\n{p}    severity: {}", rule.severity);
        let _ = writeln!(out, "{p}  annotations:");
        let _ = writeln!(out, "{p}    summary: {}", q(&rule.summary));
        let _ = writeln!(out, "{p}    description: {}", q(&rule.description));
        let _ = writeln!(out, "{p}    runbook_url: {}", q(&rule.runbook_url()));
    }
    out
}

const GENERATED: &str =
    "# Generated from crates/api/src/alerts.rs; do not edit (a test fails on drift).\n";

/// A plain Prometheus rules file.
pub fn rules_file(t: &AlertThresholds) -> String {
    format!("{GENERATED}{}", render_groups(&alert_rules(t), 0))
}

/// A `monitoring.coreos.com/v1` PrometheusRule manifest named `name`.
pub fn prometheus_rule(t: &AlertThresholds, name: &str) -> String {
    format!(
        "{GENERATED}apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: {name}\n  labels:\n    \
         app.kubernetes.io/name: postcache\n    app.kubernetes.io/component: monitoring\nspec:\n{}",
        render_groups(&alert_rules(t), 2)
    )
}

/// Grafana alert-rule provisioning (`/etc/grafana/provisioning/alerting/`) for the two alerts users
/// page on: hit rate and latency. `datasource_uid` is the Prometheus data source's uid.
pub fn grafana_alerting(t: &AlertThresholds, datasource_uid: &str) -> String {
    let q = |s: &str| format!("{s:?}");
    let rules = alert_rules(t);
    let mut out = format!(
        "{GENERATED}apiVersion: 1\ngroups:\n  - orgId: 1\n    name: postcache\n    folder: PostCache\n    interval: 1m\n    rules:\n"
    );
    let picks = [
        (
            "PostCacheLowHitRate",
            hit_ratio_expr("5m"),
            "lt",
            t.min_hit_ratio,
        ),
        (
            "PostCacheHighLatency",
            p99_latency_expr("5m"),
            "gt",
            t.max_p99_latency_seconds,
        ),
    ];
    for (name, expr, comparison, threshold) in picks {
        let Some(rule) = rules.iter().find(|r| r.name == name) else {
            continue;
        };
        let p = "      ";
        let _ = writeln!(
            out,
            "{p}- uid: {}\n{p}  title: {name}\n{p}  condition: C",
            name.to_lowercase()
        );
        let _ = writeln!(out, "{p}  data:");
        let _ = writeln!(
            out,
            "{p}    - refId: A\n{p}      relativeTimeRange: {{from: 600, to: 0}}\n{p}      datasourceUid: {}",
            q(datasource_uid)
        );
        let _ = writeln!(
            out,
            "{p}      model: {{refId: A, instant: true, expr: {}}}",
            q(&expr)
        );
        let _ = writeln!(out, "{p}    - refId: C\n{p}      datasourceUid: __expr__");
        let _ = writeln!(
            out,
            "{p}      model: {{refId: C, type: threshold, expression: A, conditions: [{{evaluator: {{type: {comparison}, params: [{threshold}]}}}}]}}"
        );
        let _ = writeln!(
            out,
            "{p}  noDataState: OK\n{p}  execErrState: Error\n{p}  for: {}",
            rule.for_duration
        );
        let _ = writeln!(out, "{p}  labels: {{severity: {}}}", rule.severity);
        let _ = writeln!(
            out,
            "{p}  annotations: {{summary: {}, runbook_url: {}}}",
            q(&rule.summary),
            q(&rule.runbook_url())
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_alert_is_there_with_a_runbook() {
        let names: Vec<_> = alert_rules(&AlertThresholds::default())
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
        for rule in alert_rules(&AlertThresholds::default()) {
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
        let rules = alert_rules(&t);
        assert!(rules[0].expr.contains("< 0.9"));
        assert!(rules[3].expr.contains("> 0.5"));
    }

    /// The committed files are this module's output. Set `POSTCACHE_BLESS=1` to rewrite them.
    #[test]
    fn committed_rule_files_match_the_source() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring");
        let t = AlertThresholds::default();
        let files = [
            ("postcache-rules.yml", rules_file(&t)),
            ("prometheusrule.yaml", prometheus_rule(&t, "postcache")),
            ("grafana/alerting.yaml", grafana_alerting(&t, "prometheus")),
        ];
        for (file, text) in files {
            let path = dir.join(file);
            if std::env::var_os("POSTCACHE_BLESS").is_some() {
                std::fs::write(&path, &text).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "{} is stale: run POSTCACHE_BLESS=1 cargo test -p postcache-api",
                path.display()
            );
        }
    }
}
