//! A node-agent process killed with SIGKILL restarts from its peer cache and is
//! `active` without the control plane.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fabric::identity::NodeIdentity;
use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_node_agent::registry::RegistryStatus;
use fabric_node_agent::status::{self, NodeStatus};
use fabric_schemas::kinds::{EndpointScopeSpec, EndpointSpec, FabricNodeSpec, Spec};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn spawn(state: &Path, listen: &str, trust: &Path, bootstrap: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fabric-node-agent"))
        .args([
            "--name",
            "extra-1",
            "--listen",
            listen,
            "--round-ms",
            "250",
            "--probe-ms",
            "500",
        ])
        .args([
            "--area",
            "delta",
            "--site-id",
            "delta-site-1",
            "--locality-group",
            "delta-lan-1",
            "--nat-group",
            "delta-nat-1",
        ])
        .arg("--state-dir")
        .arg(state)
        .arg("--trust-root")
        .arg(trust)
        .args(["--bootstrap", bootstrap])
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
    std::fs::create_dir_all(&state).expect("mkdir");
    let id = NodeIdentity::load_or_create(&state.join("node.key"))
        .expect("key")
        .node_id();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let seed = &fleet.members[0];
    let bootstrap = format!("{}@{}", seed.node_id, seed.addr);
    let trust = fleet.trust_root_file();

    let node = Spec::FabricNode(FabricNodeSpec {
        area: "delta".into(),
        site_id: "delta-site-1".into(),
        locality_group: "delta-lan-1".into(),
        nat_group: "delta-nat-1".into(),
        node_id: Some(id.to_string()),
        roles: vec![],
        endpoints: vec![EndpointSpec {
            address: listen.clone(),
            scope: EndpointScopeSpec::Public,
            locality_group: None,
            nat_group: None,
        }],
        critical: false,
        resilience_target: None,
    });
    let rec = fleet.sign(&node, "extra-1", 1).expect("sign");
    fleet
        .handle(&seed.name)
        .expect("seed")
        .inject(rec)
        .await
        .expect("accepted");
    let total = fleet.expected_records() + 1;

    let mut child = Reap(Some(spawn(&state, &listen, &trust, &bootstrap)));
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
    child.0 = Some(spawn(&state, &listen, &trust, &bootstrap));
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
