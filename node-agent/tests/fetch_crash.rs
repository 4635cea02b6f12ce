//! A node-agent process SIGKILLed at each write point of an artifact fetch:
//! nothing is half-staged, and the restarted process resumes with the pieces
//! it already verified instead of fetching them again.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fabric::identity::NodeIdentity;
use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_node_agent::status::{self, NodeStatus};
use fabric_node_agent::update::artifact::{piece_root, sha256, ArtifactStore, Progress};
use fabric_schemas::kinds::{
    ArtifactSpec, Component, EndpointScopeSpec, EndpointSpec, FabricNodeSpec, PieceSpec, Spec,
    TargetSelector, UpdateIntentSpec,
};

const PIECE: u64 = 16 * 1024;
const SIZE: usize = 40 * PIECE as usize + 1234;

struct Reap(Option<Child>);
impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(state: &Path, listen: &str, trust: &Path, bootstrap: &str, pause: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fabric-node-agent"));
    cmd.args(["--name", "extra-1", "--listen", listen, "--round-ms", "250"])
        .args(["--probe-ms", "500", "--updater-poll-ms", "1000"])
        .args(["--area", "delta", "--site-id", "delta-site-1"])
        .args([
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
        .stderr(Stdio::null());
    if let Some(p) = pause {
        cmd.env("FABRIC_PAUSE_AT", p)
            .env("FABRIC_PAUSE_MARKER", state.join("paused"));
    }
    cmd.spawn().expect("node-agent binary starts")
}

async fn wait_for(what: &str, within: Duration, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn progress(state: &Path, sha: &str) -> Option<Progress> {
    ArtifactStore::new(&state.join("artifacts")).progress(sha)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_killed_at_each_write_point_resumes_without_refetching_verified_pieces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = LocalFleet::start(
        &synthetic_nodes(4),
        FleetOptions::new(dir.path().join("fleet")),
    )
    .await
    .expect("fleet");
    let data: Vec<u8> = (0..SIZE).map(|i| ((i * 31 + 7) % 253) as u8).collect();
    let sha = hex::encode(sha256(&data));
    let digests: Vec<[u8; 32]> = data.chunks(PIECE as usize).map(sha256).collect();
    // beta-1 provides `update-store` in a synthetic fleet: the origin tier.
    let holder = &fleet.members[1];
    let build = dir.path().join("build");
    std::fs::write(&build, &data).expect("write");
    ArtifactStore::new(&holder.state_dir.join("artifacts"))
        .import(&build, None)
        .expect("import");
    let trust = fleet.trust_root_file();
    let seed = &fleet.members[0];
    let bootstrap = format!("{}@{}", seed.node_id, seed.addr);
    let seed_h = fleet.handle(&seed.name).expect("seed");
    let holder_h = fleet.handle(&holder.name).expect("holder");

    for (round, point) in [
        "artifact:piece_written",
        "artifact:progress_saved",
        "artifact:verified",
    ]
    .into_iter()
    .enumerate()
    {
        // A fresh node each round, with its own intent generation.
        let state = dir.path().join(format!("extra-{round}"));
        std::fs::create_dir_all(&state).expect("mkdir");
        let id = NodeIdentity::load_or_create(&state.join("node.key"))
            .expect("key")
            .node_id();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port")
            .port();
        let listen = format!("127.0.0.1:{port}");
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
        let generation = round as u64 + 1;
        let rec = fleet
            .sign(&node, "extra-1", (generation << 20) + 1)
            .expect("sign node");
        seed_h.inject(rec).await.expect("node record");
        let intent = Spec::UpdateIntent(UpdateIntentSpec {
            component: Component::NodeAgent,
            version: format!("0.9.{round}"),
            artifact: ArtifactSpec {
                sha256: sha.clone(),
                size: SIZE as u64,
                mirrors: vec!["fabric://update-store/x".into()],
                pieces: Some(PieceSpec {
                    piece_size: PIECE,
                    root: hex::encode(piece_root(&digests)),
                }),
            },
            target: TargetSelector {
                nodes: vec!["extra-1".into()],
                ..Default::default()
            },
            policy: "default".into(),
        });
        let rec = fleet
            .sign(&intent, "agent-extra", generation << 20)
            .expect("sign intent");
        seed_h.inject(rec).await.expect("intent");

        let served_before = holder_h.status().artifact_bytes_served;
        let mut child = Reap(Some(spawn(
            &state,
            &listen,
            &trust,
            &bootstrap,
            Some(point),
        )));
        wait_for(point, Duration::from_secs(60), || {
            state.join("paused").exists()
        })
        .await;
        if let Some(mut c) = child.0.take() {
            c.kill().expect("SIGKILL");
            let _ = c.wait();
        }
        let staged = state.join("artifacts").join(&sha).join("artifact");
        assert!(
            !staged.exists(),
            "{point}: nothing is staged by a killed fetch"
        );
        let kept = progress(&state, &sha).expect("progress survives");
        let verified: Vec<u64> = (0..kept.have.len() as u64)
            .filter(|i| kept.have[*i as usize])
            .collect();
        // Every piece the progress marks is really there, byte for byte.
        let partial =
            std::fs::read(state.join("artifacts").join(&sha).join("partial")).expect("partial");
        assert_eq!(partial.len(), SIZE, "{point}: never longer than signed");
        for i in &verified {
            let (o, l) = (i * PIECE, PIECE.min(SIZE as u64 - i * PIECE));
            assert_eq!(
                sha256(&partial[o as usize..(o + l) as usize]),
                digests[*i as usize],
                "{point}: piece {i} marked but not whole"
            );
        }
        match point {
            "artifact:piece_written" => assert!(verified.len() < digests.len()),
            "artifact:verified" => assert_eq!(verified.len(), digests.len()),
            _ => assert!(!verified.is_empty()),
        }
        // The holder's status counts once a gossip round.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let served_first = holder_h.status().artifact_bytes_served - served_before;

        child.0 = Some(spawn(&state, &listen, &trust, &bootstrap, None));
        wait_for("staged after the restart", Duration::from_secs(60), || {
            status::read(&state).ok().is_some_and(|s: NodeStatus| {
                s.update
                    .as_ref()
                    .is_some_and(|u| u.staged_sha256.as_deref() == Some(sha.as_str()))
            })
        })
        .await;
        assert_eq!(std::fs::read(&staged).expect("staged"), data);
        // Status is written once a second: let the holder's count settle.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let served_total = holder_h.status().artifact_bytes_served - served_before;
        let refetched = served_total - served_first;
        let missing = (digests.len() - verified.len()) as u64;
        assert!(
            refetched <= missing * PIECE,
            "{point}: the restart fetched {refetched} bytes; only {missing} pieces were missing"
        );
        drop(child);
    }
    let mut fleet = fleet;
    fleet.stop_all().await;
}
