//! Operator control of a rollout (`fabricctl rollout pause|resume|abort|status`)
//! as store operations: read the rollout state, change the control part,
//! write it back compare-and-set together with an audit event. The driver
//! reads the same state on its next tick; neither can overwrite the other.

use fabric_schemas::kinds::{Component, Kind, UpdateIntentSpec};
use fabric_schemas::time::format_rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::driver::LeaseBody;
use super::state::{BridgeAction, BridgeStatus, ExtraCondition, RolloutDoc};
use super::{OrchestratorError, Result};
use crate::rollout::{
    CanaryStatus, Counts, RolloutControl, RolloutPhase, RolloutStatus, StopCause,
};
use crate::store::{now_millis, NewEvent, Op, Store};

/// Compare-and-set attempts before giving up on a busy rollout.
const CAS_ATTEMPTS: u32 = 5;

/// An outstanding lease as `rollout status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseView {
    /// The node holding it.
    pub node: String,
    /// The lease's id.
    pub lease_id: String,
    /// The agent it lets the node update.
    pub phase: Component,
    /// When it lapses (RFC 3339).
    pub expires_at: String,
    /// Which lease of this node in this rollout it is (0 when its row is unreadable).
    pub attempt: u32,
    /// Whether it carries a recovery override.
    pub recovery_override: bool,
}

/// A condition as `rollout status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionView {
    /// The planner's reason, or the driver's own.
    pub reason: String,
    /// What an operator should know or do.
    pub message: String,
}

/// Everything `rollout status` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    /// The intent's name.
    pub intent: String,
    /// Its current generation.
    pub generation: u64,
    /// The agent it updates.
    pub component: Component,
    /// The version it rolls out.
    pub version: String,
    /// The `RolloutPolicy` it names.
    pub policy: String,
    /// The generation the driver last planned; behind `generation` until the
    /// next tick after an intent change.
    pub observed_generation: Option<u64>,
    /// `None` before the driver's first tick. A pause or abort that the driver
    /// has not acted on yet is shown already (it takes effect on the next tick).
    pub phase: Option<RolloutPhase>,
    /// Node counts from the last planned status.
    pub counts: Counts,
    /// The canary step, for the canary strategy.
    pub canary: Option<CanaryStatus>,
    /// The planner's and the driver's conditions.
    pub conditions: Vec<ConditionView>,
    /// What the operator decided.
    pub control: RolloutControl,
    /// Why the planner stopped the rollout, if it did.
    pub stopped: Option<StopCause>,
    /// Failed nodes, leased and bridged, with why.
    pub failed_nodes: Vec<(String, String)>,
    /// The rollout's outstanding leases.
    pub leases: Vec<LeaseView>,
    /// The compat bridge's last status.
    pub bridge: Option<BridgeStatus>,
    /// The bridge action in flight, if any.
    pub bridge_in_flight: Option<BridgeAction>,
    /// Whether a compat node needs an operator.
    pub bridge_hold_required: bool,
    /// The rollout state's version (0: never written).
    pub state_version: u64,
}

/// Pauses a rollout: no new leases; outstanding ones may finish.
pub async fn pause(store: &dyn Store, intent: &str) -> Result<RolloutView> {
    update(
        store,
        intent,
        "RolloutPaused",
        "paused by the operator".into(),
        |doc| {
            doc.control.paused = true;
            Ok(())
        },
    )
    .await
}

/// Resumes a rollout: clears the pause, an automatic stop (failure rate,
/// heartbeat loss, rollback) and an abort. With `retry_failed`, failed nodes
/// (leased and bridged) get fresh attempts.
pub async fn resume(store: &dyn Store, intent: &str, retry_failed: bool) -> Result<RolloutView> {
    let msg = if retry_failed {
        "resumed by the operator; failed nodes are retried"
    } else {
        "resumed by the operator"
    };
    update(store, intent, "RolloutResumed", msg.into(), |doc| {
        doc.control.paused = false;
        doc.control.aborted = None;
        doc.progress.resume();
        if retry_failed {
            doc.progress.retry_failed();
            doc.bridge.failed.clear();
        }
        Ok(())
    })
    .await
}

/// Aborts a rollout: the driver revokes every outstanding lease on its next
/// tick and grants none until `resume` (or a new intent generation).
pub async fn abort(store: &dyn Store, intent: &str, reason: &str) -> Result<RolloutView> {
    let reason = if reason.trim().is_empty() {
        "aborted by the operator".to_owned()
    } else {
        reason.to_owned()
    };
    update(
        store,
        intent,
        "RolloutAborted",
        reason.clone(),
        move |doc| {
            doc.control.aborted = Some(reason.clone());
            Ok(())
        },
    )
    .await
}

/// Sets or clears the explicit recovery override of a rollout (a farm-wide
/// start). The driver only acts on it with a recovery-admin key configured.
pub async fn set_recovery_override(
    store: &dyn Store,
    intent: &str,
    on: bool,
) -> Result<RolloutView> {
    let (reason, msg) = if on {
        (
            "RecoveryOverrideSet",
            "recovery override set by the operator",
        )
    } else {
        (
            "RecoveryOverrideCleared",
            "recovery override cleared by the operator",
        )
    };
    update(store, intent, reason, msg.into(), move |doc| {
        doc.control.recovery_override = on;
        Ok(())
    })
    .await
}

