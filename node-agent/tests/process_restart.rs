//! A node-agent process killed with SIGKILL restarts from its peer cache and is
//! `active` without the control plane.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fabric_compose::fleet::{synthetic_nodes, Admitted, FleetOptions, LocalFleet};
use fabric_node_agent::registry::RegistryStatus;
use fabric_node_agent::status::{self, NodeStatus};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn spawn(state: &Path, admitted: &Admitted) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fabric-node-agent"))
        .args(admitted.node_agent_args("extra-1", state))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node-agent binary starts")
}

async fn wait_status(state: &Path, what: &str, ok: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
    let start = Instant::now();
    loop {
        if let Ok(s) = status::read(state) {
            if ok(&s) {
                return s;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: timed out; last {:?}",
            status::read(state).ok().map(|s| (
                s.peer_cache,
                s.directory_records,
                s.registry.status
            ))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Reap(Option<Child>);
impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_node_agent_restarts_from_its_cache_without_the_control_plane() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = LocalFleet::start(
        &synthetic_nodes(6),
        FleetOptions::new(dir.path().join("fleet")),
    )
    .await
    .expect("fleet");
    let state = dir.path().join("extra-1");
    let admitted = fleet.admit("extra-1", &state).await.expect("admitted");
    let seed = &fleet.members[0];
    let total = fleet.expected_records() + 1;

    let mut child = Reap(Some(spawn(&state, &admitted)));
    wait_status(&state, "process converges", |s| {
        s.directory_records == total && s.registry.status == RegistryStatus::Active
    })
    .await;
    // Let the cache be written (at most one second after the last change).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if let Some(mut c) = child.0.take() {
        c.kill().expect("SIGKILL");
        let _ = c.wait();
    }

    // The control edge is gone, and so is the node it bootstrapped from.
    let control: Vec<String> = fleet
        .members
        .iter()
        .filter(|m| m.spec.roles.iter().any(|r| r.as_str() == "control-api"))
        .map(|m| m.name.clone())
        .collect();
    for n in control.iter().chain(std::iter::once(&seed.name.clone())) {
        fleet.stop_node(n).await.expect("stop");
    }

    let restarted_at = now_ms();
    child.0 = Some(spawn(&state, &admitted));
    let s = wait_status(&state, "restarted process active from its cache", |s| {
        s.updated_ms > restarted_at
            && s.directory_records == total
            && s.registry.status == RegistryStatus::Active
    })
    .await;
    assert!(s.peer_cache.starts_with("restored"), "{}", s.peer_cache);
    drop(child);
    fleet.stop_all().await;
}
