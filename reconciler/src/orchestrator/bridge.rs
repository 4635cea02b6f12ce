//! The emergency recovery bridge (seed P5): nodes that predate the
//! orchestrator cannot verify or hold a lease, so the driver updates them
//! through the compat path instead, one node at a time fleet-wide and under
//! the rollout's own limits. Pure: the driver gathers the inputs, stores the
//! state and hands the emitted action to whatever runs the compat path.

use std::collections::{BTreeMap, BTreeSet};

use fabric_schemas::kinds::{Component, NodeRole, RolloutPolicySpec, Strategy};

use super::state::{BridgeAction, BridgeState, BridgeStatus};
use crate::rollout::{
    is_core, Fleet, Health, IntentInput, LiveStates, OutstandingLease, RolloutStatus, UpdateState,
};

/// Everything one rollout's bridge step looks at.
pub(crate) struct BridgeInput<'a> {
    pub now: i64,
    pub intent: &'a IntentInput,
    pub policy: &'a RolloutPolicySpec,
    /// The real fleet (true versions, compat nodes included).
    pub fleet: &'a Fleet,
    pub live: &'a LiveStates,
    /// Stored heartbeat count per node (orders reports against an action's start).
    pub heartbeat_counts: &'a BTreeMap<String, u64>,
    /// Nodes whose heartbeat says they cannot take leases.
    pub compat: &'a BTreeSet<String>,
    /// Every lease out after this tick's grants and revocations, of every
    /// rollout, bridge actions in flight included.
    pub leases_after: &'a [OutstandingLease],
    /// Another rollout's bridge action is in flight (one at a time, fleet-wide).
    pub other_bridge_busy: bool,
    /// Paused, stopped or aborted: no new bridge actions.
    pub halted: bool,
    pub aborted: bool,
    /// The planner's status for the lease-capable part of this rollout.
    pub status: &'a RolloutStatus,
    /// Nodes that still have an earlier phase to finish (another intent).
    pub earlier_phase_pending: &'a BTreeSet<String>,
    pub timeout_secs: i64,
}

