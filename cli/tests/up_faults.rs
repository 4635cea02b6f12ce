//! Faults on demand against a running `fabricctl up`: a killed node is gone
//! while the rest rides through, a stopped control plane leaves every other
//! node working from its signed directory, and `heal` brings both back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod support;
use support::{ctl, text, wait_until, Up, BIN};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The node's own status.json: (registry status, written at).
fn status(state: &Path, node: &str) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.join("nodes").join(node).join("status.json")).ok()?,
    )
    .ok()?;
    Some((
        v["registry"]["status"].as_str()?.to_owned(),
        v["updated_ms"].as_u64()?,
    ))
}

/// Processes whose command line names `dir`.
fn processes_under(dir: &Path) -> usize {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_slice()))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_killed_node_and_a_stopped_control_plane_are_ridden_through_and_healed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = dir.path().join("context.json");
    let state: PathBuf = dir.path().join("up");
    let _up = Up(Command::new(BIN)
        .args(["up", "--nodes", "6"])
        .arg("--state-dir")
        .arg(&state)
        .env("FABRIC_CONTEXT", &ctx)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("up runs"));
    wait_until("6 active nodes", Duration::from_secs(90), || {
        let o = ctl(&ctx, &["get", "nodes"]);
        let t = text(&o);
        let active = t.lines().filter(|l| l.contains(" active ")).count();
        (active == 6).then_some(()).ok_or(t)
    });

    // Refusals name why.
    let o = ctl(&ctx, &["fault", "kill-node", "no-such-node"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no node"), "{}", text(&o));
    let o = ctl(&ctx, &["fault", "kill-node", "alpha-1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("stop-control"), "{}", text(&o));

    // A crash of gamma-1's machine: both its processes are gone.
    let gamma = state.join("nodes").join("gamma-1");
    assert!(
        processes_under(&gamma) >= 2,
        "host agent and node-agent run"
    );
    let o = ctl(&ctx, &["fault", "kill-node", "gamma-1"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until("gamma-1's processes gone", Duration::from_secs(10), || {
        (processes_under(&gamma) == 0)
            .then_some(())
            .ok_or_else(|| "still running".into())
    });

    // The control edge disappears; the other nodes keep working.
    let o = ctl(&ctx, &["fault", "stop-control"]);
    assert!(o.status.success(), "{}", text(&o));
    let stopped_at = now_ms();
    let gone = ctl(&ctx, &["get", "nodes"]);
    assert_ne!(gone.status.code(), Some(0), "the Control API is gone");
    wait_until(
        "the others still active without the control plane",
        Duration::from_secs(30),
        || {
            for node in ["beta-1", "beta-2", "gamma-2"] {
                match status(&state, node) {
                    Some((reg, at)) if reg == "active" && at > stopped_at + 2_000 => {}
                    other => return Err(format!("{node}: {other:?}")),
                }
            }
            Ok(())
        },
    );

    // Heal: gamma-1 restarts from its state folder, the control plane and
    // its context come back.
    let o = ctl(&ctx, &["fault", "heal"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("restarted gamma-1"), "{}", text(&o));
    wait_until("6 active nodes again", Duration::from_secs(120), || {
        let o = ctl(&ctx, &["get", "nodes"]);
        let t = text(&o);
        let fresh_active = t
            .lines()
            .filter(|l| l.contains(" active ") && !l.contains("stale"))
            .count();
        (fresh_active == 6).then_some(()).ok_or(t)
    });
    wait_until("gamma-1 runs again", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(gamma.join("host-agent.log")).unwrap_or_default();
        (processes_under(&gamma) >= 2).then_some(()).ok_or_else(|| {
            format!(
                "{} processes; log tail: {}",
                processes_under(&gamma),
                &log[log.len().saturating_sub(2000)..]
            )
        })
    });
    // The restarted node-agent writes its own status again, active.
    wait_until(
        "gamma-1 reports again",
        Duration::from_secs(30),
        || match status(&state, "gamma-1") {
            Some((reg, at)) if reg == "active" && at > stopped_at => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}
