//! The store behaviours, each an async fn over a [`Harness`]. Names state the
//! behaviour; `store_conformance.rs` runs each against every backend.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric_reconciler::store::{
    Applied, EmbeddedStore, Heartbeat, Lease, NewEvent, Op, PostgresConfig, PostgresStore,
    PutObject, RecordOutcome, Store, StoreError, PG_URL_ENV,
};
use fabric_schemas::kinds::Kind;
use serde_json::json;

use super::{Backend, Harness};

const NODE: Kind = Kind::FabricNode;

fn lease(id: &str, rollout: &str, node: &str) -> Lease {
    Lease {
        id: id.into(),
        rollout: rollout.into(),
        node: node.into(),
        body: json!({"phase": "node-agent"}),
        expires_at: 1_900_000_000_000,
    }
}

pub(crate) async fn generation_bumps_only_when_the_spec_changes(h: &mut Harness) {
    let store = h.store().await;
    let first = store
        .put_object(PutObject::new(NODE, "edge-1", json!({"roles": ["relay"]})))
        .await
        .unwrap();
    assert_eq!(first.generation(), 1);

    let same = store
        .put_object(PutObject::new(NODE, "edge-1", json!({"roles": ["relay"]})))
        .await
        .unwrap();
    assert_eq!(
        same.generation(),
        1,
        "identical spec must not bump generation"
    );
    assert_eq!(
        same.resource_version, first.resource_version,
        "identical put is a no-op"
    );

    let mut relabel = PutObject::new(NODE, "edge-1", json!({"roles": ["relay"]}));
    relabel.labels.insert("area".into(), "eu".into());
    let relabeled = store.put_object(relabel).await.unwrap();
    assert_eq!(relabeled.generation(), 1, "labels are not spec");
    assert!(relabeled.resource_version > first.resource_version);
    assert_eq!(
        relabeled.metadata.labels.get("area").map(String::as_str),
        Some("eu")
    );

    let changed = store
        .put_object(PutObject::new(
            NODE,
            "edge-1",
            json!({"roles": ["ingress"]}),
        ))
        .await
        .unwrap();
    assert_eq!(changed.generation(), 2);

    store
        .put_object(PutObject::new(NODE, "core-1", json!({})))
        .await
        .unwrap();
    store
        .put_object(PutObject::new(Kind::ServiceRecord, "svc", json!({})))
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_objects(NODE)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.metadata.name)
        .collect();
    assert_eq!(names, ["core-1", "edge-1"]);
    let got = store.get_object(NODE, "edge-1").await.unwrap().unwrap();
    assert_eq!(got.spec, json!({"roles": ["ingress"]}));
    assert_eq!(got.generation(), 2);

    // Deleting and re-creating continues above the old generation, so records
    // signed for the new object never look like a rollback to nodes.
    assert!(store.delete_object(NODE, "edge-1", None).await.unwrap());
    assert!(!store.delete_object(NODE, "edge-1", None).await.unwrap());
    assert_eq!(store.get_object(NODE, "edge-1").await.unwrap(), None);
    assert_eq!(store.list_objects(NODE).await.unwrap().len(), 1);
    let again = store
        .put_object(PutObject::new(NODE, "edge-1", json!({"roles": ["relay"]})).expect_version(0))
        .await
        .unwrap();
    assert_eq!(again.generation(), 3);
}

pub(crate) async fn stale_resource_version_is_a_conflict(h: &mut Harness) {
    let store = h.store().await;
    let v1 = store
        .put_object(PutObject::new(NODE, "n", json!({"a": 1})).expect_version(0))
        .await
        .unwrap();
    let v2 = store
        .put_object(PutObject::new(NODE, "n", json!({"a": 2})).expect_version(v1.resource_version))
        .await
        .unwrap();
    assert!(v2.resource_version > v1.resource_version);

    let stale = store
        .put_object(PutObject::new(NODE, "n", json!({"a": 3})).expect_version(v1.resource_version))
        .await
        .unwrap_err();
    assert!(stale.is_conflict(), "{stale}");
    assert!(stale.to_string().contains("FabricNode \"n\""), "{stale}");

    let create_again = store
        .put_object(PutObject::new(NODE, "n", json!({"a": 3})).expect_version(0))
        .await
        .unwrap_err();
    assert!(create_again.is_conflict(), "{create_again}");

    let status = store
        .put_status(NODE, "n", json!({"ok": true}), Some(v1.resource_version))
        .await
        .unwrap_err();
    assert!(status.is_conflict(), "{status}");
    let delete = store
        .delete_object(NODE, "n", Some(v1.resource_version))
        .await
        .unwrap_err();
    assert!(delete.is_conflict(), "{delete}");

    let current = store.get_object(NODE, "n").await.unwrap().unwrap();
    assert_eq!(
        current.spec,
        json!({"a": 2}),
        "failed writes changed nothing"
    );
    assert_eq!(current.resource_version, v2.resource_version);
}

