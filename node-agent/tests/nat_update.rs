//! The seed's P5 done-when, on real packets in network namespaces: a node
//! behind NAT that cannot reach the control edge learns a new intent through
//! a neighbour, fetches the artifact from that neighbour, reports `staged`,
//! and does not apply until the orchestrator's lease reaches it through the
//! neighbour; then it applies.
//!
//! ```text
//!   ns "pub": the fleet (in-process agents, 198.51.100.10:*)
//!        │ veth
//!   ns "rt": router, wan 198.51.100.1 / lan 10.9.0.1, masquerade; drops
//!            everything from the LAN to the control-api provider's port
//!        │ veth
//!   ns "priv": the NAT'd node (a fabric-node-agent process, 10.9.0.2)
//! ```
//!
//! Needs root, `ip` and `nft`; skips loudly without them, and fails instead
//! when `CI=true`. Nothing leaves the namespaces the test creates.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fabric::identity::NodeIdentity;
use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_integration_tests::netns::{preflight, Lab, Preflight};
use fabric_node_agent::status::{self, NodeStatus};
use fabric_node_agent::update::artifact::{piece_root, sha256, ArtifactStore};
use fabric_node_agent::update::updater::{ApplyRequest, APPLY_REQUEST_FILE, APPLY_RESULT_FILE};
use fabric_schemas::kinds::{
    ArtifactSpec, Component, EndpointScopeSpec, EndpointSpec, FabricNodeSpec, NodeRole, PieceSpec,
    RolloutLeaseSpec, Spec, TargetSelector, UpdateIntentSpec,
};
use fabric_schemas::time::{format_rfc3339, now_unix};
use fabric_schemas::{Envelope, Record, Role, Scope, ScopeTerm};

const PUB_ADDR: &str = "198.51.100.10";
const RT_WAN: &str = "198.51.100.1";
const PRIV_ADDR: &str = "10.9.0.2";
const PRIV_PORT: u16 = 7450;
const PIECE: u64 = 16 * 1024;

fn can_run() -> bool {
    match preflight() {
        Preflight::Ready => true,
        Preflight::Unavailable(why) => {
            let msg = format!(
                "the NAT update test needs root, iproute2 and nftables: {why}. \
                 On Debian: apt-get install -y iproute2 nftables, and run as root."
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true, refusing to skip: {msg}");
            }
            let bar = "!".repeat(78);
            let _ = writeln!(
                std::io::stderr(),
                "\n{bar}\nSKIPPED nat_update: {msg}\n{bar}\n"
            );
            false
        }
    }
}

/// While alive, the calling thread is in network namespace `ns`: sockets it
/// creates stay there after the thread moves back (on drop).
struct InNetns(std::fs::File);

