//! The planner's behaviours, one scenario each: canary gating, the three stop
//! conditions, pause / resume / abort, the farm-wide start guard, role rules,
//! phases and retries.

mod rollout_support;

use fabric_reconciler::rollout::{
    plan, plan_phases, Health, Reason, RevokeReason, RolloutPhase, RolloutProgress,
    SoleAreaProvider, TickInput, UpdateState,
};
use fabric_schemas::kinds::{Component, NodeRole, Strategy};
use rollout_support::*;

fn rolling(max_parallel: u32, max_unavailable: u32) -> fabric_schemas::kinds::RolloutPolicySpec {
    policy(Strategy::Rolling, max_parallel, max_unavailable)
}

#[test]
fn canary_step_two_does_not_start_until_step_one_nodes_are_healthy() {
    let fleet = FleetBuilder::new().areas(&["a", "b"], 4).build();
    let mut p = policy(Strategy::Canary, 10, 10);
    p.canary_steps = vec![count(1), percent(50)];
    let mut sim = Sim::new(fleet, p);

    let out = sim.tick();
    assert_eq!(out.grant.len(), 1, "step 1 is one node");
    let canary = sim.leased_nodes()[0].clone();
    assert_eq!(out.status.canary.map(|c| c.step), Some(1));

    // Still applying: step 2 waits.
    let out = sim.tick();
    assert!(out.grant.is_empty());
    assert!(out.status.has(Reason::CanaryGated), "{:?}", out.status);

    // New version but unhealthy: still waits.
    sim.complete(&canary);
    sim.set_health(&canary, Health::Unhealthy);
    let out = sim.tick();
    assert!(out.grant.is_empty());
    assert!(out.status.has(Reason::CanaryGated));
    assert_eq!(out.status.counts.done, 1);

    // Healthy on the new version: step 2 (50 % of 8 = 4 nodes in total) starts.
    sim.set_health(&canary, Health::Healthy);
    let out = sim.tick();
    assert_eq!(out.grant.len(), 3);
    assert_eq!(out.status.canary.map(|c| c.step), Some(2));
    assert!(!out.status.has(Reason::CanaryGated));
}

#[test]
fn failure_rate_stop_triggers_and_is_reported_with_reason() {
    let fleet = FleetBuilder::new().areas(&["a"], 10).build();
    let mut p = rolling(5, 5);
    p.failure_rate_stop_percent = 20;
    let mut sim = Sim::new(fleet, p);
    sim.config.max_attempts = 1;
    sim.tick();
    let leased = sim.leased_nodes();
    assert_eq!(leased.len(), 5);
    for n in &leased[..3] {
        sim.complete(n);
    }
    for n in &leased[3..] {
        sim.report(n, UpdateState::Blocked);
    }
    let out = sim.tick();
    assert!(out.grant.is_empty());
    assert_eq!(out.status.phase, RolloutPhase::Stopped);
    let c = out
        .status
        .condition(Reason::FailureRateExceeded)
        .expect("failure-rate condition");
    assert!(c.message.contains("2 of 5"), "{}", c.message);
    assert_eq!(out.status.counts.failed, 2);
    // Sticky: the next tick is still stopped.
    let out = sim.tick();
    assert!(out.grant.is_empty());
    assert_eq!(out.status.phase, RolloutPhase::Stopped);
}

#[test]
fn failure_rate_needs_a_minimum_sample() {
    let fleet = FleetBuilder::new().areas(&["a"], 10).build();
    let mut p = rolling(2, 2);
    p.failure_rate_stop_percent = 20;
    let mut sim = Sim::new(fleet, p);
    sim.config.max_attempts = 1;
    sim.tick();
    let leased = sim.leased_nodes();
    sim.complete(&leased[0]);
    sim.report(&leased[1], UpdateState::Aborted);
    // 1 of 2 failed is 50 %, but 2 < the minimum sample of 5: keep going.
    let out = sim.tick();
    assert_eq!(out.status.phase, RolloutPhase::Progressing);
    assert!(!out.status.has(Reason::FailureRateExceeded));
    assert_eq!(out.grant.len(), 2);
}

