//! The `PostCache` custom resource (`postcache.io/v1alpha1`), CONTRACT.md's Kubernetes section.
//!
//! Every field has a doc comment (the CRD's description, `kubectl explain`), defaults come from
//! serde defaults, and cross-field and transition rules are CEL rules in the schema, each naming
//! its field, so the apiserver rejects a bad spec before the operator ever sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A cache-fronted posts service: Redis, PostgreSQL and autoscaled PostCache pods, reconciled
/// from this one object.
// clippy reads the repeated `type_ = …` of separate printcolumn(…) groups as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "postcache.io",
    version = "v1alpha1",
    kind = "PostCache",
    plural = "postcaches",
    shortname = "pc",
    shortname = "pcache",
    category = "cache",
    doc = "A cache-fronted posts service: Redis, PostgreSQL and autoscaled PostCache pods, reconciled from this one object (spec); what is running and ready (status).",
    namespaced,
    status = "PostCacheStatus",
    scale(
        spec_replicas_path = ".spec.service.replicas",
        status_replicas_path = ".status.service.replicas",
        label_selector_path = ".status.service.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Redis-Ready",
        type_ = "integer",
        json_path = ".status.redis.readyNodes"
    ),
    printcolumn(name = "Shards", type_ = "integer", json_path = ".status.redis.shards"),
    printcolumn(
        name = "PG-Ready",
        type_ = "integer",
        json_path = ".status.postgres.readyInstances"
    ),
    printcolumn(
        name = "Service-Ready",
        type_ = "integer",
        json_path = ".status.service.readyReplicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PostCacheSpec {
    /// The L2 cache and event log: a Redis Cluster, a standalone Redis, or an external one.
    #[serde(default)]
    pub redis: RedisSpec,
    /// L3: a managed PostgreSQL primary with streaming read replicas, or an external database.
    #[serde(default)]
    pub postgres: PostgresSpec,
    /// The PostCache pods: image, replicas, autoscaling, cache bounds, realtime, API tokens.
    #[serde(default)]
    pub service: ServiceSpec,
    /// ServiceMonitor, PrometheusRule and Grafana dashboard, and the alert thresholds.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
}

/// How Redis runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RedisMode {
    /// A Redis Cluster of `shards` masters, each with `replicasPerShard` replicas.
    #[default]
    Cluster,
    /// One Redis server (with `replicasPerShard` replicas).
    Standalone,
    /// An existing Redis, reached through `external.urlSecretRef`.
    External,
}

/// The Redis tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'Cluster' || self.shards >= 3").message("Cluster mode needs shards >= 3").field_path(".shards"))]
#[x_kube(validation = Rule::new("self.mode != 'External' || has(self.external)").message("External mode needs external.urlSecretRef").field_path(".external"))]
#[x_kube(validation = Rule::new("!has(self.maxMemory) || (isQuantity(string(self.maxMemory)) && quantity(string(self.maxMemory)).compareTo(quantity('1Mi')) >= 0)").message("maxMemory must be a quantity of at least 1Mi").field_path(".maxMemory"))]
pub struct RedisSpec {
    /// `Cluster`, `Standalone` or `External`.
    #[serde(default)]
    pub mode: RedisMode,
    /// Masters of the cluster (Cluster mode only), at least 3.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 0))]
    pub shards: i32,
    /// Replicas of each master.
    #[serde(default = "default_one")]
    #[schemars(range(min = 0))]
    pub replicas_per_shard: i32,
    /// Redis image (default: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Persistent volume of each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// CPU and memory of each node (default: requests `cpu: 100m`, `memory: 512Mi`, limit
    /// `memory: 512Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Placement, metadata and extra environment of the pods (and Jobs) of this tier.
    #[serde(flatten)]
    pub pods: PodOptions,
    /// Redis's `maxmemory`, at least `1Mi` (default: 80 % of the memory limit in `resources`,
    /// leaving room for buffers and the fork of a rewrite; none without a memory limit). At the
    /// bound writes are refused or keys with a TTL evicted, as `maxMemoryPolicy` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<Quantity>,
    /// Redis's `maxmemory-policy`: `noeviction` (the default; at the bound Redis refuses writes
    /// and PostCache runs degraded, as with Redis down) or a `volatile-*` policy, which evicts only
    /// keys with a TTL. Policies that may evict any key are refused: the event stream, version floors
    /// and generations have no TTL and must outlive the cached values they guard.
    #[serde(default)]
    pub max_memory_policy: MaxMemoryPolicy,
    /// The existing Redis of External mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
}

