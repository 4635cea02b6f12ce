//! `fabricctl up --rollout next|broken --until-rolled-out` as a user runs it:
//! host agents supervising node-agent processes, a real rollout of another
//! build served by the fleet's own update store, and a broken build rolled
//! back with the rollout stopped.
//!
//! Needs the workspace's binaries next to `fabricctl` (`cargo test
//! --workspace` builds them: the node-agent and host-agent packages have
//! integration tests, so their binaries are built into the same folder).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_fabricctl");

fn sibling(name: &str) -> PathBuf {
    let p = Path::new(BIN).parent().expect("bin folder").join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace's binaries (`cargo build --workspace --bins`)",
        p.display()
    );
    p
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new(BIN)
        .args(["artifact", "hash", "-o", "json"])
        .arg(path)
        .output()
        .expect("fabricctl runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["sha256"].as_str().expect("sha256").to_owned()
}

fn up(dir: &Path, build: &str) -> Output {
    Command::new(BIN)
        .args([
            "up",
            "--nodes",
            "6",
            "--rollout",
            build,
            "--until-rolled-out",
        ])
        .args(["--timeout", "120s", "--rollout-timeout", "300s"])
        .arg("--state-dir")
        .arg(dir.join("up"))
        .arg("--context")
        .arg(dir.join("context.json"))
        .output()
        .expect("fabricctl up runs")
}

/// The digest the node's `current` slot link names.
fn current_slot(state: &Path, node: &str) -> Option<String> {
    std::fs::read_link(state.join("nodes").join(node).join("host/current"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn journal(state: &Path, node: &str) -> serde_json::Value {
    let path = state.join("nodes").join(node).join("update/journal.json");
    serde_json::from_slice(&std::fs::read(&path).expect("journal")).expect("json")
}

/// The synthetic 6-node fleet: alpha-1 and alpha-2 carry `control-api` and
/// run in process beside their replicas; the other four (two providers of
/// each update service, so the role rules let each be leased in turn) run
/// under host agents and are the rollout's targets.
const TARGETS: [&str; 4] = ["beta-1", "gamma-1", "beta-2", "gamma-2"];

#[test]
fn a_next_build_rolls_out_to_every_host_agent_node_under_leases() {
    let next = sha256_of(&sibling("fabric-node-agent-next"));
    let original = sha256_of(&sibling("fabric-node-agent"));
    assert_ne!(
        next, original,
        "the stand-in is a genuinely different build"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = up(dir.path(), "next");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let version = format!("{}-next", env!("CARGO_PKG_VERSION"));
    assert!(
        text.contains(&format!("rolled out: 4/4 targeted nodes run {version}")),
        "{text}"
    );
    assert!(text.contains("acceptance criteria 6/6 passed"), "{text}");
    let state = dir.path().join("up");
    for node in TARGETS {
        assert_eq!(
            current_slot(&state, node).as_deref(),
            Some(next.as_str()),
            "{node} runs the new build\n{text}"
        );
        // Nothing was applied without a lease: the attempt names the lease
        // it applied under, and ended healthy on the host agent's commit.
        let j = journal(&state, node);
        assert_eq!(j["attempt"]["state"], "healthy", "{node}: {j}");
        assert!(
            j["attempt"]["accepted_plan"]
                .as_str()
                .is_some_and(|l| l.starts_with("lease-")),
            "{node}: {j}"
        );
        assert_eq!(j["previous_binary"], original.as_str(), "{node}: {j}");
    }
}

#[test]
fn a_broken_build_is_rolled_back_and_stops_the_rollout() {
    let broken = sha256_of(&sibling("fabric-node-agent-broken"));
    let original = sha256_of(&sibling("fabric-node-agent"));
    let dir = tempfile::tempdir().expect("tempdir");
    let out = up(dir.path(), "broken");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("did not complete"), "{text}");
    let state = dir.path().join("up");
    let mut rolled_back = 0;
    for node in TARGETS {
        // No node is left on the broken build.
        assert_eq!(
            current_slot(&state, node).as_deref(),
            Some(original.as_str()),
            "{node}\n{text}"
        );
        assert_ne!(current_slot(&state, node).as_deref(), Some(broken.as_str()));
        let j = journal(&state, node);
        if j["attempt"]["state"] == "rolled_back" {
            rolled_back += 1;
            assert!(
                j["attempt"]["denylist"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|x| x == broken.as_str())),
                "{node}: {j}"
            );
        }
    }
    // The canary failed and the rollout stopped before the rest.
    assert!(rolled_back >= 1, "{text}");
    assert!(
        rolled_back < TARGETS.len(),
        "stopped after the first wave: {text}"
    );
}
