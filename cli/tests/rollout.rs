//! `fabricctl rollout pause|resume|abort|status` against an embedded store
//! that a driver tick has written: an automatic stop (rollback) shows in
//! `status` with its reason, and the control commands change what it shows.

use std::process::Command;

use fabric_reconciler::orchestrator::{Orchestrator, OrchestratorConfig, OrchestratorKeys};
use fabric_reconciler::store::{EmbeddedStore, PutObject, Store};
use fabric_schemas::kinds::Kind;
use serde_json::{json, Value};

const INTENT: &str = "node-agent-0-2-0";
const T0: i64 = 1_798_761_600;

fn fabricctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fabricctl"))
        .args(args)
        .output()
        .expect("run fabricctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Four nodes, rolling 2/2; the first tick leases two, one of them reports
/// `rolled_back` and the second tick stops the rollout.
async fn stopped_rollout(path: &std::path::Path) {
    let store = EmbeddedStore::open(path).await.expect("open store");
    for i in 1..=4 {
        let spec = json!({"area": "alpha", "siteId": "s", "localityGroup": "s", "natGroup": "n"});
        store
            .put_object(PutObject::new(Kind::FabricNode, format!("alpha-{i}"), spec))
            .await
            .unwrap();
    }
    let policy = json!({"strategy": "rolling", "maxParallel": 2, "maxUnavailable": 2,
                        "failureRateStopPercent": 50});
    store
        .put_object(PutObject::new(Kind::RolloutPolicy, "p", policy))
        .await
        .unwrap();
    let intent = json!({"component": "node-agent", "version": "0.2.0",
        "artifact": {"sha256": "00".repeat(32), "size": 1, "mirrors": ["x"]},
        "target": {"all": true}, "policy": "p"});
    store
        .put_object(PutObject::new(Kind::UpdateIntent, INTENT, intent))
        .await
        .unwrap();
    for i in 1..=4 {
        store
            .record_heartbeat(
                &format!("alpha-{i}"),
                fabric_testkit::heartbeat_json(&format!("alpha-{i}"), "0.1.0", None),
                T0 * 1000,
            )
            .await
            .unwrap();
    }
    let orch = Orchestrator::new(
        OrchestratorKeys {
            orchestrator: fabric_schemas::keys::generate(),
            recovery_admin: None,
        },
        OrchestratorConfig::default(),
    );
    orch.tick(&store, T0).await.unwrap();
    let leases = store.list_leases(Some(INTENT)).await.unwrap();
    assert_eq!(leases.len(), 2);
    let bad = &leases[0];
    let mut body = fabric_testkit::heartbeat_json(&bad.node, "0.1.0", None);
    body["updater"]["update"] = json!({"intent": INTENT, "generation": 1,
        "phase": "node-agent", "lease_id": bad.id, "state": "rolled_back"});
    for i in 1..=4 {
        let node = format!("alpha-{i}");
        let b = if node == bad.node {
            body.clone()
        } else {
            fabric_testkit::heartbeat_json(&node, "0.1.0", None)
        };
        store
            .record_heartbeat(&node, b, (T0 + 60) * 1000)
            .await
            .unwrap();
    }
    orch.tick(&store, T0 + 60).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_stop_and_control_commands_change_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    stopped_rollout(&path).await;
    let store = format!("embedded:{}", path.display());

    let (code, text, err) = fabricctl(&["rollout", "status", INTENT, "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("phase:       Stopped"), "{text}");
    assert!(text.contains("RolledBack"), "{text}");
    assert!(text.contains("leases:      1 outstanding"), "{text}");
    assert!(text.contains("bridge_hold_required: false"), "{text}");

    let (code, json_out, err) =
        fabricctl(&["rollout", "status", INTENT, "--store", &store, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&json_out).expect("status JSON");
    assert_eq!(v["phase"], "Stopped");
    assert_eq!(v["stopped"]["reason"], "RolledBack");
    assert_eq!(v["counts"]["failed"], 1);
    assert!(v["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["reason"] == "RolledBack"));

    let (code, _, err) = fabricctl(&["rollout", "pause", INTENT, "--store", &store]);
    assert_eq!(code, 0, "{err}");
    let (_, json_out, _) =
        fabricctl(&["rollout", "status", INTENT, "--store", &store, "-o", "json"]);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["control"]["paused"], true);

    let (code, _, err) = fabricctl(&["rollout", "resume", INTENT, "--store", &store]);
    assert_eq!(code, 0, "{err}");
    let (_, json_out, _) =
        fabricctl(&["rollout", "status", INTENT, "--store", &store, "-o", "json"]);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["control"]["paused"], false);
    assert_eq!(
        v["stopped"],
        Value::Null,
        "resume clears the automatic stop"
    );

    let (code, text, err) = fabricctl(&["rollout", "override", INTENT, "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("recovery-override=yes"), "{text}");
    let (code, text, err) = fabricctl(&["rollout", "override", INTENT, "--store", &store, "--off"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("recovery-override=no"), "{text}");

    let (code, text, err) = fabricctl(&[
        "rollout",
        "abort",
        INTENT,
        "--store",
        &store,
        "--reason",
        "bad build",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("phase:       Aborted"), "{text}");
    assert!(text.contains("aborted=bad build"), "{text}");
}

#[test]
fn bad_store_and_unknown_rollout_are_clear_errors() {
    let (code, _, err) = fabricctl(&["rollout", "status", "x", "--store", "redis:foo"]);
    assert_eq!(code, 2);
    assert!(err.contains("embedded:PATH or postgres:URL"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("embedded:{}", dir.path().join("nope.redb").display());
    let (code, _, err) = fabricctl(&["rollout", "status", "x", "--store", &missing]);
    assert_eq!(code, 2);
    assert!(err.contains("does not exist"), "{err}");
    let path = dir.path().join("store.redb");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { drop(EmbeddedStore::open(&path).await.unwrap()) });
    let store = format!("embedded:{}", path.display());
    let (code, _, err) = fabricctl(&["rollout", "pause", "ghost", "--store", &store]);
    assert_eq!(code, 2);
    assert!(err.contains("UpdateIntent \"ghost\" not found"), "{err}");
}
