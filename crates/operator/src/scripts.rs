//! The data-plane scripts: what runs inside the Redis and PostgreSQL pods, embedded in the
//! operator so that what it renders into ConfigMaps and Jobs is byte for byte what the tests run
//! against local `redis-server` and PostgreSQL processes.
//!
//! ```text
//! operator ──ConfigMap──▶ Job (redis image)        redis-cluster.sh bootstrap | add-shards | drain-shards
//!          ──ConfigMap──▶ primary init container   postgres-primary-init.sh ─▶ initdb, database, roles
//!          ──ConfigMap──▶ replica init container   postgres-replica-seed.sh ─▶ pg_basebackup -R
//! ```
//! Each is bash (present in the Debian-based official images and in the images the tests build
//! from Debian's packages), idempotent and resumable, and configured only through its
//! environment; passwords never appear on a command line. They call programs by name on `PATH`
//! and never an image's entrypoint script. They reach the pods in the `<name>-scripts` ConfigMap
//! ([`config_map`]). Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use crate::child::Child;
use crate::crd::PostCache;
use crate::labels::{Component, child_name, meta};

/// Forms and reshapes a Redis Cluster: `bootstrap`, `add-shards`, `drain-shards`.
///
/// Env: `REDIS_NODES` (every node's `host:port`, space-separated, in pod-ordinal order; the first
/// `REDIS_SHARDS × (1 + REDIS_REPLICAS_PER_SHARD)` stay, the rest are leaving), `REDIS_SHARDS`
/// (target masters), `REDIS_REPLICAS_PER_SHARD`, optional `REDIS_PASSWORD` (handed to redis-cli as
/// `REDISCLI_AUTH`), optional `REDIS_TIMEOUT_SECONDS` (300). Slots always move before a master is
/// removed, so no key is lost; each step re-reads the cluster, so a rerun finishes an interrupted one.
pub const REDIS_CLUSTER: &str = include_str!("../scripts/redis-cluster.sh");

/// Creates the primary's data directory when there is none: initdb (staged beside `PGDATA`,
/// renamed into place only when complete), the database, the replication role and their
/// `pg_hba.conf` entries.
///
/// Env: `PGDATA`, `POSTGRES_USER` (the superuser), `POSTGRES_PASSWORD`, `POSTGRES_DB`,
/// `REPLICATION_USER`, `REPLICATION_PASSWORD`. Needs `initdb`, `pg_ctl` and `psql` on `PATH`.
pub const POSTGRES_PRIMARY_INIT: &str = include_str!("../scripts/postgres-primary-init.sh");

/// Seeds an empty replica data directory with `pg_basebackup -R -X stream`; does nothing when
/// `PGDATA` already holds one.
///
/// Env: `PRIMARY_HOST`, `PRIMARY_PORT`, `REPLICATION_USER`, `PGPASSWORD`, `PGDATA` (a
/// subdirectory of the volume: a mount root may hold `lost+found`, which the script refuses to
/// overwrite), optional `SEED_TIMEOUT_SECONDS` (300).
pub const POSTGRES_REPLICA_SEED: &str = include_str!("../scripts/postgres-replica-seed.sh");

/// Every script as the ConfigMap holds it: `(file name, contents)`.
pub const SCRIPTS: Scripts = &[
    (CLUSTER_SCRIPT, REDIS_CLUSTER),
    (PRIMARY_INIT_SCRIPT, POSTGRES_PRIMARY_INIT),
    (SEED_SCRIPT, POSTGRES_REPLICA_SEED),
];

/// The data-plane scripts as `(file name, contents)`.
pub type Scripts = &'static [(&'static str, &'static str)];

/// [`REDIS_CLUSTER`]'s file name in the ConfigMap.
pub const CLUSTER_SCRIPT: &str = "redis-cluster.sh";
/// [`POSTGRES_PRIMARY_INIT`]'s file name: the primary's init container runs it.
pub const PRIMARY_INIT_SCRIPT: &str = "postgres-primary-init.sh";
/// [`POSTGRES_REPLICA_SEED`]'s file name: each replica's init container runs it.
pub const SEED_SCRIPT: &str = "postgres-replica-seed.sh";

/// `<name>-scripts`.
pub fn config_map_name(pc: &PostCache) -> String {
    child_name(pc, "scripts")
}

/// The ConfigMap holding `scripts` as `(file name, contents)`.
pub fn config_map(pc: &PostCache, scripts: &[(&str, &str)]) -> Child {
    let data = scripts
        .iter()
        .map(|(file, text)| ((*file).to_owned(), (*text).to_owned()))
        .collect::<BTreeMap<_, _>>();
    Child::new(&ConfigMap {
        metadata: meta(pc, config_map_name(pc), Component::Scripts),
        data: Some(data),
        ..ConfigMap::default()
    })
}