/// The rollout as stored: last planned status, control, leases, bridge.
pub async fn status(store: &dyn Store, intent: &str) -> Result<RolloutView> {
    let (spec, generation) = load_intent(store, intent).await?;
    let stored = store.get_rollout_state(intent).await?;
    let (doc, version) = match stored {
        None => (None, 0),
        Some(s) => (Some(parse_doc(intent, s.state)?), s.version),
    };
    let leases = store.list_leases(Some(intent)).await?;
    let mut views = Vec::new();
    for l in leases {
        // A row we cannot read is still a lease that is out: show what we know.
        match serde_json::from_value::<LeaseBody>(l.body.clone()) {
            Ok(b) => views.push(LeaseView {
                node: l.node,
                lease_id: l.id,
                phase: b.spec.phase,
                expires_at: b.spec.expires_at,
                attempt: b.attempt,
                recovery_override: b.spec.recovery_override,
            }),
            Err(_) => views.push(LeaseView {
                node: l.node,
                lease_id: l.id,
                phase: spec.component,
                expires_at: format_rfc3339(l.expires_at.div_euclid(1000)),
                attempt: 0,
                recovery_override: false,
            }),
        }
    }
    Ok(view(
        intent,
        &spec,
        generation,
        doc.as_ref(),
        version,
        views,
    ))
}

fn view(
    intent: &str,
    spec: &UpdateIntentSpec,
    generation: u64,
    doc: Option<&RolloutDoc>,
    version: u64,
    leases: Vec<LeaseView>,
) -> RolloutView {
    let current = doc.filter(|d| d.generation == generation);
    let status: Option<&RolloutStatus> = current.and_then(|d| d.status.as_ref());
    let control = current
        .map(|d| d.control.clone())
        .unwrap_or_else(|| RolloutControl {
            // A pause survives a new generation (see `RolloutDoc::reset_for`).
            paused: doc.is_some_and(|d| d.control.paused),
            ..RolloutControl::default()
        });
    let mut phase = status.map(|s| s.phase);
    // Show operator decisions at once, even before the driver's next tick.
    if control.aborted.is_some() {
        phase = Some(RolloutPhase::Aborted);
    } else if control.paused && phase == Some(RolloutPhase::Progressing) {
        phase = Some(RolloutPhase::Paused);
    }
    let mut conditions: Vec<ConditionView> = status
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| ConditionView {
                    reason: c.reason.as_str().to_owned(),
                    message: c.message.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let extra: &[ExtraCondition] = current.map_or(&[], |d| d.extra_conditions.as_slice());
    conditions.extend(extra.iter().map(|c| ConditionView {
        reason: c.reason.clone(),
        message: c.message.clone(),
    }));
    let bridge = current.and_then(|d| d.bridge_status.clone());
    RolloutView {
        intent: intent.to_owned(),
        generation,
        component: spec.component,
        version: spec.version.clone(),
        policy: spec.policy.clone(),
        observed_generation: doc.filter(|d| d.status.is_some()).map(|d| d.generation),
        phase,
        counts: status.map(|s| s.counts).unwrap_or_default(),
        canary: status.and_then(|s| s.canary),
        conditions,
        stopped: current.and_then(|d| d.progress.stopped.clone()),
        failed_nodes: current
            .map(|d| {
                d.progress
                    .failed
                    .iter()
                    .chain(&d.bridge.failed)
                    .map(|(n, w)| (n.clone(), w.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        control,
        leases,
        bridge_hold_required: bridge.as_ref().is_some_and(|b| b.hold_required),
        bridge,
        bridge_in_flight: current.and_then(|d| d.bridge.in_flight.clone()),
        state_version: version,
    }
}

async fn load_intent(store: &dyn Store, intent: &str) -> Result<(UpdateIntentSpec, u64)> {
    let obj = store
        .get_object(Kind::UpdateIntent, intent)
        .await?
        .ok_or_else(|| OrchestratorError::IntentNotFound(intent.to_owned()))?;
    let spec =
        serde_json::from_value(obj.spec.clone()).map_err(|e| OrchestratorError::BadState {
            intent: intent.to_owned(),
            reason: format!("UpdateIntent spec unreadable: {e}"),
        })?;
    Ok((spec, u64::try_from(obj.generation()).unwrap_or(0)))
}

fn parse_doc(intent: &str, state: serde_json::Value) -> Result<RolloutDoc> {
    serde_json::from_value(state).map_err(|e| OrchestratorError::BadState {
        intent: intent.to_owned(),
        reason: e.to_string(),
    })
}

/// Read-modify-write of the control state, compare-and-set, with an event in
/// the same batch; retried when the driver (or another operator) wrote first.
async fn update<F>(
    store: &dyn Store,
    intent: &str,
    reason: &str,
    message: String,
    change: F,
) -> Result<RolloutView>
where
    F: Fn(&mut RolloutDoc) -> Result<()>,
{
    let mut attempt = 0;
    loop {
        let (_, generation) = load_intent(store, intent).await?;
        let stored = store.get_rollout_state(intent).await?;
        let (mut doc, expected) = match stored {
            None => (RolloutDoc::default(), 0),
            Some(s) => (parse_doc(intent, s.state)?, s.version),
        };
        // The operator acts on the intent as it is now: a decision about the
        // current generation must not be wiped by the driver's reset.
        if doc.generation != generation {
            doc.reset_for(generation);
        }
        change(&mut doc)?;
        let state = serde_json::to_value(&doc).map_err(|e| OrchestratorError::Encode {
            what: format!("rollout state of {intent:?}"),
            reason: e.to_string(),
        })?;
        let ops = vec![
            Op::PutRolloutState {
                name: intent.to_owned(),
                state,
                expected_version: Some(expected),
            },
            Op::AppendEvent(NewEvent {
                at: now_millis(),
                subject: format!("UpdateIntent/{intent}"),
                reason: reason.to_owned(),
                message: message.clone(),
                data: json!({"control": doc.control}),
            }),
        ];
        match store.apply_batch(ops).await {
            Ok(_) => return status(store, intent).await,
            Err(e) if e.is_conflict() && attempt + 1 < CAS_ATTEMPTS => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}
