//! Redis as desired objects: a StatefulSet of `shards × (1 + replicasPerShard)` nodes (Cluster) or
//! `1 + replicasPerShard` (Standalone, node 0 the master), headless and client Services, the auth
//! Secret, `redis.conf`, a PodDisruptionBudget, and the Job of the current shard step (see
//! [`crate::shards`]). External mode creates nothing. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EnvVar, PodSpec, PodTemplateSpec, Secret, Service,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::child::Child;
use crate::labels::{Component, child_name, meta, selector, selector_labels};
use crate::pod::{
    SCRIPTS_DIR, container_port, env, exec_probe, pod_meta, scripts_mount, scripts_volume,
    secret_env, service_port, volume_claim,
};
use crate::shards::{ShardAction, ShardJob};
use crate::{PostCache, RedisMode, RedisSpec};

/// Redis's client port.
pub const PORT: i32 = 6379;
/// The cluster bus port (client port + 10000).
pub const BUS_PORT: i32 = 16379;
/// The key of the password in the auth Secret.
pub const PASSWORD_KEY: &str = "password";
/// The data-plane script (`crates/operator/scripts/redis-cluster.sh`) in the scripts ConfigMap.
pub const CLUSTER_SCRIPT: &str = "redis-cluster.sh";

/// `<name>-redis`: the StatefulSet, the client Service and the PDB.
pub fn name(pc: &PostCache) -> String {
    child_name(pc, "redis")
}

/// `<name>-redis-headless`: per-node DNS names.
pub fn headless_name(pc: &PostCache) -> String {
    child_name(pc, "redis-headless")
}

/// `<name>-redis-auth`: the generated password.
pub fn auth_secret_name(pc: &PostCache) -> String {
    child_name(pc, "redis-auth")
}

fn config_name(pc: &PostCache) -> String {
    child_name(pc, "redis-config")
}

/// The Job of a shard step; one name per action and target, removed once the step is recorded.
pub fn job_name(pc: &PostCache, job: &ShardJob) -> String {
    match job.action {
        ShardAction::Bootstrap => child_name(pc, "redis-bootstrap"),
        action => child_name(pc, &format!("redis-{}-{}", action.as_str(), job.target)),
    }
}

/// Nodes of a StatefulSet holding `node_shards` shards.
pub fn node_count(spec: &RedisSpec, node_shards: i32) -> i32 {
    match spec.mode {
        RedisMode::Cluster => node_shards * nodes_per_shard(spec),
        RedisMode::Standalone => nodes_per_shard(spec),
        RedisMode::External => 0,
    }
}

/// One master and its replicas.
pub fn nodes_per_shard(spec: &RedisSpec) -> i32 {
    1 + spec.replicas_per_shard.max(0)
}

/// `host:port` of node `i` through the headless Service.
pub fn node_address(pc: &PostCache, i: i32) -> String {
    format!(
        "{}-{i}.{}.{}.svc:{PORT}",
        name(pc),
        headless_name(pc),
        pc.namespace().unwrap_or_default()
    )
}

/// Every object of the Redis tier. `node_shards` sizes the StatefulSet (Cluster mode), `job` is
/// the current shard step's Job, `password` fills a newly generated auth Secret.
pub fn children(
    pc: &PostCache,
    image: &str,
    node_shards: i32,
    job: Option<&ShardJob>,
    password: &str,
) -> Vec<Child> {
    let spec = &pc.spec.redis;
    if spec.mode == RedisMode::External {
        return Vec::new();
    }
    let image = spec.image.as_deref().unwrap_or(image);
    let mut out = vec![
        Child::new(&auth_secret(pc, password)).create_only(),
        Child::new(&config_map(pc)),
        Child::new(&headless_service(pc)),
        Child::new(&client_service(pc)),
        Child::new(&stateful_set(pc, image, node_count(spec, node_shards))),
        Child::new(&disruption_budget(pc)),
    ];
    if let Some(job) = job {
        out.push(Child::new(&shard_job(pc, image, job)));
    }
    out
}

fn auth_secret(pc: &PostCache, password: &str) -> Secret {
    Secret {
        metadata: meta(pc, auth_secret_name(pc), Component::Redis),
        string_data: Some(BTreeMap::from([(
            PASSWORD_KEY.to_owned(),
            password.to_owned(),
        )])),
        ..Secret::default()
    }
}

/// `redis.conf`; the password arrives on the command line from the Secret.
fn redis_conf(mode: RedisMode) -> String {
    let mut conf = String::from("port 6379\ndir /data\nappendonly yes\nprotected-mode no\n");
    if mode == RedisMode::Cluster {
        conf.push_str(
            "cluster-enabled yes\ncluster-config-file /data/nodes.conf\ncluster-node-timeout 5000\n\
             cluster-preferred-endpoint-type hostname\n",
        );
    }
    conf
}

