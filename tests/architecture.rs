//! The module layers of docs/ARCHITECTURE.md, checked: a module uses only modules of its own
//! layer or below (never one above), and no two modules use each other, directly or round
//! about. Read from the source, so a new `use crate::...` that breaks the map fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first; keep in step with docs/ARCHITECTURE.md.
const LAYERS: &[&[&str]] = &[
    &[
        "error",
        "window",
        "sync",
        "metrics",
        "query",
        "outcome",
        "access_log",
        "breaker",
        "gzip",
    ],
    &["caller", "facts"],
    &["config"],
    &[
        "gate",
        "lockout",
        "observe",
        "telemetry",
        "limits",
        "auth",
        "discard",
        "normalize",
        "scope",
        "cache",
        "shared",
        "upstream",
        "ratelimit",
        "cors",
    ],
    &["stack"],
    // `lib`: an item of the library's root (`lib.rs`: `serve`, `run`, `Listeners`), which the
    // demo runs whole.
    &["server", "admin", "reload", "demo", "lib"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| {
            panic!("module `{module}` is in no layer: add it to LAYERS and docs/ARCHITECTURE.md")
        })
}

/// Every `crate::<module>` a source file names, outside comments.
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Module name -> the modules it uses, for every module of the gateway's library.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut visit = vec![src.clone()];
    while let Some(dir) = visit.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                visit.push(path);
                continue;
            }
            if path.extension().and_then(|ext| ext.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).expect("under src");
            let top = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .expect("a name")
                .trim_end_matches(".rs")
                .to_owned();
            if matches!(top.as_str(), "lib" | "main") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable source");
            let used = graph.entry(top.clone()).or_default();
            used.extend(uses(&text).into_iter().filter(|module| *module != top));
        }
    }
    // A name that is no module's is an item of the library's root.
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for used in graph.values_mut() {
        *used = used
            .iter()
            .map(|name| {
                if modules.contains(name) {
                    name.clone()
                } else {
                    "lib".to_owned()
                }
            })
            .collect();
    }
    graph
}

#[test]
fn no_module_uses_a_module_of_a_higher_layer() {
    let mut wrong = Vec::new();
    for (module, used) in graph() {
        for other in used {
            if layer_of(&other) > layer_of(&module) {
                wrong.push(format!(
                    "{module} (layer {}) uses {other} (layer {})",
                    layer_of(&module),
                    layer_of(&other)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn no_two_modules_use_each_other_even_round_about() {
    let graph = graph();
    // Depth-first search for a cycle, reporting the first one found.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| *m == module) {
            let mut cycle: Vec<String> = path[at..].iter().map(|m| m.to_string()).collect();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module);
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let cycle = visit(module, &graph, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "a module circle: {}",
            cycle.unwrap_or_default().join(" -> ")
        );
    }
}
