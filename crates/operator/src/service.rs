//! The PostCache pods as desired objects: Deployment (probes, default resources, restricted security,
//! env per CONTRACT.md with every secret by `secretKeyRef`), the `<name>-cache` Service, the
//! HorizontalPodAutoscaler (only when autoscaling is enabled), a PodDisruptionBudget, a
//! ServiceAccount without a token, and the generated API tokens Secret. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    Secret, Service, ServiceAccount, ServiceSpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::child::Child;
use crate::crd::{PostCache, PostgresMode, RedisMode};
use crate::labels::{Component, child_name, meta, retained_meta, selector, selector_labels};
use crate::pod::{
    apply_options, container_port, env, mount, pod_meta, resources as pod_resources,
    restricted_pod_security_context, restricted_security_context, scratch_volume, secret_env,
    service_port,
};
use crate::{postgres, redis};

/// The service's HTTP port (API, `/metrics`, probes).
pub const PORT: i32 = 8080;
/// Key of the tokens in the generated API tokens Secret.
pub const TOKENS_KEY: &str = "tokens";
/// User and group of the pods: the image's (`Dockerfile`: a static binary, user 65532).
pub const UID: i64 = 65532;

/// `<name>-cache`: Deployment, Service, HPA, PDB, ServiceAccount.
pub fn name(pc: &PostCache) -> String {
    child_name(pc, "cache")
}

/// `<name>-api-tokens`: generated when `apiTokensSecretRef` is absent.
pub fn tokens_secret_name(pc: &PostCache) -> String {
    child_name(pc, "api-tokens")
}

/// `http://<name>-cache.<namespace>.svc:8080` (status `endpoints.http`).
pub fn endpoint(pc: &PostCache) -> String {
    format!(
        "http://{}.{}.svc:{PORT}",
        name(pc),
        pc.namespace().unwrap_or_default()
    )
}

/// Every object of the service tier; `token` fills a newly generated API tokens Secret.
pub fn children(pc: &PostCache, image: &str, token: &str) -> Vec<Child> {
    let mut out = Vec::new();
    if pc.spec.service.api_tokens_secret_ref.is_none() {
        out.push(Child::new(&tokens_secret(pc, token)).create_only());
    }
    out.push(Child::new(&service_account(pc)));
    out.push(Child::new(&deployment(pc, image)));
    out.push(Child::new(&service(pc)));
    out.push(Child::new(&disruption_budget(pc)));
    if pc.spec.service.autoscaling.enabled {
        out.push(Child::new(&autoscaler(pc)));
    }
    out
}

fn tokens_secret(pc: &PostCache, token: &str) -> Secret {
    Secret {
        metadata: retained_meta(pc, tokens_secret_name(pc), Component::Service),
        string_data: Some(BTreeMap::from([(TOKENS_KEY.to_owned(), token.to_owned())])),
        ..Secret::default()
    }
}

