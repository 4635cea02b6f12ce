//! The buffered heartbeat intake: concurrent heartbeats through the real HTTP
//! listener are all stored exactly, in far fewer commits than heartbeats, and
//! each reply comes only after its batch committed; a full queue refuses with a
//! retryable 503; shutdown commits what is queued.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric::edge::EdgeInventory;
use fabric_proto::heartbeat::{HeartbeatBody, IntakePath};
use fabric_reconciler::api::{
    self, ApiClient, ApiConfig, HeartbeatIntake, IntakeConfig, IntakeError, Token,
};
use fabric_reconciler::store::{EmbeddedStore, Store, StoredHeartbeat};
use hyper::StatusCode;

const TOKEN: &str = "operator-token-0123456789";

/// A heartbeat of node `n`; `seq` goes into `sent_at_ms` so the test can tell
/// which body was stored.
fn beat(n: usize, seq: i64) -> HeartbeatBody {
    fabric_testkit::numbered_heartbeat(n, seq as u64)
}

async fn open_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(
        EmbeddedStore::open(dir.path().join("store.redb"))
            .await
            .expect("store"),
    )
}

async fn serve(store: Arc<dyn Store>, intake: IntakeConfig) -> api::ApiHandle {
    let mut cfg = ApiConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        Token::new(TOKEN).expect("token"),
    );
    cfg.intake = intake;
    api::serve(store, EdgeInventory::new(), cfg, None)
        .await
        .expect("serve")
}

fn client(h: &api::ApiHandle) -> ApiClient {
    ApiClient::new(&format!("http://{}", h.addr()), Some(TOKEN.into())).expect("client")
}

async fn stored(store: &dyn Store) -> BTreeMap<String, StoredHeartbeat> {
    store
        .list_heartbeats()
        .await
        .expect("list heartbeats")
        .into_iter()
        .map(|h| (h.node.clone(), h))
        .collect()
}

fn sent_at(h: &StoredHeartbeat) -> i64 {
    h.body
        .get("sent_at_ms")
        .and_then(|v| v.as_i64())
        .expect("stored body has sent_at_ms")
}

