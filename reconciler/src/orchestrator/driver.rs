//! The durable lease driver: one `tick` loads every rollout's inputs from the
//! store, runs the planner (`plan_phases`), signs what it grants, and writes
//! leases, lease records, rollout state, intent status and events in ONE
//! `apply_batch`. Everything it needs between ticks is in the store, so a new
//! `Orchestrator` over the same store (a restart, or another replica)
//! continues exactly where the last one stopped.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ed25519_dalek::SigningKey;
use fabric_schemas::kinds::{
    FabricNodeSpec, Kind, RolloutLeaseSpec, RolloutPolicySpec, UpdateIntentSpec,
};
use fabric_schemas::time::format_rfc3339;
use fabric_schemas::{Envelope, Record, Scope, ScopeTerm, Spec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::bridge::{self, BridgeInput};
use super::live::{self, HeartbeatView};
use super::state::{BridgeAction, BridgeStatus, ExtraCondition, RolloutDoc};
use super::{OrchestratorError, Result};
use crate::rollout::{
    lease_record_name, plan_phases, validate, Fleet, FleetNode, Health, IntentInput, LeaseRevoke,
    LiveStates, OutstandingLease, PlannerConfig, Reason, RolloutControl, RolloutPhase,
    RolloutStatus, TickInput, UpdateState,
};
use crate::store::{Json, Lease, NewEvent, Op, Store, StoredObject};

/// The keys the driver signs with.
pub struct OrchestratorKeys {
    /// Signs every lease (the trust root's `orchestrator` role).
    pub orchestrator: SigningKey,
    /// Co-signs leases of a rollout whose control state carries an explicit
    /// recovery override (a farm-wide start). Without it such a rollout is
    /// planned as if there were no override.
    pub recovery_admin: Option<SigningKey>,
}

/// Driver knobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrchestratorConfig {
    /// Planner knobs outside the policy.
    pub planner: PlannerConfig,
    /// A node whose latest heartbeat is older than this is heartbeat-lost.
    pub heartbeat_timeout_secs: i64,
    /// A compat node that does not report the new version this long after its
    /// bridge action started has failed through the bridge.
    pub bridge_timeout_secs: i64,
    /// Re-reads and re-plans this many times when a concurrent writer (an
    /// operator's pause, another replica) wins the compare-and-set.
    pub conflict_retries: u32,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            planner: PlannerConfig::default(),
            // Three missed 30 s heartbeats.
            heartbeat_timeout_secs: 90,
            bridge_timeout_secs: 30 * 60,
            conflict_retries: 3,
        }
    }
}

/// The update orchestrator's driver.
pub struct Orchestrator {
    keys: OrchestratorKeys,
    config: OrchestratorConfig,
}

/// What the driver keeps in a `Lease` row's body: the spec, the signed
/// envelope nodes receive, and bookkeeping for renewal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseBody {
    /// The lease spec as signed.
    pub spec: RolloutLeaseSpec,
    /// The signed envelope, lower-case hex (`Envelope::encode` bytes).
    pub envelope: String,
    /// Unix seconds of the latest signing (grant or renewal).
    pub issued_at: i64,
    /// Which lease of this node in this rollout it is (1 first).
    pub attempt: u32,
    /// Published as record `RolloutLease/<record_name>` at this generation.
    pub record_name: String,
    /// The record generation it was published at.
    pub record_generation: u64,
    /// `orchestrator`, plus `recovery-admin` when co-signed.
    pub signed_by: Vec<String>,
}

impl LeaseBody {
    /// The envelope bytes, for whoever delivers leases to nodes.
    pub fn envelope_bytes(&self) -> std::result::Result<Vec<u8>, hex::FromHexError> {
        hex::decode(&self.envelope)
    }
}

/// A lease the tick granted or renewed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseReport {
    /// The node holding the lease.
    pub node: String,
    /// The lease's id.
    pub lease_id: String,
    /// Which lease of this node in this rollout it is (1 first).
    pub attempt: u32,
    /// Whether it carries a recovery override.
    pub recovery_override: bool,
}

