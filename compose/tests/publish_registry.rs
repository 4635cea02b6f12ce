//! Registry publishing end to end: GitOps folder -> store -> signed records ->
//! a real fleet of node-agents on loopback; plus leader election between two
//! replicas on one store and re-signing before expiry.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_compose::inject::fleet_sink;
use fabric_reconciler::controller::{ControlPlane, ControlPlaneConfig, ReplicaState};
use fabric_reconciler::publish::{Delivery, PublishedRecord, RecordSink, Signer, SinkError};
use fabric_reconciler::source::GitOpsConfig;
use fabric_reconciler::store::{BoxFuture, EmbeddedStore, Store};
use fabric_runtime::status::{find_condition, read_status};
use fabric_schemas::accept::NothingHeld;
use fabric_schemas::keys::{generate_trust_root, TrustRootPlan};
use fabric_schemas::kinds::Kind;
use fabric_schemas::trust::Role;
use fabric_schemas::TrustAnchor;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(45);

/// Logs to the test output (shown for failing tests); `RUST_LOG` filters.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("fabric_reconciler=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

const ROLLOUT: &str = "apiVersion: fabric.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: careful
spec:
  strategy: canary
  maxParallel: 2
  maxUnavailable: 2
  failureRateStopPercent: 20
  canarySteps:
  - count: 1
  - percent: 100
---
apiVersion: fabric.dev/v1alpha1
kind: UpdateIntent
metadata:
  name: node-agent-0-2-0
spec:
  component: node-agent
  version: 0.2.0
  artifact:
    sha256: 4f2c5e0a9d1b3c7e8f6a5d4c3b2a190817263544536271809a8b7c6d5e4f3a2b
    size: 18234112
    mirrors:
    - fabric://update-cache/node-agent/0.2.0
  target:
    all: true
  policy: careful
";

fn node_yaml(name: &str, site: &str, node_id: Option<&str>) -> String {
    let id = node_id
        .map(|i| format!("  nodeId: {i}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: fabric.dev/v1alpha1
kind: FabricNode
metadata:
  name: {name}
spec:
  area: alpha
  siteId: {site}
  localityGroup: alpha-lan-1
  natGroup: alpha-nat-1
{id}"
    )
}

const SERVICE: &str = "apiVersion: fabric.dev/v1alpha1
kind: ServiceRecord
metadata:
  name: metrics
spec:
  service: metrics
  providers:
  - extra-1
";

fn random_node_id() -> String {
    hex::encode(fabric_schemas::keys::generate().verifying_key().to_bytes())
}

/// A folder with 4 publishable objects and one node without a node id.
fn write_repo(dir: &Path, extra_site: &str, node_id: &str) {
    std::fs::create_dir_all(dir).expect("mkdir repo");
    std::fs::write(dir.join("rollout.yaml"), ROLLOUT).expect("write");
    std::fs::write(dir.join("service.yaml"), SERVICE).expect("write");
    std::fs::write(
        dir.join("extra.yaml"),
        node_yaml("extra-1", extra_site, Some(node_id)),
    )
    .expect("write");
    std::fs::write(dir.join("pending.yaml"), node_yaml("pending-1", "s", None)).expect("write");
}

const PUBLISHABLE: [(Kind, &str); 4] = [
    (Kind::FabricNode, "extra-1"),
    (Kind::ServiceRecord, "metrics"),
    (Kind::UpdateIntent, "node-agent-0-2-0"),
    (Kind::RolloutPolicy, "careful"),
];

async fn wait_until<F, Fut>(what: &str, timeout: Duration, ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let reached = fabric_testkit::wait_until(timeout, Duration::from_millis(100), ok).await;
    assert!(reached, "{what}: not reached within {timeout:?}");
}

async fn record_generation(store: &Arc<dyn Store>, kind: Kind, name: &str) -> Option<i64> {
    store
        .get_record(kind, name)
        .await
        .expect("read record")
        .map(|r| r.generation)
}

struct Replica {
    state: watch::Receiver<ReplicaState>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    fn start(
        store: Arc<dyn Store>,
        signer: Signer,
        sink: Arc<dyn RecordSink>,
        config: ControlPlaneConfig,
    ) -> Replica {
        let plane = ControlPlane::new(store, signer, sink, config);
        let state = plane.state();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            plane
                .run(async move {
                    let _ = rx.await;
                })
                .await
                .expect("replica runs");
        });
        Replica { state, stop, task }
    }

    fn leading(&self) -> bool {
        self.state.borrow().leading.is_some()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("replica stops")
            .expect("replica task ok");
    }
}

