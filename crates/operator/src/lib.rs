//! The PostCache operator. So far: the `PostCache` custom resource itself, defined by Rust types
//! whose doc comments, defaults and CEL rules become the CRD's schema (`postcache crd` prints it;
//! `crds/postcache.yaml` is that output). Reconciliation arrives with the operator work.

mod crd;
pub mod scripts;

pub use crd::{
    AlertsSpec, AutoscalingSpec, CacheSpec, Endpoints, ExternalPostgres, ExternalRedis,
    MonitoringSpec, Phase, PostCache, PostCacheSpec, PostCacheStatus, PostgresMode, PostgresSpec,
    PostgresStatus, RealtimeSpec, RedisMode, RedisSpec, RedisStatus, SecretKeyRef, ServiceSpec,
    ServiceStatus, StorageSpec,
};

/// The CustomResourceDefinition as YAML, exactly what `postcache crd` prints.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    // Serializing a CRD built from static types cannot fail.
    serde_norway::to_string(&PostCache::crd()).unwrap_or_default()
}