impl Default for RedisSpec {
    fn default() -> Self {
        RedisSpec {
            mode: RedisMode::Cluster,
            shards: default_shards(),
            replicas_per_shard: 1,
            image: None,
            storage: None,
            resources: None,
            pods: PodOptions::default(),
            max_memory: None,
            max_memory_policy: MaxMemoryPolicy::default(),
            external: None,
        }
    }
}

/// Redis's `maxmemory-policy`, restricted to the policies that never evict a key without a TTL.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MaxMemoryPolicy {
    /// Refuse writes that need more memory; evict nothing.
    #[default]
    #[serde(rename = "noeviction")]
    NoEviction,
    /// Evict the least recently used key with a TTL.
    #[serde(rename = "volatile-lru")]
    VolatileLru,
    /// Evict the least frequently used key with a TTL.
    #[serde(rename = "volatile-lfu")]
    VolatileLfu,
    /// Evict the key with a TTL closest to expiring.
    #[serde(rename = "volatile-ttl")]
    VolatileTtl,
    /// Evict a random key with a TTL.
    #[serde(rename = "volatile-random")]
    VolatileRandom,
}

impl MaxMemoryPolicy {
    /// The policy as `redis.conf` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            MaxMemoryPolicy::NoEviction => "noeviction",
            MaxMemoryPolicy::VolatileLru => "volatile-lru",
            MaxMemoryPolicy::VolatileLfu => "volatile-lfu",
            MaxMemoryPolicy::VolatileTtl => "volatile-ttl",
            MaxMemoryPolicy::VolatileRandom => "volatile-random",
        }
    }
}

/// Where an external Redis is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// Secret key holding `redis://…` (or a comma list of cluster nodes).
    pub url_secret_ref: SecretKeyRef,
}

/// A key of a Secret in the PostCache's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key within it.
    pub key: String,
}

/// A persistent volume claim template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.storageClassName) || (has(self.storageClassName) && self.storageClassName == oldSelf.storageClassName)").message("storageClassName cannot change once set").field_path(".storageClassName"))]
pub struct StorageSpec {
    /// Volume size, e.g. `10Gi`.
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// StorageClass of the volumes; immutable once set (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// How PostgreSQL runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PostgresMode {
    /// A primary and `instances - 1` streaming read replicas, run by the operator.
    #[default]
    Managed,
    /// An existing database, reached through `external`.
    External,
}

/// The PostgreSQL tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'External' || has(self.external)").message("External mode needs external.primaryUrlSecretRef").field_path(".external"))]
pub struct PostgresSpec {
    /// `Managed` or `External`.
    #[serde(default)]
    pub mode: PostgresMode,
    /// One primary plus `instances - 1` read replicas.
    #[serde(default = "default_instances")]
    #[schemars(range(min = 1))]
    pub instances: i32,
    /// PostgreSQL image (default: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Persistent volume of each instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// CPU and memory of each instance (default: requests `cpu: 250m`, `memory: 512Mi`, limit
    /// `memory: 1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Placement, metadata and extra environment of the pods (and Jobs) of this tier.
    #[serde(flatten)]
    pub pods: PodOptions,
    /// Replicas further behind than this take no reads.
    #[serde(default = "default_replica_lag")]
    #[schemars(range(min = 0))]
    pub max_replica_lag_seconds: i32,
    /// The existing database of External mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalPostgres>,
}

impl Default for PostgresSpec {
    fn default() -> Self {
        PostgresSpec {
            mode: PostgresMode::Managed,
            instances: default_instances(),
            image: None,
            storage: None,
            resources: None,
            pods: PodOptions::default(),
            max_replica_lag_seconds: default_replica_lag(),
            external: None,
        }
    }
}

