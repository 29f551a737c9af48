//! Small pieces of pod specs shared by the builders: environment variables (plain and by
//! `secretKeyRef`), ports, probes, claim templates, the scripts volume, scratch volumes, default
//! resources, the pod and container halves of the restricted Pod Security Standard, and a tier's
//! [`PodOptions`] applied to its pod templates.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ExecAction, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, ServicePort, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{PodOptions, PostCache, StorageSpec};
use crate::labels::Component;

/// Where the data-plane scripts ConfigMap is mounted.
pub const SCRIPTS_DIR: &str = "/scripts";
/// The volume name of the scripts ConfigMap.
pub const SCRIPTS_VOLUME: &str = "scripts";

/// A plain variable.
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// A variable read from a Secret's key: secrets never appear in a pod spec.
pub fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The scripts ConfigMap as a volume.
pub fn scripts_volume(config_map: &str) -> Volume {
    Volume {
        name: SCRIPTS_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            default_mode: Some(0o555),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Mounts [`scripts_volume`] read-only at [`SCRIPTS_DIR`].
pub fn scripts_mount() -> VolumeMount {
    VolumeMount {
        name: SCRIPTS_VOLUME.to_owned(),
        mount_path: SCRIPTS_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Non-root, read-only root filesystem, no privilege escalation, no capabilities, seccomp
/// `RuntimeDefault`: the container half of the restricted Pod Security Standard. Every container
/// and init container gets it; what a process writes goes to a volume ([`scratch_volume`]).
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// The pod half of the restricted Pod Security Standard, running every container as `uid` (user
/// and group) whatever the image's `USER` says, so no entrypoint needs root to switch users.
/// Volumes belong to group `uid`; a volume whose root already does is not walked again on each
/// start (`OnRootMismatch`), which also leaves PostgreSQL's `0700` data directory as it is.
pub fn restricted_pod_security_context(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        fs_group_change_policy: Some("OnRootMismatch".to_owned()),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// An `emptyDir` volume: where a process on a read-only root filesystem writes what it must
/// (`/tmp`, a socket directory).
pub fn scratch_volume(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// Mounts volume `name` read-write at `path`.
pub fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    }
}

/// Requests of `cpu` and `memory` and a limit of `memory_limit`: the defaults of a tier whose
/// spec sets no resources. CPU has a request (the HPA's utilization is relative to it) and no
/// limit (throttling only adds latency); memory has both, so a node never overcommits it.
pub fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    let quantity = |q: &str| Quantity(q.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity(cpu)),
            ("memory".to_owned(), quantity(memory)),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            quantity(memory_limit),
        )])),
        claims: None,
    }
}

/// A named TCP Service port to the same container port.
pub fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// Pod template metadata: the standard labels of `component`.
pub fn pod_meta(pc: &PostCache, component: Component) -> ObjectMeta {
    ObjectMeta {
        labels: Some(crate::labels::labels(pc, component)),
        ..ObjectMeta::default()
    }
}

/// A named TCP container port.
pub fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

/// A probe running `shell` with `sh -c`.
pub fn exec_probe(shell: &str) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec!["sh".into(), "-c".into(), shell.to_owned()]),
        }),
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        ..Probe::default()
    }
}

/// A claim template of `storage` (default `1Gi` on the cluster's default class).
pub fn volume_claim(name: &str, storage: Option<&StorageSpec>) -> PersistentVolumeClaim {
    let size = storage.map_or("1Gi", |s| s.size.as_str());
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.and_then(|s| s.storage_class_name.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(size.to_owned()),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// Applies a tier's [`PodOptions`] to one of its pod templates: placement and pull secrets
/// replace nothing the operator sets; added labels never replace the operator's (its selectors
/// depend on them); added variables come after the operator's in every container, so one of the
/// same name wins.
pub fn apply_options(template: &mut PodTemplateSpec, options: &PodOptions) {
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    if !options.pod_labels.is_empty() {
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        for (key, value) in &options.pod_labels {
            labels.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    if !options.pod_annotations.is_empty() {
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(options.pod_annotations.clone());
    }
    let Some(spec) = template.spec.as_mut() else {
        return;
    };
    if !options.node_selector.is_empty() {
        spec.node_selector = Some(options.node_selector.clone());
    }
    if !options.tolerations.is_empty() {
        spec.tolerations = Some(options.tolerations.clone());
    }
    if options.affinity.is_some() {
        spec.affinity.clone_from(&options.affinity);
    }
    if !options.topology_spread_constraints.is_empty() {
        spec.topology_spread_constraints = Some(options.topology_spread_constraints.clone());
    }
    if !options.image_pull_secrets.is_empty() {
        spec.image_pull_secrets = Some(options.image_pull_secrets.clone());
    }
    if !options.env.is_empty() {
        let containers = spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten());
        for container in containers {
            container
                .env
                .get_or_insert_with(Vec::new)
                .extend(options.env.iter().cloned());
        }
    }
}
