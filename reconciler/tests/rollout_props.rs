//! Property tests: random fleets (areas, sites, NAT groups, roles), random
//! policies and random health events, two intents (host-agent and node-agent)
//! planned together tick after tick. Every tick is checked against the
//! limits, the role rules, the one-lease-per-node rule, pause and abort, and
//! determinism.

mod rollout_support;

use std::collections::{BTreeMap, BTreeSet};

use fabric_reconciler::rollout::{
    plan_phases, Fleet, Health, LiveStates, OutstandingLease, PlannerConfig, Reason,
    RolloutControl, RolloutPhase, RolloutProgress, SoleAreaProvider, TickInput, TickOutput,
    UpdateReport, UpdateState, CORE_ROLES, EDGE_ROLES,
};
use fabric_schemas::kinds::{Component, NodeRole, RolloutPolicySpec, Strategy as Rollout};
use fabric_schemas::time::parse_rfc3339;
use proptest::prelude::*;
use rollout_support::*;

#[derive(Clone, Debug)]
struct World {
    fleet: Fleet,
    policy: RolloutPolicySpec,
    sole: SoleAreaProvider,
    /// Per tick: (node index, event) pairs.
    events: Vec<Vec<(usize, Event)>>,
    pause_at: Option<(usize, usize)>,
    abort_at: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Complete,
    Stall,
    Blocked,
    RolledBack,
    Unhealthy,
    HeartbeatLost,
    Recover,
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        10 => Just(Event::Complete),
        3 => Just(Event::Stall),
        1 => Just(Event::Blocked),
        1 => Just(Event::RolledBack),
        1 => Just(Event::Unhealthy),
        1 => Just(Event::HeartbeatLost),
        3 => Just(Event::Recover),
    ]
}

fn arb_roles() -> impl Strategy<Value = Vec<NodeRole>> {
    prop::collection::vec(
        prop_oneof![
            6 => Just(None),
            1 => Just(Some(NodeRole::ControlApi)),
            1 => Just(Some(NodeRole::UpdateStore)),
            1 => Just(Some(NodeRole::UpdateCache)),
            1 => Just(Some(NodeRole::Relay)),
            1 => Just(Some(NodeRole::Ingress)),
            1 => Just(Some(NodeRole::Egress)),
        ],
        0..3,
    )
    .prop_map(|v| {
        let mut r: Vec<NodeRole> = v.into_iter().flatten().collect();
        r.sort();
        r.dedup();
        r
    })
}

fn arb_fleet() -> impl Strategy<Value = Fleet> {
    prop::collection::vec((0..4usize, 0..3usize, 0..3usize, arb_roles()), 1..24).prop_map(|nodes| {
        let mut b = FleetBuilder::new();
        for (i, (area, site, nat, roles)) in nodes.into_iter().enumerate() {
            let area_name = format!("area{area}");
            b = b.spec_node(
                &format!("n{i:02}"),
                spec(
                    &area_name,
                    &format!("{area_name}-s{site}"),
                    &format!("{area_name}-nat{nat}"),
                    &roles,
                ),
            );
        }
        b.build()
    })
}

fn arb_policy(nodes: usize) -> impl Strategy<Value = RolloutPolicySpec> {
    (
        prop_oneof![
            Just(Rollout::Rolling),
            Just(Rollout::Canary),
            Just(Rollout::Pinned)
        ],
        1..8u32,
        prop::option::of(1..4u32),
        prop::option::of(1..4u32),
        prop::option::of(1..4u32),
        1..8u32,
        0..=100u32,
        prop::collection::vec(
            prop_oneof![(1..5u32).prop_map(count), (1..=100u32).prop_map(percent)],
            1..4,
        ),
        prop::collection::vec(0..nodes, 1..4),
    )
        .prop_map(|(strategy, mp, pa, ps, pn, mu, fr, steps, pinned)| {
            let mut p = policy(strategy, mp, mu);
            p.max_parallel_per_area = pa;
            p.max_parallel_per_site = ps;
            p.max_parallel_per_nat_group = pn;
            p.failure_rate_stop_percent = fr;
            if strategy == Rollout::Canary {
                p.canary_steps = steps;
            }
            if strategy == Rollout::Pinned {
                p.pinned_nodes = pinned.iter().map(|i| format!("n{i:02}")).collect();
            }
            p.first_phase = Some(Component::HostAgent);
            p
        })
}