/// What the bridge step decided.
#[derive(Debug, Default)]
pub(crate) struct BridgeOutcome {
    pub state: BridgeState,
    pub status: BridgeStatus,
    /// A newly started action (also in `state.in_flight`).
    pub started: Option<BridgeAction>,
    /// (reason, message) pairs for the event log.
    pub events: Vec<(&'static str, String)>,
}

/// The bridge's pseudo-lease id for an action: it enters the planner's lease
/// list so the action counts against `maxUnavailable`, the farm-wide guard and
/// the one-update-per-node rule like a real lease.
pub(crate) fn pseudo_lease(action: &BridgeAction) -> OutstandingLease {
    OutstandingLease {
        node: action.node.clone(),
        intent: format!("bridge/{}", action.intent),
        intent_generation: action.generation,
        phase: action.phase,
        lease_id: format!("bridge/{}/{}", action.intent, action.node),
        expires_at: action.deadline,
    }
}

pub(crate) fn step(input: &BridgeInput<'_>, prior: &BridgeState) -> BridgeOutcome {
    let intent = input.intent;
    let phase = intent.phase();
    let version = intent.spec.version.as_str();
    let mut out = BridgeOutcome {
        state: prior.clone(),
        ..BridgeOutcome::default()
    };
    let health = |n: &str| {
        input
            .live
            .get(n)
            .map_or(Health::HeartbeatLost, |l| l.health)
    };
    let current = |n: &str| {
        input
            .fleet
            .get(n)
            .is_some_and(|f| f.versions.of(phase) == Some(version))
    };
    let targeted: Vec<&str> = input
        .fleet
        .iter()
        .filter(|(n, f)| intent.spec.target.matches(n, &f.spec))
        .map(|(n, _)| n.as_str())
        .collect();
    let compat_targets: Vec<&str> = targeted
        .iter()
        .copied()
        .filter(|n| input.compat.contains(*n))
        .collect();

    // 1. Resolve the action in flight.
    if let Some(action) = out.state.in_flight.clone() {
        let n = action.node.as_str();
        let report = input
            .live
            .get(n)
            .and_then(|l| l.update.as_ref())
            .filter(|r| {
                r.intent == intent.name && r.generation == intent.generation && r.phase == phase
            })
            // Only a report written after the node could see the action is
            // about it (see `BridgeAction::failure_reports_after`).
            .filter(|_| {
                action
                    .failure_reports_after
                    .is_none_or(|after| input.heartbeat_counts.get(n).is_some_and(|c| *c > after))
            });
        let failed = if current(n) {
            None
        } else if health(n) == Health::HeartbeatLost {
            Some("heartbeat lost during the bridge update".to_owned())
        } else if let Some(r) = report.filter(|r| is_failure(r.state)) {
            Some(format!("reported {} through the bridge", r.state.as_str()))
        } else if input.now >= action.deadline {
            Some(format!(
                "still not on {version} {}s after the bridge update started",
                input.now - action.started_at
            ))
        } else {
            None
        };
        if current(n) {
            out.state.in_flight = None;
            out.state.done.insert(n.to_owned());
            out.events
                .push(("BridgeCompleted", format!("compat node {n} runs {version}")));
        } else if let Some(why) = failed {
            out.state.in_flight = None;
            out.events.push((
                "BridgeFailed",
                format!("compat node {n}: {why}; an operator must look at it"),
            ));
            out.state.failed.insert(n.to_owned(), why);
        } else if input.aborted || !compat_targets.contains(&n) {
            // The compat path cannot be called back; stop tracking it so the
            // rollout can end, and say so in the log.
            out.state.in_flight = None;
            out.events.push((
                "BridgeAbandoned",
                format!("stopped tracking the bridge update of {n} (rollout aborted or node no longer targeted)"),
            ));
        }
    }
    // Compat nodes that reached the version by any path are done.
    for n in &compat_targets {
        if current(n) && out.state.in_flight.as_ref().is_none_or(|a| a.node != *n) {
            out.state.failed.remove(*n);
        }
    }

    // 2. Holds: what needs an operator.
    let mut hold_reasons: Vec<String> = out
        .state
        .failed
        .iter()
        .filter(|(n, _)| !current(n))
        .map(|(n, why)| {
            format!(
                "compat node {n} failed through the bridge ({why}); repair it, then \
                 `fabricctl rollout resume {} --retry-failed`",
                intent.name
            )
        })
        .collect();
    let bridge_failed = !hold_reasons.is_empty();
    let pending: Vec<&str> = compat_targets
        .iter()
        .copied()
        .filter(|n| {
            !current(n)
                && !out.state.failed.contains_key(*n)
                && out.state.in_flight.as_ref().is_none_or(|a| a.node != *n)
        })
        .collect();
    let mut sole: BTreeSet<&str> = BTreeSet::new();
    for n in &pending {
        if let Some(role) = sole_core_provider(input.fleet, n) {
            hold_reasons.push(format!(
                "compat node {n} is the only {} provider of the fleet; add a second provider \
                 or update it by hand",
                role.as_str()
            ));
            sole.insert(n);
        }
    }

    // 3. Start at most one action.
    let can_start = out.state.in_flight.is_none()
        && !input.other_bridge_busy
        && !input.halted
        && !bridge_failed
        && canary_open(input.policy, input.status);
    if can_start {
        for n in pending.iter().copied().filter(|n| !sole.contains(n)) {
            if input.earlier_phase_pending.contains(n) || !admissible(input, &targeted, n) {
                continue;
            }
            let count = input.heartbeat_counts.get(n).copied().unwrap_or_default();
            let failing_now = input
                .live
                .get(n)
                .and_then(|l| l.update.as_ref())
                .is_some_and(|r| {
                    r.intent == intent.name
                        && r.generation == intent.generation
                        && r.phase == phase
                        && is_failure(r.state)
                });
            let action = BridgeAction {
                intent: intent.name.clone(),
                generation: intent.generation,
                node: n.to_owned(),
                phase,
                version: version.to_owned(),
                artifact_sha256: intent.spec.artifact.sha256.clone(),
                started_at: input.now,
                deadline: input.now.saturating_add(input.timeout_secs),
                failure_reports_after: Some(count.saturating_add(u64::from(failing_now))),
            };
            out.events.push((
                "BridgeStarted",
                format!(
                    "compat node {n}: {} {version} through the compat path",
                    phase.as_str()
                ),
            ));
            out.state.in_flight = Some(action.clone());
            out.started = Some(action);
            break;
        }
    }

    let done = compat_targets.iter().filter(|n| current(n)).count() as u32;
    let failed = out
        .state
        .failed
        .keys()
        .filter(|n| !current(n) && compat_targets.contains(&n.as_str()))
        .count() as u32;
    let in_flight = out.state.in_flight.as_ref().map(|a| a.node.clone());
    out.status = BridgeStatus {
        compat_nodes: compat_targets.len() as u32,
        done,
        failed,
        pending: (compat_targets.len() as u32)
            .saturating_sub(done + failed + u32::from(in_flight.is_some())),
        in_flight,
        hold_required: !hold_reasons.is_empty(),
        hold_reasons,
    };
    out
}

/// A report that ends a bridge action as failed.
fn is_failure(state: UpdateState) -> bool {
    matches!(
        state,
        UpdateState::RolledBack | UpdateState::Blocked | UpdateState::Aborted
    )
}

/// Compat nodes are never canaries: they go once the canary has reached its
/// last step (the rest of the target), when lease-capable nodes proved the
/// version.
fn canary_open(policy: &RolloutPolicySpec, status: &RolloutStatus) -> bool {
    if policy.strategy != Strategy::Canary {
        return true;
    }
    status.canary.is_none_or(|c| c.step >= c.steps)
}

/// The core service this node alone provides in the whole fleet, if any.
fn sole_core_provider(fleet: &Fleet, node: &str) -> Option<NodeRole> {
    let spec = &fleet.get(node)?.spec;
    spec.roles
        .iter()
        .copied()
        .filter(|r| is_core(*r))
        .find(|r| {
            !fleet
                .iter()
                .any(|(n, f)| n != node && f.spec.roles.contains(r))
        })
}

/// The rollout's limits and role rules, applied to one more unavailable node.
fn admissible(input: &BridgeInput<'_>, targeted: &[&str], node: &str) -> bool {
    let Some(spec) = input.fleet.get(node).map(|f| &f.spec) else {
        return false;
    };
    let health = |n: &str| {
        input
            .live
            .get(n)
            .map_or(Health::HeartbeatLost, |l| l.health)
    };
    let leased: BTreeSet<&str> = input.leases_after.iter().map(|l| l.node.as_str()).collect();
    if health(node) != Health::Healthy || leased.contains(node) {
        return false;
    }
    let policy = input.policy;
    let own: Vec<&OutstandingLease> = input
        .leases_after
        .iter()
        .filter(|l| l.intent == input.intent.name)
        .collect();
    if own.len() as u64 + 1 > u64::from(policy.max_parallel) {
        return false;
    }
    let in_domain = |pick: fn(&fabric_schemas::kinds::FabricNodeSpec) -> &str, cap: Option<u32>| {
        let Some(cap) = cap else { return true };
        let mine = pick(spec);
        let n = own
            .iter()
            .filter(|l| {
                input
                    .fleet
                    .get(&l.node)
                    .is_some_and(|f| pick(&f.spec) == mine)
            })
            .count() as u64;
        n < u64::from(cap)
    };
    if !in_domain(|s| &s.area, policy.max_parallel_per_area)
        || !in_domain(|s| &s.site_id, policy.max_parallel_per_site)
        || !in_domain(|s| &s.nat_group, policy.max_parallel_per_nat_group)
    {
        return false;
    }
    let unavailable = targeted
        .iter()
        .filter(|n| leased.contains(**n) || health(n) != Health::Healthy)
        .count() as u64;
    if unavailable + 1 > u64::from(policy.max_unavailable) {
        return false;
    }
    // Farm-wide guard: never make every targeted node unavailable at once.
    if targeted.len() > 1 && targeted.iter().all(|n| *n == node || leased.contains(*n)) {
        return false;
    }
    // Roles: another provider of each role must keep serving (healthy, not
    // being updated) somewhere in the fleet.
    spec.roles.iter().all(|role| {
        input.fleet.iter().any(|(n, f)| {
            n != node
                && f.spec.roles.contains(role)
                && health(n) == Health::Healthy
                && !leased.contains(n.as_str())
        })
    })
}

/// Nodes that still need an earlier phase before `phase` may touch them.
pub(crate) fn earlier_phase_rank(first: Option<Component>, phase: Component) -> u8 {
    u8::from(phase != first.unwrap_or(Component::HostAgent))
}
