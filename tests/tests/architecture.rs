//! The dependency rule of `docs/ARCHITECTURE.md`, checked.
//!
//! Two kinds of rule:
//!
//! - **Crate layering**, read from `cargo metadata --no-deps` (the declared
//!   dependencies of every workspace package): arrows point down only, the
//!   control plane never depends on an agent (not even transitively), the
//!   agents never depend on the control plane or on each other, the wire
//!   contract and the runtime depend on nothing of ours but `fabric-schemas`,
//!   and the testkit is never a normal dependency of anything.
//! - **Sans-IO cores**, read from the sources: the files listed in
//!   [`SANS_IO_CORES`] never name tokio, quinn or `std::fs`.
//!
//! How it was checked that this test fails when a rule is broken: adding
//! `fabric-node-agent.workspace = true` to `reconciler/Cargo.toml` made
//! `the_workspace_obeys_the_dependency_rule` fail with
//! "fabric-reconciler depends on fabric-node-agent (directly or through ...)",
//! and adding `use std::fs;` to `fabric/src/gossip/core.rs` made
//! `sans_io_cores_do_no_io` fail naming the file and line. The same checks
//! run on doctored metadata in `a_forbidden_dependency_is_reported` and
//! `io_in_a_core_is_reported`, so the checker itself is tested every run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Layer of every workspace crate: a normal dependency must point to a
/// strictly lower layer. `fabric-testkit` has no layer: it may only be a
/// dev-dependency.
const LAYERS: &[(&str, u8)] = &[
    ("fabric-schemas", 0),
    ("fabric-proto", 1),
    ("fabric-runtime", 1),
    ("fabric", 2),
    ("fabric-reconciler", 3),
    ("fabric-node-agent", 3),
    ("fabric-host-agent", 3),
    ("fabric-compose", 4),
    ("fabricctl", 5),
    ("fabric-integration-tests", 5),
];

/// Crates a crate must never reach through normal dependencies, with why.
const NEVER: &[(&str, &str, &str)] = &[
    (
        "fabric-reconciler",
        "fabric-node-agent",
        "the control plane never depends on an agent",
    ),
    (
        "fabric-reconciler",
        "fabric-host-agent",
        "the control plane never depends on an agent",
    ),
    (
        "fabric-node-agent",
        "fabric-reconciler",
        "an agent never depends on the control plane",
    ),
    (
        "fabric-host-agent",
        "fabric-reconciler",
        "an agent never depends on the control plane",
    ),
    (
        "fabric-host-agent",
        "fabric-node-agent",
        "the host agent supervises the node-agent as a process, never links it",
    ),
    (
        "fabric-proto",
        "fabric",
        "the wire contract never pulls in the transport",
    ),
];

/// External crates a crate must never depend on directly.
const NEVER_EXTERNAL: &[(&str, &str)] = &[
    ("fabric-proto", "tokio"),
    ("fabric-proto", "quinn"),
    ("fabric-schemas", "tokio"),
    ("fabric-schemas", "quinn"),
    ("fabric-runtime", "quinn"),
];

/// The sans-IO cores: pure decisions that take inputs and `now`.
const SANS_IO_CORES: &[&str] = &[
    "schemas/src/accept.rs",
    "schemas/src/lease.rs",
    "proto/src",
    "fabric/src/gossip/core.rs",
    "fabric/src/gossip/store.rs",
    "fabric/src/gossip/wire.rs",
    "fabric/src/gossip/sim.rs",
    "fabric/src/peer_select",
    "reconciler/src/rollout",
    "node-agent/src/control/decide.rs",
    "node-agent/src/node_core.rs",
    "node-agent/src/sim.rs",
    "node-agent/src/directory.rs",
    "node-agent/src/admission.rs",
    "node-agent/src/leases.rs",
    "node-agent/src/registry.rs",
];

/// What a core must never name.
const IO_MARKERS: &[&str] = &["tokio::", "use tokio", "quinn::", "use quinn", "std::fs"];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Dep {
    name: String,
    /// `None` for normal, `Some("dev")`, `Some("build")`.
    kind: Option<String>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Declared dependencies of every workspace package.
fn packages(meta: &Value) -> BTreeMap<String, Vec<Dep>> {
    let mut out = BTreeMap::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        let deps = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| Dep {
                name: d["name"].as_str().unwrap_or_default().to_owned(),
                kind: d["kind"].as_str().map(str::to_owned),
            })
            .collect();
        out.insert(name, deps);
    }
    out
}

/// Every workspace crate `from` reaches through normal dependencies, with
/// the path it takes.
fn reach(pkgs: &BTreeMap<String, Vec<Dep>>, from: &str) -> BTreeMap<String, Vec<String>> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    while let Some((at, path)) = stack.pop() {
        for d in pkgs.get(&at).into_iter().flatten() {
            if d.kind.is_some() || !pkgs.contains_key(&d.name) || seen.contains_key(&d.name) {
                continue;
            }
            let mut p = path.clone();
            p.push(d.name.clone());
            seen.insert(d.name.clone(), p.clone());
            stack.push((d.name.clone(), p));
        }
    }
    seen
}