/// Where an external PostgreSQL is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalPostgres {
    /// Secret key holding the primary's `postgres://…` URL.
    pub primary_url_secret_ref: SecretKeyRef,
    /// Secret key holding a comma list of read-replica URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_urls_secret_ref: Option<SecretKeyRef>,
}

/// What a platform team sets on every pod of a tier: where it runs (node labels, taints,
/// affinity, spreading), the labels and annotations its tooling selects on, pull secrets of a
/// private registry, and extra environment variables.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOptions {
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod (anti-)affinity of the pods, as in a pod spec (checked when the pods are
    /// made: a bad one makes the phase `Failed` with the apiserver's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pod_spec_object")]
    pub affinity: Option<Affinity>,
    /// How the pods spread over zones or nodes, as in a pod spec (checked when the pods are
    /// made).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "pod_spec_list")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Annotations added to the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Labels added to the pods; the operator's own `app.kubernetes.io/*` labels win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Secrets to pull the images with (a private registry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Environment variables added to every container, after the operator's (a variable of the
    /// same name replaces the operator's value, e.g. `POSTCACHE_RATE_LIMIT_PER_SECOND` of the
    /// service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// A pod-spec field kept out of the CRD's schema: with the whole of `Affinity` and
/// `TopologySpreadConstraint` spelled out for three tiers the CRD passes 256 KiB, past what
/// `kubectl apply` (client side) can store. The apiserver checks the field when the pods are made.
fn pod_spec_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A list of [`pod_spec_object`]s.
fn pod_spec_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}

/// The PostCache pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.trustedProxies) || self.trustedProxies.all(c, isCIDR(c))").message("trustedProxies must be CIDR networks such as 10.0.0.0/8").field_path(".trustedProxies"))]
pub struct ServiceSpec {
    /// PostCache image (default: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Pods when autoscaling is off (the scale subresource).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// The HorizontalPodAutoscaler.
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
    /// In-process and Redis cache bounds.
    #[serde(default)]
    pub cache: CacheSpec,
    /// WebSocket and SSE fan-out.
    #[serde(default)]
    pub realtime: RealtimeSpec,
    /// Secret key with the API tokens (comma list); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_tokens_secret_ref: Option<SecretKeyRef>,
    /// CPU and memory of each pod (default: requests `cpu: 250m`, `memory: 256Mi`, limit
    /// `memory: 512Mi`; the HPA's CPU utilization is relative to the CPU request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Placement, metadata and extra environment of the pods (and Jobs) of this tier.
    #[serde(flatten)]
    pub pods: PodOptions,
    /// Networks of the reverse proxies in front of the pods (your Ingress controller's pods,
    /// e.g. `10.0.0.0/8`). Only from them is `X-Forwarded-For`/`Forwarded` believed, so the
    /// per-client rate limit and realtime cap apply per real client. Without them, every client
    /// of an Ingress shares its address, and with it those limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 43)))]
    pub trusted_proxies: Vec<String>,
    /// The per-client rate limit (default: 500 requests per second, bursts of 1000). Behind an
    /// Ingress, set `trustedProxies` too, or every client shares the proxy's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Origins whose pages may call the API from a browser (CORS): `https://host[:port]`, or
    /// `*` for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(max = 253), regex(pattern = r"^(\*|https?://[^/?#@\s]+)$"))
    )]
    pub cors_origins: Vec<String>,
    /// Where the pods send their traces (OTLP over gRPC), e.g.
    /// `http://otel-collector.monitoring:4317`. No traces are exported without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://"))]
    pub otlp_endpoint: Option<String>,
    /// How long one request may take before the pod answers 503 (milliseconds; default 10000,
    /// 0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 600_000))]
    pub request_timeout_ms: Option<u32>,
    /// How long a pod answers reads without a token from memory after its last proof of
    /// freshness (milliseconds; default 1000): the Δ of the bounded-staleness guarantee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 60_000))]
    pub staleness_bound_ms: Option<u32>,
}

