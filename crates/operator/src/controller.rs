//! The controller: watches PostCaches (and the StatefulSets, Deployments and Jobs they own),
//! and for each one applies the desired children, advances the Redis shard step, prunes what is
//! no longer wanted, and writes the status when it changed. The process around it is
//! [`crate::operator`].
//!
//! ```text
//! PostCache ─▶ reconcile: observe ─▶ shards::plan ─▶ desired ─▶ apply / prune ─▶ status
//!                  ▲                                                       │
//!   owned StatefulSet / Deployment / Job changes ◀──── kube-controller-manager
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::apply::{self, Outcome};
use crate::child::Child;
use crate::crd::{PostCache, PostCacheStatus};
use crate::desired::{Generated, Images, Inputs, desired};
use crate::error::Error;
use crate::labels::{FIELD_MANAGER, MANAGED_BY_LABEL, children_selector};
use crate::monitoring::{self, MonitoringApis};
use crate::postgres::Passwords;
use crate::status;
use crate::{metrics, observe, redis};

/// Everything a reconcile needs besides the object.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Default images.
    pub images: Images,
    /// The scripts ConfigMap's contents.
    pub scripts: crate::scripts::Scripts,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
    reconciles: AtomicU64,
}

impl Context {
    /// A context publishing Events as `identity`.
    pub fn new(
        client: Client,
        images: Images,
        scripts: crate::scripts::Scripts,
        identity: &str,
    ) -> Arc<Context> {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(identity.to_owned()),
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            images,
            scripts,
            failures: Mutex::new(HashMap::new()),
            reconciles: AtomicU64::new(0),
        })
    }

    /// Reconciles completed successfully so far (tests wait on it to know one has run).
    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::SeqCst)
    }

    /// Publishes an Event about `pc`. The recorder folds Events with equal type, reason and
    /// `action` into one series (keeping the first note), so `action` names the specific change.
    async fn publish(
        &self,
        pc: &PostCache,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: action.chars().take(128).collect(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &pc.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an Event failed");
        }
    }
}

/// Runs the controller over PostCaches in `namespace` (all when `None`) until the stream ends.
pub async fn run_controller(ctx: Arc<Context>, namespace: Option<&str>) {
    let client = ctx.client.clone();
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    let (pcs, sts, deploys, jobs) = match namespace {
        Some(ns) => (
            Api::<PostCache>::namespaced(client.clone(), ns),
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<Job>::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    Controller::new(pcs, watcher::Config::default())
        .owns(sts, owned.clone())
        .owns(deploys, owned.clone())
        .owns(jobs, owned)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not complete");
            }
        })
        .await;
}

/// Consecutive failed reconciles after which the phase says `Failed`.
const FAILED_AFTER: u32 = 3;

