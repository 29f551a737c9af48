//! The PostCache's status from what its children report: counts, the four conditions (and the
//! monitoring one), the phase, the scale subresource's selector and the endpoint. Pure; the
//! controller patches the result only when it differs from the stored status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{
    Endpoints, Phase, PostCache, PostCacheStatus, PostgresMode, PostgresStatus, RedisMode,
    RedisStatus, ServiceStatus, ShardStep,
};
use crate::labels::{Component, selector_string};
use crate::service;
use crate::shards::ShardPlan;

/// `Ready`: every component is ready.
pub const READY: &str = "Ready";
/// `RedisReady`.
pub const REDIS_READY: &str = "RedisReady";
/// `PostgresReady`.
pub const POSTGRES_READY: &str = "PostgresReady";
/// `ServiceReady`.
pub const SERVICE_READY: &str = "ServiceReady";
/// `Monitoring`: whether the monitoring objects could be created (reason `CrdMissing` when not).
pub const MONITORING: &str = "Monitoring";

/// Replica counts of a StatefulSet or Deployment: desired (spec), current and ready (status).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `spec.replicas`.
    pub desired: i32,
    /// `status.replicas`.
    pub current: i32,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// `status.updatedReplicas` (all pods run the latest template).
    pub updated: i32,
}

impl Counts {
    fn is_ready(&self) -> bool {
        self.ready >= self.desired && self.current == self.desired && self.updated >= self.desired
    }
}

/// What the reconcile observed.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The Redis StatefulSet (absent in External mode).
    pub redis: Option<Counts>,
    /// The shard plan of this reconcile (Cluster mode).
    pub shards: Option<ShardPlan>,
    /// Primary and replica StatefulSets (absent in External mode).
    pub postgres: Option<(Counts, Counts)>,
    /// The service Deployment.
    pub service: Counts,
    /// Monitoring kinds wanted by the spec that the apiserver does not serve.
    pub monitoring_missing: Vec<&'static str>,
}

struct Verdict {
    ready: bool,
    reason: &'static str,
    message: String,
}

fn verdict(ready: bool, reason: &'static str, message: impl Into<String>) -> Verdict {
    Verdict {
        ready,
        reason,
        message: message.into(),
    }
}

fn redis_verdict(pc: &PostCache, o: &Observed) -> Verdict {
    if pc.spec.redis.mode == RedisMode::External {
        return verdict(true, "External", "Redis is external");
    }
    let counts = o.redis.unwrap_or_default();
    if let Some(plan) = &o.shards {
        if plan.failed {
            return verdict(
                false,
                "ShardJobFailed",
                "the shard Job failed; it is retried",
            );
        }
        if let Some(change) = &plan.change {
            let reason = match change.step {
                ShardStep::ScaleNodes if change.from == 0 => "Provisioning",
                ShardStep::Bootstrap => "Bootstrapping",
                _ => "Resharding",
            };
            let message = format!(
                "shards {} → {}: step {:?}",
                change.from, change.to, change.step
            );
            return verdict(false, reason, message);
        }
    }
    if counts.is_ready() {
        verdict(
            true,
            "Ready",
            format!("{} of {} nodes ready", counts.ready, counts.desired),
        )
    } else {
        verdict(
            false,
            "NodesNotReady",
            format!("{} of {} nodes ready", counts.ready, counts.desired),
        )
    }
}

fn postgres_verdict(pc: &PostCache, o: &Observed) -> Verdict {
    if pc.spec.postgres.mode == PostgresMode::External {
        return verdict(true, "External", "PostgreSQL is external");
    }
    let (primary, replicas) = o.postgres.unwrap_or_default();
    let message = format!(
        "primary {}/{} ready, replicas {}/{} ready",
        primary.ready, primary.desired, replicas.ready, replicas.desired
    );
    if primary.is_ready() && replicas.is_ready() {
        verdict(true, "Ready", message)
    } else {
        verdict(false, "InstancesNotReady", message)
    }
}

fn service_verdict(o: &Observed) -> Verdict {
    let s = o.service;
    let message = format!("{} of {} pods ready", s.ready, s.desired);
    if s.is_ready() {
        verdict(true, "Ready", message)
    } else {
        verdict(false, "PodsNotReady", message)
    }
}

fn condition(type_: &str, v: &Verdict, generation: Option<i64>, now: &Time) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if v.ready { "True" } else { "False" }.to_owned(),
        reason: v.reason.to_owned(),
        message: v.message.clone(),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// The new status; conditions whose status did not change keep their transition time, so an