#[test]
fn heartbeat_loss_of_a_leased_node_stops_the_rollout() {
    let fleet = FleetBuilder::new().areas(&["a", "b"], 3).build();
    let mut sim = Sim::new(fleet, rolling(2, 3));
    sim.tick();
    let leased = sim.leased_nodes();
    sim.set_health(&leased[0], Health::HeartbeatLost);
    let out = sim.tick();
    assert!(out.grant.is_empty());
    assert_eq!(out.status.phase, RolloutPhase::Stopped);
    let c = out
        .status
        .condition(Reason::HeartbeatLost)
        .expect("condition");
    assert!(c.message.contains(&leased[0]), "{}", c.message);
    // The stop is durable, and resume clears it.
    assert_eq!(
        sim.progress.stopped.as_ref().map(|s| s.reason),
        Some(Reason::HeartbeatLost)
    );
    sim.set_health(&leased[0], Health::Healthy);
    sim.complete_all_leased();
    sim.progress.resume();
    let out = sim.tick();
    assert_eq!(out.status.phase, RolloutPhase::Progressing);
    assert_eq!(out.grant.len(), 2);
}

#[test]
fn rolled_back_node_stops_the_rollout_and_counts_as_failed() {
    let fleet = FleetBuilder::new().areas(&["a", "b"], 3).build();
    let mut sim = Sim::new(fleet, rolling(2, 2));
    sim.tick();
    let leased = sim.leased_nodes();
    sim.report(&leased[1], UpdateState::RolledBack);
    let out = sim.tick();
    assert!(out.grant.is_empty());
    assert_eq!(out.status.phase, RolloutPhase::Stopped);
    assert!(out.status.has(Reason::RolledBack));
    assert_eq!(out.status.counts.failed, 1);
    assert!(out
        .revoke
        .iter()
        .any(|r| r.node == leased[1] && r.reason == RevokeReason::AttemptFailed));
    assert_eq!(
        out.progress.failed.get(&leased[1]).map(String::as_str),
        Some("rolled back")
    );
}

#[test]
fn pause_grants_nothing_and_resume_continues_without_losing_progress() {
    let fleet = FleetBuilder::new().areas(&["a", "b"], 3).build();
    let mut sim = Sim::new(fleet, rolling(2, 2));
    sim.tick();
    let first = sim.leased_nodes();
    sim.control.paused = true;
    let out = sim.tick();
    assert!(out.grant.is_empty());
    assert!(out.revoke.is_empty(), "outstanding leases may finish");
    assert_eq!(out.status.phase, RolloutPhase::Paused);
    assert!(out.status.has(Reason::Paused));
    sim.complete_all_leased();
    let out = sim.tick();
    assert!(out.grant.is_empty());
    assert_eq!(out.status.counts.done, 2);
    assert!(out
        .revoke
        .iter()
        .all(|r| r.reason == RevokeReason::Completed));
    sim.control.paused = false;
    let out = sim.tick();
    assert_eq!(out.grant.len(), 2);
    assert!(out.grant.iter().all(|g| !first.contains(&g.spec.node)));
    assert_eq!(out.status.counts.done, 2);
}

#[test]
fn abort_revokes_every_outstanding_lease() {
    let fleet = FleetBuilder::new().areas(&["a", "b"], 3).build();
    let mut sim = Sim::new(fleet, rolling(3, 3));
    sim.tick();
    assert_eq!(sim.leases.len(), 3);
    let ids: Vec<String> = sim.leases.iter().map(|l| l.lease_id.clone()).collect();
    sim.control.aborted = Some("bad build".into());
    let out = sim.tick();
    assert!(out.grant.is_empty());
    assert_eq!(out.status.phase, RolloutPhase::Aborted);
    let mut revoked: Vec<String> = out.revoke.iter().map(|r| r.lease_id.clone()).collect();
    revoked.sort();
    let mut ids = ids;
    ids.sort();
    assert_eq!(revoked, ids);
    assert!(out.revoke.iter().all(|r| r.reason == RevokeReason::Aborted));
    assert!(out
        .status
        .condition(Reason::Aborted)
        .is_some_and(|c| c.message.contains("bad build")));
    assert!(sim.leases.is_empty());
}

#[test]
fn farm_wide_start_without_recovery_admin_override_is_refused() {
    let fleet = FleetBuilder::new().areas(&["a", "b"], 2).build();
    let mut sim = Sim::new(fleet, rolling(4, 4));
    let out = sim.tick();
    assert_eq!(out.grant.len(), 3, "one node is held back");
    assert!(out.status.has(Reason::FarmWideStartRefused));
    assert!(out.grant.iter().all(|g| !g.spec.recovery_override));
}

