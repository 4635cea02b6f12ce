//! One tick of the rollout planner: level-triggered, deterministic, sans-IO.
//!
//! Order of work in a tick:
//! 1. sort the outstanding leases: this rollout's, stale ones (older
//!    generation, untargeted node) to revoke, other rollouts' (their nodes are
//!    off limits: a node never holds two leases);
//! 2. classify every targeted node: done, failed, in flight, pending; end
//!    attempts whose lease expired or that the node reported `blocked` /
//!    `aborted`; record rollbacks;
//! 3. evaluate the stop conditions (rollback, heartbeat loss of a leased node,
//!    failure rate) and the operator's abort / pause;
//! 4. if the rollout may move: pick pending nodes, area by area (the area with
//!    the most pending work first, so per-area caps never leave the global
//!    budget unused), checking every limit, the role rules and the farm-wide
//!    start guard for each grant;
//! 5. write the status and the progress to store.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use fabric_schemas::kinds::{Component, FabricNodeSpec, Strategy};

use super::input::{
    validate, Health, OutstandingLease, PlanError, RolloutProgress, StopCause, TickInput,
    UpdateState,
};
use super::lease::{build_lease, LeaseParams};
use super::limits::Usage;
use super::roles::{class, ProviderState, RoleGuard, RoleHold};
use super::status::{
    Condition, Counts, LeaseGrant, LeaseRevoke, Reason, RevokeReason, RolloutPhase, RolloutStatus,
    TickOutput,
};
use super::strategy::{canary_gate, canary_targets, restriction};

/// Plans one tick of one rollout.
///
/// When several intents are active (one per component), use [`plan_phases`]
/// instead, or pass the other intents' leases in `input.leases`: a node
/// holding any other lease is never leased here.
pub fn plan(input: &TickInput<'_>) -> Result<TickOutput, PlanError> {
    plan_with(input, &BTreeSet::new(), input.leases)
}

/// Plans one tick of several rollouts at once, one per phase.
///
/// Intents are planned in phase order (`policy.firstPhase` first, host-agent
/// when unset, then by name). A later phase waits on every node the earlier
/// phase still has to update there, and sees the earlier phase's grants of
/// this tick as outstanding leases (and its revocations as gone), so no node
/// ever holds two leases and no node runs its second phase before its first.
/// Phases are ordered per node: a node that finished its first phase may
/// start the second while other nodes are still in the first. Outputs are in
/// input order. `inputs` should share one `leases` list and one `now`.
pub fn plan_phases(inputs: &[TickInput<'_>]) -> Result<Vec<TickOutput>, PlanError> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: &TickInput<'_>| (phase_rank(i), i.intent.name.clone());
        key(&inputs[a]).cmp(&key(&inputs[b]))
    });
    let mut outputs: Vec<Option<TickOutput>> = vec![None; inputs.len()];
    let mut wait_for: BTreeSet<String> = BTreeSet::new();
    let mut revoked: HashSet<String> = HashSet::new();
    let mut granted: Vec<OutstandingLease> = Vec::new();
    for &i in &order {
        let input = &inputs[i];
        let view: Vec<OutstandingLease> = input
            .leases
            .iter()
            .filter(|l| !revoked.contains(&l.lease_id))
            .chain(&granted)
            .cloned()
            .collect();
        let out = plan_with(input, &wait_for, &view)?;
        revoked.extend(out.revoke.iter().map(|r| r.lease_id.clone()));
        for g in &out.grant {
            granted.push(OutstandingLease {
                node: g.spec.node.clone(),
                intent: g.spec.intent.clone(),
                intent_generation: g.spec.intent_generation,
                phase: g.spec.phase,
                lease_id: g.spec.lease_id.clone(),
                expires_at: input.now.saturating_add(input.config.lease_ttl_secs),
            });
        }
        wait_for.extend(unfinished(input, &out.progress));
        outputs[i] = Some(out);
    }
    Ok(outputs.into_iter().flatten().collect())
}

fn phase_rank(input: &TickInput<'_>) -> u8 {
    let first = input.policy.first_phase.unwrap_or(Component::HostAgent);
    u8::from(input.intent.phase() != first)
}

