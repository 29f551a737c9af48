//! The `PostCache` resource as a Markdown reference (`docs/crd.md`), generated from the CRD's own
//! schema, so the reference says what `kubectl explain` says: every field with its type, default,
//! limits and description. Pure.
//!
//! ```text
//! PostCache::crd() ─▶ openAPIV3Schema ─▶ walk (depth first, fields in schema order) ─▶ one table row per field
//! ```

use std::fmt::Write as _;

use kube::CustomResourceExt;
use serde_json::Value;

use crate::crd::PostCache;

/// The reference, as committed in `docs/crd.md`.
pub fn crd_markdown() -> String {
    let crd = serde_json::to_value(PostCache::crd()).unwrap_or_default();
    let version = &crd["spec"]["versions"][0];
    let schema = &version["schema"]["openAPIV3Schema"];
    let mut out = format!(
        "# The `PostCache` resource\n\n\
         <!-- Generated from the CRD (crates/operator/src/reference.rs); do not edit: a test fails on drift. -->\n\n\
         `{}/{}`, kind `PostCache`, namespaced; short names {}; `kubectl explain postcache.spec` \
         shows the same.\n\n{}\n\n",
        crd["spec"]["group"].as_str().unwrap_or_default(),
        version["name"].as_str().unwrap_or_default(),
        crd["spec"]["names"]["shortNames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", "),
        one_line(schema["description"].as_str().unwrap_or_default()),
    );
    for root in ["spec", "status"] {
        let _ = write!(
            out,
            "## `{root}`\n\n| field | type | default | description |\n|---|---|---|---|\n"
        );
        walk(&schema["properties"][root], root, &mut out);
        out.push('\n');
    }
    let mut rules = Vec::new();
    collect_rules(schema, "", &mut rules);
    if !rules.is_empty() {
        out.push_str(
            "## Validation\n\nThe apiserver refuses an object that breaks one of these rules:\n\n",
        );
        for rule in rules {
            let _ = writeln!(out, "- {rule}");
        }
    }
    out
}

/// One row per field under `node` (named `path`), depth first.
fn walk(node: &Value, path: &str, out: &mut String) {
    let Some(properties) = node["properties"].as_object() else {
        if let Some(items) = node.get("items").filter(|i| i["properties"].is_object()) {
            walk(items, &format!("{path}[]"), out);
        }
        return;
    };
    for (name, field) in properties {
        let here = format!("{path}.{name}");
        // Kubernetes' own types (as in a pod spec): one row, their fields are Kubernetes'.
        let foreign = KUBERNETES_TYPES.contains(&name.as_str());
        let _ = writeln!(
            out,
            "| `{here}` | {} | {} | {} |",
            kind(field),
            field
                .get("default")
                .map_or(String::new(), |d| format!("`{d}`")),
            cell(&describe(field)),
        );
        if !foreign {
            walk(field, &here, out);
        }
    }
}

/// Fields whose type is Kubernetes' (core/v1 and meta/v1): their own fields are documented
/// there (`kubectl explain` shows them).
const KUBERNETES_TYPES: [&str; 7] = [
    "env",
    "resources",
    "imagePullSecrets",
    "tolerations",
    "affinity",
    "topologySpreadConstraints",
    "conditions",
];

/// The field's type, with its allowed values.
fn kind(field: &Value) -> String {
    let base = match field["type"].as_str() {
        Some("array") => format!("{}[]", field["items"]["type"].as_str().unwrap_or("object")),
        Some(t) => t.to_owned(),
        None if field.get("x-kubernetes-int-or-string").is_some() => "int or string".to_owned(),
        None => "object".to_owned(),
    };
    match field["enum"].as_array() {
        Some(values) => {
            let values: Vec<String> = values
                .iter()
                .filter_map(Value::as_str)
                .map(|v| format!("`{v}`"))
                .collect();
            format!("{base}: {}", values.join(", "))
        }
        None => base,
    }
}

/// The description, then the limits the schema sets.
fn describe(field: &Value) -> String {
    let mut text = one_line(field["description"].as_str().unwrap_or_default());
    let limits: Vec<String> = [
        ("minimum", "at least"),
        ("maximum", "at most"),
        ("minLength", "length at least"),
        ("maxLength", "length at most"),
        ("maxItems", "at most items:"),
        ("pattern", "matches"),
    ]
    .into_iter()
    .filter_map(|(key, words)| {
        let limit = field.get(key)?;
        Some(match limit.as_str() {
            Some(pattern) => format!("{words} `{pattern}`"),
            None => format!("{words} {limit}"),
        })
    })
    .collect();
    if !limits.is_empty() {
        let _ = write!(text, " ({})", limits.join("; "));
    }
    text
}

/// Every CEL rule under `node` (at `path`), as `field: message`.
fn collect_rules(node: &Value, path: &str, out: &mut Vec<String>) {
    for rule in node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let message = rule["message"]
            .as_str()
            .unwrap_or_else(|| rule["rule"].as_str().unwrap_or_default());
        let at = if path.is_empty() {
            "the object"
        } else {
            path.trim_start_matches('.')
        };
        out.push(format!("`{at}`: {message}"));
    }
    for (name, field) in node["properties"].as_object().into_iter().flatten() {
        collect_rules(field, &format!("{path}.{name}"), out);
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text safe in a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed reference is this module's output. `POSTCACHE_BLESS=1` rewrites it.
    #[test]
    fn docs_crd_md_matches_the_crd() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/crd.md");
        let text = crd_markdown();
        if std::env::var_os("POSTCACHE_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(&path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "docs/crd.md is stale: run POSTCACHE_BLESS=1 cargo test -p postcache-operator --lib reference"
        );
        for field in [
            "spec.redis.mode",
            "spec.service.rateLimit.perSecond",
            "spec.monitoring.labels",
        ] {
            assert!(
                text.contains(&format!("`{field}`")),
                "{field} is documented"
            );
        }
    }
}
