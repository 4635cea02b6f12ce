//! `--log-format json` on the binaries: every log line on stderr is one
//! JSON object with a timestamp, a level and the event's fields.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_fabricctl");

#[test]
fn node_agent_logs_are_json_objects_with_level_and_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    let out = Command::new(BIN)
        .args(["keys", "init"])
        .arg(&keys)
        .output()
        .expect("keys init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = Path::new(BIN)
        .parent()
        .expect("bin folder")
        .join("fabric-node-agent");
    assert!(
        agent.is_file(),
        "{} is missing: build the workspace's binaries",
        agent.display()
    );
    let child = Command::new(&agent)
        .args([
            "--log-format",
            "json",
            "--name",
            "solo",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("solo"))
        .arg("--trust-root")
        .arg(keys.join("trust-root.yaml"))
        .env("FABRIC_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node-agent runs");
    std::thread::sleep(Duration::from_secs(2));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("exit");
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
        assert!(v["fields"].is_object(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("node-agent running")),
        "{text}"
    );
}