impl InNetns {
    fn enter(ns: &str) -> InNetns {
        use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
        let home = std::fs::File::open("/proc/thread-self/ns/net").expect("own netns");
        let target = std::fs::File::open(format!("/run/netns/{ns}")).expect("lab netns");
        move_into_link_name_space(target.as_fd(), Some(LinkNameSpaceType::Network))
            .expect("setns into the lab");
        InNetns(home)
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
        if let Err(e) = move_into_link_name_space(self.0.as_fd(), Some(LinkNameSpaceType::Network))
        {
            eprintln!("setns back home failed: {e}");
        }
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

fn wait_status(
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
            "{what}: timed out; last update {:?}, records {:?}",
            status::read(state).ok().and_then(|s| s.update),
            status::read(state).ok().map(|s| s.directory_records)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_nat_learns_fetches_and_stages_through_a_neighbour_and_applies_only_under_a_lease(
) {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let public = lab.add_ns("pub").expect("ns");
    let router = lab.add_ns("rt").expect("ns");
    let private = lab.add_ns("priv").expect("ns");
    lab.veth(&public, "eth0", &router, "wan").expect("veth");
    lab.veth(&router, "lan", &private, "eth0").expect("veth");
    lab.addr(&public, "eth0", &format!("{PUB_ADDR}/24"))
        .expect("addr");
    lab.addr(&router, "wan", &format!("{RT_WAN}/24"))
        .expect("addr");
    lab.addr(&router, "lan", "10.9.0.1/24").expect("addr");
    lab.addr(&private, "eth0", &format!("{PRIV_ADDR}/24"))
        .expect("addr");
    lab.default_route(&private, "10.9.0.1").expect("route");
    lab.forwarding(&router).expect("forwarding");

    // The fleet lives in "pub": its sockets are created there.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = FleetOptions::new(dir.path().join("fleet"));
    opts.host = PUB_ADDR.parse().expect("addr");
    // Seven: the seventh synthetic node provides no core service.
    let nodes = synthetic_nodes(7);
    let fleet = {
        // The test's body is polled on this thread only (the runtime's
        // block_on), so every socket the fleet binds while awaiting is made
        // in "pub".
        let _in_pub = InNetns::enter(&public);
        LocalFleet::start(&nodes, opts)
            .await
            .expect("fleet in the public namespace")
    };
    let control = fleet
        .members
        .iter()
        .find(|m| m.spec.roles.contains(&NodeRole::ControlApi))
        .expect("a control-api provider");
    // The neighbour: a plain node, neither control edge nor store.
    let neighbour = fleet
        .members
        .iter()
        .find(|m| m.spec.roles.is_empty())
        .expect("a plain node");
    lab.nft(
        &router,
        &format!(
            r#"
table ip fabnat {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "lan" ip daddr {PUB_ADDR} udp dport {} counter drop comment "to-control-edge"
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
  }}
}}
"#,
            control.addr.port()
        ),
    )
    .expect("router rules");

