//! The PostCache operator: the `PostCache` custom resource and its reconciliation.
//!
//! - [`crd`](PostCache): the resource, defined by Rust types whose doc comments, defaults and CEL
//!   rules become the CRD's schema (`postcache crd` prints it; `crds/postcache.yaml` is that output;
//!   [`reference`] renders it as `docs/crd.md`).
//! - Pure desired-state builders, one module per tier: [`redis`], [`postgres`], [`service`],
//!   [`network`], [`monitoring`] (with the alert rules of [`alerts`], also rendered into
//!   `deploy/monitoring/`), the scripts ConfigMap ([`scripts_config`], holding
//!   [`scripts`]), assembled by [`desired`], from shared pod pieces ([`pod`]: the restricted
//!   security contexts, default resources) and quantities read as bytes ([`quantity`]); the Redis
//!   shard change as a recorded step machine ([`shards`]); the status ([`status`]).
//! - IO at the edges: server-side apply that writes only what changed ([`apply`]), the controller
//!   ([`controller`]) and what it reads (`observe`), leader election by
//!   Lease ([`leader`]), metrics ([`metrics`]), and [`run`] behind `postcache operator`
//!   ([`OperatorArgs`], [`operator`]).

pub mod alerts;
pub mod apply;
pub mod child;
pub mod config;
pub mod controller;
mod crd;
pub mod desired;
pub mod error;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod monitoring;
pub mod network;
mod observe;
pub mod operator;
pub mod pod;
pub mod postgres;
pub mod quantity;
pub mod redis;
pub mod reference;
pub mod scripts;
pub mod scripts_config;
pub mod service;
pub mod shards;
pub mod status;

pub use config::{LogFormat, OperatorArgs};
pub use crd::{
    AlertsSpec, AutoscalingSpec, CacheSpec, Endpoints, ExternalPostgres, ExternalRedis,
    MaxMemoryPolicy, MonitoringSpec, Phase, PodOptions, PostCache, PostCacheSpec, PostCacheStatus,
    PostgresMode, PostgresSpec, PostgresStatus, RateLimitSpec, RealtimeSpec, RedisMode, RedisSpec,
    RedisStatus, SecretKeyRef, ServiceSpec, ServiceStatus, ShardChange, ShardStep, StorageSpec,
};
pub use error::Error;
pub use operator::run;

/// The data-plane scripts as the scripts ConfigMap holds them: `(file name, contents)`.
pub const SCRIPTS: controller::Scripts = &[
    (redis::CLUSTER_SCRIPT, scripts::REDIS_CLUSTER),
    (
        postgres::PRIMARY_INIT_SCRIPT,
        scripts::POSTGRES_PRIMARY_INIT,
    ),
    (postgres::SEED_SCRIPT, scripts::POSTGRES_REPLICA_SEED),
];

/// The CustomResourceDefinition as YAML, exactly what `postcache crd` prints.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    // Serializing a CRD built from static types cannot fail.
    serde_norway::to_string(&PostCache::crd()).unwrap_or_default()
}
