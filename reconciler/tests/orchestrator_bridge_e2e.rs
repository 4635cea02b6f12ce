//! The compat bridge end to end: a real Control API with its compat overlap
//! listener on loopback, an embedded store and the orchestrator driver. Three
//! legacy nodes (no lease support) and two current nodes heartbeat over the
//! compat HTTP contract. The driver picks one legacy node at a time; only that
//! node's heartbeat reply carries the bridge command; the simulated legacy
//! updater applies it and reports the new version, which completes the action
//! and lets the driver pick the next node. A node that rolls back stops the
//! bridge with `bridge_hold_required` and a reason; current nodes are updated
//! by leases and never see a command.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use fabric::edge::EdgeInventory;
use fabric_proto::heartbeat::{BridgeCommand, HeartbeatBody, HeartbeatReply, HeartbeatUpdate};
use fabric_reconciler::api::{self, ApiClient, ApiConfig, CompatConfig, Token};
use fabric_reconciler::orchestrator::{
    control, Orchestrator, OrchestratorConfig, OrchestratorKeys, RolloutDoc, TickReport,
};
use fabric_reconciler::rollout::RolloutPhase;
use fabric_reconciler::store::{EmbeddedStore, PutObject, Store};
use fabric_schemas::kinds::Kind;
use serde::Deserialize;
use serde_json::json;

const TOKEN: &str = "operator-token-0123456789";
const COMPAT_TOKEN: &str = "legacy-node-token-0123456789";
const INTENT: &str = "node-agent-0-2-0";
const OLD: &str = "0.1.0";
const NEW: &str = "0.2.0";
const SHA: &str = "ab";
const LEGACY: [&str; 3] = ["legacy-a", "legacy-b", "legacy-c"];
const MODERN: [&str; 2] = ["modern-1", "modern-2"];

/// The reply as agents built before the bridge existed decode it: the field
/// set of `HeartbeatReply` before `bridge` was added, without
/// `deny_unknown_fields`, as the real struct has it.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct PreBridgeReply {
    accepted: bool,
    #[serde(default)]
    update_hints: BTreeMap<String, i64>,
    #[serde(default)]
    control_endpoints: Vec<String>,
    #[serde(default)]
    error: Option<String>,
}

/// A node heartbeating over the compat contract. A legacy one applies a
/// bridge command from a reply and reports on its next heartbeat; a current
/// one applies its lease (the driver's leases are checked in the store here,
/// lease delivery is not what this test is about).
struct SimNode {
    name: &'static str,
    node_id: String,
    legacy: bool,
    version: String,
    update: Option<HeartbeatUpdate>,
    /// The legacy updater rolls back whatever it is told to install.
    broken: bool,
    commands: Vec<BridgeCommand>,
}

impl SimNode {
    fn new(name: &'static str, i: usize, legacy: bool) -> SimNode {
        SimNode {
            name,
            node_id: format!("{:064x}", i + 1),
            legacy,
            version: OLD.into(),
            update: None,
            broken: false,
            commands: Vec::new(),
        }
    }

    fn body(&self) -> HeartbeatBody {
        // A legacy agent: on the compat contract, registry missing, no hint wake.
        let mut hb = HeartbeatBody::new(self.name, &self.node_id, &self.version);
        hb.fabric_control_endpoint = Some("http://compat.example:19191/api/v1".into());
        hb.inter_node_transport = String::new();
        hb.updater.subscription = fabric_proto::heartbeat::UpdaterSubscription::Alive;
        hb.updater.update = self.update.clone();
        hb.lease_support = self.legacy.then_some(false);
        hb
    }

