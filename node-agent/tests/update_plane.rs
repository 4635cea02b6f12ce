//! The node-side update plane on real QUIC over loopback: an intent that
//! reaches a node only by gossip, an artifact fetched in verified pieces from
//! a neighbour, `staged` until a lease arrives, the host-agent interface
//! driven by a real child process, a dead updater restarted.

use std::path::Path;
use std::time::Duration;

use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_node_agent::status::NodeStatus;
use fabric_node_agent::update::artifact::{piece_root, sha256, ArtifactStore};
use fabric_node_agent::update::updater::{ApplyRequest, APPLY_REQUEST_FILE, APPLY_RESULT_FILE};
use fabric_schemas::kinds::{
    ArtifactSpec, Component, PieceSpec, RolloutLeaseSpec, Spec, TargetSelector, UpdateIntentSpec,
};
use fabric_schemas::time::{format_rfc3339, now_unix};
use fabric_schemas::{Envelope, Record, Role, Scope, ScopeTerm};
use fabric_testkit::wait_until;

const PIECE: u64 = 16 * 1024;
const GENERATION: u64 = 2;
const RESIGN_BITS: u32 = 20;

fn build(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 * 2654435761 + salt as u64) >> 7) as u8)
        .collect()
}

fn intent_for(target: &str, data: &[u8]) -> Spec {
    let digests: Vec<[u8; 32]> = data.chunks(PIECE as usize).map(sha256).collect();
    Spec::UpdateIntent(UpdateIntentSpec {
        component: Component::NodeAgent,
        version: "0.9.0".into(),
        artifact: ArtifactSpec {
            sha256: hex::encode(sha256(data)),
            size: data.len() as u64,
            mirrors: vec!["fabric://update-store/agent-0-9".into()],
            pieces: Some(PieceSpec {
                piece_size: PIECE,
                root: hex::encode(piece_root(&digests)),
            }),
        },
        target: TargetSelector {
            nodes: vec![target.to_owned()],
            ..Default::default()
        },
        policy: "default".into(),
    })
}

fn lease_for(fleet: &LocalFleet, node: &str, id: &str) -> Vec<u8> {
    let spec = Spec::RolloutLease(RolloutLeaseSpec {
        node: node.to_owned(),
        intent: "agent-0-9".into(),
        intent_generation: GENERATION,
        phase: Component::NodeAgent,
        lease_id: id.to_owned(),
        expires_at: format_rfc3339(now_unix() + 600),
        recovery_override: false,
    });
    let now = now_unix();
    let rec = Record::new(
        &spec,
        &format!("{node}.node-agent"),
        now as u64,
        now,
        now + 600,
        Scope::new(vec![ScopeTerm::Node(node.to_owned())]).expect("scope"),
    )
    .expect("lease record");
    let key = fleet
        .role_key(Role::Orchestrator)
        .expect("orchestrator key");
    Envelope::sign(rec, &[&key]).encode()
}

async fn wait_status(
    fleet: &LocalFleet,
    name: &str,
    within: Duration,
    ok: impl Fn(&NodeStatus) -> bool,
) -> NodeStatus {
    let h = fleet.handle(name).expect("running");
    let done = wait_until(within, Duration::from_millis(100), || {
        let s = h.status();
        let hit = ok(&s);
        async move { hit }
    })
    .await;
    let s = h.status();
    assert!(
        done,
        "{name}: update {:?}, updater {:?}",
        s.update, s.updater
    );
    s
}

fn state(s: &NodeStatus) -> &str {
    s.update.as_ref().map_or("", |u| u.state.as_str())
}