/// Targeted nodes this rollout has not finished (neither done nor failed).
fn unfinished(input: &TickInput<'_>, progress: &RolloutProgress) -> Vec<String> {
    let phase = input.intent.phase();
    input
        .fleet
        .iter()
        .filter(|(name, node)| {
            input.intent.spec.target.matches(name, &node.spec)
                && node.versions.of(phase) != Some(input.intent.spec.version.as_str())
                && !progress.done.contains(name.as_str())
                && !progress.failed.contains_key(name.as_str())
        })
        .map(|(name, _)| name.clone())
        .collect()
}

#[derive(Clone, Copy)]
struct Cand<'a> {
    name: &'a str,
    spec: &'a FabricNodeSpec,
}

fn plan_with(
    input: &TickInput<'_>,
    wait_for: &BTreeSet<String>,
    leases: &[OutstandingLease],
) -> Result<TickOutput, PlanError> {
    let intent = input.intent;
    validate(&intent.spec.policy, input.policy, input.config)?;
    let phase = intent.phase();
    let version = intent.spec.version.as_str();
    let now = input.now;
    let cfg = input.config;
    let mut progress = input.progress.clone();
    let mut revoke: Vec<LeaseRevoke> = Vec::new();
    let mut conditions: Vec<Condition> = Vec::new();

    let health = |name: &str| {
        input
            .live
            .get(name)
            .map_or(Health::HeartbeatLost, |l| l.health)
    };

    // 1. Leases.
    let target: Vec<(&str, &FabricNodeSpec)> = input
        .fleet
        .iter()
        .filter(|(name, node)| intent.spec.target.matches(name, &node.spec))
        .map(|(name, node)| (name.as_str(), &node.spec))
        .collect();
    let targeted: HashSet<&str> = target.iter().map(|(n, _)| *n).collect();
    let mut own: BTreeMap<&str, &OutstandingLease> = BTreeMap::new();
    let mut other_leased: HashSet<&str> = HashSet::new();
    for l in leases {
        if l.intent != intent.name {
            other_leased.insert(l.node.as_str());
            continue;
        }
        let stale = if l.intent_generation != intent.generation || l.phase != phase {
            Some(RevokeReason::Superseded)
        } else if !targeted.contains(l.node.as_str()) {
            Some(RevokeReason::NotTargeted)
        } else if own.contains_key(l.node.as_str()) {
            // Two leases of one rollout for one node cannot both be right;
            // keep the first (leases come in a stable order).
            Some(RevokeReason::Superseded)
        } else {
            None
        };
        match stale {
            Some(reason) => revoke.push(LeaseRevoke {
                node: l.node.clone(),
                lease_id: l.lease_id.clone(),
                reason,
            }),
            None => {
                own.insert(l.node.as_str(), l);
            }
        }
    }

    // 2. Classify targeted nodes.
    let mut done = 0u32;
    let mut already_current = 0u32;
    let mut done_unhealthy: Vec<&str> = Vec::new();
    let mut failed = 0u32;
    let mut in_flight: BTreeSet<&str> = BTreeSet::new();
    let mut lost: Vec<&str> = Vec::new();
    let mut rolled_back: Vec<&str> = Vec::new();
    let mut pending: Vec<Cand<'_>> = Vec::new();
    for &(name, spec) in &target {
        let Some(node) = input.fleet.get(name) else {
            continue;
        };
        let h = health(name);
        let lease = own.get(name).copied();
        let report = input
            .live
            .get(name)
            .and_then(|l| l.update.as_ref())
            .filter(|r| {
                r.intent == intent.name && r.generation == intent.generation && r.phase == phase
            });
        let attempts = progress.attempts.get(name).copied().unwrap_or(0);
        let mut revoke_lease = |reason| {
            if let Some(l) = lease {
                revoke.push(LeaseRevoke {
                    node: name.to_owned(),
                    lease_id: l.lease_id.clone(),
                    reason,
                });
            }
        };
        let current = node.versions.of(phase) == Some(version);
        if current || progress.done.contains(name) {
            if attempts > 0 {
                progress.done.insert(name.to_owned());
            } else {
                already_current += 1;
            }
            revoke_lease(RevokeReason::Completed);
            done += 1;
            if progress.done.contains(name) && !(current && h == Health::Healthy) {
                done_unhealthy.push(name);
            }
            continue;
        }
        if progress.failed.contains_key(name) {
            revoke_lease(RevokeReason::AttemptFailed);
            failed += 1;
            continue;
        }
        if report.is_some_and(|r| r.state == UpdateState::RolledBack) {
            progress
                .failed
                .insert(name.to_owned(), "rolled back".to_owned());
            revoke_lease(RevokeReason::AttemptFailed);
            rolled_back.push(name);
            failed += 1;
            continue;
        }
        if let Some(l) = lease {
            let refused = report.filter(|r| {
                r.lease_id.as_deref() == Some(l.lease_id.as_str())
                    && matches!(r.state, UpdateState::Blocked | UpdateState::Aborted)
            });
            let ended = if l.expires_at <= now {
                Some((RevokeReason::Expired, "lease expired"))
            } else {
                refused.map(|r| (RevokeReason::AttemptFailed, r.state.as_str()))
            };
            match ended {
                None => {
                    in_flight.insert(name);
                    if h == Health::HeartbeatLost {
                        lost.push(name);
                    }
                    continue;
                }
                Some((reason, why)) => {
                    revoke_lease(reason);
                    if attempts >= cfg.max_attempts {
                        progress.failed.insert(
                            name.to_owned(),
                            format!("no success after {attempts} lease(s); last: {why}"),
                        );
                        failed += 1;
                        continue;
                    }
                }
            }
        } else if attempts >= cfg.max_attempts {
            // Attempts used up while no lease is out (e.g. revoked by abort).
            progress.failed.insert(
                name.to_owned(),
                format!("no success after {attempts} lease(s)"),
            );
            failed += 1;
            continue;
        }
        pending.push(Cand { name, spec });
    }

    // 3. Stop conditions, abort, pause.
    let mut fresh_stops: Vec<Condition> = Vec::new();
    if !rolled_back.is_empty() {
        fresh_stops.push(Condition {
            reason: Reason::RolledBack,
            message: format!("node(s) rolled back: {}", list(&rolled_back)),
        });
    }
    if !lost.is_empty() {
        fresh_stops.push(Condition {
            reason: Reason::HeartbeatLost,
            message: format!("leased node(s) lost heartbeat: {}", list(&lost)),
        });
    }
    let finished_by_us = target
        .iter()
        .filter(|(n, _)| progress.done.contains(*n))
        .count() as u32
        + failed;
    let to_update = (target.len() as u32).saturating_sub(already_current).max(1);
    let min_sample = cfg.min_failure_sample.clamp(1, to_update);
    let threshold = input.policy.failure_rate_stop_percent;
    if failed >= 1
        && finished_by_us >= min_sample
        && u64::from(failed) * 100 >= u64::from(threshold) * u64::from(finished_by_us)
    {
        fresh_stops.push(Condition {
            reason: Reason::FailureRateExceeded,
            message: format!(
                "{failed} of {finished_by_us} finished nodes failed ({}%), threshold {threshold}%",
                u64::from(failed) * 100 / u64::from(finished_by_us)
            ),
        });
    }
    if progress.stopped.is_none() {
        if let Some(first) = fresh_stops.first() {
            progress.stopped = Some(StopCause {
                reason: first.reason,
                message: first.message.clone(),
            });
        }
    }
    if let Some(stop) = &progress.stopped {
        conditions.push(Condition {
            reason: stop.reason,
            message: format!("rollout stopped: {}", stop.message),
        });
    }
    for c in fresh_stops {
        if !conditions.iter().any(|x| x.reason == c.reason) {
            conditions.push(c);
        }
    }

    let aborted = input.control.aborted.as_deref();
    if let Some(why) = aborted {
        for name in std::mem::take(&mut in_flight) {
            if let Some(l) = own.get(name) {
                revoke.push(LeaseRevoke {
                    node: name.to_owned(),
                    lease_id: l.lease_id.clone(),
                    reason: RevokeReason::Aborted,
                });
            }
        }
        conditions.push(Condition {
            reason: Reason::Aborted,
            message: format!("aborted by operator: {why}"),
        });
    }
    let paused = input.policy.paused || input.control.paused;
    if paused && aborted.is_none() {
        conditions.push(Condition {
            reason: Reason::Paused,
            message: "paused: no new leases; outstanding ones may finish".to_owned(),
        });
    }
    let may_grant = aborted.is_none() && progress.stopped.is_none() && !paused;

    // Canary step (computed even when not granting, for the status).
    let touched = done + failed + in_flight.len() as u32;
    let canary = (input.policy.strategy == Strategy::Canary).then(|| {
        let targets = canary_targets(&input.policy.canary_steps, target.len() as u32);
        let all_healthy = in_flight.is_empty() && failed == 0 && done_unhealthy.is_empty();
        canary_gate(&targets, progress.canary_step, touched, all_healthy)
    });
    if let Some(g) = &canary {
        progress.canary_step = g.step;
        if g.gated && may_grant {
            let mut why = Vec::new();
            if !in_flight.is_empty() {
                why.push(format!("{} in flight", in_flight.len()));
            }
            if failed > 0 {
                why.push(format!("{failed} failed"));
            }
            if !done_unhealthy.is_empty() {
                why.push(format!(
                    "not healthy on {version}: {}",
                    list(&done_unhealthy)
                ));
            }
            conditions.push(Condition {
                reason: Reason::CanaryGated,
                message: format!(
                    "step {} of {} waits for the nodes of earlier steps to be healthy on {version} ({})",
                    g.status.step + 1,
                    g.status.steps,
                    why.join("; ")
                ),
            });
        }
    }

    // Pinned / forced nodes the fleet or the target does not have.
    let restrict = restriction(input.policy);
    if let Some(r) = &restrict {
        let unknown: Vec<&str> = r
            .iter()
            .copied()
            .filter(|n| !targeted.contains(n))
            .collect();
        if !unknown.is_empty() {
            conditions.push(Condition {
                reason: Reason::UnknownNode,
                message: format!(
                    "not in the fleet or not targeted by intent {}: {}",
                    intent.name,
                    list(&unknown)
                ),
            });
        }
    }

    // 4. Grants.
    let mut grant: Vec<LeaseGrant> = Vec::new();
    let mut holds: Vec<(&str, &str, RoleHold)> = Vec::new();
    let mut farm_refused = false;
    if may_grant {
        let mut usage = Usage::new(input.policy);
        let mut leased_in_target = 0u32;
        for &(name, spec) in &target {
            let leased = in_flight.contains(name) || other_leased.contains(name);
            if in_flight.contains(name) {
                usage.count_leased(spec);
            }
            if leased {
                leased_in_target += 1;
            }
            if leased || health(name) != Health::Healthy {
                usage.count_unavailable();
            }
        }
        let mut guard = RoleGuard::new(cfg.sole_area_provider);
        for (name, node) in input.fleet {
            let name = name.as_str();
            let state = if in_flight.contains(name) || other_leased.contains(name) {
                ProviderState::Leased
            } else if health(name) == Health::Healthy {
                ProviderState::Available
            } else {
                ProviderState::Down
            };
            guard.add(&node.spec, state);
        }

        let mut waiting_phase = Vec::new();
        let mut buckets: BTreeMap<&str, Vec<Cand<'_>>> = BTreeMap::new();
        for c in &pending {
            if health(c.name) != Health::Healthy || other_leased.contains(c.name) {
                continue;
            }
            if restrict.as_ref().is_some_and(|r| !r.contains(c.name)) {
                continue;
            }
            if wait_for.contains(c.name) {
                waiting_phase.push(c.name);
                continue;
            }
            buckets.entry(c.spec.area.as_str()).or_default().push(*c);
        }
        if !waiting_phase.is_empty() {
            conditions.push(Condition {
                reason: Reason::WaitingForPhase,
                message: format!(
                    "{} node(s) wait for their other phase to finish first (e.g. {})",
                    waiting_phase.len(),
                    list(&waiting_phase[..waiting_phase.len().min(3)])
                ),
            });
        }
        let mut areas: Vec<(&str, VecDeque<Cand<'_>>)> = buckets
            .into_iter()
            .map(|(area, mut cands)| {
                // Stable: names stay sorted within a class.
                cands.sort_by_key(|c| class(c.spec));
                (area, VecDeque::from(cands))
            })
            .collect();

        let mut quota = canary.map_or(u32::MAX, |g| g.quota);
        let target_len = target.len() as u32;
        let mut override_used = false;
        while quota > 0 && usage.global_room() {
            // The area with the most pending work that still has room.
            let mut pick: Option<usize> = None;
            for (i, (area, cands)) in areas.iter().enumerate() {
                if cands.is_empty() || !usage.area_room(area) {
                    continue;
                }
                if pick.is_none_or(|p| cands.len() > areas[p].1.len()) {
                    pick = Some(i);
                }
            }
            let Some(i) = pick else { break };
            let (area, cands) = &mut areas[i];
            // Candidates refused here stay refused for the rest of the tick:
            // every check only gets stricter as grants are added.
            while let Some(c) = cands.pop_front() {
                if usage.fits(c.spec).is_err() {
                    continue;
                }
                if let Err(hold) = guard.check(c.spec) {
                    holds.push((c.name, area, hold));
                    continue;
                }
                if target_len > 1 && leased_in_target + 1 >= target_len {
                    if !input.control.recovery_override {
                        farm_refused = true;
                        continue;
                    }
                    override_used = true;
                }
                let attempt = progress.attempts.get(c.name).copied().unwrap_or(0) + 1;
                progress.attempts.insert(c.name.to_owned(), attempt);
                usage.grant(c.spec);
                guard.grant(c.spec);
                leased_in_target += 1;
                quota -= 1;
                in_flight.insert(c.name);
                grant.push(LeaseGrant {
                    spec: build_lease(&LeaseParams {
                        intent: &intent.name,
                        generation: intent.generation,
                        node: c.name,
                        phase,
                        attempt,
                        now,
                        ttl_secs: cfg.lease_ttl_secs,
                        recovery_override: false,
                    }),
                    attempt,
                });
                break;
            }
        }
        if override_used {
            // The whole set is a farm-wide start: every lease of it needs the
            // recovery-admin signature, so nodes can tell.
            for g in &mut grant {
                g.spec.recovery_override = true;
            }
        }
    }
    if farm_refused {
        conditions.push(Condition {
            reason: Reason::FarmWideStartRefused,
            message: format!(
                "refused to lease all {} targeted nodes at once; set a recovery-admin override on the rollout to allow a farm-wide start",
                target.len()
            ),
        });
    }
    let sole_core = holds
        .iter()
        .find(|(_, _, h)| matches!(h, RoleHold::SoleCoreProvider(_)));
    let stuck = grant.is_empty() && in_flight.is_empty();
    if let Some(&(name, area, hold)) = sole_core.or_else(|| holds.first().filter(|_| stuck)) {
        conditions.push(Condition {
            reason: Reason::RoleBlocked,
            message: format!(
                "{} node(s) held back by role rules; {}",
                holds.len(),
                hold.describe(name, area)
            ),
        });
    }

    // 5. Status.
    let in_flight_n = in_flight.len() as u32;
    let target_n = target.len() as u32;
    let counts = Counts {
        target: target_n,
        done,
        failed,
        in_flight: in_flight_n,
        remaining: target_n.saturating_sub(done + failed + in_flight_n),
    };
    let finished = counts.remaining == 0 && counts.in_flight == 0;
    if finished && failed == 0 {
        conditions.push(Condition {
            reason: Reason::Complete,
            message: format!(
                "all {target_n} targeted nodes run {} {version}",
                phase.as_str()
            ),
        });
    }
    let status_phase = if aborted.is_some() {
        RolloutPhase::Aborted
    } else if progress.stopped.is_some() {
        RolloutPhase::Stopped
    } else if finished {
        if failed == 0 {
            RolloutPhase::Complete
        } else {
            RolloutPhase::Failed
        }
    } else if paused {
        RolloutPhase::Paused
    } else {
        RolloutPhase::Progressing
    };
    Ok(TickOutput {
        grant,
        revoke,
        status: RolloutStatus {
            phase: status_phase,
            counts,
            canary: canary.map(|g| g.status),
            conditions,
        },
        progress,
    })
}

fn list(names: &[&str]) -> String {
    names.join(", ")
}