fn service_account(pc: &PostCache) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(pc, name(pc), Component::Service),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// The environment of the pods (CONTRACT.md names). Passwords reach URLs through Kubernetes'
/// `$(VAR)` expansion of variables that come from Secrets, never as literals.
pub fn service_env(pc: &PostCache) -> Vec<EnvVar> {
    let spec = &pc.spec;
    let ns = pc.namespace().unwrap_or_default();
    let mut out = vec![env("POSTCACHE_LISTEN", format!("0.0.0.0:{PORT}"))];
    match (&spec.postgres.mode, &spec.postgres.external) {
        (PostgresMode::External, Some(external)) => {
            let p = &external.primary_url_secret_ref;
            out.push(secret_env("POSTCACHE_DATABASE_URL", &p.name, &p.key));
            if let Some(r) = &external.replica_urls_secret_ref {
                out.push(secret_env("POSTCACHE_REPLICA_URLS", &r.name, &r.key));
            }
        }
        _ => {
            let creds = postgres::credentials_secret_name(pc);
            out.push(secret_env("POSTGRES_USER", &creds, postgres::USERNAME_KEY));
            out.push(secret_env(
                "POSTGRES_PASSWORD",
                &creds,
                postgres::PASSWORD_KEY,
            ));
            let url = |service: String| {
                format!(
                    "postgres://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@{service}.{ns}.svc:{}/{}",
                    postgres::PORT,
                    postgres::DATABASE
                )
            };
            out.push(env(
                "POSTCACHE_DATABASE_URL",
                url(postgres::rw_service_name(pc)),
            ));
            if postgres::replica_count(pc) > 0 {
                out.push(env(
                    "POSTCACHE_REPLICA_URLS",
                    url(postgres::ro_service_name(pc)),
                ));
            }
        }
    }
    match (&spec.redis.mode, &spec.redis.external) {
        (RedisMode::External, Some(external)) => {
            let r = &external.url_secret_ref;
            out.push(secret_env("POSTCACHE_REDIS_URL", &r.name, &r.key));
        }
        (mode, _) => {
            let auth = redis::auth_secret_name(pc);
            out.push(secret_env("REDIS_PASSWORD", &auth, redis::PASSWORD_KEY));
            let url = |address: String| format!("redis://:$(REDIS_PASSWORD)@{address}");
            let urls: Vec<String> = if *mode == RedisMode::Cluster {
                // Seeds: the first three nodes always exist (shards >= 3); clients learn the rest.
                (0..3).map(|i| url(redis::node_address(pc, i))).collect()
            } else {
                vec![url(format!("{}.{ns}.svc:{}", redis::name(pc), redis::PORT))]
            };
            out.push(env("POSTCACHE_REDIS_URL", urls.join(",")));
            out.push(env(
                "POSTCACHE_REDIS_CLUSTER",
                (*mode == RedisMode::Cluster).to_string(),
            ));
        }
    }
    let tokens = match &spec.service.api_tokens_secret_ref {
        Some(r) => secret_env("POSTCACHE_API_TOKENS", &r.name, &r.key),
        None => secret_env("POSTCACHE_API_TOKENS", &tokens_secret_name(pc), TOKENS_KEY),
    };
    out.push(tokens);
    let cache = &spec.service.cache;
    out.push(env(
        "POSTCACHE_L1_MAX_ENTRIES",
        cache.l1_max_entries.to_string(),
    ));
    out.push(env(
        "POSTCACHE_L1_TTL_SECONDS",
        cache.l1_ttl_seconds.to_string(),
    ));
    out.push(env(
        "POSTCACHE_L2_TTL_SECONDS",
        cache.l2_ttl_seconds.to_string(),
    ));
    out.push(env(
        "POSTCACHE_MAX_REPLICA_LAG_SECONDS",
        spec.postgres.max_replica_lag_seconds.to_string(),
    ));
    let realtime = &spec.service.realtime;
    out.push(env(
        "POSTCACHE_REALTIME_ENABLED",
        realtime.enabled.to_string(),
    ));
    out.push(env(
        "POSTCACHE_REALTIME_MAX_CONNECTIONS",
        realtime.max_connections_per_pod.to_string(),
    ));
    let service = &spec.service;
    if !service.trusted_proxies.is_empty() {
        out.push(env(
            "POSTCACHE_TRUSTED_PROXIES",
            service.trusted_proxies.join(","),
        ));
    }
    if let Some(limit) = &service.rate_limit {
        let burst = limit
            .burst
            .unwrap_or_else(|| limit.per_second.saturating_mul(2).max(1));
        out.push(env(
            "POSTCACHE_RATE_LIMIT_PER_SECOND",
            limit.per_second.to_string(),
        ));
        out.push(env("POSTCACHE_RATE_LIMIT_BURST", burst.to_string()));
    }
    if !service.cors_origins.is_empty() {
        out.push(env(
            "POSTCACHE_CORS_ORIGINS",
            service.cors_origins.join(","),
        ));
    }
    if let Some(endpoint) = &service.otlp_endpoint {
        out.push(env("POSTCACHE_OTLP_ENDPOINT", endpoint.clone()));
    }
    if let Some(ms) = service.request_timeout_ms {
        out.push(env("POSTCACHE_REQUEST_TIMEOUT_MS", ms.to_string()));
    }
    if let Some(ms) = service.staleness_bound_ms {
        out.push(env("POSTCACHE_STALENESS_BOUND_MS", ms.to_string()));
    }
    // On SIGTERM: readiness fails and the pod keeps serving while its endpoint leaves every
    // Service and Ingress, then in-flight requests get the grace (within the pod's termination
    // grace period).
    out.push(env(
        "POSTCACHE_DRAIN_DELAY_SECONDS",
        DRAIN_DELAY_SECONDS.to_string(),
    ));
    out.push(env(
        "POSTCACHE_SHUTDOWN_GRACE_SECONDS",
        SHUTDOWN_GRACE_SECONDS.to_string(),
    ));
    out.push(env("POSTCACHE_LOG_FORMAT", "json"));
    out
}