/// One rollout's outcome of a tick.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RolloutReport {
    /// The intent's name.
    pub intent: String,
    /// The intent generation planned.
    pub generation: u64,
    /// The status written (planner status adjusted for the bridge).
    pub status: RolloutStatus,
    /// Leases granted this tick.
    pub granted: Vec<LeaseReport>,
    /// Leases revoked this tick: node, lease id, reason.
    pub revoked: Vec<(String, String, String)>,
    /// Leases re-signed with a later expiry this tick.
    pub renewed: Vec<LeaseReport>,
    /// The compat bridge's status after this tick.
    pub bridge: BridgeStatus,
    /// Conditions the driver added to the planner's.
    pub extra_conditions: Vec<ExtraCondition>,
}

/// An intent the driver could not plan, and why (also written to its status).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedIntent {
    /// The intent's name.
    pub intent: String,
    /// A CamelCase reason such as `PolicyNotFound`.
    pub reason: String,
    /// What is wrong, for the intent's status.
    pub message: String,
}

/// What one tick did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TickReport {
    /// One report per rollout planned.
    pub rollouts: Vec<RolloutReport>,
    /// Intents that could not be planned.
    pub skipped: Vec<SkippedIntent>,
    /// Bridge actions started this tick (at most one).
    pub bridge_actions: Vec<BridgeAction>,
    /// Some compat node needs an operator; see each rollout's `bridge`.
    pub bridge_hold_required: bool,
    /// Leases deleted because their intent no longer exists.
    pub orphans_revoked: Vec<String>,
    /// Unreadable rows that were left alone.
    pub warnings: Vec<String>,
    /// Ops written in the tick's batch (0: nothing changed).
    pub ops: usize,
}

impl TickReport {
    /// The report of `intent`'s rollout, if it was planned.
    pub fn rollout(&self, intent: &str) -> Option<&RolloutReport> {
        self.rollouts.iter().find(|r| r.intent == intent)
    }

    /// How many leases the tick granted over every rollout.
    pub fn granted(&self) -> usize {
        self.rollouts.iter().map(|r| r.granted.len()).sum()
    }
}

/// Condition types the driver owns in an intent's status (everything else
/// there belongs to other controllers and is kept).
const EXTRA_REASONS: [&str; 6] = [
    "RecoveryOverrideUnavailable",
    "BridgeHoldRequired",
    "PolicyNotFound",
    "InvalidPolicy",
    "InvalidSpec",
    "StateUnreadable",
];
const PLANNER_REASONS: [Reason; 11] = [
    Reason::Paused,
    Reason::Aborted,
    Reason::FailureRateExceeded,
    Reason::HeartbeatLost,
    Reason::RolledBack,
    Reason::Complete,
    Reason::FarmWideStartRefused,
    Reason::RoleBlocked,
    Reason::CanaryGated,
    Reason::WaitingForPhase,
    Reason::UnknownNode,
];

fn owned_condition(t: &str) -> bool {
    EXTRA_REASONS.contains(&t) || PLANNER_REASONS.iter().any(|r| r.as_str() == t)
}

/// One planned rollout while the tick is assembled.
struct Planned {
    object: StoredObject,
    intent: IntentInput,
    policy: RolloutPolicySpec,
    /// As loaded, for the compare-and-set.
    state_version: Option<u64>,
    before: Option<Value>,
    doc: RolloutDoc,
    /// What the planner sees (override dropped when no recovery-admin key).
    control: RolloutControl,
    extra: Vec<ExtraCondition>,
}

impl Orchestrator {
    /// A driver signing with `keys`.
    pub fn new(keys: OrchestratorKeys, config: OrchestratorConfig) -> Orchestrator {
        Orchestrator { keys, config }
    }

    /// The driver's knobs.
    pub fn config(&self) -> &OrchestratorConfig {
        &self.config
    }

