//! PostgreSQL as desired objects: a primary StatefulSet and a read-replica StatefulSet of
//! `instances - 1` (each replica seeded by `pg_basebackup` in an init container running
//! `postgres-replica-seed.sh`, then streaming), generated credentials and replication Secrets,
//! `<name>-postgres-rw` / `-ro` Services and a PodDisruptionBudget. The primary's data directory is
//! made by an init container running `postgres-primary-init.sh`; every container runs a program
//! by name (`bash`, `postgres`, `pg_isready`), never the image's entrypoint, so the official
//! `postgres` image and one built from Debian's packages both work. Pods run as [`UID`] under the
//! restricted Pod Security Standard on a read-only root filesystem (`/tmp` and the socket
//! directory are `emptyDir`s). External mode creates nothing. Pure.
//!
//! ```text
//! service ──rw──▶ <name>-postgres (primary) ──WAL──▶ <name>-postgres-replica-N ◀──ro── service
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSpec, PodTemplateSpec, ResourceRequirements, Secret, Service,
    ServiceSpec, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::child::Child;
use crate::crd::{PostCache, PostgresMode};
use crate::labels::{
    Component, child_name, labels, meta, retained_meta, selector, selector_labels,
};
use crate::pod::{
    SCRIPTS_DIR, apply_options, container_port, env, exec_probe, mount, resources as pod_resources,
    restricted_pod_security_context, restricted_security_context, scratch_volume, scripts_mount,
    scripts_volume, secret_env, service_port, volume_claim,
};
use crate::scripts::{PRIMARY_INIT_SCRIPT, SEED_SCRIPT};

/// PostgreSQL's port.
pub const PORT: i32 = 5432;
/// The database and user the service uses.
pub const DATABASE: &str = "postcache";
/// The user of the service.
pub const USER: &str = "postcache";
/// The streaming-replication user.
pub const REPLICATION_USER: &str = "replicator";
/// Key of the user name in both Secrets.
pub const USERNAME_KEY: &str = "username";
/// Key of the password in both Secrets.
pub const PASSWORD_KEY: &str = "password";
/// Pod label telling the primary from the replicas (the `-rw` / `-ro` Services select on it).
pub const ROLE_LABEL: &str = "postcache.io/role";
/// The data directory (a subdirectory of the volume, as the image wants).
pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";
/// User and group of the pods: `postgres` of the official image. Set explicitly, since images
/// differ (Debian's package uses another uid); the data volume belongs to this group.
pub const UID: i64 = 999;
/// Where the data volume is mounted ([`PGDATA`] lies inside).
const DATA_DIR: &str = "/var/lib/postgresql/data";

/// `<name>-postgres`: the primary StatefulSet and the PDB.
pub fn primary_name(pc: &PostCache) -> String {
    child_name(pc, "postgres")
}

/// `<name>-postgres-replica`: the read replicas.
pub fn replica_name(pc: &PostCache) -> String {
    child_name(pc, "postgres-replica")
}

/// `<name>-postgres-rw`: the primary's Service.
pub fn rw_service_name(pc: &PostCache) -> String {
    child_name(pc, "postgres-rw")
}

/// `<name>-postgres-ro`: the replicas' Service.
pub fn ro_service_name(pc: &PostCache) -> String {
    child_name(pc, "postgres-ro")
}

/// `<name>-postgres-credentials`: the service's user.
pub fn credentials_secret_name(pc: &PostCache) -> String {
    child_name(pc, "postgres-credentials")
}

/// `<name>-postgres-replication`: the replication user.
pub fn replication_secret_name(pc: &PostCache) -> String {
    child_name(pc, "postgres-replication")
}

fn headless_name(pc: &PostCache) -> String {
    child_name(pc, "postgres-headless")
}

/// Replicas of the replica StatefulSet.
pub fn replica_count(pc: &PostCache) -> i32 {
    (pc.spec.postgres.instances - 1).max(0)
}