/// Polls until `f` holds (bounded).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_heartbeats_over_http_are_stored_exactly_in_few_commits() {
    const TASKS: usize = 50;
    const PER_TASK: usize = 40;
    const NODES_PER_TASK: usize = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(&dir).await;
    let handle = serve(store.clone(), IntakeConfig::default()).await;
    let client = client(&handle);

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let client = client.clone();
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..PER_TASK {
                // Each task owns its nodes and sends in order, so the latest
                // body of a node is the last one its task sent.
                let n = t * NODES_PER_TASK + k % NODES_PER_TASK;
                let seq = k as i64;
                let reply = client.heartbeat(&beat(n, seq)).await.expect("heartbeat");
                assert!(reply.accepted);
                // A 200 means durably stored: the row is there already.
                if k % 8 == 0 {
                    let rows = stored(store.as_ref()).await;
                    let row = rows.get(&format!("node-{n:04}")).expect("stored on reply");
                    assert_eq!(row.received_count, (k / NODES_PER_TASK + 1) as u64);
                    assert_eq!(sent_at(row), seq);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }

    let total = (TASKS * PER_TASK) as u64;
    let rows = stored(store.as_ref()).await;
    assert_eq!(rows.len(), TASKS * NODES_PER_TASK);
    for t in 0..TASKS {
        for j in 0..NODES_PER_TASK {
            let n = t * NODES_PER_TASK + j;
            let row = &rows[&format!("node-{n:04}")];
            assert_eq!(row.received_count, (PER_TASK / NODES_PER_TASK) as u64);
            // The last k with k % NODES_PER_TASK == j.
            let last = (PER_TASK - NODES_PER_TASK + j) as i64;
            assert_eq!(sent_at(row), last, "latest body of node {n}");
            assert_eq!(
                row.body.get("received_via").and_then(|v| v.as_str()),
                Some("control-api")
            );
        }
    }
    let stats = handle.intake().stats();
    assert_eq!(stats.queued, total);
    assert_eq!(stats.stored, total);
    assert_eq!(stats.failed, 0);
    assert_eq!(stats.refused_busy, 0);
    assert!(
        stats.commits * 10 <= total,
        "expected far fewer commits than heartbeats: {stats:?}"
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_of_one_node_in_a_batch_are_coalesced_and_all_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(&dir).await;
    let intake = HeartbeatIntake::start(
        store.clone(),
        IntakeConfig {
            max_batch: 1000,
            max_delay: Duration::from_millis(300),
            queue_capacity: 1000,
        },
    );
    let mut tasks = Vec::new();
    for i in 0..300usize {
        let intake = intake.clone();
        tasks.push(tokio::spawn(async move {
            intake
                .heartbeat(beat(i % 3, i as i64), IntakePath::ControlApi)
                .await
        }));
    }
    for t in tasks {
        assert!(t.await.expect("task").expect("intake").accepted);
    }
    let stats = intake.stats();
    assert_eq!(stats.stored, 300);
    assert!(stats.commits <= 5, "{stats:?}");
    let rows = stored(store.as_ref()).await;
    assert_eq!(rows.len(), 3);
    for (n, row) in rows.values().enumerate() {
        assert_eq!(row.received_count, 100);
        assert_eq!(sent_at(row) % 3, n as i64, "a body of this node");
    }
    intake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_a_retryable_503() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(&dir).await;
    // A long linger holds the first heartbeats in the open batch, so the
    // queue stays full while the refusal is checked.
    let handle = serve(
        store.clone(),
        IntakeConfig {
            max_batch: 100,
            max_delay: Duration::from_secs(2),
            queue_capacity: 4,
        },
    )
    .await;
    let client = client(&handle);
    let mut waiting = Vec::new();
    for n in 0..4 {
        let client = client.clone();
        waiting.push(tokio::spawn(
            async move { client.heartbeat(&beat(n, 1)).await },
        ));
    }
    let intake = handle.intake().clone();
    until("4 heartbeats queued", || intake.stats().queued == 4).await;

    let e = client
        .heartbeat(&beat(9, 1))
        .await
        .expect_err("queue is full");
    assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{e}");
    assert!(e.to_string().contains("retry"), "{e}");
    assert_eq!(intake.stats().refused_busy, 1);

    // The direct intake refuses the same way, and says it is retryable.
    let e = intake
        .heartbeat(beat(8, 1), IntakePath::ControlApi)
        .await
        .expect_err("queue is full");
    assert!(matches!(e, IntakeError::Busy { capacity: 4 }), "{e}");
    assert!(e.is_retryable());

    // The queued ones are stored once their batch commits.
    for w in waiting {
        assert!(w.await.expect("task").expect("heartbeat").accepted);
    }
    let rows = stored(store.as_ref()).await;
    assert_eq!(rows.len(), 4);
    assert!(!rows.contains_key("node-0009"));
    // Room again.
    assert!(client.heartbeat(&beat(9, 2)).await.expect("retry").accepted);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_api_commits_queued_heartbeats_and_answers_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(&dir).await;
    // A linger far longer than the test: only the shutdown flush stores them.
    let handle = serve(
        store.clone(),
        IntakeConfig {
            max_batch: 1000,
            max_delay: Duration::from_secs(600),
            queue_capacity: 100,
        },
    )
    .await;
    let client = client(&handle);
    let mut waiting = Vec::new();
    for n in 0..10 {
        let client = client.clone();
        waiting.push(tokio::spawn(
            async move { client.heartbeat(&beat(n, 7)).await },
        ));
    }
    let intake = handle.intake().clone();
    until("10 heartbeats queued", || intake.stats().queued == 10).await;
    assert!(
        stored(store.as_ref()).await.is_empty(),
        "nothing committed yet"
    );

    let start = Instant::now();
    handle.stop().await;
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "stop drains without waiting out the linger"
    );
    for w in waiting {
        assert!(w.await.expect("task").expect("heartbeat").accepted);
    }
    let rows = stored(store.as_ref()).await;
    assert_eq!(rows.len(), 10);
    assert!(rows.values().all(|r| sent_at(r) == 7));
    assert_eq!(intake.stats().commits, 1);

    // After shutdown the intake refuses (retryably) instead of queueing.
    let e = intake
        .heartbeat(beat(1, 8), IntakePath::ControlApi)
        .await
        .expect_err("stopped");
    assert!(matches!(e, IntakeError::ShuttingDown), "{e}");
    assert!(e.is_retryable());
}

