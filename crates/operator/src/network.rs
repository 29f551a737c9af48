//! NetworkPolicies: the service takes HTTP from anywhere; Redis and PostgreSQL take connections
//! only from the service pods and their own peers (and Redis from its admin Jobs). Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::child::Child;
use crate::crd::{PostCache, PostgresMode, RedisMode};
use crate::labels::{COMPONENT_LABEL, Component, INSTANCE_LABEL, child_name, meta, selector};
use crate::{postgres, redis, service};

/// The policies for the tiers the operator runs.
pub fn children(pc: &PostCache) -> Vec<Child> {
    let mut out = vec![Child::new(&policy(
        pc,
        Component::Service,
        None,
        &[service::PORT],
    ))];
    if pc.spec.redis.mode != RedisMode::External {
        out.push(Child::new(&policy(
            pc,
            Component::Redis,
            Some(&[Component::Service, Component::Redis, Component::RedisAdmin]),
            &[redis::PORT, redis::BUS_PORT],
        )));
    }
    if pc.spec.postgres.mode != PostgresMode::External {
        out.push(Child::new(&policy(
            pc,
            Component::Postgres,
            Some(&[Component::Service, Component::Postgres]),
            &[postgres::PORT],
        )));
    }
    out
}

/// Ingress to `component`'s pods on `ports`, from the listed components of the same PostCache,
/// or from anywhere when `from` is `None`.
fn policy(
    pc: &PostCache,
    component: Component,
    from: Option<&[Component]>,
    ports: &[i32],
) -> NetworkPolicy {
    let peers = from.map(|components| {
        vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(INSTANCE_LABEL.to_owned(), pc.name_any())])),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: COMPONENT_LABEL.to_owned(),
                    operator: "In".to_owned(),
                    values: Some(components.iter().map(|c| c.as_str().to_owned()).collect()),
                }]),
            }),
            ..NetworkPolicyPeer::default()
        }]
    });
    NetworkPolicy {
        metadata: meta(pc, child_name(pc, component.as_str()), component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(pc, component)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: peers,
                ports: Some(
                    ports
                        .iter()
                        .map(|&port| NetworkPolicyPort {
                            port: Some(IntOrString::Int(port)),
                            protocol: Some("TCP".to_owned()),
                            end_port: None,
                        })
                        .collect(),
                ),
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}