/// Generated passwords of the two Secrets.
#[derive(Debug, Clone)]
pub struct Passwords {
    /// The service's user.
    pub user: String,
    /// The replication user.
    pub replication: String,
}

/// Every object of the PostgreSQL tier.
pub fn children(pc: &PostCache, image: &str, passwords: &Passwords) -> Vec<Child> {
    if pc.spec.postgres.mode == PostgresMode::External {
        return Vec::new();
    }
    let image = pc.spec.postgres.image.as_deref().unwrap_or(image);
    vec![
        Child::new(&secret(
            pc,
            &credentials_secret_name(pc),
            USER,
            &passwords.user,
        ))
        .create_only(),
        Child::new(&secret(
            pc,
            &replication_secret_name(pc),
            REPLICATION_USER,
            &passwords.replication,
        ))
        .create_only(),
        Child::new(&service(pc, &headless_name(pc), None)),
        Child::new(&service(pc, &rw_service_name(pc), Some("primary"))),
        Child::new(&service(pc, &ro_service_name(pc), Some("replica"))),
        Child::new(&primary(pc, image)),
        Child::new(&replicas(pc, image)),
        Child::new(&disruption_budget(pc)),
    ]
}

fn secret(pc: &PostCache, name: &str, user: &str, password: &str) -> Secret {
    Secret {
        metadata: retained_meta(pc, name, Component::Postgres),
        string_data: Some(BTreeMap::from([
            (USERNAME_KEY.to_owned(), user.to_owned()),
            (PASSWORD_KEY.to_owned(), password.to_owned()),
        ])),
        ..Secret::default()
    }
}

fn role_labels(pc: &PostCache, role: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pc, Component::Postgres);
    labels.insert(ROLE_LABEL.to_owned(), role.to_owned());
    labels
}