pub(crate) async fn status_write_never_bumps_generation(h: &mut Harness) {
    let store = h.store().await;
    let put = store
        .put_object(PutObject::new(NODE, "n", json!({"a": 1})))
        .await
        .unwrap();
    let status = json!({"observedGeneration": 1, "conditions": [{"type": "Ready"}]});
    let with_status = store
        .put_status(NODE, "n", status.clone(), Some(put.resource_version))
        .await
        .unwrap();
    assert_eq!(with_status.generation(), 1);
    assert!(with_status.resource_version > put.resource_version);
    assert_eq!(with_status.status, Some(status.clone()));
    assert_eq!(with_status.spec, json!({"a": 1}));

    let again = store
        .put_status(NODE, "n", status.clone(), None)
        .await
        .unwrap();
    assert_eq!(again.resource_version, with_status.resource_version);

    let respec = store
        .put_object(PutObject::new(NODE, "n", json!({"a": 2})))
        .await
        .unwrap();
    assert_eq!(respec.generation(), 2);
    assert_eq!(respec.status, Some(status), "a spec write keeps the status");

    let missing = store
        .put_status(NODE, "ghost", json!({}), None)
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound { .. }), "{missing}");
}

pub(crate) async fn record_generation_rollback_is_refused(h: &mut Harness) {
    let store = h.store().await;
    let svc = Kind::ServiceRecord;
    assert_eq!(
        store
            .put_record(svc, "api", 2, b"env-2".to_vec())
            .await
            .unwrap(),
        RecordOutcome::Inserted
    );
    assert_eq!(
        store
            .put_record(svc, "api", 2, b"env-2".to_vec())
            .await
            .unwrap(),
        RecordOutcome::Unchanged
    );
    assert_eq!(
        store
            .put_record(svc, "api", 2, b"env-2-resigned".to_vec())
            .await
            .unwrap(),
        RecordOutcome::Replaced
    );
    assert_eq!(
        store
            .put_record(svc, "api", 3, b"env-3".to_vec())
            .await
            .unwrap(),
        RecordOutcome::Replaced
    );
    let rollback = store
        .put_record(svc, "api", 1, b"env-1".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(
            rollback,
            StoreError::RecordRollback {
                stored: 3,
                offered: 1,
                ..
            }
        ),
        "{rollback}"
    );
    let stored = store.get_record(svc, "api").await.unwrap().unwrap();
    assert_eq!(
        (stored.generation, stored.envelope.as_slice()),
        (3, &b"env-3"[..])
    );

    store
        .put_record(NODE, "edge-1", 1, b"node".to_vec())
        .await
        .unwrap();
    let all = store.list_records(None).await.unwrap();
    let keys: Vec<(Kind, &str)> = all.iter().map(|r| (r.kind, r.name.as_str())).collect();
    assert_eq!(keys, [(NODE, "edge-1"), (svc, "api")]);
    assert_eq!(store.list_records(Some(svc)).await.unwrap().len(), 1);
}

pub(crate) async fn latest_heartbeat_wins_and_all_are_counted(h: &mut Harness) {
    let store = h.store().await;
    store
        .record_heartbeat("node-b", json!({"v": 2}), 200)
        .await
        .unwrap();
    // Delivered late: counted, but does not replace the newer body.
    store
        .record_heartbeat("node-b", json!({"v": 1}), 100)
        .await
        .unwrap();
    let hb = |node: &str, v: i64, at: i64| Heartbeat {
        node: node.into(),
        body: json!({"v": v}),
        received_at: at,
    };
    store
        .record_heartbeats(&[
            hb("node-a", 1, 10),
            hb("node-a", 3, 30),
            hb("node-a", 2, 20),
            hb("node-b", 3, 300),
        ])
        .await
        .unwrap();
    let all = store.list_heartbeats().await.unwrap();
    assert_eq!(all.len(), 2);
    let (a, b) = (&all[0], &all[1]);
    assert_eq!(
        (a.node.as_str(), &a.body, a.received_at),
        ("node-a", &json!({"v": 3}), 30)
    );
    assert_eq!((a.first_seen, a.received_count), (10, 3));
    assert_eq!(
        (b.node.as_str(), &b.body, b.received_at),
        ("node-b", &json!({"v": 3}), 300)
    );
    assert_eq!((b.first_seen, b.received_count), (100, 3));

    let bad = store
        .record_heartbeats(&[hb("ok", 1, 1), hb("", 1, 1)])
        .await;
    assert!(matches!(bad, Err(StoreError::Invalid { .. })), "{bad:?}");
    assert_eq!(
        store.list_heartbeats().await.unwrap().len(),
        2,
        "bad batch wrote nothing"
    );
}

