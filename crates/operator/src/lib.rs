//! The PostCache operator: the `PostCache` custom resource and its reconciliation.
//!
//! - [`crd`](PostCache): the resource, defined by Rust types whose doc comments, defaults and CEL
//!   rules become the CRD's schema (`postcache crd` prints it; `crds/postcache.yaml` is that output;
//!   [`reference`](mod@reference) renders it as `docs/crd.md`).
//! - Pure desired-state builders, one module per tier: [`redis`], [`postgres`], [`service`],
//!   [`network`], [`monitoring`] (with the alert rules of [`alerts`], also rendered into
//!   `deploy/monitoring/`), the data-plane [`scripts`] and their ConfigMap, assembled by
//!   [`desired`], from shared pod pieces ([`pod`]: the restricted
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
pub mod service;
pub mod shards;
pub mod status;

pub use config::OperatorArgs;
pub use crd::{
    AlertsSpec, AutoscalingSpec, CacheSpec, Endpoints, ExternalPostgres, ExternalRedis,
    MaxMemoryPolicy, MonitoringSpec, Phase, PodOptions, PostCache, PostCacheSpec, PostCacheStatus,
    PostgresMode, PostgresSpec, PostgresStatus, RateLimitSpec, RealtimeSpec, RedisMode, RedisSpec,
    RedisStatus, SecretKeyRef, ServiceSpec, ServiceStatus, ShardChange, ShardStep, StorageSpec,
    crd_yaml,
};
pub use error::Error;
pub use operator::run;
pub use scripts::SCRIPTS;