/// A per-client rate limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Requests per second per client address (0: no limit).
    #[schemars(range(max = 1_000_000))]
    pub per_second: u32,
    /// Requests a client may make at once beyond the rate (default: twice the rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub burst: Option<u32>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            image: None,
            replicas: default_replicas(),
            autoscaling: AutoscalingSpec::default(),
            cache: CacheSpec::default(),
            realtime: RealtimeSpec::default(),
            api_tokens_secret_ref: None,
            resources: None,
            pods: PodOptions::default(),
            trusted_proxies: Vec::new(),
            rate_limit: None,
            cors_origins: Vec::new(),
            otlp_endpoint: None,
            request_timeout_ms: None,
            staleness_bound_ms: None,
        }
    }
}

/// Horizontal autoscaling of the pods on CPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas").field_path(".minReplicas"))]
pub struct AutoscalingSpec {
    /// Whether an HPA manages the replicas.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Fewest pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most pods.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// CPU use the HPA aims for.
    #[serde(
        default = "default_cpu_target",
        rename = "targetCPUUtilizationPercentage"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        AutoscalingSpec {
            enabled: true,
            min_replicas: default_replicas(),
            max_replicas: default_max_replicas(),
            target_cpu_utilization_percentage: default_cpu_target(),
        }
    }
}

/// Cache bounds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Entries of each pod's in-process cache.
    #[serde(default = "default_l1_entries")]
    #[schemars(range(min = 0))]
    pub l1_max_entries: i64,
    /// Safety-net TTL of in-process entries.
    #[serde(default = "default_l1_ttl")]
    #[schemars(range(min = 1))]
    pub l1_ttl_seconds: i64,
    /// TTL of Redis entries.
    #[serde(default = "default_l2_ttl")]
    #[schemars(range(min = 1))]
    pub l2_ttl_seconds: i64,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            l1_max_entries: default_l1_entries(),
            l1_ttl_seconds: default_l1_ttl(),
            l2_ttl_seconds: default_l2_ttl(),
        }
    }
}

/// Realtime fan-out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeSpec {
    /// Whether `/v1/events` and `/v1/ws` are served.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// WebSocket and SSE connections per pod.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 0))]
    pub max_connections_per_pod: i32,
}

impl Default for RealtimeSpec {
    fn default() -> Self {
        RealtimeSpec {
            enabled: true,
            max_connections_per_pod: default_max_connections(),
        }
    }
}

/// Monitoring objects and alert thresholds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// A ServiceMonitor (created only when its CRD exists).
    #[serde(default = "default_true")]
    pub service_monitor: bool,
    /// A PrometheusRule with the alerts (created only when its CRD exists).
    #[serde(default = "default_true")]
    pub prometheus_rule: bool,
    /// A ConfigMap with the dashboard, labelled for Grafana's sidecar.
    #[serde(default = "default_true")]
    pub grafana_dashboard: bool,
    /// Alert thresholds.
    #[serde(default)]
    pub alerts: AlertsSpec,
    /// Labels added to the ServiceMonitor and the PrometheusRule, for a Prometheus that selects
    /// them by label (the Prometheus Operator's `serviceMonitorSelector`, `ruleSelector`; e.g.
    /// `release: kube-prometheus-stack`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        MonitoringSpec {
            service_monitor: true,
            prometheus_rule: true,
            grafana_dashboard: true,
            alerts: AlertsSpec::default(),
            labels: BTreeMap::new(),
        }
    }
}

/// Alert thresholds (see the README's runbook).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertsSpec {
    /// PostCacheLowHitRate fires below this hit ratio (0..1).
    #[serde(default = "default_min_hit_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_hit_ratio: f64,
    /// PostCacheHighLatency fires above this p99 (seconds).
    #[serde(default = "default_one_f")]
    #[schemars(range(min = 0.0))]
    pub max_p99_latency_seconds: f64,
    /// PostCacheDbPoolSaturated fires above this pool use (0..1).
    #[serde(default = "default_pool_usage")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_db_pool_usage: f64,
    /// PostCacheReplicaLag fires above this lag (seconds).
    #[serde(default = "default_alert_lag")]
    #[schemars(range(min = 0.0))]
    pub max_replica_lag_seconds: f64,
}