    // The NAT'd node: its record names only its private endpoint.
    let state = dir.path().join("nat-1");
    std::fs::create_dir_all(&state).expect("mkdir");
    let id = NodeIdentity::load_or_create(&state.join("node.key"))
        .expect("key")
        .node_id();
    let record = Spec::FabricNode(FabricNodeSpec {
        area: "delta".into(),
        site_id: "delta-site-1".into(),
        locality_group: "delta-lan-1".into(),
        nat_group: "delta-nat-1".into(),
        node_id: Some(id.to_string()),
        roles: vec![],
        endpoints: vec![EndpointSpec {
            address: format!("{PRIV_ADDR}:{PRIV_PORT}"),
            scope: EndpointScopeSpec::Private,
            locality_group: None,
            nat_group: None,
        }],
        critical: false,
        resilience_target: None,
    });
    let n_h = fleet.handle(&neighbour.name).expect("neighbour");
    n_h.inject(fleet.sign(&record, "nat-1", 1).expect("sign"))
        .await
        .expect("node record");
    let total = fleet.expected_records() + 1;
    let bootstrap = format!("{}@{}", neighbour.node_id, neighbour.addr);
    let log = std::fs::File::create(dir.path().join("nat-1.log")).expect("log");
    let mut child = Reap(Some(
        Command::new("ip")
            .args(["netns", "exec", &private])
            .arg(env!("CARGO_BIN_EXE_fabric-node-agent"))
            .args([
                "--name",
                "nat-1",
                "--listen",
                &format!("{PRIV_ADDR}:{PRIV_PORT}"),
            ])
            .args([
                "--round-ms",
                "250",
                "--probe-ms",
                "500",
                "--updater-poll-ms",
                "2000",
            ])
            .args(["--area", "delta", "--site-id", "delta-site-1"])
            .args([
                "--locality-group",
                "delta-lan-1",
                "--nat-group",
                "delta-nat-1",
            ])
            .arg("--state-dir")
            .arg(&state)
            .arg("--trust-root")
            .arg(fleet.trust_root_file())
            .args(["--bootstrap", &bootstrap])
            .env("FABRIC_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("node-agent in the private namespace"),
    ));
    wait_status(
        &state,
        "the NAT'd node joins",
        Duration::from_secs(60),
        |s| s.directory_records == total,
    );

    // The build is only on the neighbour; the intent is handed only to it.
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let sha = hex::encode(sha256(&data));
    let digests: Vec<[u8; 32]> = data.chunks(PIECE as usize).map(sha256).collect();
    let build = dir.path().join("build");
    std::fs::write(&build, &data).expect("write");
    ArtifactStore::new(&neighbour.state_dir.join("artifacts"))
        .import(&build, None)
        .expect("import");
    let intent = Spec::UpdateIntent(UpdateIntentSpec {
        component: Component::NodeAgent,
        version: "0.9.0".into(),
        artifact: ArtifactSpec {
            sha256: sha.clone(),
            size: data.len() as u64,
            mirrors: vec!["fabric://update-store/agent-0-9".into()],
            pieces: Some(PieceSpec {
                piece_size: PIECE,
                root: hex::encode(piece_root(&digests)),
            }),
        },
        target: TargetSelector {
            nodes: vec!["nat-1".into()],
            ..Default::default()
        },
        policy: "default".into(),
    });
    let neighbour_served = n_h.status().artifact_bytes_served;
    n_h.inject(fleet.sign(&intent, "agent-0-9", 2 << 20).expect("sign"))
        .await
        .expect("intent");

    let s = wait_status(&state, "staged behind NAT", Duration::from_secs(60), |s| {
        s.update.as_ref().is_some_and(|u| u.state == "staged")
    });
    assert_eq!(
        s.update.as_ref().and_then(|u| u.staged_sha256.as_deref()),
        Some(sha.as_str())
    );
    // It waits: no lease, no apply.
    std::thread::sleep(Duration::from_secs(3));
    // The neighbour, the only holder, served every byte.
    assert!(
        n_h.status().artifact_bytes_served >= neighbour_served + data.len() as u64,
        "the neighbour served {} bytes",
        n_h.status().artifact_bytes_served - neighbour_served
    );
    let request = state.join("update").join(APPLY_REQUEST_FILE);
    assert_eq!(
        status::read(&state)
            .expect("status")
            .update
            .map(|u| u.state),
        Some("staged".to_owned())
    );
    assert!(!request.exists(), "nothing applied without a lease");
    assert!(
        lab.nft_counter(&router, "to-control-edge")
            .expect("counter")
            > 0,
        "the NAT'd node tried the control edge and was cut off"
    );

    // The orchestrator's lease, handed to the neighbour only.
    let lease = Spec::RolloutLease(RolloutLeaseSpec {
        node: "nat-1".into(),
        intent: "agent-0-9".into(),
        intent_generation: 2,
        phase: Component::NodeAgent,
        lease_id: "lease-nat-1".into(),
        expires_at: format_rfc3339(now_unix() + 600),
        recovery_override: false,
    });
    let now = now_unix();
    let rec = Record::new(
        &lease,
        "nat-1.node-agent",
        now as u64,
        now,
        now + 600,
        Scope::new(vec![ScopeTerm::Node("nat-1".into())]).expect("scope"),
    )
    .expect("lease record");
    let key = fleet
        .role_key(Role::Orchestrator)
        .expect("orchestrator key");
    n_h.inject(Envelope::sign(rec, &[&key]).encode())
        .await
        .expect("lease");
    wait_status(
        &state,
        "applying under the lease",
        Duration::from_secs(60),
        |s| s.update.as_ref().is_some_and(|u| u.state == "applying"),
    );
    let req: ApplyRequest =
        serde_json::from_slice(&std::fs::read(&request).expect("request")).expect("parses");
    assert_eq!(req.lease_id, "lease-nat-1");
    assert_eq!(req.sha256, sha);
    // The host agent's answer, from a real child process.
    let answer =
        serde_json::json!({"outcome": "committed", "lease_id": "lease-nat-1", "sha256": sha});
    let result = state.join("update").join(APPLY_RESULT_FILE);
    let ok = Command::new("sh")
        .arg("-c")
        .arg(r#"test -r "$1" && printf '%s' "$2" > "$3.tmp" && mv "$3.tmp" "$3""#)
        .arg("host-agent")
        .arg(&req.artifact)
        .arg(answer.to_string())
        .arg(&result)
        .status()
        .expect("child runs");
    assert!(ok.success());
    wait_status(&state, "healthy", Duration::from_secs(30), |s| {
        s.update.as_ref().is_some_and(|u| u.state == "healthy")
    });
    drop(child.0.take().map(|mut c| {
        let _ = c.kill();
        c.wait()
    }));
    let mut fleet = fleet;
    fleet.stop_all().await;
    drop(lab);
}
