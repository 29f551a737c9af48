//! Writing children: server-side apply with the one field manager and `force`, but only when the
//! live object differs from the desired one, so re-reconciling an unchanged PostCache writes
//! nothing; and pruning children that are no longer desired (e.g. the HPA when autoscaling is
//! turned off).
//!
//! "Differs" is decided twice over: the hash of the last applied object (an annotation) catches
//! fields the operator stopped setting, and a subset check of the desired object against the live
//! one catches drift made by others. Create-only children (generated Secrets) are never rewritten.

use std::collections::BTreeSet;

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams,
    PropagationPolicy,
};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::child::Child;
use crate::error::Error;
use crate::labels::{APPLIED_HASH_ANNOTATION, FIELD_MANAGER};

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Whether anything was written.
    pub outcome: Outcome,
    /// A StatefulSet kept its live volume claim templates (immutable) instead of the desired ones.
    pub kept_claim_templates: bool,
}

/// Whether [`apply`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The object did not exist.
    Created,
    /// The object differed and was written.
    Updated,
    /// Nothing was written.
    Unchanged,
}

fn api(client: &Client, namespace: &str, resource: &ApiResource) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, resource)
}

/// Applies `child` in `namespace` unless the live object already matches it. An existing
/// StatefulSet keeps its volume claim templates (the apiserver refuses to change them), so a new
/// storage size does not block every other change; [`Applied::kept_claim_templates`] says so.
///
/// # Errors
/// [`Error::Read`] or [`Error::Apply`] with the API's error.
pub async fn apply(client: &Client, namespace: &str, child: &Child) -> Result<Applied, Error> {
    let api = api(client, namespace, &child.resource);
    let name = child.object.name_any();
    let live = api.get_opt(&name).await.map_err(|source| Error::Read {
        what: child.id(),
        source,
    })?;
    let unchanged = |kept_claim_templates| Applied {
        outcome: Outcome::Unchanged,
        kept_claim_templates,
    };
    if child.create_only && live.is_some() {
        return Ok(unchanged(false));
    }
    let mut desired = child.object.clone();
    let hash = format!("{:016x}", fingerprint(&desired));
    let kept = match &live {
        Some(live) if child.resource.kind == "StatefulSet" => {
            keep_claim_templates(&mut desired, live)
        }
        _ => false,
    };
    desired
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash.clone());
    if let Some(live) = &live
        && live.annotations().get(APPLIED_HASH_ANNOTATION) == Some(&hash)
        && matches(&desired, live)
    {
        return Ok(unchanged(kept));
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api
        .patch(&name, &params, &Patch::Apply(&desired))
        .await
        .map_err(|source| Error::Apply {
            what: child.id(),
            source,
        })?;
    let outcome = match live {
        None => Outcome::Created,
        Some(live) if live.resource_version() == applied.resource_version() => Outcome::Unchanged,
        Some(_) => Outcome::Updated,
    };
    Ok(Applied {
        outcome,
        kept_claim_templates: kept,
    })
}

/// Replaces the desired StatefulSet's volume claim templates with the live ones (less their
/// status) when they differ; returns whether it did.
fn keep_claim_templates(desired: &mut DynamicObject, live: &DynamicObject) -> bool {
    let live_templates = &live.data["spec"]["volumeClaimTemplates"];
    let wanted = &desired.data["spec"]["volumeClaimTemplates"];
    if wanted.is_null() || is_subset(wanted, live_templates) {
        return false;
    }
    let mut kept = live_templates.clone();
    if let Some(templates) = kept.as_array_mut() {
        for template in templates.iter_mut().filter_map(Value::as_object_mut) {
            template.remove("status");
        }
    }
    if let Some(spec) = desired.data.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("volumeClaimTemplates".to_owned(), kept);
    }
    true
}

