//! The whole node-agent phase with real processes: a host agent supervises a
//! real `fabric-node-agent` process; an intent and a lease reach the node
//! by gossip; its updater fetches the new build from the `update-store`
//! node, stages it and asks the host agent to apply it; the host agent
//! installs it as a slot, switches, restarts the node-agent from it, sees
//! `READY=1` with the new digest, commits after probation; the new process
//! reads its journal and reports `healthy`.

use std::path::Path;
use std::time::{Duration, Instant};

use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_host_agent::agent::{HostAgent, HostConfig};
use fabric_host_agent::phase::Window;
use fabric_node_agent::status::{self, NodeStatus};
use fabric_node_agent::update::artifact::{hash_file, ArtifactStore};
use fabric_runtime::BackoffConfig;
use fabric_schemas::kinds::{
    ArtifactSpec, Component, RolloutLeaseSpec, Spec, TargetSelector, UpdateIntentSpec,
};
use fabric_schemas::time::{format_rfc3339, now_unix};
use fabric_schemas::{Envelope, Record, Role, Scope, ScopeTerm};

async fn wait_status(
    state: &Path,
    what: &str,
    within: Duration,
    ok: impl Fn(&NodeStatus) -> bool,
) -> NodeStatus {
    let start = Instant::now();
    loop {
        if let Ok(s) = status::read(state) {
            if ok(&s) {
                return s;
            }
        }
        assert!(
            start.elapsed() < within,
            "{what}: timed out; update {:?}, host {:?}",
            status::read(state).ok().and_then(|s| s.update),
            status::read(state).ok().and_then(|s| s.host)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_agent_applies_and_commits_a_new_node_agent_build_under_a_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = LocalFleet::start(
        &synthetic_nodes(4),
        FleetOptions::new(dir.path().join("fleet")),
    )
    .await
    .expect("fleet");
    let seed = fleet.handle(&fleet.members[0].name).expect("seed");

    // The node the host agent runs, admitted into the fleet.
    let state = dir.path().join("extra-1");
    let admitted = fleet.admit("extra-1", &state).await.expect("admitted");

    // Build 2: the same program with a different digest.
    let v1 = Path::new(env!("CARGO_BIN_EXE_fabric-node-agent"));
    let v2 = dir.path().join("fabric-node-agent-v2");
    let mut bytes = std::fs::read(v1).expect("binary");
    bytes.extend_from_slice(b"\nfabric build 2\n");
    std::fs::write(&v2, &bytes).expect("write v2");
    let (size2, sha2) = hash_file(&v2).expect("hash");
    let (_, sha1) = hash_file(v1).expect("hash");
    // beta-1 provides `update-store` in a synthetic fleet.
    ArtifactStore::new(&fleet.members[1].state_dir.join("artifacts"))
        .import(&v2, None)
        .expect("import");

    let host_dir = dir.path().join("host");
    let agent = HostAgent::new(HostConfig {
        state_dir: state.clone(),
        host_dir: host_dir.clone(),
        initial: Some(v1.to_path_buf()),
        args: admitted
            .node_agent_args("extra-1", &state)
            .into_iter()
            .chain(["--updater-poll-ms".to_owned(), "1000".to_owned()])
            .collect(),
        window: Window {
            ready_deadline: Duration::from_secs(30),
            probation: Duration::from_secs(1),
        },
        restart_backoff: BackoffConfig::new(Duration::from_millis(200), Duration::from_secs(2)),
    })
    .expect("host agent");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let host = tokio::spawn(agent.run(async {
        let _ = stop_rx.await;
    }));

    let total = fleet.expected_records() + 1;
    let s = wait_status(
        &state,
        "node-agent up under the host agent",
        Duration::from_secs(60),
        |s| {
            s.directory_records == total
                && s.host.as_ref().is_some_and(|h| h.last_health_ms.is_some())
        },
    )
    .await;
    assert_eq!(
        s.host.as_ref().and_then(|h| h.node_agent_digest.as_deref()),
        Some(sha1.as_str())
    );

    let intent = Spec::UpdateIntent(UpdateIntentSpec {
        component: Component::NodeAgent,
        version: "0.9.0".into(),
        artifact: ArtifactSpec {
            sha256: sha2.clone(),
            size: size2,
            mirrors: vec!["fabric://update-store/agent-0-9".into()],
            pieces: None,
        },
        target: TargetSelector {
            nodes: vec!["extra-1".into()],
            ..Default::default()
        },
        policy: "default".into(),
    });
    seed.inject(fleet.sign(&intent, "agent-0-9", 2 << 20).expect("sign"))
        .await
        .expect("intent");
    wait_status(&state, "staged", Duration::from_secs(120), |s| {
        s.update.as_ref().is_some_and(|u| u.state == "staged")
    })
    .await;

    let lease = Spec::RolloutLease(RolloutLeaseSpec {
        node: "extra-1".into(),
        intent: "agent-0-9".into(),
        intent_generation: 2,
        phase: Component::NodeAgent,
        lease_id: "lease-extra-1".into(),
        expires_at: format_rfc3339(now_unix() + 600),
        recovery_override: false,
    });
    let now = now_unix();
    let rec = Record::new(
        &lease,
        "extra-1.node-agent",
        now as u64,
        now,
        now + 600,
        Scope::new(vec![ScopeTerm::Node("extra-1".into())]).expect("scope"),
    )
    .expect("lease");
    let key = fleet
        .role_key(Role::Orchestrator)
        .expect("orchestrator key");
    seed.inject(Envelope::sign(rec, &[&key]).encode())
        .await
        .expect("lease");

    let s = wait_status(
        &state,
        "healthy on the new build",
        Duration::from_secs(120),
        |s| {
            s.update.as_ref().is_some_and(|u| u.state == "healthy")
                && s.host
                    .as_ref()
                    .is_some_and(|h| h.node_agent_digest.as_deref() == Some(sha2.as_str()))
        },
    )
    .await;
    assert_eq!(
        s.update.and_then(|u| u.lease_id).as_deref(),
        Some("lease-extra-1")
    );
    let current = std::fs::read_link(host_dir.join("current")).expect("current");
    assert!(current.ends_with(&sha2), "{current:?}");
    let previous = std::fs::read_link(host_dir.join("previous")).expect("previous");
    assert!(previous.ends_with(&sha1), "{previous:?}");

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), host).await;
    let mut fleet = fleet;
    fleet.stop_all().await;
}