#[test]
fn farm_wide_start_with_override_is_allowed_and_marked() {
    let fleet = FleetBuilder::new().areas(&["a", "b"], 2).build();
    let mut sim = Sim::new(fleet, rolling(4, 4));
    sim.control.recovery_override = true;
    let out = sim.tick();
    assert_eq!(out.grant.len(), 4);
    assert!(!out.status.has(Reason::FarmWideStartRefused));
    assert!(out.grant.iter().all(|g| g.spec.recovery_override));
}

#[test]
fn single_node_fleet_is_not_a_farm_wide_start() {
    let fleet = FleetBuilder::new().areas(&["a"], 1).build();
    let mut sim = Sim::new(fleet, rolling(1, 1));
    let out = sim.tick();
    assert_eq!(out.grant.len(), 1);
    assert!(!out.grant[0].spec.recovery_override);
}

#[test]
fn never_leases_every_control_api_provider_and_prefers_a_survivor_elsewhere() {
    let fleet = FleetBuilder::new()
        .node("a-api", "a", &[NodeRole::ControlApi])
        .node("b-api", "b", &[NodeRole::ControlApi])
        .areas(&["a", "b"], 2)
        .build();
    let mut sim = Sim::new(fleet, rolling(10, 10));
    sim.control.recovery_override = true;
    for _ in 0..10 {
        let out = sim.tick();
        let leased = sim.leased_nodes();
        assert!(
            !(leased.contains(&"a-api".to_string()) && leased.contains(&"b-api".to_string())),
            "both control-api providers leased: {leased:?} ({:?})",
            out.status
        );
        sim.complete_all_leased();
    }
    assert_eq!(
        sim.last.as_ref().map(|o| o.status.phase),
        Some(RolloutPhase::Complete)
    );
}

#[test]
fn sole_core_provider_is_never_leased_and_status_says_why() {
    let fleet = FleetBuilder::new()
        .node("store", "a", &[NodeRole::UpdateStore])
        .areas(&["a", "b"], 2)
        .build();
    let mut sim = Sim::new(fleet, rolling(10, 10));
    sim.run_to_end(10);
    let out = sim.last.clone().expect("ticked");
    assert!(sim.lease_of("store").is_none());
    assert_eq!(out.status.counts.remaining, 1);
    let c = out
        .status
        .condition(Reason::RoleBlocked)
        .expect("RoleBlocked");
    assert!(
        c.message.contains("only update-store provider"),
        "{}",
        c.message
    );
}

#[test]
fn area_keeps_an_unleased_relay_while_it_has_two() {
    let fleet = FleetBuilder::new()
        .node("a-relay-1", "a", &[NodeRole::Relay])
        .node("a-relay-2", "a", &[NodeRole::Relay])
        .node("b-relay-1", "b", &[NodeRole::Relay])
        .node("b-relay-2", "b", &[NodeRole::Relay])
        .build();
    let mut sim = Sim::new(fleet, rolling(4, 4));
    sim.control.recovery_override = true;
    let out = sim.tick();
    assert_eq!(out.grant.len(), 2);
    let leased = sim.leased_nodes();
    assert!(
        leased.iter().any(|n| n.starts_with("a-")) && leased.iter().any(|n| n.starts_with("b-"))
    );
}

#[test]
fn sole_relay_of_an_area_is_updated_only_while_another_area_covers() {
    let fleet = FleetBuilder::new()
        .node("a-relay", "a", &[NodeRole::Relay])
        .node("b-relay", "b", &[NodeRole::Relay])
        .build();
    let mut sim = Sim::new(fleet.clone(), rolling(2, 2));
    sim.control.recovery_override = true;
    let out = sim.tick();
    assert_eq!(out.grant.len(), 1, "the other area must keep its relay");
    sim.complete_all_leased();
    let out = sim.tick();
    assert_eq!(out.grant.len(), 1);
    sim.complete_all_leased();
    assert_eq!(sim.tick().status.phase, RolloutPhase::Complete);

    // Strict mode never leases an area's only relay.
    let mut sim = Sim::new(fleet, rolling(2, 2));
    sim.config.sole_area_provider = SoleAreaProvider::Never;
    let out = sim.tick();
    assert!(out.grant.is_empty());
    assert!(out.status.has(Reason::RoleBlocked));
}