/// Every broken rule, as a sentence naming the crates.
fn violations(pkgs: &BTreeMap<String, Vec<Dep>>) -> Vec<String> {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut out = Vec::new();
    for (name, deps) in pkgs {
        if !layer.contains_key(name.as_str()) && name != "fabric-testkit" {
            out.push(format!(
                "{name} has no layer in the architecture test: add it to LAYERS and to docs/ARCHITECTURE.md"
            ));
        }
        for d in deps {
            if d.kind.is_some() {
                continue;
            }
            if d.name == "fabric-testkit" {
                out.push(format!(
                    "{name} depends on fabric-testkit as a normal dependency (dev-dependency only)"
                ));
                continue;
            }
            if let (Some(&from), Some(&to)) = (layer.get(name.as_str()), layer.get(d.name.as_str()))
            {
                if to >= from {
                    out.push(format!(
                        "{name} (layer {from}) depends on {} (layer {to}): arrows point down only",
                        d.name
                    ));
                }
            }
            for (who, what) in NEVER_EXTERNAL {
                if name == who && d.name == *what {
                    out.push(format!("{name} depends on {what}: it does no I/O"));
                }
            }
        }
    }
    for (from, to, why) in NEVER {
        if let Some(path) = reach(pkgs, from).get(*to) {
            out.push(format!(
                "{from} depends on {to} (directly or through {}): {why}",
                path.join(" -> ")
            ));
        }
    }
    if let Some(deps) = pkgs.get("fabric-testkit") {
        for d in deps.iter().filter(|d| d.kind.is_none()) {
            if pkgs.contains_key(&d.name) && d.name != "fabric-proto" {
                out.push(format!(
                    "fabric-testkit depends on {}: it may name only the wire contract, so any crate can use it",
                    d.name
                ));
            }
        }
    }
    out
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .expect("source folder readable")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            rust_files(&e, out);
        }
    } else if path.extension().is_some_and(|x| x == "rs") {
        out.push(path.to_path_buf());
    }
}

/// Lines of `text` (outside comments) that name an I/O marker.
fn io_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split("//").next().unwrap_or_default();
        if IO_MARKERS.iter().any(|m| code.contains(m)) {
            out.push((i + 1, line.trim().to_owned()));
        }
    }
    out
}

#[test]
fn the_workspace_obeys_the_dependency_rule() {
    let pkgs = packages(&metadata());
    for must in [
        "fabric-proto",
        "fabric-runtime",
        "fabric-compose",
        "fabric-testkit",
    ] {
        assert!(pkgs.contains_key(must), "workspace has no {must}");
    }
    let v = violations(&pkgs);
    assert!(v.is_empty(), "dependency rule broken:\n{}", v.join("\n"));
    // The seams the rule exists for.
    let reconciler = reach(&pkgs, "fabric-reconciler");
    let agent = reach(&pkgs, "fabric-node-agent");
    for (who, reached) in [
        ("fabric-reconciler", &reconciler),
        ("fabric-node-agent", &agent),
    ] {
        for must in ["fabric-proto", "fabric-runtime"] {
            assert!(reached.contains_key(must), "{who} does not use {must}");
        }
    }
}

#[test]
fn sans_io_cores_do_no_io() {
    let root = workspace_root();
    let mut found = Vec::new();
    for core in SANS_IO_CORES {
        let mut files = Vec::new();
        rust_files(&root.join(core), &mut files);
        assert!(!files.is_empty(), "sans-IO core {core} has no sources");
        for f in files {
            let text = std::fs::read_to_string(&f).expect("source readable");
            for (line, code) in io_lines(&text) {
                found.push(format!("{}:{line}: {code}", f.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "sans-IO cores name tokio, quinn or std::fs:\n{}",
        found.join("\n")
    );
}

#[test]
fn a_forbidden_dependency_is_reported() {
    let mut pkgs = packages(&metadata());
    let dep = |name: &str| Dep {
        name: name.to_owned(),
        kind: None,
    };
    // The control plane reaching an agent through a new crate in between.
    pkgs.entry("fabric-reconciler".into())
        .or_default()
        .push(dep("fabric-compose"));
    pkgs.entry("fabric-proto".into())
        .or_default()
        .push(dep("tokio"));
    pkgs.entry("fabric-node-agent".into())
        .or_default()
        .push(dep("fabric-testkit"));
    let v = violations(&pkgs).join("\n");
    assert!(
        v.contains("fabric-reconciler depends on fabric-node-agent"),
        "{v}"
    );
    assert!(v.contains("arrows point down only"), "{v}");
    assert!(v.contains("fabric-proto depends on tokio"), "{v}");
    assert!(
        v.contains("fabric-node-agent depends on fabric-testkit"),
        "{v}"
    );
}

#[test]
fn io_in_a_core_is_reported() {
    let src = "//! no tokio here\nuse std::fs;\nlet x = 1; // tokio:: in a comment\nlet t = tokio::time::sleep(d);\n";
    let lines: Vec<usize> = io_lines(src).into_iter().map(|(l, _)| l).collect();
    assert_eq!(lines, vec![2, 4]);
}

#[test]
fn every_layer_is_a_workspace_crate() {
    let pkgs = packages(&metadata());
    let names: BTreeSet<&str> = pkgs.keys().map(String::as_str).collect();
    for (name, _) in LAYERS {
        assert!(
            names.contains(name),
            "LAYERS names {name}, which the workspace does not have"
        );
    }
}