fn arb_world() -> impl Strategy<Value = World> {
    arb_fleet().prop_flat_map(|fleet| {
        let n = fleet.len();
        (
            Just(fleet),
            arb_policy(n),
            prop_oneof![
                Just(SoleAreaProvider::CoverFromOtherArea),
                Just(SoleAreaProvider::Never)
            ],
            prop::collection::vec(prop::collection::vec((0..n, arb_event()), 0..6), 40),
            prop::option::of((0..40usize, 1..6usize)),
            prop::option::of(0..60usize),
        )
            .prop_map(|(fleet, policy, sole, events, pause_at, abort_at)| World {
                fleet,
                policy,
                sole,
                events,
                pause_at,
                abort_at,
            })
    })
}

const INTENTS: [(&str, Component); 2] = [
    ("host-agent-0-2-0", Component::HostAgent),
    ("node-agent-0-2-0", Component::NodeAgent),
];

fn health(live: &LiveStates, n: &str) -> Health {
    live.get(n).map_or(Health::HeartbeatLost, |l| l.health)
}

/// Healthy and holding no lease: a provider that serves.
fn available(
    fleet: &Fleet,
    live: &LiveStates,
    leased: &BTreeSet<String>,
    role: NodeRole,
    area: Option<&str>,
) -> usize {
    fleet
        .iter()
        .filter(|(n, node)| {
            node.spec.roles.contains(&role)
                && area.is_none_or(|a| node.spec.area == a)
                && !leased.contains(*n)
                && health(live, n) == Health::Healthy
        })
        .count()
}