#[tokio::test]
async fn a_lone_heartbeat_is_committed_after_the_linger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(&dir).await;
    let intake = HeartbeatIntake::start(
        store.clone(),
        IntakeConfig {
            max_batch: 256,
            max_delay: Duration::from_millis(20),
            queue_capacity: 16,
        },
    );
    let reply = intake
        .heartbeat(beat(1, 1), IntakePath::ControlApi)
        .await
        .expect("intake");
    assert!(reply.accepted);
    assert_eq!(intake.stats().commits, 1);
    assert_eq!(stored(store.as_ref()).await.len(), 1);
    // An invalid heartbeat is refused before it reaches a batch.
    let mut bad = beat(2, 1);
    bad.node = "a/b".into();
    let e = intake
        .heartbeat(bad, IntakePath::ControlApi)
        .await
        .expect_err("invalid");
    assert!(!e.is_retryable(), "{e}");
    assert_eq!(intake.stats().queued, 1);
    intake.shutdown().await;
}

fn node_spec(node_id: &str) -> serde_json::Value {
    serde_json::json!({
        "area": "area-1", "siteId": "site-1", "localityGroup": "lg-1",
        "natGroup": "nat-1", "nodeId": node_id,
    })
}

async fn put(
    store: &dyn Store,
    kind: fabric_schemas::kinds::Kind,
    name: &str,
    spec: serde_json::Value,
) {
    store
        .put_object(fabric_reconciler::store::PutObject::new(kind, name, spec))
        .await
        .expect("put");
}