fn config_map(pc: &PostCache) -> ConfigMap {
    ConfigMap {
        metadata: meta(pc, config_name(pc), Component::Redis),
        data: Some(BTreeMap::from([(
            "redis.conf".to_owned(),
            redis_conf(pc.spec.redis.mode),
        )])),
        ..ConfigMap::default()
    }
}

fn headless_service(pc: &PostCache) -> Service {
    Service {
        metadata: meta(pc, headless_name(pc), Component::Redis),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(pc, Component::Redis)),
            ports: Some(vec![
                service_port("redis", PORT),
                service_port("bus", BUS_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn client_service(pc: &PostCache) -> Service {
    Service {
        metadata: meta(pc, name(pc), Component::Redis),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(pc, Component::Redis)),
            ports: Some(vec![service_port("redis", PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Starts `redis-server` with the password; a Standalone replica follows node 0.
fn start_command(pc: &PostCache) -> String {
    let mut script = String::from(
        "set -- /etc/redis/redis.conf --requirepass \"$REDIS_PASSWORD\" --masterauth \"$REDIS_PASSWORD\"\n",
    );
    match pc.spec.redis.mode {
        RedisMode::Cluster => script.push_str(&format!(
            "set -- \"$@\" --cluster-announce-hostname \"$(hostname).{}.{}.svc\"\n",
            headless_name(pc),
            pc.namespace().unwrap_or_default()
        )),
        _ => script.push_str(&format!(
            "[ \"${{HOSTNAME##*-}}\" = 0 ] || set -- \"$@\" --replicaof {}-0.{} {PORT}\n",
            name(pc),
            headless_name(pc)
        )),
    }
    script.push_str("exec redis-server \"$@\"\n");
    script
}

fn stateful_set(pc: &PostCache, image: &str, replicas: i32) -> StatefulSet {
    let spec = &pc.spec.redis;
    let container = Container {
        name: "redis".to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec!["sh".into(), "-c".into(), start_command(pc)]),
        env: Some(vec![secret_env(
            "REDIS_PASSWORD",
            &auth_secret_name(pc),
            PASSWORD_KEY,
        )]),
        ports: Some(vec![
            container_port("redis", PORT),
            container_port("bus", BUS_PORT),
        ]),
        readiness_probe: Some(exec_probe(
            "redis-cli -a \"$REDIS_PASSWORD\" --no-auth-warning ping | grep -q PONG",
        )),
        liveness_probe: Some(exec_probe(
            "redis-cli -a \"$REDIS_PASSWORD\" --no-auth-warning ping",
        )),
        resources: spec.resources.clone(),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "config".into(),
                mount_path: "/etc/redis".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    StatefulSet {
        metadata: meta(pc, name(pc), Component::Redis),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(headless_name(pc)),
            pod_management_policy: Some("Parallel".into()),
            selector: selector(pc, Component::Redis),
            template: PodTemplateSpec {
                metadata: Some(pod_meta(pc, Component::Redis)),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "config".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: config_name(pc),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![volume_claim("data", spec.storage.as_ref())]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn disruption_budget(pc: &PostCache) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(pc, name(pc), Component::Redis),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(pc, Component::Redis)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The environment of `redis-cluster.sh` (its interface: `REDIS_PASSWORD`, `REDIS_NODES`,
/// `REDIS_REPLICAS_PER_SHARD`, `REDIS_SHARDS`, `REDIS_PORT`).
pub fn script_env(pc: &PostCache, job: &ShardJob) -> Vec<EnvVar> {
    let nodes = node_count(&pc.spec.redis, job.node_shards);
    let addresses: Vec<String> = (0..nodes).map(|i| node_address(pc, i)).collect();
    vec![
        secret_env("REDIS_PASSWORD", &auth_secret_name(pc), PASSWORD_KEY),
        env("REDIS_NODES", addresses.join(" ")),
        env(
            "REDIS_REPLICAS_PER_SHARD",
            pc.spec.redis.replicas_per_shard.to_string(),
        ),
        env("REDIS_SHARDS", job.target.to_string()),
        env("REDIS_PORT", PORT.to_string()),
    ]
}

fn shard_job(pc: &PostCache, image: &str, job: &ShardJob) -> Job {
    let container = Container {
        name: job.action.as_str().to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec![
            "bash".into(),
            format!("{SCRIPTS_DIR}/{CLUSTER_SCRIPT}"),
            job.action.as_str().into(),
        ]),
        env: Some(script_env(pc, job)),
        volume_mounts: Some(vec![scripts_mount()]),
        ..Container::default()
    };
    Job {
        metadata: meta(pc, job_name(pc, job), Component::RedisAdmin),
        spec: Some(JobSpec {
            backoff_limit: Some(6),
            template: PodTemplateSpec {
                metadata: Some(pod_meta(pc, Component::RedisAdmin)),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    containers: vec![container],
                    volumes: Some(vec![scripts_volume(&crate::scripts_config::name(pc))]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}
