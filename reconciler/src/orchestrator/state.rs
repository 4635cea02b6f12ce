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
    pub control: RolloutControl,
    pub progress: RolloutProgress,
    pub bridge: BridgeState,
    /// The last status the driver wrote; `None` before its first tick.
    pub status: Option<RolloutStatus>,
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
    pub reason: String,
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
    pub intent: String,
    pub generation: u64,
    pub node: String,
    pub phase: Component,
    pub version: String,
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
    pub done: u32,
    pub failed: u32,
    pub in_flight: Option<String>,
    pub pending: u32,
    /// A compat node needs an operator (it failed through the bridge, or it
    /// is the sole provider of a core service); `hold_reasons` says which.
    pub hold_required: bool,
    pub hold_reasons: Vec<String>,
}
