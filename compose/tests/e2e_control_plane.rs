//! The production shape end to end, on loopback: a reconciler replica
//! co-located with a `control-api` node (in-process node-agent, Control API on
//! its transport, GitOps source, publisher, rollout driver) and three more
//! node-agents. Keys are written as `fabricctl keys init` writes them.
//!
//! Plus smoke tests of the `fabric-reconciler` binary's command line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric::gossip::GossipConfig;
use fabric::topology::{NodeId, TopologyLabels};
use fabric::transport::TransportConfig;
use fabric_compose::replica::{Replica, ReplicaConfig};
use fabric_node_agent::cache::{self, Loaded};
use fabric_node_agent::{AgentConfig, AgentHandle};
use fabric_reconciler::api::{self, ApiConfig, Token};
use fabric_reconciler::controller::{ControlPlaneConfig, RolloutLoop};
use fabric_reconciler::orchestrator::{
    control, Orchestrator, OrchestratorConfig, OrchestratorKeys,
};
use fabric_reconciler::publish::Signer;
use fabric_reconciler::source::GitOpsConfig;
use fabric_reconciler::store::{EmbeddedStore, Store};
use fabric_schemas::keys::{generate_trust_root, write_atomic, write_private_key, TrustRootPlan};
use fabric_schemas::kinds::{Kind, API_VERSION};
use fabric_schemas::TrustAnchor;

/// Bound for each phase of the test.
const WAIT: Duration = Duration::from_secs(60);
const INTENT: &str = "node-agent-rollout";
const NODES: [&str; 4] = ["ctl-0", "node-1", "node-2", "node-3"];

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("fabric_reconciler=info,fabric_node_agent=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// What `fabricctl keys init DIR` writes: `keys/<role>-<n>.pem` and
/// `trust-root.yaml` (JSON is YAML, so no YAML writer is needed here).
fn keys_init(dir: &Path) -> TrustAnchor {
    let plan = TrustRootPlan::single_keys(fabric_schemas::time::now_unix() + 86_400);
    let (spec, keys) = generate_trust_root(&plan);
    std::fs::create_dir_all(dir.join("keys")).expect("mkdir keys");
    for k in &keys {
        write_private_key(&dir.join("keys").join(format!("{}.pem", k.id)), &k.key)
            .expect("write key");
    }
    let manifest = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "TrustRoot",
        "metadata": {"name": "fleet"},
        "spec": spec,
    });
    write_atomic(
        &dir.join("trust-root.yaml"),
        serde_json::to_string_pretty(&manifest)
            .expect("encode")
            .as_bytes(),
        0o644,
    )
    .expect("write trust root");
    TrustAnchor::from_spec(&spec).expect("trust anchor")
}

struct NodeDef {
    name: &'static str,
    area: &'static str,
    site: &'static str,
    roles: &'static [&'static str],
}

const DEFS: [NodeDef; 4] = [
    NodeDef {
        name: NODES[0],
        area: "alpha",
        site: "alpha-1",
        roles: &["control-api"],
    },
    NodeDef {
        name: NODES[1],
        area: "alpha",
        site: "alpha-2",
        roles: &["update-store"],
    },
    NodeDef {
        name: NODES[2],
        area: "beta",
        site: "beta-1",
        roles: &["update-cache"],
    },
    NodeDef {
        name: NODES[3],
        area: "beta",
        site: "beta-2",
        roles: &["update-store", "update-cache"],
    },
];

fn labels(d: &NodeDef) -> TopologyLabels {
    TopologyLabels {
        area: d.area.into(),
        site_id: d.site.into(),
        locality_group: format!("{}-lan", d.site),
        nat_group: format!("{}-nat", d.site),
    }
}

/// Fast timers so the fleet converges in seconds on loopback.
fn agent_config(d: &NodeDef, state: PathBuf, trust: &TrustAnchor) -> AgentConfig {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut cfg = AgentConfig::new(d.name, state, listen, trust.clone());
    cfg.labels = labels(d);
    cfg.gossip = GossipConfig {
        round_ms: 200,
        ..GossipConfig::default()
    };
    cfg.probe_interval = Duration::from_millis(500);
    cfg.heartbeat_interval = Duration::from_millis(500);
    let mut tc = TransportConfig::new(listen);
    tc.connect_timeout = Duration::from_secs(2);
    tc.idle_timeout = Duration::from_secs(10);
    tc.keep_alive = Duration::from_secs(2);
    cfg.transport = Some(tc);
    cfg
}

