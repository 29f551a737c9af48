//! Small pieces of pod specs shared by the builders: environment variables (plain and by
//! `secretKeyRef`), the scripts volume, and the restricted security context.

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, EnvVar, EnvVarSource, SeccompProfile, SecretKeySelector,
    SecurityContext, Volume, VolumeMount,
};

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
/// `RuntimeDefault`: the restricted Pod Security Standard.
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}
