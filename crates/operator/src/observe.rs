//! Reading what the children report: StatefulSet and Deployment counts, the state of the current
//! shard step's Job, and which monitoring kinds API discovery lists. The reconciler's inputs to
//! the pure [`crate::shards::plan`] and [`crate::status::compute`].

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;
use kube::{Client, Resource};

use crate::crd::{PostCache, PostCacheStatus, RedisMode};
use crate::error::Error;
use crate::monitoring::{self, MonitoringApis};
use crate::shards::{self, JobState, ShardPlan};
use crate::status::{Counts, Observed};
use crate::{postgres, redis, service};

pub(crate) async fn discover_monitoring(client: &Client) -> Result<MonitoringApis, Error> {
    let version = format!("{}/{}", monitoring::GROUP, monitoring::VERSION);
    match client.list_api_group_resources(&version).await {
        Ok(list) => {
            let has = |plural: &str| list.resources.iter().any(|r| r.name == plural);
            Ok(MonitoringApis {
                service_monitor: has("servicemonitors"),
                prometheus_rule: has("prometheusrules"),
            })
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(MonitoringApis::default()),
        Err(e) => Err(Error::Discovery(e)),
    }
}

async fn get_opt<K>(client: &Client, ns: &str, name: &str) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|source| Error::Read {
            what: format!("{}/{name}", K::kind(&())),
            source,
        })
}

fn sts_counts(sts: Option<&StatefulSet>) -> Counts {
    let desired = sts
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let status = sts.and_then(|s| s.status.as_ref());
    Counts {
        desired,
        current: status.map_or(0, |s| s.replicas),
        ready: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        updated: status.and_then(|s| s.updated_replicas).unwrap_or(0),
    }
}

fn deployment_counts(d: Option<&Deployment>) -> Counts {
    let desired = d
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let status = d.and_then(|d| d.status.as_ref());
    Counts {
        desired,
        current: status.and_then(|s| s.replicas).unwrap_or(0),
        ready: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        updated: status.and_then(|s| s.updated_replicas).unwrap_or(0),
    }
}

fn job_state(job: Option<&Job>) -> JobState {
    let Some(job) = job else {
        return JobState::Absent;
    };
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    let has = |t: &str| {
        conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
    };
    if has("Complete") {
        JobState::Complete
    } else if has("Failed") {
        JobState::Failed
    } else {
        JobState::Running
    }
}

/// The shard step of a Cluster-mode PostCache, from its recorded status and what is observed.
pub(crate) async fn plan_shards(
    pc: &PostCache,
    client: &Client,
    ns: &str,
    old: &PostCacheStatus,
) -> Result<Option<ShardPlan>, Error> {
    if pc.spec.redis.mode != RedisMode::Cluster {
        return Ok(None);
    }
    let recorded = old.redis.clone().unwrap_or_default();
    let sts = get_opt::<StatefulSet>(client, ns, &redis::name(pc)).await?;
    let counts = sts_counts(sts.as_ref());
    let job = match &recorded.shard_change {
        Some(change) => {
            let name = redis::job_name(pc, &shards::job_of(change));
            job_state(get_opt::<Job>(client, ns, &name).await?.as_ref())
        }
        None => JobState::Absent,
    };
    let observed = shards::Observed {
        ready_nodes: counts.ready,
        nodes: counts.current,
        job,
    };
    let per_shard = redis::nodes_per_shard(&pc.spec.redis);
    let plan = shards::plan(
        pc.spec.redis.shards,
        recorded.shards,
        recorded.shard_change.as_ref(),
        per_shard,
        observed,
    );
    Ok(Some(plan))
}

pub(crate) async fn observe(
    pc: &PostCache,
    client: &Client,
    ns: &str,
    shards: Option<ShardPlan>,
    apis: MonitoringApis,
) -> Result<Observed, Error> {
    let redis_counts = if pc.spec.redis.mode == RedisMode::External {
        None
    } else {
        let sts = get_opt::<StatefulSet>(client, ns, &redis::name(pc)).await?;
        Some(sts_counts(sts.as_ref()))
    };
    let postgres_counts = if pc.spec.postgres.mode == crate::crd::PostgresMode::External {
        None
    } else {
        let primary = get_opt::<StatefulSet>(client, ns, &postgres::primary_name(pc)).await?;
        let replicas = get_opt::<StatefulSet>(client, ns, &postgres::replica_name(pc)).await?;
        Some((sts_counts(primary.as_ref()), sts_counts(replicas.as_ref())))
    };
    let deployment = get_opt::<Deployment>(client, ns, &service::name(pc)).await?;
    let mut service_counts = deployment_counts(deployment.as_ref());
    let autoscaling = &pc.spec.service.autoscaling;
    if autoscaling.enabled {
        // The HPA raises a fresh Deployment to its minimum; not ready before that.
        service_counts.desired = service_counts.desired.max(autoscaling.min_replicas.max(1));
    }
    let m = &pc.spec.monitoring;
    let mut missing = Vec::new();
    if m.service_monitor && !apis.service_monitor {
        missing.push("servicemonitors.monitoring.coreos.com");
    }
    if m.prometheus_rule && !apis.prometheus_rule {
        missing.push("prometheusrules.monitoring.coreos.com");
    }
    Ok(Observed {
        redis: redis_counts,
        shards,
        postgres: postgres_counts,
        service: service_counts,
        monitoring_missing: missing,
    })
}