    /// One level-triggered pass over every rollout; `now` is Unix seconds.
    /// Idempotent: a second tick with unchanged inputs writes nothing.
    pub async fn tick(&self, store: &dyn Store, now: i64) -> Result<TickReport> {
        let mut attempt = 0;
        loop {
            match self.tick_once(store, now).await {
                Err(e) if e.is_conflict() && attempt < self.config.conflict_retries => {
                    tracing::debug!(error = %e, attempt, "rollout tick lost a compare-and-set; re-planning");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn tick_once(&self, store: &dyn Store, now: i64) -> Result<TickReport> {
        let mut report = TickReport::default();
        let cfg = &self.config;

        // ---- load --------------------------------------------------------
        let heartbeats = store.list_heartbeats().await?;
        let views: BTreeMap<String, HeartbeatView> = heartbeats
            .iter()
            .map(|hb| {
                (
                    hb.node.clone(),
                    live::view(hb, now, cfg.heartbeat_timeout_secs),
                )
            })
            .collect();
        let mut fleet = Fleet::new();
        for obj in store.list_objects(Kind::FabricNode).await? {
            match serde_json::from_value::<FabricNodeSpec>(obj.spec.clone()) {
                Ok(spec) => {
                    let versions = views
                        .get(obj.name())
                        .map(|v| v.versions.clone())
                        .unwrap_or_default();
                    fleet.insert(obj.name().to_owned(), FleetNode { spec, versions });
                }
                // Left out of the fleet: never leased, never counted as a provider.
                Err(e) => report
                    .warnings
                    .push(format!("FabricNode {:?}: unreadable spec: {e}", obj.name())),
            }
        }
        let live: LiveStates = views
            .iter()
            .filter(|(n, _)| fleet.contains_key(*n))
            .map(|(n, v)| (n.clone(), v.live.clone()))
            .collect();
        let heartbeat_counts: BTreeMap<String, u64> = views
            .iter()
            .map(|(n, v)| (n.clone(), v.received_count))
            .collect();
        let compat: BTreeSet<String> = views
            .iter()
            .filter(|(n, v)| v.compat && fleet.contains_key(*n))
            .map(|(n, _)| n.clone())
            .collect();

        let mut rows: BTreeMap<String, (Lease, LeaseBody)> = BTreeMap::new();
        for lease in store.list_leases(None).await? {
            match serde_json::from_value::<LeaseBody>(lease.body.clone()) {
                Ok(body) => {
                    rows.insert(lease.id.clone(), (lease, body));
                }
                Err(e) => report.warnings.push(format!(
                    "lease {:?} of {:?}: unreadable body, left alone: {e}",
                    lease.id, lease.rollout
                )),
            }
        }

        let mut ops: Vec<Op> = Vec::new();
        let mut planned: Vec<Planned> = Vec::new();
        let intents = store.list_objects(Kind::UpdateIntent).await?;
        let intent_names: HashSet<&str> = intents.iter().map(|o| o.name()).collect();
        for object in &intents {
            let name = object.name().to_owned();
            let skip = |reason: &str, message: String| SkippedIntent {
                intent: name.clone(),
                reason: reason.to_owned(),
                message,
            };
            let spec: UpdateIntentSpec = match serde_json::from_value(object.spec.clone()) {
                Ok(s) => s,
                Err(e) => {
                    report
                        .skipped
                        .push(skip("InvalidSpec", format!("unreadable spec: {e}")));
                    continue;
                }
            };
            let policy = match store.get_object(Kind::RolloutPolicy, &spec.policy).await? {
                None => {
                    report.skipped.push(skip(
                        "PolicyNotFound",
                        format!("RolloutPolicy {:?} does not exist", spec.policy),
                    ));
                    continue;
                }
                Some(p) => match serde_json::from_value::<RolloutPolicySpec>(p.spec) {
                    Ok(p) => p,
                    Err(e) => {
                        report.skipped.push(skip(
                            "InvalidPolicy",
                            format!("RolloutPolicy {:?}: unreadable spec: {e}", spec.policy),
                        ));
                        continue;
                    }
                },
            };
            if let Err(e) = validate(&spec.policy, &policy, &cfg.planner) {
                report.skipped.push(skip("InvalidPolicy", e.to_string()));
                continue;
            }
            let generation = u64::try_from(object.generation()).unwrap_or(0);
            let stored = store.get_rollout_state(&name).await?;
            let (state_version, before, mut doc) = match stored {
                None => (None, None, RolloutDoc::default()),
                Some(s) => match serde_json::from_value::<RolloutDoc>(s.state.clone()) {
                    Ok(doc) => (Some(s.version), Some(s.state), doc),
                    // Never plan over state we cannot read: it may hold the
                    // operator's pause or abort.
                    Err(e) => {
                        report.skipped.push(skip(
                            "StateUnreadable",
                            format!("rollout state unreadable ({e}); fix or delete it"),
                        ));
                        continue;
                    }
                },
            };
            if doc.generation != generation {
                doc.reset_for(generation);
            }
            let mut control = doc.control.clone();
            let mut extra = Vec::new();
            if control.recovery_override && self.keys.recovery_admin.is_none() {
                control.recovery_override = false;
                extra.push(ExtraCondition {
                    reason: "RecoveryOverrideUnavailable".into(),
                    message: "the rollout carries a recovery override but this orchestrator has \
                              no recovery-admin key; planned without the override"
                        .into(),
                });
            }
            planned.push(Planned {
                object: object.clone(),
                intent: IntentInput {
                    name,
                    generation,
                    spec,
                },
                policy,
                state_version,
                before,
                doc,
                control,
                extra,
            });
        }

        // ---- renewals (before planning, so the planner sees new expiries) --
        let ttl = cfg.planner.lease_ttl_secs;
        let mut renewals: BTreeMap<String, RolloutLeaseSpec> = BTreeMap::new();
        for (id, (_, body)) in &rows {
            let Some(p) = planned.iter().find(|p| p.intent.name == body.spec.intent) else {
                continue;
            };
            if body.spec.intent_generation != p.intent.generation {
                continue;
            }
            let Ok(expires) = fabric_schemas::time::parse_rfc3339(&body.spec.expires_at) else {
                continue;
            };
            let Some(view) = views.get(&body.spec.node) else {
                continue;
            };
            let progressing = view.live.health != Health::HeartbeatLost
                && view.received_at >= body.issued_at
                && view.live.update.as_ref().is_some_and(|u| {
                    u.lease_id.as_deref() == Some(id.as_str())
                        && matches!(
                            u.state,
                            UpdateState::Leased | UpdateState::Staged | UpdateState::Applying
                        )
                });
            // Renew once half the TTL is gone, never after expiry: an expired
            // lease has already told the node to stop.
            if progressing && expires > now && expires - now <= ttl / 2 {
                let mut spec = body.spec.clone();
                spec.expires_at = format_rfc3339(now.saturating_add(ttl));
                renewals.insert(id.clone(), spec);
            }
        }

        let mut outstanding: Vec<OutstandingLease> = Vec::new();
        for (id, (_, body)) in &rows {
            let spec = renewals.get(id).unwrap_or(&body.spec);
            match OutstandingLease::from_spec(spec) {
                Ok(l) => outstanding.push(l),
                Err(e) => report
                    .warnings
                    .push(format!("lease {id:?}: unreadable expiresAt: {e}")),
            }
        }
        for p in &planned {
            if let Some(a) = &p.doc.bridge.in_flight {
                outstanding.push(bridge::pseudo_lease(a));
            }
        }

        // ---- plan ----------------------------------------------------------
        // Compat nodes cannot take leases: the planner sees them as already on
        // the version (so it never leases them, still counts them as serving
        // providers), and their bridge actions as leases of another rollout.
        let fleets: Vec<Fleet> = planned
            .iter()
            .map(|p| {
                let mut f = fleet.clone();
                for n in &compat {
                    if let Some(node) = f.get_mut(n) {
                        let v = Some(p.intent.spec.version.clone());
                        match p.intent.phase() {
                            fabric_schemas::kinds::Component::NodeAgent => {
                                node.versions.node_agent = v
                            }
                            fabric_schemas::kinds::Component::HostAgent => {
                                node.versions.host_agent = v
                            }
                        }
                    }
                }
                f
            })
            .collect();
        let inputs: Vec<TickInput<'_>> = planned
            .iter()
            .zip(&fleets)
            .map(|(p, f)| TickInput {
                now,
                intent: &p.intent,
                policy: &p.policy,
                fleet: if compat.is_empty() { &fleet } else { f },
                live: &live,
                leases: &outstanding,
                control: &p.control,
                progress: &p.doc.progress,
                config: &cfg.planner,
            })
            .collect();
        let outputs = plan_phases(&inputs)?;
        drop(inputs);

        let revoked_ids: HashSet<String> = outputs
            .iter()
            .flat_map(|o| o.revoke.iter().map(|r| r.lease_id.clone()))
            .collect();
        let mut leases_after: Vec<OutstandingLease> = outstanding
            .iter()
            .filter(|l| !revoked_ids.contains(&l.lease_id))
            .cloned()
            .collect();
        for o in &outputs {
            for g in &o.grant {
                leases_after.push(OutstandingLease {
                    node: g.spec.node.clone(),
                    intent: g.spec.intent.clone(),
                    intent_generation: g.spec.intent_generation,
                    phase: g.spec.phase,
                    lease_id: g.spec.lease_id.clone(),
                    expires_at: now.saturating_add(ttl),
                });
            }
        }

        // ---- write ---------------------------------------------------------
        let mut record_gens: BTreeMap<String, u64> = BTreeMap::new();
        let mut bridge_busy: BTreeMap<String, bool> = planned
            .iter()
            .map(|p| (p.intent.name.clone(), p.doc.bridge.in_flight.is_some()))
            .collect();

        for (p, out) in planned.iter().zip(outputs) {
            let subject = format!("UpdateIntent/{}", p.intent.name);
            let mut rr = RolloutReport {
                intent: p.intent.name.clone(),
                generation: p.intent.generation,
                status: out.status.clone(),
                granted: vec![],
                revoked: vec![],
                renewed: vec![],
                bridge: BridgeStatus::default(),
                extra_conditions: p.extra.clone(),
            };
            for r in &out.revoke {
                if let Some((_, body)) = rows.get(&r.lease_id) {
                    self.revoke_ops(store, &mut ops, &mut record_gens, body, now, &subject, r)
                        .await?;
                }
                rr.revoked.push((
                    r.node.clone(),
                    r.lease_id.clone(),
                    format!("{:?}", r.reason),
                ));
            }
            for g in &out.grant {
                let (body, bytes) = self
                    .signed_body(store, &mut record_gens, g.spec.clone(), g.attempt, now)
                    .await?;
                rr.granted.push(LeaseReport {
                    node: g.spec.node.clone(),
                    lease_id: g.spec.lease_id.clone(),
                    attempt: g.attempt,
                    recovery_override: g.spec.recovery_override,
                });
                ops.push(Op::AppendEvent(event(
                    now,
                    &subject,
                    "LeaseGranted",
                    format!(
                        "lease {} for {} ({}, attempt {}){}",
                        g.spec.lease_id,
                        g.spec.node,
                        g.spec.phase.as_str(),
                        g.attempt,
                        if g.spec.recovery_override {
                            ", recovery override"
                        } else {
                            ""
                        }
                    ),
                    json!({"node": g.spec.node, "leaseId": g.spec.lease_id}),
                )));
                ops.push(put_record_op(&body, bytes));
                ops.push(Op::PutLease(lease_row(&p.intent.name, body)?));
            }
            for (id, spec) in &renewals {
                if spec.intent != p.intent.name || revoked_ids.contains(id) {
                    continue;
                }
                let Some((_, old)) = rows.get(id) else {
                    continue;
                };
                let (body, bytes) = self
                    .signed_body(store, &mut record_gens, spec.clone(), old.attempt, now)
                    .await?;
                rr.renewed.push(LeaseReport {
                    node: spec.node.clone(),
                    lease_id: id.clone(),
                    attempt: old.attempt,
                    recovery_override: spec.recovery_override,
                });
                ops.push(Op::AppendEvent(event(
                    now,
                    &subject,
                    "LeaseRenewed",
                    format!(
                        "lease {id} for {} renewed until {}",
                        spec.node, spec.expires_at
                    ),
                    json!({"node": spec.node, "leaseId": id}),
                )));
                ops.push(put_record_op(&body, bytes));
                ops.push(Op::PutLease(lease_row(&p.intent.name, body)?));
            }

            // Bridge.
            let my_rank = bridge::earlier_phase_rank(p.policy.first_phase, p.intent.phase());
            let mut earlier_pending: BTreeSet<String> = BTreeSet::new();
            for q in &planned {
                let rank = bridge::earlier_phase_rank(p.policy.first_phase, q.intent.phase());
                if q.intent.phase() == p.intent.phase() || rank >= my_rank {
                    continue;
                }
                for (n, f) in &fleet {
                    if q.intent.spec.target.matches(n, &f.spec)
                        && f.versions.of(q.intent.phase()) != Some(q.intent.spec.version.as_str())
                        && !q.doc.progress.failed.contains_key(n)
                    {
                        earlier_pending.insert(n.clone());
                    }
                }
            }
            let other_busy = bridge_busy
                .iter()
                .any(|(n, busy)| *busy && *n != p.intent.name);
            let halted = p.control.paused
                || p.policy.paused
                || p.control.aborted.is_some()
                || out.progress.stopped.is_some();
            let bin = BridgeInput {
                now,
                intent: &p.intent,
                policy: &p.policy,
                fleet: &fleet,
                live: &live,
                heartbeat_counts: &heartbeat_counts,
                compat: &compat,
                leases_after: &leases_after,
                other_bridge_busy: other_busy,
                halted,
                aborted: p.control.aborted.is_some(),
                status: &out.status,
                earlier_phase_pending: &earlier_pending,
                timeout_secs: cfg.bridge_timeout_secs,
            };
            let b = bridge::step(&bin, &p.doc.bridge);
            bridge_busy.insert(p.intent.name.clone(), b.state.in_flight.is_some());
            for (reason, message) in &b.events {
                ops.push(Op::AppendEvent(event(
                    now,
                    &subject,
                    reason,
                    message.clone(),
                    Value::Null,
                )));
            }
            if let Some(a) = &b.started {
                leases_after.push(bridge::pseudo_lease(a));
                report.bridge_actions.push(a.clone());
            }
            let mut extra = p.extra.clone();
            if b.status.hold_required {
                report.bridge_hold_required = true;
                extra.push(ExtraCondition {
                    reason: "BridgeHoldRequired".into(),
                    message: b.status.hold_reasons.join("; "),
                });
            }
            let status = with_bridge(out.status.clone(), &b.status);

            // Events for what an operator wants in the log.
            if let Some(stop) = &out.progress.stopped {
                if p.doc.progress.stopped.as_ref() != Some(stop) {
                    ops.push(Op::AppendEvent(event(
                        now,
                        &subject,
                        "RolloutStopped",
                        format!("{}: {}", stop.reason, stop.message),
                        json!({"reason": stop.reason.as_str()}),
                    )));
                }
            }
            let old_phase = p.doc.status.as_ref().map(|s| s.phase);
            if old_phase != Some(status.phase) {
                ops.push(Op::AppendEvent(event(
                    now,
                    &subject,
                    "RolloutPhase",
                    format!(
                        "{} generation {}: {:?}",
                        p.intent.name, p.intent.generation, status.phase
                    ),
                    json!({"phase": status.phase}),
                )));
            }

            let mut doc = p.doc.clone();
            doc.progress = out.progress.clone();
            doc.bridge = b.state.clone();
            doc.status = Some(status.clone());
            doc.bridge_status = Some(b.status.clone());
            doc.extra_conditions = extra.clone();
            let after = serde_json::to_value(&doc).map_err(|e| OrchestratorError::Encode {
                what: format!("rollout state of {:?}", p.intent.name),
                reason: e.to_string(),
            })?;
            if p.before.as_ref() != Some(&after) {
                ops.push(Op::PutRolloutState {
                    name: p.intent.name.clone(),
                    state: after,
                    expected_version: Some(p.state_version.unwrap_or(0)),
                });
            }
            if let Some(op) = status_op(&p.object, now, Some(&status), &extra) {
                ops.push(op);
            }
            rr.status = status;
            rr.bridge = b.status;
            rr.extra_conditions = extra;
            report.rollouts.push(rr);
        }

        for s in &report.skipped {
            if let Some(obj) = intents.iter().find(|o| o.name() == s.intent) {
                let extra = [ExtraCondition {
                    reason: s.reason.clone(),
                    message: s.message.clone(),
                }];
                if let Some(op) = status_op(obj, now, None, &extra) {
                    ops.push(op);
                }
            }
        }

        // Leases of intents that no longer exist: nobody will ever plan them.
        for (id, (lease, body)) in &rows {
            if intent_names.contains(lease.rollout.as_str()) {
                continue;
            }
            let r = LeaseRevoke {
                node: lease.node.clone(),
                lease_id: id.clone(),
                reason: crate::rollout::RevokeReason::NotTargeted,
            };
            let subject = format!("UpdateIntent/{}", lease.rollout);
            self.revoke_ops(store, &mut ops, &mut record_gens, body, now, &subject, &r)
                .await?;
            report.orphans_revoked.push(id.clone());
        }

        report.ops = ops.len();
        if !ops.is_empty() {
            store.apply_batch(ops).await?;
        }
        Ok(report)
    }

    /// Deletes a lease row and publishes a revocation: the same lease id,
    /// expiring now, at a higher record generation, so nodes holding the
    /// grant replace it and refuse it as expired.
    #[allow(clippy::too_many_arguments)]
    async fn revoke_ops(
        &self,
        store: &dyn Store,
        ops: &mut Vec<Op>,
        gens: &mut BTreeMap<String, u64>,
        body: &LeaseBody,
        now: i64,
        subject: &str,
        r: &LeaseRevoke,
    ) -> Result<()> {
        let mut spec = body.spec.clone();
        spec.expires_at = format_rfc3339(now);
        let name = lease_record_name(&spec.node, spec.phase);
        let generation = next_generation(store, gens, &name, now).await?;
        // The revocation record itself must outlive the grant it replaces.
        let envelope = self.sign(
            &spec,
            &name,
            generation,
            now,
            now.saturating_add(self.config.planner.lease_ttl_secs),
        )?;
        ops.push(Op::DeleteLease {
            id: r.lease_id.clone(),
        });
        ops.push(Op::PutRecord {
            kind: Kind::RolloutLease,
            name,
            generation: i64::try_from(generation).unwrap_or(i64::MAX),
            envelope: envelope.encode(),
        });
        ops.push(Op::AppendEvent(event(
            now,
            subject,
            "LeaseRevoked",
            format!(
                "lease {} for {} revoked: {:?}",
                r.lease_id, r.node, r.reason
            ),
            json!({"node": r.node, "leaseId": r.lease_id, "reason": r.reason}),
        )));
        Ok(())
    }

    /// Signs a lease spec for publication; co-signed by recovery-admin when
    /// the lease carries the override.
    async fn signed_body(
        &self,
        store: &dyn Store,
        gens: &mut BTreeMap<String, u64>,
        spec: RolloutLeaseSpec,
        attempt: u32,
        now: i64,
    ) -> Result<(LeaseBody, Vec<u8>)> {
        let expires = fabric_schemas::time::parse_rfc3339(&spec.expires_at).map_err(|e| {
            OrchestratorError::Sign {
                lease_id: spec.lease_id.clone(),
                reason: e.to_string(),
            }
        })?;
        let name = lease_record_name(&spec.node, spec.phase);
        let generation = next_generation(store, gens, &name, now).await?;
        let envelope = self.sign(&spec, &name, generation, now, expires)?;
        let mut signed_by = vec!["orchestrator".to_owned()];
        if spec.recovery_override {
            signed_by.push("recovery-admin".to_owned());
        }
        let bytes = envelope.encode();
        let body = LeaseBody {
            envelope: hex::encode(&bytes),
            spec,
            issued_at: now,
            attempt,
            record_name: name,
            record_generation: generation,
            signed_by,
        };
        Ok((body, bytes))
    }

    fn sign(
        &self,
        spec: &RolloutLeaseSpec,
        name: &str,
        generation: u64,
        issued_at: i64,
        expires_at: i64,
    ) -> Result<Envelope> {
        let err = |reason: String| OrchestratorError::Sign {
            lease_id: spec.lease_id.clone(),
            reason,
        };
        let scope = Scope::new(vec![ScopeTerm::Node(spec.node.clone())])
            .ok_or_else(|| err(format!("node name {:?} is not a valid scope", spec.node)))?;
        let record = Record::new(
            &Spec::RolloutLease(spec.clone()),
            name,
            generation,
            issued_at,
            expires_at,
            scope,
        )
        .map_err(|e| err(e.to_string()))?;
        let mut keys = vec![&self.keys.orchestrator];
        if spec.recovery_override {
            // The planner only sets the override when we hold the key (see
            // `tick_once`); refusing here keeps that promise explicit.
            let admin = self.keys.recovery_admin.as_ref().ok_or_else(|| {
                err("recoveryOverride lease without a recovery-admin key".to_owned())
            })?;
            keys.push(admin);
        }
        Ok(Envelope::sign(record, &keys))
    }
}

/// The next record generation for a lease record name: above what is stored
/// and what this tick already used, and at least `now` so generations stay
/// monotonic across restarts without a counter.
async fn next_generation(
    store: &dyn Store,
    gens: &mut BTreeMap<String, u64>,
    name: &str,
    now: i64,
) -> Result<u64> {
    let floor = match gens.get(name) {
        Some(g) => *g,
        None => store
            .get_record(Kind::RolloutLease, name)
            .await?
            .map_or(0, |r| u64::try_from(r.generation).unwrap_or(0)),
    };
    let g = floor.saturating_add(1).max(u64::try_from(now).unwrap_or(0));
    gens.insert(name.to_owned(), g);
    Ok(g)
}

fn put_record_op(body: &LeaseBody, envelope: Vec<u8>) -> Op {
    Op::PutRecord {
        kind: Kind::RolloutLease,
        name: body.record_name.clone(),
        generation: i64::try_from(body.record_generation).unwrap_or(i64::MAX),
        envelope,
    }
}

fn lease_row(rollout: &str, body: LeaseBody) -> Result<Lease> {
    let expires = fabric_schemas::time::parse_rfc3339(&body.spec.expires_at).map_err(|e| {
        OrchestratorError::Sign {
            lease_id: body.spec.lease_id.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(Lease {
        id: body.spec.lease_id.clone(),
        rollout: rollout.to_owned(),
        node: body.spec.node.clone(),
        body: serde_json::to_value(&body).map_err(|e| OrchestratorError::Encode {
            what: format!("lease {}", body.spec.lease_id),
            reason: e.to_string(),
        })?,
        expires_at: expires.saturating_mul(1000),
    })
}

fn event(now: i64, subject: &str, reason: &str, message: String, data: Value) -> NewEvent {
    NewEvent {
        at: now.saturating_mul(1000),
        subject: subject.to_owned(),
        reason: reason.to_owned(),
        message,
        data,
    }
}

/// The planner's status with the compat bridge folded in: the planner sees
/// compat nodes as done, so they are moved back to where the bridge has them.
fn with_bridge(mut status: RolloutStatus, b: &BridgeStatus) -> RolloutStatus {
    let not_done = b.compat_nodes.saturating_sub(b.done);
    let c = &mut status.counts;
    c.done = c.done.saturating_sub(not_done);
    c.failed += b.failed;
    c.in_flight += u32::from(b.in_flight.is_some());
    c.remaining += b.pending;
    if matches!(status.phase, RolloutPhase::Complete | RolloutPhase::Failed) {
        if b.pending > 0 || b.in_flight.is_some() {
            status.phase = RolloutPhase::Progressing;
            status.conditions.retain(|x| x.reason != Reason::Complete);
        } else if b.failed > 0 {
            status.phase = RolloutPhase::Failed;
            status.conditions.retain(|x| x.reason != Reason::Complete);
        }
    }
    status
}

/// The intent's status with the driver's conditions replaced and everything
/// else kept; `None` when nothing would change (a no-op tick writes nothing).
fn status_op(
    object: &StoredObject,
    now: i64,
    status: Option<&RolloutStatus>,
    extra: &[ExtraCondition],
) -> Option<Op> {
    let before = object.status.clone().unwrap_or(Json::Null);
    let mut next = match &before {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let old_conditions: Vec<Value> = next
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut conditions: Vec<Value> = old_conditions
        .iter()
        .filter(|c| {
            !c.get("type")
                .and_then(Value::as_str)
                .is_some_and(owned_condition)
        })
        .cloned()
        .collect();
    let generation = object.generation();
    let mut push = |t: &str, message: &str| {
        // Kubernetes semantics: lastTransitionTime moves only when the
        // condition appears, so an unchanged rollout writes identical status.
        let since = old_conditions
            .iter()
            .find(|c| {
                c.get("type").and_then(Value::as_str) == Some(t)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| Value::String(format_rfc3339(now)));
        conditions.push(json!({
            "type": t,
            "status": "True",
            "reason": t,
            "message": message,
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }));
    };
    if let Some(s) = status {
        for c in &s.conditions {
            push(c.reason.as_str(), &c.message);
        }
    }
    for c in extra {
        push(&c.reason, &c.message);
    }
    next.insert("observedGeneration".into(), json!(generation));
    next.insert("conditions".into(), Value::Array(conditions));
    match status {
        Some(s) => {
            next.insert("updatedNodes".into(), json!(s.counts.done));
            next.insert("targetNodes".into(), json!(s.counts.target));
            next.insert(
                "rollout".into(),
                json!({"phase": s.phase, "counts": s.counts, "canary": s.canary}),
            );
        }
        None => {
            next.remove("rollout");
        }
    }
    let next = Value::Object(next);
    (next != before).then(|| Op::PutStatus {
        kind: Kind::UpdateIntent,
        name: object.name().to_owned(),
        status: next,
        expected_version: Some(object.resource_version),
    })
}
