//! Everything a PostCache should own, as one list of [`Child`]ren: the pure function the
//! reconciler applies and the snapshot tests render.

use crate::child::Child;
use crate::monitoring::MonitoringApis;
use crate::postgres::Passwords;
use crate::shards::ShardJob;
use crate::{PostCache, PostgresMode, RedisMode, monitoring, network, postgres, redis};
use crate::{scripts_config, service};

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
        out.push(scripts_config::child(pc, inputs.scripts));
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