/// Replies take the fleet-wide data from a shared snapshot, but the
/// node-identity check never accepts on a cache miss or mismatch without a
/// store read; new intents show after an invalidation or the max age.
#[tokio::test]
async fn reply_snapshot_keeps_the_node_identity_check_and_bounds_hint_staleness() {
    use fabric_schemas::kinds::Kind;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(&dir).await;
    put(
        store.as_ref(),
        Kind::FabricNode,
        "node-0001",
        node_spec(&beat(1, 0).node_id),
    )
    .await;
    // A max age no test run reaches: only invalidation refreshes.
    let intake = HeartbeatIntake::start_with_reply_cache(
        store.clone(),
        IntakeConfig::default(),
        Duration::from_secs(600),
    );
    let hb = |n, id: &str| {
        let mut b = beat(n, 1);
        b.node_id = id.into();
        b
    };
    let id1 = beat(1, 0).node_id;
    let reply = intake
        .heartbeat(hb(1, &id1), IntakePath::ControlApi)
        .await
        .expect("known node");
    assert!(reply.update_hints.is_empty());

    // A node created after the snapshot: a miss reads the store, so a wrong
    // key is refused and the right one accepted.
    let id2 = format!("{:064x}", 0xbeefu32);
    put(
        store.as_ref(),
        Kind::FabricNode,
        "node-0002",
        node_spec(&id2),
    )
    .await;
    let e = intake
        .heartbeat(hb(2, &id1), IntakePath::ControlApi)
        .await
        .expect_err("wrong key");
    assert!(!e.is_retryable(), "{e}");
    intake
        .heartbeat(hb(2, &id2), IntakePath::ControlApi)
        .await
        .expect("right key");

    // A rekeyed node: the cached key mismatches, the store decides.
    let new1 = format!("{:064x}", 0xfeedu32);
    put(
        store.as_ref(),
        Kind::FabricNode,
        "node-0001",
        node_spec(&new1),
    )
    .await;
    intake
        .heartbeat(hb(1, &new1), IntakePath::ControlApi)
        .await
        .expect("new key");
    intake.invalidate_replies();
    let e = intake
        .heartbeat(hb(1, &id1), IntakePath::ControlApi)
        .await
        .expect_err("old key after refresh");
    assert!(!e.is_retryable(), "{e}");

    // A new intent: not in the current snapshot, shown after invalidation.
    put(
        store.as_ref(),
        Kind::UpdateIntent,
        "agent-next",
        serde_json::json!({"component": "node-agent", "version": "0.3.1",
            "artifact": {"sha256": "ab".repeat(32), "size": 4096,
                         "mirrors": ["fabric://update-cache/node-agent-0.3.1"]},
            "target": {"all": true}, "policy": "careful"}),
    )
    .await;
    let reply = intake
        .heartbeat(hb(1, &new1), IntakePath::ControlApi)
        .await
        .expect("hb");
    assert!(reply.update_hints.is_empty(), "snapshot not refreshed yet");
    intake.invalidate_replies();
    let reply = intake
        .heartbeat(hb(1, &new1), IntakePath::ControlApi)
        .await
        .expect("hb");
    assert_eq!(reply.update_hints.get("node-agent"), Some(&1));
    intake.shutdown().await;

    // With a short max age the hint shows within it, without invalidation.
    let intake = HeartbeatIntake::start_with_reply_cache(
        store.clone(),
        IntakeConfig::default(),
        Duration::from_millis(100),
    );
    let reply = intake
        .heartbeat(hb(2, &id2), IntakePath::ControlApi)
        .await
        .expect("hb");
    assert_eq!(reply.update_hints.get("node-agent"), Some(&1));
    put(
        store.as_ref(),
        Kind::UpdateIntent,
        "agent-other",
        serde_json::json!({"component": "host-agent", "version": "0.3.1",
            "artifact": {"sha256": "cd".repeat(32), "size": 4096,
                         "mirrors": ["fabric://update-cache/host-agent-0.3.1"]},
            "target": {"all": true}, "policy": "careful"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let reply = intake
        .heartbeat(hb(2, &id2), IntakePath::ControlApi)
        .await
        .expect("hb");
    assert_eq!(reply.update_hints.get("host-agent"), Some(&1));
    intake.shutdown().await;
}

/// The Control API is an intent source: a node whose updater has not
/// reported the hinted generation gets the signed intent record in the
/// reply, and its lease records always; a node that reports it gets no
/// intent records.
#[tokio::test]
async fn replies_carry_the_hinted_intent_record_until_the_node_reports_it_and_its_leases() {
    use fabric_proto::heartbeat::HeartbeatUpdate;
    use fabric_schemas::kinds::{Kind, Spec};
    use fabric_schemas::{Envelope, Record, Scope};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(&dir).await;
    let id1 = beat(1, 0).node_id;
    put(
        store.as_ref(),
        Kind::FabricNode,
        "node-0001",
        node_spec(&id1),
    )
    .await;
    let intent = serde_json::json!({"component": "node-agent", "version": "0.3.1",
        "artifact": {"sha256": "ab".repeat(32), "size": 4096,
                     "mirrors": ["fabric://update-cache/node-agent-0.3.1"]},
        "target": {"all": true}, "policy": "careful"});
    put(
        store.as_ref(),
        Kind::UpdateIntent,
        "agent-next",
        intent.clone(),
    )
    .await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let spec = Spec::from_json(Kind::UpdateIntent, intent).expect("spec");
    let rec =
        Record::new(&spec, "agent-next", 1 << 20, 0, i64::MAX / 2, Scope::any()).expect("record");
    let intent_env = Envelope::sign(rec, &[&key]).encode();
    store
        .put_record(
            Kind::UpdateIntent,
            "agent-next",
            1 << 20,
            intent_env.clone(),
        )
        .await
        .expect("intent record");
    let lease_env = b"lease envelope bytes".to_vec();
    store
        .put_record(
            Kind::RolloutLease,
            "node-0001.node-agent",
            7,
            lease_env.clone(),
        )
        .await
        .expect("lease record");

    let intake = HeartbeatIntake::start(store.clone(), IntakeConfig::default());
    let reply = intake
        .heartbeat(beat(1, 1), IntakePath::ControlApi)
        .await
        .expect("hb");
    assert_eq!(reply.update_hints.get("node-agent"), Some(&1));
    assert_eq!(
        reply.records,
        vec![hex::encode(&intent_env), hex::encode(&lease_env)]
    );
    // Once the updater reports the generation, only the leases come back.
    let mut hb = beat(1, 2);
    hb.updater.update = Some(HeartbeatUpdate {
        intent: "agent-next".into(),
        generation: 1,
        phase: "node-agent".into(),
        lease_id: None,
        state: "staged".into(),
    });
    let reply = intake
        .heartbeat(hb, IntakePath::ControlApi)
        .await
        .expect("hb");
    assert_eq!(reply.records, vec![hex::encode(&lease_env)]);
    intake.shutdown().await;
}