/// unchanged world yields a status equal to `old`.
pub fn compute(pc: &PostCache, o: &Observed, old: &PostCacheStatus, now: Time) -> PostCacheStatus {
    let generation = pc.metadata.generation;
    let redis = redis_verdict(pc, o);
    let postgres = postgres_verdict(pc, o);
    let service = service_verdict(o);
    let not_ready: Vec<&str> = [
        (&redis, "Redis"),
        (&postgres, "PostgreSQL"),
        (&service, "service"),
    ]
    .iter()
    .filter(|(v, _)| !v.ready)
    .map(|(_, name)| *name)
    .collect();
    let ready = if not_ready.is_empty() {
        verdict(
            true,
            "AllComponentsReady",
            "Redis, PostgreSQL and the service are ready",
        )
    } else {
        verdict(
            false,
            "ComponentsNotReady",
            format!("not ready: {}", not_ready.join(", ")),
        )
    };
    let monitoring = if o.monitoring_missing.is_empty() {
        verdict(
            true,
            "Applied",
            "monitoring objects applied as the spec asks",
        )
    } else {
        verdict(
            false,
            "CrdMissing",
            format!(
                "not served by the apiserver, not created: {}",
                o.monitoring_missing.join(", ")
            ),
        )
    };
    let mut conditions: Vec<Condition> = [
        (READY, &ready),
        (REDIS_READY, &redis),
        (POSTGRES_READY, &postgres),
        (SERVICE_READY, &service),
        (MONITORING, &monitoring),
    ]
    .iter()
    .map(|(t, v)| condition(t, v, generation, &now))
    .collect();
    for c in &mut conditions {
        if let Some(prev) = old
            .conditions
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
        {
            c.last_transition_time = prev.last_transition_time.clone();
        }
    }
    let phase = if ready.ready {
        Phase::Ready
    } else if service.ready || redis.reason == "ShardJobFailed" {
        Phase::Degraded
    } else {
        Phase::Provisioning
    };
    PostCacheStatus {
        phase: Some(phase),
        observed_generation: generation,
        conditions,
        redis: redis_status(pc, o),
        postgres: o.postgres.map(|(primary, replicas)| PostgresStatus {
            ready_instances: primary.ready + replicas.ready,
            instances: primary.desired + replicas.desired,
        }),
        service: Some(ServiceStatus {
            ready_replicas: o.service.ready,
            replicas: o.service.current,
            selector: selector_string(pc, Component::Service),
        }),
        endpoints: Some(Endpoints {
            http: service::endpoint(pc),
        }),
    }
}

fn redis_status(pc: &PostCache, o: &Observed) -> Option<RedisStatus> {
    let counts = o.redis?;
    let (shards, shard_change) = match &o.shards {
        Some(plan) if pc.spec.redis.mode == RedisMode::Cluster => {
            (plan.shards, plan.change.clone())
        }
        _ => (None, None),
    };
    Some(RedisStatus {
        ready_nodes: counts.ready,
        nodes: counts.desired,
        shards,
        shard_change,
    })
}

/// A JSON merge patch turning `old` into `new`: `new`, plus `null` for every key of `old` that
/// `new` lacks (objects recursively; arrays and scalars are replaced whole).
pub fn merge_patch(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = serde_json::Map::new();
            for (key, value) in n {
                let patched = match o.get(key) {
                    Some(old_value) => merge_patch(old_value, value),
                    None => value.clone(),
                };
                out.insert(key.clone(), patched);
            }
            for key in o.keys().filter(|k| !n.contains_key(*k)) {
                out.insert(key.clone(), Value::Null);
            }
            Value::Object(out)
        }
        (_, new) => new.clone(),
    }
}

/// `<namespace>/<name>` for logs.
pub fn object_key(pc: &PostCache) -> String {
    format!("{}/{}", pc.namespace().unwrap_or_default(), pc.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_merge_patch_removes_what_the_new_status_lacks() {
        let old = json!({"phase": "Provisioning", "redis": {"shards": 3, "shardChange": {"from": 3, "to": 4}}});
        let new = json!({"phase": "Ready", "redis": {"shards": 4}});
        assert_eq!(
            merge_patch(&old, &new),
            json!({"phase": "Ready", "redis": {"shards": 4, "shardChange": null}})
        );
    }
}
