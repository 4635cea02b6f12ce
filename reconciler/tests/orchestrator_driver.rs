//! The orchestrator driver over a real store: durable leases across restarts,
//! automatic stops, operator control, the farm-wide start guard, lease
//! renewal and the compat bridge. Durability and control cases run on both
//! backends (`embedded::*`, `postgres::*`); the rest on the embedded store
//! (the driver's logic does not depend on the backend, the conformance suite
//! proves the backends equal).

#[path = "orchestrator_support/mod.rs"]
mod support;

use std::collections::BTreeSet;

use fabric_reconciler::orchestrator::{control, OrchestratorConfig, RolloutDoc};
use fabric_reconciler::rollout::{LeaseRefusal, Reason, RolloutPhase};
use fabric_schemas::kinds::{Component, Kind};
use fabric_schemas::{Envelope, Record, Scope, ScopeTerm, Spec};
use serde_json::json;
use support::*;

fn cfg() -> OrchestratorConfig {
    OrchestratorConfig::default()
}

/// Heartbeats for `nodes` at `now`: finished ones on NEW, leased ones report
/// `applying` for their lease, the rest idle on OLD.
async fn report_all(w: &World, nodes: &[String], finished: &BTreeSet<String>, now: i64) {
    let leases = w.leases(INTENT).await;
    for n in nodes {
        let body = if finished.contains(n) {
            hb(NEW)
        } else if let Some((_, id, _)) = leases.iter().find(|l| &l.0 == n) {
            hb_report(OLD, id, "applying")
        } else {
            hb(OLD)
        };
        w.heartbeat(n, body, now).await;
    }
}

async fn doc(w: &World) -> (RolloutDoc, u64) {
    let s = w
        .store()
        .get_rollout_state(INTENT)
        .await
        .expect("read rollout state")
        .expect("rollout state written");
    (
        serde_json::from_value(s.state).expect("rollout doc"),
        s.version,
    )
}

// ---- cases run on both backends ---------------------------------------------

/// A restarted driver continues with the same leases and progress, and the rollout completes.
pub async fn restart_mid_rollout_keeps_leases_and_progress(w: &mut World) {
    let nodes = w.nodes(&["alpha", "beta", "gamma"], 2).await;
    w.policy(rolling(2, 2)).await;
    w.intent(INTENT, Component::NodeAgent, NEW).await;
    let mut now = T0;
    let mut finished = BTreeSet::new();
    report_all(w, &nodes, &finished, now).await;

    let orch = w.orchestrator(false, cfg());
    let first = orch.tick(w.store(), now).await.expect("tick");
    assert_eq!(first.granted(), 2, "{first:?}");
    let leases_before = w.leases(INTENT).await;
    assert_eq!(leases_before.len(), 2);
    // Level-triggered and idempotent: the same inputs write nothing.
    let again = orch.tick(w.store(), now).await.expect("tick");
    assert_eq!((again.granted(), again.ops), (0, 0), "{again:?}");
    let (doc_before, version_before) = doc(w).await;

    // Restart: a new store handle and a new driver instance.
    drop(orch);
    w.reopen().await;
    let orch = w.orchestrator(false, cfg());
    let after = orch.tick(w.store(), now).await.expect("tick after restart");
    assert_eq!((after.granted(), after.ops), (0, 0), "{after:?}");
    assert_eq!(
        w.leases(INTENT).await,
        leases_before,
        "same leases, same bytes"
    );
    assert_eq!(doc(w).await, (doc_before, version_before), "same progress");

    // Drive to completion, restarting the driver before every tick.
    let mut seen_ids = BTreeSet::new();
    for round in 0..10 {
        for (node, id, body) in w.leases(INTENT).await {
            assert!(
                seen_ids.insert(id.clone()) || round > 0,
                "duplicate lease {id}"
            );
            // Every lease is a valid, node-admissible envelope.
            let bytes = body.envelope_bytes().expect("hex envelope");
            let spec = w.admit(&bytes, now, 6, 2).expect("admitted");
            assert_eq!(spec.node, node);
            finished.insert(node);
        }
        now += 60;
        report_all(w, &nodes, &finished, now).await;
        w.reopen().await;
        let orch = w.orchestrator(false, cfg());
        let r = orch.tick(w.store(), now).await.expect("tick");
        let status = &r.rollout(INTENT).expect("planned").status;
        assert!(
            r.rollout(INTENT).unwrap().granted.len() <= 2,
            "maxParallel 2: {r:?}"
        );
        if status.phase == RolloutPhase::Complete {
            assert_eq!(status.counts.done, 6);
            assert!(
                w.leases(INTENT).await.is_empty(),
                "completed leases revoked"
            );
            let (d, _) = doc(w).await;
            assert_eq!(d.progress.done.len(), 6);
            let st = w.intent_status(INTENT).await;
            assert_eq!(st["observedGeneration"], json!(1));
            assert!(
                condition_types(&st).contains(&"Complete".to_owned()),
                "{st}"
            );
            return;
        }
    }
    panic!("rollout did not complete within 10 rounds");
}