#[test]
fn per_area_site_and_nat_caps_hold() {
    let fleet = FleetBuilder::new()
        .spec_node("a1", spec("a", "s1", "n1", &[]))
        .spec_node("a2", spec("a", "s1", "n2", &[]))
        .spec_node("a3", spec("a", "s2", "n1", &[]))
        .spec_node("a4", spec("a", "s2", "n2", &[]))
        .spec_node("b1", spec("b", "s3", "n3", &[]))
        .build();
    let mut p = rolling(10, 10);
    p.max_parallel_per_site = Some(1);
    p.max_parallel_per_nat_group = Some(1);
    p.max_parallel_per_area = Some(2);
    let mut sim = Sim::new(fleet, p);
    sim.tick();
    // a: at most 2, one per site and per NAT group: a1 + a4 (a2 shares s1, a3 shares n1).
    assert_eq!(sim.leased_nodes(), vec!["a1", "a4", "b1"]);
}

#[test]
fn expired_lease_is_revoked_and_retried_with_a_new_lease_id() {
    let fleet = FleetBuilder::new().areas(&["a"], 3).build();
    let mut sim = Sim::new(fleet, rolling(1, 1));
    sim.tick();
    let first = sim.leases[0].clone();
    sim.now = first.expires_at;
    let out = sim.tick();
    assert_eq!(out.revoke.len(), 1);
    assert_eq!(out.revoke[0].reason, RevokeReason::Expired);
    assert_eq!(out.grant.len(), 1);
    assert_eq!(out.grant[0].attempt, 2);
    assert_eq!(
        out.grant[0].spec.node, first.node,
        "the retry goes first: same order"
    );
    assert_ne!(out.grant[0].spec.lease_id, first.lease_id);
    // Second expiry with max_attempts = 2: failed.
    sim.now = sim.leases[0].expires_at;
    let out = sim.tick();
    assert!(out.progress.failed.contains_key(&first.node));
}

#[test]
fn stale_blocked_report_does_not_end_a_retry() {
    let fleet = FleetBuilder::new().areas(&["a"], 3).build();
    let mut sim = Sim::new(fleet, rolling(1, 1));
    sim.tick();
    let node = sim.leases[0].node.clone();
    sim.report(&node, UpdateState::Blocked);
    let out = sim.tick();
    assert_eq!(out.grant.len(), 1);
    assert_eq!(out.grant[0].attempt, 2);
    // The node has not reported on lease 2 yet; its old `blocked` report
    // names lease 1 and must not end attempt 2.
    let l = sim.live.get_mut(&node).expect("live");
    if let Some(u) = l.update.as_mut() {
        u.state = UpdateState::Blocked;
        u.lease_id = Some(fabric_reconciler::rollout::lease_id(
            &sim.intent.name,
            1,
            &node,
            Component::NodeAgent,
            1,
        ));
    }
    let out = sim.tick();
    assert!(out.revoke.is_empty(), "{:?}", out.revoke);
    assert_eq!(out.status.counts.in_flight, 1);
}

#[test]
fn lease_of_an_older_intent_generation_is_revoked() {
    let fleet = FleetBuilder::new().areas(&["a"], 3).build();
    let mut sim = Sim::new(fleet, rolling(1, 1));
    sim.tick();
    sim.intent.generation = 2;
    let out = sim.tick();
    assert_eq!(out.revoke.len(), 1);
    assert_eq!(out.revoke[0].reason, RevokeReason::Superseded);
    assert_eq!(out.grant.len(), 1);
    assert_eq!(out.grant[0].spec.intent_generation, 2);
}