/// Sets `status.phase: Failed` (a merge patch of that one field; the next successful reconcile
/// applies the whole status again).
async fn mark_failed(client: &Client, pc: &PostCache) {
    let Some(ns) = pc.namespace() else {
        return;
    };
    let api: Api<PostCache> = Api::namespaced(client.clone(), &ns);
    let patch = json!({"status": {"phase": crate::crd::Phase::Failed}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    if let Err(e) = api
        .patch_status(&pc.name_any(), &params, &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(error = %e, "marking the PostCache Failed");
    }
}

fn error_policy(pc: Arc<PostCache>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = status::object_key(&pc);
    let failures = {
        let mut map = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    ::metrics::counter!(metrics::RECONCILIATIONS, "result" => error.category()).increment(1);
    tracing::warn!(postcache = %key, category = error.category(), error = %error, "reconcile failed");
    let note = error.to_string();
    let reason = error.category();
    tokio::spawn(async move {
        ctx.publish(&pc, EventType::Warning, reason, "Reconcile", note)
            .await;
        if failures >= FAILED_AFTER {
            mark_failed(&ctx.client, &pc).await;
        }
    });
    let backoff = Duration::from_secs(1 << failures.min(8)).min(Duration::from_secs(300));
    Action::requeue(backoff)
}

async fn reconcile(pc: Arc<PostCache>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&pc, &ctx).await;
    ::metrics::histogram!(metrics::RECONCILE_DURATION).record(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.reconciles.fetch_add(1, Ordering::SeqCst);
        ::metrics::counter!(metrics::RECONCILIATIONS, "result" => "ok").increment(1);
        let mut map = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&status::object_key(&pc));
    }
    result
}

async fn reconcile_inner(pc: &PostCache, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = pc.namespace().ok_or(Error::Malformed("namespace"))?;
    let uid = pc.uid().ok_or(Error::Malformed("uid"))?;
    let old = pc.status.clone().unwrap_or_default();
    let apis = observe::discover_monitoring(client).await?;

    let plan = observe::plan_shards(pc, client, &ns, &old).await?;
    let generated = generate()?;
    let inputs = Inputs {
        images: &ctx.images,
        redis_node_shards: plan
            .as_ref()
            .map_or(pc.spec.redis.shards, |p| p.node_shards),
        redis_job: plan.as_ref().and_then(|p| p.job),
        monitoring: apis,
        generated: &generated,
        scripts: ctx.scripts,
    };
    let children = desired(pc, &inputs);
    let mut writes = apply_children(client, &ns, &children).await?;
    let finished_job = plan.as_ref().and_then(|p| p.finished_job);
    for deleted in prune(client, &ns, pc, &uid, &children, apis).await? {
        writes.written.push(("deleted", deleted));
    }
    record_writes(pc, ctx, &writes).await;

    let observed = observe::observe(pc, client, &ns, plan, apis).await?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new = status::compute(pc, &observed, &old, now);
    if new != old {
        publish_transitions(pc, ctx, &old, &new).await;
        write_status(client, pc, &ns, &old, &new).await?;
    }
    // Only once the status records that its step is done: the reconcile the deletion triggers
    // must not read the old step and create the Job again (it once ran twice, a copy left behind).
    if let Some(job) = finished_job {
        let resource = ApiResource::erase::<Job>(&());
        apply::delete(client, &ns, &resource, &redis::job_name(pc, &job)).await?;
    }
    let busy = new.phase != Some(crate::crd::Phase::Ready);
    Ok(Action::requeue(if busy {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(300)
    }))
}

/// What applying the children did.
#[derive(Debug, Default)]
struct Writes {
    /// `(created|updated|deleted, Kind/name)`.
    written: Vec<(&'static str, String)>,
    /// StatefulSets that kept their live volume claim templates.
    kept_storage: Vec<String>,
}

/// Applies every child.
async fn apply_children(client: &Client, ns: &str, children: &[Child]) -> Result<Writes, Error> {
    let mut writes = Writes::default();
    for child in children {
        let applied = apply::apply(client, ns, child).await?;
        match applied.outcome {
            Outcome::Created => writes.written.push(("created", child.id())),
            Outcome::Updated => writes.written.push(("updated", child.id())),
            Outcome::Unchanged => {}
        }
        if applied.kept_claim_templates {
            writes.kept_storage.push(child.id());
        }
    }
    Ok(writes)
}

/// Counts the writes by kind and outcome and publishes an `Applied` Event listing them, and a
/// `StorageNotResized` warning for StatefulSets whose storage could not change.
async fn record_writes(pc: &PostCache, ctx: &Context, writes: &Writes) {
    if !writes.kept_storage.is_empty() {
        let note = format!(
            "{}: volume claim templates cannot change, the new storage size is not applied \
             (resize the PersistentVolumeClaims)",
            writes.kept_storage.join(", ")
        );
        ctx.publish(
            pc,
            EventType::Warning,
            "StorageNotResized",
            "KeepVolumeClaims",
            note,
        )
        .await;
    }
    if writes.written.is_empty() {
        return;
    }
    for (outcome, id) in &writes.written {
        let kind = id.split('/').next().unwrap_or_default().to_owned();
        ::metrics::counter!(metrics::CHILD_WRITES, "kind" => kind, "outcome" => *outcome)
            .increment(1);
    }
    let note = writes
        .written
        .iter()
        .map(|(outcome, id)| format!("{outcome} {id}"))
        .collect::<Vec<_>>()
        .join(", ");
    let action = format!(
        "ApplyGeneration{}",
        pc.metadata.generation.unwrap_or_default()
    );
    ctx.publish(pc, EventType::Normal, "Applied", &action, note)
        .await;
}

/// Values for Secrets that may need generating (used only when the Secret is absent).
fn generate() -> Result<Generated, Error> {
    Ok(Generated {
        redis_password: random_token()?,
        postgres: Passwords {
            user: random_token()?,
            replication: random_token()?,
        },
        api_token: random_token()?,
    })
}

/// 32 random bytes as 64 hex characters (URL-safe, so it can sit in a connection URL).
fn random_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Deletes children of the kinds the operator makes that are no longer desired. Secrets (generated
/// credentials) and Jobs (see the shard plan) are left alone.
async fn prune(
    client: &Client,
    ns: &str,
    pc: &PostCache,
    uid: &str,
    children: &[Child],
    apis: MonitoringApis,
) -> Result<Vec<String>, Error> {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let mut kinds = vec![
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<ServiceAccount>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
        ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
    ];
    let gvk =
        |kind| kube::core::GroupVersionKind::gvk(monitoring::GROUP, monitoring::VERSION, kind);
    if apis.service_monitor {
        kinds.push(ApiResource::from_gvk_with_plural(
            &gvk("ServiceMonitor"),
            "servicemonitors",
        ));
    }
    if apis.prometheus_rule {
        kinds.push(ApiResource::from_gvk_with_plural(
            &gvk("PrometheusRule"),
            "prometheusrules",
        ));
    }
    let mut keep: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for child in children {
        keep.entry(child.resource.kind.as_str())
            .or_default()
            .insert(child.object.name_any());
    }
    let selector = children_selector(pc);
    let empty = BTreeSet::new();
    let mut deleted = Vec::new();
    for kind in &kinds {
        let keep = keep.get(kind.kind.as_str()).unwrap_or(&empty);
        deleted.extend(apply::prune(client, ns, kind, &selector, uid, keep).await?);
    }
    Ok(deleted)
}

async fn publish_transitions(
    pc: &PostCache,
    ctx: &Context,
    old: &PostCacheStatus,
    new: &PostCacheStatus,
) {
    if old.phase != new.phase
        && let Some(phase) = new.phase
    {
        let type_ = if matches!(
            phase,
            crate::crd::Phase::Degraded | crate::crd::Phase::Failed
        ) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let detail = new
            .conditions
            .iter()
            .find(|c| c.type_ == status::READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.publish(pc, type_, &format!("{phase:?}"), "Phase", detail)
            .await;
    }
    let step = |s: &PostCacheStatus| s.redis.as_ref().and_then(|r| r.shard_change.clone());
    if step(old) != step(new) {
        let settled = new
            .redis
            .as_ref()
            .and_then(|r| r.shards)
            .unwrap_or_default();
        let (action, note) = match step(new) {
            Some(c) => (
                format!("{:?}{}To{}", c.step, c.from, c.to),
                format!("Redis shards {} → {}: {:?}", c.from, c.to, c.step),
            ),
            None => (
                format!("Settled{settled}"),
                format!("Redis shards settled at {settled}"),
            ),
        };
        ctx.publish(pc, EventType::Normal, "ShardStep", &action, note)
            .await;
    }
}

/// Writes `new` as a JSON merge patch that also nulls what `old` had and `new` lacks (a finished
/// shard change), so the status is exactly `new` whoever wrote the old fields.
async fn write_status(
    client: &Client,
    pc: &PostCache,
    ns: &str,
    old: &PostCacheStatus,
    new: &PostCacheStatus,
) -> Result<(), Error> {
    let api: Api<PostCache> = Api::namespaced(client.clone(), ns);
    let old = serde_json::to_value(old).unwrap_or_default();
    let new = serde_json::to_value(new).unwrap_or_default();
    let patch = json!({ "status": status::merge_patch(&old, &new) });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(&pc.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::Status)?;
    Ok(())
}