/// A pause stops new leases; a resume continues the rollout.
pub async fn pause_stops_new_leases_and_resume_continues(w: &mut World) {
    let nodes = w.nodes(&["alpha", "beta"], 3).await;
    w.policy(rolling(2, 2)).await;
    w.intent(INTENT, Component::NodeAgent, NEW).await;
    let mut now = T0;
    let mut finished = BTreeSet::new();
    report_all(w, &nodes, &finished, now).await;
    let orch = w.orchestrator(false, cfg());
    assert_eq!(orch.tick(w.store(), now).await.unwrap().granted(), 2);

    let view = control::pause(w.store(), INTENT).await.expect("pause");
    assert!(view.control.paused);
    assert_eq!(view.phase, Some(RolloutPhase::Paused), "shown at once");
    // The leased nodes finish while paused: revoked as completed, none new.
    finished.extend(w.leased_nodes(INTENT).await);
    now += 60;
    report_all(w, &nodes, &finished, now).await;
    let r = orch.tick(w.store(), now).await.unwrap();
    let rr = r.rollout(INTENT).unwrap();
    assert_eq!(rr.granted.len(), 0, "{r:?}");
    assert_eq!(rr.revoked.len(), 2);
    assert_eq!(rr.status.phase, RolloutPhase::Paused);
    assert!(condition_types(&w.intent_status(INTENT).await).contains(&"Paused".to_owned()));
    let view = control::status(w.store(), INTENT).await.unwrap();
    assert_eq!(view.phase, Some(RolloutPhase::Paused));
    assert_eq!(view.counts.done, 2, "progress kept while paused");
    assert!(view.leases.is_empty());

    // Resume on a new driver instance: the rollout continues.
    let view = control::resume(w.store(), INTENT, false)
        .await
        .expect("resume");
    assert!(!view.control.paused);
    let orch = w.orchestrator(false, cfg());
    now += 60;
    report_all(w, &nodes, &finished, now).await;
    let r = orch.tick(w.store(), now).await.unwrap();
    let granted = granted_nodes(&r, INTENT);
    assert_eq!(granted.len(), 2, "{r:?}");
    assert!(granted.is_disjoint(&finished));

    // The policy's own `paused` flag is honoured too.
    let mut p = rolling(2, 2);
    p["paused"] = json!(true);
    w.policy(p).await;
    finished.extend(w.leased_nodes(INTENT).await);
    now += 60;
    report_all(w, &nodes, &finished, now).await;
    let r = orch.tick(w.store(), now).await.unwrap();
    assert_eq!(r.granted(), 0);
    assert_eq!(
        r.rollout(INTENT).unwrap().status.phase,
        RolloutPhase::Paused
    );
}