fn check_tick(
    w: &World,
    fleet: &Fleet,
    live: &LiveStates,
    before: &[OutstandingLease],
    after: &[OutstandingLease],
    outs: &[TickOutput],
    (paused, aborted): (bool, bool),
) -> Result<(), TestCaseError> {
    let p = &w.policy;
    let leased_before: BTreeSet<String> = before.iter().map(|l| l.node.clone()).collect();
    let leased_after: BTreeSet<String> = after.iter().map(|l| l.node.clone()).collect();
    // One lease per node, whatever the phase.
    prop_assert_eq!(
        leased_after.len(),
        after.len(),
        "a node holds two leases: {:?}",
        after
    );
    let granted: usize = outs.iter().map(|o| o.grant.len()).sum();
    if paused || aborted {
        prop_assert_eq!(granted, 0, "granted while paused/aborted");
    }
    for (o, (name, _)) in outs.iter().zip(INTENTS) {
        if aborted {
            let own: BTreeSet<&str> = before
                .iter()
                .filter(|l| l.intent == name)
                .map(|l| l.lease_id.as_str())
                .collect();
            let revoked: BTreeSet<&str> = o.revoke.iter().map(|r| r.lease_id.as_str()).collect();
            prop_assert_eq!(&own, &revoked, "abort must revoke every outstanding lease");
        }
        // Limits over this rollout's leases.
        let own: Vec<&OutstandingLease> = after.iter().filter(|l| l.intent == name).collect();
        prop_assert!(
            own.len() as u32 <= p.max_parallel,
            "maxParallel exceeded: {}",
            own.len()
        );
        let mut per: BTreeMap<(u8, String), u32> = BTreeMap::new();
        for l in &own {
            let s = &fleet[&l.node].spec;
            *per.entry((0, s.area.clone())).or_default() += 1;
            *per.entry((1, s.site_id.clone())).or_default() += 1;
            *per.entry((2, s.nat_group.clone())).or_default() += 1;
        }
        for ((kind, _), n) in &per {
            let cap = [
                p.max_parallel_per_area,
                p.max_parallel_per_site,
                p.max_parallel_per_nat_group,
            ][*kind as usize];
            prop_assert!(
                cap.is_none_or(|c| *n <= c),
                "per-domain cap exceeded: {:?}",
                per
            );
        }
        if !o.grant.is_empty() {
            prop_assert!(o.status.counts.in_flight >= o.grant.len() as u32);
        }
        let c = o.status.counts;
        prop_assert_eq!(c.done + c.failed + c.in_flight + c.remaining, c.target);
    }
    if granted > 0 {
        let unavailable = fleet
            .keys()
            .filter(|n| leased_after.contains(*n) || health(live, n) != Health::Healthy)
            .count() as u32;
        prop_assert!(
            unavailable <= p.max_unavailable,
            "maxUnavailable exceeded: {unavailable}"
        );
        // Farm-wide start guard (no override in this test).
        if fleet.len() > 1 {
            prop_assert!(
                leased_after.len() < fleet.len(),
                "farm-wide start without override"
            );
        }
    }
    // Core services: never every provider leased; a serving provider stays.
    for role in CORE_ROLES {
        let total = fleet
            .values()
            .filter(|n| n.spec.roles.contains(&role))
            .count();
        let leased = fleet
            .iter()
            .filter(|(n, node)| node.spec.roles.contains(&role) && leased_after.contains(*n))
            .count();
        prop_assert!(
            total == 0 || leased < total,
            "all {role:?} providers leased"
        );
        if available(fleet, live, &leased_before, role, None) >= 1 {
            prop_assert!(
                available(fleet, live, &leased_after, role, None) >= 1,
                "{role:?} lost its last serving provider"
            );
        }
    }
    // Edge roles: an area keeps a serving provider if it had one.
    let areas: BTreeSet<&str> = fleet.values().map(|n| n.spec.area.as_str()).collect();
    for role in EDGE_ROLES {
        for area in &areas {
            if available(fleet, live, &leased_before, role, Some(area)) == 0 {
                continue;
            }
            if available(fleet, live, &leased_after, role, Some(area)) >= 1 {
                continue;
            }
            let total = fleet
                .values()
                .filter(|n| n.spec.area == *area && n.spec.roles.contains(&role))
                .count();
            let elsewhere = available(fleet, live, &leased_after, role, None);
            prop_assert!(
                w.sole == SoleAreaProvider::CoverFromOtherArea && total == 1 && elsewhere >= 1,
                "area {area} lost its last {role:?} (total {total}, elsewhere {elsewhere}, rule {:?})",
                w.sole
            );
        }
    }
    Ok(())
}

