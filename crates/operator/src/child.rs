//! [`Child`]: one desired object of a PostCache, erased to a dynamic object so the reconciler
//! applies, compares and prunes every kind the same way. Builders return typed objects and wrap
//! them here.

use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::{Resource, ResourceExt};
use serde::Serialize;

/// A desired child object.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    /// Group, version, kind and plural of the object.
    pub resource: ApiResource,
    /// The object as it is applied (apiVersion, kind, metadata, spec…).
    pub object: DynamicObject,
    /// Created when absent and otherwise never written (generated credentials).
    pub create_only: bool,
}

impl Child {
    /// Wraps a typed object (`k8s-openapi` types serialize their apiVersion and kind).
    pub fn new<K>(object: &K) -> Child
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        // A k8s-openapi object always serializes to a JSON object with metadata.
        let value = serde_json::to_value(object).unwrap_or_default();
        let object = serde_json::from_value(value)
            .unwrap_or_else(|_| DynamicObject::new(&object.name_any(), &resource));
        Child {
            resource,
            object,
            create_only: false,
        }
    }

    /// A custom resource given as JSON (ServiceMonitor, PrometheusRule: no Rust types here).
    pub fn dynamic(gvk: &GroupVersionKind, plural: &str, object: DynamicObject) -> Child {
        Child {
            resource: ApiResource::from_gvk_with_plural(gvk, plural),
            object,
            create_only: false,
        }
    }

    /// Marks the child create-only (see [`Child::create_only`]).
    pub fn create_only(mut self) -> Child {
        self.create_only = true;
        self
    }

    /// `Kind/name`, for logs, Events and test messages.
    pub fn id(&self) -> String {
        format!("{}/{}", self.resource.kind, self.object.name_any())
    }
}