/// An abort revokes every outstanding lease and grants none after.
pub async fn abort_revokes_outstanding_leases(w: &mut World) {
    let nodes = w.nodes(&["alpha", "beta"], 3).await;
    w.policy(rolling(2, 2)).await;
    w.intent(INTENT, Component::NodeAgent, NEW).await;
    let mut now = T0;
    report_all(w, &nodes, &BTreeSet::new(), now).await;
    let orch = w.orchestrator(false, cfg());
    orch.tick(w.store(), now).await.unwrap();
    let leased = w.leases(INTENT).await;
    assert_eq!(leased.len(), 2);

    let view = control::abort(w.store(), INTENT, "bad build")
        .await
        .expect("abort");
    assert_eq!(view.phase, Some(RolloutPhase::Aborted));
    now += 30;
    report_all(w, &nodes, &BTreeSet::new(), now).await;
    let r = orch.tick(w.store(), now).await.unwrap();
    let rr = r.rollout(INTENT).unwrap();
    assert_eq!(rr.revoked.len(), 2, "{r:?}");
    assert!(rr.revoked.iter().all(|(_, _, why)| why == "Aborted"));
    assert_eq!(rr.granted.len(), 0);
    assert!(w.store().list_leases(None).await.unwrap().is_empty());
    assert_eq!(rr.status.phase, RolloutPhase::Aborted);
    assert!(condition_types(&w.intent_status(INTENT).await).contains(&"Aborted".to_owned()));

    // Each revocation is published as a newer record of the same lease that
    // is already expired, so a node that held the grant stops.
    for (node, id, body) in leased {
        let rec = w
            .store()
            .get_record(Kind::RolloutLease, &body.record_name)
            .await
            .unwrap()
            .expect("lease record published");
        assert!(rec.generation as u64 > body.record_generation);
        let refusal = w.admit(&rec.envelope, now, 6, 1).unwrap_err();
        assert!(
            matches!(refusal, LeaseRefusal::Expired { ref lease_id, .. } if *lease_id == id),
            "{node}: {refusal}"
        );
    }
    // Stays aborted: nothing granted on later ticks.
    let r = orch.tick(w.store(), now + 60).await.unwrap();
    assert_eq!(r.granted(), 0);
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let mut w = super::World::new(super::Backend::Embedded, stringify!($name))
                        .await
                        .expect("embedded world");
                    super::$name(&mut w).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(mut w) =
                        super::World::new(super::Backend::Postgres, stringify!($name)).await
                    else {
                        return;
                    };
                    super::$name(&mut w).await;
                }
            )*
        }
    };
}

both_backends!(
    restart_mid_rollout_keeps_leases_and_progress,
    pause_stops_new_leases_and_resume_continues,
    abort_revokes_outstanding_leases,
);

// ---- embedded-only cases -----------------------------------------------------

async fn world(test: &str) -> World {
    World::new(Backend::Embedded, test)
        .await
        .expect("embedded world")
}

/// Six nodes, rolling 2/2, first tick done: returns the world, nodes and leases.
async fn started(
    test: &str,
    config: OrchestratorConfig,
) -> (World, Vec<String>, Vec<(String, String)>) {
    let w = world(test).await;
    let nodes = w.nodes(&["alpha", "beta", "gamma"], 2).await;
    w.policy(rolling(2, 2)).await;
    w.intent(INTENT, Component::NodeAgent, NEW).await;
    report_all(&w, &nodes, &BTreeSet::new(), T0).await;
    let r = w
        .orchestrator(false, config)
        .tick(w.store(), T0)
        .await
        .unwrap();
    assert_eq!(r.granted(), 2);
    let leases = w
        .leases(INTENT)
        .await
        .into_iter()
        .map(|(n, id, _)| (n, id))
        .collect();
    (w, nodes, leases)
}