fn node_manifest(d: &NodeDef, id: NodeId, addr: SocketAddr) -> String {
    let l = labels(d);
    let roles: String = d.roles.iter().map(|r| format!("  - {r}\n")).collect();
    format!(
        "apiVersion: fabric.dev/v1alpha1
kind: FabricNode
metadata:
  name: {}
spec:
  area: {}
  siteId: {}
  localityGroup: {}
  natGroup: {}
  nodeId: {id}
  roles:
{roles}  endpoints:
  - address: {addr}
    scope: public
",
        d.name, l.area, l.site_id, l.locality_group, l.nat_group
    )
}

const SERVICES: &str = "apiVersion: fabric.dev/v1alpha1
kind: ServiceRecord
metadata:
  name: control-api
spec:
  service: control-api
  providers:
  - ctl-0
---
apiVersion: fabric.dev/v1alpha1
kind: ServiceRecord
metadata:
  name: update-store
spec:
  service: update-store
  providers:
  - node-1
  - node-3
---
apiVersion: fabric.dev/v1alpha1
kind: ServiceRecord
metadata:
  name: update-cache
spec:
  service: update-cache
  providers:
  - node-2
  - node-3
";

fn rollout_manifest(version: &str) -> String {
    format!(
        "apiVersion: fabric.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: careful
spec:
  strategy: canary
  maxParallel: 2
  maxUnavailable: 2
  failureRateStopPercent: 50
  canarySteps:
  - count: 1
  - percent: 100
---
apiVersion: fabric.dev/v1alpha1
kind: UpdateIntent
metadata:
  name: {INTENT}
spec:
  component: node-agent
  version: {version}
  artifact:
    sha256: 4f2c5e0a9d1b3c7e8f6a5d4c3b2a190817263544536271809a8b7c6d5e4f3a2b
    size: 18234112
    mirrors:
    - fabric://update-cache/node-agent/{version}
  target:
    all: true
  policy: careful
"
    )
}

/// Every record of the GitOps folder, as (kind, name).
fn folder_records() -> Vec<(Kind, String)> {
    let mut v: Vec<(Kind, String)> = NODES
        .iter()
        .map(|n| (Kind::FabricNode, (*n).to_owned()))
        .collect();
    for s in ["control-api", "update-store", "update-cache"] {
        v.push((Kind::ServiceRecord, s.to_owned()));
    }
    v.push((Kind::RolloutPolicy, "careful".to_owned()));
    v.push((Kind::UpdateIntent, INTENT.to_owned()));
    v
}

/// The records a node holds, by key, with their generation, read from its
/// peer cache (what it would restart from).
fn node_records(state_dir: &Path) -> BTreeMap<(Kind, String), u64> {
    let Loaded::Restored(c) = cache::load(&cache::path_in(state_dir), 0) else {
        return BTreeMap::new();
    };
    c.records
        .iter()
        .filter_map(|h| hex::decode(h).ok())
        .filter_map(|b| fabric_schemas::Envelope::decode(&b).ok())
        .map(|e| ((e.record.kind, e.record.name), e.record.generation))
        .collect()
}

