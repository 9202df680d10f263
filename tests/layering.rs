//! The module layering holds: `machine` (pure rules and the types of rows and observations) ←
//! `ddl` (what a change may contain) and `worker` (the sans-IO core) ← `store` / `engine` ← `operator` (the async runtime and its
//! executor) and `testkit` (the synchronous executor). A module may name only the modules
//! below it, so there is no cycle among them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const MODULES: &[&str] = &[
    "machine", "ddl", "worker", "store", "engine", "operator", "testkit", "api", "cli", "config",
    "demo", "plan", "report",
];

/// What each layered module may name.
const ALLOWED: &[(&str, &[&str])] = &[
    ("machine", &[]),
    // What a change may contain, checked at submit.
    ("ddl", &["machine"]),
    ("worker", &["machine", "ddl"]),
    ("store", &["machine", "ddl"]),
    // The fake engines keep time on the memory store's clock; Spirit reads the checked change.
    ("engine", &["machine", "ddl", "store", "config"]),
    (
        "operator",
        &["machine", "ddl", "worker", "store", "engine", "config"],
    ),
    ("testkit", &["machine", "worker", "store", "engine"]),
    ("plan", &["machine", "ddl", "store"]),
    // Text views of what the stores report, for the CLI and the demo.
    ("report", &["machine", "store"]),
];

fn sources(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(std::fs::read_to_string(&p).expect("read a source file"));
        }
    }
}

fn named_by(module: &str) -> BTreeSet<&'static str> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut texts = Vec::new();
    sources(&src.join(module), &mut texts);
    if let Ok(t) = std::fs::read_to_string(src.join(format!("{module}.rs"))) {
        texts.push(t);
    }
    assert!(!texts.is_empty(), "src/{module} has sources");
    MODULES
        .iter()
        .copied()
        .filter(|other| *other != module)
        .filter(|other| {
            let path = format!("crate::{other}");
            texts.iter().any(|t| {
                t.match_indices(&path).any(|(i, _)| {
                    !t[i + path.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
                })
            })
        })
        .collect()
}

#[test]
fn each_module_names_only_the_modules_below_it() {
    let mut wrong = BTreeMap::new();
    for (module, allowed) in ALLOWED {
        let extra: Vec<_> = named_by(module)
            .into_iter()
            .filter(|m| !allowed.contains(m))
            .collect();
        if !extra.is_empty() {
            wrong.insert(*module, extra);
        }
    }
    assert!(
        wrong.is_empty(),
        "modules naming what they must not: {wrong:?}"
    );
}

#[test]
fn the_allowed_layers_have_no_cycle() {
    // Each module may only name modules listed before it.
    for (i, (module, allowed)) in ALLOWED.iter().enumerate() {
        for a in *allowed {
            let pos = ALLOWED.iter().position(|(m, _)| m == a);
            assert!(
                pos.is_none_or(|p| p < i),
                "{module} may name {a}, which is not below it"
            );
        }
    }
}