/// The stop is in the tick report, the intent status and `rollout status`,
/// and holds: no new leases on the next tick either.
async fn assert_stopped(w: &World, config: OrchestratorConfig, now: i64, reason: Reason) {
    let orch = w.orchestrator(false, config);
    let r = orch.tick(w.store(), now).await.unwrap();
    let rr = r.rollout(INTENT).unwrap();
    assert_eq!(rr.status.phase, RolloutPhase::Stopped, "{r:?}");
    assert!(rr.status.has(reason), "{:?}", rr.status.conditions);
    assert_eq!(rr.granted.len(), 0);
    let st = w.intent_status(INTENT).await;
    assert!(
        condition_types(&st).contains(&reason.as_str().to_owned()),
        "intent status lacks {reason}: {st}"
    );
    let view = control::status(w.store(), INTENT).await.unwrap();
    assert_eq!(view.phase, Some(RolloutPhase::Stopped));
    assert_eq!(view.stopped.as_ref().map(|s| s.reason), Some(reason));
    assert!(view.conditions.iter().any(|c| c.reason == reason.as_str()));
    let again = orch.tick(w.store(), now + 1).await.unwrap();
    assert_eq!(again.granted(), 0, "a stop is sticky");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_rate_stop_is_persisted_and_reported() {
    let mut config = cfg();
    config.planner.max_attempts = 1;
    config.planner.min_failure_sample = 2;
    let (w, nodes, leases) = started("failure_rate", config.clone()).await;
    let now = T0 + 60;
    for n in &nodes {
        let body = match leases.iter().find(|l| &l.0 == n) {
            Some((_, id)) => hb_report(OLD, id, "blocked"),
            None => hb(OLD),
        };
        w.heartbeat(n, body, now).await;
    }
    assert_stopped(&w, config, now, Reason::FailureRateExceeded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_loss_stop_is_persisted_and_reported() {
    let (w, nodes, leases) = started("heartbeat_loss", cfg()).await;
    // 200 s later every node but one leased node has reported again.
    let now = T0 + 200;
    let lost = &leases[0].0;
    for n in nodes.iter().filter(|n| *n != lost) {
        w.heartbeat(n, hb(OLD), now).await;
    }
    assert_stopped(&w, cfg(), now, Reason::HeartbeatLost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_stop_is_persisted_and_reported() {
    let (w, nodes, leases) = started("rollback", cfg()).await;
    let now = T0 + 60;
    for n in &nodes {
        let body = match leases.iter().find(|l| &l.0 == n) {
            Some((_, id)) if *n == leases[0].0 => hb_report(OLD, id, "rolled_back"),
            Some((_, id)) => hb_report(OLD, id, "applying"),
            None => hb(OLD),
        };
        w.heartbeat(n, body, now).await;
    }
    assert_stopped(&w, cfg(), now, Reason::RolledBack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_wide_start_needs_recovery_admin_in_driver_and_on_node() {
    let w = world("farm_wide").await;
    let nodes = w.nodes(&["alpha"], 3).await;
    w.policy(rolling(3, 3)).await;
    w.intent(INTENT, Component::NodeAgent, NEW).await;
    report_all(&w, &nodes, &BTreeSet::new(), T0).await;

    // Without an override the driver never leases the whole target.
    let plain = w.orchestrator(false, cfg());
    let r = plain.tick(w.store(), T0).await.unwrap();
    let rr = r.rollout(INTENT).unwrap();
    assert_eq!(rr.granted.len(), 2, "{r:?}");
    assert!(rr.status.has(Reason::FarmWideStartRefused));
    // A node refuses a driver-signed plain lease once it knows the whole
    // fleet is leased: the node-side half of the guard.
    let (_, _, body) = &w.leases(INTENT).await[0];
    let bytes = body.envelope_bytes().unwrap();
    assert!(w.admit(&bytes, T0, 3, 2).is_ok());
    let refusal = w.admit(&bytes, T0, 3, 3).unwrap_err();
    assert!(
        matches!(refusal, LeaseRefusal::FarmWideStart { .. }),
        "{refusal}"
    );
    // A lease claiming the override but signed by the orchestrator alone is
    // refused, whatever it says.
    let mut forged = body.spec.clone();
    forged.recovery_override = true;
    let record = Record::new(
        &Spec::RolloutLease(forged.clone()),
        &body.record_name,
        body.record_generation + 1,
        T0,
        T0 + 900,
        Scope::new(vec![ScopeTerm::Node(forged.node.clone())]).unwrap(),
    )
    .unwrap();
    let env = Envelope::sign(record, &[&w.orchestrator_key]).encode();
    let refusal = w.admit(&env, T0, 3, 1).unwrap_err();
    assert!(
        matches!(refusal, LeaseRefusal::OverrideWithoutRecoveryAdmin { .. }),
        "{refusal}"
    );

    // An explicit override without a recovery-admin key changes nothing.
    control::set_recovery_override(w.store(), INTENT, true)
        .await
        .unwrap();
    let r = plain.tick(w.store(), T0 + 1).await.unwrap();
    let rr = r.rollout(INTENT).unwrap();
    assert_eq!(rr.granted.len(), 0, "{r:?}");
    assert!(rr
        .extra_conditions
        .iter()
        .any(|c| c.reason == "RecoveryOverrideUnavailable"));
    assert_eq!(w.leases(INTENT).await.len(), 2);

    // With the key, the last node is leased, co-signed, and admitted.
    let admin = w.orchestrator(true, cfg());
    let r = admin.tick(w.store(), T0 + 2).await.unwrap();
    let rr = r.rollout(INTENT).unwrap();
    assert_eq!(rr.granted.len(), 1, "{r:?}");
    assert!(rr.granted[0].recovery_override);
    let last = w
        .leases(INTENT)
        .await
        .into_iter()
        .find(|l| l.0 == rr.granted[0].node)
        .unwrap();
    assert_eq!(last.2.signed_by, ["orchestrator", "recovery-admin"]);
    let bytes = last.2.envelope_bytes().unwrap();
    let accepted = w.accept(&bytes, T0 + 2);
    assert!(accepted
        .roles_met
        .contains(&fabric_schemas::Role::RecoveryAdmin));
    assert!(w.admit(&bytes, T0 + 2, 3, 3).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progressing_lease_is_renewed_with_the_same_id() {
    let w = world("renewal").await;
    let nodes = w.nodes(&["alpha"], 3).await;
    w.policy(rolling(1, 1)).await;
    w.intent(INTENT, Component::NodeAgent, NEW).await;
    report_all(&w, &nodes, &BTreeSet::new(), T0).await;
    let orch = w.orchestrator(false, cfg());
    orch.tick(w.store(), T0).await.unwrap();
    let (node, id, before) = w.leases(INTENT).await.remove(0);

    // Less than half the TTL gone: no renewal.
    let now = T0 + 300;
    report_all(&w, &nodes, &BTreeSet::new(), now).await;
    let r = orch.tick(w.store(), now).await.unwrap();
    assert!(r.rollout(INTENT).unwrap().renewed.is_empty());

    // Past half, the node reports progress on this lease: renewed.
    let now = T0 + 500;
    report_all(&w, &nodes, &BTreeSet::new(), now).await;
    let r = orch.tick(w.store(), now).await.unwrap();
    let renewed = &r.rollout(INTENT).unwrap().renewed;
    assert_eq!(renewed.len(), 1, "{r:?}");
    assert_eq!(renewed[0].lease_id, id);
    let (n2, id2, after) = w.leases(INTENT).await.remove(0);
    assert_eq!((n2, id2), (node, id.clone()));
    assert_eq!(
        after.spec.expires_at,
        fabric_schemas::time::format_rfc3339(now + 900)
    );
    assert!(after.record_generation > before.record_generation);
    let spec = w
        .admit(&after.envelope_bytes().unwrap(), now, 3, 1)
        .unwrap();
    assert_eq!(spec.lease_id, id);
    // Idempotent: renewing once is enough until half the new TTL is gone.
    let r = orch.tick(w.store(), now + 10).await.unwrap();
    assert!(r.rollout(INTENT).unwrap().renewed.is_empty());

    // A node that stops reporting progress on the lease is not renewed.
    let now = now + 500;
    for n in &nodes {
        w.heartbeat(n, hb(OLD), now).await;
    }
    let r = orch.tick(w.store(), now).await.unwrap();
    assert!(r.rollout(INTENT).unwrap().renewed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_drives_one_compat_node_at_a_time_and_holds_on_failure() {
    let w = world("bridge").await;
    for n in ["alpha-1", "alpha-2"] {
        w.node(n, "alpha", &[]).await;
    }
    for n in ["beta-1", "beta-2", "gamma-1"] {
        w.node(
            n,
            if n.starts_with("beta") {
                "beta"
            } else {
                "gamma"
            },
            &[],
        )
        .await;
    }
    let compat = ["beta-1", "beta-2", "gamma-1"];
    w.policy(rolling(3, 3)).await;
    w.intent(INTENT, Component::NodeAgent, NEW).await;
    let mut on_new: BTreeSet<&str> = BTreeSet::new();
    let beat = |now: i64, on_new: BTreeSet<&'static str>, failed: Option<&'static str>| {
        let w = &w;
        async move {
            for n in ["alpha-1", "alpha-2"] {
                let v = if on_new.contains(n) { NEW } else { OLD };
                w.heartbeat(n, hb(v), now).await;
            }
            for n in compat {
                let v = if on_new.contains(n) { NEW } else { OLD };
                let mut body = hb_compat(v);
                if failed == Some(n) {
                    body["updater"]["update"] = json!({"intent": INTENT, "generation": 1,
                        "phase": "node-agent", "state": "rolled_back"});
                }
                w.heartbeat(n, body, now).await;
            }
        }
    };
    let orch = w.orchestrator(false, cfg());
    let mut now = T0;
    beat(now, on_new.clone(), None).await;
    let r = orch.tick(w.store(), now).await.unwrap();
    // Lease-capable nodes get leases; compat nodes never do.
    assert_eq!(
        granted_nodes(&r, INTENT),
        ["alpha-1", "alpha-2"].map(String::from).into()
    );
    assert_eq!(r.bridge_actions.len(), 1, "{r:?}");
    assert_eq!(r.bridge_actions[0].node, "beta-1");
    assert!(!r.bridge_hold_required);

    // Nothing changes: no second bridge action while one is in flight.
    now += 30;
    beat(now, on_new.clone(), None).await;
    let r = orch.tick(w.store(), now).await.unwrap();
    assert!(r.bridge_actions.is_empty(), "{r:?}");
    assert_eq!(
        r.rollout(INTENT).unwrap().bridge.in_flight.as_deref(),
        Some("beta-1")
    );

    // beta-1 updated: the bridge moves on to the next compat node only.
    on_new.extend(["alpha-1", "alpha-2", "beta-1"]);
    now += 30;
    beat(now, on_new.clone(), None).await;
    let r = orch.tick(w.store(), now).await.unwrap();
    assert_eq!(r.bridge_actions.len(), 1);
    assert_eq!(r.bridge_actions[0].node, "beta-2");
    assert_eq!(r.rollout(INTENT).unwrap().bridge.done, 1);

    // beta-2 fails through the bridge: hold, and gamma-1 is not started.
    now += 30;
    beat(now, on_new.clone(), Some("beta-2")).await;
    let r = orch.tick(w.store(), now).await.unwrap();
    assert!(r.bridge_hold_required, "{r:?}");
    assert!(r.bridge_actions.is_empty());
    let rr = r.rollout(INTENT).unwrap();
    assert_eq!((rr.bridge.failed, rr.bridge.pending), (1, 1));
    assert_ne!(rr.status.phase, RolloutPhase::Complete);
    let view = control::status(w.store(), INTENT).await.unwrap();
    assert!(view.bridge_hold_required);
    assert!(view
        .conditions
        .iter()
        .any(|c| c.reason == "BridgeHoldRequired" && c.message.contains("beta-2")));
    assert!(
        condition_types(&w.intent_status(INTENT).await).contains(&"BridgeHoldRequired".to_owned())
    );
    now += 30;
    beat(now, on_new.clone(), Some("beta-2")).await;
    let r = orch.tick(w.store(), now).await.unwrap();
    assert!(r.bridge_actions.is_empty(), "held: {r:?}");

    // The operator repairs it and retries: the bridge resumes.
    control::resume(w.store(), INTENT, true).await.unwrap();
    now += 30;
    beat(now, on_new.clone(), None).await;
    let r = orch.tick(w.store(), now).await.unwrap();
    assert!(!r.bridge_hold_required, "{r:?}");
    assert_eq!(r.bridge_actions.len(), 1);
    assert_eq!(r.bridge_actions[0].node, "beta-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_holds_a_compat_node_that_is_a_sole_core_provider() {
    let w = world("bridge_sole").await;
    w.node("alpha-1", "alpha", &[]).await;
    w.node("alpha-2", "alpha", &[]).await;
    w.node("core-1", "beta", &["control-api"]).await;
    w.policy(rolling(2, 2)).await;
    w.intent(INTENT, Component::NodeAgent, NEW).await;
    for n in ["alpha-1", "alpha-2"] {
        w.heartbeat(n, hb(OLD), T0).await;
    }
    w.heartbeat("core-1", hb_compat(OLD), T0).await;
    let r = w
        .orchestrator(false, cfg())
        .tick(w.store(), T0)
        .await
        .unwrap();
    assert!(r.bridge_hold_required, "{r:?}");
    assert!(r.bridge_actions.is_empty());
    let b = &r.rollout(INTENT).unwrap().bridge;
    assert!(
        b.hold_reasons[0].contains("only control-api provider"),
        "{b:?}"
    );
}