pub(crate) async fn rollout_state_is_versioned(h: &mut Harness) {
    let store = h.store().await;
    let v1 = store
        .put_rollout_state("na-0.3", json!({"wave": 1}), Some(0))
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let dup = store
        .put_rollout_state("na-0.3", json!({"wave": 1}), Some(0))
        .await
        .unwrap_err();
    assert!(dup.is_conflict(), "{dup}");
    let v2 = store
        .put_rollout_state("na-0.3", json!({"wave": 2}), Some(1))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let stale = store
        .put_rollout_state("na-0.3", json!({"wave": 9}), Some(1))
        .await
        .unwrap_err();
    assert!(stale.is_conflict(), "{stale}");
    let got = store.get_rollout_state("na-0.3").await.unwrap().unwrap();
    assert_eq!((got.version, got.state), (2, json!({"wave": 2})));
    assert_eq!(store.get_rollout_state("other").await.unwrap(), None);
}

pub(crate) async fn leases_rollout_state_and_events_survive_reopen(h: &mut Harness) {
    {
        let store = h.store().await;
        store
            .put_lease(lease("l1", "na-0.3", "edge-1"))
            .await
            .unwrap();
        store
            .put_lease(lease("l2", "na-0.3", "edge-2"))
            .await
            .unwrap();
        store
            .put_lease(lease("l3", "ha-0.9", "edge-1"))
            .await
            .unwrap();
        assert!(store.delete_lease("l2").await.unwrap());
        assert!(!store.delete_lease("l2").await.unwrap());
        store
            .put_rollout_state("na-0.3", json!({"wave": 4}), None)
            .await
            .unwrap();
        store
            .append_event(NewEvent::new(
                "UpdateIntent/na-0.3",
                "LeaseGranted",
                "edge-1",
            ))
            .await
            .unwrap();
        store
            .put_object(PutObject::new(NODE, "edge-1", json!({"x": 1})))
            .await
            .unwrap();
    }
    h.reopen().await;
    let store = h.store().await;
    let ids: Vec<String> = store
        .list_leases(None)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, ["l1", "l3"]);
    let na = store.list_leases(Some("na-0.3")).await.unwrap();
    assert_eq!(na, [lease("l1", "na-0.3", "edge-1")]);
    let state = store.get_rollout_state("na-0.3").await.unwrap().unwrap();
    assert_eq!(state.state, json!({"wave": 4}));
    let events = store.list_events(0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.reason, "LeaseGranted");
    let obj = store.get_object(NODE, "edge-1").await.unwrap().unwrap();
    assert_eq!(obj.generation(), 1);
    // Counters continue after reopen.
    let next = store
        .put_object(PutObject::new(NODE, "edge-2", json!({})))
        .await
        .unwrap();
    assert!(next.resource_version > obj.resource_version);
}

