//! The durable state of one rollout, stored with `Store::put_rollout_state`
//! under the intent's name: operator control, planner progress, the compat
//! bridge and the last status the driver computed (what `rollout status`
//! shows). Every write is compare-and-set on the state's version, so an
//! operator's pause and a driver tick can never overwrite each other.

use std::collections::{BTreeMap, BTreeSet};

use fabric_schemas::kinds::Component;
use serde::{Deserialize, Serialize};

use crate::rollout::{RolloutControl, RolloutProgress, RolloutStatus};

/// One rollout's durable state (JSON in the store's `rollout_states`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RolloutDoc {
    /// The intent generation `progress` and `bridge` belong to. A new
    /// generation starts a new rollout: progress, bridge, abort and recovery
    /// override are reset (a pause stays: the operator asked for it).
    pub generation: u64,
    /// What the operator decided: pause, abort, recovery override.
    pub control: RolloutControl,
    /// What the planner recorded for `generation`.
    pub progress: RolloutProgress,
    /// The compat bridge's progress for `generation`.
    pub bridge: BridgeState,
    /// The last status the driver wrote; `None` before its first tick.
    pub status: Option<RolloutStatus>,
    /// The compat bridge's last status; `None` before its first tick.
    pub bridge_status: Option<BridgeStatus>,
    /// Conditions the driver adds to the planner's (override unavailable,
    /// bridge hold), kept with the status for `rollout status`.
    pub extra_conditions: Vec<ExtraCondition>,
}

impl RolloutDoc {
    /// Starts the rollout of a new intent generation.
    pub fn reset_for(&mut self, generation: u64) {
        let paused = self.control.paused;
        *self = RolloutDoc {
            generation,
            control: RolloutControl {
                paused,
                ..RolloutControl::default()
            },
            ..RolloutDoc::default()
        };
    }
}

/// A driver-side condition, in the planner's shape but with its own reasons.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraCondition {
    /// A CamelCase reason such as `BridgeHoldRequired`.
    pub reason: String,
    /// What an operator should know or do.
    pub message: String,
}

/// The compat bridge's durable part.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BridgeState {
    /// The one bridge action in flight for this rollout, if any.
    pub in_flight: Option<BridgeAction>,
    /// Compat nodes updated through the bridge.
    pub done: BTreeSet<String>,
    /// Compat nodes the bridge gave up on, with why; each needs an operator.
    pub failed: BTreeMap<String, String>,
}

/// One compat node to drive through the compat update path (the legacy
/// updater), emitted by the driver at most one at a time fleet-wide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeAction {
    /// The intent being rolled out.
    pub intent: String,
    /// Its generation.
    pub generation: u64,
    /// The compat node to update.
    pub node: String,
    /// The agent to update.
    pub phase: Component,
    /// The version to install.
    pub version: String,
    /// Lower-case hex SHA-256 of the artifact.
    pub artifact_sha256: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds: no new version reported by then counts as a failure.
    pub deadline: i64,
    /// A failure report (`rolled_back` / `blocked` / `aborted`) counts only
    /// from a heartbeat numbered above this (the node's stored heartbeat
    /// count). Set at start to the count then, plus one when the node was
    /// already reporting a failure for this intent: the heartbeat that picks
    /// the command up was written before the node saw it, so a `rolled_back`
    /// left over from an earlier attempt (before `resume --retry-failed`)
    /// cannot fail the retry. `None` in actions stored before this field
    /// existed: every report counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reports_after: Option<u64>,
}

/// What the bridge is doing, for status and the tick report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeStatus {
    /// Targeted compat nodes.
    pub compat_nodes: u32,
    /// Targeted compat nodes that run the new version.
    pub done: u32,
    /// Targeted compat nodes the bridge gave up on.
    pub failed: u32,
    /// The node with the action in flight, if any.
    pub in_flight: Option<String>,
    /// Targeted compat nodes not yet started.
    pub pending: u32,
    /// A compat node needs an operator (it failed through the bridge, or it
    /// is the sole provider of a core service); `hold_reasons` says which.
    pub hold_required: bool,
    /// Why an operator is needed, one entry per node.
    pub hold_reasons: Vec<String>,
}
