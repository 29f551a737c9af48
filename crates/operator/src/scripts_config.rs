//! The `<name>-scripts` ConfigMap: the data-plane scripts (`crates/operator/scripts/`, embedded by
//! [`crate::scripts`]) that the Redis Jobs and the PostgreSQL init containers run. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use crate::PostCache;
use crate::child::Child;
use crate::labels::{Component, child_name, meta};

/// `<name>-scripts`.
pub fn name(pc: &PostCache) -> String {
    child_name(pc, "scripts")
}

/// The ConfigMap holding `scripts` as `(file name, contents)`.
pub fn child(pc: &PostCache, scripts: &[(&str, &str)]) -> Child {
    let data = scripts
        .iter()
        .map(|(file, text)| ((*file).to_owned(), (*text).to_owned()))
        .collect::<BTreeMap<_, _>>();
    Child::new(&ConfigMap {
        metadata: meta(pc, name(pc), Component::Scripts),
        data: Some(data),
        ..ConfigMap::default()
    })
}