fn service(pc: &PostCache, name: &str, role: Option<&str>) -> Service {
    let selector = match role {
        Some(role) => role_labels(pc, role),
        None => selector_labels(pc, Component::Postgres),
    };
    Service {
        metadata: meta(pc, name, Component::Postgres),
        spec: Some(ServiceSpec {
            cluster_ip: role.is_none().then(|| "None".to_owned()),
            publish_not_ready_addresses: role.is_none().then_some(true),
            selector: Some(selector),
            ports: Some(vec![service_port("postgres", PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn server_env(pc: &PostCache) -> Vec<EnvVar> {
    vec![
        secret_env("POSTGRES_USER", &credentials_secret_name(pc), USERNAME_KEY),
        secret_env(
            "POSTGRES_PASSWORD",
            &credentials_secret_name(pc),
            PASSWORD_KEY,
        ),
        env("POSTGRES_DB", DATABASE),
        env("PGDATA", PGDATA),
        secret_env(
            "REPLICATION_USER",
            &replication_secret_name(pc),
            USERNAME_KEY,
        ),
        secret_env(
            "REPLICATION_PASSWORD",
            &replication_secret_name(pc),
            PASSWORD_KEY,
        ),
    ]
}

/// Resources of each instance: the spec's, else requests of `250m` CPU and `512Mi` memory with a
/// `1Gi` limit.
pub fn resources(pc: &PostCache) -> ResourceRequirements {
    pc.spec
        .postgres
        .resources
        .clone()
        .unwrap_or_else(|| pod_resources("250m", "512Mi", "1Gi"))
}

/// The data volume and the scratch directories every container of the pods writes to.
fn writable_mounts() -> Vec<VolumeMount> {
    vec![
        mount("data", DATA_DIR),
        mount("tmp", "/tmp"),
        mount("run", "/var/run/postgresql"),
    ]
}

/// `postgres` itself, started without the image's entrypoint (the init container has made the
/// data directory), as [`UID`].
fn server_container(pc: &PostCache, image: &str) -> Container {
    Container {
        name: "postgres".into(),
        image: Some(image.to_owned()),
        command: Some(vec!["postgres".into()]),
        args: Some(
            [
                "-c",
                "wal_level=replica",
                "-c",
                "max_wal_senders=16",
                "-c",
                "hot_standby=on",
                "-c",
                "listen_addresses=*",
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: Some(server_env(pc)),
        ports: Some(vec![container_port("postgres", PORT)]),
        readiness_probe: Some(exec_probe("pg_isready -h 127.0.0.1 -U \"$POSTGRES_USER\"")),
        resources: Some(resources(pc)),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(writable_mounts()),
        ..Container::default()
    }
}

fn stateful_set(
    pc: &PostCache,
    name: String,
    role: &str,
    replicas: i32,
    pod: PodSpec,
) -> StatefulSet {
    let mut pod_labels = labels(pc, Component::Postgres);
    pod_labels.insert(ROLE_LABEL.to_owned(), role.to_owned());
    let mut object = StatefulSet {
        metadata: meta(pc, name, Component::Postgres),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(headless_name(pc)),
            selector: LabelSelector {
                match_labels: Some(role_labels(pc, role)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    security_context: Some(restricted_pod_security_context(UID)),
                    ..pod
                }),
            },
            volume_claim_templates: Some(vec![volume_claim(
                "data",
                pc.spec.postgres.storage.as_ref(),
            )]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    if let Some(spec) = object.spec.as_mut() {
        apply_options(&mut spec.template, &pc.spec.postgres.pods);
    }
    object
}

/// A pod whose init container runs `script` (from the scripts ConfigMap, with `env`) on the data
/// volume before `postgres` starts on it.
fn scripted_pod(pc: &PostCache, image: &str, init: Container, script: &str) -> PodSpec {
    let init = Container {
        image: Some(image.to_owned()),
        command: Some(vec!["bash".into(), format!("{SCRIPTS_DIR}/{script}")]),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(
            writable_mounts()
                .into_iter()
                .chain([scripts_mount()])
                .collect(),
        ),
        ..init
    };
    PodSpec {
        init_containers: Some(vec![init]),
        containers: vec![server_container(pc, image)],
        volumes: Some(vec![
            scripts_volume(&crate::scripts::config_map_name(pc)),
            scratch_volume("tmp"),
            scratch_volume("run"),
        ]),
        ..PodSpec::default()
    }
}

fn primary(pc: &PostCache, image: &str) -> StatefulSet {
    let init = Container {
        name: "init".into(),
        env: Some(server_env(pc)),
        resources: Some(resources(pc)),
        ..Container::default()
    };
    let pod = scripted_pod(pc, image, init, PRIMARY_INIT_SCRIPT);
    stateful_set(pc, primary_name(pc), "primary", 1, pod)
}

/// The environment of `postgres-replica-seed.sh` (its interface: `PRIMARY_HOST`,
/// `PRIMARY_PORT`, `REPLICATION_USER`, `PGPASSWORD`, `PGDATA`).
pub fn seed_env(pc: &PostCache) -> Vec<EnvVar> {
    vec![
        env(
            "PRIMARY_HOST",
            format!(
                "{}.{}.svc",
                rw_service_name(pc),
                pc.namespace().unwrap_or_default()
            ),
        ),
        env("PRIMARY_PORT", PORT.to_string()),
        secret_env(
            "REPLICATION_USER",
            &replication_secret_name(pc),
            USERNAME_KEY,
        ),
        secret_env("PGPASSWORD", &replication_secret_name(pc), PASSWORD_KEY),
        env("PGDATA", PGDATA),
    ]
}

fn replicas(pc: &PostCache, image: &str) -> StatefulSet {
    let seed = Container {
        name: "seed".into(),
        env: Some(seed_env(pc)),
        ..Container::default()
    };
    let pod = scripted_pod(pc, image, seed, SEED_SCRIPT);
    stateful_set(pc, replica_name(pc), "replica", replica_count(pc), pod)
}

fn disruption_budget(pc: &PostCache) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(pc, primary_name(pc), Component::Postgres),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(pc, Component::Postgres)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