/// The update hints a node's control session last persisted.
fn update_hint(state_dir: &Path) -> Option<i64> {
    let bytes = std::fs::read(state_dir.join("update-trigger.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["update_hints"]["node-agent"].as_i64()
}

async fn wait_until<F, Fut>(what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        match ok().await {
            Ok(()) => return,
            Err(why) => assert!(
                start.elapsed() < WAIT,
                "{what}: not reached within {WAIT:?}: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn now_ms() -> i64 {
    fabric_reconciler::store::now_millis()
}

/// Lease rows of the intent, checked against the policy's limits on every
/// look: never more than `maxParallel` (2) at once, never the whole fleet.
async fn leases_within_limits(store: &dyn Store) -> Result<usize, String> {
    let leases = store
        .list_leases(Some(INTENT))
        .await
        .map_err(|e| e.to_string())?;
    assert!(
        leases.len() <= 2,
        "more leases than maxParallel: {:?}",
        leases.iter().map(|l| &l.node).collect::<Vec<_>>()
    );
    assert!(leases.len() < NODES.len(), "every node leased at once");
    Ok(leases.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colocated_replica_publishes_serves_heartbeats_and_drives_a_rollout() {
    init_logs();
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = tmp.path().join("keys");
    let trust = keys_init(&keys);
    let repo = tmp.path().join("fleet");
    std::fs::create_dir_all(&repo).expect("mkdir repo");
    let state = |name: &str| tmp.path().join("nodes").join(name);
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(tmp.path().join("store.redb"))
            .await
            .expect("store"),
    );
    let secret = "e2e-operator-token-0123456789";

    // The replica, co-located with ctl-0, wired as `fabric-reconciler serve
    // --node ctl-0 ...` wires it: keys from the keys folder, an empty folder
    // that the fleet is written into once the node addresses are known.
    let signer = Signer::from_keys_dir(&keys).expect("signer");
    let mut plane = ControlPlaneConfig::new("rec-e2e");
    plane.lease_ttl = Duration::from_secs(3);
    plane.publish.resync = Duration::from_secs(2);
    let mut g = GitOpsConfig::new(&repo);
    g.resync = Duration::from_secs(5);
    plane.gitops = Some(g);
    let mut cfg = ReplicaConfig::new(plane);
    cfg.node = Some(agent_config(&DEFS[0], state(NODES[0]), &trust));
    cfg.api = Some(ApiConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        Token::new(secret).expect("token"),
    ));
    let read_key = |id: &str| {
        fabric_schemas::keys::read_private_key(&keys.join("keys").join(format!("{id}.pem")))
            .expect("orchestrator key")
    };
    cfg.rollouts = Some(RolloutLoop {
        orchestrator: Orchestrator::new(
            OrchestratorKeys {
                orchestrator: read_key("orchestrator-1"),
                recovery_admin: Some(read_key("recovery-admin-1")),
            },
            OrchestratorConfig::default(),
        ),
        interval: Duration::from_millis(500),
    });
    let replica = Replica::start(store.clone(), signer, cfg)
        .await
        .expect("replica starts");
    let ctl = replica.agent().expect("co-located node");
    let ctl_id = ctl.node_id();
    let ctl_addr = ctl.local_addr();

    // Three more nodes, bootstrapping from the co-located node.
    let mut agents: Vec<AgentHandle> = Vec::new();
    for d in &DEFS[1..] {
        let mut c = agent_config(d, state(d.name), &trust);
        c.bootstrap = vec![(ctl_id, ctl_addr)];
        agents.push(fabric_node_agent::start(c).await.expect("node starts"));
    }

    // The GitOps folder: nodes (with their real ids and addresses), the core
    // services, a policy and an intent. Nodes first, so every intermediate
    // state of the folder is valid.
    let mut nodes = String::new();
    nodes.push_str(&node_manifest(&DEFS[0], ctl_id, ctl_addr));
    for (d, a) in DEFS[1..].iter().zip(&agents) {
        nodes.push_str("---\n");
        nodes.push_str(&node_manifest(d, a.node_id(), a.local_addr()));
    }
    std::fs::write(repo.join("nodes.yaml"), nodes).expect("write nodes");
    std::fs::write(repo.join("services.yaml"), SERVICES).expect("write services");
    std::fs::write(repo.join("rollout.yaml"), rollout_manifest("0.2.0")).expect("write rollout");

    // 1. Every record of the folder reaches every node's directory, although
    //    only the co-located node was handed them.
    let want = folder_records();
    wait_until("folder records on every node", || async {
        for n in NODES {
            let held = node_records(&state(n));
            let missing: Vec<_> = want.iter().filter(|k| !held.contains_key(k)).collect();
            if !missing.is_empty() {
                return Err(format!("{n} misses {missing:?}"));
            }
        }
        Ok(())
    })
    .await;

    // 2. Every node heartbeats over the fabric `control` service of the
    //    co-located node; the fleet audit shows an active registry and no
    //    compat control dependency.
    let inventory = replica.inventory().clone();
    wait_until(
        "audit: every node heartbeating, registry active",
        || async {
            let r = api::run_audit(&*store, &inventory, Default::default(), now_ms())
                .await
                .map_err(|e| e.to_string())?;
            if !r.nodes_without_heartbeat.is_empty() {
                return Err(format!("no heartbeat from {:?}", r.nodes_without_heartbeat));
            }
            if r.fabric_registry_runtime_report.status != "active" {
                return Err(format!(
                    "registry {}",
                    r.fabric_registry_runtime_report.status
                ));
            }
            if !r.compat_control_dependency_nodes.is_empty() {
                return Err(format!(
                    "compat dependency {:?}",
                    r.compat_control_dependency_nodes
                ));
            }
            Ok(())
        },
    )
    .await;
    let heartbeats = store.list_heartbeats().await.expect("heartbeats");
    assert_eq!(heartbeats.len(), NODES.len(), "one heartbeat row per node");

    // The Control API's HTTP edge answers too.
    let addr = replica.api_addr().expect("api addr");
    let client =
        api::ApiClient::new(&format!("http://{addr}"), Some(secret.to_owned())).expect("client");
    let audit = client.audit(None).await.expect("audit over HTTP");
    assert_eq!(audit.fabric_registry_runtime_report.status, "active");

    // 3. The leader's rollout driver grants leases for the intent, within the
    //    policy's limits, and hands the lease records to the fabric.
    wait_until("a lease granted", || async {
        match leases_within_limits(&*store).await? {
            0 => Err("no lease yet".into()),
            _ => Ok(()),
        }
    })
    .await;
    let view = control::status(&*store, INTENT).await.expect("status");
    assert_eq!(view.observed_generation, Some(1));
    assert!(!view.leases.is_empty());
    let lease_records = store
        .list_records(Some(Kind::RolloutLease))
        .await
        .expect("lease records");
    assert!(!lease_records.is_empty(), "granted leases are records");
    // Sample for a while: the limits hold on every look.
    for _ in 0..10 {
        leases_within_limits(&*store).await.expect("leases");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leased: Vec<String> = store
        .list_leases(Some(INTENT))
        .await
        .expect("leases")
        .into_iter()
        .map(|l| l.node)
        .collect();
    wait_until("lease records on the leased nodes", || async {
        for n in &leased {
            let held = node_records(&state(n));
            if !held.keys().any(|(k, _)| *k == Kind::RolloutLease) {
                return Err(format!("{n} holds no lease record"));
            }
        }
        Ok(())
    })
    .await;

    // 4. Editing the intent's version in the folder advances generations: the
    //    object, its record on every node, the rollout and the nodes' update
    //    hints.
    std::fs::write(repo.join("rollout.yaml"), rollout_manifest("0.3.0")).expect("edit intent");
    let intent_key = (Kind::UpdateIntent, INTENT.to_owned());
    wait_until("new intent generation on every node", || async {
        for n in NODES {
            let g = node_records(&state(n)).get(&intent_key).copied();
            if g.map(|g| g >> 20) != Some(2) {
                return Err(format!("{n} holds generation {g:?}"));
            }
        }
        Ok(())
    })
    .await;
    wait_until("rollout planned at generation 2", || async {
        let v = control::status(&*store, INTENT)
            .await
            .map_err(|e| e.to_string())?;
        if v.generation == 2 && v.observed_generation == Some(2) {
            Ok(())
        } else {
            Err(format!(
                "generation {} observed {:?}",
                v.generation, v.observed_generation
            ))
        }
    })
    .await;
    leases_within_limits(&*store).await.expect("leases");
    wait_until("update hint 2 on every node", || async {
        for n in NODES {
            let h = update_hint(&state(n));
            if h != Some(2) {
                return Err(format!("{n} hint {h:?}"));
            }
        }
        Ok(())
    })
    .await;

    for a in agents {
        a.stop().await;
    }
    tokio::time::timeout(WAIT, replica.stop())
        .await
        .expect("replica stops in time")
        .expect("replica stops cleanly");
    assert!(
        store
            .current_leader(fabric_reconciler::controller::ELECTION)
            .await
            .expect("leader")
            .is_none(),
        "leadership released on shutdown"
    );
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fabric-reconciler"))
}

#[test]
fn binary_help_lists_the_production_flags() {
    let out = bin().args(["serve", "--help"]).output().expect("run");
    assert!(out.status.success(), "--help exits 0");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--store",
        "--gitops",
        "--keys",
        "--node",
        "--node-state",
        "--listen",
        "--bootstrap",
        "--area",
        "--site-id",
        "--locality-group",
        "--nat-group",
        "--api-listen",
        "--token-file",
        "--compat-listen",
        "--rollout-interval",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }
    let out = bin().arg("--help").output().expect("run");
    assert!(out.status.success());
}

#[test]
fn binary_refuses_a_bad_store_with_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = tmp.path().join("keys");
    keys_init(&keys);
    let keys = keys.to_str().expect("utf-8 path");
    let out = bin()
        .args(["serve", "--store", "redis://x", "--keys", keys])
        .output()
        .expect("run");
    assert!(!out.status.success(), "bad --store must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--store \"redis://x\": expected embedded:PATH or postgres:URL"),
        "{err}"
    );
    // A well-formed spec that cannot be opened names the store.
    let out = bin()
        .args([
            "serve",
            "--store",
            "embedded:/nonexistent/dir/store.redb",
            "--keys",
            keys,
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening embedded store"), "{err}");
    // --node without the Control API is refused by the command line.
    let out = bin()
        .args([
            "serve",
            "--store",
            "embedded:x.redb",
            "--keys",
            keys,
            "--node",
            "n",
            "--node-state",
            "s",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-listen"));
}
