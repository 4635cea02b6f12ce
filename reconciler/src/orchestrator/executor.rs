//! The compat bridge's executor: delivers the driver's in-flight
//! [`BridgeAction`] to the one compat node it names, as a [`BridgeCommand`]
//! in that node's heartbeat reply (the only channel a node that predates the
//! orchestrator listens on). The loop closes through the same heartbeats: the
//! node reports the new version (done) or `rolled_back` / `aborted` (failed),
//! and the driver resolves the action on its next tick.
//!
//! Read-only on purpose: the driver alone decides which node is bridged and
//! writes that decision compare-and-set; the executor only reads it. A second
//! Control API replica therefore delivers the same command, never another one.

use fabric_schemas::kinds::{Kind, UpdateIntentSpec};

use super::state::{BridgeAction, RolloutDoc};
use crate::store::{Store, StoreError};
use fabric_proto::heartbeat::{BridgeArtifact, BridgeCommand};

/// The bridge command for `node`, if the driver has a bridge action in flight
/// for it and that action still matches its intent; `None` otherwise. `now`
/// is Unix seconds.
///
/// Nothing is delivered for an action whose intent moved on (new generation,
/// version or artifact: the driver resets it on its next tick), whose rollout
/// was aborted (the driver abandons it on its next tick) or whose deadline
/// passed (the driver counts it as failed): a command the driver is about to
/// withdraw must not start an update.
pub async fn bridge_command(
    store: &dyn Store,
    node: &str,
    now: i64,
) -> Result<Option<BridgeCommand>, StoreError> {
    for object in store.list_objects(Kind::UpdateIntent).await? {
        let Some(state) = store.get_rollout_state(object.name()).await? else {
            continue;
        };
        // An unreadable state is the driver's problem (it reports
        // `StateUnreadable`); here it only means "no command from it".
        let Ok(doc) = serde_json::from_value::<RolloutDoc>(state.state) else {
            continue;
        };
        let Some(action) = doc.bridge.in_flight.as_ref().filter(|a| a.node == node) else {
            continue;
        };
        let Ok(spec) = serde_json::from_value::<UpdateIntentSpec>(object.spec.clone()) else {
            continue;
        };
        let generation = u64::try_from(object.generation()).unwrap_or(0);
        if !current(action, &doc, generation, &spec) {
            tracing::debug!(node, intent = %action.intent, "bridge action is stale; not delivered");
            continue;
        }
        if doc.control.aborted.is_some() || now >= action.deadline {
            continue;
        }
        return Ok(Some(BridgeCommand {
            intent: action.intent.clone(),
            generation: action.generation,
            component: action.phase.as_str().to_owned(),
            version: action.version.clone(),
            artifact: BridgeArtifact {
                sha256: spec.artifact.sha256.clone(),
                size: spec.artifact.size,
                mirrors: spec.artifact.mirrors.clone(),
            },
            deadline: action.deadline,
        }));
    }
    Ok(None)
}

/// The action was started for exactly what the intent asks for now.
fn current(
    action: &BridgeAction,
    doc: &RolloutDoc,
    generation: u64,
    spec: &UpdateIntentSpec,
) -> bool {
    action.generation == generation
        && doc.generation == generation
        && action.phase == spec.component
        && action.version == spec.version
        && action.artifact_sha256 == spec.artifact.sha256
}
