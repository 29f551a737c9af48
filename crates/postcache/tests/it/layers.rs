//! The import graph inside each crate (files as nodes, `use crate::…` as edges) runs one way:
//! every top-level module sits in a layer, and a module imports only from its own layer or the
//! ones below, naming the module that defines what it imports (the crate root's re-exports are
//! for other crates: through them, an arrow up would look like an arrow to the root). A new module must be given a layer here, which is the point: where it sits
//! is decided, not discovered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Per crate, its layers from the bottom up. `lib` is what `lib.rs` defines itself; a crate
/// without a `lib` layer keeps its `lib.rs` a table of contents (modules and re-exports only).
const LAYERS: &[(&str, &[&[&str]])] = &[
    (
        "cache",
        &[
            &["stats", "tags"],
            &["model"],
            &["eventlog", "l1", "views"],
            &["token"],
            &["freshness", "store"],
            &["redis"],
            // The service over the tiers: `relay` is `impl Posts` for the log, beside `posts`.
            &["posts", "relay"],
            &["background"],
        ],
    ),
    (
        "server",
        &[
            &["cors", "error", "io", "metrics", "otlp"],
            &["auth", "client", "config", "json", "tokens", "validate"],
            &["limit", "logging"],
            &["openapi", "realtime", "routes"],
            &["app"],
            &["serve"],
        ],
    ),
    (
        "operator",
        &[
            &[
                "alerts", "child", "crd", "error", "labels", "leader", "metrics", "quantity",
                "shards",
            ],
            &["apply", "pod", "reference"],
            &["scripts"],
            &["postgres", "redis"],
            &["service"],
            &["monitoring", "network", "status"],
            &["desired", "observe"],
            &["config", "controller"],
            &["operator"],
        ],
    ),
    (
        "bench",
        &[
            &["keys", "server", "stats"],
            &["args"],
            &["report"],
            &["plot"],
            &["fanout", "http"],
            &["run"],
        ],
    ),
    (
        "check",
        &[
            &["error", "history", "rng"],
            &["api", "args", "events", "report"],
            &["probe", "verify"],
            &["workload"],
            &["settle"],
            &["run"],
        ],
    ),
];

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut wrong = Vec::new();
    for (krate, layers) in LAYERS {
        let src = root.join("crates").join(krate).join("src");
        let layer_of: BTreeMap<&str, usize> = layers
            .iter()
            .enumerate()
            .flat_map(|(i, modules)| modules.iter().map(move |m| (*m, i)))
            .collect();
        let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
        let reexports = reexported_names(&lib);
        let mut modules = BTreeSet::new();
        for file in rust_files(&src) {
            let module = top_module(&src, &file);
            if module == "lib" {
                continue;
            }
            modules.insert(module.clone());
            let Some(&own) = layer_of.get(module.as_str()) else {
                wrong.push(format!("{krate}: module `{module}` has no layer in LAYERS"));
                continue;
            };
            let text = std::fs::read_to_string(&file).unwrap();
            for name in crate_imports(&code_of(&text)) {
                let target = if layer_of.contains_key(name.as_str()) {
                    name.clone()
                } else if let Some(module) = reexports.get(&name) {
                    wrong.push(format!(
                        "{krate}: {} imports `crate::{name}` through lib.rs; name where it is \
                         defined: `crate::{module}::{name}`",
                        file.strip_prefix(&root).unwrap_or(&file).display()
                    ));
                    module.clone()
                } else {
                    "lib".into()
                };
                if target == module {
                    continue;
                }
                match layer_of.get(target.as_str()) {
                    Some(&layer) if layer <= own => {}
                    Some(_) => wrong.push(format!(
                        "{krate}: {} imports `crate::{name}` from `{target}`, a layer above `{module}`",
                        file.strip_prefix(&root).unwrap_or(&file).display()
                    )),
                    None => wrong.push(format!(
                        "{krate}: {} imports `crate::{name}`, which is in no layer",
                        file.strip_prefix(&root).unwrap_or(&file).display()
                    )),
                }
            }
        }
        for listed in layer_of.keys().filter(|m| **m != "lib") {
            if !modules.contains(*listed) {
                wrong.push(format!(
                    "{krate}: LAYERS names `{listed}`, which is no module"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_crate_without_a_lib_layer_keeps_lib_rs_a_table_of_contents() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut wrong = Vec::new();
    for (krate, layers) in LAYERS {
        if layers.iter().any(|modules| modules.contains(&"lib")) {
            continue;
        }
        let lib =
            std::fs::read_to_string(root.join("crates").join(krate).join("src/lib.rs")).unwrap();
        wrong.extend(
            definitions(&code_of(&lib)).map(|line| format!("{krate}/src/lib.rs defines `{line}`")),
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Top-level lines of `code` that define something: anything but a module, an import, an
/// attribute, or the inside and end of a grouped import.
fn definitions(code: &str) -> impl Iterator<Item = &str> {
    const CONTENTS: &[&str] = &["mod ", "pub mod ", "use ", "pub use ", "#", "}"];
    code.lines().filter(|line| {
        !line.trim().is_empty()
            && !line.starts_with(char::is_whitespace)
            && !CONTENTS.iter().any(|start| line.starts_with(start))
    })
}

/// The code of a file without its comments and its unit tests (which may reach anywhere).
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `crate::` paths name first: `crate::a::B` → `a`, `crate::{a, b::C}` → `a`, `b`.
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.extend(first_ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            names.extend(first_ident(&item));
        } else {
            names.extend(first_ident(rest));
        }
    }
    names
}

fn first_ident(s: &str) -> Option<String> {
    let ident: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty() && ident != "self").then_some(ident)
}

/// Names `lib.rs` re-exports (`pub use module::…::{A, B}`), by the module that defines them.
fn reexported_names(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let code = code_of(lib);
    for statement in code.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, rest)) = path.split_once("::") else {
            continue;
        };
        let items = rest.rsplit("::").next().unwrap_or(rest);
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            let item = item.trim();
            let name = item.rsplit(" as ").next().unwrap_or(item).trim();
            if let Some(name) = first_ident(name) {
                names.insert(name, module.trim().to_owned());
            }
        }
    }
    names
}

fn top_module(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn the_parser_sees_grouped_and_nested_imports() {
    let code = "use crate::{a::B, c, d::{e, f}};\nuse crate::g::H;\nfn x() { crate::i(); }";
    let names: Vec<String> = crate_imports(code).into_iter().collect();
    assert_eq!(names, ["a", "c", "d", "g", "i"]);
    let reexports = reexported_names("pub use a::b::{C, D as E};\npub use f::G;");
    assert_eq!(reexports.get("E").map(String::as_str), Some("a"));
    assert_eq!(reexports.get("G").map(String::as_str), Some("f"));
    let lib = "mod a;\npub use a::{\n    B,\n};\n#[doc(hidden)]\npub fn c() {}\nstruct D;";
    assert_eq!(
        definitions(lib).collect::<Vec<_>>(),
        ["pub fn c() {}", "struct D;"]
    );
}
