//! The host agent's swap downtime: from telling the old node-agent to stop
//! to the new one's `READY=1`, as the host agent measures it
//! (`last_swap_downtime_ms` in `host-status.json`), over a series of applies
//! alternating between two builds. Prints a table.
//!
//! The builds are small scripts that say `READY=1` with their own digest at
//! once, so the figure is the host agent's own cost of a swap (stop the old
//! group, switch the links, fsync, spawn, readiness over the notify socket);
//! a real node-agent adds its own start-up (about the time it takes to hash
//! itself) on top.
//!
//! `cargo bench -p fabric-host-agent --bench swap_downtime`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fabric_host_agent::agent::{ApplyOutcome, ApplyRequest, APPLY_REQUEST_FILE, APPLY_RESULT_FILE};
use fabric_host_agent::slots::hash_reader;
use fabric_schemas::kinds::Component;

const HA: &str = env!("CARGO_BIN_EXE_fabric-host-agent");
const SWAPS: u64 = 12;

fn build(dir: &Path, tag: &str) -> (PathBuf, String, u64) {
    let path = dir.join(tag);
    let body = format!(
        "#!/bin/sh\n# build {tag}\nd=$(sha256sum \"$0\" | cut -d' ' -f1)\n\"{HA}\" notify --ready --digest \"$d\"\nwhile :; do \"{HA}\" notify --watchdog; sleep 0.5; done\n"
    );
    std::fs::write(&path, body).expect("write build");
    let (size, sha) = hash_reader(std::fs::File::open(&path).expect("open")).expect("hash");
    (path, sha, size)
}

fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

struct Reap(Child, PathBuf);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = wait_for(Duration::from_secs(10), || self.0.try_wait().ok().flatten());
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Ok(pid) = std::fs::read_to_string(self.1.join("child.pid")) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", pid.trim())])
                .status();
        }
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, host) = (dir.path().join("node"), dir.path().join("host"));
    let a = build(dir.path(), "a");
    let b = build(dir.path(), "b");
    let _ha = Reap(
        Command::new(HA)
            .args([
                "run",
                "--ready-deadline-ms",
                "5000",
                "--probation-ms",
                "200",
            ])
            .arg("--state-dir")
            .arg(&state)
            .arg("--host-dir")
            .arg(&host)
            .arg("--node-agent")
            .arg(&a.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("host agent runs"),
        host.clone(),
    );
    let status = |key: &str| -> Option<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.join("host-status.json")).ok()?).ok()?;
        let x = v.get(key)?.clone();
        (!x.is_null()).then_some(x)
    };
    wait_for(Duration::from_secs(20), || status("last_health_ms")).expect("first build ready");
    let mut downtimes = Vec::new();
    for i in 1..=SWAPS {
        let next = if i % 2 == 1 { &b } else { &a };
        let lease = format!("lease-{i}");
        let req = ApplyRequest {
            lease_id: lease.clone(),
            intent: "bench".into(),
            generation: i,
            component: Component::NodeAgent,
            version: format!("0.0.{i}"),
            sha256: next.1.clone(),
            size: next.2,
            artifact: next.0.clone(),
            previous_sha256: None,
        };
        let update = state.join("update");
        std::fs::create_dir_all(&update).expect("mkdir");
        let tmp = update.join(".req");
        std::fs::write(&tmp, serde_json::to_vec(&req).expect("json")).expect("write");
        std::fs::rename(&tmp, update.join(APPLY_REQUEST_FILE)).expect("rename");
        let answer = wait_for(Duration::from_secs(30), || {
            let r: ApplyOutcome =
                serde_json::from_slice(&std::fs::read(update.join(APPLY_RESULT_FILE)).ok()?)
                    .ok()?;
            (r.lease_id() == lease).then_some(r)
        })
        .expect("an answer");
        assert_eq!(answer.outcome(), "committed", "{answer:?}");
        let ms = wait_for(Duration::from_secs(5), || {
            status("last_swap_downtime_ms").and_then(|v| v.as_u64())
        })
        .expect("downtime reported");
        downtimes.push(ms);
    }
    downtimes.sort_unstable();
    let pick = |q: f64| downtimes[((downtimes.len() - 1) as f64 * q).round() as usize];
    println!("host-agent swap downtime (old stopped -> new READY=1), {SWAPS} swaps");
    println!(
        "{:>8} {:>8} {:>8} {:>8}",
        "min ms", "p50 ms", "p90 ms", "max ms"
    );
    println!(
        "{:>8} {:>8} {:>8} {:>8}",
        downtimes[0],
        pick(0.5),
        pick(0.9),
        downtimes[downtimes.len() - 1]
    );
}