    /// What the legacy updater does with a command (only on legacy nodes:
    /// a current agent has no bridge executor and must never be sent one).
    fn apply(&mut self, cmd: &BridgeCommand) {
        assert!(self.legacy, "{} got a bridge command: {cmd:?}", self.name);
        self.commands.push(cmd.clone());
        let report = |state: &str| HeartbeatUpdate {
            intent: cmd.intent.clone(),
            generation: cmd.generation,
            phase: cmd.component.clone(),
            lease_id: None,
            state: state.into(),
        };
        if self.broken || cmd.artifact.sha256 != SHA.repeat(32) {
            self.update = Some(report("rolled_back"));
        } else {
            self.version = cmd.version.clone();
            self.update = Some(report("healthy"));
        }
    }
}

struct Harness {
    store: Arc<dyn Store>,
    compat: ApiClient,
    orch: Orchestrator,
    nodes: Vec<SimNode>,
}

impl Harness {
    fn node(&mut self, name: &str) -> &mut SimNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("known node")
    }

    /// One heartbeat from every node over the compat listener; returns the
    /// nodes whose reply carried a bridge command (after they applied it).
    async fn beat(&mut self) -> Vec<&'static str> {
        let mut commanded = Vec::new();
        for i in 0..self.nodes.len() {
            let body = self.nodes[i].body();
            let reply: HeartbeatReply = self.compat.heartbeat(&body).await.expect("heartbeat");
            assert!(reply.accepted, "{reply:?}");
            let raw = serde_json::to_value(&reply).expect("reply json");
            // An agent that predates the field still reads every reply.
            serde_json::from_value::<PreBridgeReply>(raw.clone()).expect("pre-bridge decode");
            match &reply.bridge {
                Some(cmd) => {
                    commanded.push(self.nodes[i].name);
                    self.nodes[i].apply(cmd);
                }
                None => assert!(raw.get("bridge").is_none(), "absent, not null: {raw}"),
            }
        }
        assert!(
            commanded.len() <= 1,
            "one bridge command at a time: {commanded:?}"
        );
        commanded
    }

    /// Current nodes holding a lease install it and report the version.
    async fn apply_leases(&mut self) {
        for l in self.store.list_leases(Some(INTENT)).await.expect("leases") {
            let n = self.node(&l.node);
            assert!(!n.legacy, "a legacy node was leased: {}", l.node);
            n.version = NEW.into();
        }
    }

    async fn tick(&self) -> TickReport {
        self.orch
            .tick(self.store.as_ref(), unix_now())
            .await
            .expect("tick")
    }

    async fn doc(&self) -> RolloutDoc {
        let s = self
            .store
            .get_rollout_state(INTENT)
            .await
            .expect("read rollout state")
            .expect("rollout state written");
        serde_json::from_value(s.state).expect("rollout doc")
    }
}

fn unix_now() -> i64 {
    fabric_reconciler::store::now_millis().div_euclid(1000)
}