impl Default for AlertsSpec {
    fn default() -> Self {
        AlertsSpec {
            min_hit_ratio: default_min_hit_ratio(),
            max_p99_latency_seconds: 1.0,
            max_db_pool_usage: default_pool_usage(),
            max_replica_lag_seconds: default_alert_lag(),
        }
    }
}

/// Where the PostCache stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, nothing created yet.
    #[default]
    Pending,
    /// Children are being created or changed.
    Provisioning,
    /// Everything is up.
    Ready,
    /// Serving, with a component down.
    Degraded,
    /// Cannot make progress (see the conditions).
    Failed,
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostCacheStatus {
    /// Summary of the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `RedisReady`, `PostgresReady`, `ServiceReady`, with reasons and messages.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Redis nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStatus>,
    /// PostgreSQL instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStatus>,
    /// PostCache pods (the scale subresource reads `replicas` and `selector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceStatus>,
    /// Where to reach the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
}

/// Redis nodes, ready and desired, and where a change of the shard count stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    /// Nodes ready.
    pub ready_nodes: i32,
    /// Nodes desired.
    pub nodes: i32,
    /// Shards that hold slots now (Cluster mode; absent until the cluster is bootstrapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<i32>,
    /// The shard change in progress, step by step, so a restarted operator resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_change: Option<ShardChange>,
}

/// A change of the Redis Cluster's shard count in progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardChange {
    /// Shards before the change (0 for the first bootstrap).
    pub from: i32,
    /// Shards after it.
    pub to: i32,
    /// The step now running.
    pub step: ShardStep,
}

/// One step of a shard change. Growing: `ScaleNodes` → `MoveSlots` (`Bootstrap` the first time);
/// shrinking: `MoveSlots` (drain) → `ShrinkNodes`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ShardStep {
    /// The StatefulSet grows to the new node count; waits until every node is ready.
    ScaleNodes,
    /// The bootstrap Job creates the cluster over all nodes.
    Bootstrap,
    /// A Job moves slots onto new shards, or off the shards about to go.
    MoveSlots,
    /// The StatefulSet shrinks to the new node count.
    ShrinkNodes,
}

/// PostgreSQL instances, ready and desired.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresStatus {
    /// Instances ready.
    pub ready_instances: i32,
    /// Instances desired.
    pub instances: i32,
}

/// PostCache pods, ready and current, and their selector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Pods ready.
    pub ready_replicas: i32,
    /// Pods now.
    pub replicas: i32,
    /// Label selector of the pods (for the scale subresource and the HPA).
    pub selector: String,
}

/// Service endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Endpoints {
    /// In-cluster base URL of the API.
    pub http: String,
}

fn default_shards() -> i32 {
    3
}
fn default_one() -> i32 {
    1
}
fn default_one_f() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}
fn default_instances() -> i32 {
    2
}
fn default_replica_lag() -> i32 {
    10
}
fn default_storage_size() -> String {
    "1Gi".into()
}
fn default_replicas() -> i32 {
    2
}
fn default_max_replicas() -> i32 {
    10
}
fn default_cpu_target() -> i32 {
    70
}
fn default_l1_entries() -> i64 {
    100_000
}
fn default_l1_ttl() -> i64 {
    60
}
fn default_l2_ttl() -> i64 {
    600
}
fn default_max_connections() -> i32 {
    50_000
}
fn default_min_hit_ratio() -> f64 {
    0.7
}
fn default_pool_usage() -> f64 {
    0.8
}
fn default_alert_lag() -> f64 {
    30.0
}

/// The CustomResourceDefinition as YAML, exactly what `postcache crd` prints.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt as _;
    // Serializing a CRD built from static types cannot fail.
    serde_norway::to_string(&PostCache::crd()).unwrap_or_default()
}
