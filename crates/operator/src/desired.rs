//! Everything a PostCache should own, as one list of [`Child`]ren: the pure function the
//! reconciler applies and the snapshot tests render.

use crate::child::Child;
use crate::crd::{PostCache, PostgresMode, RedisMode};
use crate::monitoring::MonitoringApis;
use crate::postgres::Passwords;
use crate::shards::ShardJob;
use crate::{monitoring, network, postgres, redis};
use crate::{scripts, service};

/// The operator's default images (flags), used where the spec names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// The PostCache image.
    pub service: String,
    /// The Redis image.
    pub redis: String,
    /// The PostgreSQL image.
    pub postgres: String,
}

/// Secret values for create-only Secrets that do not exist yet (ignored for those that do).
#[derive(Debug, Clone)]
pub struct Generated {
    /// Redis's password.
    pub redis_password: String,
    /// PostgreSQL's two passwords.
    pub postgres: Passwords,
    /// The API token.
    pub api_token: String,
}

/// What the desired state depends on besides the spec.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// Default images.
    pub images: &'a Images,
    /// The Redis StatefulSet holds this many shards' worth of nodes (see [`crate::shards`]).
    pub redis_node_shards: i32,
    /// The shard step's Job, if one must run.
    pub redis_job: Option<ShardJob>,
    /// Which monitoring kinds exist.
    pub monitoring: MonitoringApis,
    /// Values of Secrets to generate.
    pub generated: &'a Generated,
    /// The data-plane scripts, `(file name, contents)`.
    pub scripts: &'a [(&'a str, &'a str)],
}