#[test]
fn phases_never_overlap_on_a_node_and_the_first_phase_goes_first() {
    let fleet = FleetBuilder::new().areas(&["a", "b"], 3).build();
    let live = all_healthy(&fleet);
    let mut fleet = fleet;
    let host = intent("host-agent-0-2-0", Component::HostAgent);
    let node = intent("node-agent-0-2-0", Component::NodeAgent);
    let mut p = rolling(2, 6);
    p.first_phase = Some(Component::HostAgent);
    let cfg = Default::default();
    let control = Default::default();
    let mut progress = [RolloutProgress::default(), RolloutProgress::default()];
    let mut leases = Vec::new();
    let mut host_done_at: std::collections::BTreeMap<String, usize> = Default::default();
    for tick in 0..30 {
        let inputs = [&node, &host].map(|i| TickInput {
            now: T0 + tick as i64 * 60,
            intent: i,
            policy: &p,
            fleet: &fleet,
            live: &live,
            leases: &leases,
            control: &control,
            progress: &progress[if i.spec.component == Component::NodeAgent {
                0
            } else {
                1
            }],
            config: &cfg,
        });
        let outs = plan_phases(&inputs).expect("valid");
        let revoked: Vec<String> = outs
            .iter()
            .flat_map(|o| o.revoke.iter().map(|r| r.lease_id.clone()))
            .collect();
        leases.retain(|l: &fabric_reconciler::rollout::OutstandingLease| {
            !revoked.contains(&l.lease_id)
        });
        for o in &outs {
            for g in &o.grant {
                leases.push(fabric_reconciler::rollout::OutstandingLease {
                    node: g.spec.node.clone(),
                    intent: g.spec.intent.clone(),
                    intent_generation: 1,
                    phase: g.spec.phase,
                    lease_id: g.spec.lease_id.clone(),
                    expires_at: T0 + 100_000,
                });
                if g.spec.phase == Component::NodeAgent {
                    assert!(
                        host_done_at.contains_key(&g.spec.node),
                        "{} got node-agent before host-agent",
                        g.spec.node
                    );
                }
            }
        }
        let mut nodes: Vec<&str> = leases.iter().map(|l| l.node.as_str()).collect();
        let n = nodes.len();
        nodes.sort();
        nodes.dedup();
        assert_eq!(nodes.len(), n, "a node holds two leases: {leases:?}");
        progress = [outs[0].progress.clone(), outs[1].progress.clone()];
        // Every leased node finishes its phase.
        for l in &leases {
            let v = fleet.get_mut(&l.node).expect("node");
            match l.phase {
                Component::HostAgent => {
                    v.versions.host_agent = Some(NEW.into());
                    host_done_at.insert(l.node.clone(), tick);
                }
                Component::NodeAgent => v.versions.node_agent = Some(NEW.into()),
            }
        }
        if outs
            .iter()
            .all(|o| o.status.phase == RolloutPhase::Complete)
        {
            break;
        }
    }
    assert!(fleet
        .values()
        .all(|n| n.versions.node_agent.as_deref() == Some(NEW)
            && n.versions.host_agent.as_deref() == Some(NEW)));
}

#[test]
fn planner_is_deterministic_for_the_same_input() {
    let fleet = FleetBuilder::new()
        .node("a-api", "a", &[NodeRole::ControlApi])
        .node("b-api", "b", &[NodeRole::ControlApi])
        .areas(&["a", "b", "c"], 5)
        .build();
    let mut p = policy(Strategy::Canary, 4, 4);
    p.canary_steps = vec![count(2), percent(50)];
    let sim = Sim::new(fleet, p);
    let a = plan(&sim.input()).expect("plan");
    let b = plan(&sim.input()).expect("plan");
    assert_eq!(a, b);
}

#[test]
fn pinned_strategy_leases_only_pinned_nodes_and_reports_unknown_ones() {
    let fleet = FleetBuilder::new().areas(&["a", "b"], 3).build();
    let mut p = rolling(5, 5);
    p.strategy = Strategy::Pinned;
    p.pinned_nodes = vec!["a-2".into(), "b-3".into(), "zz-9".into()];
    let mut sim = Sim::new(fleet, p);
    let out = sim.tick();
    assert_eq!(sim.leased_nodes(), vec!["a-2", "b-3"]);
    assert!(out.status.has(Reason::UnknownNode));
}

#[test]
fn forced_node_strategy_leases_that_node_now() {
    let fleet = FleetBuilder::new().areas(&["a", "b"], 3).build();
    let mut p = rolling(5, 5);
    p.strategy = Strategy::ForcedNode;
    p.forced_node = Some("b-2".into());
    let mut sim = Sim::new(fleet, p);
    sim.tick();
    assert_eq!(sim.leased_nodes(), vec!["b-2"]);
}

#[test]
fn invalid_policy_is_an_error_naming_the_field() {
    let fleet = FleetBuilder::new().areas(&["a"], 1).build();
    let mut p = rolling(0, 1);
    p.strategy = Strategy::Rolling;
    let sim = Sim::new(fleet, p);
    let err = plan(&sim.input()).expect_err("maxParallel 0");
    assert!(err.to_string().contains("spec.maxParallel"), "{err}");
}