fn run(w: &World) -> Result<(), TestCaseError> {
    let mut fleet = w.fleet.clone();
    let mut live = all_healthy(&fleet);
    let mut leases: Vec<OutstandingLease> = Vec::new();
    let mut progress = [RolloutProgress::default(), RolloutProgress::default()];
    let config = PlannerConfig {
        sole_area_provider: w.sole,
        ..PlannerConfig::default()
    };
    let intents = INTENTS.map(|(name, c)| intent(name, c));
    let names: Vec<String> = fleet.keys().cloned().collect();
    let mut idle = 0;
    for tick in 0..60usize {
        let now = T0 + tick as i64 * 60;
        let paused = w
            .pause_at
            .is_some_and(|(at, len)| tick >= at && tick < at + len);
        let aborted = w.abort_at.is_some_and(|at| tick == at);
        let control = RolloutControl {
            paused,
            aborted: aborted.then(|| "test".to_owned()),
            recovery_override: false,
        };
        let inputs: Vec<TickInput<'_>> = intents
            .iter()
            .zip(&progress)
            .map(|(i, pr)| TickInput {
                now,
                intent: i,
                policy: &w.policy,
                fleet: &fleet,
                live: &live,
                leases: &leases,
                control: &control,
                progress: pr,
                config: &config,
            })
            .collect();
        let outs = plan_phases(&inputs).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            &outs,
            &plan_phases(&inputs).expect("valid"),
            "planner is not deterministic"
        );
        let before = leases.clone();
        let revoked: BTreeSet<String> = outs
            .iter()
            .flat_map(|o| o.revoke.iter().map(|r| r.lease_id.clone()))
            .collect();
        leases.retain(|l| !revoked.contains(&l.lease_id));
        for o in &outs {
            for g in &o.grant {
                leases.push(OutstandingLease {
                    node: g.spec.node.clone(),
                    intent: g.spec.intent.clone(),
                    intent_generation: g.spec.intent_generation,
                    phase: g.spec.phase,
                    lease_id: g.spec.lease_id.clone(),
                    expires_at: parse_rfc3339(&g.spec.expires_at).expect("rfc3339"),
                });
            }
        }
        check_tick(w, &fleet, &live, &before, &leases, &outs, (paused, aborted))?;
        for (i, o) in outs.iter().enumerate() {
            progress[i] = o.progress.clone();
        }
        if aborted {
            prop_assert!(outs.iter().all(|o| o.status.phase == RolloutPhase::Aborted));
        }
        // The world moves: random events on random nodes.
        for &(idx, ev) in w.events.get(tick).map(Vec::as_slice).unwrap_or(&[]) {
            let Some(name) = names.get(idx) else { continue };
            let lease = leases.iter().find(|l| &l.node == name).cloned();
            let l = live.entry(name.clone()).or_default();
            match ev {
                Event::Unhealthy => l.health = Health::Unhealthy,
                Event::HeartbeatLost => l.health = Health::HeartbeatLost,
                Event::Recover => l.health = Health::Healthy,
                Event::Stall => {}
                Event::Complete | Event::Blocked | Event::RolledBack => {
                    let Some(lease) = lease else { continue };
                    let state = match ev {
                        Event::Complete => UpdateState::Healthy,
                        Event::Blocked => UpdateState::Blocked,
                        _ => UpdateState::RolledBack,
                    };
                    l.update = Some(UpdateReport {
                        intent: lease.intent.clone(),
                        generation: lease.intent_generation,
                        phase: lease.phase,
                        lease_id: Some(lease.lease_id.clone()),
                        state,
                    });
                    if ev == Event::Complete {
                        if let Some(n) = fleet.get_mut(name) {
                            match lease.phase {
                                Component::HostAgent => n.versions.host_agent = Some(NEW.into()),
                                Component::NodeAgent => n.versions.node_agent = Some(NEW.into()),
                            }
                        }
                    }
                }
            }
        }
        // Past the scripted events everyone completes; stop once idle.
        if tick >= w.events.len() {
            for l in &leases {
                if let Some(n) = fleet.get_mut(&l.node) {
                    match l.phase {
                        Component::HostAgent => n.versions.host_agent = Some(NEW.into()),
                        Component::NodeAgent => n.versions.node_agent = Some(NEW.into()),
                    }
                }
            }
        }
        let quiet = outs.iter().all(|o| o.grant.is_empty()) && leases.is_empty();
        idle = if quiet { idle + 1 } else { 0 };
        if idle >= 3 {
            break;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn random_rollouts_never_break_a_limit_or_a_role_rule(w in arb_world()) {
        run(&w)?;
    }

    /// Without faults, a rollout ends Complete, or says which role rule holds
    /// nodes back.
    #[test]
    fn fault_free_rollouts_finish_or_name_the_role_rule(fleet in arb_fleet(), mp in 1..6u32, mu in 1..6u32) {
        let n = fleet.len() as u32;
        let mut sim = Sim::new(fleet, policy(Rollout::Rolling, mp, mu));
        sim.run_to_end(4 * n as usize + 10);
        let out = sim.last.clone().expect("ticked");
        prop_assert!(
            out.status.phase == RolloutPhase::Complete || out.status.has(Reason::RoleBlocked)
                || out.status.has(Reason::FarmWideStartRefused),
            "{:?}", out.status
        );
    }
}