/// Every child of `pc`.
pub fn desired(pc: &PostCache, inputs: &Inputs<'_>) -> Vec<Child> {
    let mut out = Vec::new();
    let runs_redis = pc.spec.redis.mode != RedisMode::External;
    let runs_postgres = pc.spec.postgres.mode != PostgresMode::External;
    if runs_redis || runs_postgres {
        out.push(scripts::config_map(pc, inputs.scripts));
    }
    out.extend(redis::children(
        pc,
        &inputs.images.redis,
        inputs.redis_node_shards,
        inputs.redis_job.as_ref(),
        &inputs.generated.redis_password,
    ));
    out.extend(postgres::children(
        pc,
        &inputs.images.postgres,
        &inputs.generated.postgres,
    ));
    out.extend(service::children(
        pc,
        &inputs.images.service,
        &inputs.generated.api_token,
    ));
    out.extend(network::children(pc));
    out.extend(monitoring::children(pc, inputs.monitoring));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ExternalPostgres, ExternalRedis, PostCacheSpec, SecretKeyRef};
    use crate::shards::{ShardAction, ShardJob};
    use kube::ResourceExt;

    fn postcache(spec: PostCacheSpec) -> PostCache {
        let mut pc = PostCache::new("feed", spec);
        pc.metadata.namespace = Some("prod".into());
        pc.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
        pc
    }

    fn images() -> Images {
        Images {
            service: "ghcr.io/postcache/postcache:0.1.0".into(),
            redis: "redis:7.2".into(),
            postgres: "postgres:16".into(),
        }
    }

    fn generated() -> Generated {
        Generated {
            redis_password: "<generated>".into(),
            postgres: Passwords {
                user: "<generated>".into(),
                replication: "<generated>".into(),
            },
            api_token: "<generated>".into(),
        }
    }

    const SCRIPTS: &[(&str, &str)] = &[("redis-cluster.sh", "#!/usr/bin/env bash\n")];

    fn render(pc: &PostCache, job: Option<ShardJob>, monitoring: MonitoringApis) -> Vec<Child> {
        let images = images();
        let generated = generated();
        desired(
            pc,
            &Inputs {
                images: &images,
                redis_node_shards: pc.spec.redis.shards,
                redis_job: job,
                monitoring,
                generated: &generated,
                scripts: SCRIPTS,
            },
        )
    }

    /// The rendered manifests, with the dashboard's JSON (a file of its own) elided.
    fn manifests(children: &[Child]) -> Vec<serde_json::Value> {
        children
            .iter()
            .map(|c| {
                let mut v = serde_json::to_value(&c.object).unwrap();
                if let Some(data) = v.pointer_mut("/data/postcache-dashboard.json") {
                    *data = "<deploy/monitoring/grafana/postcache-dashboard.json>".into();
                }
                v
            })
            .collect()
    }

    #[test]
    fn a_default_postcache_renders_every_child() {
        let pc = postcache(PostCacheSpec::default());
        let job = ShardJob {
            action: ShardAction::Bootstrap,
            target: 3,
            node_shards: 3,
        };
        let all = MonitoringApis {
            service_monitor: true,
            prometheus_rule: true,
        };
        insta::assert_yaml_snapshot!(manifests(&render(&pc, Some(job), all)));
    }

    #[test]
    fn external_tiers_render_only_the_service() {
        let mut spec = PostCacheSpec::default();
        spec.redis.mode = RedisMode::External;
        spec.redis.external = Some(ExternalRedis {
            url_secret_ref: SecretKeyRef {
                name: "r".into(),
                key: "url".into(),
            },
        });
        spec.postgres.mode = PostgresMode::External;
        spec.postgres.external = Some(ExternalPostgres {
            primary_url_secret_ref: SecretKeyRef {
                name: "p".into(),
                key: "url".into(),
            },
            replica_urls_secret_ref: None,
        });
        spec.service.autoscaling.enabled = false;
        spec.service.api_tokens_secret_ref = Some(SecretKeyRef {
            name: "t".into(),
            key: "tokens".into(),
        });
        let pc = postcache(spec);
        insta::assert_yaml_snapshot!(manifests(&render(&pc, None, MonitoringApis::default())));
    }

    #[test]
    fn every_child_but_credentials_is_owned_all_are_labelled_and_secrets_are_referenced_not_inlined()
     {
        let pc = postcache(PostCacheSpec::default());
        let all = MonitoringApis {
            service_monitor: true,
            prometheus_rule: true,
        };
        for child in render(&pc, None, all) {
            if child.resource.kind == "Secret" {
                // Credentials outlive the PostCache with the volumes they open.
                assert!(child.object.owner_references().is_empty(), "{}", child.id());
            } else {
                let owner = &child.object.owner_references()[0];
                assert_eq!(owner.controller, Some(true), "{}", child.id());
                assert_eq!(owner.block_owner_deletion, Some(true), "{}", child.id());
            }
            let labels = child.object.labels();
            for key in [
                crate::labels::NAME_LABEL,
                crate::labels::INSTANCE_LABEL,
                crate::labels::COMPONENT_LABEL,
                crate::labels::MANAGED_BY_LABEL,
            ] {
                assert!(labels.contains_key(key), "{} lacks {key}", child.id());
            }
            if child.resource.kind != "Secret" {
                let text = serde_json::to_string(&child.object).unwrap();
                assert!(
                    !text.contains("<generated>"),
                    "{} inlines a secret",
                    child.id()
                );
            }
        }
    }

    #[test]
    fn autoscaling_off_means_no_hpa_and_fixed_replicas() {
        let mut spec = PostCacheSpec::default();
        spec.service.autoscaling.enabled = false;
        spec.service.replicas = 5;
        let pc = postcache(spec);
        let children = render(&pc, None, MonitoringApis::default());
        assert!(
            !children
                .iter()
                .any(|c| c.resource.kind == "HorizontalPodAutoscaler")
        );
        let deployment = children
            .iter()
            .find(|c| c.resource.kind == "Deployment")
            .unwrap();
        assert_eq!(deployment.object.data["spec"]["replicas"], 5);
        assert!(!children.iter().any(|c| c.resource.kind == "ServiceMonitor"));
    }

    #[test]
    fn each_tier_s_pod_options_reach_every_pod_template_of_that_tier_only() {
        let options = |tier: &str| -> crate::crd::PodOptions {
            serde_json::from_value(serde_json::json!({
                "nodeSelector": {"pool": tier},
                "tolerations": [{"key": "dedicated", "value": tier, "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {}},
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                                               "whenUnsatisfiable": "ScheduleAnyway"}],
                "podAnnotations": {"team": tier},
                "podLabels": {"tier": tier, "app.kubernetes.io/component": "hijacked"},
                "imagePullSecrets": [{"name": format!("{tier}-pull")}],
                "env": [{"name": "EXTRA", "value": tier}],
            }))
            .unwrap()
        };
        let mut spec = PostCacheSpec::default();
        spec.redis.pods = options("redis");
        spec.postgres.pods = options("postgres");
        spec.service.pods = options("service");
        let pc = postcache(spec);
        let job = ShardJob {
            action: ShardAction::Bootstrap,
            target: 3,
            node_shards: 3,
        };
        let mut templates = 0;
        for child in render(&pc, Some(job), MonitoringApis::default()) {
            let Some(template) = child.object.data.pointer("/spec/template") else {
                continue;
            };
            templates += 1;
            let component = template["metadata"]["labels"]["app.kubernetes.io/component"]
                .as_str()
                .unwrap();
            assert_ne!(
                component,
                "hijacked",
                "{}: pod labels replaced the operator's",
                child.id()
            );
            let tier = match component {
                "redis" | "redis-admin" => "redis",
                other => other,
            };
            let id = child.id();
            let pod = &template["spec"];
            assert_eq!(pod["nodeSelector"]["pool"], tier, "{id}");
            assert_eq!(pod["tolerations"][0]["value"], tier, "{id}");
            assert!(pod["affinity"]["nodeAffinity"].is_object(), "{id}");
            assert_eq!(
                pod["topologySpreadConstraints"][0]["topologyKey"], "zone",
                "{id}"
            );
            assert_eq!(
                pod["imagePullSecrets"][0]["name"],
                format!("{tier}-pull"),
                "{id}"
            );
            assert_eq!(template["metadata"]["annotations"]["team"], tier, "{id}");
            assert_eq!(template["metadata"]["labels"]["tier"], tier, "{id}");
            let containers = pod["containers"]
                .as_array()
                .unwrap()
                .iter()
                .chain(pod["initContainers"].as_array().into_iter().flatten());
            for container in containers {
                let env = container["env"].as_array().unwrap();
                assert_eq!(
                    env.last().unwrap(),
                    &serde_json::json!({"name": "EXTRA", "value": tier}),
                    "{id}: the added variable comes last, so it wins"
                );
            }
        }
        assert_eq!(
            templates, 5,
            "Redis nodes, the shard Job, both PostgreSQL sets, the Deployment"
        );
    }
}