pub(crate) async fn events_are_paged_in_commit_order(h: &mut Harness) {
    let store = h.store().await;
    let mut seqs = Vec::new();
    for i in 0..5 {
        let mut e = NewEvent::new("node/edge-1", "Heartbeat", format!("event {i}"));
        e.data = json!({"i": i});
        seqs.push(store.append_event(e).await.unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let page1 = store.list_events(0, 3).await.unwrap();
    assert_eq!(page1.len(), 3);
    let page2 = store.list_events(page1[2].seq, 10).await.unwrap();
    let all: Vec<i64> = page1
        .iter()
        .chain(&page2)
        .map(|e| e.event.data["i"].as_i64().unwrap())
        .collect();
    assert_eq!(all, [0, 1, 2, 3, 4]);
    let bad = store
        .append_event(NewEvent::new("", "X", "no subject"))
        .await;
    assert!(matches!(bad, Err(StoreError::Invalid { .. })), "{bad:?}");
}

pub(crate) async fn batch_with_one_invalid_op_changes_nothing(h: &mut Harness) {
    let store = h.store().await;
    store
        .put_record(Kind::ServiceRecord, "api", 5, b"v5".to_vec())
        .await
        .unwrap();
    let before_events = store.list_events(0, 100).await.unwrap().len();
    let batch = vec![
        Op::PutObject(PutObject::new(NODE, "a", json!({"x": 1}))),
        Op::PutObject(PutObject::new(NODE, "b", json!({"x": 1}))),
        Op::PutLease(lease("l1", "r", "a")),
        Op::PutRolloutState {
            name: "r".into(),
            state: json!({"wave": 1}),
            expected_version: None,
        },
        Op::AppendEvent(NewEvent::new("UpdateIntent/r", "Applied", "batch")),
        // The invalid one: a record rollback, last so everything before it ran.
        Op::PutRecord {
            kind: Kind::ServiceRecord,
            name: "api".into(),
            generation: 4,
            envelope: b"v4".to_vec(),
        },
    ];
    let err = store.apply_batch(batch).await.unwrap_err();
    assert!(matches!(err, StoreError::RecordRollback { .. }), "{err}");
    assert!(store.list_objects(NODE).await.unwrap().is_empty());
    assert!(store.list_leases(None).await.unwrap().is_empty());
    assert_eq!(store.get_rollout_state("r").await.unwrap(), None);
    assert_eq!(
        store.list_events(0, 100).await.unwrap().len(),
        before_events
    );

    // Same with a malformed op (spec not an object) in the middle.
    let err = store
        .apply_batch(vec![
            Op::PutObject(PutObject::new(NODE, "a", json!({"x": 1}))),
            Op::PutObject(PutObject::new(NODE, "b", json!("not an object"))),
            Op::PutObject(PutObject::new(NODE, "c", json!({"x": 1}))),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert!(store.list_objects(NODE).await.unwrap().is_empty());
}

pub(crate) async fn batch_ops_see_earlier_ops(h: &mut Harness) {
    let store = h.store().await;
    let applied = store
        .apply_batch(vec![
            Op::PutObject(PutObject::new(NODE, "a", json!({"x": 1}))),
            Op::PutStatus {
                kind: NODE,
                name: "a".into(),
                status: json!({"observedGeneration": 1}),
                expected_version: None,
            },
            Op::PutObject(PutObject::new(NODE, "a", json!({"x": 2}))),
            Op::PutRecord {
                kind: NODE,
                name: "a".into(),
                generation: 2,
                envelope: b"signed".to_vec(),
            },
            Op::AppendEvent(NewEvent::new("FabricNode/a", "Published", "generation 2")),
        ])
        .await
        .unwrap();
    assert_eq!(applied.len(), 5);
    let Applied::Object(last) = &applied[2] else {
        panic!("expected an object, got {:?}", applied[2]);
    };
    assert_eq!(last.generation(), 2);
    assert_eq!(last.status, Some(json!({"observedGeneration": 1})));
    assert!(matches!(
        applied[3],
        Applied::Record(RecordOutcome::Inserted)
    ));
    assert!(matches!(applied[4], Applied::Event(_)));
}

pub(crate) async fn exactly_one_leader_among_contending_replicas(h: &mut Harness) {
    // Several replicas (separate connection pools on PostgreSQL) race at once.
    let mut replicas = Vec::new();
    for _ in 0..4 {
        replicas.push(h.store().await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&replicas[i % replicas.len()]);
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let holder = format!("replica-{i}");
            store
                .try_acquire_leadership("reconciler", &holder, Duration::from_secs(30))
                .await
                .unwrap()
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(l) = t.await.unwrap() {
            winners.push(l);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one leader: {winners:?}");
    let leader = winners.remove(0);
    assert_eq!(leader.term, 1);
    let store = &replicas[0];
    assert_eq!(
        store
            .current_leader("reconciler")
            .await
            .unwrap()
            .map(|l| l.holder),
        Some(leader.holder.clone())
    );
    // Re-acquiring one's own lease extends it and keeps the term.
    let again = store
        .try_acquire_leadership("reconciler", &leader.holder, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.term, 1);
    // Elections are independent.
    assert!(store
        .try_acquire_leadership("orchestrator", "replica-x", Duration::from_secs(30))
        .await
        .unwrap()
        .is_some());

    // Churn: holders grab, hold briefly, release or let expire. Whatever the
    // interleaving, every term has exactly one holder (the fencing invariant).
    assert!(store
        .release_leadership("reconciler", &leader.holder)
        .await
        .unwrap());
    let deadline = Instant::now() + Duration::from_millis(1200);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = Arc::clone(&replicas[i % replicas.len()]);
        tasks.push(tokio::spawn(async move {
            let holder = format!("churn-{i}");
            let mut seen = Vec::new();
            let mut n = 0u32;
            while Instant::now() < deadline {
                n += 1;
                if let Some(l) = store
                    .try_acquire_leadership("reconciler", &holder, Duration::from_millis(60))
                    .await
                    .unwrap()
                {
                    seen.push((l.term, l.holder));
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    if n % 2 == 0 {
                        store
                            .release_leadership("reconciler", &holder)
                            .await
                            .unwrap();
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }));
    }
    let mut holders_by_term: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for t in tasks {
        for (term, holder) in t.await.unwrap() {
            holders_by_term.entry(term).or_default().insert(holder);
        }
    }
    assert!(
        holders_by_term.len() >= 2,
        "leadership changed hands: {holders_by_term:?}"
    );
    for (term, holders) in &holders_by_term {
        assert_eq!(
            holders.len(),
            1,
            "term {term} had several leaders: {holders:?}"
        );
    }
}

pub(crate) async fn leadership_is_taken_over_after_expiry(h: &mut Harness) {
    let a = h.store().await;
    let b = h.store().await;
    let ttl = Duration::from_millis(300);
    let la = a
        .try_acquire_leadership("reconciler", "a", ttl)
        .await
        .unwrap()
        .expect("a leads");
    assert_eq!(
        b.try_acquire_leadership("reconciler", "b", ttl)
            .await
            .unwrap(),
        None,
        "b must wait while a's lease is live"
    );
    assert!(a
        .renew_leadership("reconciler", "a", ttl)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        b.renew_leadership("reconciler", "b", ttl).await.unwrap(),
        None
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(a.current_leader("reconciler").await.unwrap(), None);
    let lb = b
        .try_acquire_leadership("reconciler", "b", ttl)
        .await
        .unwrap()
        .expect("b takes over after expiry");
    assert_eq!(lb.term, la.term + 1, "takeover bumps the fencing term");
    assert_eq!(
        a.renew_leadership("reconciler", "a", ttl).await.unwrap(),
        None,
        "deposed leader cannot renew"
    );
    assert!(!a.release_leadership("reconciler", "a").await.unwrap());
    assert!(b.release_leadership("reconciler", "b").await.unwrap());
    let la2 = a
        .try_acquire_leadership("reconciler", "a", ttl)
        .await
        .unwrap()
        .expect("released leadership is free at once");
    assert_eq!(la2.term, lb.term + 1);
}

pub(crate) async fn invalid_names_are_refused(h: &mut Harness) {
    let store = h.store().await;
    for name in ["", "a/b", "tab\there"] {
        let err = store
            .put_object(PutObject::new(NODE, name, json!({})))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{name:?}: {err}");
    }
    let err = store.put_lease(lease("", "r", "n")).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    let err = store
        .try_acquire_leadership("", "a", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
}

// ---- crash safety ---------------------------------------------------------------

pub(crate) const CHILD_ENV: &str = "FABRIC_STORE_CRASH_CHILD";
const OBJECTS_PER_BATCH: usize = 8;

/// Opens the store a child process was pointed at.
async fn child_store(spec: &str) -> Arc<dyn Store> {
    match spec.split_once(':') {
        Some(("embedded", path)) => Arc::new(EmbeddedStore::open(path).await.unwrap()),
        Some(("postgres", schema)) => {
            let url = std::env::var(PG_URL_ENV).unwrap();
            Arc::new(
                PostgresStore::connect(PostgresConfig::new(url).with_schema(schema))
                    .await
                    .unwrap(),
            )
        }
        _ => panic!("bad {CHILD_ENV}={spec:?}"),
    }
}

/// One crash-test batch: every object, the rollout state, a record and an event
/// all carry batch number `i`; a torn batch would show mixed numbers.
fn crash_batch(i: u64) -> Vec<Op> {
    let pad = "x".repeat(4096);
    let mut ops: Vec<Op> = (0..OBJECTS_PER_BATCH)
        .map(|k| {
            Op::PutObject(PutObject::new(
                NODE,
                format!("node-{k}"),
                json!({"batch": i, "pad": pad}),
            ))
        })
        .collect();
    ops.push(Op::PutRolloutState {
        name: "crash".into(),
        state: json!({"batch": i}),
        expected_version: Some(i - 1),
    });
    ops.push(Op::PutRecord {
        kind: Kind::ServiceRecord,
        name: "crash".into(),
        generation: i as i64,
        envelope: vec![(i % 251) as u8; 8192],
    });
    let mut event = NewEvent::new("crash", "Batch", "crash batch");
    event.data = json!({"batch": i});
    ops.push(Op::AppendEvent(event));
    ops
}

/// The child process: writes batches forever, printing each commit.
pub(crate) async fn crash_writer_child_main() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = child_store(&spec).await;
    let start = store
        .get_rollout_state("crash")
        .await
        .unwrap()
        .map_or(0, |s| s.version);
    for i in start + 1.. {
        store.apply_batch(crash_batch(i)).await.unwrap();
        println!("committed {i}");
    }
}

/// Every piece of the last committed batch is present, and nothing of a later one.
async fn assert_whole_batches(store: &dyn Store) -> u64 {
    let Some(state) = store.get_rollout_state("crash").await.unwrap() else {
        return 0;
    };
    let batch = state.state["batch"].as_u64().unwrap();
    assert_eq!(state.version, batch);
    let objects = store.list_objects(NODE).await.unwrap();
    assert_eq!(objects.len(), OBJECTS_PER_BATCH);
    for o in &objects {
        assert_eq!(
            o.spec["batch"].as_u64(),
            Some(batch),
            "torn batch: {}",
            o.name()
        );
        assert_eq!(o.generation(), batch as i64);
    }
    let record = store
        .get_record(Kind::ServiceRecord, "crash")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.generation, batch as i64);
    assert!(record.envelope.iter().all(|b| *b == (batch % 251) as u8));
    let events = store.list_events(0, 1_000_000).await.unwrap();
    assert_eq!(events.len() as u64, batch, "one event per committed batch");
    assert_eq!(
        events.last().unwrap().event.data["batch"].as_u64(),
        Some(batch)
    );
    batch
}

pub(crate) async fn killed_writer_leaves_no_half_applied_batch(h: &mut Harness) {
    let spec = match h.backend() {
        Backend::Embedded => format!("embedded:{}", h.path().display()),
        Backend::Postgres => {
            let schema = h.pg_config().unwrap().schema.clone();
            // Create the schema up front so the child does not spend its life migrating.
            drop(h.store().await);
            format!("postgres:{schema}")
        }
    };
    // The child re-runs this very test in this binary, as the writer.
    let test_name = match h.backend() {
        Backend::Embedded => "embedded::killed_writer_leaves_no_half_applied_batch",
        Backend::Postgres => "postgres::killed_writer_leaves_no_half_applied_batch",
    };
    let mut committed = 0;
    for round in 0..3 {
        // The embedded file has a single opener: hand it to the child.
        h.close();
        let target = committed + 5 + round * 3;
        let spec = spec.clone();
        let reached = tokio::task::spawn_blocking(move || {
            let exe = std::env::current_exe().unwrap();
            let mut child = Command::new(exe)
                .args(["--exact", test_name, "--nocapture"])
                .args(["--test-threads", "1"])
                .env(CHILD_ENV, &spec)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let mut reached = 0;
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                if let Some(n) = line.strip_prefix("committed ") {
                    reached = n.trim().parse::<u64>().unwrap();
                    if reached >= target {
                        break;
                    }
                }
            }
            // SIGKILL while it is in the middle of its next batch.
            child.kill().unwrap();
            child.wait().unwrap();
            reached
        })
        .await
        .unwrap();
        assert!(reached >= target, "child stopped early at batch {reached}");
        h.reopen().await;
        let store = h.store().await;
        let batch = assert_whole_batches(&*store).await;
        // The batch being written at the kill may or may not have committed.
        assert!(
            batch == reached || batch == reached + 1,
            "round {round}: child reported {reached}, store holds {batch}"
        );
        committed = batch;
    }
}