fn config(holder: &str, repo: &Path) -> ControlPlaneConfig {
    let mut c = ControlPlaneConfig::new(holder);
    c.lease_ttl = Duration::from_secs(3);
    c.publish.resync = Duration::from_secs(1);
    let mut g = GitOpsConfig::new(repo);
    g.resync = Duration::from_secs(3600);
    c.gitops = Some(g);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_stored_signed_and_reach_every_node_and_edits_advance_generations() {
    init_logs();
    let tmp = tempfile::tempdir().expect("tempdir");
    let fleet = LocalFleet::start(
        &synthetic_nodes(5),
        FleetOptions::new(tmp.path().join("fleet")),
    )
    .await
    .expect("fleet starts");
    let fleet = Arc::new(fleet);
    let seeded = fleet.expected_records();
    // Hand records to two of the five nodes only: gossip must do the rest.
    let names: Vec<&str> = fleet.members[1..3]
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    let sink: Arc<dyn RecordSink> = Arc::new(fleet_sink(&fleet, &names).with_fanout(2));
    let signer = Signer::new(vec![fleet.control_key().clone()], fleet.trust.clone());
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(tmp.path().join("store.redb"))
            .await
            .expect("store"),
    );
    let repo = tmp.path().join("repo");
    let node_id = random_node_id();
    write_repo(&repo, "site-a", &node_id);
    let replica = Replica::start(store.clone(), signer, sink, config("r1", &repo));

    // Stored and signed: every record is accepted by the fleet's trust root.
    wait_until("all four records stored", WAIT, || async {
        let mut n = 0;
        for (k, name) in PUBLISHABLE {
            n += usize::from(record_generation(&store, k, name).await.is_some());
        }
        n == PUBLISHABLE.len()
    })
    .await;
    let now = fabric_schemas::time::now_unix();
    for (k, name) in PUBLISHABLE {
        let r = store
            .get_record(k, name)
            .await
            .expect("read")
            .expect("record");
        assert_eq!(
            r.generation,
            1 << 20,
            "{k} {name}: object generation 1, first signature"
        );
        let accepted = fabric_schemas::accept(&fleet.trust, &NothingHeld, &r.envelope, now)
            .unwrap_or_else(|e| panic!("{k} {name} refused: {e}"));
        assert!(accepted.roles_met.contains(&Role::Control));
    }
    // The node without a nodeId is not published and says why.
    assert!(record_generation(&store, Kind::FabricNode, "pending-1")
        .await
        .is_none());
    wait_until("pending-1 status written", WAIT, || async {
        let o = store
            .get_object(Kind::FabricNode, "pending-1")
            .await
            .expect("read")
            .expect("obj");
        let st = read_status(o.status.as_ref());
        find_condition(&st.conditions, "Published")
            .is_some_and(|c| c.status == "False" && c.reason == "NodeIdMissing")
    })
    .await;

    // Present on every node although only two were handed the records.
    let want = seeded + PUBLISHABLE.len();
    wait_until("every node holds the published records", WAIT, || async {
        let st = fleet.statuses();
        st.len() == 5 && st.iter().all(|s| s.directory_records == want)
    })
    .await;
    let obj = store
        .get_object(Kind::FabricNode, "extra-1")
        .await
        .expect("read")
        .expect("extra-1");
    let st = read_status(obj.status.as_ref());
    assert_eq!(st.observed_generation, Some(1));
    assert!(find_condition(&st.conditions, "Published").is_some_and(|c| c.status == "True"));

    // Edit a field: object generation 2, record generation 2 << 20, status follows.
    write_repo(&repo, "site-b", &node_id);
    wait_until("edit published", WAIT, || async {
        record_generation(&store, Kind::FabricNode, "extra-1").await == Some(2 << 20)
    })
    .await;
    wait_until("observedGeneration advanced", WAIT, || async {
        let o = store
            .get_object(Kind::FabricNode, "extra-1")
            .await
            .expect("read")
            .expect("extra-1");
        o.generation() == 2 && read_status(o.status.as_ref()).observed_generation == Some(2)
    })
    .await;
    // Untouched objects keep their record generation.
    assert_eq!(
        record_generation(&store, Kind::ServiceRecord, "metrics").await,
        Some(1 << 20)
    );

    // A malformed manifest changes nothing.
    let before: Vec<_> = store.list_records(None).await.expect("records");
    let objects_before = store.list_objects(Kind::FabricNode).await.expect("objects");
    std::fs::write(
        repo.join("extra.yaml"),
        node_yaml("extra-1", "site-c", Some("not-hex")),
    )
    .expect("write");
    let mut state = replica.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| {
            s.source
                .as_ref()
                .and_then(|src| src.condition.as_ref())
                .is_some_and(|c| c.status == "False")
        }),
    )
    .await
    .expect("error surfaced in time")
    .expect("replica alive");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.list_records(None).await.expect("records"), before);
    let objects_after = store.list_objects(Kind::FabricNode).await.expect("objects");
    let specs = |v: &[fabric_reconciler::store::StoredObject]| {
        v.iter()
            .map(|o| (o.metadata.name.clone(), o.spec.clone(), o.generation()))
            .collect::<Vec<_>>()
    };
    assert_eq!(specs(&objects_after), specs(&objects_before));

    replica.stop().await;
    drop(fleet);
}