/// Deletes the children of kind `resource` labelled as `pc`'s (by `selector`) and owned by the
/// object with `owner_uid` whose names are not in `keep`. Returns the deleted `Kind/name`s.
/// A kind the apiserver does not serve has nothing to prune.
///
/// # Errors
/// [`Error::Read`] or [`Error::Delete`] with the API's error.
pub async fn prune(
    client: &Client,
    namespace: &str,
    resource: &ApiResource,
    selector: &str,
    owner_uid: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, Error> {
    let api = api(client, namespace, resource);
    let list = match api
        .list_metadata(&ListParams::default().labels(selector))
        .await
    {
        Ok(list) => list,
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Read {
                what: format!("{} list", resource.kind),
                source,
            });
        }
    };
    let mut deleted = Vec::new();
    for object in list {
        let name = object.name_any();
        let owned = object.owner_references().iter().any(|o| o.uid == owner_uid);
        if owned && !keep.contains(&name) {
            delete(client, namespace, resource, &name).await?;
            deleted.push(format!("{}/{name}", resource.kind));
        }
    }
    Ok(deleted)
}

/// Deletes one object (and, in the background, what it owns); absent is fine.
///
/// # Errors
/// [`Error::Delete`] with the API's error.
pub async fn delete(
    client: &Client,
    namespace: &str,
    resource: &ApiResource,
    name: &str,
) -> Result<(), Error> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api(client, namespace, resource).delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete {
            what: format!("{}/{name}", resource.kind),
            source,
        }),
    }
}

/// Whether every field of `desired` (metadata labels, annotations, owners, and the body) holds
/// the same value in `live`.
pub fn matches(desired: &DynamicObject, live: &DynamicObject) -> bool {
    let meta = |o: &DynamicObject| {
        serde_json::json!({
            "labels": o.metadata.labels,
            "annotations": o.metadata.annotations,
            "ownerReferences": o.metadata.owner_references,
        })
    };
    is_subset(&meta(desired), &meta(live)) && is_subset(&desired.data, &live.data)
}

/// `desired ⊆ live`: objects by key, arrays element-wise with equal length, numbers by value,
/// and an absent (`null`) desired value matches anything.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Null, _) => true,
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, v)| is_subset(v, l.get(k).unwrap_or(&Value::Null))),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(d, l)| is_subset(d, l))
        }
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        (d, l) => d == l,
    }
}

/// A stable 64-bit FNV-1a hash of the object's JSON (keys are sorted: serde_json's map is a
/// BTreeMap here), so equal desired objects hash equally across operator restarts.
pub fn fingerprint(object: &DynamicObject) -> u64 {
    let text = serde_json::to_string(object).unwrap_or_default();
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_apiserver_still_match() {
        let desired = json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}});
        let live = json!({"spec": {"replicas": 2, "revisionHistoryLimit": 10,
            "ports": [{"port": 80, "protocol": "TCP"}]}});
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn a_changed_or_missing_value_does_not_match() {
        let desired = json!({"spec": {"replicas": 3, "ports": [{"port": 80}]}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 3, "ports": []}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"ports": [{"port": 80}]}})
        ));
    }

    #[test]
    fn an_existing_statefulset_keeps_its_claim_templates() {
        let object = |size: &str, status: bool| {
            let mut template = json!({"metadata": {"name": "data"},
                "spec": {"resources": {"requests": {"storage": size}}}});
            if status {
                template["status"] = json!({"phase": "Pending"});
            }
            serde_json::from_value::<DynamicObject>(json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"},
                "spec": {"replicas": 1, "volumeClaimTemplates": [template]}
            }))
            .unwrap()
        };
        let live = object("1Gi", true);
        let mut same = object("1Gi", false);
        assert!(!keep_claim_templates(&mut same, &live));
        let mut grown = object("2Gi", false);
        assert!(keep_claim_templates(&mut grown, &live));
        assert_eq!(grown.data, object("1Gi", false).data);
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(is_subset(&json!({"a": 1.0}), &json!({"a": 1})));
    }
}
