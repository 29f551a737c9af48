//! Redis as desired objects: a StatefulSet of `shards × (1 + replicasPerShard)` nodes (Cluster) or
//! `1 + replicasPerShard` (Standalone, node 0 the master), headless and client Services, the auth
//! Secret, `redis.conf` (with `maxmemory` and a policy that never evicts keys without a TTL), a
//! PodDisruptionBudget, and the Job of the current shard step (see [`crate::shards`]). Pods and
//! Jobs run as [`UID`] under the restricted Pod Security Standard, `redis-server` started directly
//! (not through the image's entrypoint). External mode creates nothing. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EnvVar, PodSpec, PodTemplateSpec,
    ResourceRequirements, Secret, Service, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::child::Child;
use crate::crd::{PostCache, RedisMode, RedisSpec};
use crate::labels::{Component, child_name, meta, retained_meta, selector, selector_labels};
use crate::pod::{
    SCRIPTS_DIR, apply_options, container_port, env, exec_probe, mount, pod_meta,
    resources as pod_resources, restricted_pod_security_context, restricted_security_context,
    scratch_volume, scripts_mount, scripts_volume, secret_env, service_port, volume_claim,
};
use crate::quantity;
use crate::scripts::CLUSTER_SCRIPT;
use crate::shards::{ShardAction, ShardJob};

/// Redis's client port.
pub const PORT: i32 = 6379;
/// The cluster bus port (client port + 10000).
pub const BUS_PORT: i32 = 16379;
/// The key of the password in the auth Secret.
pub const PASSWORD_KEY: &str = "password";
/// User and group of the nodes and Jobs: `redis` of the official image. Set explicitly, since
/// images differ (Debian's package uses another uid); the data volume belongs to this group.
pub const UID: i64 = 999;
/// `maxmemory` as a share of the memory limit when the spec gives none: the rest is for client
/// and replication buffers and the copy-on-write of a rewrite's fork.
const MAX_MEMORY_PERCENT_OF_LIMIT: u64 = 80;

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
        metadata: retained_meta(pc, auth_secret_name(pc), Component::Redis),
        string_data: Some(BTreeMap::from([(
            PASSWORD_KEY.to_owned(),
            password.to_owned(),
        )])),
        ..Secret::default()
    }
}

/// Resources of each node: the spec's, else requests of `100m` CPU and `512Mi` memory with a
/// `512Mi` limit.
pub fn resources(spec: &RedisSpec) -> ResourceRequirements {
    spec.resources
        .clone()
        .unwrap_or_else(|| pod_resources("100m", "512Mi", "512Mi"))
}

/// `maxmemory` in bytes: the spec's, else `MAX_MEMORY_PERCENT_OF_LIMIT` of the memory limit;
/// `None` (unbounded) without either.
pub fn max_memory(spec: &RedisSpec) -> Option<u64> {
    if let Some(bytes) = spec.max_memory.as_ref().and_then(|q| quantity::bytes(&q.0)) {
        return Some(bytes);
    }
    let limits = resources(spec).limits?;
    let limit = quantity::bytes(&limits.get("memory")?.0)?;
    u64::try_from(u128::from(limit) * u128::from(MAX_MEMORY_PERCENT_OF_LIMIT) / 100).ok()
}

/// `redis.conf`; the password arrives on the command line from the Secret.
fn redis_conf(spec: &RedisSpec) -> String {
    let mut conf = String::from("port 6379\ndir /data\nappendonly yes\nprotected-mode no\n");
    if let Some(bytes) = max_memory(spec) {
        conf.push_str(&format!("maxmemory {bytes}\n"));
    }
    conf.push_str(&format!(
        "maxmemory-policy {}\n",
        spec.max_memory_policy.as_str()
    ));
    if spec.mode == RedisMode::Cluster {
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
            redis_conf(&pc.spec.redis),
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

/// Rewrites the address of every node in a kept `nodes.conf` to what its announced hostname
/// resolves to now. Redis Cluster's bus connects by IP and remembers the IPs in `nodes.conf`;
/// when every Pod comes back with a new IP (a recreated PostCache, a restarted node pool) no
/// node could reach another, and the cluster would stay down. The Pods start together, so each
/// waits (up to 20 s, well within the liveness probe's patience) for its peers' names to
/// resolve; a name that still does not keeps its old address: that node, starting later,
/// reaches the others, and gossip spreads its address.
const REFRESH_NODE_ADDRESSES: &str = r#"if [ -s /data/nodes.conf ]; then
  deadline=$(($(date +%s) + 20))
  for host in $(awk '{ if (split($2, a, ",") > 1) print a[2] }' /data/nodes.conf); do
    until getent ahostsv4 "$host" >/dev/null || [ "$(date +%s)" -ge "$deadline" ]; do sleep 1; done
  done
  awk '{ if (split($2, a, ",") > 1) { cmd = "getent ahostsv4 " a[2]; ip = ""
         if ((cmd | getline line) > 0) { split(line, f, " "); ip = f[1] }; close(cmd)
         if (ip != "") sub(/^[^:]*/, ip, $2) }; print }' /data/nodes.conf >/data/nodes.conf.new &&
    mv /data/nodes.conf.new /data/nodes.conf