/// How long a terminating service pod keeps serving with readiness failed.
const DRAIN_DELAY_SECONDS: i64 = 5;
/// How long its in-flight requests may then take.
const SHUTDOWN_GRACE_SECONDS: i64 = 20;

fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// Resources of each pod: the spec's, else requests of `250m` CPU (what the HPA's utilization is
/// relative to) and `256Mi` memory with a `512Mi` limit.
pub fn resources(pc: &PostCache) -> ResourceRequirements {
    pc.spec
        .service
        .resources
        .clone()
        .unwrap_or_else(|| pod_resources("250m", "256Mi", "512Mi"))
}

fn deployment(pc: &PostCache, image: &str) -> Deployment {
    let spec = &pc.spec.service;
    let container = Container {
        name: "postcache".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| image.to_owned())),
        args: Some(vec!["serve".into()]),
        env: Some(service_env(pc)),
        ports: Some(vec![container_port("http", PORT)]),
        liveness_probe: Some(http_probe("/healthz")),
        readiness_probe: Some(http_probe("/readyz")),
        resources: Some(resources(pc)),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![mount("tmp", "/tmp")]),
        ..Container::default()
    };
    let mut object = Deployment {
        metadata: meta(pc, name(pc), Component::Service),
        spec: Some(DeploymentSpec {
            // With an HPA the replicas are its to set; the field is left out so it owns them.
            replicas: (!spec.autoscaling.enabled).then_some(spec.replicas),
            selector: selector(pc, Component::Service),
            template: PodTemplateSpec {
                metadata: Some(pod_meta(pc, Component::Service)),
                spec: Some(PodSpec {
                    service_account_name: Some(name(pc)),
                    automount_service_account_token: Some(false),
                    security_context: Some(restricted_pod_security_context(UID)),
                    // Drain, grace, and the final flush of views and events.
                    termination_grace_period_seconds: Some(
                        DRAIN_DELAY_SECONDS + SHUTDOWN_GRACE_SECONDS + 5,
                    ),
                    containers: vec![container],
                    volumes: Some(vec![scratch_volume("tmp")]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    if let Some(spec) = object.spec.as_mut() {
        apply_options(&mut spec.template, &pc.spec.service.pods);
    }
    object
}

fn service(pc: &PostCache) -> Service {
    Service {
        metadata: meta(pc, name(pc), Component::Service),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(pc, Component::Service)),
            ports: Some(vec![service_port("http", PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn disruption_budget(pc: &PostCache) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(pc, name(pc), Component::Service),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(pc, Component::Service)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

fn autoscaler(pc: &PostCache) -> HorizontalPodAutoscaler {
    let a = &pc.spec.service.autoscaling;
    HorizontalPodAutoscaler {
        metadata: meta(pc, name(pc), Component::Service),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name(pc),
            },
            min_replicas: Some(a.min_replicas.max(1)),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(a.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        },
        ..HorizontalPodAutoscaler::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PostCacheSpec;

    fn value<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    #[test]
    fn trusted_proxies_reach_the_pods_only_when_given() {
        let mut pc = PostCache::new("feed", PostCacheSpec::default());
        pc.metadata.namespace = Some("prod".into());
        assert_eq!(value(&service_env(&pc), "POSTCACHE_TRUSTED_PROXIES"), None);
        pc.spec.service.trusted_proxies = vec!["10.0.0.0/8".into(), "fd00::/8".into()];
        assert_eq!(
            value(&service_env(&pc), "POSTCACHE_TRUSTED_PROXIES"),
            Some("10.0.0.0/8,fd00::/8")
        );
        assert_eq!(
            value(&service_env(&pc), "POSTCACHE_DRAIN_DELAY_SECONDS"),
            Some("5")
        );
    }
}