async fn fleet(dir: &Path, nodes: usize) -> LocalFleet {
    let mut opts = FleetOptions::new(dir.into());
    opts.updater_fetch_attempts = 2;
    let fleet = LocalFleet::start(&synthetic_nodes(nodes), opts)
        .await
        .expect("fleet");
    let total = fleet.expected_records();
    let converged = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        let done = fleet
            .statuses()
            .iter()
            .all(|s| s.directory_records == total);
        async move { done }
    })
    .await;
    assert!(converged, "fleet converged");
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_by_gossip_is_fetched_from_a_neighbour_staged_and_applied_only_under_a_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet(dir.path(), 4).await;
    let data = build(150_000, 1);
    let sha = hex::encode(sha256(&data));
    // Only the holder has the build; the target learns the intent from
    // another node's gossip.
    let (holder, relay, target) = (&fleet.members[0], &fleet.members[1], &fleet.members[3]);
    let build_file = dir.path().join("build");
    std::fs::write(&build_file, &data).expect("write build");
    ArtifactStore::new(&holder.state_dir.join("artifacts"))
        .import(&build_file, None)
        .expect("import");
    let intent = fleet
        .sign(
            &intent_for(&target.name, &data),
            "agent-0-9",
            GENERATION << RESIGN_BITS,
        )
        .expect("sign intent");
    let relay_h = fleet.handle(&relay.name).expect("relay");
    assert!(relay_h.inject(intent).await.expect("inject"));

    let s = wait_status(&fleet, &target.name, Duration::from_secs(60), |s| {
        state(s) == "staged"
    })
    .await;
    let u = s.update.expect("update");
    assert_eq!(u.staged_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(u.intent, "agent-0-9");
    assert_eq!(u.generation, GENERATION);
    assert_eq!(u.phase, "node-agent");
    assert_eq!(u.lease_id, None);
    let staged = target
        .state_dir
        .join("artifacts")
        .join(&sha)
        .join("artifact");
    assert_eq!(std::fs::read(&staged).expect("staged"), data);
    // Staged is where it stays without a lease.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = fleet.handle(&target.name).expect("target");
    assert_eq!(state(&h.status()), "staged");
    let request = target.state_dir.join("update").join(APPLY_REQUEST_FILE);
    assert!(!request.exists(), "nothing is applied without a lease");
    // Nodes the intent does not target do nothing.
    assert!(fleet
        .handle(&relay.name)
        .expect("relay")
        .status()
        .update
        .is_none());

    assert!(relay_h
        .inject(lease_for(&fleet, &target.name, "lease-t1"))
        .await
        .expect("inject lease"));
    let s = wait_status(&fleet, &target.name, Duration::from_secs(30), |s| {
        state(s) == "applying"
    })
    .await;
    assert_eq!(
        s.update.and_then(|u| u.lease_id).as_deref(),
        Some("lease-t1")
    );
    let req: ApplyRequest =
        serde_json::from_slice(&std::fs::read(&request).expect("request")).expect("parses");
    assert_eq!(req.sha256, sha);
    assert_eq!(req.lease_id, "lease-t1");
    assert_eq!(req.artifact, staged);

    // A real child process answers as the host agent would.
    let result = target.state_dir.join("update").join(APPLY_RESULT_FILE);
    let answer = serde_json::json!({"outcome": "committed", "lease_id": "lease-t1", "sha256": sha});
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"test -r "$1" && printf '%s' "$2" > "$3.tmp" && mv "$3.tmp" "$3""#)
        .arg("host-agent")
        .arg(&req.artifact)
        .arg(answer.to_string())
        .arg(&result)
        .status()
        .expect("child runs");
    assert!(status.success());
    let s = wait_status(&fleet, &target.name, Duration::from_secs(30), |s| {
        state(s) == "healthy"
    })
    .await;
    let liveness = s.updater.expect("updater liveness");
    assert!(liveness.alive);
    assert!(liveness.supports_hint_wake);
    assert!(
        liveness.wakes.get("file").copied().unwrap_or(0) >= 1,
        "the result file woke the updater: {liveness:?}"
    );
    let journal: serde_json::Value = serde_json::from_slice(
        &std::fs::read(target.state_dir.join("update/journal.json")).expect("journal"),
    )
    .expect("journal parses");
    assert_eq!(journal["attempt"]["state"], "healthy");
    assert_eq!(journal["attempt"]["accepted_plan"], "lease-t1");
    assert_eq!(journal["last_known_good"]["sha256"], sha.as_str());
    // The holder served the pieces, and the target can serve them on.
    let holder_served = fleet
        .handle(&holder.name)
        .expect("holder")
        .status()
        .artifact_bytes_served;
    assert!(
        holder_served >= data.len() as u64,
        "holder served {holder_served}"
    );
    let mut fleet = fleet;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_serving_a_bad_piece_is_dropped_and_one_with_only_bad_pieces_aborts_the_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet(dir.path(), 4).await;
    let data = build(100_000, 2);
    let sha = hex::encode(sha256(&data));
    let build_file = dir.path().join("build");
    std::fs::write(&build_file, &data).expect("write build");
    // The bad holder keeps the right piece list but serves a corrupted copy.
    let bad = &fleet.members[0];
    let store = ArtifactStore::new(&bad.state_dir.join("artifacts"));
    store.import(&build_file, None).expect("import");
    assert!(store.piece_digests(&sha, PIECE).is_some());
    let staged = store.staged_path(&sha);
    let mut perms = std::fs::metadata(&staged).expect("meta").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&staged, perms).expect("chmod");
    let mut corrupt = data.clone();
    corrupt[PIECE as usize + 7] ^= 0xff;
    std::fs::write(&staged, &corrupt).expect("corrupt");

    let target = &fleet.members[3];
    let intent = fleet
        .sign(
            &intent_for(&target.name, &data),
            "agent-0-9",
            GENERATION << RESIGN_BITS,
        )
        .expect("sign");
    let h = fleet.handle(&fleet.members[1].name).expect("node");
    assert!(h.inject(intent).await.expect("inject"));
    let s = wait_status(&fleet, &target.name, Duration::from_secs(90), |s| {
        state(s) == "aborted"
    })
    .await;
    let u = s.update.expect("update");
    assert_eq!(u.reason.as_deref(), Some("bad_piece"), "{u:?}");
    assert_eq!(u.staged_sha256, None);
    assert!(!target
        .state_dir
        .join("artifacts")
        .join(&sha)
        .join("artifact")
        .exists());
    // Verified pieces were kept; the bad one never was.
    let progress: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            target
                .state_dir
                .join("artifacts")
                .join(&sha)
                .join("progress.json"),
        )
        .expect("progress"),
    )
    .expect("parses");
    assert_eq!(progress["have"][1], false);
    let mut fleet = fleet;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_updater_is_detected_restarted_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet(dir.path(), 3).await;
    let name = fleet.members[1].name.clone();
    let h = fleet.handle(&name).expect("node");
    let before = wait_status(&fleet, &name, Duration::from_secs(20), |s| {
        s.updater.as_ref().is_some_and(|u| u.alive)
    })
    .await
    .updater
    .expect("liveness");
    assert_eq!(before.restarts, 0);
    assert!(h.kill_updater());
    let s = wait_status(&fleet, &name, Duration::from_secs(20), |s| {
        s.updater
            .as_ref()
            .is_some_and(|u| u.restarts == 1 && u.alive)
    })
    .await;
    assert!(s.health.is_some());
    let mut fleet = fleet;
    fleet.stop_all().await;
}