fi
"#;

/// Ready: answering, and in Cluster mode part of a healthy cluster (`cluster_state:ok`) or not
/// part of one yet (a lone node, before the bootstrap Job joins it). So `Ready` on the PostCache
/// means the cluster serves every slot, and a rolling restart waits for it to heal.
fn readiness_check(pc: &PostCache) -> &'static str {
    match pc.spec.redis.mode {
        RedisMode::Cluster => {
            "REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli cluster info | tr -d '\\r' | \
             grep -qxE 'cluster_state:ok|cluster_known_nodes:1'"
        }
        _ => "REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli ping | grep -q PONG",
    }
}

/// Starts `redis-server` with the password; a Standalone replica follows node 0; a cluster node
/// first refreshes its peers' addresses ([`REFRESH_NODE_ADDRESSES`]).
fn start_command(pc: &PostCache) -> String {
    let mut script = String::from(
        "set -- /etc/redis/redis.conf --requirepass \"$REDIS_PASSWORD\" --masterauth \"$REDIS_PASSWORD\"\n",
    );
    match pc.spec.redis.mode {
        RedisMode::Cluster => {
            script.push_str(REFRESH_NODE_ADDRESSES);
            script.push_str(&format!(
                "set -- \"$@\" --cluster-announce-hostname \"$(hostname).{}.{}.svc\"\n",
                headless_name(pc),
                pc.namespace().unwrap_or_default()
            ));
        }
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
        readiness_probe: Some(exec_probe(readiness_check(pc))),
        liveness_probe: Some(exec_probe(
            "REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli ping",
        )),
        resources: Some(resources(spec)),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![
            mount("data", "/data"),
            VolumeMount {
                name: "config".into(),
                mount_path: "/etc/redis".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let mut object = StatefulSet {
        metadata: meta(pc, name(pc), Component::Redis),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(headless_name(pc)),
            pod_management_policy: Some("Parallel".into()),
            selector: selector(pc, Component::Redis),
            template: PodTemplateSpec {
                metadata: Some(pod_meta(pc, Component::Redis)),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    security_context: Some(restricted_pod_security_context(UID)),
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
    };
    if let Some(spec) = object.spec.as_mut() {
        apply_options(&mut spec.template, &pc.spec.redis.pods);
    }
    object
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
        security_context: Some(restricted_security_context()),
        // bash may spill here-strings to /tmp.
        volume_mounts: Some(vec![scripts_mount(), mount("tmp", "/tmp")]),
        ..Container::default()
    };
    let mut object = Job {
        metadata: meta(pc, job_name(pc, job), Component::RedisAdmin),
        spec: Some(JobSpec {
            backoff_limit: Some(6),
            template: PodTemplateSpec {
                metadata: Some(pod_meta(pc, Component::RedisAdmin)),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    security_context: Some(restricted_pod_security_context(UID)),
                    containers: vec![container],
                    volumes: Some(vec![
                        scripts_volume(&crate::scripts::config_map_name(pc)),
                        scratch_volume("tmp"),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    };
    if let Some(spec) = object.spec.as_mut() {
        apply_options(&mut spec.template, &pc.spec.redis.pods);
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MaxMemoryPolicy;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn maxmemory_is_the_spec_s_else_80_percent_of_the_memory_limit_else_unbounded() {
        let mut spec = RedisSpec::default();
        assert_eq!(
            max_memory(&spec),
            Some(429_496_729),
            "80 % of the default 512Mi"
        );
        spec.resources = Some(crate::pod::resources("1", "2Gi", "2Gi"));
        assert_eq!(max_memory(&spec), Some(1_717_986_918));
        spec.max_memory = Some(Quantity("1Gi".into()));
        assert_eq!(max_memory(&spec), Some(1 << 30));
        spec.max_memory = None;
        spec.resources = Some(ResourceRequirements::default());
        assert_eq!(max_memory(&spec), None, "no limit, no bound");
    }

    #[test]
    fn redis_conf_never_evicts_keys_without_a_ttl_unless_told_a_volatile_policy() {
        let mut spec = RedisSpec::default();
        let conf = redis_conf(&spec);
        assert!(conf.contains("maxmemory 429496729\n"), "{conf}");
        assert!(conf.contains("maxmemory-policy noeviction\n"), "{conf}");
        spec.max_memory_policy = MaxMemoryPolicy::VolatileLfu;
        assert!(redis_conf(&spec).contains("maxmemory-policy volatile-lfu\n"));
    }
}
