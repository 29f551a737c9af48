//! `postcache operator`'s options: one typed clap struct, each flag with its `POSTCACHE_OPERATOR_*`
//! env twin (the Helm chart maps its values onto exactly these).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::desired::Images;

/// Where a pod finds its namespace.
const IN_CLUSTER_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Options of `postcache operator`.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Address of the operator's HTTP server: `/metrics`, `/healthz`, `/readyz`.
    #[arg(
        long,
        env = "POSTCACHE_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_addr: SocketAddr,

    /// Reconcile only while holding the Lease (run two replicas for availability).
    #[arg(
        long,
        env = "POSTCACHE_OPERATOR_LEADER_ELECTION",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub leader_election: bool,

    /// Name of the coordination.k8s.io Lease the replicas compete for.
    #[arg(
        long,
        env = "POSTCACHE_OPERATOR_LEASE_NAME",
        default_value = "postcache-operator"
    )]
    pub lease_name: String,

    /// Namespace of the Lease (default: the pod's own namespace, else `default`).
    #[arg(long, env = "POSTCACHE_OPERATOR_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a Lease holds without renewal; a standby takes over after this.
    #[arg(
        long,
        env = "POSTCACHE_OPERATOR_LEASE_DURATION_SECONDS",
        default_value_t = 15
    )]
    pub lease_duration_seconds: u64,

    /// This replica's name in the Lease and in Events (default: host name and process id).
    #[arg(long, env = "POSTCACHE_OPERATOR_IDENTITY")]
    pub identity: Option<String>,

    /// Only PostCaches of this namespace (empty: every namespace).
    #[arg(long, env = "POSTCACHE_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// PostCache image for specs that name none.
    #[arg(
        long,
        env = "POSTCACHE_OPERATOR_SERVICE_IMAGE",
        default_value = "ghcr.io/postcache/postcache:0.1.0"
    )]
    pub default_service_image: String,

    /// Redis image for specs that name none.
    #[arg(
        long,
        env = "POSTCACHE_OPERATOR_REDIS_IMAGE",
        default_value = "redis:7.2"
    )]
    pub default_redis_image: String,

    /// PostgreSQL image for specs that name none.
    #[arg(
        long,
        env = "POSTCACHE_OPERATOR_POSTGRES_IMAGE",
        default_value = "postgres:16"
    )]
    pub default_postgres_image: String,
}

impl OperatorArgs {
    /// The default images.
    pub fn images(&self) -> Images {
        Images {
            service: self.default_service_image.clone(),
            redis: self.default_redis_image.clone(),
            postgres: self.default_postgres_image.clone(),
        }
    }

    /// `--watch-namespace`, with empty meaning every namespace.
    pub fn watch_namespace(&self) -> Option<&str> {
        self.watch_namespace.as_deref().filter(|ns| !ns.is_empty())
    }

    /// `--lease-namespace`, else the in-cluster namespace file, else `default`.
    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .or_else(|| {
                std::fs::read_to_string(Path::new(IN_CLUSTER_NAMESPACE_FILE))
                    .ok()
                    .map(|ns| ns.trim().to_owned())
            })
            .unwrap_or_else(|| "default".to_owned())
    }

    /// `--lease-duration-seconds` as a duration (at least a second).
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_duration_seconds.max(1))
    }

    /// `--identity`, else `<host name>-<pid>`.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "postcache-operator".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: OperatorArgs,
    }

    #[test]
    fn the_agreed_flags_parse_with_their_defaults() {
        let cli = Cli::try_parse_from(["op"]).unwrap();
        let a = cli.args;
        assert_eq!(a.metrics_addr.to_string(), "0.0.0.0:9090");
        assert!(a.leader_election);
        assert_eq!(a.lease_name, "postcache-operator");
        assert_eq!(a.default_service_image, "ghcr.io/postcache/postcache:0.1.0");
        assert_eq!(a.default_redis_image, "redis:7.2");
        assert_eq!(a.default_postgres_image, "postgres:16");
        assert_eq!(a.watch_namespace(), None);

        let cli = Cli::try_parse_from([
            "op",
            "--leader-election=false",
            "--watch-namespace",
            "",
            "--lease-namespace",
            "ops",
        ])
        .unwrap();
        assert!(!cli.args.leader_election);
        assert_eq!(cli.args.watch_namespace(), None);
        assert_eq!(cli.args.lease_namespace(), "ops");
    }
}
