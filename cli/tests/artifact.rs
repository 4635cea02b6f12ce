//! `fabricctl artifact`: the binary, real files, a real store folder.

use std::path::Path;
use std::process::{Command, Output};

fn fabricctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fabricctl"))
        .args(args)
        .output()
        .expect("fabricctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn intent(sha256: &str, size: u64) -> String {
    format!(
        "apiVersion: fabric.dev/v1alpha1
kind: UpdateIntent
metadata:
  name: agent-0-9
spec:
  component: node-agent
  version: 0.9.0
  artifact:
    sha256: {sha256}
    size: {size}
    mirrors: [\"fabric://update-store/agent-0-9\"]
  target:
    all: true
  policy: default
"
    )
}

#[test]
fn push_stores_a_build_and_prints_the_block_an_intent_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let build = dir.path().join("fabric-node-agent");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&build, &data).expect("write");
    let store = dir.path().join("store");
    let out = fabricctl(&[
        "artifact",
        "push",
        s(&build),
        "--store",
        s(&store),
        "--piece-size",
        "65536",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let sha = v["sha256"].as_str().expect("sha256").to_owned();
    assert_eq!(v["size"], 200_000);
    assert_eq!(v["pieces"]["pieceSize"], 65536);
    assert_eq!(v["pieces"]["root"].as_str().map(str::len), Some(64));
    assert_eq!(
        std::fs::read(store.join(&sha).join("artifact")).expect("stored"),
        data
    );
    // `hash` prints the same without storing.
    let out = fabricctl(&[
        "artifact",
        "hash",
        s(&build),
        "--piece-size",
        "65536",
        "-o",
        "json",
    ]);
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(h, v);

    // Pushing for an intent that names another hash or size is refused.
    let manifests = dir.path().join("intent.yaml");
    std::fs::write(&manifests, intent(&"ab".repeat(32), 200_000)).expect("write");
    let out = fabricctl(&[
        "artifact",
        "push",
        s(&build),
        "--store",
        s(&store),
        "--manifests",
        s(&manifests),
        "--intent",
        "agent-0-9",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("sha256 is"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(&manifests, intent(&sha, 199_999)).expect("write");
    let out = fabricctl(&[
        "artifact",
        "push",
        s(&build),
        "--store",
        s(&store),
        "--manifests",
        s(&manifests),
        "--intent",
        "agent-0-9",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("size is 200000 bytes"),
        "{}",
        text(&out.stderr)
    );
    // The matching intent is accepted.
    std::fs::write(&manifests, intent(&sha, 200_000)).expect("write");
    let out = fabricctl(&[
        "artifact",
        "push",
        s(&build),
        "--store",
        s(&store),
        "--manifests",
        s(&manifests),
        "--intent",
        "agent-0-9",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A bad piece size is named.
    let out = fabricctl(&["artifact", "hash", s(&build), "--piece-size", "1000"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--piece-size 1000"),
        "{}",
        text(&out.stderr)
    );
}