/// A sink that remembers what it was handed.
#[derive(Default)]
struct CountingSink {
    seen: Mutex<Vec<(Kind, String, u64)>>,
}

impl CountingSink {
    fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

impl RecordSink for CountingSink {
    fn deliver<'a>(&'a self, r: &'a PublishedRecord) -> BoxFuture<'a, Result<Delivery, SinkError>> {
        Box::pin(async move {
            self.seen
                .lock()
                .expect("lock")
                .push((r.kind, r.name.clone(), r.generation));
            Ok(Delivery {
                holders: vec!["test".into()],
                failures: vec![],
            })
        })
    }
}

fn fresh_signer() -> Signer {
    let (spec, keys) = generate_trust_root(&TrustRootPlan::single_keys(
        fabric_schemas::time::now_unix() + 86_400,
    ));
    let trust = TrustAnchor::from_spec(&spec).expect("trust root");
    let control = keys
        .into_iter()
        .find(|k| k.role == Role::Control)
        .expect("control key")
        .key;
    Signer::new(vec![control], trust)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_store_only_the_leader_publishes_and_the_other_takes_over() {
    init_logs();
    let tmp = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(tmp.path().join("store.redb"))
            .await
            .expect("store"),
    );
    let repo = tmp.path().join("repo");
    let node_id = random_node_id();
    write_repo(&repo, "site-a", &node_id);
    let signer = fresh_signer();
    let sink_a = Arc::new(CountingSink::default());
    let sink_b = Arc::new(CountingSink::default());
    let a = Replica::start(
        store.clone(),
        signer.clone(),
        sink_a.clone(),
        config("replica-a", &repo),
    );
    wait_until("a leads", WAIT, || async { a.leading() }).await;
    let b = Replica::start(
        store.clone(),
        signer.clone(),
        sink_b.clone(),
        config("replica-b", &repo),
    );
    wait_until("a published everything", WAIT, || async {
        sink_a.count() >= PUBLISHABLE.len()
    })
    .await;
    wait_until("b sees a as leader", WAIT, || async {
        b.state.borrow().leader.as_deref() == Some("replica-a")
    })
    .await;
    // Several resync periods later, b has still done nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!b.leading());
    assert_eq!(sink_b.count(), 0, "a follower never publishes");

    // The leader stops (releasing its lease): b takes over and acts.
    a.stop().await;
    wait_until("b leads", WAIT, || async { b.leading() }).await;
    write_repo(&repo, "site-b", &node_id);
    wait_until("b publishes the edit", WAIT, || async {
        record_generation(&store, Kind::FabricNode, "extra-1").await == Some(2 << 20)
    })
    .await;
    // Delivery follows the store commit.
    wait_until("b hands the edit to the fabric", WAIT, || async {
        sink_b
            .seen
            .lock()
            .expect("lock")
            .iter()
            .any(|(k, n, g)| *k == Kind::FabricNode && n == "extra-1" && *g == 2 << 20)
    })
    .await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_resigned_at_half_life_with_a_higher_generation() {
    init_logs();
    let tmp = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(tmp.path().join("store.redb"))
            .await
            .expect("store"),
    );
    let repo = tmp.path().join("repo");
    write_repo(&repo, "site-a", &random_node_id());
    let signer = fresh_signer();
    let trust = signer.trust().clone();
    let mut c = config("r", &repo);
    c.publish.ttl = Duration::from_secs(4);
    let r = Replica::start(store.clone(), signer, Arc::new(CountingSink::default()), c);
    wait_until("first signature", WAIT, || async {
        record_generation(&store, Kind::ServiceRecord, "metrics").await == Some(1 << 20)
    })
    .await;
    wait_until(
        "re-signed before expiry",
        Duration::from_secs(15),
        || async {
            record_generation(&store, Kind::ServiceRecord, "metrics").await >= Some((1 << 20) + 1)
        },
    )
    .await;
    let rec = store
        .get_record(Kind::ServiceRecord, "metrics")
        .await
        .expect("read")
        .expect("record");
    assert_eq!(rec.generation >> 20, 1, "still object generation 1");
    fabric_schemas::accept(
        &trust,
        &NothingHeld,
        &rec.envelope,
        fabric_schemas::time::now_unix(),
    )
    .expect("re-signed record is acceptable");
    r.stop().await;
}