fn started(r: &TickReport) -> Vec<String> {
    r.bridge_actions.iter().map(|a| a.node.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_nodes_are_bridged_one_at_a_time_over_the_compat_listener() {
    tokio::time::timeout(Duration::from_secs(60), scenario())
        .await
        .expect("the bridge scenario finishes within 60 s");
}

async fn scenario() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(dir.path().join("store.redb"))
            .await
            .expect("store"),
    );
    for (i, n) in MODERN.iter().chain(LEGACY.iter()).enumerate() {
        let area = if i < MODERN.len() { "alpha" } else { "beta" };
        let spec = json!({"area": area, "siteId": format!("{area}-s"),
            "localityGroup": format!("{area}-s"), "natGroup": format!("{area}-n"), "roles": []});
        store
            .put_object(PutObject::new(Kind::FabricNode, *n, spec))
            .await
            .expect("put node");
    }
    store
        .put_object(PutObject::new(
            Kind::RolloutPolicy,
            "careful",
            json!({"strategy": "rolling", "maxParallel": 3, "maxUnavailable": 3,
                   "failureRateStopPercent": 50}),
        ))
        .await
        .expect("put policy");
    store
        .put_object(PutObject::new(
            Kind::UpdateIntent,
            INTENT,
            json!({"component": "node-agent", "version": NEW,
                   "artifact": {"sha256": SHA.repeat(32), "size": 4096,
                                "mirrors": ["fabric://update-cache/node-agent-0.2.0"]},
                   "target": {"all": true}, "policy": "careful"}),
        ))
        .await
        .expect("put intent");

    let mut cfg = ApiConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        Token::new(TOKEN).expect("token"),
    );
    cfg.compat = Some(CompatConfig {
        bind: "127.0.0.1:0".parse().expect("addr"),
        token: Some(Token::new(COMPAT_TOKEN).expect("token")),
    });
    let handle = api::serve(store.clone(), EdgeInventory::new(), cfg, None)
        .await
        .expect("serve");
    let compat_addr = handle.compat_addr().expect("compat listener");
    let compat = ApiClient::new(&format!("http://{compat_addr}"), Some(COMPAT_TOKEN.into()))
        .expect("client");
    let orch = Orchestrator::new(
        OrchestratorKeys {
            orchestrator: SigningKey::from_bytes(&[7; 32]),
            recovery_admin: None,
        },
        OrchestratorConfig::default(),
    );
    let mut nodes: Vec<SimNode> = MODERN
        .iter()
        .enumerate()
        .map(|(i, n)| SimNode::new(n, i, false))
        .collect();
    nodes.extend(
        LEGACY
            .iter()
            .enumerate()
            .map(|(i, n)| SimNode::new(n, i + 10, true)),
    );
    let mut h = Harness {
        store,
        compat,
        orch,
        nodes,
    };
    h.node("legacy-b").broken = true;

    // Before the driver has decided anything nobody gets a command.
    assert!(h.beat().await.is_empty());
    let r = h.tick().await;
    let leased: BTreeSet<String> = r
        .rollout(INTENT)
        .expect("planned")
        .granted
        .iter()
        .map(|g| g.node.clone())
        .collect();
    assert_eq!(leased, MODERN.map(String::from).into(), "{r:?}");
    assert_eq!(started(&r), ["legacy-a"], "{r:?}");

    // Only legacy-a is told, and it carries everything the legacy updater needs.
    assert_eq!(h.beat().await, ["legacy-a"]);
    let cmd = h.node("legacy-a").commands[0].clone();
    assert_eq!(
        (
            cmd.intent.as_str(),
            cmd.generation,
            cmd.component.as_str(),
            cmd.version.as_str()
        ),
        (INTENT, 1, "node-agent", NEW)
    );
    assert_eq!((cmd.artifact.size, cmd.artifact.mirrors.len()), (4096, 1));
    assert!(cmd.deadline > unix_now(), "{cmd:?}");
    // A tick before anyone reports changes nothing: still legacy-a alone.
    let r = h.tick().await;
    assert!(started(&r).is_empty(), "{r:?}");
    assert_eq!(
        r.rollout(INTENT).unwrap().bridge.in_flight.as_deref(),
        Some("legacy-a")
    );
    assert_eq!(h.beat().await, ["legacy-a"], "redelivered until it reports");

    // legacy-a reports the new version: done, and the driver picks legacy-b.
    h.apply_leases().await;
    // Still redelivered until a tick resolves it; applying it again is a no-op.
    assert_eq!(h.beat().await, ["legacy-a"]);
    assert_eq!(h.node("legacy-a").version, NEW);
    let r = h.tick().await;
    assert_eq!(started(&r), ["legacy-b"], "{r:?}");
    let doc = h.doc().await;
    assert!(doc.bridge.done.contains("legacy-a"), "{doc:?}");
    assert_eq!(r.rollout(INTENT).unwrap().bridge.done, 1);

    // legacy-b gets its command, rolls back, and says so: the bridge holds.
    assert_eq!(h.beat().await, ["legacy-b"]);
    assert_eq!(h.beat().await, ["legacy-b"], "reports rolled_back");
    let r = h.tick().await;
    assert!(r.bridge_hold_required, "{r:?}");
    assert!(started(&r).is_empty(), "held: {r:?}");
    let b = &r.rollout(INTENT).unwrap().bridge;
    assert!(b.hold_required && b.in_flight.is_none(), "{b:?}");
    assert!(
        b.hold_reasons
            .iter()
            .any(|x| x.contains("legacy-b") && x.contains("rolled_back")),
        "{b:?}"
    );
    let view = control::status(h.store.as_ref(), INTENT)
        .await
        .expect("status");
    assert!(view.bridge_hold_required);
    assert!(view
        .conditions
        .iter()
        .any(|c| c.reason == "BridgeHoldRequired" && c.message.contains("legacy-b")));
    // Held: nobody is told anything, legacy-c is never started.
    for _ in 0..2 {
        assert!(h.beat().await.is_empty());
        let r = h.tick().await;
        assert!(started(&r).is_empty() && r.bridge_hold_required, "{r:?}");
    }
    assert!(h.node("legacy-c").commands.is_empty());

    // The operator repairs legacy-b and retries. Its last report still says
    // rolled_back (it has not seen the new command yet): that stale report
    // must not fail the retry.
    h.node("legacy-b").broken = false;
    control::resume(h.store.as_ref(), INTENT, true)
        .await
        .expect("resume");
    let r = h.tick().await;
    assert_eq!(started(&r), ["legacy-b"], "{r:?}");
    assert!(!r.bridge_hold_required, "{r:?}");
    // The heartbeat that picks the command up was written before the node
    // saw it (it still says rolled_back).
    let before = h.node("legacy-b").update.clone();
    assert_eq!(before.map(|u| u.state).as_deref(), Some("rolled_back"));
    assert_eq!(h.beat().await, ["legacy-b"]);
    let r = h.tick().await;
    assert!(
        !r.bridge_hold_required,
        "stale report failed the retry: {r:?}"
    );
    assert_eq!(
        r.rollout(INTENT).unwrap().bridge.in_flight.as_deref(),
        Some("legacy-b")
    );
    assert_eq!(
        h.node("legacy-b").version,
        NEW,
        "applied the retried command"
    );
    assert_eq!(h.beat().await, ["legacy-b"], "reports the new version");
    let r = h.tick().await;
    assert_eq!(started(&r), ["legacy-c"], "{r:?}");

    // legacy-c, the last one: then the rollout is complete.
    assert_eq!(h.beat().await, ["legacy-c"]);
    assert_eq!(h.beat().await, ["legacy-c"], "reports the new version");
    let r = h.tick().await;
    let rr = r.rollout(INTENT).unwrap();
    assert!(started(&r).is_empty() && !r.bridge_hold_required, "{r:?}");
    assert_eq!((rr.bridge.done, rr.bridge.failed), (3, 0), "{rr:?}");
    assert_eq!(rr.status.phase, RolloutPhase::Complete, "{rr:?}");
    assert!(h.beat().await.is_empty(), "nothing in flight, nothing sent");

    for n in MODERN {
        assert!(h.node(n).commands.is_empty());
    }
    // Even a rollout state that named a lease-capable node (a bug, a hand
    // edit) gets it no command: it is updated by leases only.
    let mut doc = h.doc().await;
    let forged = serde_json::from_value(json!({"intent": INTENT, "generation": 1,
        "node": "modern-1", "phase": "node-agent", "version": NEW,
        "artifactSha256": SHA.repeat(32), "startedAt": unix_now(),
        "deadline": unix_now() + 600}))
    .expect("bridge action");
    doc.bridge.in_flight = Some(forged);
    h.store
        .put_rollout_state(INTENT, serde_json::to_value(&doc).expect("doc"), None)
        .await
        .expect("forge state");
    assert!(
        h.beat().await.is_empty(),
        "lease-capable nodes never get one"
    );
    let per_node: Vec<usize> = LEGACY.iter().map(|n| h.node(n).commands.len()).collect();
    assert!(per_node.iter().all(|c| *c >= 1), "{per_node:?}");
    handle.stop().await;
}
